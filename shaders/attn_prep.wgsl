// Full-attention input preparation (spec §4.5 steps 1-5), one workgroup per (row, head slot):
//   slots [0, Hq)          query head h:  q_out[t, h*D + j] = rope(rmsnorm(qg[t, h*2D + j], q_norm))
//   slots [Hq, Hq+Hkv)     key head g:    k_cache[pos + t, g*D + j] = rope(rmsnorm(k[t, g*D + j], k_norm))
//   slots [Hq+Hkv, Hq+2Hkv) value head g: v_cache[pos + t, g*D + j] = v[t, g*D + j]
// RMSNorm: ms = mean(x²) in f32, y = w * (x * inverseSqrt(ms + eps)) (as rms_norm.wgsl).
// RoPE (non-traditional, rotate-half, on dims 0..rotary_dim; pair (i, i + rotary_dim/2)):
//   inv_freq_i = exp2(-(i / (rotary_dim/2)) * log2(theta)), angle = f32(pos + t) * inv_freq_i (MLX's f32 math);
//   the angle is reduced to [-pi, pi] (Cody-Waite, exact for |angle| < 2^18) before cos/sin, where
//   WGSL's accuracy guarantees hold on every backend.
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
var<workgroup> ys: array<f32, MAX_D>;
#else
@group(0) @binding(8) var<storage, read_write> k_cache: array<f32>;  // [max_ctx, Hkv*D]
@group(0) @binding(9) var<storage, read_write> v_cache: array<f32>;  // [max_ctx, Hkv*D]
#endif

const WG: u32 = {{WG}}u;
const MAX_D: u32 = {{MAX_D}}u;
const PER: u32 = MAX_D / WG; // dims per thread at most

var<workgroup> red: array<f32, WG>;
var<workgroup> xs: array<f32, MAX_D>;

// (cos a, sin a) with a reduced to [-pi, pi] first: 2pi = C1 + C2 + C3, C1 and C2 have 8
// significant bits so k*C1 and k*C2 are exact for |k| < 2^16.
fn cos_sin(a: f32) -> vec2<f32> {
    let k = round(a * 0.15915494309189535);
    var r = a - k * 6.28125;
    r = r - k * 0.0019378662109375;
    r = r - k * -2.559031372584286e-06;
    return vec2<f32>(cos(r), sin(r));
}

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
    var src: u32;
    if (is_q) {
        src = t * p.qg_stride + p.qg_col + slot * 2u * D;
    } else {
        src = t * p.k_stride + p.k_col + (slot - nq) * D;
    }

    // Load this thread's dims (j = lid + i*WG) and their sum of squares, in a fixed order; the
    // norm weights and the rotation of its dims too, so that their loads and cos/sin overlap
    // the reduction instead of following it (the same arithmetic).
    let hrot = p.rotary_dim / 2u;
    let fpos = f32(row);
    var x: array<f32, PER>;
    var wn: array<f32, PER>;
    var rot: array<vec2<f32>, PER>;
    var s = 0.0;
    for (var i = 0u; i < PER; i++) {
        let j = lid + i * WG;
        var v = 0.0;
        var w = 0.0;
        if (j < D) {
            if (is_q) { v = qg[src + j]; w = q_norm[j]; } else { v = kin[src + j]; w = k_norm[j]; }
        }
        x[i] = v;
        wn[i] = w;
        s += v * v;
        if (j < p.rotary_dim) {
            let fi = select(j - hrot, j, j < hrot);
            let inv_freq = exp2(-(f32(fi) / f32(hrot)) * p.log2_theta);
            rot[i] = cos_sin(fpos * inv_freq);
        }
    }
    red[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) { red[lid] += red[lid + stride]; }
        workgroupBarrier();
    }
    let inv = inverseSqrt(red[0] / f32(D) + p.eps);
    for (var i = 0u; i < PER; i++) {
        let j = lid + i * WG;
        if (j < D) {
            xs[j] = wn[i] * (x[i] * inv);
        }
    }
    workgroupBarrier();

    var dst: u32;
    if (is_q) {
        dst = t * nq * D + slot * D;
    } else {
        dst = cache_row * nkv * D + (slot - nq) * D;
    }
    for (var i = 0u; i < PER; i++) {
        let j = lid + i * WG;
        if (j < D) {
            var y = xs[j];
            if (j < p.rotary_dim) {
                let cs = rot[i];
                if (j < hrot) {
                    y = xs[j] * cs.x - xs[j + hrot] * cs.y;
                } else {
                    y = xs[j - hrot] * cs.y + xs[j] * cs.x;
                }
            }
#if KV_F16
            if (is_q) { q_out[dst + j] = y; } else { ys[j] = y; }
#else
            if (is_q) { q_out[dst + j] = y; } else { k_cache[dst + j] = y; }
#endif
        }
    }
#if KV_F16
    // (is_q is the same for the whole workgroup.)
    if (!is_q) {
        workgroupBarrier();
        for (var j = lid; 2u * j < D; j += WG) {
            k_cache[dst / 2u + j] = pack_pair(ys[2u * j], ys[2u * j + 1u]);
        }
    }
#endif
}
