// RMSNorm over rows (spec §4.3): y[r, j] = w[j] * (x[r, j] * inv), inv = 1/sqrt(mean(x²) + eps),
// mean computed in f32 in a fixed order (one workgroup per row, so any row count gives the same bits).
// OUT_ROWS: normalize only the last step.n_out rows, writing them compactly (the rows lm_head needs).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;        // [T, x_stride], input at x_col
@group(0) @binding(3) var<storage, read> w: array<f32>;        // [dim]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // [T or n_out, y_stride], at y_col

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
#if OUT_ROWS
    let n_rows = step.n_out;
    let src_row = step.n_tokens - step.n_out + wid.z;
#else
    let n_rows = step.n_tokens;
    let src_row = wid.z;
#endif
    if (wid.z >= n_rows) { return; }
    let xo = src_row * p.x_stride + p.x_col;
    let yo = wid.z * p.y_stride + p.y_col;
    var s = 0.0;
    for (var j = lid; j < p.dim; j += WG) {
        let v = x[xo + j];
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) { red[lid] += red[lid + stride]; }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(p.dim) + p.eps);
    for (var j = lid; j < p.dim; j += WG) {
        y[yo + j] = w[j] * (x[xo + j] * inv);
    }
}
