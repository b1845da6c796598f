// Gated RMSNorm of the Gated-DeltaNet output (spec §4.6 step 7; mlx-lm Qwen3NextRMSNormGated with
// precise_swiglu), per (row t, value head h) over Dv, all f32:
//   out = silu(z) * (weight * (y * inverseSqrt(mean(y²) + eps)))
//
// Grid: x = Hv workgroups (one per head), z = rows. The sum of squares is reduced in a fixed order
// per (row, head), whatever the row count (batch invariant).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> y: array<f32>;              // [T, Hv*Dv]
@group(0) @binding(3) var<storage, read> z: array<f32>;              // [T, z_stride], z [Hv*Dv] at z_col
@group(0) @binding(4) var<storage, read> weight: array<f32>;         // [Dv]
@group(0) @binding(5) var<storage, read_write> out: array<f32>;      // [T, Hv*Dv]

const WG: u32 = {{WG}}u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let T = min(step.n_tokens, p.rows_cap);
    let t = wid.z;
    let h = wg_linear(wid, nwg);
    if (t >= T || h >= p.n_v_heads) { return; }
    let width = p.n_v_heads * p.dv;
    let yo = t * width + h * p.dv;
    let zo = t * p.z_stride + p.z_col + h * p.dv;

    var s = 0.0;
    for (var c = lid; c < p.dv; c += WG) {
        let v = y[yo + c];
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) { red[lid] += red[lid + stride]; }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(p.dv) + p.eps);
    for (var c = lid; c < p.dv; c += WG) {
        let n = weight[c] * (y[yo + c] * inv);
        out[yo + c] = silu(z[zo + c]) * n;
    }
}
