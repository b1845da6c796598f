// y[t, row0 + r] (+)= sum_k x[t, k] * W[r, k]   for the rows of one weight chunk.
//
// Weight formats (one define): Q4 / Q8 = MLX affine (u32-packed codes, LSB first; per-group
// scale and bias, w = s*q + b, spec §3.1); F32 / F16 / BF16 = dense.
// Scales/biases (quantized only): SCALE_F32 / SCALE_F16 / SCALE_BF16.
// Quantized rows are read as u32 code words (8 codes Q4, 4 codes Q8); a word never straddles a
// quantization group (groups are multiples of 32 elements), so the per-group identity
// sum x*(s*q + b) = s*sum(x*q) + b*sum(x)  is applied per word.
// Dense rows are read in "blocks" of one vec4<u32> (16 bytes): 8 values (F16/BF16), 4 (F32).
//
// Batch invariance: each (row, token) is reduced in the same order whatever the number of tokens,
// the token tile size MT, or the tile a token lands in (tokens only select which x row is read).
//
// Defines: WG (threads), ROWS (rows per workgroup), MT (tokens per tile), UNROLL (code words per
// thread per loop iteration), TOKENS (Step field that holds the row count: n_tokens or n_out),
// ADD (accumulate into y), SWIGLU (rows are interleaved gate/up pairs: write silu(gate) * up),
// SUBGROUPS.
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;      // [T, x_stride / 4]
#if QWORDS
@group(0) @binding(3) var<storage, read> w: array<u32>;            // [n, k / EPW] code words
#else
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;      // [n, blocks_per_row]
#endif
#if QUANT
@group(0) @binding(4) var<storage, read> scales: array<u32>;       // [n, k / group] (packed per SCALE_*)
@group(0) @binding(5) var<storage, read> biases: array<u32>;       // [n, k / group]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;      // [T, y_stride]
#else
@group(0) @binding(4) var<storage, read_write> y: array<f32>;      // [T, y_stride]
#endif

const WG: u32 = {{WG}}u;
const ROWS: u32 = {{ROWS}}u;
const MT: u32 = {{MT}}u;
const NACC: u32 = ROWS * MT;
const UNROLL: u32 = {{UNROLL}}u;

#if Q4
const EPB: u32 = 32u; // elements per block
const EPW: u32 = 8u;  // elements per u32 code word
#elif Q8
const EPB: u32 = 16u;
const EPW: u32 = 4u;
#elif F32
const EPB: u32 = 4u;
#else
const EPB: u32 = 8u;
#endif

#if QUANT
#include "quant.wgsl"
#endif

// The x values under one weight block for one token (read once, used by every row of the
// workgroup) and their sum (for the affine bias term).
const XV: u32 = EPB / 4u;
struct XBlock {
    v: array<vec4<f32>, XV>,
    s: f32,
}

fn load_x(xbase: u32) -> XBlock {
    var xb: XBlock;
    var sx = 0.0;
    for (var i = 0u; i < XV; i++) {
        let xi = x[xbase + i];
        xb.v[i] = xi;
        sx += xi.x + xi.y + xi.z + xi.w;
    }
    xb.s = sx;
    return xb;
}

// One weight block as f32 values (quantized: the codes q; dense: the weights).
fn unpack_block(wb: vec4<u32>) -> array<vec4<f32>, XV> {
    var wv: array<vec4<f32>, XV>;
#if Q4
    for (var i = 0u; i < 4u; i++) {
        let word = vec4<u32>(wb[i]);
        wv[2u * i] = codes_f32((word >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
        wv[2u * i + 1u] = codes_f32((word >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
    }
#elif Q8
    for (var i = 0u; i < 4u; i++) {
        wv[i] = codes_f32((vec4<u32>(wb[i]) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
    }
#elif F32
    wv[0] = bitcast<vec4<f32>>(wb);
#elif F16
    for (var i = 0u; i < 2u; i++) {
        wv[i] = vec4<f32>(unpack2x16float(wb[2u * i]), unpack2x16float(wb[2u * i + 1u]));
    }
#else
    for (var i = 0u; i < 2u; i++) {
        let u0 = wb[2u * i];
        let u1 = wb[2u * i + 1u];
        wv[i] = vec4<f32>(bf16_lo(u0), bf16_hi(u0), bf16_lo(u1), bf16_hi(u1));
    }
#endif
    return wv;
}

// Partial dot of one unpacked block with its x values: sum x*q (quantized) or sum x*w (dense).
// The same sequence of operations whichever loop order calls it.
fn block_dot(wv: array<vec4<f32>, XV>, xv: array<vec4<f32>, XV>) -> f32 {
    var d = 0.0;
#if Q4
    for (var i = 0u; i < 4u; i++) {
        d += dot(wv[2u * i], xv[2u * i]) + dot(wv[2u * i + 1u], xv[2u * i + 1u]);
    }
#else
    for (var i = 0u; i < XV; i++) {
        d += dot(wv[i], xv[i]);
    }
#endif
    return d;
}

var<workgroup> red: array<f32, WG * NACC>;


@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
) {
    let T = step.{{TOKENS}};
    let wg = wg_linear(wid, nwg);
    let r0 = wg * ROWS;
    if (r0 >= p.n) { return; }
    let t0 = wid.z * MT;
    let bpr = p.k / EPB;          // blocks per row
    let xs4 = p.x_stride / 4u;    // x row stride in vec4 units

#if QWORDS
    // Quantized formats. Thread `lid` takes the u32 code words lid, lid + WG, lid + 2*WG, ... of
    // every row of the tile, so a subgroup reads each row's words and each token's x values as
    // contiguous runs (coalesced: one 128-byte line serves 8 lanes' x, 32 lanes' words). UNROLL
    // words per thread are loaded before any is used (bytes in flight); rows (R), tokens (T) and
    // words (J) are unrolled so every value stays in a register: per word, each row's codes are
    // unpacked once for every token and each token's x is read once for every row.
    // Per (row, token) the sum runs over the thread's words in increasing order, whatever
    // UNROLL, ROWS or MT: acc += s * (x . q) + b * sum(x) per word (a word never straddles a
    // quantization group).
#for R ROWS
    let row{{R}} = min(r0 + {{R}}u, p.n - 1u);
#for T MT
    var acc_{{R}}_{{T}} = 0.0;
#endfor
#endfor
#for T MT
    let on{{T}} = t0 + {{T}}u < T;
    let xr{{T}} = min(t0 + {{T}}u, T - 1u) * xs4 + p.x_col / 4u;
#endfor
    let wpr = p.k / EPW;          // code words per row
    for (var base = lid; base < wpr; base += WG * UNROLL) {
#for J UNROLL
        let wd{{J}} = min(base + {{J}}u * WG, wpr - 1u);
        let sg{{J}} = (wd{{J}} * EPW) / p.group_size;
#for R ROWS
        let cw{{J}}_{{R}} = w[row{{R}} * wpr + wd{{J}}];
        let sb{{J}}_{{R}} = scale_bias(row{{R}} * p.groups_per_row + sg{{J}});
#endfor
#for T MT
#if Q4
        let xa{{J}}_{{T}} = x[xr{{T}} + 2u * wd{{J}}];
        let xc{{J}}_{{T}} = x[xr{{T}} + 2u * wd{{J}} + 1u];
#else
        let xa{{J}}_{{T}} = x[xr{{T}} + wd{{J}}];
#endif
#endfor
#endfor
#for J UNROLL
        if (base + {{J}}u * WG < wpr) {
#for T MT
#if Q4
            let sx{{T}} = (xa{{J}}_{{T}}.x + xa{{J}}_{{T}}.y + xa{{J}}_{{T}}.z + xa{{J}}_{{T}}.w) + (xc{{J}}_{{T}}.x + xc{{J}}_{{T}}.y + xc{{J}}_{{T}}.z + xc{{J}}_{{T}}.w);
#else
            let sx{{T}} = xa{{J}}_{{T}}.x + xa{{J}}_{{T}}.y + xa{{J}}_{{T}}.z + xa{{J}}_{{T}}.w;
#endif
#endfor
#for R ROWS
            {
                let v = vec4<u32>(cw{{J}}_{{R}});
#if Q4
                let lo = codes_f32((v >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
                let hi = codes_f32((v >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
#for T MT
                if (on{{T}}) {
                    acc_{{R}}_{{T}} += sb{{J}}_{{R}}.x * (dot(lo, xa{{J}}_{{T}}) + dot(hi, xc{{J}}_{{T}})) + sb{{J}}_{{R}}.y * sx{{T}};
                }
#endfor
#else
                let lo = codes_f32((v >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
#for T MT
                if (on{{T}}) {
                    acc_{{R}}_{{T}} += sb{{J}}_{{R}}.x * dot(lo, xa{{J}}_{{T}}) + sb{{J}}_{{R}}.y * sx{{T}};
                }
#endfor
#endif
            }
#endfor
        }
#endfor
    }
    var acc: array<f32, NACC>;
#for R ROWS
#for T MT
    acc[{{R}}u * MT + {{T}}u] = acc_{{R}}_{{T}};
#endfor
#endfor
#elif QUANT
    // Quantized formats, unrolled over rows (R) and tokens (T) so every value stays in a
    // register: per block, each row's 16 bytes of codes and its group scale/bias are read once;
    // per u32 word, each token's x values are read once (for every row) and each row's codes
    // are unpacked once (for every token). Per (row, token) the order of operations is
    // block_dot's and load_x's.
#for R ROWS
#for T MT
    var acc_{{R}}_{{T}} = 0.0;
#endfor
#endfor
#for T MT
    let on{{T}} = t0 + {{T}}u < T;
#endfor
    for (var b = lid; b < bpr; b += WG) {
#for R ROWS
        let row{{R}} = min(r0 + {{R}}u, p.n - 1u);
        let wb{{R}} = w[row{{R}} * bpr + b];
        let sb{{R}} = scale_bias(row{{R}} * p.groups_per_row + (b * EPB) / p.group_size);
#endfor
#for T MT
        let xb{{T}} = (t0 + {{T}}u) * xs4 + p.x_col / 4u + b * XV;
        var sx{{T}} = 0.0;
#for R ROWS
        var d{{R}}_{{T}} = 0.0;
#endfor
#endfor
#for I 4
        {
#for T MT
            var xa{{T}} = vec4<f32>(0.0);
#if Q4
            var xc{{T}} = vec4<f32>(0.0);
#endif
            if (on{{T}}) {
#if Q4
                xa{{T}} = x[xb{{T}} + {{I}}u * 2u];
                xc{{T}} = x[xb{{T}} + {{I}}u * 2u + 1u];
                sx{{T}} += xa{{T}}.x + xa{{T}}.y + xa{{T}}.z + xa{{T}}.w;
                sx{{T}} += xc{{T}}.x + xc{{T}}.y + xc{{T}}.z + xc{{T}}.w;
                xa{{T}} = xa{{T}} * X_LO;
                xc{{T}} = xc{{T}} * X_HI;
#else
                xa{{T}} = x[xb{{T}} + {{I}}u];
                sx{{T}} += xa{{T}}.x + xa{{T}}.y + xa{{T}}.z + xa{{T}}.w;
                xa{{T}} = xa{{T}} * X_LO;
#endif
            }
#endfor
#for R ROWS
            // x is pre-scaled (X_LO / X_HI) so the codes need no shifts (quant.wgsl).
            let lo{{R}} = codes_lo(wb{{R}}[{{I}}]);
#if Q4
            let hi{{R}} = codes_hi(wb{{R}}[{{I}}]);
#endif
#endfor
#for T MT
            if (on{{T}}) {
#for R ROWS
#if Q4
                d{{R}}_{{T}} += dot(lo{{R}}, xa{{T}}) + dot(hi{{R}}, xc{{T}});
#else
                d{{R}}_{{T}} += dot(lo{{R}}, xa{{T}});
#endif
#endfor
            }
#endfor
        }
#endfor
#for R ROWS
#for T MT
        acc_{{R}}_{{T}} += sb{{R}}.x * d{{R}}_{{T}} + sb{{R}}.y * sx{{T}};
#endfor
#endfor
    }
    var acc: array<f32, NACC>;
#for R ROWS
#for T MT
    acc[{{R}}u * MT + {{T}}u] = acc_{{R}}_{{T}};
#endfor
#endfor
#else
    // Dense formats: one block (4 or 8 values) per row per iteration.
    var acc: array<f32, NACC>;
    for (var i = 0u; i < NACC; i++) { acc[i] = 0.0; }
    for (var b = lid; b < bpr; b += WG) {
        var wb: array<vec4<u32>, ROWS>;
        for (var r = 0u; r < ROWS; r++) {
            wb[r] = w[min(r0 + r, p.n - 1u) * bpr + b];
        }
        for (var t = 0u; t < MT; t++) {
            if (t0 + t < T) {
                let xb = load_x((t0 + t) * xs4 + p.x_col / 4u + b * XV);
                for (var r = 0u; r < ROWS; r++) {
                    acc[r * MT + t] += block_dot(unpack_block(wb[r]), xb.v);
                }
            }
        }
    }
#endif

    // Reduce every accumulator over the workgroup in a fixed order.
#if SUBGROUPS
    // Subgroup sums, then the subgroups' partials in subgroup order (subgroups of a 1-D
    // workgroup are runs of consecutive invocation indices, as on every Vulkan, Metal and D3D
    // implementation).
    let sgi = lid / sg_size;
    for (var i = 0u; i < NACC; i++) {
        let s = subgroupAdd(acc[i]);
        if (sg_lane == 0u) { red[i * WG + sgi] = s; }
    }
    workgroupBarrier();
    if (lid < NACC) {
        let nsg = (WG + sg_size - 1u) / sg_size;
        var s = 0.0;
        for (var j = 0u; j < nsg; j++) {
            s += red[lid * WG + j];
        }
        red[lid * WG] = s;
    }
    workgroupBarrier();
#else
    for (var i = 0u; i < NACC; i++) {
        red[i * WG + lid] = acc[i];
    }
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            for (var i = 0u; i < NACC; i++) {
                red[i * WG + lid] += red[i * WG + lid + stride];
            }
        }
        workgroupBarrier();
    }
#endif
#if SWIGLU
    // Rows come in (gate, up) pairs (interleaved at load, ROWS even, chunks start at even rows):
    // y[t, (row0 + row) / 2] = silu(gate) * up, the SwiGLU of spec §4.4 as its own kernel computes it.
    if (lid < NACC / 2u) {
        let pr = lid / MT;
        let t = lid % MT;
        let row = r0 + 2u * pr;
        if (row + 1u < p.n && t0 + t < T) {
            let g = red[(2u * pr * MT + t) * WG];
            let u = red[((2u * pr + 1u) * MT + t) * WG];
            y[(t0 + t) * p.y_stride + (p.row0 + row) / 2u] = silu(g) * u;
        }
    }
#else
    if (lid < NACC) {
        let r = lid / MT;
        let t = lid % MT;
        let row = r0 + r;
        if (row < p.n && t0 + t < T) {
            let o = (t0 + t) * p.y_stride + p.row0 + row;
#if ADD
            y[o] = y[o] + red[lid * WG];
#else
            y[o] = red[lid * WG];
#endif
        }
    }
#endif
}
