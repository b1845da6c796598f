// Kernel lab only (engine/benches/lab.rs `prefetch`; not one of the engine's kernels): a
// streaming read of `w` (as lab_read.wgsl with U = 4, one round) in MAIN workgroups, and a grid
// with more workgroups than that: those read the start of `nx`, the buffer the next dispatch of
// the chain reads, so that it may be in L2 when that dispatch starts. The highest workgroup ids
// are usually scheduled last, in the tail of the read. XORs are written only if they equal a
// constant no real data hits.
@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> nx: array<vec4<u32>>;

const WG: u32 = 256u;
const U: u32 = 4u;
const MAIN: u32 = {{MAIN}}u;   // workgroups of the read itself

fn wg_linear(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = wg_linear(wid, nwg);
    var acc = vec4<u32>(0u);
    if (g < MAIN) {
        let n = arrayLength(&w);
        let base = g * WG * U + lid;
        for (var j = 0u; j < U; j++) {
            acc ^= w[min(base + j * WG, n - 1u)];
        }
    } else {
        let n = arrayLength(&nx);
        let base = (g - MAIN) * WG * U + lid;
        for (var j = 0u; j < U; j++) {
            acc ^= nx[min(base + j * WG, n - 1u)];
        }
    }
    if (all(acc == vec4<u32>(0x9E3779B9u, 0x7F4A7C15u, 0xF39CC060u, 0x5CDB3FB1u))) {
        out[g] = acc.x;
    }
}
