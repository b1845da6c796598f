//! `sample.wgsl`: sampling on the GPU, never reading back the logits.
//!
//! What is computed per row, and in which order, is the CPU reference in
//! [`crate::decode::sampler`] (mlx-lm's logits processors and sampler): bias and penalties →
//! logprobs → top-p, min-p, top-k on the unfiltered distribution → temperature → a Gumbel-max
//! draw keyed by (seed, draw index). Temperature 0 is the argmax (ties → lowest index).
//!
//! # Passes (dispatches per token)
//!
//! `Sampler::dispatches` returns, in order (`R` = radix rounds: 3 with 11-bit rounds where the
//! adapter gives ≥ 28 KiB of workgroup memory, else 4 rounds of 8 bits):
//!
//! | # | pass | grid | does |
//! |---|---|---|---|
//! | 0 | stats | blocks × rows | processed logits → `work`; per-block max, Σexp, argmax, top-N candidates |
//! | 1..=R | round k | blocks × rows | radix select of the top-p / top-k cut key (count + fixed-point mass histograms) |
//! | R+1 | final | blocks × rows | kept mask, weights (→ probs), per-block Gumbel winner and Σw |
//! | R+2 | finish | 1 × rows | token → ids, results; history commit; draw counter |
//!
//! So 6 dispatches per token with every filter on (7 on small-workgroup-memory adapters). A pass
//! that has nothing to do returns at once (rounds without top-p/top-k, final when greedy without
//! probs); [`Sampler::needed_dispatches`] lists the ones a parameter set needs, and only those
//! have to be recorded (greedy: 2; temperature without top-p/top-k: 3). The speculative accept test
//! is 2 more ([`Sampler::accept_dispatches`]). Every workgroup of a round resolves the previous
//! round's histogram itself, so a round costs one dispatch; sums of probability mass are integers
//! (exp(x − max)·2³¹, added with u32 atomics in u64 pairs), so the cut does not depend on the
//! order in which workgroups run.
//!
//! # Buffers (u32 words unless noted; V = vocab, B = block, NB = ceil(V / B))
//!
//! * `req` (uniform, [`SampleReq`]): the request's parameters, rewritten by
//!   [`Sampler::set_params`]; every dispatch binds the same buffer.
//! * `state` (the token history): `[0]` tokens in the history (prompt + committed), `[1]` committed
//!   (generated) tokens, `[2]` draw counter, `[3]` unused, `[4, 4 + RING)` ring of the last
//!   [`HISTORY_RING`] tokens (position p at `4 + p % RING`), then `rep[V]` (occurrences of each
//!   token in the last `repetition_context` tokens), `gen[V]` (occurrences among generated tokens),
//!   `bias[V]` (f32 bits, written by `set_params`), then two token masks of ceil(V / 32) words
//!   (a bit per id; a row whose mask clears an id adds [`MASKED_LOGIT`] to its logit; written by
//!   `set_params_masked` / `set_params_masked_rows`). Offsets: [`Sampler::state_offsets`].
//! * `work` (f32 [max_rows, V]): the processed logits x of the step's rows.
//! * `scratch` (per row, `row_words` words; offsets in [`ScratchLayout`]): stats partials
//!   `[NB][max bits, Σexp bits, argmax, draw index]`; top-N candidates `[NB][TOP_MAX][id, x bits]`;
//!   histograms `[R][cnt | mass_lo | mass_hi][NBIN]`; cut states `[R][8]`; final partials
//!   `[NB][score bits, id, Σw bits, 0]`; accept `[8 header] + [NB][res score, id, p score, id]`.
//! * `probs` (optional, f32 [max_rows·V + max_rows], from [`Sampler::probs_buffer`]): row r's
//!   unnormalized final weights w_i = exp((x_i − max)/T) at `[r·V, (r+1)·V)` (one-hot when greedy;
//!   masked tokens hold −1, kept ones ≥ 0), and its normalizer Z = Σ max(w, 0) at
//!   `[max_rows·V + r]`: the final probability is max(w_i, 0) / Z.
//! * `results` (per row [`RESULT_WORDS`] words): `[0]` token, `[1]` its logprob (x − logsumexp,
//!   before filters and temperature, as mlx-lm reports), `[2]` log of its final probability
//!   (mlx-lm's `lp_accept`; 0 when greedy), `[3]` n_top, `[4]` logsumexp, `[5]` max, `[6]` Z,
//!   `[7]` draw index, `[8, 8 + 20)` top ids, `[28, 48)` their logprobs (f32). Read it with
//!   [`parse_results`].
//! * `accept_out` (per accept row [`ACCEPT_WORDS`] words): `[0]` accepted, `[1]` tokens emitted
//!   (2: draft + bonus, 1: the residual draw), `[2]` token at the drafted position, `[3]` bonus or
//!   `u32::MAX`, `[4]` min(1, p(d)/q(d)) (f32), `[5]` u (f32), `[6]` draw index, `[7]` the last
//!   emitted token (the next step's input). Read it with [`parse_accept`].
//!
//! # History
//!
//! The penalties read `state` only. [`Sampler::reset_history`] loads a prompt (host write of the
//! header and ring, clears of the counts, one init dispatch); a `commit` sampling call appends the
//! token of row 0; the accept test appends the emitted tokens. Set the parameters before
//! resetting the history (the window counts use `repetition_context`). Row r > 0 of a call with
//! `ctx_ids` also sees the step's input ids of out rows 1..=r (a verify's row 1 sees its draft).

use std::sync::Mutex;

use crate::decode::sampler::{SamplingError, SamplingParams, HISTORY_RING, MAX_TOP_LOGPROBS};
use crate::gpu::{
    Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, ParamStruct, Rows, StepShape, StepSlot,
};

crate::gpu_struct! {
    /// Per-request parameters (derived on the host, see `SamplingParams::derived`).
    pub struct SampleReq as "Req" {
        greedy: u32,
        inv_temp: f32,
        top_p_on: u32,
        top_p: f32,
        /// 0 = off.
        top_k: u32,
        /// top-p or top-k active: the radix rounds run.
        cut_on: u32,
        min_p_on: u32,
        ln_min_p: f32,
        rep_on: u32,
        rep_penalty: f32,
        rep_context: u32,
        pen_on: u32,
        presence: f32,
        frequency: f32,
        bias_on: u32,
        /// Word offsets in `state` of the token mask (a bit per id) of out row 0 / rows ≥ 1, or
        /// `NO_MASK` (see [`Sampler::set_params_masked_rows`]).
        mask_r0: u32,
        mask_r1: u32,
        seed_lo: u32,
        seed_hi: u32,
        top_n: u32,
    }
}

crate::gpu_struct! {
    /// Per-dispatch-list constants (shapes, offsets, which outputs are written).
    pub struct SampleCfg as "Cfg" {
        vocab: u32,
        block: u32,
        n_blocks: u32,
        n_rounds: u32,
        row_words: u32,
        off_stats: u32,
        off_topn: u32,
        off_hist: u32,
        off_cut: u32,
        off_final: u32,
        off_acc: u32,
        st_rep: u32,
        st_gen: u32,
        st_bias: u32,
        /// Rows ignore the token masks (drafts).
        unmasked: u32,
        /// Rows of work / scratch / results / probs buffers (Z of row r sits at max_rows·V + r).
        max_rows: u32,
        /// Rows a call may process: min(max_rows, rows the logits buffer holds).
        rows_cap: u32,
        id_offset: u32,
        /// Out row r reads logits row `logit_row + r`.
        logit_row: u32,
        /// Words of the output ids buffer.
        ids_cap: u32,
        ctx_on: u32,
        ctx_offset: u32,
        /// Words of the context ids buffer.
        ctx_len: u32,
        probs_on: u32,
        commit: u32,
        res_words: u32,
        /// Accept: rows tested, first target / draft probs row, draft / bonus id offsets, and
        /// the words of the draft / bonus id buffers.
        rows: u32,
        p_row: u32,
        q_row: u32,
        d_offset: u32,
        b_offset: u32,
        d_cap: u32,
        b_cap: u32,
    }
}

/// Top-N slots per row (the largest `top_logprobs`).
pub const TOP_MAX: u32 = MAX_TOP_LOGPROBS;
/// Words per row of the results buffer.
pub const RESULT_WORDS: u32 = 8 + 2 * TOP_MAX;
/// Words per row of the accept output.
pub const ACCEPT_WORDS: u32 = 8;
/// Tokens per workgroup in the V-wide passes (122 workgroups per row at V = 248,320).
pub const DEFAULT_BLOCK: u32 = 2048;
/// Workgroup memory the 11-bit radix rounds need (3 × 2048 histogram words + reductions).
const WIDE_RADIX_BYTES: u32 = 28 * 1024;
/// History header words before the ring.
const STATE_HEADER: u32 = 4;

/// Sizes a [`Sampler`] can be built with (tests force small blocks and the narrow radix).
#[derive(Clone, Copy, Debug, Default)]
pub struct SamplerOptions {
    /// Tokens per workgroup (default [`DEFAULT_BLOCK`]).
    pub block: Option<u32>,
    /// Radix bits per round, 8 or 11 (default: 11 when the adapter allows it).
    pub radix_bits: Option<u32>,
}

/// Word offsets inside one row of `scratch`.
#[derive(Clone, Copy, Debug)]
pub struct ScratchLayout {
    pub stats: u32,
    pub topn: u32,
    pub hist: u32,
    pub cut: u32,
    pub fin: u32,
    pub acc: u32,
    pub row_words: u32,
}

impl ScratchLayout {
    fn new(n_blocks: u32, rounds: u32, nbin: u32) -> Self {
        let stats = 0;
        let topn = stats + n_blocks * 4;
        let hist = topn + n_blocks * TOP_MAX * 2;
        let cut = hist + rounds * 3 * nbin;
        let fin = cut + rounds * 8;
        let acc = fin + n_blocks * 4;
        let row_words = acc + 8 + n_blocks * 4;
        ScratchLayout {
            stats,
            topn,
            hist,
            cut,
            fin,
            acc,
            row_words,
        }
    }
}

/// Where the outputs of one sampling call go.
#[derive(Clone, Copy, Default)]
pub struct SampleIo<'a> {
    /// The chosen ids go to `out_ids[id_offset + r]`.
    pub id_offset: u32,
    /// Out row r reads logits row `logit_row + r` (a batch's sampler of stream t: row t).
    pub logit_row: u32,
    /// The step's input ids (buffer, offset of the step's row 0): out row r > 0 then counts the
    /// input ids of out rows 1..=r as history for the penalties. `None`: rows share the history.
    pub ctx_ids: Option<(&'a GpuBuffer, u32)>,
    /// Final weights and normalizers (a buffer from [`Sampler::probs_buffer`]).
    pub probs: Option<&'a GpuBuffer>,
    /// Results buffer (default: the sampler's own `results`).
    pub results: Option<&'a GpuBuffer>,
    /// Append row 0's token to the history (plain decoding; not for drafts and verifies).
    pub commit: bool,
    /// Ignore token masks: the rows take the request's own bias (logit_bias) only. For the MTP
    /// draft, whose position is past the ones the masks are for (a draft the target's mask
    /// forbids is rejected by the accept test).
    pub unmasked: bool,
}

/// One speculative accept test per row: target p (probs row `target_row + r`), draft q (probs
/// row `draft_row + r`), drafted id `draft_id.0[draft_id.1 + r]`, bonus id `bonus_id.0[.. + r]`.
pub struct AcceptIo<'a> {
    pub target: &'a GpuBuffer,
    pub target_row: u32,
    pub draft: &'a GpuBuffer,
    pub draft_row: u32,
    pub draft_id: (&'a GpuBuffer, u32),
    pub bonus_id: (&'a GpuBuffer, u32),
    /// Rows tested in one call (1 in the decode loop; tests batch many).
    pub rows: u32,
    /// Append the emitted tokens to the history (only with rows = 1).
    pub commit: bool,
}

/// One row of the results buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct RowResult {
    pub token: u32,
    /// x − logsumexp of the token (before filters and temperature).
    pub logprob: f32,
    /// log of the token's final probability (0 when greedy).
    pub final_logprob: f32,
    pub lse: f32,
    pub max: f32,
    /// Normalizer of the final weights (1 when greedy).
    pub z: f32,
    pub draw: u32,
    /// (id, logprob), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Parses `rows` rows of a results buffer.
pub fn parse_results(words: &[u32], rows: usize) -> Vec<RowResult> {
    (0..rows)
        .map(|r| {
            let w = &words[r * RESULT_WORDS as usize..(r + 1) * RESULT_WORDS as usize];
            let f = |i: usize| f32::from_bits(w[i]);
            let n = (w[3] as usize).min(TOP_MAX as usize);
            RowResult {
                token: w[0],
                logprob: f(1),
                final_logprob: f(2),
                lse: f(4),
                max: f(5),
                z: f(6),
                draw: w[7],
                top: (0..n)
                    .map(|i| (w[8 + i], f(8 + TOP_MAX as usize + i)))
                    .collect(),
            }
        })
        .collect()
}

/// One row of the accept output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AcceptResult {
    pub accepted: bool,
    /// 2 (draft + bonus) or 1 (residual draw).
    pub n_emit: u32,
    pub tokens: [u32; 2],
    pub ratio: f32,
    pub u: f32,
    pub draw: u32,
    /// The last emitted token.
    pub next: u32,
}

pub fn parse_accept(words: &[u32], rows: usize) -> Vec<AcceptResult> {
    (0..rows)
        .map(|r| {
            let w = &words[r * ACCEPT_WORDS as usize..(r + 1) * ACCEPT_WORDS as usize];
            AcceptResult {
                accepted: w[0] != 0,
                n_emit: w[1],
                tokens: [w[2], w[3]],
                ratio: f32::from_bits(w[4]),
                u: f32::from_bits(w[5]),
                draw: w[6],
                next: w[7],
            }
        })
        .collect()
}

/// Radix rounds for `bits` per round: (shift, width) of each, most significant first.
fn rounds_for(bits: u32) -> Vec<(u32, u32)> {
    let mut v = Vec::new();
    let mut hi = 32u32;
    while hi > 0 {
        let shift = hi.saturating_sub(bits);
        v.push((shift, hi - shift));
        hi = shift;
    }
    v
}

/// The pipeline variants, by pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Stats,
    Round(u32),
    Final,
    Finish,
    Init,
    Forced,
    AcceptBlocks,
    AcceptFinish,
}

fn defines(base: &Defines, bits: u32, pass: Pass) -> Defines {
    let rounds = rounds_for(bits);
    let last = rounds.len() as u32 - 1;
    let mut d = base
        .clone()
        .set("REQ", SampleReq::WGSL)
        .set("CFG", SampleCfg::WGSL)
        .set("NBIN", 1u32 << bits)
        .set("TOP_MAX", TOP_MAX)
        .set("RING", HISTORY_RING)
        .set("MASKED_BITS", MASKED_LOGIT.to_bits())
        .set("NO_MASK", NO_MASK);
    let prev = |d: Defines, k: u32| {
        let (s, w) = rounds[k as usize];
        d.set("P_INDEX", k).set("P_SHIFT", s).set("P_WIDTH", w)
    };
    d = match pass {
        Pass::Stats => d.flag("PASS_STATS", true),
        Pass::Round(k) => {
            let (s, w) = rounds[k as usize];
            let d = d
                .flag("PASS_ROUND", true)
                .flag("MERGE_STATS", true)
                .set("R_INDEX", k)
                .set("R_SHIFT", s)
                .set("R_WIDTH", w);
            if k == 0 {
                d.flag("FIRST", true)
            } else {
                prev(d.flag("RESOLVE", true), k - 1)
            }
        }
        Pass::Final => prev(
            d.flag("PASS_FINAL", true)
                .flag("MERGE_STATS", true)
                .flag("RESOLVE", true),
            last,
        ),
        Pass::Finish => d
            .flag("PASS_FINISH", true)
            .flag("MERGE_STATS", true)
            .flag("COMMIT", true),
        Pass::Init => d.flag("PASS_INIT", true),
        Pass::Forced => d.flag("PASS_FORCED", true).flag("COMMIT", true),
        Pass::AcceptBlocks => d.flag("PASS_ACCEPT_BLOCKS", true),
        Pass::AcceptFinish => d.flag("PASS_ACCEPT_FINISH", true).flag("COMMIT", true),
    };
    d
}

fn all_passes(bits: u32) -> Vec<Pass> {
    let mut v = vec![Pass::Stats];
    v.extend((0..rounds_for(bits).len() as u32).map(Pass::Round));
    v.extend([
        Pass::Final,
        Pass::Finish,
        Pass::Init,
        Pass::Forced,
        Pass::AcceptBlocks,
        Pass::AcceptFinish,
    ]);
    v
}

/// Every variant the engine can build (both radix widths).
pub fn variants(base: &Defines) -> Vec<(&'static str, Defines)> {
    let mut v = Vec::new();
    for bits in [11, 8] {
        for p in all_passes(bits) {
            v.push(("sample.wgsl", defines(base, bits, p)));
        }
    }
    v
}

/// Sampling state and pipelines for one sequence (see the module docs for the buffers).
/// What a token outside a [`Sampler::set_params_masked`] mask gets added to its logit: finite, so
/// penalties, temperature and the softmax stay finite, and low enough that its probability is 0
/// in f32 and greedy never picks it while any allowed token is finite.
pub const MASKED_LOGIT: f32 = -1.0e30;

/// `mask_r0` / `mask_r1` of a row without a token mask.
const NO_MASK: u32 = u32::MAX;

/// Which out rows a token mask limits (see [`Sampler::set_params_masked_rows`]).
#[derive(Clone, Copy)]
enum RowMasks<'a> {
    None,
    All(&'a [u32]),
    Rows([Option<&'a [u32]>; 2]),
}

/// The host's copy of the request's dense bias (see [`Sampler::write_params`]).
#[derive(Default, Clone)]
struct BiasHost {
    /// The bias as last written to `state`.
    plain: Vec<f32>,
    plain_written: bool,
    scratch: Vec<f32>,
}

pub struct Sampler {
    pub vocab: u32,
    pub max_rows: u32,
    pub block: u32,
    pub n_blocks: u32,
    pub radix_bits: u32,
    pub layout: ScratchLayout,
    pub req: GpuBuffer,
    pub state: GpuBuffer,
    pub work: GpuBuffer,
    pub scratch: GpuBuffer,
    pub results: GpuBuffer,
    pub accept_out: GpuBuffer,
    dummy: GpuBuffer,
    bits_defines: Defines,
    init: Dispatch,
    host: Mutex<SamplingParams>,
    /// The request's dense bias as written to `state`, kept between calls (a masked decode
    /// writes its masks every step, the bias only when it changes).
    bias_host: Mutex<BiasHost>,
    /// The parameter block as last written to `req` (a uniform buffer, which copies cannot read).
    req_bytes: Mutex<Vec<u8>>,
}

/// Word offsets of the history counts and the bias inside `state`.
#[derive(Clone, Copy, Debug)]
pub struct StateOffsets {
    pub ring: u32,
    pub rep: u32,
    pub gen: u32,
    /// The request's dense bias (logit_bias).
    pub bias: u32,
    /// Token masks (bit `i % 32` of word `i / 32`): out row 0's (also the rows after it when
    /// one mask covers all) and that of rows ≥ 1.
    pub mask0: u32,
    pub mask1: u32,
    pub words: u32,
}

impl Sampler {
    /// A sampler for `vocab`-wide logits rows, at most `max_rows` rows per call.
    pub async fn new(gpu: &Gpu, vocab: u32, max_rows: u32) -> Result<Sampler, GpuError> {
        Self::with_options(gpu, vocab, max_rows, SamplerOptions::default()).await
    }

    pub async fn with_options(
        gpu: &Gpu,
        vocab: u32,
        max_rows: u32,
        opts: SamplerOptions,
    ) -> Result<Sampler, GpuError> {
        let bad = |m: String| GpuError::Validation {
            context: "sampler".into(),
            message: m,
        };
        if vocab == 0 || max_rows == 0 {
            return Err(bad(format!(
                "vocab ({vocab}) and max_rows ({max_rows}) must be positive"
            )));
        }
        let block = opts.block.unwrap_or(DEFAULT_BLOCK).max(1);
        let radix_bits = match opts.radix_bits {
            Some(b @ (8 | 11)) => b,
            Some(b) => return Err(bad(format!("radix bits must be 8 or 11, got {b}"))),
            None => {
                if gpu.limits.max_compute_workgroup_storage_size >= WIDE_RADIX_BYTES {
                    11
                } else {
                    8
                }
            }
        };
        let n_blocks = vocab.div_ceil(block);
        let rounds = rounds_for(radix_bits).len() as u32;
        let layout = ScratchLayout::new(n_blocks, rounds, 1 << radix_bits);
        let rows_v = max_rows as u64 * vocab as u64 * 4;
        for (what, bytes) in [
            ("sampler work / probs rows", rows_v + max_rows as u64 * 4),
            (
                "sampler scratch",
                layout.row_words as u64 * max_rows as u64 * 4,
            ),
        ] {
            if bytes > gpu.caps.max_binding {
                return Err(GpuError::TooLarge {
                    what: what.into(),
                    needed: bytes,
                    limit: gpu.caps.max_binding,
                });
            }
        }
        let so = Self::offsets(vocab);
        let req = gpu.uniform("sample.req", &SampleReq::default());
        let state = gpu.storage("sample.state", so.words as u64 * 4)?;
        let work = gpu.storage("sample.work", rows_v)?;
        let scratch = gpu.storage(
            "sample.scratch",
            layout.row_words as u64 * max_rows as u64 * 4,
        )?;
        let results = gpu.storage("sample.results", (RESULT_WORDS * max_rows) as u64 * 4)?;
        let accept_out = gpu.storage("sample.accept_out", (ACCEPT_WORDS * max_rows) as u64 * 4)?;
        let dummy = gpu.storage("sample.none", 16)?;
        let bits_defines = gpu.base_defines();
        let cfg = Self::cfg_base(vocab, block, n_blocks, rounds, &layout, max_rows);
        let u = gpu.uniform("sample.init.cfg", &cfg);
        let p = gpu
            .pipeline(
                "sample.wgsl",
                &defines(&bits_defines, radix_bits, Pass::Init),
            )
            .await?;
        let init = gpu.dispatch(
            "sample.init",
            &p,
            &[req.whole(), u.whole(), state.whole()],
            Grid::fixed(1),
        );
        let s = Sampler {
            vocab,
            max_rows,
            block,
            n_blocks,
            radix_bits,
            layout,
            req,
            state,
            work,
            scratch,
            results,
            accept_out,
            dummy,
            bits_defines,
            init,
            host: Mutex::new(SamplingParams::default()),
            bias_host: Mutex::new(BiasHost::default()),
            req_bytes: Mutex::new(Vec::new()),
        };
        s.set_params(gpu, &SamplingParams::default())
            .map_err(|e| bad(e.to_string()))?;
        Ok(s)
    }

    /// Offsets inside the history buffer for a vocabulary.
    pub fn offsets(vocab: u32) -> StateOffsets {
        let ring = STATE_HEADER;
        let rep = ring + HISTORY_RING;
        let gen = rep + vocab;
        let bias = gen + vocab;
        StateOffsets {
            ring,
            rep,
            gen,
            bias,
            mask0: bias + vocab,
            mask1: bias + vocab + vocab.div_ceil(32),
            words: bias + vocab + 2 * vocab.div_ceil(32),
        }
    }

    pub fn state_offsets(&self) -> StateOffsets {
        Self::offsets(self.vocab)
    }

    /// Radix rounds per token.
    pub fn rounds(&self) -> u32 {
        rounds_for(self.radix_bits).len() as u32
    }

    fn cfg_base(
        vocab: u32,
        block: u32,
        n_blocks: u32,
        rounds: u32,
        l: &ScratchLayout,
        max_rows: u32,
    ) -> SampleCfg {
        let so = Self::offsets(vocab);
        SampleCfg {
            vocab,
            block,
            n_blocks,
            n_rounds: rounds,
            row_words: l.row_words,
            off_stats: l.stats,
            off_topn: l.topn,
            off_hist: l.hist,
            off_cut: l.cut,
            off_final: l.fin,
            off_acc: l.acc,
            st_rep: so.rep,
            st_gen: so.gen,
            st_bias: so.bias,
            max_rows,
            rows_cap: max_rows,
            res_words: RESULT_WORDS,
            ..Default::default()
        }
    }

    fn cfg(&self) -> SampleCfg {
        Self::cfg_base(
            self.vocab,
            self.block,
            self.n_blocks,
            self.rounds(),
            &self.layout,
            self.max_rows,
        )
    }

    async fn pipeline(
        &self,
        gpu: &Gpu,
        pass: Pass,
    ) -> Result<std::sync::Arc<wgpu::ComputePipeline>, GpuError> {
        gpu.pipeline(
            "sample.wgsl",
            &defines(&self.bits_defines, self.radix_bits, pass),
        )
        .await
    }

    /// Bytes of a probs buffer for this sampler.
    pub fn probs_bytes(&self) -> u64 {
        (self.max_rows as u64 * self.vocab as u64 + self.max_rows as u64) * 4
    }

    /// A buffer for the final weights of up to `max_rows` rows (see the module docs).
    pub fn probs_buffer(&self, gpu: &Gpu, label: &str) -> Result<GpuBuffer, GpuError> {
        gpu.storage(label, self.probs_bytes())
    }

    /// The parameters last set.
    pub fn params(&self) -> SamplingParams {
        self.host.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Records copies that give this sampler `src`'s stream: its parameters, masks and bias,
    /// history and draw counter (a stream moved to another slot of a batch samples on as it
    /// would have). Both samplers must have the same vocabulary and rows.
    pub fn record_copy_from(
        &self,
        gpu: &Gpu,
        src: &Sampler,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<(), SamplingError> {
        if (src.vocab, src.max_rows, src.req.size, src.state.size)
            != (self.vocab, self.max_rows, self.req.size, self.state.size)
        {
            return Err(SamplingError {
                field: "sampler",
                message: "samplers of different sizes".into(),
            });
        }
        let req = src
            .req_bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        gpu.queue.write_buffer(&self.req.buf, 0, &req);
        *self.req_bytes.lock().unwrap_or_else(|e| e.into_inner()) = req;
        enc.copy_buffer_to_buffer(&src.state.buf, 0, &self.state.buf, 0, src.state.size);
        let p = src.params();
        *self.host.lock().unwrap_or_else(|e| e.into_inner()) = p;
        let b = src
            .bias_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        *self.bias_host.lock().unwrap_or_else(|e| e.into_inner()) = b;
        Ok(())
    }

    /// Validates `p` and writes it to the parameter buffer (no bind group changes).
    pub fn set_params(&self, gpu: &Gpu, p: &SamplingParams) -> Result<(), SamplingError> {
        self.set_params_masked(gpu, p, None)
    }

    /// [`Sampler::set_params`] with the next tokens limited to those whose bit is set in
    /// `allowed` (bit `i % 32` of word `i / 32`; at least `ceil(vocab / 32)` words): the others get
    /// [`MASKED_LOGIT`] added to their logits with the request's logit bias, so greedy and sampled
    /// choices, logprobs and penalties all see the masked logits. `None` = no mask.
    pub fn set_params_masked(
        &self,
        gpu: &Gpu,
        p: &SamplingParams,
        allowed: Option<&[u32]>,
    ) -> Result<(), SamplingError> {
        self.write_params(gpu, p, allowed.map_or(RowMasks::None, RowMasks::All))
    }

    /// [`Sampler::set_params_masked`] with a mask per out row: `rows[0]` for row 0, `rows[1]` for
    /// the rows after it (an MTP verify's bonus row, whose position follows the draft's). `None`
    /// = that row is not limited. Calls made with [`SampleIo::unmasked`] (drafts) ignore both.
    pub fn set_params_masked_rows(
        &self,
        gpu: &Gpu,
        p: &SamplingParams,
        rows: [Option<&[u32]>; 2],
    ) -> Result<(), SamplingError> {
        self.write_params(gpu, p, RowMasks::Rows(rows))
    }

    fn write_params(
        &self,
        gpu: &Gpu,
        p: &SamplingParams,
        masks: RowMasks<'_>,
    ) -> Result<(), SamplingError> {
        p.validate(Some(self.vocab))?;
        let d = p.derived(self.vocab);
        let words = self.vocab.div_ceil(32) as usize;
        let (m0, m1, shared) = match masks {
            RowMasks::None => (None, None, false),
            RowMasks::All(m) => (Some(m), Some(m), true),
            RowMasks::Rows([a, b]) => (a, b, false),
        };
        for m in [m0, m1].into_iter().flatten() {
            if m.len() < words {
                return Err(SamplingError {
                    field: "mask",
                    message: format!(
                        "a token mask of {} words does not cover the vocabulary ({} ids)",
                        m.len(),
                        self.vocab
                    ),
                });
            }
        }
        let so = self.state_offsets();
        let mask_r0 = if m0.is_some() { so.mask0 } else { NO_MASK };
        let mask_r1 = match m1 {
            Some(_) if shared => so.mask0,
            Some(_) => so.mask1,
            None => NO_MASK,
        };
        let req = SampleReq {
            greedy: d.greedy as u32,
            inv_temp: d.inv_temp,
            top_p_on: d.top_p.is_some() as u32,
            top_p: d.top_p.unwrap_or(1.0),
            top_k: d.top_k.unwrap_or(0),
            cut_on: (d.top_p.is_some() || d.top_k.is_some()) as u32,
            min_p_on: d.ln_min_p.is_some() as u32,
            ln_min_p: d.ln_min_p.unwrap_or(0.0),
            rep_on: d.repetition.is_some() as u32,
            rep_penalty: d.repetition.unwrap_or(1.0),
            rep_context: p.repetition_context,
            pen_on: d.penalties as u32,
            presence: p.presence_penalty,
            frequency: p.frequency_penalty,
            bias_on: d.bias as u32,
            mask_r0,
            mask_r1,
            seed_lo: p.seed as u32,
            seed_hi: (p.seed >> 32) as u32,
            top_n: p.top_logprobs,
        };
        let bytes = req.padded_bytes();
        gpu.queue.write_buffer(&self.req.buf, 0, &bytes);
        *self.req_bytes.lock().unwrap_or_else(|e| e.into_inner()) = bytes.to_vec();
        if d.bias {
            // The request's dense bias, written when it changed.
            let mut h = self.bias_host.lock().unwrap_or_else(|e| e.into_inner());
            let h = &mut *h;
            p.dense_bias_into(self.vocab, &mut h.scratch);
            if !h.plain_written || h.scratch != h.plain {
                std::mem::swap(&mut h.plain, &mut h.scratch);
                gpu.queue.write_buffer(
                    &self.state.buf,
                    so.bias as u64 * 4,
                    bytemuck::cast_slice(&h.plain),
                );
                h.plain_written = true;
            }
        }
        // The masks as bits (ids past the vocabulary in the last word are never read).
        for (m, off) in [(m0, so.mask0), (if shared { None } else { m1 }, so.mask1)] {
            if let Some(m) = m {
                gpu.queue.write_buffer(
                    &self.state.buf,
                    off as u64 * 4,
                    bytemuck::cast_slice(&m[..words]),
                );
            }
        }
        if let Ok(mut h) = self.host.lock() {
            *h = p.clone();
        }
        Ok(())
    }

    /// Loads `prompt_ids` as the history (prompt tokens count for the repetition window, not as
    /// generated) and resets the draw counter; records into `enc` (the header and ring are
    /// written with `queue.write_buffer`, which lands before `enc`'s commands when submitted).
    pub fn record_reset_history(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        prompt_ids: &[u32],
    ) -> Result<(), SamplingError> {
        if let Some(&id) = prompt_ids.iter().find(|&&t| t >= self.vocab) {
            return Err(SamplingError {
                field: "prompt",
                message: format!(
                    "token id {id} is outside the vocabulary (size {})",
                    self.vocab
                ),
            });
        }
        let so = self.state_offsets();
        let len = prompt_ids.len();
        let mut head = vec![0u32; (STATE_HEADER + HISTORY_RING) as usize];
        head[0] = len as u32;
        let ring = HISTORY_RING as usize;
        for (pos, &t) in prompt_ids.iter().enumerate().skip(len.saturating_sub(ring)) {
            head[STATE_HEADER as usize + pos % ring] = t;
        }
        gpu.queue
            .write_buffer(&self.state.buf, 0, bytemuck::cast_slice(&head));
        enc.clear_buffer(
            &self.state.buf,
            so.rep as u64 * 4,
            Some(2 * self.vocab as u64 * 4),
        );
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("sample.reset"),
            timestamp_writes: None,
        });
        self.init.record(
            &mut pass,
            StepShape {
                n_tokens: 1,
                n_out: 1,
                keys: 0,
            },
            gpu.caps.max_workgroups_per_dim,
        );
        Ok(())
    }

    /// [`Sampler::record_reset_history`] in its own submission.
    pub fn reset_history(&self, gpu: &Gpu, prompt_ids: &[u32]) -> Result<(), SamplingError> {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("sample.reset"),
            });
        self.record_reset_history(gpu, &mut enc, prompt_ids)?;
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Indices into [`Sampler::dispatches`] that `p` needs (the others return at once and may be
    /// left out of the recorded plan). `probs`: the call writes probs.
    pub fn needed_dispatches(&self, p: &SamplingParams, probs: bool) -> Vec<usize> {
        let d = p.derived(self.vocab);
        let r = self.rounds() as usize;
        let mut v = vec![0];
        if !d.greedy && (d.top_p.is_some() || d.top_k.is_some()) {
            v.extend(1..=r);
        }
        if !d.greedy || probs {
            v.push(r + 1);
        }
        v.push(r + 2);
        v
    }

    /// Sampling of the step's `n_out` logits rows into `out_ids[r]`, the sampler's `results`, and
    /// the history (commit). Built once at load; the token loop only records it.
    pub async fn dispatches(
        &self,
        gpu: &Gpu,
        logits: &GpuBuffer,
        out_ids: &GpuBuffer,
        step: StepSlot<'_>,
    ) -> Result<Vec<Dispatch>, GpuError> {
        self.dispatches_with(
            gpu,
            logits,
            out_ids,
            step,
            &SampleIo {
                commit: true,
                ..Default::default()
            },
        )
        .await
    }

    /// As [`Sampler::dispatches`], with the outputs chosen by `io`.
    pub async fn dispatches_with(
        &self,
        gpu: &Gpu,
        logits: &GpuBuffer,
        out_ids: &GpuBuffer,
        step: StepSlot<'_>,
        io: &SampleIo<'_>,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let bad = |m: String| GpuError::Validation {
            context: "sampler".into(),
            message: m,
        };
        if logits.size < self.vocab as u64 * 4 {
            return Err(bad(format!(
                "logits buffer of {} bytes is smaller than one row of {} logits",
                logits.size, self.vocab
            )));
        }
        if let Some(p) = io.probs {
            if p.size < self.probs_bytes() {
                return Err(bad(format!(
                    "probs buffer of {} bytes, {} needed (use Sampler::probs_buffer)",
                    p.size,
                    self.probs_bytes()
                )));
            }
        }
        let results = io.results.unwrap_or(&self.results);
        if results.size < (self.max_rows * RESULT_WORDS) as u64 * 4 {
            return Err(bad(format!(
                "results buffer of {} bytes, {} needed",
                results.size,
                self.max_rows * RESULT_WORDS * 4
            )));
        }
        let logit_rows = (logits.size / (self.vocab as u64 * 4)) as u32;
        if io.logit_row >= logit_rows {
            return Err(bad(format!(
                "logits row {} of a buffer of {logit_rows} rows",
                io.logit_row
            )));
        }
        let mut cfg = self.cfg();
        cfg.rows_cap = self.max_rows.min(logit_rows - io.logit_row);
        cfg.id_offset = io.id_offset;
        cfg.logit_row = io.logit_row;
        cfg.ids_cap = (out_ids.size / 4) as u32;
        cfg.commit = io.commit as u32;
        cfg.unmasked = io.unmasked as u32;
        cfg.probs_on = io.probs.is_some() as u32;
        let (ctx, ctx_offset) = match io.ctx_ids {
            Some((b, o)) => {
                cfg.ctx_on = 1;
                (b, o)
            }
            None => (&self.dummy, 0),
        };
        cfg.ctx_offset = ctx_offset;
        cfg.ctx_len = (ctx.size / 4) as u32;
        let probs = io.probs.unwrap_or(&self.dummy);
        let u = gpu.uniform("sample.cfg", &cfg);
        let blocks = Grid {
            groups: self.n_blocks,
            rows: Rows::Out,
            tile: 1,
            out_rows: crate::gpu::plan::ALL_OUT,
            keys: crate::gpu::plan::ALL_KEYS,
            tokens: crate::gpu::plan::ALL_TOKENS,
        };
        let mut v = Vec::new();
        let p = self.pipeline(gpu, Pass::Stats).await?;
        v.push(gpu.dispatch(
            "sample.stats",
            &p,
            &[
                self.req.whole(),
                u.whole(),
                step.binding(),
                logits.whole(),
                ctx.whole(),
                self.state.whole(),
                self.work.whole(),
                self.scratch.whole(),
            ],
            blocks,
        ));
        for k in 0..self.rounds() {
            let p = self.pipeline(gpu, Pass::Round(k)).await?;
            v.push(gpu.dispatch(
                format!("sample.round{k}"),
                &p,
                &[
                    self.req.whole(),
                    u.whole(),
                    step.binding(),
                    self.work.whole(),
                    self.scratch.whole(),
                ],
                blocks,
            ));
        }
        let p = self.pipeline(gpu, Pass::Final).await?;
        v.push(gpu.dispatch(
            "sample.final",
            &p,
            &[
                self.req.whole(),
                u.whole(),
                step.binding(),
                self.work.whole(),
                self.scratch.whole(),
                probs.whole(),
            ],
            blocks,
        ));
        let p = self.pipeline(gpu, Pass::Finish).await?;
        v.push(gpu.dispatch(
            "sample.finish",
            &p,
            &[
                self.req.whole(),
                u.whole(),
                step.binding(),
                self.work.whole(),
                self.state.whole(),
                self.scratch.whole(),
                probs.whole(),
                out_ids.whole(),
                results.whole(),
            ],
            Grid::per_out(1, 1),
        ));
        Ok(v)
    }

    /// For a step whose input ids were forced (known on the host, fed without the head that would
    /// have chosen each, see [`crate::decode::constrain`]): appends the step's `n_tokens` input ids
    /// `fed[0..]` to the history and advances the draw counter by as many, as the finish pass of
    /// each id's own step would have done, so later choices see the same history and draws.
    pub async fn forced_dispatches(
        &self,
        gpu: &Gpu,
        fed: &GpuBuffer,
        step: StepSlot<'_>,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let mut cfg = self.cfg();
        cfg.commit = 1;
        let u = gpu.uniform("sample.forced.cfg", &cfg);
        let p = self.pipeline(gpu, Pass::Forced).await?;
        Ok(vec![gpu.dispatch(
            "sample.forced",
            &p,
            &[
                self.req.whole(),
                u.whole(),
                step.binding(),
                fed.whole(),
                self.state.whole(),
            ],
            Grid::fixed(1),
        )])
    }

    /// The speculative accept test (spec §7.3 B.3/B.5): per row, accept the drafted id d with
    /// probability min(1, p(d)/q(d)), else draw from normalize(max(p − q, 0)) (p when that is all
    /// zero); results in `accept_out`. Both probs buffers come from [`Sampler::probs_buffer`].
    pub async fn accept_dispatches(
        &self,
        gpu: &Gpu,
        io: &AcceptIo<'_>,
    ) -> Result<Vec<Dispatch>, GpuError> {
        let bad = |m: String| GpuError::Validation {
            context: "sampler accept".into(),
            message: m,
        };
        if io.rows == 0 || io.rows > self.max_rows {
            return Err(bad(format!(
                "rows must be in [1, {}], got {}",
                self.max_rows, io.rows
            )));
        }
        if io.target_row + io.rows > self.max_rows || io.draft_row + io.rows > self.max_rows {
            return Err(bad(format!(
                "probs rows out of range (max_rows {})",
                self.max_rows
            )));
        }
        for b in [io.target, io.draft] {
            if b.size < self.probs_bytes() {
                return Err(bad(format!(
                    "probs buffer of {} bytes, {} needed",
                    b.size,
                    self.probs_bytes()
                )));
            }
        }
        for (what, (b, off)) in [("draft_id", io.draft_id), ("bonus_id", io.bonus_id)] {
            if (off as u64 + io.rows as u64) * 4 > b.size {
                return Err(bad(format!(
                    "{what}: {} ids at offset {off} do not fit a buffer of {} bytes",
                    io.rows, b.size
                )));
            }
        }
        let mut cfg = self.cfg();
        cfg.rows = io.rows;
        cfg.d_cap = (io.draft_id.0.size / 4) as u32;
        cfg.b_cap = (io.bonus_id.0.size / 4) as u32;
        cfg.p_row = io.target_row;
        cfg.q_row = io.draft_row;
        cfg.d_offset = io.draft_id.1;
        cfg.b_offset = io.bonus_id.1;
        cfg.commit = io.commit as u32;
        let u = gpu.uniform("sample.accept.cfg", &cfg);
        let pb = self.pipeline(gpu, Pass::AcceptBlocks).await?;
        let pf = self.pipeline(gpu, Pass::AcceptFinish).await?;
        Ok(vec![
            gpu.dispatch(
                "sample.accept.blocks",
                &pb,
                &[
                    self.req.whole(),
                    u.whole(),
                    self.state.whole(),
                    io.target.whole(),
                    io.draft.whole(),
                    io.draft_id.0.whole(),
                    self.scratch.whole(),
                ],
                Grid::fixed(self.n_blocks * io.rows),
            ),
            gpu.dispatch(
                "sample.accept.finish",
                &pf,
                &[
                    self.req.whole(),
                    u.whole(),
                    self.state.whole(),
                    io.draft_id.0.whole(),
                    io.bonus_id.0.whole(),
                    self.scratch.whole(),
                    self.accept_out.whole(),
                ],
                Grid::fixed(io.rows),
            ),
        ])
    }

    /// Reads `rows` rows of the sampler's results buffer (after the submitted work completes).
    pub async fn read_results(&self, gpu: &Gpu, rows: u32) -> Result<Vec<RowResult>, GpuError> {
        let w = gpu
            .read_u32(
                &self.results.buf,
                0,
                (rows.min(self.max_rows) * RESULT_WORDS) as usize,
            )
            .await?;
        Ok(parse_results(&w, rows.min(self.max_rows) as usize))
    }

    /// Reads `rows` rows of the accept output.
    pub async fn read_accept(&self, gpu: &Gpu, rows: u32) -> Result<Vec<AcceptResult>, GpuError> {
        let w = gpu
            .read_u32(
                &self.accept_out.buf,
                0,
                (rows.min(self.max_rows) * ACCEPT_WORDS) as usize,
            )
            .await?;
        Ok(parse_accept(&w, rows.min(self.max_rows) as usize))
    }

    /// Reads the history header: (tokens in the history, generated tokens, draw counter).
    pub async fn read_history_header(&self, gpu: &Gpu) -> Result<(u32, u32, u32), GpuError> {
        let w = gpu.read_u32(&self.state.buf, 0, 3).await?;
        Ok((w[0], w[1], w[2]))
    }
}
