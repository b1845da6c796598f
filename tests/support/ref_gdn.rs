//! Scalar CPU references for the Gated-DeltaNet kernels (spec §4.6 as mlx-lm computes it), in f64.
//! Layouts match `qwgpu_engine::ops::gdn`; T is the number of rows.

use qwgpu_engine::ops::gdn::{qk_norm_constants, GdnDims};

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Output of [`conv`].
pub struct ConvRef {
    /// [T, conv_dim] = silu(conv).
    pub out: Vec<f32>,
    /// [T, conv_dim] = Σ_k |X·w| (scale for tolerances).
    pub mag: Vec<f32>,
    /// [K-1, conv_dim]: the conv state after all T rows (exact copies of input values).
    pub state: Vec<f32>,
}

/// The conv state after the first `n` rows: the last K-1 rows of concat(state, qkv[0..n]).
/// `qkv` rows are `stride` wide with channel 0 at `col`.
pub fn conv_state_after(
    d: &GdnDims,
    qkv: &[f32],
    stride: usize,
    col: usize,
    state: &[f32],
    n: usize,
) -> Vec<f32> {
    let cd = d.conv_dim() as usize;
    let ks = d.conv_kernel as usize - 1;
    let x = |j: usize, c: usize| {
        if j < ks {
            state[j * cd + c]
        } else {
            qkv[(j - ks) * stride + col + c]
        }
    };
    let mut s = vec![0f32; ks * cd];
    for j in 0..ks {
        for c in 0..cd {
            s[j * cd + c] = x(n + j, c);
        }
    }
    s
}

/// Causal depthwise conv + silu over `t` rows of `qkv` (rows `stride` wide, channels at `col`),
/// with `w` [conv_dim, K] and `state` [K-1, conv_dim].
pub fn conv(
    d: &GdnDims,
    qkv: &[f32],
    stride: usize,
    col: usize,
    w: &[f32],
    state: &[f32],
    t: usize,
) -> ConvRef {
    let cd = d.conv_dim() as usize;
    let k = d.conv_kernel as usize;
    let ks = k - 1;
    let x = |j: usize, c: usize| if j < ks { state[j * cd + c] } else { qkv[(j - ks) * stride + col + c] } as f64;
    let mut out = vec![0f32; t * cd];
    let mut mag = vec![0f32; t * cd];
    for r in 0..t {
        for c in 0..cd {
            let (mut s, mut m) = (0f64, 0f64);
            for tap in 0..k {
                let p = x(r + tap, c) * w[c * k + tap] as f64;
                s += p;
                m += p.abs();
            }
            out[r * cd + c] = silu(s) as f32;
            mag[r * cd + c] = m as f32;
        }
    }
    ConvRef {
        out,
        mag,
        state: conv_state_after(d, qkv, stride, col, state, t),
    }
}

/// mlx-lm `normalize_qk` on the q and k heads of `conv_out` [T, conv_dim] (v copied through), and
/// the gates [T, 2·Hv] = sigmoid(b) | exp(-exp(A_log)·softplus(a + dt_bias)). `b` and `a` rows are
/// `ba_stride` wide with b at `b_col`, a at `a_col`.
#[allow(clippy::too_many_arguments)]
pub fn prep(
    d: &GdnDims,
    conv_out: &[f32],
    ba: &[f32],
    ba_stride: usize,
    b_col: usize,
    a_col: usize,
    a_log: &[f32],
    dt_bias: &[f32],
    t: usize,
) -> (Vec<f32>, Vec<f32>) {
    let cd = d.conv_dim() as usize;
    let (hk, hv, dk) = (
        d.n_k_heads as usize,
        d.n_v_heads as usize,
        d.k_head_dim as usize,
    );
    let (q_scale, k_scale, eps) = qk_norm_constants(d.k_head_dim);
    let mut out = conv_out[..t * cd].to_vec();
    let mut gates = vec![0f32; t * 2 * hv];
    for r in 0..t {
        for j in 0..2 * hk {
            let base = r * cd + j * dk;
            let ss: f64 = (0..dk).map(|c| (conv_out[base + c] as f64).powi(2)).sum();
            let inv = 1.0 / (ss / dk as f64 + eps as f64).sqrt();
            let scale = if j < hk { q_scale } else { k_scale } as f64;
            for c in 0..dk {
                out[base + c] = (scale * conv_out[base + c] as f64 * inv) as f32;
            }
        }
        for h in 0..hv {
            let b = ba[r * ba_stride + b_col + h] as f64;
            let a = ba[r * ba_stride + a_col + h] as f64;
            gates[r * 2 * hv + h] = sigmoid(b) as f32;
            gates[r * 2 * hv + hv + h] =
                (-(a_log[h] as f64).exp() * softplus(a + dt_bias[h] as f64)).exp() as f32;
        }
    }
    (out, gates)
}

/// Output of [`recurrence`].
pub struct RecurrenceRef {
    /// [T, Hv·Dv].
    pub y: Vec<f32>,
    /// [Hv, Dv, Dk] after all rows.
    pub state: Vec<f32>,
    /// [Hv, Dv, Dk] after row `n_confirmed - 1` (when 0 < n_confirmed < T).
    pub snap: Option<Vec<f32>>,
}

/// The gated delta rule over `t` rows (spec §4.6 step 6), starting from `state` [Hv, Dv, Dk].
pub fn recurrence(
    d: &GdnDims,
    conv_out: &[f32],
    gates: &[f32],
    state: &[f32],
    t: usize,
    n_confirmed: usize,
) -> RecurrenceRef {
    let cd = d.conv_dim() as usize;
    let (hk, hv, dk, dv) = (
        d.n_k_heads as usize,
        d.n_v_heads as usize,
        d.k_head_dim as usize,
        d.v_head_dim as usize,
    );
    let key_dim = hk * dk;
    let mut s: Vec<f64> = state.iter().map(|&v| v as f64).collect();
    let mut y = vec![0f32; t * hv * dv];
    let mut snap = None;
    for r in 0..t {
        let row = &conv_out[r * cd..(r + 1) * cd];
        for h in 0..hv {
            let kh = h / (hv / hk);
            let q = &row[kh * dk..(kh + 1) * dk];
            let k = &row[key_dim + kh * dk..key_dim + (kh + 1) * dk];
            let v = &row[2 * key_dim + h * dv..2 * key_dim + (h + 1) * dv];
            let beta = gates[r * 2 * hv + h] as f64;
            let g = gates[r * 2 * hv + hv + h] as f64;
            for i in 0..dv {
                let si = &mut s[(h * dv + i) * dk..(h * dv + i + 1) * dk];
                let mut m = 0f64;
                for j in 0..dk {
                    si[j] *= g;
                    m += si[j] * k[j] as f64;
                }
                let delta = beta * (v[i] as f64 - m);
                let mut o = 0f64;
                for j in 0..dk {
                    si[j] += delta * k[j] as f64;
                    o += si[j] * q[j] as f64;
                }
                y[r * hv * dv + h * dv + i] = o as f32;
            }
        }
        if r + 1 == n_confirmed && n_confirmed < t {
            snap = Some(s.iter().map(|&v| v as f32).collect());
        }
    }
    RecurrenceRef {
        y,
        state: s.iter().map(|&v| v as f32).collect(),
        snap,
    }
}

/// Gated RMSNorm: out[t, h, :] = silu(z) · weight ⊙ y / sqrt(mean(y²) + eps), per (row, head).
/// `z` rows are `z_stride` wide with the Hv·Dv values at `z_col`.
pub fn gated_norm(
    d: &GdnDims,
    y: &[f32],
    z: &[f32],
    z_stride: usize,
    z_col: usize,
    weight: &[f32],
    t: usize,
) -> Vec<f32> {
    let (hv, dv) = (d.n_v_heads as usize, d.v_head_dim as usize);
    let vd = hv * dv;
    let mut out = vec![0f32; t * vd];
    for r in 0..t {
        for h in 0..hv {
            let yo = r * vd + h * dv;
            let ss: f64 = (0..dv).map(|c| (y[yo + c] as f64).powi(2)).sum();
            let inv = 1.0 / (ss / dv as f64 + d.eps as f64).sqrt();
            for c in 0..dv {
                let n = weight[c] as f64 * y[yo + c] as f64 * inv;
                out[yo + c] = (silu(z[r * z_stride + z_col + h * dv + c] as f64) * n) as f32;
            }
        }
    }
    out
}
