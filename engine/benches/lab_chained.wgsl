// Kernel lab only (engine/benches/lab.rs `persist`; not one of the engine's kernels): PHASES
// streaming reads chained inside ONE dispatch without a resident grid. Each phase has its own
// workgroups (NWG[p % 8] of them, one round of U blocks per thread), numbered after the previous
// phase's; a workgroup issues its loads first, then (phase > 0) waits until every workgroup of
// the previous phase has counted itself done in ctr[p - 1], then uses them and counts itself
// done in ctr[p]. Nothing waits on a workgroup with a higher id, so the chain progresses where
// workgroups start in id order (no residency needed). The wait gives up after LIMIT polls and
// flags it in `out[0]`.
@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read_write> ctr: array<atomic<u32>>;

const WG: u32 = {{WG}}u;
const U: u32 = 4u;
const PHASES: u32 = {{PHASES}}u;
const LIMIT: u32 = {{LIMIT}}u;
const OFF = array<u32, 8>({{OFFS}});
const LEN = array<u32, 8>({{LENS}});
const NWG = array<u32, 8>({{NWGS}});

var<workgroup> failed: u32;

fn wg_linear(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = wg_linear(wid, nwg);
    // This workgroup's phase and its index in it.
    var p = 0u;
    var first = 0u;
    loop {
        if (p >= PHASES || g < first + NWG[p % 8u]) { break; }
        first += NWG[p % 8u];
        p += 1u;
    }
    if (p >= PHASES) { return; }
    let local = g - first;
    let off = OFF[p % 8u];
    let len = LEN[p % 8u];
    let base = local * WG * U + lid;
    var v = array<vec4<u32>, 4>();
    for (var j = 0u; j < U; j++) {
        v[j] = w[off + min(base + j * WG, len - 1u)];
    }
    if (lid == 0u) { failed = 0u; }
    if (p > 0u) {
        if (lid == 0u) {
            let goal = NWG[(p - 1u) % 8u];
            var polls = 0u;
            loop {
                if (atomicLoad(&ctr[p - 1u]) >= goal) { break; }
                polls += 1u;
                if (polls > LIMIT) { failed = 1u; break; }
            }
        }
    }
    workgroupBarrier();
    storageBarrier();
    var acc = vec4<u32>(0u);
    for (var j = 0u; j < U; j++) { acc ^= v[j]; }
    if (all(acc == vec4<u32>(0x9E3779B9u, 0x7F4A7C15u, 0xF39CC060u, 0x5CDB3FB1u))) {
        out[1u + g % 1024u] = acc.x;
    }
    storageBarrier();
    workgroupBarrier();
    if (lid == 0u) {
        atomicAdd(&ctr[p], 1u);
        if (failed != 0u) { out[0] = 0xDEADu; }
    }
}
