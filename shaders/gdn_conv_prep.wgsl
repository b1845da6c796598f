// gdn_conv.wgsl and gdn_prep.wgsl in one dispatch (spec §4.6 steps 2-5): the causal conv + silu
// of every channel, the q/k normalization of every key head, and the gates, with the arithmetic
// of the two kernels (the same bits, tested), one launch and no round trip of q and k through
// memory between them.
//
// Grid: x = 2·Hk head blocks (q heads, then k heads: one per key head, its Dk channels on threads
// 0..Dk-1), then ceil(Hv·Dv / WG) value-channel blocks, then one gates block; z = token tiles of
// TILE rows (as gdn_conv). The state update and snapshot per channel are gdn_conv's.
// Head blocks normalize each row's silu values as gdn_prep does: squares summed by NORM_WG
// threads over channels c ≡ lid (mod NORM_WG) in channel order, then a tree over NORM_WG.
//
// STREAMS: the rows are independent streams (a batch of sequences, one token each): row t's
// window is slot t of the state ([streams, K-1, conv_dim]) and the row itself, and slot t is
// updated; no snapshot. The arithmetic of a row is that of a one-row call.
//
// Defines: WG (threads, >= NORM_WG and >= Dk), NORM_WG, TILE, KMAX, STREAMS.
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;              // [T, x_stride], channels at [x_col, x_col + conv_dim)
@group(0) @binding(3) var<storage, read> conv_w: array<f32>;           // [conv_dim, K]
@group(0) @binding(4) var<storage, read_write> conv_state: array<f32>; // [K-1, conv_dim], oldest row first
@group(0) @binding(5) var<storage, read_write> conv_snap: array<f32>;  // [K-1, conv_dim]
@group(0) @binding(6) var<storage, read_write> out: array<f32>;        // [T, conv_dim] = q | k | v
@group(0) @binding(7) var<storage, read> bv: array<f32>;               // [T, b_stride], b [Hv] at b_col
@group(0) @binding(8) var<storage, read> av: array<f32>;               // [T, a_stride], a [Hv] at a_col
@group(0) @binding(9) var<storage, read> a_log: array<f32>;            // [Hv]
@group(0) @binding(10) var<storage, read> dt_bias: array<f32>;         // [Hv]
@group(0) @binding(11) var<storage, read_write> gates: array<f32>;     // [T, 2*Hv] = beta | g

const WG: u32 = {{WG}}u;
const NORM_WG: u32 = {{NORM_WG}}u;
const TILE: u32 = {{TILE}}u;
const KMAX: u32 = {{KMAX}}u;

var<workgroup> sq: array<f32, WG>;
var<workgroup> red: array<f32, NORM_WG>;

// The thread's channel of the old state (K-1 rows), read once before anything is written: from
// conv_snap instead when step.rollback is set (the previous verify rejected its draft).
var<private> hist: array<f32, KMAX>;

fn load_hist(c: u32) {
    for (var j = 0u; j + 1u < p.taps; j++) {
        if (step.rollback != 0u) {
            hist[j] = conv_snap[j * p.conv_dim + c];
        } else {
            hist[j] = conv_state[j * p.conv_dim + c];
        }
    }
}

fn x_at(j: u32, c: u32) -> f32 {
    let ks = p.taps - 1u;
    if (j < ks) {
        return hist[j];
    }
    return qkv[(j - ks) * p.x_stride + p.x_col + c];
}

#if STREAMS
// Tap j of row t's window (stream t: its slot's K-1 rows, then the row).
fn x_stream(t: u32, j: u32, c: u32) -> f32 {
    let ks = p.taps - 1u;
    if (j < ks) {
        return hist[j];
    }
    return qkv[t * p.x_stride + p.x_col + c];
}

fn load_hist_slot(t: u32, c: u32) {
    let base = t * (p.taps - 1u) * p.conv_dim;
    for (var j = 0u; j + 1u < p.taps; j++) {
        hist[j] = conv_state[base + j * p.conv_dim + c];
    }
}
#endif

#include "gdn_gates.wgsl"

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let T = min(step.n_tokens, p.rows_cap);
    let ks = p.taps - 1u;
    let blk = wg_linear(wid, nwg);
    let heads = 2u * p.n_k_heads;
    let key2 = heads * p.dk;                      // q | k channels
    let vblocks = (p.conv_dim - key2 + WG - 1u) / WG;
    let t0 = wid.z * TILE;
    let t1 = min(t0 + TILE, T);
    if (blk > heads + vblocks) { return; }

    if (blk == heads + vblocks) {
        // The gates of the tile's rows (gdn_prep's last workgroup).
        let hv = p.n_v_heads;
        for (var t = t0; t < t1; t++) {
            for (var h = lid; h < hv; h += WG) {
                let beta = sigmoid(bv[t * p.b_stride + p.b_col + h]);
                let g = decay_gate(av[t * p.a_stride + p.a_col + h], a_log[h], dt_bias[h]);
                gates[t * 2u * hv + h] = beta;
                gates[t * 2u * hv + hv + h] = g;
            }
        }
        return;
    }

    let head = blk < heads;
    var c = 0u;
    var valid = false;
    if (head) {
        c = blk * p.dk + lid;
        valid = lid < p.dk;
    } else {
        c = key2 + (blk - heads) * WG + lid;
        valid = c < p.conv_dim;
    }
    let cc = min(c, p.conv_dim - 1u);

    var w: array<f32, KMAX>;
    for (var k = 0u; k < KMAX; k++) {
        w[k] = 0.0;
        if (k < p.taps) { w[k] = conv_w[cc * p.taps + k]; }
    }
#if STREAMS
    // (Bound like the one-sequence form: every binding is used.)
    _ = conv_snap[0];
#else
    if (wid.z == 0u) { load_hist(cc); }
#endif

    for (var t = t0; t < t1; t++) {
        var acc = 0.0;
#if STREAMS
        load_hist_slot(t, cc);
        for (var k = 0u; k < KMAX; k++) {
            if (k < p.taps) { acc += x_stream(t, k, cc) * w[k]; }
        }
        if (valid) {
            // Slot t's window moves on by the row (each thread its own channel, read above).
            let base = t * ks * p.conv_dim;
            for (var j = 0u; j < ks; j++) {
                conv_state[base + j * p.conv_dim + c] = x_stream(t, j + 1u, c);
            }
        }
#else
        for (var k = 0u; k < KMAX; k++) {
            if (k < p.taps) { acc += x_at(t + k, cc) * w[k]; }
        }
#endif
        let v = silu(acc);
        if (head) {
            // gdn_prep's normalization of this row of the head.
            sq[lid] = v;
            workgroupBarrier();
            if (lid < NORM_WG) {
                var s = 0.0;
                for (var j = lid; j < p.dk; j += NORM_WG) {
                    let x = sq[j];
                    s += x * x;
                }
                red[lid] = s;
            }
            workgroupBarrier();
            for (var stride = NORM_WG / 2u; stride > 0u; stride >>= 1u) {
                if (lid < stride) { red[lid] += red[lid + stride]; }
                workgroupBarrier();
            }
            let inv = inverseSqrt(red[0] / f32(p.dk) + p.qk_eps);
            let scale = select(p.k_scale, p.q_scale, blk < p.n_k_heads);
            if (valid) {
                out[t * p.conv_dim + c] = scale * (v * inv);
            }
            workgroupBarrier();
        } else if (valid) {
            out[t * p.conv_dim + c] = v;
        }
    }

#if !STREAMS
    if (wid.z != 0u || T == 0u || !valid) { return; }
    let nc = step.n_confirmed;
    if (nc > 0u && nc < T) {
        for (var j = 0u; j < ks; j++) {
            conv_snap[j * p.conv_dim + c] = x_at(nc + j, c);
        }
    }
    for (var j = 0u; j < ks; j++) {
        conv_state[j * p.conv_dim + c] = x_at(T + j, c);
    }
#endif
}
