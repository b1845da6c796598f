// RMSNorm over rows (spec §4.3): y[r, j] = w[j] * (x[r, j] * inv), inv = 1/sqrt(mean(x²) + eps),
// mean computed in f32 in a fixed order (one workgroup per row, so any row count gives the same bits).
// OUT_ROWS: normalize only the last step.n_out rows, writing them compactly (the rows lm_head needs).
// PAIR (not with OUT_ROWS): two norms in one dispatch, workgroup x = 0 the first (x, w, at y_col)
// and x = 1 the second (x2, w2, at y2_col of the same y), each row with the one-norm arithmetic
// (the same bits as two dispatches): the MTP head's two pre-fc norms (spec §6 step 2).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> x: array<f32>;        // [T, x_stride], input at x_col
@group(0) @binding(3) var<storage, read> w: array<f32>;        // [dim]
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // [T or n_out, y_stride], at y_col
#if PAIR
@group(0) @binding(5) var<storage, read> x2: array<f32>;       // [T, x2_stride], input at x2_col
@group(0) @binding(6) var<storage, read> w2: array<f32>;       // [dim]
#endif

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

// Input element i and weight j of norm `which` (0, or 1 with PAIR).
fn xin(i: u32, which: u32) -> f32 {
#if PAIR
    if (which == 1u) { return x2[i]; }
#endif
    return x[i];
}
fn win(j: u32, which: u32) -> f32 {
#if PAIR
    if (which == 1u) { return w2[j]; }
#endif
    return w[j];
}

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
#if PAIR
    let second = wid.x == 1u;
    let xo = select(src_row * p.x_stride + p.x_col, src_row * p.x2_stride + p.x2_col, second);
    let yo = wid.z * p.y_stride + select(p.y_col, p.y2_col, second);
#else
    let xo = src_row * p.x_stride + p.x_col;
    let yo = wid.z * p.y_stride + p.y_col;
#endif
    var s = 0.0;
    for (var j = lid; j < p.dim; j += WG) {
        let v = xin(xo + j, wid.x);
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
        y[yo + j] = win(j, wid.x) * (xin(xo + j, wid.x) * inv);
    }
}
