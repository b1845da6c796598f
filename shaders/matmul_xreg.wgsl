// Quantized matmul for the decode tiles (1 and 2 tokens) with the input held in registers.
// Same bindings and parameters as matmul_staged.wgsl; needs subgroups.
//
// The row's K is split over the whole workgroup: thread `lid` owns the 16-byte weight blocks
// lid, lid + WG, ... (CB of them) of every row, so a subgroup's loads of one row are one
// contiguous run. The thread loads the x values under its blocks once, into registers, and
// streams RPW rows past them, RU rows at a time (all RU rows' loads issued before any is used):
// no workgroup memory and no barrier until the final reduction.
//
// Codes without shifts or int-to-float conversions (quant.wgsl's codes_lo / codes_hi): x is held
// pre-multiplied by X_LO / X_HI, so each product equals x·q bit for bit.
//
// Per (row, token): acc += s · Σ_block (x·q) + b · Σ_block x over the thread's blocks, the
// subgroup's sum (subgroupAdd), then the subgroups' partials in subgroup order. The two tiles
// run the same sequence per token, so row 0 of a 2-token call equals a 1-token call bit for bit.
//
// Defines: WG, CB (blocks per thread), RPW (rows per workgroup), RU (rows per step, divides RPW),
// MT (tokens per tile), NSG (most subgroups a workgroup can have),
// TOKENS, ADD, SWIGLU, NORM, Q4 or Q8, SCALE_F32 / SCALE_F16 / SCALE_BF16.
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;      // [T, x_stride / 4]
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;      // [n, blocks_per_row]
@group(0) @binding(4) var<storage, read> scales: array<u32>;       // [n, k / group]
@group(0) @binding(5) var<storage, read> biases: array<u32>;       // [n, k / group]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;      // [T, y_stride]
#if NORM
@group(0) @binding(7) var<storage, read> nw: array<vec4<f32>>;     // [k / 4] RMSNorm weight
#endif

const WG: u32 = {{WG}}u;
const CB: u32 = {{CB}}u;
const RPW: u32 = {{RPW}}u;
const RU: u32 = {{RU}}u;
const MT: u32 = {{MT}}u;
const NSG: u32 = {{NSG}}u;
#if Q4
const EPB: u32 = 32u;      // values per block
const XPW: u32 = 2u;       // x vec4 per code word
#else
const EPB: u32 = 16u;
const XPW: u32 = 1u;
#endif
const XV: u32 = EPB / 4u;  // x vec4 under one block

#include "quant.wgsl"

// Partials of every (row, token) per subgroup: red[(row * MT + token) * NSG + subgroup].
var<workgroup> red: array<f32, RPW * MT * NSG>;
#if NORM
// NORM: the RMSNorm in front of this matmul is folded in (spec §4.3): x is held as w_norm ∘ x,
// each thread sums the squares of its x values (per token, in block order), the sums are
// reduced like the outputs, and every (row, token) is scaled by 1/sqrt(mean(x²) + eps) at the
// end. The same bits for 1 and 2 tokens; not the bits of rms_norm followed by a matmul.
var<workgroup> nrm: array<f32, MT * NSG>;
#endif

// Σ of the subgroup partials of output `o` in subgroup order.
fn total(o: u32, nsg: u32) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < nsg; j++) {
        s += red[o * NSG + j];
    }
    return s;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {
    let T = step.{{TOKENS}};
    let r0 = wg_linear(wid, nwg) * RPW;
    if (r0 >= p.n) { return; }
    let t0 = wid.z * MT;
    let bpr = p.k / EPB;
    let xs4 = p.x_stride / 4u;
    let sgi = lid / sg_size;
    let nsg = (WG + sg_size - 1u) / sg_size;

    // This thread's blocks (clamped: a block past the row reads the last one with x = 0, so it
    // adds exactly 0) and their groups.
#for C CB
    let bc{{C}} = lid + {{C}}u * WG;
    let bw{{C}} = min(bc{{C}}, bpr - 1u);
    let g{{C}} = (bw{{C}} * EPB) / p.group_size;
#endfor

    // x under the blocks, every token of the tile, pre-scaled per code position; Σ x per block.
#for T MT
    let xr{{T}} = min(t0 + {{T}}u, T - 1u) * xs4 + p.x_col / 4u;
    let on{{T}} = t0 + {{T}}u < T;
#if NORM
    var ss{{T}} = 0.0;
#endif
#for C CB
    let live{{T}}_{{C}} = on{{T}} && bc{{C}} < bpr;
    var sx{{T}}_{{C}} = 0.0;
#for J 4
    var xl{{T}}_{{C}}_{{J}} = vec4<f32>(0.0);
#if Q4
    var xh{{T}}_{{C}}_{{J}} = vec4<f32>(0.0);
#endif
    if (live{{T}}_{{C}}) {
        let i = bw{{C}} * XV + {{J}}u * XPW;
        var a = x[xr{{T}} + i];
#if NORM
        ss{{T}} += dot(a, a);
        a = a * nw[i];
#endif
        sx{{T}}_{{C}} += a.x + a.y + a.z + a.w;
        xl{{T}}_{{C}}_{{J}} = a * X_LO;
#if Q4
        var h = x[xr{{T}} + i + 1u];
#if NORM
        ss{{T}} += dot(h, h);
        h = h * nw[i + 1u];
#endif
        sx{{T}}_{{C}} += h.x + h.y + h.z + h.w;
        xh{{T}}_{{C}}_{{J}} = h * X_HI;
#endif
    }
#endfor
#endfor
#endfor
#if NORM
#for T MT
    {
        let s = subgroupAdd(ss{{T}});
        if (sg_lane == 0u) { nrm[{{T}}u * NSG + sgi] = s; }
    }
#endfor
#endif

    for (var rb = 0u; rb < RPW; rb += RU) {
        // Every load of the step first.
#for R RU
        let row{{R}} = min(r0 + rb + {{R}}u, p.n - 1u);
#for C CB
        let wb{{R}}_{{C}} = w[row{{R}} * bpr + bw{{C}}];
        let sb{{R}}_{{C}} = scale_bias(row{{R}} * p.groups_per_row + g{{C}});
#endfor
#endfor
#for R RU
        {
#for T MT
            var a{{T}} = 0.0;
#endfor
#for C CB
            {
#for J 4
                let ql{{J}} = codes_lo(wb{{R}}_{{C}}[{{J}}u]);
#if Q4
                let qh{{J}} = codes_hi(wb{{R}}_{{C}}[{{J}}u]);
#endif
#endfor
#for T MT
                {
                    var d = 0.0;
#for J 4
#if Q4
                    d += dot(ql{{J}}, xl{{T}}_{{C}}_{{J}}) + dot(qh{{J}}, xh{{T}}_{{C}}_{{J}});
#else
                    d += dot(ql{{J}}, xl{{T}}_{{C}}_{{J}});
#endif
#endfor
                    a{{T}} += sb{{R}}_{{C}}.x * d + sb{{R}}_{{C}}.y * sx{{T}}_{{C}};
                }
#endfor
            }
#endfor
#for T MT
            {
                let s = subgroupAdd(a{{T}});
                if (sg_lane == 0u) { red[((rb + {{R}}u) * MT + {{T}}u) * NSG + sgi] = s; }
            }
#endfor
        }
#endfor
    }
    workgroupBarrier();

#if NORM
    var inv = array<f32, MT>();
    for (var t = 0u; t < MT; t++) {
        var s = 0.0;
        for (var j = 0u; j < nsg; j++) {
            s += nrm[t * NSG + j];
        }
        inv[t] = inverseSqrt(s / f32(p.k) + p.eps);
    }
#endif
#if SWIGLU
    // Rows come in (gate, up) pairs (RPW even): y[t, (row0 + row) / 2] = silu(gate) * up.
    for (var o = lid; o < RPW / 2u * MT; o += WG) {
        let pr = o / MT;
        let t = o % MT;
        let row = r0 + 2u * pr;
        if (row + 1u < p.n && t0 + t < T) {
            var g = total(2u * pr * MT + t, nsg);
            var u = total((2u * pr + 1u) * MT + t, nsg);
#if NORM
            g = g * inv[t];
            u = u * inv[t];
#endif
            y[(t0 + t) * p.y_stride + (p.row0 + row) / 2u] = silu(g) * u;
        }
    }
#else
    for (var o = lid; o < RPW * MT; o += WG) {
        let r = o / MT;
        let t = o % MT;
        let row = r0 + r;
        if (row < p.n && t0 + t < T) {
            var v = total(o, nsg);
#if NORM
            v = v * inv[t];
#endif
            let oi = (t0 + t) * p.y_stride + p.row0 + row;
#if ADD
            y[oi] = y[oi] + v;
#else
            y[oi] = v;
#endif
        }
    }
#endif
}
