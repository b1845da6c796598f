//! Scalar CPU references for `attn_prep.wgsl` and `attention.wgsl` (spec §4.5), in f64.
//!
//! The one deliberate f32 step is the RoPE angle: the spec (and MLX) compute
//! `angle = f32(pos) * f32(theta^(-2i/rotary_dim))` in f32, and at position p that rounding
//! alone moves the angle by up to p * 2^-24, far more than any kernel error; so the reference
//! forms the same f32 angle and evaluates everything else (cos, sin, norms, softmax) in f64.

/// Shapes shared by the references (mirrors `AttnDims` without the cache size).
#[derive(Clone, Copy, Debug)]
pub struct RefDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub rope_theta: f32,
    pub eps: f32,
}

/// The f32 RoPE angle of frequency index `i` at position `pos` (see the module note).
pub fn rope_angle(pos: u32, i: usize, rotary_dim: usize, theta: f32) -> f32 {
    let half = rotary_dim / 2;
    let inv_freq = (-(i as f64 / half as f64) * (theta as f64).log2()).exp2() as f32;
    pos as f32 * inv_freq
}

/// RMSNorm of one head (`y = w * x / sqrt(mean(x²) + eps)`) followed by rotate-half RoPE on the
/// first `rotary_dim` dims at position `pos`. Returns the f64 result and, per element, the size
/// of the values it is computed from (max of |y_j| and |y_pair|) for tolerances.
pub fn norm_rope(x: &[f32], w: &[f32], d: &RefDims, pos: u32) -> (Vec<f64>, Vec<f64>) {
    let n = x.len();
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
    let inv = 1.0 / (ms + d.eps as f64).sqrt();
    let y: Vec<f64> = (0..n).map(|j| w[j] as f64 * (x[j] as f64 * inv)).collect();
    let mut out = y.clone();
    let mut mag: Vec<f64> = y.iter().map(|v| v.abs()).collect();
    let half = d.rotary_dim / 2;
    for i in 0..half {
        let a = rope_angle(pos, i, d.rotary_dim, d.rope_theta) as f64;
        let (s, c) = a.sin_cos();
        let (x1, x2) = (y[i], y[i + half]);
        out[i] = x1 * c - x2 * s;
        out[i + half] = x1 * s + x2 * c;
        let m = x1.abs().max(x2.abs());
        mag[i] = m;
        mag[i + half] = m;
    }
    (out, mag)
}

/// What `attn_prep` produces for `t` rows starting at position `pos`.
pub struct PrepOut {
    /// [T, Hq*D]
    pub q: Vec<f64>,
    pub q_mag: Vec<f64>,
    /// [T, Hkv*D] (the new cache rows)
    pub k: Vec<f64>,
    pub k_mag: Vec<f64>,
    /// [T, Hkv*D]
    pub v: Vec<f64>,
}

/// `proj` is [T, stride] with q_proj ([Hq, 2, D] per row) at `qg_col`, k at `k_col`, v at `v_col`.
#[allow(clippy::too_many_arguments)]
pub fn attn_prep(
    d: &RefDims,
    proj: &[f32],
    t: usize,
    stride: usize,
    qg_col: usize,
    k_col: usize,
    v_col: usize,
    q_norm: &[f32],
    k_norm: &[f32],
    pos: u32,
) -> PrepOut {
    let hd = d.head_dim;
    let mut o = PrepOut {
        q: vec![],
        q_mag: vec![],
        k: vec![],
        k_mag: vec![],
        v: vec![],
    };
    for r in 0..t {
        let row = &proj[r * stride..(r + 1) * stride];
        let p = pos + r as u32;
        for h in 0..d.n_heads {
            let x = &row[qg_col + h * 2 * hd..qg_col + h * 2 * hd + hd];
            let (y, m) = norm_rope(x, q_norm, d, p);
            o.q.extend(y);
            o.q_mag.extend(m);
        }
        for g in 0..d.n_kv_heads {
            let x = &row[k_col + g * hd..k_col + (g + 1) * hd];
            let (y, m) = norm_rope(x, k_norm, d, p);
            o.k.extend(y);
            o.k_mag.extend(m);
            o.v.extend(
                row[v_col + g * hd..v_col + (g + 1) * hd]
                    .iter()
                    .map(|&v| v as f64),
            );
        }
    }
    o
}

/// Causal GQA attention with the sigmoid output gate.
/// * `q`: [T, Hq*D]; `k_cache`, `v_cache`: [rows, Hkv*D] (row = position); row `r` of the call
///   attends to cache rows `0 ..= pos + r`.
/// * `gate`: [T, gate_stride], q_proj layout ([Hq, 2, D]) from `gate_col`.
///
/// Returns out [T, Hq*D] and, per element, Σ_k p_k |v_k| · sigmoid(gate) (the size of what the
/// weighted sum adds up) for tolerances.
#[allow(clippy::too_many_arguments)]
pub fn attention<Q: Copy + Into<f64>, C: Copy + Into<f64>>(
    d: &RefDims,
    q: &[Q],
    t: usize,
    k_cache: &[C],
    v_cache: &[C],
    gate: &[f32],
    gate_stride: usize,
    gate_col: usize,
    pos: u32,
) -> (Vec<f64>, Vec<f64>) {
    let hd = d.head_dim;
    let (hq, hkv) = (d.n_heads, d.n_kv_heads);
    let group = hq / hkv;
    let scale = (hd as f64).powf(-0.5);
    let row_w = hkv * hd;
    let mut out = vec![0f64; t * hq * hd];
    let mut mag = vec![0f64; t * hq * hd];
    for r in 0..t {
        let n_keys = pos as usize + r + 1;
        for h in 0..hq {
            let g = h / group;
            let qh: Vec<f64> = (0..hd)
                .map(|j| q[r * hq * hd + h * hd + j].into() * scale)
                .collect();
            let scores: Vec<f64> = (0..n_keys)
                .map(|k| {
                    (0..hd)
                        .map(|j| qh[j] * k_cache[k * row_w + g * hd + j].into())
                        .sum::<f64>()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let p: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let l: f64 = p.iter().sum();
            for j in 0..hd {
                let (mut a, mut am) = (0f64, 0f64);
                for k in 0..n_keys {
                    let v: f64 = v_cache[k * row_w + g * hd + j].into();
                    a += p[k] * v;
                    am += p[k] * v.abs();
                }
                let gv = gate[r * gate_stride + gate_col + h * 2 * hd + hd + j] as f64;
                let sg = 1.0 / (1.0 + (-gv).exp());
                out[r * hq * hd + h * hd + j] = a / l * sg;
                mag[r * hq * hd + h * hd + j] = am / l * sg;
            }
        }
    }
    (out, mag)
}
