// Gated-DeltaNet recurrence (spec §4.6 step 6, mlx-lm gated_delta_kernel), f32 state
// S_h ∈ R^{Dv×Dk} per value head h (row = value dim), key head kh = h / (Hv / Hk). For t in order:
//   S <- g_t · S;  m = S · k_t;  δ = β_t (v_t − m);  S <- S + δ ⊗ k_t;  y_t = S · q_t
// When 0 < n_confirmed < T, the state after row n_confirmed-1 is also written to `snap` (spec §7.4).
// When step.rollback is set, the call starts from `snap` instead of `state` (the previous verify,
// run ahead on the GPU, rejected its draft: the rollback needs no copy).
//
// Layout: one workgroup per (value head, block of R = WG/4 value rows). Each state row belongs to 4
// lanes; lane l holds the vec4 chunks l, l+4, l+8, ... (NV4 = Dk/16 of them) in registers for the
// whole call, so the state is read and written once per call. Per step a lane reduces its chunks
// with a vec4 accumulator in chunk order, then ((x.x + x.y) + (x.z + x.w)), and the 4 lane partials
// combine as (p0 + p1) + (p2 + p3):
//   SUBGROUPS: a butterfly (subgroupShuffleXor 1, 2) over 4 consecutive subgroup lanes; rows are
//   handed to subgroups in arrival order, so nothing is assumed about how invocations form
//   subgroups (only that their size is a multiple of 4);
//   otherwise: through workgroup memory, in the same order (both variants give the same bits).
// The k and q of the step (shared by all rows of the workgroup: same key head) are staged in
// workgroup memory, double-buffered, fetched from memory two steps ahead.
// A row's arithmetic depends only on the pipeline, not on T or the block, so results are batch
// invariant and chunked calls give the same bits as one call.
//
// GATED: the gated RMSNorm of spec §4.6 step 7 (gated_norm.wgsl) is applied to each row t before
// it is written, so `y` receives silu(z) * (w * (y * 1/sqrt(mean(y²) + eps))) per (row, head). A
// workgroup then holds a whole head (R = Dv, one block per head) and reduces the head's squares
// exactly as gated_norm.wgsl does (GN_WG strided partial sums in order, then the same tree), so the
// output has the bits of this kernel followed by gated_norm (tested), one dispatch fewer.
//
// PREP (with GATED): the q/k normalization and the gates of spec §4.6 steps 4-5 (gdn_prep.wgsl) are
// done here too: conv_out holds the raw silu'd conv rows (the in_proj matmul's CONV epilogue wrote
// them), each step's k and q are normalized where they are staged (GN_WG strided partial sums of
// squares in channel order, then a tree, as gdn_conv_prep.wgsl does), and beta, g come from the
// step's b, a columns of the projection rows. The same bits as gdn_conv_prep + this kernel (tested).
//
// HSPLIT (with PREP and GATED): a head's rows over DV / R workgroups (R = WG / 4 rows each)
// instead of one: the state moves through 4x as many SMs. Each workgroup writes its rows' raw
// outputs to `y`, then counts itself done in hcnt[h]; the head's last workgroup out (no waiting,
// so no residency assumed) resets the count and applies the gated norm and the planes to the
// whole head, rows t = 0 .. T-1, in place, in gated_norm.wgsl's order: the same bits as the
// whole-head form (tested).
//
// STREAMS (not with PREP): the rows are independent streams (a batch of sequences, one token each):
// workgroups of z-slice t take row t alone, from and to slot t of the state ([streams, Hv, Dv,
// Dk / 4]), with no snapshot and no rollback; a row's arithmetic is that of a one-row call.
//
// Defines: WG (threads; R = WG / 4 rows), NV4 (= Dk / 16), KQ (vec4 of k|q each thread stages per
// step: ceil(Dk / 2 / WG)), KQS (vec4 slots of one staging buffer: >= Dk / 2, at most KQ * WG),
// SUBGROUPS, GATED (with GN_WG, gated_norm.wgsl's workgroup size), PREP, XQ (with PREP), HSPLIT
// (with DV, the head's value rows).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> conv_out: array<vec4<f32>>;     // [T, conv_dim / 4] = q [Hk, Dk] | k [Hk, Dk] | v [Hv, Dv]
#if PREP
@group(0) @binding(3) var<storage, read_write> state: array<vec4<f32>>;  // [Hv, Dv, Dk / 4]
@group(0) @binding(4) var<storage, read_write> snap: array<vec4<f32>>;   // [Hv, Dv, Dk / 4]
@group(0) @binding(5) var<storage, read_write> y: array<f32>;            // [T, Hv*Dv]
@group(0) @binding(6) var<storage, read> z: array<f32>;                  // [T, z_stride]: z [Hv*Dv] at z_col, b [Hv] at b_col, a [Hv] at a_col
@group(0) @binding(7) var<storage, read> gw: array<f32>;                 // [Dv] gated-norm weight
@group(0) @binding(8) var<storage, read> a_log: array<f32>;              // [Hv]
@group(0) @binding(9) var<storage, read> dt_bias: array<f32>;            // [Hv]
#if XQ
@group(0) @binding(10) var<storage, read_write> xq: array<u32>;          // [T, 4 * q_stride] planes of the output
#if HSPLIT
@group(0) @binding(11) var<storage, read_write> hcnt: array<atomic<u32>>; // [Hv] workgroups done per head (0 between calls)
#endif
#elif HSPLIT
@group(0) @binding(10) var<storage, read_write> hcnt: array<atomic<u32>>; // [Hv] workgroups done per head (0 between calls)
#endif
#else
@group(0) @binding(3) var<storage, read> gates: array<f32>;              // [T, 2*Hv] = beta [Hv] | g [Hv]
@group(0) @binding(4) var<storage, read_write> state: array<vec4<f32>>;  // [Hv, Dv, Dk / 4]
@group(0) @binding(5) var<storage, read_write> snap: array<vec4<f32>>;   // [Hv, Dv, Dk / 4]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;            // [T, Hv*Dv]
#if GATED
@group(0) @binding(7) var<storage, read> z: array<f32>;                  // [T, z_stride], z [Hv*Dv] at z_col
@group(0) @binding(8) var<storage, read> gw: array<f32>;                 // [Dv] gated-norm weight
#endif
#endif

const WG: u32 = {{WG}}u;
const LANES: u32 = 4u;
const R: u32 = WG / LANES;
const NV4: u32 = {{NV4}}u;
const KQ: u32 = {{KQ}}u;
const KQS: u32 = {{KQS}}u;  // vec4 slots of one staging buffer (>= Dk / 2: k chunks, then q chunks)

var<workgroup> kq: array<vec4<f32>, 2u * KQS>;
#if GATED
const GN_WG: u32 = {{GN_WG}}u;
// A head's outputs for its gated norm (head_inv).
#if HSPLIT
const DV: u32 = {{DV}}u;
var<workgroup> hs_last: u32;
var<workgroup> gy: array<f32, DV>;
#else
var<workgroup> gy: array<f32, R>;
#endif
var<workgroup> gred: array<f32, GN_WG>;
#endif
#if XQ
// XQ (with PREP): the gated output of each row also goes out as xquant.wgsl's integer planes (the
// input of out_proj's XQ matmul), computed as xquant computes them from the written values: a
// head of Dv (a multiple of 32) values is Dv / 8 whole words, one thread per word (xq_planes.wgsl),
// so the planes have xquant's bits (tested through the model).
#if HSPLIT
var<workgroup> gq: array<f32, DV>;
#else
var<workgroup> gq: array<f32, R>;
#endif
#endif
#if PREP
var<workgroup> qkred: array<f32, 2u * GN_WG>;
#include "gdn_gates.wgsl"
#endif
#if SUBGROUPS
var<workgroup> sg_count: atomic<u32>;
#else
var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_o: array<f32, WG>;
#endif

#if STREAMS
// The stream (row) of this workgroup's z-slice.
var<private> stream_row: u32;
#endif

// The first row this workgroup reads (its stream's with STREAMS, else 0).
fn row0() -> u32 {
#if STREAMS
    return stream_row;
#else
    return 0u;
#endif
}

// Slot i of the staging buffer for row t: k chunk i (i < Dk/4), then q chunk i - Dk/4; zero past.
fn stage_load(t: u32, T: u32, kh: u32, i: u32) -> vec4<f32> {
    let dk4 = p.dk / 4u;
    if (t >= T || i >= 2u * dk4) { return vec4<f32>(0.0); }
    let rb = (row0() + t) * (p.conv_dim / 4u);
    if (i < dk4) {
        return conv_out[rb + p.n_k_heads * dk4 + kh * dk4 + i];
    }
    return conv_out[rb + kh * dk4 + (i - dk4)];
}

fn conv_at(idx: u32) -> f32 {
    let i = row0() * p.conv_dim + idx;
    return conv_out[i / 4u][i % 4u];
}

#if XQ
#include "xq_planes.wgsl"
#endif

#if XQ
// Row t of head h's output planes from the gated values in `gq` (xquant's words of 8 values,
// one thread per word).
fn head_planes(t: u32, h: u32, lid: u32) {
    let nwd = p.dv / 8u;
    if (lid < nwd) {
        let qa = vec4<f32>(gq[8u * lid], gq[8u * lid + 1u], gq[8u * lid + 2u], gq[8u * lid + 3u]);
        let qb = vec4<f32>(gq[8u * lid + 4u], gq[8u * lid + 5u], gq[8u * lid + 6u], gq[8u * lid + 7u]);
        let r = word_out(qa, qb, word_sq(qa, qb));
        let nb = p.n_v_heads * p.dv / 32u;
        let o = t * p.q_stride * 4u + h * p.dv / 8u + lid;
        let pl = nb * 4u;
#for P 9
        xq[o + {{P}}u * pl] = r[{{P}}];
#endfor
    }
}
#endif

#if GATED
// gated_norm.wgsl's order over the head's Dv outputs in `gy`: GN_WG strided partial sums of
// their squares, then a tree; returns 1 / sqrt(mean + eps). Every thread calls it (barriers).
fn head_inv(lid: u32) -> f32 {
    workgroupBarrier();
    if (lid < GN_WG) {
        var ss = 0.0;
        for (var c = lid; c < p.dv; c += GN_WG) {
            let yv = gy[c];
            ss += yv * yv;
        }
        gred[lid] = ss;
    }
    workgroupBarrier();
    for (var stride = GN_WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) { gred[lid] += gred[lid + stride]; }
        workgroupBarrier();
    }
    return inverseSqrt(gred[0] / f32(p.dv) + p.eps);
}
#endif

fn hsum(a: vec4<f32>) -> f32 {
    return (a.x + a.y) + (a.z + a.w);
}

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
    let wg = wg_linear(wid, nwg);
    let h = wg / p.blocks;
    if (h >= p.n_v_heads) { return; }
    let blk = wg % p.blocks;

#if SUBGROUPS
    if (lid == 0u) { atomicStore(&sg_count, 0u); }
    workgroupBarrier();
    var mine = 0u;
    if (sg_lane == 0u) { mine = atomicAdd(&sg_count, 1u); }
    let sgi = subgroupBroadcastFirst(mine);
    let rloc = sgi * (sg_size / LANES) + sg_lane / LANES;
    let lane = sg_lane % LANES;
#else
    let rloc = lid / LANES;
    let lane = lid % LANES;
#endif
    // Rows past Dv (or past R) still run the loop, on a clamped row, and write nothing.
    let row_raw = blk * R + rloc;
    let live = rloc < R && row_raw < p.dv;
    let row = min(row_raw, p.dv - 1u);

#if STREAMS
    stream_row = wid.z;
    if (wid.z >= min(step.n_tokens, p.rows_cap)) { return; }
    let T = 1u;
    let nc = 0u;
#else
    let T = min(step.n_tokens, p.rows_cap);
    let nc = step.n_confirmed;
#endif
    let hv = p.n_v_heads;
    let kh = h / (hv / p.n_k_heads);
    let dk4 = p.dk / 4u;
    let sbase = ((row0() * hv + h) * p.dv + row) * dk4;
    let key_dim = p.n_k_heads * p.dk;
    let vcol = 2u * key_dim + h * p.dv + row;

    var s: array<vec4<f32>, NV4>;
    // The state this call starts from: the snapshot when step.rollback is set (the previous
    // verify rejected its draft). Each element is read, then written, by the same lane.
#if STREAMS
    let from_snap = false;
#else
    let from_snap = step.rollback != 0u;
#endif
    for (var j = 0u; j < NV4; j++) {
        if (from_snap) {
            s[j] = snap[sbase + lane + LANES * j];
        } else {
            s[j] = state[sbase + lane + LANES * j];
        }
    }

#if PREP
    let alog_h = a_log[h];
    let dtb_h = dt_bias[h];
#if GATED
    let gw_row = gw[row];
#endif
    // Every load of a row is issued before its barriers and reductions (row 0's here, row t+1's
    // at the top of row t), so their latencies overlap one another and the arithmetic instead of
    // each waiting behind the previous one's. The arithmetic is unchanged.
    var n_raw: array<vec4<f32>, KQ>;
    for (var i = 0u; i < KQ; i++) {
        n_raw[i] = stage_load(0u, T, kh, lid + i * WG);
    }
    var n_v = 0.0;
    var n_zb = 0.0;
    var n_za = 0.0;
    var n_zg = 0.0;
    if (T > 0u) {
        n_v = conv_at(vcol);
        n_zb = z[p.b_col + h];
        n_za = z[p.a_col + h];
#if GATED
        n_zg = z[p.z_col + h * p.dv + row];
#endif
    }
    for (var t = 0u; t < T; t++) {
        let buf = 0u;
        let raw = n_raw;
        let v = n_v;
        let zb = n_zb;
        let za = n_za;
        let zg = n_zg;
        if (t + 1u < T) {
            let t1 = t + 1u;
            for (var i = 0u; i < KQ; i++) {
                n_raw[i] = stage_load(t1, T, kh, lid + i * WG);
            }
            n_v = conv_at(t1 * p.conv_dim + vcol);
            n_zb = z[t1 * p.z_stride + p.b_col + h];
            n_za = z[t1 * p.z_stride + p.a_col + h];
#if GATED
            n_zg = z[t1 * p.z_stride + p.z_col + h * p.dv + row];
#endif
        }
        // Stage row t's raw k|q (every read of the previous row's is behind this barrier).
        workgroupBarrier();
        for (var i = 0u; i < KQ; i++) {
            if (lid + i * WG < KQS) { kq[lid + i * WG] = raw[i]; }
        }
        workgroupBarrier();
        // gdn_prep's normalization: threads [0, GN_WG) sum k's squares, [GN_WG, 2 GN_WG) q's.
        if (lid < 2u * GN_WG) {
            let hbase = (lid / GN_WG) * dk4;
            var ss = 0.0;
            for (var j = lid % GN_WG; j < p.dk; j += GN_WG) {
                let xv = kq[hbase + j / 4u][j % 4u];
                ss += xv * xv;
            }
            qkred[lid] = ss;
        }
        workgroupBarrier();
        for (var stride = GN_WG / 2u; stride > 0u; stride >>= 1u) {
            if (lid < 2u * GN_WG && lid % GN_WG < stride) { qkred[lid] += qkred[lid + stride]; }
            workgroupBarrier();
        }
        let inv_k = inverseSqrt(qkred[0] / f32(p.dk) + p.qk_eps);
        let inv_q = inverseSqrt(qkred[GN_WG] / f32(p.dk) + p.qk_eps);
        for (var i = lid; i < 2u * dk4; i += WG) {
            if (i < dk4) {
                kq[i] = p.k_scale * (kq[i] * inv_k);
            } else {
                kq[i] = p.q_scale * (kq[i] * inv_q);
            }
        }
        workgroupBarrier();
        let beta = sigmoid(zb);
        let g = decay_gate(za, alog_h, dtb_h);
#else
    // k|q of row 0 staged now, of row 1 held in registers; v, beta, g one row ahead.
    var pre: array<vec4<f32>, KQ>;
    for (var i = 0u; i < KQ; i++) {
        if (lid + i * WG < KQS) {
            kq[lid + i * WG] = stage_load(0u, T, kh, lid + i * WG);
        }
        pre[i] = stage_load(1u, T, kh, lid + i * WG);
    }
    var nv = 0.0;
    var nb = 0.0;
    var ng = 0.0;
    if (T > 0u) {
        nv = conv_at(vcol);
        nb = gates[row0() * 2u * hv + h];
        ng = gates[row0() * 2u * hv + hv + h];
    }
    workgroupBarrier();

    for (var t = 0u; t < T; t++) {
        let buf = (t & 1u) * KQS;
        let nbuf = KQS - buf;
        let v = nv;
        let beta = nb;
        let g = ng;
        if (t + 1u < T) {
            nv = conv_at((t + 1u) * p.conv_dim + vcol);
            nb = gates[(row0() + t + 1u) * 2u * hv + h];
            ng = gates[(row0() + t + 1u) * 2u * hv + hv + h];
        }
        var fut: array<vec4<f32>, KQ>;
        for (var i = 0u; i < KQ; i++) {
            fut[i] = stage_load(t + 2u, T, kh, lid + i * WG);
        }
#endif

        var acc = vec4<f32>(0.0);
        for (var j = 0u; j < NV4; j++) {
            s[j] = s[j] * g;
            acc = acc + s[j] * kq[buf + lane + LANES * j];
        }
        let pm = hsum(acc);
#if SUBGROUPS
        let pm2 = pm + subgroupShuffleXor(pm, 1u);
        let m = pm2 + subgroupShuffleXor(pm2, 2u);
#else
        red_m[lid] = pm;
        workgroupBarrier();
        let r0 = rloc * LANES;
        let m = (red_m[r0] + red_m[r0 + 1u]) + (red_m[r0 + 2u] + red_m[r0 + 3u]);
#if !PREP
        // Stage row t+1's k|q: every read of this buffer (row t-1) is before the barrier above.
        for (var i = 0u; i < KQ; i++) {
            if (lid + i * WG < KQS) { kq[nbuf + lid + i * WG] = pre[i]; }
        }
#endif
#endif
        let delta = (v - m) * beta;

        acc = vec4<f32>(0.0);
        for (var j = 0u; j < NV4; j++) {
            let c = lane + LANES * j;
            s[j] = s[j] + kq[buf + c] * delta;
            acc = acc + s[j] * kq[buf + dk4 + c];
        }
        let po = hsum(acc);
#if SUBGROUPS
        let po2 = po + subgroupShuffleXor(po, 1u);
        let o = po2 + subgroupShuffleXor(po2, 2u);
#else
        red_o[lid] = po;
        workgroupBarrier();
        let o = (red_o[r0] + red_o[r0 + 1u]) + (red_o[r0 + 2u] + red_o[r0 + 3u]);
#endif
#if GATED
#if HSPLIT
        // The raw output; the head's last workgroup out normalizes it (after the loop).
        if (live && lane == 0u) {
            y[(row0() + t) * hv * p.dv + h * p.dv + row] = o;
        }
#else
        if (lane == 0u) { gy[row] = o; }
        let inv = head_inv(lid);
        if (live && lane == 0u) {
#if PREP
            let gn = gw_row * (o * inv);
            let yv = silu(zg) * gn;
#else
            let gn = gw[row] * (o * inv);
            let yv = silu(z[(row0() + t) * p.z_stride + p.z_col + h * p.dv + row]) * gn;
#endif
            y[(row0() + t) * hv * p.dv + h * p.dv + row] = yv;
#if XQ
            gq[row] = yv;
#endif
        }
#if XQ
        workgroupBarrier();
        head_planes(t, h, lid);
#endif
#endif
#else
        if (live && lane == 0u) {
            y[(row0() + t) * hv * p.dv + h * p.dv + row] = o;
        }
#endif
        if (live && nc < T && t + 1u == nc) {
            for (var j = 0u; j < NV4; j++) {
                snap[sbase + lane + LANES * j] = s[j];
            }
        }
#if !PREP
#if SUBGROUPS
        for (var i = 0u; i < KQ; i++) {
            if (lid + i * WG < KQS) { kq[nbuf + lid + i * WG] = pre[i]; }
        }
        workgroupBarrier();
#endif
        pre = fut;
#endif
    }

    if (live) {
        for (var j = 0u; j < NV4; j++) {
            state[sbase + lane + LANES * j] = s[j];
        }
    }
#if HSPLIT
    // Count this workgroup done with head h; the last one out (its raw rows and every other
    // workgroup's are written before their counts) finishes the head. Nobody waits.
    storageBarrier();
    workgroupBarrier();
    if (lid == 0u) {
        hs_last = select(0u, 1u, atomicAdd(&hcnt[h], 1u) + 1u == p.blocks);
    }
    if (workgroupUniformLoad(&hs_last) == 0u) { return; }
    if (lid == 0u) { atomicStore(&hcnt[h], 0u); }
    storageBarrier();
    for (var t = 0u; t < T; t++) {
        let yb = (row0() + t) * hv * p.dv + h * p.dv;
        for (var c = lid; c < p.dv; c += WG) {
            gy[c] = y[yb + c];
        }
        let inv = head_inv(lid);
        for (var c = lid; c < p.dv; c += WG) {
            let gn = gw[c] * (gy[c] * inv);
            let yv = silu(z[(row0() + t) * p.z_stride + p.z_col + h * p.dv + c]) * gn;
            y[yb + c] = yv;
#if XQ
            gq[c] = yv;
#endif
        }
#if XQ
        workgroupBarrier();
        head_planes(t, h, lid);
#endif
        workgroupBarrier();
    }
#endif
}
