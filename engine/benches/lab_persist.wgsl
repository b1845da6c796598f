// Kernel lab only (engine/benches/lab.rs `persist`; not one of the engine's kernels): PHASES
// streaming reads, one after another, in ONE dispatch of a grid small enough to be resident at
// once, each phase ended by a grid-wide barrier (an atomic counter every workgroup adds to and
// then waits on), against the same reads as one dispatch each. Phase p reads the blocks
// [OFF[p % 8], OFF[p % 8] + LEN[p % 8]) of `w` with a grid-stride loop of U blocks per thread.
// PREFETCH: a workgroup issues its first round of the next phase's loads before it waits at the
// barrier (weights never depend on the previous phase; only activations do). The wait gives up
// after LIMIT polls and flags it in `out[0]`, so a grid that is not resident cannot hang.
// XORs are written only if they equal a constant no real data hits.
@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read_write> ctr: array<atomic<u32>>;

const WG: u32 = {{WG}}u;
const U: u32 = 4u;
const PHASES: u32 = {{PHASES}}u;
const PREFETCH: bool = {{PREFETCH}};
const LIMIT: u32 = {{LIMIT}}u;
const OFF = array<u32, 8>({{OFFS}});
const LEN = array<u32, 8>({{LENS}});

var<workgroup> failed: u32;

fn wg_linear(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = wg_linear(wid, nwg);
    let grid = nwg.x * nwg.y;
    let stride = grid * WG * U;
    if (lid == 0u) { failed = 0u; }
    workgroupBarrier();
    var acc = vec4<u32>(0u);
    var pre = array<vec4<u32>, 4>();
    var have_pre = false;
    for (var p = 0u; p < PHASES; p++) {
        let off = OFF[p % 8u];
        let len = LEN[p % 8u];
        var base = g * WG * U + lid;
        if (have_pre) {
            for (var j = 0u; j < U; j++) { acc ^= pre[j]; }
            base += stride;
        }
        loop {
            if (base >= len) { break; }
            var v = array<vec4<u32>, 4>();
            for (var j = 0u; j < U; j++) {
                v[j] = w[off + min(base + j * WG, len - 1u)];
            }
            for (var j = 0u; j < U; j++) { acc ^= v[j]; }
            base += stride;
        }
        have_pre = false;
        if (PREFETCH && p + 1u < PHASES) {
            let noff = OFF[(p + 1u) % 8u];
            let nlen = LEN[(p + 1u) % 8u];
            let nb = g * WG * U + lid;
            if (nb < nlen) {
                for (var j = 0u; j < U; j++) {
                    pre[j] = w[noff + min(nb + j * WG, nlen - 1u)];
                }
                have_pre = true;
            }
        }
        // Grid barrier: release this workgroup's writes, count it in, wait for the others.
        storageBarrier();
        workgroupBarrier();
        if (lid == 0u) {
            atomicAdd(&ctr[0], 1u);
            let goal = (p + 1u) * grid;
            var polls = 0u;
            loop {
                if (atomicLoad(&ctr[0]) >= goal) { break; }
                polls += 1u;
                if (polls > LIMIT) { failed = 1u; break; }
            }
        }
        workgroupBarrier();
        storageBarrier();
    }
    if (lid == 0u && failed != 0u) {
        out[0] = 0xDEADu;
    }
    if (all(acc == vec4<u32>(0x9E3779B9u, 0x7F4A7C15u, 0xF39CC060u, 0x5CDB3FB1u))) {
        out[1u + g] = acc.x;
    }
}
