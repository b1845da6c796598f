// Kernel lab only (engine/benches/lab.rs `alu`, which fills in BODY, K and WG; not one of the
// engine's kernels): instruction throughput. Each thread runs K rounds of BODY, 8 independent
// chains of one operation on values seeded from memory (so nothing folds at compile time), and
// writes their XOR only if it equals a constant no run hits, so no chain can be dropped.
@group(0) @binding(0) var<storage, read> seeds: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

const K: u32 = {{K}}u;
const WG: u32 = {{WG}}u;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = seeds[lid % 16u];
    let b = s.y | 0x01010101u;
    let c = s.z;
    var a0 = s.x ^ lid; var a1 = a0 + 1u; var a2 = a0 + 2u; var a3 = a0 + 3u;
    var a4 = a0 + 4u; var a5 = a0 + 5u; var a6 = a0 + 6u; var a7 = a0 + 7u;
    let fb = 0.5 + f32(s.w & 1u) * 0.25;   // |f| stays bounded: no special values
    let fc = bitcast<f32>(s.z & 0x3F7FFFFFu);
    var f0 = f32(a0 & 255u); var f1 = f0 + 1.0; var f2 = f0 + 2.0; var f3 = f0 + 3.0;
    var f4 = f0 + 4.0; var f5 = f0 + 5.0; var f6 = f0 + 6.0; var f7 = f0 + 7.0;
    for (var i = 0u; i < K; i++) {
{{BODY}}    }
    var r = (a0 ^ a1) ^ (a2 ^ a3) ^ (a4 ^ a5) ^ (a6 ^ a7);
    r ^= bitcast<u32>(((f0 + f1) + (f2 + f3)) + ((f4 + f5) + (f6 + f7)));
    if (r == 0x9E3779B9u) {
        out[wid.x % 16384u] = r;
    }
}
