// Causal GQA attention over the KV cache with the output gate (spec §4.5 steps 6-7).
// Query head h of row t reads kv head g = h / (Hq / Hkv) ("repeat" mapping):
//   s_k = (scale * q[t, h]) · k_cache[k, g]   for k = 0 ..= pos + t   (n_keys = pos + t + 1)
//   o   = Σ_k softmax(s)_k v_cache[k, g]      (f32, max-subtracted)
//   y[t, h*D + j] = o_j * sigmoid(gate[t, h*2D + D + j])
//
// Keys are cut into chunks whose length depends only on n_keys (chunk_keys: at least CK_MIN, at
// most NS chunks). A chunk gives a partial (m = max score, l = Σ exp(s - m), acc = Σ exp(s - m) v),
// and the partials are merged in chunk order. Two pipelines, one arithmetic:
//   SPLIT   one workgroup per (row t < split_rows, head, chunk) writes its partial to `part`
//           (decode and verify: NS workgroups per head keep the whole GPU reading).
//   (final) one workgroup per (row, head): merges the partials, read from `part` for rows
//           t < split_rows or computed in place (same `chunk` function) for the others, then
//           normalizes and gates.
// Batch invariance: a row's bits depend only on its query, n_keys and the cache, never on the
// row count or on which path computed its partials. `chunk` is contraction-proof for that (every
// multiply-add is an explicit fma, every other sum a plain add), so the two pipelines compile its
// arithmetic alike.
//
// Inside a chunk, per block of BK keys: scores with LPK = WG / BK threads per key (strided D/4
// vec4 products, partials added in lane order by one thread), a running max m shared by all
// threads (each reads the same BK scores), and the weighted V sum on KS = WG / (D/4) key slices
// (thread = one vec4 of dims, slice s takes keys s, s + KS, ... of the block), added in slice
// order at the end of the chunk. Loads use clamped (valid) rows and are masked afterwards, so the
// compiler can issue them all before the arithmetic.
//
// QR (final pass, prompt chunks): a workgroup per (group of QR consecutive rows, head). Where the
// group's rows all compute their chunks in place with one chunk length (n_keys of the first and
// last row give the same chunk_keys), each block of keys is read once for the QR rows: every
// thread loads its key's (and its slice's value) vectors once and runs each row's arithmetic on
// them, in the order and with the masks the one-row path uses (a row skips the blocks past its
// own keys; a masked key's value, read at another clamp, enters as 0 · v). So a row's bits are
// those of the one-row path, while the cache is read QR times less. Other groups (decode rows with
// partials, a change of chunk length, the call's last partial group) take the rows one at a time.
//
// STREAMS (decode rows only, not with QROWS): the rows are independent streams (a batch of
// sequences, one token each): row t is at its own position (stream_pos(t)) and reads its own
// slot of the caches ([streams, max_ctx, Hkv*D]); the arithmetic of a row is the same.
//
// PREP and COMBINE (split pass, decode and verify tiles whose rows are all split rows): the
// split pass also does attn_prep's work for its rows (prep_fold) and, with COMBINE, the final
// pass's (split_done): one or two dispatches fewer, the same bits (attn_rope.wgsl and
// attn_merge.wgsl hold the shared arithmetic).
//
// Defines: WG, BK (keys per block; WG/BK lanes per key), HEAD_DIM, NS (max chunks per row),
// CK_MIN (min chunk length, a multiple of BK), SPLIT, XQ (final pass, or split pass with
// COMBINE), QR (rows per group; 1 but in the final pass with QROWS), KV_F16 (caches of f16
// values), PREP (with SPLIT), COMBINE (with PREP).
#include "common.wgsl"
#if STREAMS
#include "streams.wgsl"
#endif

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
#if PREP
// PREP (with SPLIT): the projections' outputs instead of attn_prep's q; the pass writes the new
// rows' keys and values into the caches itself (see prep_fold).
@group(0) @binding(2) var<storage, read> act: array<f32>;                  // [T, gate_stride]: q|gate at gate_col, k at k_col, v at v_col
@group(0) @binding(6) var<storage, read> q_norm: array<f32>;               // [D]
@group(0) @binding(7) var<storage, read> k_norm: array<f32>;               // [D]
#else
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;              // [T, Hq*D / 4] (attn_prep's q_out)
#endif
#if KV_F16
// KV_F16: the caches hold f16 pairs (pack2x16float, core WGSL: no shader-f16 needed), four
// values per vec2<u32>; indices count vec4s of values either way.
#if PREP
@group(0) @binding(3) var<storage, read_write> k_cache: array<vec2<u32>>;  // [max_ctx, Hkv*D / 4]
@group(0) @binding(4) var<storage, read_write> v_cache: array<vec2<u32>>;  // [max_ctx, Hkv*D / 4]
const F16_MAX: f32 = 65504.0;
fn pack_pair(a: f32, b: f32) -> u32 {
    return pack2x16float(clamp(vec2<f32>(a, b), vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
}
fn kvput(v: vec4<f32>) -> vec2<u32> { return vec2<u32>(pack_pair(v.x, v.y), pack_pair(v.z, v.w)); }
#else
@group(0) @binding(3) var<storage, read> k_cache: array<vec2<u32>>;        // [max_ctx, Hkv*D / 4]
@group(0) @binding(4) var<storage, read> v_cache: array<vec2<u32>>;        // [max_ctx, Hkv*D / 4]
#endif
fn kget(i: u32) -> vec4<f32> {
    let w = k_cache[i];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}
fn vget(i: u32) -> vec4<f32> {
    let w = v_cache[i];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}
#else
#if PREP
@group(0) @binding(3) var<storage, read_write> k_cache: array<vec4<f32>>;  // [max_ctx, Hkv*D / 4]
@group(0) @binding(4) var<storage, read_write> v_cache: array<vec4<f32>>;  // [max_ctx, Hkv*D / 4]
fn kvput(v: vec4<f32>) -> vec4<f32> { return v; }
#else
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;        // [max_ctx, Hkv*D / 4]
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;        // [max_ctx, Hkv*D / 4]
#endif
fn kget(i: u32) -> vec4<f32> { return k_cache[i]; }
fn vget(i: u32) -> vec4<f32> { return v_cache[i]; }
#endif
#if SPLIT
@group(0) @binding(5) var<storage, read_write> part: array<vec4<f32>>;     // [split_rows, Hq, NS, 1 + D/4]: (m, l, 0, 0), acc
#if COMBINE
// COMBINE (with SPLIT and PREP): the final pass's merge of a row's partials done by the split
// pass's last workgroup of each (row, head or head group), counted in `done` (see split_done);
// the gates are read from `act`.
@group(0) @binding(8) var<storage, read_write> done: array<atomic<u32>>;   // [split_rows * Hq], zero between dispatches
@group(0) @binding(9) var<storage, read_write> y: array<vec4<f32>>;        // [T, Hq*D / 4]
#if XQ
@group(0) @binding(10) var<storage, read_write> xq: array<u32>;            // [T, 4 * q_stride]
var<workgroup> yo: array<vec4<f32>, D4>;
#include "xq_planes.wgsl"
#endif
#endif
#else
@group(0) @binding(5) var<storage, read> part: array<vec4<f32>>;           // [split_rows, Hq, NS, 1 + D/4]: (m, l, 0, 0), acc
@group(0) @binding(6) var<storage, read> gate: array<f32>;                 // [T, gate_stride]: at gate_col, [Hq, 2, D] = per head [q_h | gate_h]
@group(0) @binding(7) var<storage, read_write> y: array<vec4<f32>>;        // [T, Hq*D / 4]
#if XQ
// XQ: y also as the integer planes of the o_proj matmul (xq_planes.wgsl; a head is D / 8 whole
// words, a thread per word), the bits of an xquant dispatch on y.
@group(0) @binding(8) var<storage, read_write> xq: array<u32>;             // [T, 4 * q_stride]
var<workgroup> yo: array<vec4<f32>, D4>;
#include "xq_planes.wgsl"
#endif
#endif

const WG: u32 = {{WG}}u;
const BK: u32 = {{BK}}u;
// (ATT_LPK = WG / BK, ATT_NI = ceil(D4 / LPK), ATT_KS = WG / D4, ATT_KPS = ceil(BK / KS): the
// host's, so that `#for` can write the loops over them out.)
const LPK: u32 = {{ATT_LPK}}u;           // threads per key in the score phase
const D: u32 = {{HEAD_DIM}}u;
const D4: u32 = D / 4u;
const NI: u32 = {{ATT_NI}}u;             // score-phase vec4s per thread
const KS: u32 = {{ATT_KS}}u;             // output phase: key slices of D4 threads
const KPS: u32 = {{ATT_KPS}}u;           // keys per slice per block
const NS: u32 = {{NS}}u;
const CK_MIN: u32 = {{CK_MIN}}u;
const PSTRIDE: u32 = 1u + D4;            // vec4s per partial in `part`
const NEG: f32 = -3.0e38;                // below any score; exp(NEG - m) == 0

const QR: u32 = {{QR}}u;
var<workgroup> qs: array<vec4<f32>, QR * D4>;   // scale * q (QR: per row of the group)
var<workgroup> lanes: array<f32, QR * WG>;      // score partials [BK, LPK] (per row)
var<workgroup> sc: array<f32, QR * BK>;         // scores of the block (NEG past the chunk end; per row)
var<workgroup> pe: array<f32, QR * BK>;         // exp(score - running max) of the block (0 past the end)
var<workgroup> accs: array<vec4<f32>, WG>;     // per-slice outputs [KS, D/4]
var<workgroup> ls: array<f32, WG>;             // per-slice denominators [KS]

struct Partial {
    acc: vec4<f32>,   // threads lid < D4: dims 4*lid .. 4*lid + 3
    m: f32,
    l: f32,           // threads lid < D4
}

// Cache position of row t (its key count is that + 1).
fn row_at(t: u32) -> u32 {
#if STREAMS
    return stream_pos(t);
#else
    return step.pos + t;
#endif
}

// Offset (vec4s) of row t's slot in the caches: 0 unless STREAMS.
fn slot4(t: u32) -> u32 {
#if STREAMS
    return t * p.max_ctx * p.n_kv_heads * D4;
#else
    return 0u;
#endif
}

// Chunk length for a row with n_keys keys (a multiple of BK, at least CK_MIN, at most NS chunks).
fn chunk_keys(n_keys: u32) -> u32 {
    let per = (n_keys + NS - 1u) / NS;
    return max(CK_MIN, (per + BK - 1u) / BK * BK);
}

// The partial of keys [k0, k1) (k0 < k1) of one kv head for the query in `qs`. Called from
// uniform control flow by the whole workgroup.
fn chunk(k0: u32, k1: u32, kv_row4: u32, kv_off4: u32, lid: u32) -> Partial {
    let kk = lid / LPK;
    let lane = lid % LPK;
    let ks = lid / D4;
    let dv = lid % D4;
    var m = NEG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var blk = k0; blk < k1; blk += BK) {
        let kb = min(blk + kk, k1 - 1u) * kv_row4 + kv_off4;
        // The block's key and value loads written out and issued first (at clamped indices, in
        // the row), then the arithmetic in the loops' order.
#for R ATT_NI
        let kv{{R}} = kget(kb + min(lane + {{R}}u * LPK, D4 - 1u));
#endfor
#for R ATT_KPS
        let vv{{R}} = vget(min(blk + min(ks + {{R}}u * KS, BK - 1u), k1 - 1u) * kv_row4 + kv_off4 + dv);
#endfor
        var s = 0.0;
#for R ATT_NI
        if (lane + {{R}}u * LPK < D4) {
            let a = qs[lane + {{R}}u * LPK];
            s = fma(a.x, kv{{R}}.x, s);
            s = fma(a.y, kv{{R}}.y, s);
            s = fma(a.z, kv{{R}}.z, s);
            s = fma(a.w, kv{{R}}.w, s);
        }
#endfor
        lanes[lid] = s;
        workgroupBarrier();
        if (lid < BK) {
            var a = 0.0;
            for (var j = 0u; j < LPK; j++) {
                a += lanes[lid * LPK + j];
            }
            sc[lid] = select(NEG, a, blk + lid < k1);
        }
        workgroupBarrier();
        var bm = NEG;
        for (var j = 0u; j < BK; j++) {
            bm = max(bm, sc[j]);
        }
        let m_new = max(m, bm);
        let corr = exp(m - m_new);
        m = m_new;
        acc = acc * corr;
        // Each key's weight computed once (by its own thread) for every slice that uses it.
        if (lid < BK) {
            pe[lid] = select(0.0, exp(sc[lid] - m), blk + lid < k1);
        }
        workgroupBarrier();
        var ps = 0.0;
        if (ks < KS) {
#for R ATT_KPS
            {
                let j0 = ks + {{R}}u * KS;
                let pj = select(0.0, pe[min(j0, BK - 1u)], j0 < BK);
                ps += pj;
                acc = fma(vec4<f32>(pj), vv{{R}}, acc);
            }
#endfor
        }
        l = fma(l, corr, ps);
    }
    if (ks < KS) {
        accs[lid] = acc;
        if (dv == 0u) { ls[ks] = l; }
    }
    workgroupBarrier();
    var res = Partial(vec4<f32>(0.0), m, 0.0);
    if (lid < D4) {
        for (var s = 0u; s < KS; s++) {
            res.acc += accs[s * D4 + lid];
            res.l += ls[s];
        }
    }
    workgroupBarrier();
    return res;
}

#if !PREP
fn load_q(t: u32, h: u32, lid: u32) {
    let qbase = (t * p.n_heads + h) * D4;
    for (var i = lid; i < D4; i += WG) {
        qs[i] = q[qbase + i] * p.scale;
    }
    workgroupBarrier();
}
#endif

// Index of partial (t, h, c) in `part`.
fn part_base(t: u32, h: u32, c: u32) -> u32 {
    return ((t * p.n_heads + h) * NS + c) * PSTRIDE;
}

#if SPLIT
#if COMBINE
fn gate_at(i: u32) -> f32 { return act[i]; }
#include "attn_merge.wgsl"

var<workgroup> last_wg: u32;

// COMBINE: counts this workgroup done with row t's partials of heads h0 .. h0 + nh - 1 (counter
// t * Hq + h0, of n_chunks workgroups: one per chunk); the last one resets the counter and
// writes those heads' outputs from their partials as the final pass does (merge_parts,
// write_row: the same bits). storageBarrier is a device-scope release before the count and an
// acquire after it (Vulkan's memoryBarrierBuffer), so every workgroup's partials are visible to
// the last one's reads. Called from uniform control flow after the partials are written.
fn split_done(t: u32, h0: u32, nh: u32, n_chunks: u32, lid: u32) {
    storageBarrier();
    if (lid == 0u) {
        last_wg = atomicAdd(&done[t * p.n_heads + h0], 1u);
    }
    if (workgroupUniformLoad(&last_wg) + 1u != n_chunks) { return; }
    if (lid == 0u) { atomicStore(&done[t * p.n_heads + h0], 0u); }
    storageBarrier();
    for (var i = 0u; i < nh; i++) {
        write_row(t, h0 + i, merge_parts(t, h0 + i, n_chunks, lid), lid);
    }
}
#endif
#else
fn gate_at(i: u32) -> f32 { return gate[i]; }
#include "attn_merge.wgsl"
#endif

#if SPLIT
#if PREP
const RP_SLOTS: u32 = WG / 64u;
const RP_D: u32 = (D + 63u) / 64u * 64u;
#include "attn_rope.wgsl"

// The fold's jobs (attn_rope.wgsl): the workgroup's query heads first (pj_nq of them), then the
// new keys it writes; per job its source offset in `act`, its position and (keys) its row.
const PJ_MAX: u32 = 16u;
var<private> pj_src: array<u32, PJ_MAX>;
var<private> pj_pos: array<u32, PJ_MAX>;
var<private> pj_row: array<u32, PJ_MAX>;
var<private> pj_nq: u32;
fn rp_x(job: u32, j: u32) -> f32 { return act[pj_src[job] + j]; }
fn rp_w(job: u32, j: u32) -> f32 {
    if (job < pj_nq) { return q_norm[j]; }
    return k_norm[j];
}
fn rp_pos(job: u32) -> u32 { return pj_pos[job]; }

// PREP: the step's attention prep (attn_prep.wgsl) folded into the split pass, for calls whose
// rows are all split rows (the decode and verify tiles; the host checks). Row t's workgroup
// computes its nh query heads h0 .. h0 + nh - 1 into qs (times the scale, as load_q reads
// attn_prep's output) and, for kv head g, the key and value of each new row t2 <= t (STREAMS:
// t alone) whose position falls in its chunk [k0, k1), which it writes into the caches before
// reading the chunk. Every workgroup that reads such a row wrote it first, with the bits any
// other writer of it writes (attn_rope.wgsl: the arithmetic of the separate prep), and rows
// outside the call's are never written. Called from uniform control flow; ends with a barrier.
fn prep_fold(t: u32, h0: u32, nh: u32, g: u32, k0: u32, k1: u32, lid: u32) {
    var n = 0u;
    for (var i = 0u; i < nh; i++) {
        pj_src[n] = t * p.gate_stride + p.gate_col + (h0 + i) * 2u * D;
        pj_pos[n] = row_at(t);
        n++;
    }
    pj_nq = n;
    var first = 0u;
#if STREAMS
    first = t;
#endif
    for (var t2 = first; t2 <= t && n < PJ_MAX; t2++) {
        let r = row_at(t2);
        if (r >= k0 && r < k1) {
            pj_src[n] = t2 * p.gate_stride + p.k_col + g * D;
            pj_pos[n] = r;
            pj_row[n] = t2;
            n++;
        }
    }
    for (var j0 = 0u; j0 < n; j0 += RP_SLOTS) {
        rope_round(j0, n, lid);
        // A thread per vec4 of each job's head.
        for (var e = lid; e < RP_SLOTS * D4; e += WG) {
            let job = j0 + e / D4;
            let i4 = e % D4;
            if (job < n) {
                let yb = (e / D4) * RP_D + 4u * i4;
                let y = vec4<f32>(rp_ys[yb], rp_ys[yb + 1u], rp_ys[yb + 2u], rp_ys[yb + 3u]);
                if (job < pj_nq) {
                    qs[job * D4 + i4] = y * p.scale;
                } else {
                    let t2 = pj_row[job];
                    let ci = pj_pos[job] * p.n_kv_heads * D4 + g * D4 + slot4(t2) + i4;
                    k_cache[ci] = kvput(y);
                    let vs = t2 * p.gate_stride + p.v_col + g * D + 4u * i4;
                    v_cache[ci] = kvput(vec4<f32>(act[vs], act[vs + 1u], act[vs + 2u], act[vs + 3u]));
                }
            }
        }
        workgroupBarrier();
    }
    // The caches' new rows visible to this workgroup's loads of its chunk.
    storageBarrier();
    workgroupBarrier();
}
#endif
#if SPLITG
var<workgroup> bmx: array<f32, QR>;             // the block's max score per head

// One block's key vectors (this thread's NI of the score phase) and value vectors (its KPS of the
// weighted sum), at the clamped rows `chunk` reads.
struct KvBlock {
    k: array<vec4<f32>, NI>,
    v: array<vec4<f32>, KPS>,
}

fn load_block(blk: u32, k1: u32, kv_row4: u32, kv_off4: u32, lid: u32) -> KvBlock {
    var o: KvBlock;
    let kb = min(blk + lid / LPK, k1 - 1u) * kv_row4 + kv_off4;
    for (var r = 0u; r < NI; r++) {
        let i = lid % LPK + r * LPK;
        o.k[r] = vec4<f32>(0.0);
        if (i < D4) { o.k[r] = kget(kb + i); }
    }
    let ks = lid / D4;
    for (var r = 0u; r < KPS; r++) {
        o.v[r] = vec4<f32>(0.0);
        if (ks < KS) {
            let j = min(ks + r * KS, BK - 1u);
            o.v[r] = vget(min(blk + j, k1 - 1u) * kv_row4 + kv_off4 + lid % D4);
        }
    }
    return o;
}

// SPLITG: one workgroup per (row t < split_rows, group of QR consecutive query heads, chunk): the
// group's heads share one kv head, so each key and value vector of the chunk is read once for
// all QR heads (the QR-row final pass's structure with heads for rows: one k1 for all). Each
// head's arithmetic is `chunk`'s, in the same order, so the partials have the bits of one
// workgroup per head (tested). A block's key and value vectors are loaded together, one block
// ahead of its arithmetic (`load_block`). The host records it for long contexts (the cache read
// once per group instead of once per head) and the one-head form for short ones (few chunks per
// row: one workgroup per head keeps more of the GPU busy); a separate pipeline, so neither form
// pays the other's registers.
fn split_grouped(id: u32, lid: u32) {
    let nq = p.n_heads;
    let nkv = p.n_kv_heads;
    let ngr = max(nq / QR, 1u);
    let hg = id % ngr;
    let c = (id / ngr) % NS;
    let t = id / (NS * ngr);
    let row = row_at(t);
    if (t >= step.n_tokens || t >= p.split_rows || t >= p.max_rows || row >= p.max_ctx || nkv == 0u || p.head_dim != D) { return; }
    let n_keys = row + 1u;
    let ck = chunk_keys(n_keys);
    let k0 = c * ck;
    if (k0 >= n_keys) { return; }
    let k1 = min(k0 + ck, n_keys);
    let h0 = hg * QR;
    let g = min(h0 / max(nq / nkv, 1u), nkv - 1u);
    let kv_row4 = nkv * D4;
    let kv_off4 = g * D4 + slot4(t);
#if PREP
    prep_fold(t, h0, QR, g, k0, k1, lid);
#else
    for (var i = lid; i < QR * D4; i += WG) {
        qs[i] = q[(t * nq + h0 + i / D4) * D4 + i % D4] * p.scale;
    }
    workgroupBarrier();
#endif
    let lane = lid % LPK;
    let ks = lid / D4;
    let dv = lid % D4;
#for R QR
    var m{{R}} = NEG;
    var l{{R}} = 0.0;
    var acc{{R}} = vec4<f32>(0.0);
#endfor
    var cur = load_block(k0, k1, kv_row4, kv_off4, lid);
    for (var blk = k0; blk < k1; blk += BK) {
        // The next block's vectors are loaded while this one's arithmetic runs.
        var nxt = cur;
        if (blk + BK < k1) {
            nxt = load_block(blk + BK, k1, kv_row4, kv_off4, lid);
        }
#for R QR
        var s{{R}} = 0.0;
#endfor
        for (var r = 0u; r < NI; r++) {
            let i = lane + r * LPK;
            if (i < D4) {
                let b = cur.k[r];
#for R QR
                {
                    let a = qs[{{R}}u * D4 + i];
                    s{{R}} = fma(a.x, b.x, s{{R}});
                    s{{R}} = fma(a.y, b.y, s{{R}});
                    s{{R}} = fma(a.z, b.z, s{{R}});
                    s{{R}} = fma(a.w, b.w, s{{R}});
                }
#endfor
            }
        }
#for R QR
        lanes[{{R}}u * WG + lid] = s{{R}};
#endfor
        workgroupBarrier();
        if (lid < BK) {
#for R QR
            {
                var a = 0.0;
                for (var j = 0u; j < LPK; j++) {
                    a += lanes[{{R}}u * WG + lid * LPK + j];
                }
                sc[{{R}}u * BK + lid] = select(NEG, a, blk + lid < k1);
            }
#endfor
        }
        workgroupBarrier();
        // Each head's block max taken once, by one thread (in `chunk`'s order: the same value),
        // which the others read after one more barrier, instead of by every thread (QR * BK
        // workgroup-memory reads each per block: H200, 6 heads, 16000 keys, 59.3 -> 50.7 us per
        // split pass). Not in `chunk` (one head: as fast either way) nor in the final pass's row
        // groups (prompt chunks: slower, the barrier on the critical path); a subgroup max over
        // the score threads instead of the loop was slower there (71 us).
        if (lid < QR) {
            var b = NEG;
            for (var j = 0u; j < BK; j++) {
                b = max(b, sc[lid * BK + j]);
            }
            bmx[lid] = b;
        }
        workgroupBarrier();
#for R QR
        var corr{{R}} = 1.0;
        {
            let bm = bmx[{{R}}u];
            let m_new = max(m{{R}}, bm);
            corr{{R}} = exp(m{{R}} - m_new);
            m{{R}} = m_new;
            acc{{R}} = acc{{R}} * corr{{R}};
        }
        var ps{{R}} = 0.0;
        // (each key's weight once, as in `chunk`)
        if (lid < BK) {
            pe[{{R}}u * BK + lid] = select(0.0, exp(sc[{{R}}u * BK + lid] - m{{R}}), blk + lid < k1);
        }
#endfor
        workgroupBarrier();
        if (ks < KS) {
            for (var r = 0u; r < KPS; r++) {
                let j0 = ks + r * KS;
                let j = min(j0, BK - 1u);
                let vv = cur.v[r];
#for R QR
                {
                    let pj = select(0.0, pe[{{R}}u * BK + j], j0 < BK);
                    ps{{R}} += pj;
                    acc{{R}} = fma(vec4<f32>(pj), vv, acc{{R}});
                }
#endfor
            }
        }
#for R QR
        l{{R}} = fma(l{{R}}, corr{{R}}, ps{{R}});
#endfor
        cur = nxt;
    }
    // Each head's partial: the slices summed in order, as `chunk` does.
#for R QR
    if (ks < KS) {
        accs[lid] = acc{{R}};
        if (dv == 0u) { ls[ks] = l{{R}}; }
    }
    workgroupBarrier();
    {
        let base = part_base(t, h0 + {{R}}u, c);
        var pl = 0.0;
        var pa = vec4<f32>(0.0);
        if (lid < D4) {
            for (var sl = 0u; sl < KS; sl++) {
                pa += accs[sl * D4 + lid];
                pl += ls[sl];
            }
        }
        if (lid == 0u) {
            part[base] = vec4<f32>(m{{R}}, pl, 0.0, 0.0);
        }
        if (lid < D4) {
            part[base + 1u + lid] = pa;
        }
    }
    workgroupBarrier();
#endfor
#if COMBINE
    split_done(t, h0, QR, (n_keys + ck - 1u) / ck, lid);
#endif
}
#endif

// One workgroup per (row t < split_rows, head, chunk).
fn split_one(id: u32, lid: u32) {
    let nq = p.n_heads;
    let nkv = p.n_kv_heads;
    // Heads fastest: the heads that share a kv head read the same chunk at about the same time.
    let h = id % max(nq, 1u);
    let c = (id / max(nq, 1u)) % NS;
    let t = id / (NS * max(nq, 1u));
    let row = row_at(t);
    if (t >= step.n_tokens || t >= p.split_rows || t >= p.max_rows || row >= p.max_ctx || nkv == 0u || p.head_dim != D) { return; }
    let n_keys = row + 1u;
    let ck = chunk_keys(n_keys);
    let k0 = c * ck;
    if (k0 >= n_keys) { return; }
    let g = min(h / max(nq / nkv, 1u), nkv - 1u);
    let k1 = min(k0 + ck, n_keys);
#if PREP
    prep_fold(t, h, 1u, g, k0, k1, lid);
#else
    load_q(t, h, lid);
#endif
    let r = chunk(k0, k1, nkv * D4, g * D4 + slot4(t), lid);
    let base = part_base(t, h, c);
    if (lid == 0u) {
        part[base] = vec4<f32>(r.m, r.l, 0.0, 0.0);
    }
    if (lid < D4) {
        part[base + 1u + lid] = r.acc;
    }
#if COMBINE
    split_done(t, h, 1u, (n_keys + ck - 1u) / ck, lid);
#endif
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let id = wg_linear(wid, nwg);
#if SPLITG
    split_grouped(id, lid);
#else
    split_one(id, lid);
#endif
}
#else
// Row t (valid) of head h on the one-row path: its partials merged (decode rows), or its chunks
// computed here in order. Called from uniform control flow.
fn one_row(t: u32, h: u32, lid: u32) {
    let nq = p.n_heads;
    let nkv = p.n_kv_heads;
    let n_keys = row_at(t) + 1u;
    let ck = chunk_keys(n_keys);
    let n_chunks = (n_keys + ck - 1u) / ck;
    var st = Partial(vec4<f32>(0.0), NEG, 0.0);
    if (t < p.split_rows) {
        st = merge_parts(t, h, n_chunks, lid);
    } else {
        let g = min(h / max(nq / nkv, 1u), nkv - 1u);
        load_q(t, h, lid);
        for (var c = 0u; c < n_chunks; c++) {
            let k0 = c * ck;
            st = merge(st, chunk(k0, min(k0 + ck, n_keys), nkv * D4, g * D4 + slot4(t), lid));
        }
    }
    write_row(t, h, st, lid);
}

#if !QROWS
@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wid.z;
    let h = wg_linear(wid, nwg);
    let row = row_at(t);
    if (t >= step.n_tokens || t >= p.max_rows || row >= p.max_ctx || h >= p.n_heads || p.n_kv_heads == 0u || p.head_dim != D) { return; }
    one_row(t, h, lid);
}
#else
@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = wg_linear(wid, nwg);
    let nq = p.n_heads;
    let nkv = p.n_kv_heads;
    if (h >= nq || nkv == 0u || p.head_dim != D || step.pos >= p.max_ctx) { return; }
    // Rows t < nt are valid (as the one-row kernel's checks).
    let nt = min(min(step.n_tokens, p.max_rows), p.max_ctx - step.pos);
    let g0 = wid.z * QR;
    if (g0 >= nt) { return; }
    let nr = min(QR, nt - g0);
    let nk0 = step.pos + g0 + 1u;          // n_keys of the group's first row
    let ck = chunk_keys(nk0);
    if (g0 < p.split_rows || nr < QR || chunk_keys(nk0 + QR - 1u) != ck) {
        for (var r = 0u; r < nr; r++) {
            one_row(g0 + r, h, lid);
        }
        return;
    }
    let g = min(h / max(nq / nkv, 1u), nkv - 1u);
    let kv_row4 = nkv * D4;
    let kv_off4 = g * D4;
    for (var i = lid; i < QR * D4; i += WG) {
        qs[i] = q[((g0 + i / D4) * nq + h) * D4 + i % D4] * p.scale;
    }
    workgroupBarrier();
    let kk = lid / LPK;
    let lane = lid % LPK;
    let ks = lid / D4;
    let dv = lid % D4;
#for R QR
    var st{{R}} = Partial(vec4<f32>(0.0), NEG, 0.0);
#endfor
    let n_last = nk0 + QR - 1u;
    let n_chunks = (n_last + ck - 1u) / ck;
    for (var c = 0u; c < n_chunks; c++) {
        let k0 = c * ck;
        let kmax = min(k0 + ck, n_last);
#for R QR
        let k1_{{R}} = min(k0 + ck, nk0 + {{R}}u);
        var m{{R}} = NEG;
        var l{{R}} = 0.0;
        var acc{{R}} = vec4<f32>(0.0);
#endfor
        for (var blk = k0; blk < kmax; blk += BK) {
            let kb = min(blk + kk, kmax - 1u) * kv_row4 + kv_off4;
#for R QR
            var s{{R}} = 0.0;
#endfor
            for (var r = 0u; r < NI; r++) {
                let i = lane + r * LPK;
                if (i < D4) {
                    let b = kget(kb + i);
#for R QR
                    {
                        let a = qs[{{R}}u * D4 + i];
                        s{{R}} = fma(a.x, b.x, s{{R}});
                        s{{R}} = fma(a.y, b.y, s{{R}});
                        s{{R}} = fma(a.z, b.z, s{{R}});
                        s{{R}} = fma(a.w, b.w, s{{R}});
                    }
#endfor
                }
            }
#for R QR
            lanes[{{R}}u * WG + lid] = s{{R}};
#endfor
            workgroupBarrier();
            if (lid < BK) {
#for R QR
                {
                    var a = 0.0;
                    for (var j = 0u; j < LPK; j++) {
                        a += lanes[{{R}}u * WG + lid * LPK + j];
                    }
                    sc[{{R}}u * BK + lid] = select(NEG, a, blk + lid < k1_{{R}});
                }
#endfor
            }
            workgroupBarrier();
#for R QR
            let live{{R}} = blk < k1_{{R}};
            var corr{{R}} = 1.0;
            if (live{{R}}) {
                var bm = NEG;
                for (var j = 0u; j < BK; j++) {
                    bm = max(bm, sc[{{R}}u * BK + j]);
                }
                let m_new = max(m{{R}}, bm);
                corr{{R}} = exp(m{{R}} - m_new);
                m{{R}} = m_new;
                acc{{R}} = acc{{R}} * corr{{R}};
            }
            var ps{{R}} = 0.0;
#endfor
            if (ks < KS) {
                for (var r = 0u; r < KPS; r++) {
                    let j0 = ks + r * KS;
                    let j = min(j0, BK - 1u);
                    let vv = vget(min(blk + j, kmax - 1u) * kv_row4 + kv_off4 + dv);
#for R QR
                    if (live{{R}}) {
                        let pj = select(0.0, exp(sc[{{R}}u * BK + j] - m{{R}}), j0 < BK && blk + j < k1_{{R}});
                        ps{{R}} += pj;
                        acc{{R}} = fma(vec4<f32>(pj), vv, acc{{R}});
                    }
#endfor
                }
            }
#for R QR
            if (live{{R}}) {
                l{{R}} = fma(l{{R}}, corr{{R}}, ps{{R}});
            }
#endfor
        }
        // Each row's partial of this chunk (where the chunk is one of its own), merged in order.
#for R QR
        if (ks < KS) {
            accs[lid] = acc{{R}};
            if (dv == 0u) { ls[ks] = l{{R}}; }
        }
        workgroupBarrier();
        if (k0 < nk0 + {{R}}u) {
            var res = Partial(vec4<f32>(0.0), m{{R}}, 0.0);
            if (lid < D4) {
                for (var sl = 0u; sl < KS; sl++) {
                    res.acc += accs[sl * D4 + lid];
                    res.l += ls[sl];
                }
            }
            st{{R}} = merge(st{{R}}, res);
        }
        workgroupBarrier();
#endfor
    }
#for R QR
    write_row(g0 + {{R}}u, h, st{{R}}, lid);
#endfor
}
#endif
#endif
