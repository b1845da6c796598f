// Gated-DeltaNet causal depthwise conv over time + silu (spec §4.6 step 2, mlx-lm GatedDeltaNet).
//
// X = concat(conv_state, qkv) along time ([K-1 + T, conv_dim]; conv_snap instead of conv_state
// when step.rollback is set: the previous verify, run ahead on the GPU, rejected its draft);
// out[t, c] = silu(sum_{k=0..K-1} X[t + k, c] * w[c, k])   (tap K-1 multiplies the current token);
// afterwards conv_state = X[T .. T+K-1] (the last K-1 raw rows, also when T < K-1), and when
// 0 < n_confirmed < T, conv_snap = X[n_confirmed .. n_confirmed+K-1] (the state after n_confirmed rows).
//
// Grid: x = channel blocks of WG threads (one thread per channel), z = token tiles of TILE rows.
// Only tile 0 reads conv_state (rows t >= TILE >= K-1 see only qkv rows), and the thread that reads
// column c of the old state is the one that writes it, so updating the state in place is race-free.
// Batch invariance: each output is the same K-term sum in tap order whatever T or the tile.
//
// Defines: WG (threads = channels per workgroup), TILE (tokens per workgroup), KMAX (most taps).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;              // [T, x_stride], channels at [x_col, x_col + conv_dim)
@group(0) @binding(3) var<storage, read> conv_w: array<f32>;           // [conv_dim, K]
@group(0) @binding(4) var<storage, read_write> conv_state: array<f32>; // [K-1, conv_dim], oldest row first
@group(0) @binding(5) var<storage, read_write> conv_snap: array<f32>;  // [K-1, conv_dim]
@group(0) @binding(6) var<storage, read_write> out: array<f32>;        // [T, conv_dim]

const WG: u32 = {{WG}}u;
const TILE: u32 = {{TILE}}u;
const KMAX: u32 = {{KMAX}}u;

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

// Row j of X for channel c. The host guarantees j < K-1 + rows_cap.
fn x_at(j: u32, c: u32) -> f32 {
    let ks = p.taps - 1u;
    if (j < ks) {
        return hist[j];
    }
    return qkv[(j - ks) * p.x_stride + p.x_col + c];
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = wg_linear(wid, nwg) * WG + lid;
    if (c >= p.conv_dim) { return; }
    let T = min(step.n_tokens, p.rows_cap);
    let ks = p.taps - 1u;

    var w: array<f32, KMAX>;
    for (var k = 0u; k < KMAX; k++) {
        w[k] = 0.0;
        if (k < p.taps) { w[k] = conv_w[c * p.taps + k]; }
    }
    if (wid.z == 0u) { load_hist(c); }

    let t0 = wid.z * TILE;
    let t1 = min(t0 + TILE, T);
    for (var t = t0; t < t1; t++) {
        var acc = 0.0;
        for (var k = 0u; k < KMAX; k++) {
            if (k < p.taps) { acc += x_at(t + k, c) * w[k]; }
        }
        out[t * p.conv_dim + c] = silu(acc);
    }

    if (wid.z != 0u || T == 0u) { return; }
    let nc = step.n_confirmed;
    if (nc > 0u && nc < T) {
        for (var j = 0u; j < ks; j++) {
            conv_snap[j * p.conv_dim + c] = x_at(nc + j, c);
        }
    }
    // The old rows come from hist (read before any write), so the order of the writes is free.
    for (var j = 0u; j < ks; j++) {
        conv_state[j * p.conv_dim + c] = x_at(T + j, c);
    }
}
