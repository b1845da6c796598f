// A dispatch that only reads the first bytes of a matrix into the GPU's last-level cache
// (`ops::prefetch::cache_prefetch`): recorded right after a matmul to warm the next one's
// weights. It shares no written buffer with its neighbours (its own sink, never written in
// practice), so nothing orders it after the matmul in front: its workgroups run in that
// matmul's tail, on the SMs it leaves idle, and the next matmul starts on cached bytes.
// prefetch.wgsl holds the reads (p.pf_w4 vec4 of codes, p.pf_sb words each of scales and biases,
// over p.pf_wgs workgroups).
{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> pf_w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> pf_s: array<u32>;
@group(0) @binding(3) var<storage, read> pf_b: array<u32>;
@group(0) @binding(4) var<storage, read_write> sink: array<u32>;

const WG: u32 = {{WG}}u;

#include "prefetch.wgsl"

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let x = prefetch_share(wid.x + wid.y * nwg.x, lid, WG);
    if (x < p.pf_never) {
        sink[0] = x;
    }
}
