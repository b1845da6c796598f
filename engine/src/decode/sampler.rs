//! Sampling parameters and a scalar CPU reference of the whole sampling pipeline.
//!
//! The GPU kernels (`shaders/sample.wgsl`, [`crate::ops::sample`]) implement exactly what this
//! file computes, in the same order (mlx-lm `make_logits_processors` + `make_sampler`):
//!
//! 1. processed logits `x`: logit bias (added; duplicate ids add up), then the repetition penalty
//!    over the last `repetition_context` tokens of the whole context (prompt included) with
//!    mlx-lm's sign-aware formula (`x < 0 ? x·rp : x/rp`, once per distinct token), then
//!    OpenAI-style presence / frequency penalties over the tokens generated so far
//!    (`x −= presence·[count > 0]; x −= frequency·count`). NaN becomes −inf, +inf becomes the
//!    largest finite f32 and −0 becomes +0;
//! 2. `logprobs = x − logsumexp(x)` (what is reported as a token's logprob and in top-N);
//! 3. temperature 0: the argmax of `x` (ties → lowest index), the final distribution is one-hot;
//! 4. otherwise the filters, each on the unfiltered distribution as mlx-lm chains them
//!    (top-p, then min-p, then top-k; every filter keeps the maximum, so the chain is the
//!    intersection): top-p (`0 < top_p < 1`) keeps a token iff the probability mass strictly
//!    above it is below `top_p` (mlx-lm's `apply_top_p`: ties at the cut are all kept); min-p
//!    (`min_p > 0`) keeps `x ≥ max + ln(min_p)`; top-k (`0 < top_k < V`) keeps every token at
//!    least as large as the k-th largest (ties at the cut are all kept: mlx-lm's argpartition keeps
//!    an unspecified k of them); −inf tokens are never kept;
//! 5. final distribution `p_i ∝ exp((x_i − max)/T)` over the kept tokens;
//! 6. the draw: Gumbel-max, `argmax_kept((x_i − max)/T + g_i)` with `g_i = −ln(−ln u_i)` and
//!    `u_i` from Philox4x32-10 keyed by the seed, counter (token, draw index, stream, 0), so a
//!    seed gives the same random numbers on every adapter.
//!
//! Thresholds are compared on the processed logits instead of the logprobs (the same order up to
//! f32 rounding of the subtraction of logsumexp). Derived constants (`1/T`, `ln(min_p)`) are
//! computed once on the host, in [`SamplingParams::derived`], and shared by both paths.

use serde::{Deserialize, Serialize};

/// Most `top_logprobs` a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Largest `repetition_context`: the GPU keeps a ring of this many recent tokens.
pub const HISTORY_RING: u32 = 4096;
/// Philox streams (third counter word): the token draw, the accept test, the residual draw.
pub const STREAM_SAMPLE: u32 = 0;
pub const STREAM_ACCEPT: u32 = 1;
pub const STREAM_RESIDUAL: u32 = 2;

/// Per-request sampling parameters (mlx-lm / OpenAI names; every field has a default, so a JSON
/// object with any subset of them deserializes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 = greedy (argmax). mlx-lm's default.
    pub temperature: f32,
    /// Keep the k most likely tokens (every token tied with the k-th too); active for 0 < k < vocab.
    pub top_k: u32,
    /// Nucleus sampling; active for 0 < top_p < 1 (0 and 1 turn it off, as in mlx-lm).
    pub top_p: f32,
    /// Active for min_p > 0.
    pub min_p: f32,
    /// mlx-lm's multiplicative, sign-aware penalty; 1 (or 0, as mlx-lm) turns it off.
    pub repetition_penalty: f32,
    /// Tokens of the whole context the repetition penalty looks at (mlx-lm default 20).
    pub repetition_context: u32,
    /// Subtracted once from every token generated so far.
    pub presence_penalty: f32,
    /// Subtracted once per occurrence among the tokens generated so far.
    pub frequency_penalty: f32,
    /// Added to the logits of these ids before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    /// The random stream; with the draw counter it fixes every random number.
    pub seed: u64,
    /// How many (id, logprob) pairs of the most likely tokens to report per step (≤ 20).
    pub top_logprobs: u32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repetition_context: 20,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: 0,
            top_logprobs: 0,
        }
    }
}

/// A parameter outside its domain; `field` is the name as it appears in [`SamplingParams`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid sampling parameter `{field}`: {message}")]
pub struct SamplingError {
    pub field: &'static str,
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> SamplingError {
    SamplingError {
        field,
        message: message.into(),
    }
}

/// Constants both the CPU reference and the GPU use, computed once from the parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Derived {
    pub greedy: bool,
    /// 1/temperature in f32 (0 when greedy).
    pub inv_temp: f32,
    pub top_p: Option<f32>,
    /// Some(k) only for 0 < k < vocab.
    pub top_k: Option<u32>,
    /// ln(min_p) in f32, when min-p is active.
    pub ln_min_p: Option<f32>,
    pub repetition: Option<f32>,
    /// Presence or frequency penalty active.
    pub penalties: bool,
    pub bias: bool,
}

impl SamplingParams {
    /// Greedy decoding with no processors.
    pub fn greedy() -> Self {
        Self::default()
    }

    /// Checks every field; `vocab` (when known) bounds the logit-bias ids.
    pub fn validate(&self, vocab: Option<u32>) -> Result<(), SamplingError> {
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return Err(bad(
                "temperature",
                format!("must be a finite number ≥ 0, got {t}"),
            ));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(bad(
                "top_p",
                format!("must be in [0, 1], got {}", self.top_p),
            ));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad(
                "min_p",
                format!("must be in [0, 1], got {}", self.min_p),
            ));
        }
        let rp = self.repetition_penalty;
        if !rp.is_finite() || rp < 0.0 {
            return Err(bad(
                "repetition_penalty",
                format!("must be a finite number ≥ 0, got {rp}"),
            ));
        }
        if self.repetition_context == 0 || self.repetition_context > HISTORY_RING {
            return Err(bad(
                "repetition_context",
                format!(
                    "must be in [1, {HISTORY_RING}], got {}",
                    self.repetition_context
                ),
            ));
        }
        if !self.presence_penalty.is_finite() {
            return Err(bad(
                "presence_penalty",
                format!("must be finite, got {}", self.presence_penalty),
            ));
        }
        if !self.frequency_penalty.is_finite() {
            return Err(bad(
                "frequency_penalty",
                format!("must be finite, got {}", self.frequency_penalty),
            ));
        }
        for &(id, b) in &self.logit_bias {
            if let Some(v) = vocab {
                if id >= v {
                    return Err(bad(
                        "logit_bias",
                        format!("token id {id} is outside the vocabulary (size {v})"),
                    ));
                }
            }
            if !b.is_finite() {
                return Err(bad(
                    "logit_bias",
                    format!("the bias of token {id} must be finite, got {b}"),
                ));
            }
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(bad(
                "top_logprobs",
                format!(
                    "must be at most {MAX_TOP_LOGPROBS}, got {}",
                    self.top_logprobs
                ),
            ));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn derived(&self, vocab: u32) -> Derived {
        let greedy = self.is_greedy();
        Derived {
            greedy,
            inv_temp: if greedy { 0.0 } else { 1.0 / self.temperature },
            top_p: (self.top_p > 0.0 && self.top_p < 1.0).then_some(self.top_p),
            top_k: (self.top_k > 0 && self.top_k < vocab).then_some(self.top_k),
            ln_min_p: (self.min_p > 0.0).then(|| (self.min_p as f64).ln() as f32),
            repetition: (self.repetition_penalty != 0.0 && self.repetition_penalty != 1.0)
                .then_some(self.repetition_penalty),
            penalties: self.presence_penalty != 0.0 || self.frequency_penalty != 0.0,
            bias: !self.logit_bias.is_empty(),
        }
    }

    /// The dense bias vector the GPU reads (duplicate ids add up, in list order).
    pub fn dense_bias(&self, vocab: u32) -> Vec<f32> {
        let mut b = Vec::new();
        self.dense_bias_into(vocab, &mut b);
        b
    }

    /// [`SamplingParams::dense_bias`] into `b` (resized to `vocab`).
    pub fn dense_bias_into(&self, vocab: u32, b: &mut Vec<f32>) {
        b.clear();
        b.resize(vocab as usize, 0.0);
        for &(id, v) in &self.logit_bias {
            if let Some(slot) = b.get_mut(id as usize) {
                *slot += v;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random numbers

/// Philox4x32-10 (Salmon et al. 2011, Random123): counter-based, so any (counter, key) can be
/// evaluated independently on any device.
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (ctr, key);
    for _ in 0..10 {
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
        k = [
            k[0].wrapping_add(0x9E37_79B9),
            k[1].wrapping_add(0xBB67_AE85),
        ];
    }
    c
}

/// The uniform number in (0, 1) of token `index`, draw `draw`, stream `stream`: 24 random bits,
/// centred, so it is exact in f32 and never 0 or 1.
pub fn uniform(seed: u64, draw: u32, stream: u32, index: u32) -> f32 {
    let r = philox4x32_10([index, draw, stream, 0], [seed as u32, (seed >> 32) as u32])[0];
    ((r >> 8) as f32 + 0.5) * (1.0 / 16_777_216.0)
}

/// Standard Gumbel noise from [`uniform`].
pub fn gumbel(seed: u64, draw: u32, stream: u32, index: u32) -> f64 {
    let u = uniform(seed, draw, stream, index) as f64;
    -(-u.ln()).ln()
}

// ---------------------------------------------------------------------------------------------
// The reference pipeline

/// NaN → −inf, +inf → f32::MAX, −0 → +0 (one ordering key per value).
pub fn sanitize(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        f32::MAX
    } else if x == 0.0 {
        0.0
    } else {
        x
    }
}

/// Step 1: bias and penalties. `context` is every token of the sequence so far (prompt first),
/// `n_prompt` how many of them are the prompt (the rest count as generated).
pub fn process_logits(
    logits: &[f32],
    p: &SamplingParams,
    context: &[u32],
    n_prompt: usize,
) -> Vec<f32> {
    let v = logits.len();
    let d = p.derived(v as u32);
    let bias = p.dense_bias(v as u32);
    let mut in_window = vec![false; v];
    let r = p.repetition_context as usize;
    for &t in &context[context.len().saturating_sub(r)..] {
        if let Some(w) = in_window.get_mut(t as usize) {
            *w = true;
        }
    }
    let mut gen = vec![0u32; v];
    for &t in &context[n_prompt.min(context.len())..] {
        if let Some(c) = gen.get_mut(t as usize) {
            *c += 1;
        }
    }
    (0..v)
        .map(|i| {
            let mut x = logits[i];
            if d.bias {
                x += bias[i];
            }
            if let Some(rp) = d.repetition {
                if in_window[i] {
                    x = if x < 0.0 { x * rp } else { x / rp };
                }
            }
            if d.penalties && gen[i] > 0 {
                x -= p.presence_penalty;
                x -= p.frequency_penalty * gen[i] as f32;
            }
            sanitize(x)
        })
        .collect()
}

/// Everything the pipeline decides for one row, computed in f64 from the f32 processed logits.
#[derive(Clone, Debug)]
pub struct RowReference {
    /// Processed logits (step 1), f32 exactly as the GPU computes them.
    pub x: Vec<f32>,
    pub max: f32,
    /// Greedy choice (ties → lowest index).
    pub argmax: u32,
    pub lse: f64,
    /// Tokens that survive the filters (the argmax alone when greedy).
    pub kept: Vec<bool>,
    /// The final distribution (normalized; one-hot when greedy).
    pub probs: Vec<f64>,
    /// The `top_logprobs` most likely tokens: (id, x − logsumexp), ties → lowest index.
    pub top: Vec<(u32, f64)>,
    /// Per token, |mass strictly above − top_p·total| / total: how close its top-p decision is to
    /// flipping (∞ when top-p is off). Decisions within float rounding of 0 may legitimately differ.
    pub top_p_margin: Vec<f64>,
}

/// Steps 1–5 for one row.
pub fn reference_row(
    logits: &[f32],
    p: &SamplingParams,
    context: &[u32],
    n_prompt: usize,
) -> RowReference {
    let x = process_logits(logits, p, context, n_prompt);
    filter_row(x, p)
}

/// Steps 2–5 from processed logits.
pub fn filter_row(x: Vec<f32>, p: &SamplingParams) -> RowReference {
    let v = x.len();
    let d = p.derived(v as u32);
    let mut argmax = 0usize;
    for i in 0..v {
        if x[i] > x[argmax] {
            argmax = i;
        }
    }
    let max = x[argmax];
    let m = max as f64;
    let finite_max = max > f32::NEG_INFINITY;
    let mass: Vec<f64> = x
        .iter()
        .map(|&xi| {
            if finite_max {
                (xi as f64 - m).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = mass.iter().sum();
    let lse = m + total.ln();
    // Order by (value desc, index asc); a NaN logit (a broken checkpoint) ranks last instead of
    // stopping the request.
    let key = |i: usize| {
        if x[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            x[i]
        }
    };
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    let top: Vec<(u32, f64)> = order
        .iter()
        .take(p.top_logprobs as usize)
        .map(|&i| (i as u32, x[i] as f64 - lse))
        .collect();

    // Mass strictly above each token's value.
    let mut above = vec![0f64; v];
    let mut acc = 0f64;
    let mut j = 0;
    while j < v {
        let mut k = j;
        while k < v && x[order[k]] == x[order[j]] {
            k += 1;
        }
        for &i in &order[j..k] {
            above[i] = acc;
        }
        for &i in &order[j..k] {
            acc += mass[i];
        }
        j = k;
    }

    let mut kept = vec![false; v];
    let mut top_p_margin = vec![f64::INFINITY; v];
    if d.greedy {
        kept[argmax] = true;
    } else {
        let kth = d.top_k.map(|k| x[order[k as usize - 1]]);
        let thr_min_p = d.ln_min_p.map(|l| max + l);
        for i in 0..v {
            let mut keep = x[i] > f32::NEG_INFINITY;
            if let Some(tp) = d.top_p {
                let target = tp as f64 * total;
                top_p_margin[i] = (above[i] - target).abs() / total;
                keep &= above[i] < target;
            }
            if let Some(t) = thr_min_p {
                keep &= x[i] >= t;
            }
            if let Some(k) = kth {
                keep &= x[i] >= k;
            }
            kept[i] = keep;
        }
    }
    let mut probs = vec![0f64; v];
    if d.greedy {
        probs[argmax] = 1.0;
    } else {
        let it = d.inv_temp as f64;
        let mut z = 0.0;
        for i in 0..v {
            if kept[i] {
                probs[i] = ((x[i] as f64 - m) * it).exp();
                z += probs[i];
            }
        }
        if z > 0.0 {
            for q in &mut probs {
                *q /= z;
            }
        }
    }
    RowReference {
        x,
        max,
        argmax: argmax as u32,
        lse,
        kept,
        probs,
        top,
        top_p_margin,
    }
}

/// Step 6: the token drawn for `row` with draw index `draw` (Gumbel-max over the kept tokens).
pub fn reference_draw(row: &RowReference, p: &SamplingParams, draw: u32) -> u32 {
    let d = p.derived(row.x.len() as u32);
    if d.greedy {
        return row.argmax;
    }
    let m = row.max as f64;
    let mut best: Option<(f64, usize)> = None;
    for i in 0..row.x.len() {
        if !row.kept[i] {
            continue;
        }
        let s = (row.x[i] as f64 - m) * d.inv_temp as f64
            + gumbel(p.seed, draw, STREAM_SAMPLE, i as u32);
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, i));
        }
    }
    best.map(|(_, i)| i as u32).unwrap_or(row.argmax)
}

/// The speculative accept test of one drafted token (spec §7.3 B.3/B.5).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AcceptReference {
    /// min(1, p(d)/q(d)) (1 when q(d) = 0 < p(d), 0 when both are 0).
    pub ratio: f64,
    pub u: f32,
    pub accepted: bool,
    /// The token emitted at the drafted position: d when accepted, else the residual draw.
    pub token: u32,
}

/// Accept d with probability min(1, p(d)/q(d)); on rejection draw from normalize(max(p − q, 0)),
/// or from p when that is all zero. `p`, `q` are normalized distributions over the vocabulary.
pub fn reference_accept(p: &[f64], q: &[f64], d: u32, seed: u64, draw: u32) -> AcceptReference {
    let (pd, qd) = (
        p.get(d as usize).copied().unwrap_or(0.0),
        q.get(d as usize).copied().unwrap_or(0.0),
    );
    let ratio = if qd <= 0.0 {
        if pd > 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        (pd / qd).min(1.0)
    };
    let u = uniform(seed, draw, STREAM_ACCEPT, 0);
    let accepted = (u as f64) < ratio;
    if accepted {
        return AcceptReference {
            ratio,
            u,
            accepted,
            token: d,
        };
    }
    let pick = |w: &dyn Fn(usize) -> f64| -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for i in 0..p.len() {
            let wi = w(i);
            if wi > 0.0 {
                let s = wi.ln() + gumbel(seed, draw, STREAM_RESIDUAL, i as u32);
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, i));
                }
            }
        }
        best.map(|(_, i)| i)
    };
    let token = pick(&|i| (p[i] - q[i]).max(0.0))
        .or_else(|| pick(&|i| p[i]))
        .unwrap_or(d as usize) as u32;
    AcceptReference {
        ratio,
        u,
        accepted,
        token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Random123 kat_vectors.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(SamplingParams, &str)> = vec![
            (
                SamplingParams {
                    temperature: -1.0,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    min_p: -0.1,
                    ..Default::default()
                },
                "min_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: -1.0,
                    ..Default::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    repetition_context: 0,
                    ..Default::default()
                },
                "repetition_context",
            ),
            (
                SamplingParams {
                    repetition_context: HISTORY_RING + 1,
                    ..Default::default()
                },
                "repetition_context",
            ),
            (
                SamplingParams {
                    presence_penalty: f32::INFINITY,
                    ..Default::default()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: f32::NAN,
                    ..Default::default()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(10, 1.0)],
                    ..Default::default()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    logit_bias: vec![(1, f32::NAN)],
                    ..Default::default()
                },
                "logit_bias",
            ),
            (
                SamplingParams {
                    top_logprobs: 21,
                    ..Default::default()
                },
                "top_logprobs",
            ),
        ];
        for (p, field) in cases {
            let e = p.validate(Some(10)).unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.to_string().contains(field), "{e}");
        }
        SamplingParams::default().validate(Some(10)).unwrap();
    }

    #[test]
    fn params_round_trip_through_json() {
        let p = SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            logit_bias: vec![(3, -1.5)],
            seed: 42,
            ..Default::default()
        };
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<SamplingParams>(&s).unwrap(), p);
        let partial: SamplingParams =
            serde_json::from_str(r#"{"temperature": 0.6, "top_k": 20}"#).unwrap();
        assert_eq!(
            (
                partial.temperature,
                partial.top_k,
                partial.repetition_context
            ),
            (0.6, 20, 20)
        );
        assert!(serde_json::from_str::<SamplingParams>(r#"{"temprature": 1}"#).is_err());
    }
}
