// Quantized matmul for prompt chunks on cooperative matrices (tensor cores: 16 × 16 × 16,
// f16 × f16 + f32), ops::matmul::use_coop. Same parameters as the other quantized matmuls; x
// comes from xsplit.wgsl as f16 pairs (hi + lo) of the row scaled by a power of two, with the
// factor that undoes it.
//
// A workgroup of WG = 32 · SGR · SGC threads computes BN rows × BT tokens; subgroup (sr, sc) of
// 32 consecutive invocations owns FM × FN fragments of 16 × 16 (rows sr·16·FM.., tokens
// sc·16·FN..). Per step of BK features the tile's weights are dequantized (w = s·q + b, spec
// §3.1), scaled by 2^8 (exact) and written to workgroup memory as f16 pairs, hi (w with its
// mantissa cut to 10 bits) and lo = f16(w − hi) (WLO; without it w is rounded to f16); the next step's code words are read
// before the current step's products. The step's x (BT tokens, hi and lo) is staged in workgroup
// memory the same way, with 16-byte reads of xsplit's rows. Each
// fragment accumulates, per 16 features, lo(w)·hi(x) [WLO], hi(w)·lo(x) [XLO], then hi(w)·hi(x)
// in f32. The epilogue stores each fragment to workgroup memory and the subgroup's lanes scale
// it back (×2^-(sh + 8), exact), then write, add (ADD) or pair it (SWIGLU).
//
// WEXACT (4-bit codes with bf16 scales): w = s·(q − 8) + b' with b' = b + 8s. s·(q − 8)·2^8 is
// exact in one f16 (a bf16 scale has 8 significant bits, q − 8 in [−8, 7] at most 3), so the
// main steps stage one f16 per weight and each fragment accumulates w·lo(x), then w·hi(x): the
// weights exact, two products instead of three. The offsets enter as pseudo-features after the
// row's k (xsplit.wgsl's XGRP: group g's sum X_g at features k + 2g and k + 2g + 1): tail steps
// stage hi(b'·2^8) and lo(b'·2^8) there, so the same products add Σ_g b'_g·X_g. x is scaled into
// [2^7, 2^8) so that the group sums stay inside f16's range.
//
// A (row, token)'s sum depends only on its row of weights and its own x (the products of other
// tokens never enter it), so a prompt gives the same bits in chunks of any size and any tile of
// tokens; not the bits of the f32 GEMM (rounding of f16 pairs, tensor-core accumulation).
//
// Defines: BN, BT, BK (multiple of 16), SGR, SGC, FM = BN / (16·SGR), FN = BT / (16·SGC), WG,
// WL = BN·BK / (EPW·WG) and XL = BT·BK / (4·WG) whole, WLO, XLO, XCLAMP, WEXACT, TOKENS, ADD,
// SWIGLU, Q4 or Q8, SCALE_*. p.x_stride: u32 words per xsplit row (k, or k and the
// pseudo-features under WEXACT, a multiple of BK).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> xs: array<vec4<f16>>;     // xsplit.wgsl rows: [R, k / 2]
@group(0) @binding(3) var<storage, read> w: array<u32>;            // [n, k / EPW] code words
@group(0) @binding(4) var<storage, read> scales: array<u32>;       // [n, k / group]
@group(0) @binding(5) var<storage, read> biases: array<u32>;       // [n, k / group]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;      // [T, y_stride]
@group(0) @binding(7) var<storage, read> sig: array<f32>;          // the xsplit buffer: factor per row at p.sig_off

const BN: u32 = {{BN}}u;
const BT: u32 = {{BT}}u;
const BK: u32 = {{BK}}u;
const SGC: u32 = {{SGC}}u;
const FM: u32 = {{FM}}u;
const FN: u32 = {{FN}}u;
const WG: u32 = {{WG}}u;
const NSG: u32 = WG / 32u;
#if Q4
const EPW: u32 = 8u;
const MASK: u32 = 15u;
// Shifts of a word's codes 0..3 (codes 4..7: 16 more); the #for V VW blocks take 4 each.
const CSH = vec4<u32>(0u, 4u, 8u, 12u);
#else
const EPW: u32 = 4u;
const MASK: u32 = 255u;
const CSH = vec4<u32>(0u, 8u, 16u, 24u);
#endif
const WPS: u32 = BK / EPW;     // code words per row per step
const AS: u32 = BK + 8u;       // f16 per row of the staged weights (padded against bank conflicts)
const WSCALE: f32 = 256.0;

const XW: u32 = BK;            // u32 words of one token's x in a step (hi and lo: one word per feature)
const XS: u32 = 2u * BK + 8u;  // f16 per token row of the staged x (padded)
const XL: u32 = {{XL}}u;       // vec4<u32> of x each thread stages per step: BT·XW / (4·WG)

var<workgroup> ah: array<f16, BN * AS>;
#if WLO
var<workgroup> al: array<f16, BN * AS>;
#endif
var<workgroup> xb: array<f16, BT * XS>;
var<workgroup> cs: array<f32, NSG * 256u>;

#include "quant.wgsl"

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let T = step.{{TOKENS}};
    // (No early return for workgroups past the last row, which a grid split over two dimensions
    // can have: cooperative operations need uniform control flow. They stage clamped rows and
    // write nothing.)
    let n0 = wg_linear(wid, nwg) * BN;
    let t0 = wid.z * BT;
    let wpr = p.k / EPW;
    let sg = lid / 32u;
    let lane = lid % 32u;
    let ar = (sg / SGC) * FM * 16u;    // this subgroup's first tile row
    let at = (sg % SGC) * FN * 16u;    // and first tile token

#for I FM
#for J FN
    var c_{{I}}_{{J}} = coop_mat16x16<f32, C>();
#endfor
#endfor

    // Thread lid stages code words i % WPS of tile row i / WPS, for i = lid, lid + WG, ...
#for L WL
    let wr{{L}} = min(n0 + (lid + {{L}}u * WG) / WPS, p.n - 1u);
    let wd{{L}} = (lid + {{L}}u * WG) % WPS;
    var wq{{L}} = w[wr{{L}} * wpr + wd{{L}}];
    var sb{{L}} = scale_bias(wr{{L}} * p.groups_per_row + (wd{{L}} * EPW) / p.group_size);
#endfor

    // Thread lid stages x vec4 i % (XW / 4) of tile token i / (XW / 4), i = lid, lid + WG, ...
    // (one token's step is XW contiguous words: per 16 features, 8 words of hi then 8 of lo).
    // (Read as two vec4<f16> per 16 bytes: no conversions.)
    let xrow8 = p.x_stride / 2u;
#for L XL
    let xt{{L}} = (lid + {{L}}u * WG) / (XW / 4u);
    let xv{{L}} = (lid + {{L}}u * WG) % (XW / 4u);
#if XCLAMP
    // Tokens of the tile past the step's read the step's last row: the same few cache lines
    // for all of them, not rows nobody needs (their products' columns are never written, and
    // a column's products use only that column's x). Only in the short-chunk forms, whose
    // tiles are mostly past the step: in the full tiles the clamped address, computed once and
    // kept, cost 23 % at 1024 tokens (H100).
    let xr{{L}} = min(t0 + xt{{L}}, T - 1u) * xrow8 + 2u * xv{{L}};
#else
    let xr{{L}} = (t0 + xt{{L}}) * xrow8 + 2u * xv{{L}};
#endif
    var xa{{L}} = xs[xr{{L}}];
    var xc{{L}} = xs[xr{{L}} + 1u];
#endfor

    let nsteps = p.k / BK;
    for (var s = 0u; s < nsteps; s++) {
        workgroupBarrier();
#for L XL
        {
            let xo = xt{{L}} * XS + xv{{L}} * 8u;
            xb[xo] = xa{{L}}.x;
            xb[xo + 1u] = xa{{L}}.y;
            xb[xo + 2u] = xa{{L}}.z;
            xb[xo + 3u] = xa{{L}}.w;
            xb[xo + 4u] = xc{{L}}.x;
            xb[xo + 5u] = xc{{L}}.y;
            xb[xo + 6u] = xc{{L}}.z;
            xb[xo + 7u] = xc{{L}}.w;
        }
#endfor
#for L WL
        {
            let base = ((lid + {{L}}u * WG) / WPS) * AS + wd{{L}} * EPW;
            // w·2^8 = fma(s·2^8, q, b·2^8) four codes at a time; codes to f32 without a
            // conversion instruction (2^23 + q has q in its mantissa bits). WEXACT:
            // s·2^8·(q − 8) = fma(s·2^8, q, −8·s·2^8), exact in f32 and in f16.
            let s4 = vec4<f32>(sb{{L}}.x * WSCALE);
#if WEXACT
            let b4 = s4 * -8.0;
#else
            let b4 = vec4<f32>(sb{{L}}.y * WSCALE);
#endif
#for V VW
            {
                let q = bitcast<vec4<f32>>(((vec4<u32>(wq{{L}}) >> (CSH + vec4<u32>(16u * {{V}}u))) & vec4<u32>(MASK)) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
                let wv = fma(s4, q, b4);
#if WLO
                // hi: the mantissa cut to f16's 10 bits by a mask (a round trip through f16
                // may be dropped by a compiler as a no-op, a mask never), lo = f16(w − hi).
                let hv = bitcast<vec4<f32>>(bitcast<vec4<u32>>(wv) & vec4<u32>(0xFFFFE000u));
                let hh = vec4<f16>(hv);
                let ll = vec4<f16>(wv - hv);
                al[base + {{V}}u * 4u] = ll.x;
                al[base + {{V}}u * 4u + 1u] = ll.y;
                al[base + {{V}}u * 4u + 2u] = ll.z;
                al[base + {{V}}u * 4u + 3u] = ll.w;
#else
                let hh = vec4<f16>(wv);
#endif
                ah[base + {{V}}u * 4u] = hh.x;
                ah[base + {{V}}u * 4u + 1u] = hh.y;
                ah[base + {{V}}u * 4u + 2u] = hh.z;
                ah[base + {{V}}u * 4u + 3u] = hh.w;
            }
#endfor
        }
#endfor
        workgroupBarrier();
        if (s + 1u < nsteps) {
#for L XL
#if XCLAMP
            xa{{L}} = xs[xr{{L}} + 2u * (s + 1u) * (XW / 4u)];
            xc{{L}} = xs[xr{{L}} + 2u * (s + 1u) * (XW / 4u) + 1u];
#else
            xa{{L}} = xs[(t0 + xt{{L}}) * xrow8 + 2u * ((s + 1u) * (XW / 4u) + xv{{L}})];
            xc{{L}} = xs[(t0 + xt{{L}}) * xrow8 + 2u * ((s + 1u) * (XW / 4u) + xv{{L}}) + 1u];
#endif
#endfor
#for L WL
            wq{{L}} = w[wr{{L}} * wpr + (s + 1u) * WPS + wd{{L}}];
            sb{{L}} = scale_bias(wr{{L}} * p.groups_per_row + ((s + 1u) * BK + wd{{L}} * EPW) / p.group_size);
#endfor
        }
        for (var kk = 0u; kk < BK; kk += 16u) {
#for I FM
            let ia{{I}} = (ar + {{I}}u * 16u) * AS + kk;
            let ah{{I}} = coopLoadT<coop_mat16x16<f16, A>>(&ah[ia{{I}}], AS);
#if WLO
            let al{{I}} = coopLoadT<coop_mat16x16<f16, A>>(&al[ia{{I}}], AS);
#endif
#endfor
#for J FN
            let ib{{J}} = (at + {{J}}u * 16u) * XS + kk * 2u;
            let bh{{J}} = coopLoad<coop_mat16x16<f16, B>>(&xb[ib{{J}}], XS);
#if XLO
            let ibl{{J}} = ib{{J}} + 16u;
            let bl{{J}} = coopLoad<coop_mat16x16<f16, B>>(&xb[ibl{{J}}], XS);
#endif
#endfor
#for I FM
#for J FN
#if WLO
            c_{{I}}_{{J}} = coopMultiplyAdd(al{{I}}, bh{{J}}, c_{{I}}_{{J}});
#endif
#if XLO
            c_{{I}}_{{J}} = coopMultiplyAdd(ah{{I}}, bl{{J}}, c_{{I}}_{{J}});
#endif
            c_{{I}}_{{J}} = coopMultiplyAdd(ah{{I}}, bh{{J}}, c_{{I}}_{{J}});
#endfor
#endfor
        }
    }

#if WEXACT
    // Tail steps (a separate loop: the main one stays straight-line): the pseudo-features, x's
    // group sums against the groups' offsets b' = b + 8s (×2^8, exact) as hi at feature 2g and
    // lo at 2g + 1 of row wr; zeros past the row's groups (their x pseudo-features are zeros).
    let ns = p.x_stride / BK;
    for (var s = nsteps; s < ns; s++) {
#for L XL
#if XCLAMP
        xa{{L}} = xs[xr{{L}} + 2u * s * (XW / 4u)];
        xc{{L}} = xs[xr{{L}} + 2u * s * (XW / 4u) + 1u];
#else
        xa{{L}} = xs[(t0 + xt{{L}}) * xrow8 + 2u * (s * (XW / 4u) + xv{{L}})];
        xc{{L}} = xs[(t0 + xt{{L}}) * xrow8 + 2u * (s * (XW / 4u) + xv{{L}}) + 1u];
#endif
#endfor
        workgroupBarrier();
#for L XL
        {
            let xo = xt{{L}} * XS + xv{{L}} * 8u;
            xb[xo] = xa{{L}}.x;
            xb[xo + 1u] = xa{{L}}.y;
            xb[xo + 2u] = xa{{L}}.z;
            xb[xo + 3u] = xa{{L}}.w;
            xb[xo + 4u] = xc{{L}}.x;
            xb[xo + 5u] = xc{{L}}.y;
            xb[xo + 6u] = xc{{L}}.z;
            xb[xo + 7u] = xc{{L}}.w;
        }
#endfor
#for L WL
        {
            let base = ((lid + {{L}}u * WG) / WPS) * AS + wd{{L}} * EPW;
            let gq = ((s - nsteps) * BK + wd{{L}} * EPW) / 2u;
#for V VW
            {
                let g0 = gq + {{V}}u * 2u;
                let gl = p.groups_per_row - 1u;
                let sa = scale_bias(wr{{L}} * p.groups_per_row + min(g0, gl));
                let sz = scale_bias(wr{{L}} * p.groups_per_row + min(g0 + 1u, gl));
                let bv = vec2<f32>(
                    select(0.0, fma(sa.x, 8.0, sa.y), g0 <= gl),
                    select(0.0, fma(sz.x, 8.0, sz.y), g0 + 1u <= gl),
                ) * WSCALE;
                let hv = bitcast<vec2<f32>>(bitcast<vec2<u32>>(bv) & vec2<u32>(0xFFFFE000u));
                let hh = vec2<f16>(hv);
                let ll = vec2<f16>(bv - hv);
                ah[base + {{V}}u * 4u] = hh.x;
                ah[base + {{V}}u * 4u + 1u] = ll.x;
                ah[base + {{V}}u * 4u + 2u] = hh.y;
                ah[base + {{V}}u * 4u + 3u] = ll.y;
            }
#endfor
        }
#endfor
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += 16u) {
#for I FM
            let ia{{I}} = (ar + {{I}}u * 16u) * AS + kk;
            let ah{{I}} = coopLoadT<coop_mat16x16<f16, A>>(&ah[ia{{I}}], AS);
#endfor
#for J FN
            let ib{{J}} = (at + {{J}}u * 16u) * XS + kk * 2u;
            let bh{{J}} = coopLoad<coop_mat16x16<f16, B>>(&xb[ib{{J}}], XS);
            let bl{{J}} = coopLoad<coop_mat16x16<f16, B>>(&xb[ib{{J}} + 16u], XS);
#endfor
#for I FM
#for J FN
            c_{{I}}_{{J}} = coopMultiplyAdd(ah{{I}}, bl{{J}}, c_{{I}}_{{J}});
            c_{{I}}_{{J}} = coopMultiplyAdd(ah{{I}}, bh{{J}}, c_{{I}}_{{J}});
#endfor
#endfor
        }
    }
#endif

    // Epilogue: fragment (I, J) through this subgroup's 256 floats of workgroup memory, column
    // major (row i, token j at j·16 + i).
    let cb = sg * 256u;
#for I FM
#for J FN
    {
        coopStore(c_{{I}}_{{J}}, &cs[cb], 16u);
        workgroupBarrier();
        let rb = n0 + ar + {{I}}u * 16u;
        let tb = t0 + at + {{J}}u * 16u;
#if SWIGLU
        // Rows come in (gate, up) pairs: 8 pairs per token.
        for (var e = 0u; e < 4u; e++) {
            let idx = lane + 32u * e;
            let pr = idx % 8u;
            let j = idx / 8u;
            let row = rb + 2u * pr;
            let t = tb + j;
            if (row + 1u < p.n && t < T) {
                let f = sig[p.sig_off + t];
                let g = cs[cb + j * 16u + 2u * pr] * f;
                let u = cs[cb + j * 16u + 2u * pr + 1u] * f;
                y[t * p.y_stride + (p.row0 + row) / 2u] = silu(g) * u;
            }
        }
#else
        for (var e = 0u; e < 8u; e++) {
            let idx = lane + 32u * e;
            let i = idx % 16u;
            let j = idx / 16u;
            let row = rb + i;
            let t = tb + j;
            if (row < p.n && t < T) {
                let v = cs[cb + j * 16u + i] * sig[p.sig_off + t];
                let o = t * p.y_stride + p.row0 + row;
#if ADD
                y[o] = y[o] + v;
#else
                y[o] = v;
#endif
            }
        }
#endif
        workgroupBarrier();
    }
#endfor
#endfor
}
