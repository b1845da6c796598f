// Quantized matmul for the decode tiles (1 and 2 tokens) with x staged in workgroup memory.
// The default for quantized decode tiles where the limits allow (ops::matmul::staged): same
// bindings, parameters and results as matmul.wgsl's block path with 32 threads, bit for bit
// (tested).
//
// A workgroup of WG threads is G = WG / 32 row groups of 32 lanes; group g owns RG rows. Lane l
// of every group takes the 16-byte weight blocks l, l + 32, l + 64, ... of its rows (the 32-thread
// block kernel's order). The x values under 32 consecutive blocks (one chunk: 1024 values for
// 4-bit codes) are loaded once per workgroup with coalesced reads into workgroup memory, and
// every group reads its lanes' slices from there: one global x read serves G groups, and no warp
// load touches 32 cache lines. A block's vec4 i is stored at slot (i + block) % XV, so the lanes
// reading vec4 i of their blocks hit different banks.
//
// x is staged pre-multiplied by quant.wgsl's X_LO / X_HI (powers of two) so the codes come out
// of each word without shifts (codes_lo / codes_hi): every product, and every Σ x (sum_lo /
// sum_hi undo the scale exactly), has the bits of the unscaled arithmetic.
//
// Per (row, token): the same block-by-block sums as matmul.wgsl (acc += s * d + b * sum(x)), then
// the 32 lanes' partials reduced as the 32-thread block kernel reduces them (subgroup sums in
// subgroup order, or the same tree through workgroup memory). Subgroups wider than 32 lanes would
// span two groups: on such devices the host builds the tree variant.
//
// Defines: WG, ROWS (rows per workgroup = G / KS * RG), RG (rows per group), KS (groups per row:
// 1, or more with KSPLIT and XQ), XU (blocks per lane per loop iteration, XQ), MT (tokens per tile),
// TOKENS, ADD, SWIGLU, NORM, GATED, XQ (Q4 only, not with NORM or GATED), XNORM and XOUT (with
// XQ; XOUT not with CONV), XONORM (with XOUT), INV (NORM or XNORM), ACC_ARRAY, CONV (not with ADD or
// SWIGLU; with TAPS, the layer's conv taps), Q4 or Q8, SCALE_F32 / SCALE_F16 / SCALE_BF16, SUBGROUPS.
//
// XQ: x comes as integer planes (xq_planes.wgsl: written by xquant.wgsl, the Gated-DeltaNet
// recurrence or another matmul's XOUT epilogue, once per step, not per workgroup), so nothing is
// staged: lane l reads its block's planes straight from memory (the row groups of a workgroup
// share them through the cache), multiplies each code word's even and odd codes with each plane
// by packed 8-bit dot products (exact in i32), and adds per block
// scale · Σ_words f32(256 · (256 · Σh + Σm) + Σl) · s_word + bias · Σx. Per token, so the same bits
// for 1 and 2 tokens; its own bits (x rounded to 2^-22 of its word's max). XQ_NARROW (the
// planes' two-plane format, the default; x rounded to 2^-15 of its word's max): two dot products per code word
// and plane pair, n = 256 · hi + lo, exact in f32, times s_word.
//
// XNORM: the RMSNorm in front of this matmul was deferred by the planes' writer: they hold
// w_norm ∘ x and, in P = 8, the squares of x. Each lane sums those with its blocks, the row's sum
// is reduced with the accumulators, and every (row, token) is scaled by 1/sqrt(mean(x²) + eps).
//
// XOUT: the outputs (after the residual add or SwiGLU) also go out as integer planes for the next
// matmul (with XONORM scaled by the next RMSNorm's weight, whose 1/rms that matmul applies with
// XNORM): a workgroup's output columns are whole words of 8. No dispatch converts them.
//
// CONV: the causal conv + silu of a Gated-DeltaNet layer (spec §4.6 steps 2-3) in the epilogue of
// its input projection: output columns row0 + row below conv_dim are conv channels, and the thread
// that owns a row convolves its T values (all of the step's rows are in one tile: decode tiles
// only) with the channel's conv state, writes silu(conv) to conv_out, and updates the state and its
// snapshot, with gdn_conv_prep.wgsl's arithmetic (the same bits, tested). The raw values still go
// to y. No other workgroup touches the channel, so nothing races.
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
#if XQ
@group(0) @binding(2) var<storage, read> xq: array<vec4<u32>>;     // [T, x_stride] (xquant.wgsl planes)
#else
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;      // [T, x_stride / 4]
#endif
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;      // [n, blocks_per_row]
@group(0) @binding(4) var<storage, read> scales: array<u32>;       // [n, k / group]
@group(0) @binding(5) var<storage, read> biases: array<u32>;       // [n, k / group]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;      // [T, y_stride]
#if NORM
@group(0) @binding(7) var<storage, read> nw: array<vec4<f32>>;     // [k / 4] RMSNorm weight
#endif
#if CONV
#if NORM
@group(0) @binding(8) var<storage, read> conv_w: array<f32>;           // [conv_dim, taps]
@group(0) @binding(9) var<storage, read_write> conv_state: array<f32>; // [taps - 1, conv_dim], oldest row first
@group(0) @binding(10) var<storage, read_write> conv_snap: array<f32>; // [taps - 1, conv_dim]
@group(0) @binding(11) var<storage, read_write> conv_out: array<f32>;  // [T, conv_dim] = silu(conv)
#else
@group(0) @binding(7) var<storage, read> conv_w: array<f32>;
@group(0) @binding(8) var<storage, read_write> conv_state: array<f32>;
@group(0) @binding(9) var<storage, read_write> conv_snap: array<f32>;
@group(0) @binding(10) var<storage, read_write> conv_out: array<f32>;
#endif
const TAPS: u32 = {{TAPS}}u;   // conv taps (the layer's, fixed per pipeline)
const XS: u32 = TAPS - 1u + MT; // the old K-1 values and the step's
#endif
#if XOUT
@group(0) @binding(7) var<storage, read_write> xo: array<u32>;     // [T, 4 * xo_stride] planes of y
#if XONORM
@group(0) @binding(8) var<storage, read> onw: array<vec4<f32>>;    // [n / 4] the next RMSNorm's weight
#endif
#endif
#if PERSIST_Q
// PERSIST_Q (kernel lab; with XQ, none of the folds): the rows are PQ_PHASES equal phases chained
// in one dispatch. Each workgroup takes the next tile of rows from `pq[0]` (tiles in order, so
// every tile a wait depends on is held by a running workgroup: no residency assumed); a tile of
// phase ph > 0 waits until `pq[ph]` (the tiles of phase ph - 1 done) is complete. The last
// workgroup out zeroes the counters for the next run. The same arithmetic per tile.
@group(0) @binding(7) var<storage, read_write> pq: array<atomic<u32>>; // [0] next tile, [1 + ph] done of ph, [1 + PQ_PHASES] workgroups out
const PQ_PHASES: u32 = {{PQ_PHASES}}u;
var<workgroup> pq_tile: u32;
#if PERSIST_B
// PERSIST_B (kernel lab, with PERSIST_Q's bindings): the same phases over a resident grid
// instead of a queue: workgroup w takes the tiles w, w + G, ... of each phase in turn (G the
// grid), and between phases every workgroup waits at a grid barrier (`pq[ph]` counts the
// workgroups done with phase ph - 1; `pq[0]` unused, `pq[1 + PQ_PHASES]` the workgroups out).
// This needs every workgroup of the grid resident at once, which WebGPU cannot promise: the polls
// are bounded, so a grid too large for the device gives wrong results (the lab compares bits),
// never a hung device.
#endif
#endif
#if GATED
@group(0) @binding(7) var<storage, read> gw: array<vec4<f32>>;     // [dv / 4] gated-norm weight
@group(0) @binding(8) var<storage, read> zg: array<vec4<f32>>;     // [T, z_stride / 4], z at z_col
#endif

const WG: u32 = {{WG}}u;
const ROWS: u32 = {{ROWS}}u;
const RG: u32 = {{RG}}u;
const MT: u32 = {{MT}}u;
const LANES: u32 = 32u;
const NACC: u32 = RG * MT;
#if XQ
const XU: u32 = {{XU}}u;       // blocks per lane per loop iteration
#endif
// KS groups share each RG rows, each summing a contiguous part of the row's chunks of 32 blocks
// (KSPLIT, with XQ); the parts are added in order after the lane sums.
const KS: u32 = {{KS}}u;
#if XNORM
// The row's Σx² (from the planes' P = 8) is reduced with the accumulators, one per token.
const NRED: u32 = NACC + MT;
#else
const NRED: u32 = NACC;
#endif
#if SWIGLU
const OW: u32 = ROWS / 2u;     // output columns of a workgroup
#else
const OW: u32 = ROWS;
#endif

#if Q4
const EPB: u32 = 32u;
#else
const EPB: u32 = 16u;
#endif
const XV: u32 = EPB / 4u;      // x vec4 under one block
const CH: u32 = LANES;         // blocks per staged chunk (one per lane)
const CHV: u32 = CH * XV;      // x vec4 per token per chunk

#if CONST_K
// CONST_K: the pipeline is built for one row length (KC features), group size (GS) and planes
// row stride (XSTR, vec4<u32>): the chunk loop's trip count and the scale and plane indexing are
// constants, and with one group per row and whole chunks (and whole XU steps) no block needs the
// tail check. Never changes the bits.
const BPR: u32 = {{KC}}u / EPB;
const WHOLE: bool = KS == 1u && BPR % CH == 0u && (BPR / CH) % XU == 0u;
#else
const WHOLE: bool = false;
#endif
#if XQ_PAD
// XQ_PAD (kernel lab): workgroup memory that does nothing, to cap the workgroups an SM holds and
// so measure how the kernel's time depends on its occupancy.
var<workgroup> xq_pad: array<u32, {{XQ_PAD}}>;
#endif
#if !XQ
var<workgroup> xs: array<vec4<f32>, MT * CHV>;
#endif
var<workgroup> red: array<f32, WG * NRED>;
#if XOUT
var<workgroup> ov: array<f32, MT * OW>;
#endif
#if NORM
// NORM: the RMSNorm in front of this matmul is folded in (spec §4.3). x is staged as w_norm ∘ x,
// each thread sums the squares of the x values it stages (per token, in a fixed order that does
// not depend on MT), and the sums are reduced over the workgroup in a fixed tree: every (row,
// token) is then scaled by inv = 1/sqrt(mean(x²) + eps), y = inv · Σ W (w_norm ∘ x). The same
// bits for 1 and 2 tokens (row 0 of a verify equals a decode); not the bits of rms_norm + matmul.
var<workgroup> nrm: array<f32, WG * MT>;
#endif
#if GATED
// GATED: the gated RMSNorm of a Gated-DeltaNet output (gated_norm.wgsl) is folded in: per value
// head of dv features (dv divides a chunk, so a head never straddles two), x becomes
// silu(z) * (w * (x * 1/sqrt(mean(x²) + eps))) while the chunk is staged: the squares of each
// staged vec4 go to `sq`, and after a barrier every thread sums its head's squares in order.
// The same bits for 1 and 2 tokens; not the bits of gated_norm followed by a matmul.
var<workgroup> sq: array<f32, MT * CHV>;
#endif

#include "quant.wgsl"
#if XOUT
#include "xq_planes.wgsl"
#endif

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
#if PERSIST_B
    let tpp = p.n / (PQ_PHASES * ROWS);  // tiles per phase (the host checks it divides)
    let pg = nwg.x * nwg.y;
    let pw = wg_linear(wid, nwg);
    for (var ph = 0u; ph < PQ_PHASES; ph++) {
    if (ph > 0u) {
        // Grid barrier: count this workgroup done with phase ph - 1, wait for all of them.
        storageBarrier();
        workgroupBarrier();
        if (lid == 0u) { atomicAdd(&pq[ph], 1u); }
        for (var polls = 0u; polls < 0x400000u; polls++) {
            workgroupBarrier();
            if (lid == 0u) { pq_tile = atomicLoad(&pq[ph]); }
            if (workgroupUniformLoad(&pq_tile) >= pg) { break; }
        }
        storageBarrier();
        workgroupBarrier();
    }
    for (var wt = ph * tpp + pw; wt < (ph + 1u) * tpp; wt += pg) {
    workgroupBarrier();
    let r0 = wt * ROWS;
#elif PERSIST_Q
    let tpp = p.n / (PQ_PHASES * ROWS);  // tiles per phase (the host checks it divides)
    loop {
    workgroupBarrier();
    if (lid == 0u) {
        pq_tile = atomicAdd(&pq[0], 1u);
    }
    let wt = workgroupUniformLoad(&pq_tile);
    if (wt >= PQ_PHASES * tpp) { break; }
    let ph = wt / tpp;
    if (ph > 0u) {
        // The whole workgroup polls in a uniform loop (lid 0 reads the counter, all see it):
        // lavapipe miscompiled a poll in lid 0 alone, leaving that lane's SIMD neighbours out of
        // the tile's sums. (Bounded: a broken queue gives wrong results, never a hung device.)
        for (var polls = 0u; polls < 0x400000u; polls++) {
            workgroupBarrier();
            if (lid == 0u) { pq_tile = atomicLoad(&pq[ph]); }
            if (workgroupUniformLoad(&pq_tile) >= tpp) { break; }
        }
        storageBarrier();
        workgroupBarrier();
    }
    let r0 = wt * ROWS;
#elif GSTRIDE
    // GSTRIDE: a grid of fewer workgroups than tiles of rows; workgroup w takes the tiles w,
    // w + G, w + 2G, ... in turn (the same arithmetic per tile: the same bits).
    for (var wt = wg_linear(wid, nwg); wt * ROWS < p.n; wt += nwg.x * nwg.y) {
    workgroupBarrier();
    let r0 = wt * ROWS;
#else
    let r0 = wg_linear(wid, nwg) * ROWS;
    if (r0 >= p.n) { return; }
#endif
    let t0 = wid.z * MT;
#if CONST_K
    let bpr = BPR;
    let gpr = {{KC}}u / {{GS}}u;
    let gsz = {{GS}}u;
    let xstr = {{XSTR}}u;
#else
    let bpr = p.k / EPB;
    let gpr = p.groups_per_row;
    let gsz = p.group_size;
    let xstr = p.x_stride;
#endif
#if !XQ
    let xs4 = p.x_stride / 4u;
#endif
    let grp = lid / LANES;
    let lane = lid % LANES;
    let kp = grp % KS;             // this group's part of the row
    let rgp = grp / KS;            // this group's rows
    let rb = r0 + rgp * RG;

    // EXACT_ROWS: every workgroup's rows are all below n (the host sets it where n is a multiple
    // of ROWS), so a group's rows are consecutive without a clamp: their weights and scales lie
    // at constant offsets from the first row's. Never changes the bits.
#for R RG
#if EXACT_ROWS
    let row{{R}} = rb + {{R}}u;
#else
    let row{{R}} = min(rb + {{R}}u, p.n - 1u);
#endif
#for T MT
    var acc_{{R}}_{{T}} = 0.0;
#endfor
#endfor
#for T MT
    let on{{T}} = t0 + {{T}}u < T;
#endfor
#if XQ_PAD
    xq_pad[lid % {{XQ_PAD}}u] = r0;
    if (xq_pad[(lid + 1u) % {{XQ_PAD}}u] == 0xFFFFFFFFu && r0 == 0xFFFFFFFEu) {
        acc_0_0 += 1.0;
    }
#endif
#if INV
#for T MT
    var ss{{T}} = 0.0;
#endfor
#endif
    let nch = (bpr + CH - 1u) / CH;
#if XQ
    // This group's chunks: part kp of KS (all of them for KS = 1).
    let cpp = (nch + KS - 1u) / KS;
    let c_lo = min(kp * cpp, nch);
    let c_hi = min(c_lo + cpp, nch);
    // XU blocks per lane per iteration: every load of the XU blocks is issued (at clamped
    // indices) before their arithmetic, which then runs in block order (the bits of XU = 1).
#for C NCH
#if UNROLL_CH
    // UNROLL_CH (with CONST_K and one group per row): the chunk loop written out, NCH steps.
    {
        let c = {{C}}u * XU;
#else
    for (var c = c_lo; c < c_hi; c += XU) {
#endif
#for U XU
        let b{{U}} = min((c + {{U}}u) * CH + lane, bpr - 1u);
#for R RG
        let wb{{R}}_{{U}} = w[row{{R}} * bpr + b{{U}}];
        let sb{{R}}_{{U}} = scale_bias(row{{R}} * gpr + (b{{U}} * EPB) / gsz);
#endfor
#for T MT
        let xb{{T}}_{{U}} = (t0 + {{T}}u) * xstr + b{{U}};
        let he{{T}}_{{U}} = xq[xb{{T}}_{{U}}];
        let ho{{T}}_{{U}} = xq[xb{{T}}_{{U}} + bpr];
#if !XQ_BYTE
        let me{{T}}_{{U}} = xq[xb{{T}}_{{U}} + 2u * bpr];
        let mo{{T}}_{{U}} = xq[xb{{T}}_{{U}} + 3u * bpr];
#endif
#if !XQ_NARROW
        let le{{T}}_{{U}} = xq[xb{{T}}_{{U}} + 4u * bpr];
        let lo{{T}}_{{U}} = xq[xb{{T}}_{{U}} + 5u * bpr];
#endif
        let qw{{T}}_{{U}} = xq[xb{{T}}_{{U}} + 6u * bpr];
        let qx{{T}}_{{U}} = bitcast<vec4<f32>>(xq[xb{{T}}_{{U}} + 7u * bpr]);
#if XNORM
#if !XNORM_LATE
        let qq{{T}}_{{U}} = bitcast<vec4<f32>>(xq[xb{{T}}_{{U}} + 8u * bpr]);
#endif
#endif
#endfor
#endfor
#for U XU
        if (WHOLE || (c + {{U}}u < c_hi && (c + {{U}}u) * CH + lane < bpr)) {
#for T MT
            let sx{{T}} = (qx{{T}}_{{U}}.x + qx{{T}}_{{U}}.y) + (qx{{T}}_{{U}}.z + qx{{T}}_{{U}}.w);
#if XNORM
#if !XNORM_LATE
            if (on{{T}}) {
                ss{{T}} += (qq{{T}}_{{U}}.x + qq{{T}}_{{U}}.y) + (qq{{T}}_{{U}}.z + qq{{T}}_{{U}}.w);
            }
#endif
#endif
#if XSUM_BLOCK
            // The block's largest word scale S = 2^em (a power of two: its bits are the exponent
            // field alone) and each word's right shift to it (31 at most: a word 2^31 or more
            // below the block's largest contributes its floor, 0 or -1 units of S).
            let qe{{T}} = qw{{T}}_{{U}} >> vec4<u32>(23u);
            let qm{{T}} = max(max(qe{{T}}.x, qe{{T}}.y), max(qe{{T}}.z, qe{{T}}.w));
            let qk{{T}} = min(vec4<u32>(qm{{T}}) - qe{{T}}, vec4<u32>(31u));
            let qS{{T}} = bitcast<f32>(qm{{T}} << 23u);
#else
            let qs{{T}} = bitcast<vec4<f32>>(qw{{T}}_{{U}});
#endif
#for R RG
#if XSUM_BLOCK
            var d{{R}}_{{T}} = 0i;
#else
            var d{{R}}_{{T}} = 0.0;
#endif
#endfor
#endfor
#for I 4
            {
#for R RG
                let ce{{R}} = wb{{R}}_{{U}}[{{I}}] & 0x0F0F0F0Fu;
                let co{{R}} = (wb{{R}}_{{U}}[{{I}}] >> 4u) & 0x0F0F0F0Fu;
#endfor
#for T MT
#for R RG
                {
#if XQ_BYTE
                    // One plane (xq_planes.wgsl, F = 7): n = the word's dot product (|n| <= 8 · 15
                    // · 128), as f32 by the offset trick below, the offset as the first packed dot
                    // product's accumulator.
#if XSUM_BLOCK
                    d{{R}}_{{T}} += (dot4I8Packed(ce{{R}}, he{{T}}_{{U}}[{{I}}]) + dot4I8Packed(co{{R}}, ho{{T}}_{{U}}[{{I}}])) >> qk{{T}}[{{I}}];
#else
                    let nb = dot4I8Packed(co{{R}}, ho{{T}}_{{U}}[{{I}}]) + (dot4I8Packed(ce{{R}}, he{{T}}_{{U}}[{{I}}]) + 0x4B400000i);
                    d{{R}}_{{T}} += (bitcast<f32>(nb) - 12582912.0) * qs{{T}}[{{I}}];
#endif
#else
#if XQ_NARROW
                    // Two planes (xq_planes.wgsl, F = 15): n = 256 · hi + lo (|hi| <= 8 · 15 · 128
                    // from the signed plane, 0 <= lo < 2^15 from the unsigned one; |n| < 2^22).
                    let hi = dot4I8Packed(ce{{R}}, he{{T}}_{{U}}[{{I}}]) + dot4I8Packed(co{{R}}, ho{{T}}_{{U}}[{{I}}]);
#if XSUM_BLOCK
                    let n = (hi << 8u) + bitcast<i32>(dot4U8Packed(ce{{R}}, me{{T}}_{{U}}[{{I}}]) + dot4U8Packed(co{{R}}, mo{{T}}_{{U}}[{{I}}]));
                    // Exact in i32, shifted to the block's largest scale (its floor: less than one
                    // unit of S) and summed over the block's 4 words (|Σ| < 2^24: exact in f32).
                    d{{R}}_{{T}} += n >> qk{{T}}[{{I}}];
#else
                    // As f32 without a conversion instruction: n's bits added to 1.5 · 2^23's
                    // (exact for |n| < 2^22), the offset taken off exactly. The offset enters as
                    // the accumulator of the first unsigned packed dot product (the same integer:
                    // one add fewer per word, row and token).
                    let nb = (hi << 8u) + bitcast<i32>(dot4U8Packed(ce{{R}}, me{{T}}_{{U}}[{{I}}]) + (dot4U8Packed(co{{R}}, mo{{T}}_{{U}}[{{I}}]) + 0x4B400000u));
                    d{{R}}_{{T}} += (bitcast<f32>(nb) - 12582912.0) * qs{{T}}[{{I}}];
#endif
#else
                    // The word's integer dot product n = 65536 · hi + lo (|hi| < 2^13 from the
                    // signed plane, 0 <= lo < 2^23 from the two unsigned ones; |n| < 120 · 2^22).
                    let hi = dot4I8Packed(ce{{R}}, he{{T}}_{{U}}[{{I}}]) + dot4I8Packed(co{{R}}, ho{{T}}_{{U}}[{{I}}]);
                    let lo = (dot4U8Packed(ce{{R}}, me{{T}}_{{U}}[{{I}}]) + dot4U8Packed(co{{R}}, mo{{T}}_{{U}}[{{I}}])) * 256u + dot4U8Packed(ce{{R}}, le{{T}}_{{U}}[{{I}}]) + dot4U8Packed(co{{R}}, lo{{T}}_{{U}}[{{I}}]);
#if XSUM_BLOCK
                    // Exact in i32, shifted to the block's largest scale (its floor: less than one
                    // unit of S) and summed over the block's 4 words (|Σ| < 480 · 2^22 < 2^31).
                    d{{R}}_{{T}} += ((hi << 16u) + bitcast<i32>(lo)) >> qk{{T}}[{{I}}];
#else
                    // As f32 without a conversion instruction: each part's bits added to a power
                    // of two's (exact), then one fma rounds hi · 65536 + lo once, as f32(n).
                    let f = fma(bitcast<f32>(hi + 0x4B400000i) - 12582912.0, 65536.0, bitcast<f32>(lo + 0x4B000000u) - 8388608.0);
                    d{{R}}_{{T}} += f * qs{{T}}[{{I}}];
#endif
#endif
#endif
                }
#endfor
#endfor
            }
#endfor
#for R RG
#for T MT
#if XSUM_BLOCK
            acc_{{R}}_{{T}} += sb{{R}}_{{U}}.x * (f32(d{{R}}_{{T}}) * qS{{T}}) + sb{{R}}_{{U}}.y * sx{{T}};
#else
            acc_{{R}}_{{T}} += sb{{R}}_{{U}}.x * d{{R}}_{{T}} + sb{{R}}_{{U}}.y * sx{{T}};
#endif
#endfor
#endfor
        }
#endfor
    }
#endfor
#if XNORM
#if XNORM_LATE
    // XNORM_LATE: the squares of the row summed after its products, not inside their loop (fewer
    // registers live there): each lane takes its blocks in the same order with the same
    // arithmetic, so Σx² has the same bits.
    for (var c = c_lo; c < c_hi; c++) {
        let bq = c * CH + lane;
        if (bq < bpr) {
#for T MT
            if (on{{T}}) {
                let qq = bitcast<vec4<f32>>(xq[(t0 + {{T}}u) * xstr + bq + 8u * bpr]);
                ss{{T}} += (qq.x + qq.y) + (qq.z + qq.w);
            }
#endfor
        }
    }
#endif
#endif
#else
    for (var c = 0u; c < nch; c++) {
        // Stage the chunk's x (zeros past the row or the step's tokens).
        workgroupBarrier();
#for T MT
        for (var v = lid; v < CHV; v += WG) {
            let bl = v / XV;
            let gv = c * CHV + v;
            var val = vec4<f32>(0.0);
            if (on{{T}} && gv < bpr * XV) {
                val = x[(t0 + {{T}}u) * xs4 + p.x_col / 4u + gv];
#if NORM
                ss{{T}} += dot(val, val);
                val = val * nw[gv];
#endif
            }
#if GATED
            sq[{{T}}u * CHV + v] = dot(val, val);
#else
#if Q4
            val = val * select(X_LO, X_HI, (v & 1u) == 1u);
#else
            val = val * X_LO;
#endif
#endif
            xs[{{T}}u * CHV + bl * XV + (v % XV + bl) % XV] = val;
        }
#endfor
        workgroupBarrier();
#if GATED
        // Each thread normalizes and gates the vec4s it staged (its own slots), then pre-scales.
        let hv = p.dv / 4u;
#for T MT
        for (var v = lid; v < CHV; v += WG) {
            let bl = v / XV;
            let slot = {{T}}u * CHV + bl * XV + (v % XV + bl) % XV;
            let gv = c * CHV + v;
            var val = vec4<f32>(0.0);
            if (on{{T}} && gv < bpr * XV) {
                let h0 = (v / hv) * hv;
                var s = 0.0;
                for (var j = 0u; j < hv; j++) {
                    s += sq[{{T}}u * CHV + h0 + j];
                }
                let inv = inverseSqrt(s / f32(p.dv) + p.eps);
                let zv = zg[(t0 + {{T}}u) * (p.z_stride / 4u) + p.z_col / 4u + gv];
                let sz = vec4<f32>(silu(zv.x), silu(zv.y), silu(zv.z), silu(zv.w));
                val = sz * (gw[gv % hv] * (xs[slot] * inv));
            }
#if Q4
            val = val * select(X_LO, X_HI, (v & 1u) == 1u);
#else
            val = val * X_LO;
#endif
            xs[slot] = val;
        }
#endfor
        workgroupBarrier();
#endif
        let b = c * CH + lane;
        if (b < bpr) {
#for R RG
            let wb{{R}} = w[row{{R}} * bpr + b];
            let sb{{R}} = scale_bias(row{{R}} * p.groups_per_row + (b * EPB) / p.group_size);
#endfor
#for T MT
            var sx{{T}} = 0.0;
#for R RG
            var d{{R}}_{{T}} = 0.0;
#endfor
#endfor
#for I 4
            {
#for T MT
#if Q4
                let xa{{T}} = xs[{{T}}u * CHV + lane * XV + ({{I}}u * 2u + lane) % XV];
                let xc{{T}} = xs[{{T}}u * CHV + lane * XV + ({{I}}u * 2u + 1u + lane) % XV];
                if (on{{T}}) {
                    sx{{T}} += sum_lo(xa{{T}});
                    sx{{T}} += sum_hi(xc{{T}});
                }
#else
                let xa{{T}} = xs[{{T}}u * CHV + lane * XV + ({{I}}u + lane) % XV];
                if (on{{T}}) {
                    sx{{T}} += sum_lo(xa{{T}});
                }
#endif
#endfor
#for R RG
#if Q4
                let lo{{R}} = codes_lo(wb{{R}}[{{I}}]);
                let hi{{R}} = codes_hi(wb{{R}}[{{I}}]);
#else
                let lo{{R}} = codes_lo(wb{{R}}[{{I}}]);
#endif
#endfor
#for T MT
                if (on{{T}}) {
#for R RG
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
#for R RG
#for T MT
            acc_{{R}}_{{T}} += sb{{R}}.x * d{{R}}_{{T}} + sb{{R}}.y * sx{{T}};
#endfor
#endfor
        }
    }
#endif
#if NORM
#for T MT
    nrm[{{T}}u * WG + lid] = ss{{T}};
#endfor
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
#for T MT
            nrm[{{T}}u * WG + lid] += nrm[{{T}}u * WG + lid + stride];
#endfor
        }
        workgroupBarrier();
    }
#for T MT
    let inv{{T}} = inverseSqrt(nrm[{{T}}u * WG] / f32(p.k) + p.eps);
#endfor
#endif
    // Reduce each accumulator over the group's 32 lanes; group g's accumulator i (row R, token T
    // at i = R · MT + T; the row's Σx² per token after them with XNORM) lives in
    // red[(g * NRED + i) * LANES + ...]. The accumulators stay separate variables (every index a
    // compile-time constant), or with ACC_ARRAY are first copied into a private array that the
    // reduction loop indexes (the same sums in the same order: the same bits).
    let rg0 = grp * NRED;
#if ACC_ARRAY
    var acc: array<f32, NRED>;
#for R RG
#for T MT
    acc[{{R}}u * MT + {{T}}u] = acc_{{R}}_{{T}};
#endfor
#endfor
#if XNORM
#for T MT
    acc[NACC + {{T}}u] = ss{{T}};
#endfor
#endif
#endif
#if SUBGROUPS
    // (Only with subgroups of at most 32 lanes: the host leaves SUBGROUPS off otherwise.)
    let sgi = lane / sg_size;
#if ACC_ARRAY
    for (var i = 0u; i < NRED; i++) {
        let s = subgroupAdd(acc[i]);
        if (sg_lane == 0u) { red[(rg0 + i) * LANES + sgi] = s; }
    }
#else
#for R RG
#for T MT
    {
        let s = subgroupAdd(acc_{{R}}_{{T}});
        if (sg_lane == 0u) { red[(rg0 + {{R}}u * MT + {{T}}u) * LANES + sgi] = s; }
    }
#endfor
#endfor
#if XNORM
#for T MT
    {
        let s = subgroupAdd(ss{{T}});
        if (sg_lane == 0u) { red[(rg0 + NACC + {{T}}u) * LANES + sgi] = s; }
    }
#endfor
#endif
#endif
    workgroupBarrier();
    if (lane < NRED) {
        let nsg = LANES / sg_size;
        var s = 0.0;
        for (var j = 0u; j < nsg; j++) {
            s += red[(rg0 + lane) * LANES + j];
        }
        red[(rg0 + lane) * LANES] = s;
    }
    workgroupBarrier();
#else
#if ACC_ARRAY
    for (var i = 0u; i < NRED; i++) {
        red[(rg0 + i) * LANES + lane] = acc[i];
    }
#else
#for R RG
#for T MT
    red[(rg0 + {{R}}u * MT + {{T}}u) * LANES + lane] = acc_{{R}}_{{T}};
#endfor
#endfor
#if XNORM
#for T MT
    red[(rg0 + NACC + {{T}}u) * LANES + lane] = ss{{T}};
#endfor
#endif
#endif
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride >>= 1u) {
        if (lane < stride) {
            for (var i = 0u; i < NRED; i++) {
                red[(rg0 + i) * LANES + lane] += red[(rg0 + i) * LANES + lane + stride];
            }
        }
        workgroupBarrier();
    }
#endif
#if KSPLIT
    // The parts of a row, in order, into its first group's slots.
    if (kp == 0u && lane < NRED) {
        var s = red[(rg0 + lane) * LANES];
        for (var j = 1u; j < KS; j++) {
            s += red[((grp + j) * NRED + lane) * LANES];
        }
        red[(rg0 + lane) * LANES] = s;
    }
    workgroupBarrier();
#endif
#if XNORM
    // The deferred RMSNorm (the planes hold w ∘ x, P = 8 the squares of x): every group's lanes
    // summed the row's Σx² over the same blocks in the same order.
#for T MT
    let inv{{T}} = inverseSqrt(red[(rg0 + NACC + {{T}}u) * LANES] / f32(p.k) + p.eps);
#endfor
#endif
#if SWIGLU
    // Rows come in (gate, up) pairs (RG even): y[t, (row0 + row) / 2] = silu(gate) * up.
    if (kp == 0u && lane < NACC / 2u) {
        let pr = lane / MT;
        let t = lane % MT;
        let row = rb + 2u * pr;
        if (row + 1u < p.n && t0 + t < T) {
            var g = red[(rg0 + 2u * pr * MT + t) * LANES];
            var u = red[(rg0 + (2u * pr + 1u) * MT + t) * LANES];
#if INV
            var it = inv0;
#for T MT
            if (t == {{T}}u) { it = inv{{T}}; }
#endfor
            g = g * it;
            u = u * it;
#endif
            let fv = silu(g) * u;
            y[(t0 + t) * p.y_stride + (p.row0 + row) / 2u] = fv;
#if XOUT
            ov[t * OW + (rgp * RG) / 2u + pr] = fv;
#endif
        }
    }
#else
    if (kp == 0u && lane < NACC) {
        let r = lane / MT;
        let t = lane % MT;
        let row = rb + r;
        if (row < p.n && t0 + t < T) {
            let o = (t0 + t) * p.y_stride + p.row0 + row;
            var v = red[(rg0 + lane) * LANES];
#if INV
            var it = inv0;
#for T MT
            if (t == {{T}}u) { it = inv{{T}}; }
#endfor
            v = v * it;
#endif
#if ADD
            let fv = y[o] + v;
#else
            let fv = v;
#endif
            y[o] = fv;
#if XOUT
            ov[t * OW + rgp * RG + r] = fv;
#endif
        }
    }
#if CONV
    // The conv channels among this group's rows: one thread per row, the step's T values in order.
    // Every loop below is written out (#for over TAPS and MT, both compile-time constants), so
    // every index of the window is a constant and it stays in registers.
    if (wid.z == 0u && kp == 0u && lane < RG) {
        let row = rb + lane;
        let c = p.row0 + row;
        if (row < p.n && c < p.conv_dim && T > 0u) {
            // x_at(j) of gdn_conv_prep: the old state's K-1 values (from the snapshot after a
            // rejected draft), then the step's raw values.
            var xs_: array<f32, XS>;
            if (step.rollback != 0u) {
#for J TAPS
                if ({{J}}u + 1u < TAPS) { xs_[{{J}}u] = conv_snap[{{J}}u * p.conv_dim + c]; }
#endfor
            } else {
#for J TAPS
                if ({{J}}u + 1u < TAPS) { xs_[{{J}}u] = conv_state[{{J}}u * p.conv_dim + c]; }
#endfor
            }
#for T MT
            {
                var v = red[(rg0 + lane * MT + {{T}}u) * LANES];
#if INV
                v = v * inv{{T}};
#endif
                xs_[TAPS - 1u + {{T}}u] = v;
            }
#endfor
            var wk: array<f32, TAPS>;
#for K TAPS
            wk[{{K}}u] = conv_w[c * TAPS + {{K}}u];
#endfor
            let tt = min(T, MT);
#for T MT
            if ({{T}}u < tt) {
                var acc = 0.0;
#for K TAPS
                acc += xs_[{{T}}u + {{K}}u] * wk[{{K}}u];
#endfor
                conv_out[{{T}}u * p.conv_dim + c] = silu(acc);
            }
#endfor
            // The snapshot after row n - 1 (n = n_confirmed, 0 < n < T) and the state after the
            // step's last row: windows starting at n and at tt. (The min keeps the index of a
            // copy that its constant condition skips within the array.)
            let nc = step.n_confirmed;
#for N MT
            if ({{N}}u > 0u && nc == {{N}}u && {{N}}u < tt) {
#for J TAPS
                if ({{J}}u + 1u < TAPS) { conv_snap[{{J}}u * p.conv_dim + c] = xs_[{{N}}u + {{J}}u]; }
#endfor
            }
#endfor
#for N MT
            if (tt == {{N}}u + 1u) {
#for J TAPS
                if ({{J}}u + 1u < TAPS) { conv_state[{{J}}u * p.conv_dim + c] = xs_[min({{N}}u + 1u + {{J}}u, XS - 1u)]; }
#endfor
            }
#endfor
        }
    }
#endif
#endif
#if XOUT
    // The outputs as the next matmul's integer planes (xq_planes.wgsl), a thread per word of 8
    // output columns and token (a workgroup's columns are whole words), scaled by the next
    // RMSNorm's weight with XONORM (P = 8 keeps the unscaled squares: the reader applies 1/rms).
    workgroupBarrier();
    let nwo = max(OW / 8u, 1u);    // (the host only builds XOUT where OW is whole words)
    if (lid < nwo * MT) {
        let wi = lid % nwo;
        let t = lid / nwo;
#if SWIGLU
        let c0 = (p.row0 + r0) / 2u + wi * 8u;
        let live = r0 / 2u + wi * 8u < p.n / 2u;
#else
        let c0 = p.row0 + r0 + wi * 8u;
        let live = r0 + wi * 8u < p.n;
#endif
        if (live && t0 + t < T) {
            let ob = t * OW + wi * 8u;
            let a = vec4<f32>(ov[ob], ov[ob + 1u], ov[ob + 2u], ov[ob + 3u]);
            let b = vec4<f32>(ov[ob + 4u], ov[ob + 5u], ov[ob + 6u], ov[ob + 7u]);
            let q = word_sq(a, b);
#if XONORM
            let r = word_out(a * onw[c0 / 4u], b * onw[c0 / 4u + 1u], q);
#else
            let r = word_out(a, b, q);
#endif
            let o = (t0 + t) * p.xo_stride * 4u + c0 / 8u;
            let pl = p.xo_stride / XQ_PLANES * 4u;
#for P 9
            xo[o + {{P}}u * pl] = r[{{P}}];
#endfor
        }
    }
#endif
#if GSTRIDE
    }
#endif
#if PERSIST_B
    }
    }
    if (lid == 0u) {
        let gone = atomicAdd(&pq[1u + PQ_PHASES], 1u) + 1u;
        if (gone == nwg.x * nwg.y) {
            for (var i = 0u; i < PQ_PHASES + 2u; i++) { atomicStore(&pq[i], 0u); }
        }
    }
#elif PERSIST_Q
    storageBarrier();
    workgroupBarrier();
    if (lid == 0u) { atomicAdd(&pq[1u + ph], 1u); }
    }
    if (lid == 0u) {
        let gone = atomicAdd(&pq[1u + PQ_PHASES], 1u) + 1u;
        if (gone == nwg.x * nwg.y) {
            for (var i = 0u; i < PQ_PHASES + 2u; i++) { atomicStore(&pq[i], 0u); }
        }
    }
#endif
}
