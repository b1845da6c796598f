// x rows to block fixed point for the decode matmuls that take x as integer planes
// (matmul_staged.wgsl with XQ): each matmul input is converted once per step here, not once per
// workgroup, and the matmuls multiply 4-bit codes by it with packed 8-bit dot products.
//
// Per row of `dim` values (dim a multiple of 32) and per block of 32 values: s = 2^(E - 22) for
// the block's max |x| in [2^(E-1), 2^E) (s = 0 below 2^-105, where every code is 0; the max
// itself for inf / NaN, carried into the result), xi = round_half_even(x / s), |xi| <= 2^22, in
// three 8-bit planes: h = xi >> 16 (signed, in [-64, 64]), m = (xi >> 8) & 255, l = xi & 255
// (unsigned). x's rounding is at most 2^-22 of its block's max |x| (f32's own is 2^-24 of each
// value). Σx is the block's values summed in order, in f32.
//
// Layout, per row r (r * q_stride vec4<u32>, q_stride = 7 * nb for nb = dim / 32 blocks): plane P
// of block b at P * nb + b, for P = h even, h odd, m even, m odd, l even, l odd, each a vec4 over
// the block's 4 words of 8 values (component I = values 8I..8I+7, "even" = values 8I, 8I+2, 8I+4,
// 8I+6, which `codes & 0x0F0F0F0F` of a 4-bit code word lines up with); then (s, Σx) of block b
// at 6 * nb + b (.x, .y as f32 bits; .z, .w unused).
//
// NORM: the row is RMSNorm'ed first, w * (x * inv) with inv = 1/sqrt(mean(x²) + eps) (as
// rms_norm.wgsl; the sum of squares in its own fixed order, the same in every workgroup).
//
// A workgroup of 256 threads takes 64 blocks of one row, a thread one word (8 values, two vec4
// loads); the four threads of a block exchange their max |x| and sums through workgroup memory.
// Σx of a block is ((w0 + w1) + w2) + w3 over its words, each word's ((v0 + v1) + (v2 + v3)) +
// ((v4 + v5) + (v6 + v7)).
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
const BPW: u32 = WG / 4u;  // blocks per workgroup
var<workgroup> part: array<vec2<f32>, WG>;
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
    let bl = wg_linear(wid, nwg) * BPW + lid / 4u;
    let wd = lid % 4u;
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
    var a = vec4<f32>(0.0);
    var b = vec4<f32>(0.0);
    let live = bl < nb;
    if (live) {
        let j = bl * 8u + wd * 2u;
        a = x[xo + j];
        b = x[xo + j + 1u];
#if NORM
        a = w[j] * (a * inv);
        b = w[j + 1u] * (b * inv);
#endif
    }
    part[lid] = word_part(a, b);
    workgroupBarrier();
    if (!live) { return; }
    let b0 = lid & ~3u;
    let p0 = part[b0];
    let p1 = part[b0 + 1u];
    let p2 = part[b0 + 2u];
    let p3 = part[b0 + 3u];
    let sc = block_scale(max(max(p0.x, p1.x), max(p2.x, p3.x)));
    let pw = word_planes(a, b, sc.y);
    let o = qo + bl * 4u + wd;
    let pl = nb * 4u;
    xq[o] = pw[0];
    xq[o + pl] = pw[1];
    xq[o + 2u * pl] = pw[2];
    xq[o + 3u * pl] = pw[3];
    xq[o + 4u * pl] = pw[4];
    xq[o + 5u * pl] = pw[5];
    if (wd == 0u) {
        xq[o + 6u * pl] = bitcast<u32>(sc.x);
        xq[o + 6u * pl + 1u] = bitcast<u32>(((p0.y + p1.y) + p2.y) + p3.y);
    }
}
