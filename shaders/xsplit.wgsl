// Prompt rows of x as pairs of f16 for the tensor-core GEMM (matmul_coop.wgsl), one workgroup
// per row t of the step. Each row is first scaled by a power of two 2^sh chosen from its largest
// |x| (max |x| · 2^sh in [2^13, 2^14): far from f16's overflow at 65504, and small values keep
// their precision), then every value v = x · 2^sh (exact) is written as hi = f16(v) and
// lo = f16(v − hi), so hi + lo holds v to about 2^-22 of |v|. The GEMM multiplies both halves,
// so x loses almost nothing to f16.
//
// Layout (u32 words of two f16): row t at t · p.row_words words; per block of 16 features, 8
// words of hi then 8 words of lo (a 16 × 16 B fragment of the GEMM is 16 consecutive f16 per
// token). At word p.sig_off + t: 2^-(sh + 8) as f32, the factor that undoes the row's scale and
// the GEMM's weight scale (2^8).
//
// XGRP (the GEMM's exact-weights form, WEXACT in matmul_coop.wgsl): the row is scaled into
// [2^7, 2^8) instead, and after its k features come pseudo-features: group g of p.group features
// (at most 128) has its sum X_g = Σ v (in feature order, f32; |X_g| < 2^15, inside f16's range)
// as features k + 2g and k + 2g + 1 (the same pair twice: the GEMM puts the hi and lo halves of
// the group's weight offset there), zeros up to p.row_words.
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec2<f32>>;     // [T, x_stride / 2]
@group(0) @binding(3) var<storage, read_write> xs: array<u32>;    // [R, k] words, then sig

const WG: u32 = 256u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wid.z;
    if (t >= step.{{TOKENS}}) { return; }
    let xb = (t * p.x_stride + p.x_col) / 2u;
    let pairs = p.k / 2u;
    var m = 0.0;
    for (var j = lid; j < pairs; j += WG) {
        let v = abs(x[xb + j]);
        m = max(m, max(v.x, v.y));
    }
    red[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    // 2^e <= max |x| < 2^(e + 1) (e = -127 for zero); sh keeps 2^(sh + 8) and 2^-(sh + 8)
    // normal f32.
    let e = i32((bitcast<u32>(red[0]) >> 23u) & 0xFFu) - 127;
#if XGRP
    let sh = clamp(7 - e, -114, 118);
#else
    let sh = clamp(13 - e, -114, 118);
#endif
    let sc = bitcast<f32>(u32(sh + 127) << 23u);
    if (lid == 0u) {
        xs[p.sig_off + t] = u32(127 - sh - 8) << 23u;
    }
    let ob = t * p.row_words;
    for (var j = lid; j < pairs; j += WG) {
        let v = x[xb + j] * sc;
        // hi: v with its mantissa cut to f16's 10 bits by a mask (f16-exact in f16's normal
        // range; compilers may drop a round trip through f16 as a no-op, never a mask), and
        // lo = v − hi exactly in f32, then rounded to f16.
        let hv = bitcast<vec2<f32>>(bitcast<vec2<u32>>(v) & vec2<u32>(0xFFFFE000u));
        let hw = pack2x16float(hv);
        let lw = pack2x16float(v - hv);
        // Features 2j, 2j + 1: block (2j) / 16, word j % 8 of its hi and lo halves.
        let o = ob + (j / 8u) * 16u + j % 8u;
        xs[o] = hw;
        xs[o + 8u] = lw;
    }
#if XGRP
    // The pseudo-features: word pair g of the region after the k features holds group g's sum
    // (both halves of a word: features k + 2g, k + 2g + 1), or zeros past the last group.
    let ng = p.k / p.group;
    for (var g = lid; g < (p.row_words - p.k) / 2u; g += WG) {
        var hw = 0u;
        var lw = 0u;
        if (g < ng) {
            let g0 = xb + g * (p.group / 2u);
            var sum = 0.0;
            for (var j = 0u; j < p.group / 2u; j++) {
                let v = x[g0 + j] * sc;
                sum = sum + v.x;
                sum = sum + v.y;
            }
            let h = bitcast<f32>(bitcast<u32>(sum) & 0xFFFFE000u);
            hw = pack2x16float(vec2<f32>(h));
            lw = pack2x16float(vec2<f32>(sum - h));
        }
        let o = ob + p.k + (g / 8u) * 16u + g % 8u;
        xs[o] = hw;
        xs[o + 8u] = lw;
    }
#endif
}
