// Sampling on the GPU: logit bias and penalties, logprobs, top-p / min-p / top-k, temperature,
// a Gumbel-max draw with a counter-based RNG, top-N logprobs, the token history the penalties
// read, and the speculative accept test. The semantics are those of the CPU reference in
// engine/src/decode/sampler.rs; buffer layouts are documented in engine/src/ops/sample.rs.
//
// One pass per define (workgroups are 256 invocations; no subgroup size is assumed):
//   PASS_STATS   blocks × rows: x = processed logits → work; per-block (max, Σexp(x − max),
//                argmax) and top-N candidates; clears the row's radix histograms.
//   PASS_ROUND   blocks × rows, round R_INDEX of a radix select of the top-p / top-k cut over the
//                32-bit order key of x: every workgroup resolves the previous round's histogram
//                (identically, so no extra dispatch is needed), then adds the count and the
//                fixed-point mass of its tokens under the resolved prefix to this round's one.
//   PASS_FINAL   blocks × rows: resolves the last round into the exact cut key; per token the kept
//                flag, w = exp((x − max)/T) (→ probs) and the Gumbel score; per-block best and Σw.
//   PASS_FINISH  one workgroup per row: token, Z, logprobs, top-N → results and ids; appends the
//                token to the history (commit) and advances the draw counter.
//   PASS_INIT    one workgroup: rebuilds the repetition-window counts from the history ring.
//   PASS_FORCED  one workgroup: the step's input ids were forced (a constraint allowed one id each,
//                known on the host, fed without a head): each is committed to the history and
//                takes its draw, as the finish pass of its own step would have done.
//   PASS_ACCEPT_BLOCKS / PASS_ACCEPT_FINISH: accept with probability min(1, p(d)/q(d)); on
//                rejection draw from normalize(max(p − q, 0)) (p when that is all zero).
#include "common.wgsl"

{{REQ}}
{{CFG}}

const WG: u32 = 256u;
// Bins of the widest radix round (1 << radix bits).
const NBIN: u32 = {{NBIN}}u;
const TOP_MAX: u32 = {{TOP_MAX}}u;
const RING: u32 = {{RING}}u;
// What a token outside a row's mask gets added to its logit (`MASKED_LOGIT`), and the mask
// offset of a row without one.
const MASKED_BITS: u32 = {{MASKED_BITS}}u;
const NO_MASK: u32 = {{NO_MASK}}u;
// History header words.
const S_LEN: u32 = 0u;
const S_GEN: u32 = 1u;
const S_DRAWS: u32 = 2u;
const S_RING: u32 = 4u;
// Philox streams.
const STREAM_SAMPLE: u32 = 0u;
const STREAM_ACCEPT: u32 = 1u;
const STREAM_RESIDUAL: u32 = 2u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> req: Req;
@group(0) @binding(1) var<uniform> cfg: Cfg;

var<workgroup> sh_a: array<u32, WG>;
var<workgroup> sh_b: array<u32, WG>;
var<workgroup> sh_c: array<u32, WG>;

fn neg_inf() -> f32 {
    var b = 0xff800000u;
    return bitcast<f32>(b);
}
fn is_ninf(x: f32) -> bool { return bitcast<u32>(x) == 0xff800000u; }

// (v, i) ranks before (bv, bi): larger value, or the same value and a lower index.
fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

// Order key: a larger x gives a larger key, −0 and +0 the same one (x is sanitized: no NaN).
fn fkey(x: f32) -> u32 {
    let b0 = bitcast<u32>(x);
    let b = select(b0, 0u, b0 == 0x80000000u);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}
fn u64_f32(a: vec2<u32>) -> f32 { return f32(a.y) * 4294967296.0 + f32(a.x); }

// exp(x − m) in fixed point, 2^31 = 1 (x ≤ m): summed with integer atomics, so the sums do not
// depend on the order the workgroups run in.
fn mass_q(x: f32, m: f32) -> u32 {
    if (is_ninf(x)) { return 0u; }
    return u32(min(exp(x - m), 1.0) * 2147483648.0 + 0.5);
}

// High 32 bits of a 32×32-bit product.
fn mulhi(a: u32, b: u32) -> u32 {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
}

// Philox4x32-10 (Random123).
fn philox(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = ctr;
    var k = key;
    for (var r = 0u; r < 10u; r++) {
        let lo0 = 0xD2511F53u * c.x;
        let hi0 = mulhi(0xD2511F53u, c.x);
        let lo1 = 0xCD9E8D57u * c.z;
        let hi1 = mulhi(0xCD9E8D57u, c.z);
        c = vec4<u32>(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

// Uniform in (0, 1): 24 random bits, centred (exact in f32).
fn uniform01(draw: u32, stream: u32, i: u32) -> f32 {
    let r = philox(vec4<u32>(i, draw, stream, 0u), vec2<u32>(req.seed_lo, req.seed_hi)).x;
    return (f32(r >> 8u) + 0.5) * (1.0 / 16777216.0);
}
// −ln(u) for the uniform u = (r >> 8 + 0.5)/2^24 of the random word r, accurate to a few ulp
// relative also for u near 1 (where the largest Gumbel values, the ones that win a draw over a
// large vocabulary, come from and where log(u) itself loses every significant digit).
fn neg_log_uniform(r: u32) -> f32 {
    let k = r >> 8u;
    if (k < 8388608u) { return -log((f32(k) + 0.5) * (1.0 / 16777216.0)); }
    // u ≥ 1/2: −ln(1 − v) = 2·atanh(v / (2 − v)) with v = 1 − u (exact), t ≤ 1/3.
    let v = (f32(16777215u - k) + 0.5) * (1.0 / 16777216.0);
    let t = v / (2.0 - v);
    let t2 = t * t;
    var s = 1.0 / 19.0;
    s = s * t2 + 1.0 / 17.0;
    s = s * t2 + 1.0 / 15.0;
    s = s * t2 + 1.0 / 13.0;
    s = s * t2 + 1.0 / 11.0;
    s = s * t2 + 1.0 / 9.0;
    s = s * t2 + 1.0 / 7.0;
    s = s * t2 + 1.0 / 5.0;
    s = s * t2 + 1.0 / 3.0;
    s = s * t2 + 1.0;
    return 2.0 * t * s;
}

// Standard Gumbel noise −ln(−ln u).
fn gumbel(draw: u32, stream: u32, i: u32) -> f32 {
    let r = philox(vec4<u32>(i, draw, stream, 0u), vec2<u32>(req.seed_lo, req.seed_hi)).x;
    return -log(neg_log_uniform(r));
}

// Workgroup arg-best of (value, index); every invocation gets (value bits, index).
fn wg_best(lid: u32, v: f32, i: u32) -> vec2<u32> {
    sh_a[lid] = bitcast<u32>(v);
    sh_b[lid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let ov = bitcast<f32>(sh_a[lid + s]);
            let oi = sh_b[lid + s];
            if (better(ov, oi, bitcast<f32>(sh_a[lid]), sh_b[lid])) {
                sh_a[lid] = sh_a[lid + s];
                sh_b[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = vec2<u32>(sh_a[0], sh_b[0]);
    workgroupBarrier();
    return r;
}

// Workgroup sum in a fixed tree order.
fn wg_sum(lid: u32, v: f32) -> f32 {
    sh_c[lid] = bitcast<u32>(v);
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            sh_c[lid] = bitcast<u32>(bitcast<f32>(sh_c[lid]) + bitcast<f32>(sh_c[lid + s]));
        }
        workgroupBarrier();
    }
    let r = bitcast<f32>(sh_c[0]);
    workgroupBarrier();
    return r;
}

// Merges two (max, Σexp(x − max)) pairs.
fn merge_ms(m1: f32, s1: f32, m2: f32, s2: f32) -> vec2<f32> {
    let m = max(m1, m2);
    if (is_ninf(m)) { return vec2<f32>(m, 0.0); }
    return vec2<f32>(m, s1 * exp(m1 - m) + s2 * exp(m2 - m));
}

#if !PASS_INIT
#if !PASS_ACCEPT_BLOCKS
#if !PASS_ACCEPT_FINISH
@group(0) @binding(2) var<storage, read> step: Step;
#endif
#endif
#endif

// ------------------------------------------------------------------------------------------
// Bindings per pass.

#if PASS_STATS
@group(0) @binding(3) var<storage, read> logits: array<f32>;
@group(0) @binding(4) var<storage, read> ctx: array<u32>;
@group(0) @binding(5) var<storage, read> state: array<u32>;
@group(0) @binding(6) var<storage, read_write> work: array<f32>;
@group(0) @binding(7) var<storage, read_write> scratch: array<u32>;
fn sload(i: u32) -> u32 { return scratch[i]; }
#endif
#if PASS_ROUND
@group(0) @binding(3) var<storage, read> work: array<f32>;
@group(0) @binding(4) var<storage, read_write> scratch: array<atomic<u32>>;
fn sload(i: u32) -> u32 { return atomicLoad(&scratch[i]); }
fn sstore(i: u32, v: u32) { atomicStore(&scratch[i], v); }
#endif
#if PASS_FINAL
@group(0) @binding(3) var<storage, read> work: array<f32>;
@group(0) @binding(4) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(5) var<storage, read_write> probs: array<u32>;
fn sload(i: u32) -> u32 { return scratch[i]; }
fn sstore(i: u32, v: u32) { scratch[i] = v; }
#endif
#if PASS_FINISH
@group(0) @binding(3) var<storage, read> work: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<u32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(6) var<storage, read_write> probs: array<u32>;
@group(0) @binding(7) var<storage, read_write> ids: array<u32>;
@group(0) @binding(8) var<storage, read_write> results: array<u32>;
fn sload(i: u32) -> u32 { return scratch[i]; }
#endif
#if PASS_INIT
@group(0) @binding(2) var<storage, read_write> state: array<atomic<u32>>;
#endif
#if PASS_FORCED
@group(0) @binding(3) var<storage, read> fed: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<u32>;
#endif
#if PASS_ACCEPT_BLOCKS
@group(0) @binding(2) var<storage, read> state: array<u32>;
@group(0) @binding(3) var<storage, read> p_probs: array<f32>;
@group(0) @binding(4) var<storage, read> q_probs: array<f32>;
@group(0) @binding(5) var<storage, read> draft: array<u32>;
@group(0) @binding(6) var<storage, read_write> scratch: array<u32>;
#endif
#if PASS_ACCEPT_FINISH
@group(0) @binding(2) var<storage, read_write> state: array<u32>;
@group(0) @binding(3) var<storage, read> draft: array<u32>;
@group(0) @binding(4) var<storage, read> bonus: array<u32>;
@group(0) @binding(5) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(6) var<storage, read_write> accept_out: array<u32>;
#endif

// ------------------------------------------------------------------------------------------
// Shared by several passes.

#if MERGE_STATS
// Merges the row's per-block statistics: (max, Σexp(x − max), argmax) of the whole row.
fn merge_stats(rb: u32, lid: u32) -> vec3<u32> {
    var m = neg_inf();
    var s = 0.0;
    var bv = neg_inf();
    var bi = NONE;
    for (var b = lid; b < cfg.n_blocks; b += WG) {
        let o = rb + cfg.off_stats + b * 4u;
        let bm = bitcast<f32>(sload(o));
        let ms = merge_ms(m, s, bm, bitcast<f32>(sload(o + 1u)));
        m = ms.x;
        s = ms.y;
        let idx = sload(o + 2u);
        if (better(bm, idx, bv, bi)) { bv = bm; bi = idx; }
    }
    sh_a[lid] = bitcast<u32>(m);
    sh_b[lid] = bitcast<u32>(s);
    sh_c[lid] = bi;
    workgroupBarrier();
    for (var st = WG / 2u; st > 0u; st >>= 1u) {
        if (lid < st) {
            let m1 = bitcast<f32>(sh_a[lid]);
            let m2 = bitcast<f32>(sh_a[lid + st]);
            let ms = merge_ms(m1, bitcast<f32>(sh_b[lid]), m2, bitcast<f32>(sh_b[lid + st]));
            // The block maxima are the argmax values: keep the pair of the better one.
            if (better(m2, sh_c[lid + st], m1, sh_c[lid])) { sh_c[lid] = sh_c[lid + st]; }
            sh_a[lid] = bitcast<u32>(ms.x);
            sh_b[lid] = bitcast<u32>(ms.y);
        }
        workgroupBarrier();
    }
    let r = vec3<u32>(sh_a[0], sh_b[0], sh_c[0]);
    workgroupBarrier();
    return r;
}
#endif

#if RESOLVE
var<workgroup> sh_state: array<u32, 8>;
var<workgroup> sel: array<atomic<u32>, 2>;

// Cut state (8 words, scratch slot per round): [0] key prefix resolved so far, [1] top-p still
// decides the cut, [2] top-k still decides the cut, [3] tokens above the prefix, [4..5] their
// mass (u64), [6] top_p · total mass (f32), [7] unused.
fn load_state(at: u32, lid: u32) -> array<u32, 8> {
    if (lid < 8u) { sh_state[lid] = sload(at + lid); }
    return workgroupUniformLoad(&sh_state);
}

// Resolves the histogram at `hb` (bins of `width` bits at `shift`, under the prefix of `st`) into
// the next cut state. Called by every invocation; every workgroup reaches the same result.
fn resolve(lid: u32, hb: u32, width: u32, shift: u32, st: array<u32, 8>, first: bool) -> array<u32, 8> {
    let per = (1u << width) / WG;
    if (lid == 0u) {
        atomicStore(&sel[0], 0u);
        atomicStore(&sel[1], NONE);
    }
    var tc = 0u;
    var tm = vec2<u32>(0u, 0u);
    for (var j = 0u; j < per; j++) {
        let b = lid * per + j;
        tc += sload(hb + b);
        tm = add64(tm, vec2<u32>(sload(hb + NBIN + b), sload(hb + 2u * NBIN + b)));
    }
    sh_a[lid] = tc;
    sh_b[lid] = tm.x;
    sh_c[lid] = tm.y;
    workgroupBarrier();
    // Inclusive suffix sums over invocations (higher bins first).
    for (var off = 1u; off < WG; off <<= 1u) {
        var c = sh_a[lid];
        var m = vec2<u32>(sh_b[lid], sh_c[lid]);
        if (lid + off < WG) {
            c += sh_a[lid + off];
            m = add64(m, vec2<u32>(sh_b[lid + off], sh_c[lid + off]));
        }
        workgroupBarrier();
        sh_a[lid] = c;
        sh_b[lid] = m.x;
        sh_c[lid] = m.y;
        workgroupBarrier();
    }
    var pt = bitcast<f32>(st[6]);
    if (first) {
        // The first resolution sees the whole row: its total mass is T.
        pt = req.top_p * u64_f32(vec2<u32>(sh_b[0], sh_c[0]));
    }
    let need = req.top_k;
    // Count and mass above this invocation's bins.
    var ac0 = st[3];
    var am0 = vec2<u32>(st[4], st[5]);
    if (lid + 1u < WG) {
        ac0 += sh_a[lid + 1u];
        am0 = add64(am0, vec2<u32>(sh_b[lid + 1u], sh_c[lid + 1u]));
    }
    var ac = ac0;
    var am = am0;
    for (var jj = 0u; jj < per; jj++) {
        let b = lid * per + (per - 1u - jj);
        let c = sload(hb + b);
        // top-k: the bin holding the k-th largest token.
        if (st[2] != 0u && ac < need && need <= ac + c) { atomicMax(&sel[0], b + 1u); }
        // top-p: the lowest non-empty bin whose mass above is still below top_p · T.
        if (st[1] != 0u && c > 0u && u64_f32(am) < pt) { atomicMin(&sel[1], b); }
        ac += c;
        am = add64(am, vec2<u32>(sload(hb + NBIN + b), sload(hb + 2u * NBIN + b)));
    }
    workgroupBarrier();
    let bk1 = atomicLoad(&sel[0]);
    let bp = atomicLoad(&sel[1]);
    let has_k = st[2] != 0u && bk1 != 0u;
    let has_p = st[1] != 0u && bp != NONE;
    var bnew = 0u;
    if (has_k) { bnew = bk1 - 1u; }
    if (has_p) { bnew = select(bp, max(bnew, bp), has_k); }
    if (lid == 0u && !has_k && !has_p) {
        // Only a row without a finite logit gets here: nothing is kept.
        sh_state[0] = NONE;
        sh_state[1] = 0u;
        sh_state[2] = 0u;
    }
    if ((has_k || has_p) && lid == bnew / per) {
        // Recompute count and mass above the chosen bin.
        var c2 = ac0;
        var m2 = am0;
        for (var b = lid * per + per - 1u; b > bnew; b--) {
            c2 += sload(hb + b);
            m2 = add64(m2, vec2<u32>(sload(hb + NBIN + b), sload(hb + 2u * NBIN + b)));
        }
        sh_state[0] = st[0] | (bnew << shift);
        sh_state[1] = select(0u, 1u, has_p && bp == bnew);
        sh_state[2] = select(0u, 1u, has_k && bk1 - 1u == bnew);
        sh_state[3] = c2;
        sh_state[4] = m2.x;
        sh_state[5] = m2.y;
        sh_state[6] = bitcast<u32>(pt);
        sh_state[7] = 0u;
    }
    return workgroupUniformLoad(&sh_state);
}
#endif

#if COMMIT
// Appends token t to the history: ring, repetition-window counts, generated counts.
fn commit(t: u32) {
    if (t >= cfg.vocab) { return; }
    let len = state[S_LEN];
    let w = req.rep_context;
    if (len >= w) {
        let ev = state[S_RING + (len - w) % RING];
        if (ev < cfg.vocab && state[cfg.st_rep + ev] > 0u) { state[cfg.st_rep + ev] -= 1u; }
    }
    state[cfg.st_rep + t] += 1u;
    state[S_RING + len % RING] = t;
    state[cfg.st_gen + t] += 1u;
    state[S_LEN] = len + 1u;
    state[S_GEN] += 1u;
}
#endif

// ------------------------------------------------------------------------------------------

#if PASS_STATS
// Bias and penalties for token j of out row r (the row's history is the committed history plus,
// with ctx_on, the step's input ids of the out rows after the first: a verify's row 1 sees the
// drafted token).
fn process(r: u32, j: u32) -> f32 {
    var x = logits[(cfg.logit_row + r) * cfg.vocab + j];
    if (req.bias_on != 0u) { x += bitcast<f32>(state[cfg.st_bias + j]); }
    if (cfg.unmasked == 0u) {
        // Row 0 and the rows after it may have different masks (an MTP verify's bonus row);
        // drafts never have one.
        let mo = select(req.mask_r0, req.mask_r1, r > 0u);
        if (mo != NO_MASK && ((state[mo + j / 32u] >> (j % 32u)) & 1u) == 0u) { x += bitcast<f32>(MASKED_BITS); }
    }
    if (req.rep_on != 0u || req.pen_on != 0u) {
        var rc = state[cfg.st_rep + j];
        var gc = state[cfg.st_gen + j];
        if (cfg.ctx_on != 0u && r > 0u) {
            let len = state[S_LEN];
            let w = req.rep_context;
            let first = cfg.ctx_offset + step.n_tokens - step.n_out;
            for (var e = 1u; e <= r; e++) {
                var t = NONE;
                if (first + e < cfg.ctx_len) { t = ctx[first + e]; }
                if (t == j) {
                    rc += 1u;
                    gc += 1u;
                }
                // The token that leaves the window as this one enters it.
                let pos = len + e - 1u;
                if (pos >= w) {
                    let q = pos - w;
                    var ev = 0u;
                    if (q < len) {
                        ev = state[S_RING + q % RING];
                    } else if (first + 1u + q - len < cfg.ctx_len) {
                        ev = ctx[first + 1u + q - len];
                    }
                    if (ev == j && rc > 0u) { rc -= 1u; }
                }
            }
        }
        if (req.rep_on != 0u && rc > 0u) {
            x = select(x / req.rep_penalty, x * req.rep_penalty, x < 0.0);
        }
        if (req.pen_on != 0u && gc > 0u) {
            x = x - req.presence;
            x = x - req.frequency * f32(gc);
        }
    }
    // Sanitize: NaN → −inf, +inf → largest finite, −0 → +0.
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return neg_inf(); }
    if (b == 0x7f800000u) { return bitcast<f32>(0x7f7fffffu); }
    if (b == 0x80000000u) { return 0.0; }
    return x;
}

// (v, i) comes after (pv, pi) in the (value desc, index asc) order.
fn after(v: f32, i: u32, pv: f32, pi: u32) -> bool {
    return v < pv || (v == pv && i > pi);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.z;
    if (r >= min(step.n_out, cfg.rows_cap)) { return; }
    let blk = wg_linear(wid, nwg);
    if (blk >= cfg.n_blocks) { return; }
    let rb = r * cfg.row_words;
    if (req.cut_on != 0u && req.greedy == 0u) {
        let hw = cfg.n_rounds * 3u * NBIN;
        for (var j = blk * WG + lid; j < hw; j += cfg.n_blocks * WG) { scratch[rb + cfg.off_hist + j] = 0u; }
    }
    let start = blk * cfg.block;
    let end = min(start + cfg.block, cfg.vocab);
    var tm = neg_inf();
    var ts = 0.0;
    var bv = neg_inf();
    var bi = NONE;
    for (var j = start + lid; j < end; j += WG) {
        let x = process(r, j);
        work[r * cfg.vocab + j] = x;
        if (!is_ninf(x)) {
            if (x > tm) {
                ts = ts * exp(tm - x) + 1.0;
                tm = x;
            } else {
                ts += exp(x - tm);
            }
        }
        if (better(x, j, bv, bi)) { bv = x; bi = j; }
    }
    // (max, sum) and argmax over the block.
    sh_a[lid] = bitcast<u32>(tm);
    sh_b[lid] = bitcast<u32>(ts);
    sh_c[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let m1 = bitcast<f32>(sh_a[lid]);
            let m2 = bitcast<f32>(sh_a[lid + s]);
            let ms = merge_ms(m1, bitcast<f32>(sh_b[lid]), m2, bitcast<f32>(sh_b[lid + s]));
            sh_a[lid] = bitcast<u32>(ms.x);
            sh_b[lid] = bitcast<u32>(ms.y);
        }
        workgroupBarrier();
    }
    let bs = sh_b[0];
    workgroupBarrier();
    let best = wg_best(lid, bv, bi);
    if (lid == 0u) {
        let o = rb + cfg.off_stats + blk * 4u;
        // A block of only −inf still reports its lowest index, so a row of −inf picks token 0.
        scratch[o] = best.x;
        scratch[o + 1u] = bs;
        scratch[o + 2u] = best.y;
        // The draw index of this row (read by the later passes: the counter moves in FINISH).
        scratch[o + 3u] = state[S_DRAWS] + r;
    }
    // Top-N candidates of the block: N rounds of "best after the previous pick".
    var pv = 0.0;
    var pi = NONE;
    for (var n = 0u; n < req.top_n; n++) {
        var cv = neg_inf();
        var ci = NONE;
        for (var j = start + lid; j < end; j += WG) {
            let x = work[r * cfg.vocab + j];
            if (n > 0u && !after(x, j, pv, pi)) { continue; }
            if (better(x, j, cv, ci)) { cv = x; ci = j; }
        }
        let b = wg_best(lid, cv, ci);
        if (lid == 0u) {
            let o = rb + cfg.off_topn + (blk * TOP_MAX + n) * 2u;
            scratch[o] = b.y;
            scratch[o + 1u] = b.x;
        }
        pv = bitcast<f32>(b.x);
        pi = b.y;
    }
}
#endif

#if PASS_ROUND
var<workgroup> h_cnt: array<atomic<u32>, NBIN>;
var<workgroup> h_lo: array<atomic<u32>, NBIN>;
var<workgroup> h_hi: array<atomic<u32>, NBIN>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.z;
    if (r >= min(step.n_out, cfg.rows_cap) || req.greedy != 0u || req.cut_on == 0u) { return; }
    let blk = wg_linear(wid, nwg);
    if (blk >= cfg.n_blocks) { return; }
    let rb = r * cfg.row_words;
    let m = bitcast<f32>(merge_stats(rb, lid).x);
#if FIRST
    var st: array<u32, 8>;
    st[1] = select(0u, 1u, req.top_p_on != 0u);
    st[2] = select(0u, 1u, req.top_k != 0u);
    if (blk == 0u && lid < 8u) { sstore(rb + cfg.off_cut + lid, st[lid]); }
#else
    let prev = load_state(rb + cfg.off_cut + {{P_INDEX}}u * 8u, lid);
    let st = resolve(lid, rb + cfg.off_hist + {{P_INDEX}}u * 3u * NBIN, {{P_WIDTH}}u, {{P_SHIFT}}u, prev, {{P_INDEX}}u == 0u);
    if (blk == 0u && lid < 8u) { sstore(rb + cfg.off_cut + {{R_INDEX}}u * 8u + lid, st[lid]); }
#endif
    if (st[1] == 0u && st[2] == 0u) { return; }
    for (var b = lid; b < NBIN; b += WG) {
        atomicStore(&h_cnt[b], 0u);
        atomicStore(&h_lo[b], 0u);
        atomicStore(&h_hi[b], 0u);
    }
    workgroupBarrier();
    let start = blk * cfg.block;
    let end = min(start + cfg.block, cfg.vocab);
    let mask = (1u << {{R_WIDTH}}u) - 1u;
    for (var j = start + lid; j < end; j += WG) {
        let x = work[r * cfg.vocab + j];
        let k = fkey(x);
#if !FIRST
        if ((k >> {{P_SHIFT}}u) != (st[0] >> {{P_SHIFT}}u)) { continue; }
#endif
        let b = (k >> {{R_SHIFT}}u) & mask;
        atomicAdd(&h_cnt[b], 1u);
        let q = mass_q(x, m);
        if (q != 0u) {
            let old = atomicAdd(&h_lo[b], q);
            if (old + q < old) { atomicAdd(&h_hi[b], 1u); }
        }
    }
    workgroupBarrier();
    let hb = rb + cfg.off_hist + {{R_INDEX}}u * 3u * NBIN;
    for (var b = lid; b <= mask; b += WG) {
        let c = atomicLoad(&h_cnt[b]);
        if (c != 0u) {
            atomicAdd(&scratch[hb + b], c);
            let lo = atomicLoad(&h_lo[b]);
            let hi = atomicLoad(&h_hi[b]);
            let old = atomicAdd(&scratch[hb + NBIN + b], lo);
            let carry = select(0u, 1u, old + lo < old);
            if (hi + carry != 0u) { atomicAdd(&scratch[hb + 2u * NBIN + b], hi + carry); }
        }
    }
}
#endif

#if PASS_FINAL
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.z;
    if (r >= min(step.n_out, cfg.rows_cap)) { return; }
    if (req.greedy != 0u && cfg.probs_on == 0u) { return; }
    let blk = wg_linear(wid, nwg);
    if (blk >= cfg.n_blocks) { return; }
    let rb = r * cfg.row_words;
    let ms = merge_stats(rb, lid);
    let m = bitcast<f32>(ms.x);
    let amax = ms.z;
    var cut = 0u;
    if (req.greedy == 0u && req.cut_on != 0u) {
        let prev = load_state(rb + cfg.off_cut + {{P_INDEX}}u * 8u, lid);
        let st = resolve(lid, rb + cfg.off_hist + {{P_INDEX}}u * 3u * NBIN, {{P_WIDTH}}u, {{P_SHIFT}}u, prev, {{P_INDEX}}u == 0u);
        cut = st[0];
    }
    var thr = neg_inf();
    if (req.min_p_on != 0u) { thr = m + req.ln_min_p; }
    let draw = scratch[rb + cfg.off_stats + 3u];
    let start = blk * cfg.block;
    let end = min(start + cfg.block, cfg.vocab);
    var z = 0.0;
    var bv = neg_inf();
    var bi = NONE;
    for (var j = start + lid; j < end; j += WG) {
        let x = work[r * cfg.vocab + j];
        // Masked tokens hold −1 (a marker, not a weight: read max(w, 0)). (−0.0 would not do:
        // compilers may drop the sign of a zero.)
        var w = 0.0;
        var wb = 0xbf800000u;
        if (req.greedy != 0u) {
            if (j == amax) {
                w = 1.0;
                wb = bitcast<u32>(w);
            }
        } else if (!is_ninf(x) && fkey(x) >= cut && x >= thr) {
            let s = (x - m) * req.inv_temp;
            w = exp(s);
            wb = bitcast<u32>(w);
            let g = s + gumbel(draw, STREAM_SAMPLE, j);
            if (better(g, j, bv, bi)) { bv = g; bi = j; }
        }
        if (cfg.probs_on != 0u) { probs[r * cfg.vocab + j] = wb; }
        z += w;
    }
    let zs = wg_sum(lid, z);
    let best = wg_best(lid, bv, bi);
    if (lid == 0u) {
        let o = rb + cfg.off_final + blk * 4u;
        scratch[o] = best.x;
        scratch[o + 1u] = best.y;
        scratch[o + 2u] = bitcast<u32>(zs);
        scratch[o + 3u] = 0u;
    }
}
#endif

#if PASS_FINISH
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.z;
    if (r >= min(step.n_out, cfg.rows_cap)) { return; }
    let rb = r * cfg.row_words;
    let ms = merge_stats(rb, lid);
    let m = bitcast<f32>(ms.x);
    let lse = m + log(bitcast<f32>(ms.y));
    var token = select(ms.z, 0u, ms.z >= cfg.vocab);
    var z = 1.0;
    var flp = 0.0;
    if (req.greedy == 0u) {
        var bv = neg_inf();
        var bi = NONE;
        var zp = 0.0;
        for (var b = lid; b < cfg.n_blocks; b += WG) {
            let o = rb + cfg.off_final + b * 4u;
            let v = bitcast<f32>(scratch[o]);
            let i = scratch[o + 1u];
            if (i != NONE && better(v, i, bv, bi)) { bv = v; bi = i; }
            zp += bitcast<f32>(scratch[o + 2u]);
        }
        z = wg_sum(lid, zp);
        let best = wg_best(lid, bv, bi);
        if (best.y < cfg.vocab) { token = best.y; }
        flp = (work[r * cfg.vocab + token] - m) * req.inv_temp - log(z);
    }
    // Top-N: merge the blocks' candidates.
    var pv = 0.0;
    var pi = NONE;
    let nc = cfg.n_blocks * req.top_n;
    for (var n = 0u; n < req.top_n; n++) {
        var cv = neg_inf();
        var ci = NONE;
        for (var c = lid; c < nc; c += WG) {
            let o = rb + cfg.off_topn + ((c / req.top_n) * TOP_MAX + c % req.top_n) * 2u;
            let i = scratch[o];
            let v = bitcast<f32>(scratch[o + 1u]);
            if (i == NONE) { continue; }
            if (n > 0u && !(v < pv || (v == pv && i > pi))) { continue; }
            if (better(v, i, cv, ci)) { cv = v; ci = i; }
        }
        let b = wg_best(lid, cv, ci);
        if (lid == 0u) {
            let o = r * cfg.res_words + 8u;
            results[o + n] = b.y;
            results[o + TOP_MAX + n] = bitcast<u32>(bitcast<f32>(b.x) - lse);
        }
        pv = bitcast<f32>(b.x);
        pi = b.y;
    }
    if (lid == 0u) {
        if (cfg.id_offset + r < cfg.ids_cap) { ids[cfg.id_offset + r] = token; }
        if (cfg.probs_on != 0u) { probs[cfg.max_rows * cfg.vocab + r] = bitcast<u32>(z); }
        let o = r * cfg.res_words;
        results[o] = token;
        results[o + 1u] = bitcast<u32>(work[r * cfg.vocab + token] - lse);
        results[o + 2u] = bitcast<u32>(flp);
        results[o + 3u] = min(req.top_n, cfg.vocab);
        results[o + 4u] = bitcast<u32>(lse);
        results[o + 5u] = bitcast<u32>(m);
        results[o + 6u] = bitcast<u32>(z);
        results[o + 7u] = scratch[rb + cfg.off_stats + 3u];
        if (r == 0u) {
            if (cfg.commit != 0u) { commit(token); }
            state[S_DRAWS] += step.n_out;
        }
    }
}
#endif

#if PASS_INIT
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    let len = atomicLoad(&state[S_LEN]);
    let w = req.rep_context;
    let start = select(0u, len - w, len > w);
    for (var p = start + lid; p < len; p += WG) {
        let t = atomicLoad(&state[S_RING + p % RING]);
        if (t < cfg.vocab) { atomicAdd(&state[cfg.st_rep + t], 1u); }
    }
}
#endif

#if PASS_FORCED
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    if (lid != 0u) { return; }
    for (var i = 0u; i < step.n_tokens; i++) {
        if (cfg.commit != 0u) { commit(fed[i]); }
        state[S_DRAWS] += 1u;
    }
}
#endif

#if PASS_ACCEPT_BLOCKS
@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let lin = wg_linear(wid, nwg);
    let row = lin / cfg.n_blocks;
    let blk = lin % cfg.n_blocks;
    if (row >= cfg.rows) { return; }
    let v = cfg.vocab;
    let zb = cfg.max_rows * v;
    let pr = cfg.p_row + row;
    let qr = cfg.q_row + row;
    let zp = p_probs[zb + pr];
    let zq = q_probs[zb + qr];
    let ip = select(0.0, 1.0 / zp, zp > 0.0);
    let iq = select(0.0, 1.0 / zq, zq > 0.0);
    let d = draft[min(cfg.d_offset + row, cfg.d_cap - 1u)];
    var pd = 0.0;
    var qd = 0.0;
    if (d < v) {
        pd = max(p_probs[pr * v + d], 0.0) * ip;
        qd = max(q_probs[qr * v + d], 0.0) * iq;
    }
    var ratio = select(0.0, 1.0, pd > 0.0);
    if (qd > 0.0) { ratio = min(pd / qd, 1.0); }
    let draw = state[S_DRAWS] + row;
    let u = uniform01(draw, STREAM_ACCEPT, 0u);
    let accepted = u < ratio;
    let ab = row * cfg.row_words + cfg.off_acc;
    if (blk == 0u && lid == 0u) {
        scratch[ab] = select(0u, 1u, accepted);
        scratch[ab + 1u] = bitcast<u32>(ratio);
        scratch[ab + 2u] = bitcast<u32>(u);
        scratch[ab + 3u] = draw;
    }
    if (accepted) { return; }
    let start = blk * cfg.block;
    let end = min(start + cfg.block, v);
    var rv = neg_inf();
    var ri = NONE;
    var fv = neg_inf();
    var fi = NONE;
    for (var j = start + lid; j < end; j += WG) {
        let pj = max(p_probs[pr * v + j], 0.0) * ip;
        let qj = max(q_probs[qr * v + j], 0.0) * iq;
        let res = pj - qj;
        if (pj > 0.0) {
            let g = gumbel(draw, STREAM_RESIDUAL, j);
            if (res > 0.0 && better(log(res) + g, j, rv, ri)) { rv = log(res) + g; ri = j; }
            if (better(log(pj) + g, j, fv, fi)) { fv = log(pj) + g; fi = j; }
        }
    }
    let br = wg_best(lid, rv, ri);
    let bf = wg_best(lid, fv, fi);
    if (lid == 0u) {
        let o = ab + 8u + blk * 4u;
        scratch[o] = br.x;
        scratch[o + 1u] = br.y;
        scratch[o + 2u] = bf.x;
        scratch[o + 3u] = bf.y;
    }
}
#endif

#if PASS_ACCEPT_FINISH
var<workgroup> sh_head: array<u32, 4>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;
    if (row >= cfg.rows) { return; }
    let ab = row * cfg.row_words + cfg.off_acc;
    if (lid < 4u) { sh_head[lid] = scratch[ab + lid]; }
    let head = workgroupUniformLoad(&sh_head);
    let d = draft[min(cfg.d_offset + row, cfg.d_cap - 1u)];
    var t0 = d;
    var t1 = NONE;
    var n = 1u;
    if (head[0] != 0u) {
        t1 = bonus[min(cfg.b_offset + row, cfg.b_cap - 1u)];
        n = 2u;
    } else {
        var rv = neg_inf();
        var ri = NONE;
        var fv = neg_inf();
        var fi = NONE;
        for (var b = lid; b < cfg.n_blocks; b += WG) {
            let o = ab + 8u + b * 4u;
            let v1 = bitcast<f32>(scratch[o]);
            let i1 = scratch[o + 1u];
            if (i1 != NONE && better(v1, i1, rv, ri)) { rv = v1; ri = i1; }
            let v2 = bitcast<f32>(scratch[o + 2u]);
            let i2 = scratch[o + 3u];
            if (i2 != NONE && better(v2, i2, fv, fi)) { fv = v2; fi = i2; }
        }
        let br = wg_best(lid, rv, ri);
        let bf = wg_best(lid, fv, fi);
        if (br.y != NONE) { t0 = br.y; } else if (bf.y != NONE) { t0 = bf.y; }
    }
    if (lid == 0u) {
        let o = row * 8u;
        accept_out[o] = head[0];
        accept_out[o + 1u] = n;
        accept_out[o + 2u] = t0;
        accept_out[o + 3u] = t1;
        accept_out[o + 4u] = head[1];
        accept_out[o + 5u] = head[2];
        accept_out[o + 6u] = head[3];
        accept_out[o + 7u] = select(t0, t1, n == 2u);
        if (row == 0u) {
            if (cfg.commit != 0u && cfg.rows == 1u) {
                commit(t0);
                if (n == 2u) { commit(t1); }
            }
            state[S_DRAWS] += cfg.rows;
        }
    }
}
#endif
