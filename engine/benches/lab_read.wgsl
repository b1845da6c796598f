// Kernel lab only (engine/benches/lab.rs `read`, which fills in WG, U and GRID; not one of the
// engine's kernels): the read-bandwidth floor of a dispatch. Every
// 16-byte block of `w` is loaded once; the XOR of a thread's blocks is written only if it equals
// a constant no real data hits, so no load can be dropped.
//
// Defines: WG (threads), U (blocks per thread per round: thread `lid` of workgroup g loads
// blocks base + lid + j * WG, j < U, with base = g * WG * U, then the next round adds
// GRID * WG * U), GRID (0: one round, as many workgroups as the data needs; otherwise the
// workgroup count of a grid-stride loop).
@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

const WG: u32 = {{WG}}u;
const U: u32 = {{U}}u;
const GRID: u32 = {{GRID}}u;

fn wg_linear(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = wg_linear(wid, nwg);
    let n = arrayLength(&w);
    var acc = vec4<u32>(0u);
    var base = g * WG * U + lid;
    loop {
        if (base >= n) { break; }
        // U loads, then U XORs (unrolled by the lab).
{{LOADS}}
        if (GRID == 0u) { break; }
        base += GRID * WG * U;
    }
    if (all(acc == vec4<u32>(0x9E3779B9u, 0x7F4A7C15u, 0xF39CC060u, 0x5CDB3FB1u))) {
        out[g] = acc.x;
    }
}
