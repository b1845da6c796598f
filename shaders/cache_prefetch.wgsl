// A dispatch that only reads the first bytes of a matrix into the GPU's last-level cache
// (`ops::prefetch::cache_prefetch`): recorded right after a matmul to warm the next one's
// weights. It shares no written buffer with its neighbours (its own sink), so nothing orders it
// after the matmul in front: its workgroups run in that matmul's tail, on the SMs it leaves idle,
// and the next matmul starts on cached bytes.
//
// Workgroup i of p.pf_wgs reads a strided share of p.pf_w4 vec4 of codes (four reads in flight
// per thread and round) and of p.pf_sb words each of scales and biases. Nothing is written: the
// xor of what was read is compared with p.pf_never (always 0: an unsigned value is never below
// it, but the compiler cannot know), so the reads cannot be dropped and the write never happens.
{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pf_w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> pf_s: array<u32>;
@group(0) @binding(3) var<storage, read> pf_b: array<u32>;
@group(0) @binding(4) var<storage, read_write> sink: array<u32>;

const WG: u32 = {{WG}}u;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = p.pf_wgs * WG;
    let first = (wid.x + wid.y * nwg.x) * WG + lid;
    var acc = vec4<u32>(0u);
    var i = first;
    for (; i + 3u * n < p.pf_w4; i += 4u * n) {
        let a = pf_w[i];
        let b = pf_w[i + n];
        let c = pf_w[i + 2u * n];
        let d = pf_w[i + 3u * n];
        acc ^= (a ^ b) ^ (c ^ d);
    }
    for (; i < p.pf_w4; i += n) {
        acc ^= pf_w[i];
    }
    var s = 0u;
    for (var j = first; j < p.pf_sb; j += n) {
        s ^= pf_s[j] ^ pf_b[j];
    }
    let x = ((acc.x ^ acc.y) ^ (acc.z ^ acc.w)) ^ s;
    if (x < p.pf_never) {
        sink[0] = x;
    }
}
