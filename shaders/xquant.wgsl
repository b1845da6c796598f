// x rows to block fixed point for the decode matmuls that take x as integer planes
// (matmul_staged.wgsl with XQ): each matmul input is converted once per step here, not once per
// workgroup, and the matmuls multiply 4-bit codes by it with packed 8-bit dot products.
//
// Per row of `dim` values (dim a multiple of 32), per word of 8 values: xq_planes.wgsl's word
// fixed point (s = 2^(E - F) for the word's max |x| in [2^(E-1), 2^E), xi = round_half_even(x /
// s) in 8-bit planes, s, Σx and the Σ of squares of the source values; F = 22, or 15 with
// XQ_NARROW), in its layout (rows of q_stride = 9 * dim / 32 vec4<u32>). x's rounding is at most
// 2^-F of its word's max |x|.
//
// NORM: the row is RMSNorm'ed first, w * (x * inv) with inv = 1/sqrt(mean(x²) + eps) (as
// rms_norm.wgsl; the sum of squares in its own fixed order, the same in every workgroup).
//
// A workgroup of 256 threads takes 256 words of one row, a thread one word (two vec4 loads).
// OUT_ROWS: only the step's last n_out rows, written compactly (the rows lm_head needs).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;      // [T, x_stride / 4], input at x_col
@group(0) @binding(3) var<storage, read_write> xq: array<u32>;     // [T or n_out, 4 * q_stride]
#if NORM
@group(0) @binding(4) var<storage, read> w: array<vec4<f32>>;      // [dim / 4]
#endif

const WG: u32 = 256u;
#if NORM
var<workgroup> red: array<f32, WG>;
#endif

#include "xq_planes.wgsl"

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
#if OUT_ROWS
    let n_rows = step.n_out;
    let src_row = step.n_tokens - step.n_out + wid.z;
#else
    let n_rows = step.n_tokens;
    let src_row = wid.z;
#endif
    if (wid.z >= n_rows) { return; }
    let xo = (src_row * p.x_stride + p.x_col) / 4u;
    let qo = wid.z * p.q_stride * 4u;
    let nb = p.dim / 32u;
#if NORM
    var ss = 0.0;
    for (var j = lid; j < p.dim / 4u; j += WG) {
        let v = x[xo + j];
        ss += dot(v, v);
    }
    red[lid] = ss;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) { red[lid] += red[lid + stride]; }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(p.dim) + p.eps);
#endif
    let gw = wg_linear(wid, nwg) * WG + lid;
    if (gw >= nb * 4u) { return; }
    let j = gw * 2u;
    var a = x[xo + j];
    var b = x[xo + j + 1u];
    let q = word_sq(a, b);
#if NORM
    a = w[j] * (a * inv);
    b = w[j + 1u] * (b * inv);
#endif
    let r = word_out(a, b, q);
    let o = qo + gw;
    let pl = nb * 4u;
#for P 9
    xq[o + {{P}}u * pl] = r[{{P}}];
#endfor
}
