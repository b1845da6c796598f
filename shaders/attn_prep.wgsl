// Full-attention input preparation (spec §4.5 steps 1-5), one workgroup per (row, head slot):
//   slots [0, Hq)          query head h:  q_out[t, h*D + j] = rope(rmsnorm(qg[t, h*2D + j], q_norm))
//   slots [Hq, Hq+Hkv)     key head g:    k_cache[pos + t, g*D + j] = rope(rmsnorm(k[t, g*D + j], k_norm))
//   slots [Hq+Hkv, Hq+2Hkv) value head g: v_cache[pos + t, g*D + j] = v[t, g*D + j]
// The norm and rotation are attn_rope.wgsl's (one job per workgroup), which the decode tiles'
// folded split pass (attention.wgsl with PREP) shares: the same bits either way.
// Batch invariance: every (row, head) is computed by its own workgroup in a fixed order that does
// not depend on the row count or on which call the row belongs to.
// STREAMS: the rows are independent streams (a batch of sequences, one token each): row t is at
// its own position (stream_pos(t), from the step) and writes to its own slot of the caches,
// which hold max_ctx rows per stream ([streams, max_ctx, Hkv*D]); the arithmetic is the same.
#include "common.wgsl"
#if STREAMS
#include "streams.wgsl"
#endif

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> qg: array<f32>;             // [T, qg_stride]: at qg_col, [Hq, 2, D] = per head [q_h | gate_h]
@group(0) @binding(3) var<storage, read> kin: array<f32>;            // [T, k_stride]: at k_col, [Hkv, D]
@group(0) @binding(4) var<storage, read> vin: array<f32>;            // [T, v_stride]: at v_col, [Hkv, D]
@group(0) @binding(5) var<storage, read> q_norm: array<f32>;         // [D]
@group(0) @binding(6) var<storage, read> k_norm: array<f32>;         // [D]
@group(0) @binding(7) var<storage, read_write> q_out: array<f32>;    // [T, Hq*D]
#if KV_F16
// KV_F16: the caches hold f16 values in pairs (pack2x16float; D is even), clamped to f16's
// finite range first.
@group(0) @binding(8) var<storage, read_write> k_cache: array<u32>;  // [max_ctx, Hkv*D / 2]
@group(0) @binding(9) var<storage, read_write> v_cache: array<u32>;  // [max_ctx, Hkv*D / 2]
const F16_MAX: f32 = 65504.0;
fn pack_pair(a: f32, b: f32) -> u32 {
    return pack2x16float(clamp(vec2<f32>(a, b), vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
}
#else
@group(0) @binding(8) var<storage, read_write> k_cache: array<f32>;  // [max_ctx, Hkv*D]
@group(0) @binding(9) var<storage, read_write> v_cache: array<f32>;  // [max_ctx, Hkv*D]
#endif

const WG: u32 = {{WG}}u;
const MAX_D: u32 = {{MAX_D}}u;
const RP_SLOTS: u32 = 1u;
const RP_D: u32 = MAX_D;
#include "attn_rope.wgsl"

// This workgroup's one job: its source offset, whether it is a query head, its position.
var<private> pv_src: u32;
var<private> pv_q: bool;
var<private> pv_pos: u32;
fn rp_x(job: u32, j: u32) -> f32 {
    if (pv_q) { return qg[pv_src + j]; }
    return kin[pv_src + j];
}
fn rp_w(job: u32, j: u32) -> f32 {
    if (pv_q) { return q_norm[j]; }
    return k_norm[j];
}
fn rp_pos(job: u32) -> u32 { return pv_pos; }

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let t = wid.z;
    let slot = wg_linear(wid, nwg);
    let D = p.head_dim;
    let nq = p.n_heads;
    let nkv = p.n_kv_heads;
#if STREAMS
    let row = stream_pos(t);
    let cache_row = t * p.max_ctx + row;
#else
    let row = step.pos + t;
    let cache_row = row;
#endif
    if (t >= step.n_tokens || t >= p.max_rows || row >= p.max_ctx || slot >= nq + 2u * nkv || D > MAX_D || p.rotary_dim > D) { return; }

    if (slot >= nq + nkv) {
        // Value head: a plain copy into the cache.
        let g = slot - nq - nkv;
        let src = t * p.v_stride + p.v_col + g * D;
        let dst = cache_row * nkv * D + g * D;
#if KV_F16
        for (var j = lid; 2u * j < D; j += WG) {
            v_cache[dst / 2u + j] = pack_pair(vin[src + 2u * j], vin[src + 2u * j + 1u]);
        }
#else
        for (var j = lid; j < D; j += WG) {
            v_cache[dst + j] = vin[src + j];
        }
#endif
        return;
    }

    let is_q = slot < nq;
    pv_q = is_q;
    pv_pos = row;
    if (is_q) {
        pv_src = t * p.qg_stride + p.qg_col + slot * 2u * D;
    } else {
        pv_src = t * p.k_stride + p.k_col + (slot - nq) * D;
    }
    rope_round(0u, 1u, lid);

    var dst: u32;
    if (is_q) {
        dst = t * nq * D + slot * D;
    } else {
        dst = cache_row * nkv * D + (slot - nq) * D;
    }
#if KV_F16
    if (is_q) {
        for (var j = lid; j < D; j += WG) { q_out[dst + j] = rp_ys[j]; }
    } else {
        for (var j = lid; 2u * j < D; j += WG) {
            k_cache[dst / 2u + j] = pack_pair(rp_ys[2u * j], rp_ys[2u * j + 1u]);
        }
    }
#else
    for (var j = lid; j < D; j += WG) {
        if (is_q) { q_out[dst + j] = rp_ys[j]; } else { k_cache[dst + j] = rp_ys[j]; }
    }
#endif
}
