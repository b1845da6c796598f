//! A loaded model and the sessions that run it.
//!
//! [`Model`] owns the weights. A [`Session`] owns one sequence's state, the activation workspace
//! and the prepared plans that bind them; building a session creates every bind group, so the
//! token loop only writes the step parameters, records the plan and submits once.

use std::sync::Arc;

use crate::decode::sampler::SamplingParams;
use crate::error::LoadError;
use crate::gpu::readback::Readback;
use crate::gpu::{Gpu, GpuBuffer, GpuError, Plan, Step, StepShape, StepSlot};
use crate::model::config::ModelConfig;
use crate::model::forward::{Builder, Workspace};
use crate::model::tensors;
use crate::model::weights::{LoadOptions, Weights};
use crate::ops::matmul::{MT_ONE, MT_PREFILL, MT_SMALL};
use crate::ops::mtp::{self, Stage};
use crate::ops::sample::{parse_results, AcceptIo, RowResult, SampleIo, Sampler, RESULT_WORDS};
use crate::state::{config_crc, SavedBuffer, SavedState, State, StateError};
use crate::weights::{Checkpoint, Layout};

/// Errors while running a model.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the context is full: {needed} positions needed, the session holds {max} (use a larger --max-context)")]
    ContextFull { needed: u32, max: u32 },
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    BadToken { id: u32, vocab: u32 },
    #[error("empty input: at least one token id is needed")]
    Empty,
    #[error("nothing of that kind is pending: read a result only after submitting the step that makes it")]
    NothingPending,
    #[error("the session is busy: {0}")]
    Busy(String),
    #[error("{0}")]
    Sampling(String),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("batch: {0}")]
    Batch(String),
}

pub struct Model {
    pub gpu: Arc<Gpu>,
    pub config: ModelConfig,
    pub weights: Weights,
    pub layout: Layout,
    /// Things the user should know about this checkpoint (e.g. MTP unavailable).
    pub notes: Vec<String>,
}

impl Model {
    /// Validates every tensor against `config`, then uploads. `progress(bytes_done, bytes_total)`.
    pub fn from_checkpoint(
        gpu: Arc<Gpu>,
        config: ModelConfig,
        ck: &Checkpoint,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Model, LoadError> {
        Model::from_checkpoint_with(gpu, config, ck, &LoadOptions::default(), progress)
    }

    /// [`Model::from_checkpoint`] with explicit [`LoadOptions`].
    pub fn from_checkpoint_with(
        gpu: Arc<Gpu>,
        config: ModelConfig,
        ck: &Checkpoint,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Model, LoadError> {
        let host = tensors::collect(&config, ck)?;
        let total = ck.data_bytes();
        let weights = Weights::upload(&gpu, &host, opts, &mut |done| progress(done, total))?;
        gpu.take_error()?;
        let notes = host.notes.clone();
        drop(host);
        Ok(Model {
            gpu,
            config,
            weights,
            layout: ck.layout,
            notes,
        })
    }

    /// Reads `config.json` (+ `generation_config.json`) and the safetensors files of `dir`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(
        gpu: Arc<Gpu>,
        dir: &std::path::Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Model, LoadError> {
        Model::load_with(gpu, dir, &LoadOptions::default(), progress)
    }

    /// [`Model::load`] with explicit [`LoadOptions`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_with(
        gpu: Arc<Gpu>,
        dir: &std::path::Path,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Model, LoadError> {
        let config = read_config(dir)?;
        let ck = Checkpoint::open(dir)?;
        Model::from_checkpoint_with(gpu, config, &ck, opts, progress)
    }

    pub fn has_mtp(&self) -> bool {
        self.weights.mtp.is_some()
    }
}

/// Parses `dir/config.json` and, if present, `dir/generation_config.json`.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_config(dir: &std::path::Path) -> Result<ModelConfig, LoadError> {
    let p = dir.join("config.json");
    if !dir.is_dir() {
        return Err(LoadError::Io {
            path: dir.display().to_string(),
            message: "no such model directory".into(),
        });
    }
    let text = std::fs::read_to_string(&p).map_err(|e| LoadError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    })?;
    let gen = std::fs::read_to_string(dir.join("generation_config.json")).ok();
    ModelConfig::parse(&p.display().to_string(), &text, gen.as_deref())
}

/// Whether `p` picks the argmax of the raw logits (no sampler needed).
/// Whether a request with these settings picks the argmax with nothing else to apply (no
/// penalties, bias or logprobs): the plain greedy head, no sampler.
pub fn plain_greedy(p: &SamplingParams, logprobs: bool) -> bool {
    p.is_greedy()
        && p.repetition_penalty == 1.0
        && p.presence_penalty == 0.0
        && p.frequency_penalty == 0.0
        && p.logit_bias.is_empty()
        && !logprobs
}

/// Sizes of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    /// Positions the KV caches hold (prompt + generated tokens).
    pub max_ctx: u32,
    /// Rows per prefill call.
    pub prefill_chunk: u32,
    /// Keep the MTP head ready for speculative decoding (where the checkpoint has one). `false`:
    /// the session decodes plainly only (MTP calls run plain, as for a checkpoint without a head)
    /// and folds the RMSNorms into its decode matmuls, which an H200 runs 12 % faster; its state
    /// keeps the MTP cache's place (not in step), so states move between both kinds of session.
    pub speculative: bool,
    /// Spread the keys of decode and verify rows over many workgroups in attention (a split pass,
    /// then a combine; identical bits to the one-pass path either way, see
    /// [`crate::ops::attention`]). `None`: split on GPUs, one pass on CPU adapters (lavapipe,
    /// SwiftShader), which pay per launched workgroup and gain nothing from spreading
    /// ([`crate::ops::attention::split_by_default`]).
    pub attn_split: Option<bool>,
    /// Keep the KV caches in f16 instead of f32 ([`crate::ops::attention::AttnDims::kv_f16`]):
    /// half their memory and reads, which long contexts feel; keys and values are rounded to
    /// f16 once as they are written. Saved states record which kind they hold.
    pub kv_f16: bool,
    /// Run the MTP head's lm_head and draft choice on the one row the next draft comes from
    /// (`Some(true)`) or on both rows (`Some(false)`; for measurements and tests). `None`: the
    /// process-wide choice ([`crate::ops::mtp::mtp_head_one_row`], on by default).
    pub mtp_head_one_row: Option<bool>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            max_ctx: 4096,
            prefill_chunk: 512,
            speculative: true,
            attn_split: None,
            kv_f16: false,
            mtp_head_one_row: None,
        }
    }
}

/// The MTP head's prepared plans (spec §6–7), bound to step slot 1.
struct MtpPlans {
    /// Input norms, fc and the MTP decoder layer, decode tile (≤ 2 rows) and prefill tile.
    front_small: Plan,
    front_prefill: Plan,
    /// mtp.norm, shared lm_head, argmax (greedy iterations) of the one row the next draft comes
    /// from (`head_step_buf`, which the accept stages point at row `accept`) or of both rows.
    head: Plan,
    first: Plan,
    verify: Plan,
    /// The next draft from `head` / `head_sampled` (their one row, or row `accept` of both).
    select: Plan,
    /// `head` and `head_sampled` run on the one row the next draft comes from
    /// ([`mtp::mtp_head_one_row`]); its q is then in `draft_probs` row 0.
    head_one_row: bool,
    /// Last in a verify iteration: the next one's positions and rollback flag (see
    /// [`Session::mtp_submit_verify`]).
    advance: Plan,
    // Sampled speculation (spec §7.3 with temperature / filters):
    /// mtp.norm, shared lm_head, then the draft drawn by the sampler; its distribution q goes to
    /// `draft_probs` (one row per MTP row).
    head_sampled: Plan,
    /// The verify's target rows: final norm, lm_head, the sampler over both rows with their
    /// distributions p into `target_probs` (row 1 sees the draft in its penalty history).
    target_sample: Plan,
    /// The accept test min(1, p/q) with residual resampling, for q in draft row 0 or 1.
    accept: [Plan; 2],
    sampled: Plan,
    #[allow(dead_code)]
    target_probs: GpuBuffer,
    #[allow(dead_code)]
    draft_probs: GpuBuffer,
}

/// What one speculative iteration produced (see [`Session::mtp_verify`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtpStep {
    /// The target's token at the draft's position (equals the draft when accepted).
    pub verified: u32,
    /// The target's next token given an accepted draft (only meaningful when accepted).
    pub bonus: u32,
    pub accepted: bool,
    /// The MTP head's proposal for the position after the last emitted token.
    pub draft: u32,
}

/// One sequence: its state, a workspace and the plans bound to them.
pub struct Session {
    pub model: Arc<Model>,
    pub opts: SessionOptions,
    pub ws: Workspace,
    pub state: State,
    step_buf: GpuBuffer,
    /// The MTP head's step (its one output row), written by the GPU (the host writes it only
    /// to profile the head).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    head_step_buf: GpuBuffer,
    /// Body (embedding + layers) with the 1-token decode kernels.
    single: Plan,
    /// Body with the 2-token kernels: verify calls (row 0 bit-identical to `single`).
    small: Plan,
    /// Body with the prompt (token-tiled) kernels: every prefill chunk, whatever its size.
    prefill: Plan,
    /// Final norm, lm_head and argmax of the out rows.
    head: Plan,
    /// Two readbacks for the chosen ids, so a step can be submitted while the id of the one
    /// before it is still being read (plain decoding keeps one step in flight).
    ids_readback: [Readback; 2],
    /// Submitted steps whose ids are not read yet, oldest first: (readback slot, submission).
    pending: std::collections::VecDeque<(usize, wgpu::SubmissionIndex, Pending)>,
    mtp: Option<MtpPlans>,
    /// The shape of a decode body submitted without its head ([`Session::decode_body_ahead`]),
    /// until [`Session::decode_head`] submits the head (any other submission forgets it).
    headless: Option<StepShape>,
    /// The shape of an MTP verify body submitted without its heads
    /// ([`Session::mtp_submit_body_ahead`]), until [`Session::mtp_submit_heads`] submits them.
    verify_body: Option<StepShape>,
    /// GPU sampling (temperature, filters, penalties, bias, logprobs) for the backbone's rows.
    pub sampler: Sampler,
    /// Final norm, lm_head and the sampler, used instead of `head` when `sampling`.
    head_sample: Plan,
    /// The sampler's history commit of a step's input ids that were forced
    /// ([`Session::feed_forced`]).
    forced: Plan,
    sampling: bool,
    /// Token masks are set ([`Session::set_token_mask`], [`Session::set_token_masks`]): the host
    /// chooses them per iteration, so sampled iterations cannot be queued.
    masked: bool,
    /// Copy the sampler's per-row results (logprobs) into the readback with the ids.
    logprobs: bool,
    last_result: Option<RowResult>,
    /// Which row of the MTP draft distributions holds q for the pending draft (sampled MTP).
    draft_row: u32,
    /// Benchmarks only: force MTP accept decisions with this probability (greedy).
    force_accept: Option<(f64, u64)>,
    /// The last verify rejected its draft: the GDN states must take their snapshots before the
    /// next forward (recorded at the front of the next submission).
    rollback_pending: bool,
    /// The MTP cache holds an entry for every confirmed position (false after plain decoding).
    mtp_synced: bool,
    /// Seconds per plain decode step and per MTP verify iteration on this device, both queued
    /// one ahead (see [`Session::calibrate_mtp`]).
    mtp_costs: Option<(f64, f64)>,
}

/// What a submitted, unread step reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// The chosen id (plain steps).
    Id,
    /// An MTP verify's [verified, bonus, accept, draft].
    Verify,
}

/// Offset of step slot `i` in the step buffer.
fn slot_offset(gpu: &Gpu, i: u64) -> u64 {
    i * gpu.caps.storage_align.max(256)
}

impl Session {
    pub async fn new(model: Arc<Model>, opts: SessionOptions) -> Result<Session, LoadError> {
        let gpu = model.gpu.clone();
        let cfg = &model.config;
        let max_ctx = opts.max_ctx.max(1);
        let chunk = opts.prefill_chunk.clamp(1, max_ctx);
        let speculative = opts.speculative && model.has_mtp();
        let attn_split = opts
            .attn_split
            .unwrap_or_else(|| crate::ops::attention::split_by_default(&gpu));
        let ws = Workspace::new(&gpu, cfg, chunk.max(2), 2, model.has_mtp())?;
        let state = State::new(&gpu, cfg, max_ctx, model.has_mtp(), opts.kv_f16)?;
        let step_buf = gpu.storage("step", slot_offset(&gpu, 2))?;
        // The step of the MTP head's one output row, written by the GPU's accept stages (see
        // `mtp_accept.wgsl`): a buffer of its own, as they also read a step slot.
        let head_step_buf = gpu.storage("mtp head step", std::mem::size_of::<Step>() as u64)?;
        let scope = gpu.scope("building the session's plans");
        let sampler = Sampler::new(&gpu, cfg.vocab_size as u32, 2).await?;
        let (single, small, prefill, head, head_sample, forced, mtp) = {
            let slot = StepSlot {
                buf: &step_buf,
                offset: 0,
            };
            let b = |mt| Builder {
                gpu: &gpu,
                cfg,
                w: &model.weights,
                ws: &ws,
                step: slot,
                mt,
                max_ctx,
                x: &ws.x,
                // With an MTP head the verify tile takes the folded norms too (row 0 of a verify
                // must equal a decode; see fold_norms_with_mtp).
                fold_norms: !speculative || crate::ops::matmul::fold_norms_with_mtp(),
                attn_split,
                streams: 0,
            };
            let plans = (
                b(MT_SMALL).body(&state).await?,
                b(MT_PREFILL).body(&state).await?,
                b(MT_SMALL).head().await?,
            );
            let single = b(MT_ONE).body(&state).await?;
            let mut head_sample = b(MT_SMALL).head_logits().await?;
            head_sample.extend_vec(
                sampler
                    .dispatches(&gpu, &ws.logits, &ws.out_ids, slot)
                    .await?,
            );
            let mut forced = Plan::new();
            forced.extend_vec(sampler.forced_dispatches(&gpu, &ws.ids, slot).await?);
            let mtp = match (&model.weights.mtp, &state.mtp) {
                (Some(w), Some(kv)) if speculative => {
                    let slot1 = StepSlot {
                        buf: &step_buf,
                        offset: slot_offset(&gpu, 1),
                    };
                    let mb = |mt| Builder {
                        gpu: &gpu,
                        cfg,
                        w: &model.weights,
                        ws: &ws,
                        step: slot1,
                        mt,
                        max_ctx,
                        x: &ws.x_mtp,
                        fold_norms: false,
                        attn_split,
                        streams: 0,
                    };
                    let one_row = opts.mtp_head_one_row.unwrap_or_else(mtp::mtp_head_one_row);
                    let slot2 = StepSlot {
                        buf: &head_step_buf,
                        offset: 0,
                    };
                    // The head's step: its one row, or both rows (slot 1).
                    let head_slot = if one_row { slot2 } else { slot1 };
                    let hb = |mt| Builder {
                        step: head_slot,
                        ..mb(mt)
                    };
                    let one = |d| {
                        let mut p = Plan::new();
                        p.push(d);
                        p
                    };
                    let target_probs = sampler.probs_buffer(&gpu, "mtp.target_probs")?;
                    let draft_probs = sampler.probs_buffer(&gpu, "mtp.draft_probs")?;
                    let mut head_sampled = hb(MT_SMALL).mtp_head_logits(w).await?;
                    let draft_io = SampleIo {
                        probs: Some(&draft_probs),
                        commit: false,
                        unmasked: true,
                        ..Default::default()
                    };
                    head_sampled.extend_vec(
                        sampler
                            .dispatches_with(
                                &gpu,
                                &ws.mtp_logits,
                                &ws.mtp_out,
                                head_slot,
                                &draft_io,
                            )
                            .await?,
                    );
                    let mut target_sample = b(MT_SMALL).head_logits().await?;
                    let target_io = SampleIo {
                        probs: Some(&target_probs),
                        ctx_ids: Some((&ws.ids, 0)),
                        commit: false,
                        ..Default::default()
                    };
                    target_sample.extend_vec(
                        sampler
                            .dispatches_with(&gpu, &ws.logits, &ws.out_ids, slot, &target_io)
                            .await?,
                    );
                    let mut accept = [Plan::new(), Plan::new()];
                    for (row, plan) in accept.iter_mut().enumerate() {
                        let io = AcceptIo {
                            target: &target_probs,
                            target_row: 0,
                            draft: &draft_probs,
                            draft_row: row as u32,
                            draft_id: (&ws.ids, 1),
                            bonus_id: (&ws.out_ids, 1),
                            rows: 1,
                            commit: true,
                        };
                        plan.extend_vec(sampler.accept_dispatches(&gpu, &io).await?);
                    }
                    Some(MtpPlans {
                        front_small: mb(MT_SMALL).mtp_front(w, kv).await?,
                        front_prefill: mb(MT_PREFILL).mtp_front(w, kv).await?,
                        // On the chosen row alone (`head_step_buf`): the next draft's row.
                        head: hb(MT_SMALL).mtp_head(w).await?,
                        first: one(mtp::accept(
                            &gpu,
                            Stage::First,
                            &ws.ids,
                            &ws.result,
                            &ws.out_ids,
                            &ws.mtp_ids,
                            slot2,
                            slot1,
                        )
                        .await?),
                        verify: one(mtp::accept(
                            &gpu,
                            Stage::Verify,
                            &ws.ids,
                            &ws.result,
                            &ws.out_ids,
                            &ws.mtp_ids,
                            slot2,
                            slot1,
                        )
                        .await?),
                        // The draft of the head's one row (its step's n_out = 1), or of row
                        // `accept` of both.
                        select: one(mtp::accept(
                            &gpu,
                            Stage::Select,
                            &ws.ids,
                            &ws.result,
                            &ws.mtp_out,
                            &ws.mtp_ids,
                            slot2,
                            head_slot,
                        )
                        .await?),
                        head_one_row: one_row,
                        advance: one(mtp::advance(
                            &gpu,
                            &step_buf,
                            slot_offset(&gpu, 1),
                            &ws.result,
                        )
                        .await?),
                        sampled: one(mtp::accept(
                            &gpu,
                            Stage::Sampled,
                            &ws.ids,
                            &ws.result,
                            &sampler.accept_out,
                            &ws.mtp_ids,
                            slot2,
                            slot1,
                        )
                        .await?),
                        head_sampled,
                        target_sample,
                        accept,
                        target_probs,
                        draft_probs,
                    })
                }
                _ => None,
            };
            (single, plans.0, plans.1, plans.2, head_sample, forced, mtp)
        };
        scope.finish().await?;
        let ids_readback = [0, 1].map(|i| {
            Readback::new(
                &gpu,
                &format!("ids readback {i}"),
                16 + RESULT_WORDS as u64 * 4,
            )
        });
        Ok(Session {
            model,
            opts: SessionOptions {
                max_ctx,
                prefill_chunk: chunk,
                speculative,
                attn_split: Some(attn_split),
                kv_f16: opts.kv_f16,
                mtp_head_one_row: opts.mtp_head_one_row,
            },
            ws,
            state,
            step_buf,
            head_step_buf,
            single,
            small,
            prefill,
            head,
            ids_readback,
            pending: Default::default(),
            headless: None,
            verify_body: None,
            mtp,
            sampler,
            head_sample,
            forced,
            sampling: false,
            masked: false,
            logprobs: false,
            last_result: None,
            draft_row: 0,
            force_accept: None,
            rollback_pending: false,
            mtp_synced: true,
            mtp_costs: None,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.model.gpu
    }

    /// Tokens in the context so far.
    pub fn pos(&self) -> u32 {
        self.state.pos
    }

    /// Dispatches recorded for one decode step (body + head).
    pub fn dispatches_per_token(&self) -> usize {
        self.dispatches_per_token_at(0)
    }

    /// [`Self::dispatches_per_token`] for a step whose key estimate is `keys` (0: unknown), where
    /// plans hold forms chosen by the context's length (attention's grouped split pass, its folds).
    pub fn dispatches_per_token_at(&self, keys: u32) -> usize {
        let shape = StepShape {
            n_tokens: 1,
            n_out: 1,
            keys,
        };
        (self.single.recorded(shape) + self.head.recorded(shape))
            .saturating_sub(self.prefetch_dispatches_per_token())
    }

    /// Cache prefetch dispatches a decode step records besides [`Self::dispatches_per_token`]
    /// ([`crate::ops::prefetch`]: nothing waits for them but the next matmul's barrier, so they
    /// run in the tails of the matmuls in front).
    pub fn prefetch_dispatches_per_token(&self) -> usize {
        self.dispatch_kinds_per_token()
            .iter()
            .filter(|(k, _)| k == "prefetch")
            .map(|(_, n)| n)
            .sum()
    }

    /// [`Self::dispatches_per_token`] counted per kind (the first word of each label).
    pub fn dispatch_kinds_per_token(&self) -> Vec<(String, usize)> {
        let shape = StepShape {
            n_tokens: 1,
            n_out: 1,
            keys: 0,
        };
        let mut kinds = self.single.recorded_kinds(shape);
        for (k, n) in self.head.recorded_kinds(shape) {
            match kinds.iter_mut().find(|(q, _)| *q == k) {
                Some((_, m)) => *m += n,
                None => kinds.push((k, n)),
            }
        }
        kinds
    }

    /// Forgets the sequence.
    pub fn reset(&mut self) {
        let gpu = self.model.gpu.clone();
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("reset"),
            });
        self.state.record_reset(&mut enc);
        gpu.queue.submit([enc.finish()]);
        self.pending.clear();
        self.headless = None;
        self.verify_body = None;
        self.rollback_pending = false;
        self.mtp_synced = true;
    }

    /// How the following calls choose tokens: `None` = greedy argmax; otherwise the GPU sampler
    /// with `p` (temperature, filters, penalties, bias, seed). `logprobs` also reads back the
    /// chosen token's logprob and the top `p.top_logprobs` alternatives with each id.
    pub fn set_sampling(
        &mut self,
        p: Option<&SamplingParams>,
        logprobs: bool,
    ) -> Result<(), RunError> {
        let p = p.cloned().unwrap_or_default();
        self.sampler
            .set_params(&self.model.gpu, &p)
            .map_err(|e| RunError::Sampling(e.to_string()))?;
        self.sampling = !plain_greedy(&p, logprobs);
        self.masked = false;
        self.logprobs = logprobs;
        Ok(())
    }

    /// Limits the tokens chosen by steps submitted from now on to those whose bit is set in
    /// `allowed` (bit `i % 32` of word `i / 32`, see [`Sampler::set_params_masked`]), on top of the
    /// sampling parameters last set; `None` lifts the limit. Constrained decoding
    /// ([`crate::decode::constrain`]) sets it before each step.
    pub fn set_token_mask(&mut self, allowed: Option<&[u32]>) -> Result<(), RunError> {
        let p = self.sampler.params();
        self.sampler
            .set_params_masked(&self.model.gpu, &p, allowed)
            .map_err(|e| RunError::Sampling(e.to_string()))?;
        self.sampling = allowed.is_some() || !plain_greedy(&p, self.logprobs);
        self.masked = allowed.is_some();
        Ok(())
    }

    /// Token masks per row for the MTP verifies submitted from now on (constrained speculative
    /// decoding, [`crate::decode::constrain`]): `row0` limits the token at the draft's position,
    /// `row1` the bonus token after an accepted draft (the constraint advanced by the draft);
    /// `None` leaves that row free. The draft itself is never masked: one the target's mask
    /// forbids has probability 0 there and is rejected. Unlike [`Session::set_token_mask`] the
    /// choices go through the sampler even with no mask (greedy as its argmax), so every
    /// iteration of a constrained request takes the same path and the draft's distribution is
    /// always there for the accept test; [`Session::set_token_mask`] (`None`) ends it.
    pub fn set_token_masks(
        &mut self,
        row0: Option<&[u32]>,
        row1: Option<&[u32]>,
    ) -> Result<(), RunError> {
        let p = self.sampler.params();
        self.sampler
            .set_params_masked_rows(&self.model.gpu, &p, [row0, row1])
            .map_err(|e| RunError::Sampling(e.to_string()))?;
        self.sampling = true;
        self.masked = true;
        Ok(())
    }

    /// A model of the acceptance rate below which MTP speculation is slower than plain decoding,
    /// for when nothing was measured ([`Session::mtp_break_even_measured`] prefers the
    /// measurement; WebGPU sessions and sampled requests use this model): a 2-token verify costs
    /// about 1.30 forwards where the decode matmuls take x as integer planes (an H200 with the
    /// 27B shapes, 2026-12-03, both loops queued one step ahead: a verify iteration 9.03 ms
    /// including a 0.5 ms MTP step, a plain step 6.69 ms; measured break-even 35 %), about 1.70
    /// with the f32 decode matmuls on a GPU whose f32 arithmetic limits them (the same H200 with
    /// f32 x: 18.6 against 10.6 ms, break-even 76 %), and about 1.10 on Metal, which keeps f32 x
    /// ([`crate::ops::matmul::packed_dot`]) on Apple GPUs that read 0.1–0.8 TB/s: there the
    /// second row's arithmetic (≈ 2 instructions per weight) stays under the weights' read time
    /// and the second row costs its activations and kernel tails (a model, not yet measured on a
    /// Mac). Plus the MTP step's share of the bytes a forward reads (its layer, fc and the shared
    /// lm_head).
    pub fn mtp_break_even(&self) -> f64 {
        let w = &self.model.weights;
        let gpu = &self.model.gpu;
        let verify_overhead = if crate::ops::matmul::takes_xq(gpu, w.lm_head(), MT_ONE) {
            0.30
        } else if !gpu.caps.web && gpu.info.backend == wgpu::Backend::Metal {
            0.10
        } else {
            0.70
        };
        let lm = w.lm_head().bytes() as f64;
        let backbone: f64 = w.bytes() as f64
            - w.embed.bytes() as f64
            - w.lm_head.as_ref().map_or(0.0, |m| m.bytes() as f64);
        let mtp_layers = w
            .mtp
            .as_ref()
            .map_or(0.0, |m| (m.fc.bytes() + m.layer.bytes()) as f64);
        let backbone_only = backbone - mtp_layers;
        verify_overhead + (mtp_layers + lm) / (backbone_only + lm).max(1.0)
    }

    /// The measured (seconds per plain step, seconds per verify iteration) of this session, once
    /// [`Session::calibrate_mtp`] has run.
    pub fn mtp_costs(&self) -> Option<(f64, f64)> {
        self.mtp_costs
    }

    /// The acceptance rate below which speculation is slower than plain decoding, from the
    /// measured step costs when there are some ([`Session::calibrate_mtp`]: a verify iteration
    /// emits 1 + acceptance tokens, a plain step one), else [`Session::mtp_break_even`]'s model.
    pub fn mtp_break_even_measured(&self) -> f64 {
        match self.mtp_costs {
            Some((plain, verify)) if plain > 0.0 && verify > 0.0 => {
                (verify / plain - 1.0).clamp(0.0, 1.0)
            }
            _ => self.mtp_break_even(),
        }
    }

    /// Measures what a plain decode step and an MTP verify iteration cost on this device, each
    /// queued one ahead as the decode loops run them (the median of `steps` after two warm-up
    /// steps), for the adaptive policy ([`Session::mtp_break_even_measured`]). Greedy; runs on
    /// an empty context and leaves it empty ([`Session::reset`]): call it before a request.
    /// A no-op without an MTP head, on a non-empty context, with a context of fewer than 64
    /// positions, or where the host has no clock (wasm).
    pub async fn calibrate_mtp(&mut self, steps: usize) -> Result<(), RunError> {
        #[cfg(target_arch = "wasm32")]
        {
            let _ = steps;
            Ok(())
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let steps = steps.max(1);
            if self.mtp.is_none()
                || self.state.pos != 0
                || !self.pending.is_empty()
                || self.state.max_ctx < (6 * steps as u32 + 16).max(64)
            {
                return Ok(());
            }
            let sampling = self.sampling;
            let forced = self.force_accept;
            // Greedy, with the drafts accepted half of the time (the cost does not depend on
            // the outcome, but both paths should run).
            self.sampling = false;
            self.force_accept = Some((0.5, 0x9E3779B97F4A7C15));
            let r = self.calibrate_inner(steps).await;
            self.sampling = sampling;
            self.force_accept = forced;
            self.reset();
            let costs = r?;
            self.mtp_costs = Some(costs);
            Ok(())
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    async fn calibrate_inner(&mut self, steps: usize) -> Result<(f64, f64), RunError> {
        fn median(mut v: Vec<f64>) -> f64 {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        }
        let n = steps + 2;
        // Verify iterations: one queued ahead, as generate_mtp runs them.
        self.prefill_with(&[0], Some(0)).await?;
        self.mtp_first(0).await?;
        let mut verify = Vec::new();
        let mut last: Option<std::time::Instant> = None;
        self.mtp_submit_verify()?;
        for _ in 0..n {
            self.mtp_submit_verify()?;
            self.mtp_read_verify().await?;
            let now = std::time::Instant::now();
            if let Some(l) = last {
                verify.push((now - l).as_secs_f64());
            }
            last = Some(now);
        }
        self.settle().await?;
        // Plain steps: one queued ahead, as the plain loop runs them.
        let mut plain = Vec::new();
        let mut last: Option<std::time::Instant> = None;
        self.decode_ahead()?;
        for _ in 0..n {
            self.decode_ahead()?;
            self.next_id().await?;
            let now = std::time::Instant::now();
            if let Some(l) = last {
                plain.push((now - l).as_secs_f64());
            }
            last = Some(now);
        }
        self.discard_pending();
        self.model.gpu.take_error()?;
        let (v, p) = (&verify[1..], &plain[1..]);
        Ok((median(p.to_vec()), median(v.to_vec())))
    }

    /// Benchmarks only: make greedy MTP verifies accept with probability `rate` regardless of
    /// the drafts (the emitted tokens are then not the model's output). `None` restores the real
    /// test.
    pub fn force_accept(&mut self, rate: Option<f64>) {
        self.force_accept = rate.map(|r| (r.clamp(0.0, 1.0), 0x2545F4914F6CDD1D));
    }

    /// Whether tokens come from the GPU sampler (not plain argmax).
    pub fn is_sampling(&self) -> bool {
        self.sampling
    }

    /// Whether verify iterations can be queued while earlier ones are unread, as greedy ones
    /// always can: sampled ones too when the MTP head runs on its one row (the draft's q is then
    /// always in `draft_probs` row 0, whatever the previous iteration decided) and no token masks
    /// are set (the host chooses those per iteration from the tokens it has read).
    pub fn mtp_queues(&self) -> bool {
        !self.sampling || (!self.masked && self.mtp.as_ref().is_some_and(|m| m.head_one_row))
    }

    /// Starts a request: the sampler's token history (penalties) becomes `prompt`.
    pub fn start_request(&mut self, prompt: &[u32]) -> Result<(), RunError> {
        self.last_result = None;
        self.pending.clear();
        if self.sampling {
            self.sampler
                .reset_history(&self.model.gpu, prompt)
                .map_err(|e| RunError::Sampling(e.to_string()))?;
        }
        Ok(())
    }

    /// Logprobs of the last token chosen (when requested with [`Session::set_sampling`]).
    pub fn last_logprobs(&self) -> Option<&RowResult> {
        self.last_result.as_ref()
    }

    /// Whether the session has an MTP head to speculate with (whatever its state holds now;
    /// see [`Session::mtp_available`]).
    pub fn has_mtp_head(&self) -> bool {
        self.mtp.is_some()
    }

    /// Whether this session can decode with the MTP head now (its MTP cache in step with the
    /// state; a reset puts it in step).
    pub fn mtp_available(&self) -> bool {
        self.mtp.is_some() && self.mtp_synced
    }

    fn write_step(&self, slot: u64, step: Step) {
        let gpu = &self.model.gpu;
        gpu.queue.write_buffer(
            &self.step_buf.buf,
            slot_offset(gpu, slot),
            bytemuck::bytes_of(&step),
        );
    }

    /// A command encoder that first applies a pending GDN rollback. Every submission makes one,
    /// so it also forgets a body's head not submitted ([`Session::decode_body_ahead`]).
    fn encoder(&mut self, label: &str) -> wgpu::CommandEncoder {
        self.headless = None;
        let mut enc = self
            .model
            .gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        if self.rollback_pending {
            self.state.record_rollback(&mut enc);
            self.rollback_pending = false;
        }
        enc
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), RunError> {
        let vocab = self.model.config.vocab_size as u32;
        match ids.iter().find(|&&id| id >= vocab) {
            Some(&id) => Err(RunError::BadToken { id, vocab }),
            None => Ok(()),
        }
    }

    /// Records and submits one forward call of `t` rows at the current position. `ids` are
    /// written first when given (else the ids already on the GPU are used). With `logits`, the
    /// head runs on the last row and its argmax is copied to the readback buffer and to ids[0].
    fn submit(&mut self, ids: Option<&[u32]>, t: u32, logits: bool) -> Result<(), RunError> {
        self.submit_rows(ids, t, if logits { 1 } else { 0 }, !logits)
            .map(|_| ())
    }

    /// As [`Session::submit`], with logits for the last `n_out` rows (0 = none; at most 2).
    /// `prefill`: the prompt plan (token-tiled kernels), whatever the row count, so a prompt gives
    /// the same state in chunks of any size; otherwise the decode plan (≤ 2 rows).
    fn submit_rows(
        &mut self,
        ids: Option<&[u32]>,
        t: u32,
        n_out: u32,
        prefill: bool,
    ) -> Result<StepShape, RunError> {
        self.submit_rows_with(ids, t, n_out, prefill, false)
    }

    /// As [`Session::submit_rows`]; `forced`: the ids were forced (see
    /// [`Session::feed_forced`]), so the sampler's history takes them first.
    fn submit_rows_with(
        &mut self,
        ids: Option<&[u32]>,
        t: u32,
        n_out: u32,
        prefill: bool,
        forced: bool,
    ) -> Result<StepShape, RunError> {
        let logits = n_out > 0;
        let n_out = n_out.clamp(1, self.ws.max_out.min(t));
        self.check_no_verify()?;
        let slot = if logits { self.choice_slot() } else { 0 };
        let needed = self.state.pos + t;
        if needed > self.state.max_ctx {
            return Err(RunError::ContextFull {
                needed,
                max: self.state.max_ctx,
            });
        }
        let gpu = self.model.gpu.clone();
        self.write_step(
            0,
            Step {
                n_tokens: t,
                pos: self.state.pos,
                n_confirmed: 0,
                n_out,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        if let Some(ids) = ids {
            gpu.queue
                .write_buffer(&self.ws.ids.buf, 0, bytemuck::cast_slice(ids));
        }
        let shape = StepShape {
            n_tokens: t,
            n_out,
            keys: self.state.pos + 1,
        };
        let mut enc = self.encoder("forward");
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            if forced {
                self.forced
                    .record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
            }
            let body = if prefill || t > 2 {
                &self.prefill
            } else if t == 1 {
                &self.single
            } else {
                &self.small
            };
            body.record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
            if logits {
                let head = if self.sampling {
                    &self.head_sample
                } else {
                    &self.head
                };
                head.record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
            }
        }
        if logits {
            self.record_choice_copies(&mut enc, slot);
        }
        let index = gpu.queue.submit([enc.finish()]);
        if logits {
            self.pending.push_back((slot, index, Pending::Id));
        }
        self.state.pos += t;
        // Plain steps do not feed the MTP cache.
        self.mtp_synced &= self.state.mtp.is_none();
        Ok(shape)
    }

    fn check_no_verify(&self) -> Result<(), RunError> {
        if self.unsettled() {
            return Err(RunError::Busy(
                "MTP verifies are still unread: settle the session first".into(),
            ));
        }
        Ok(())
    }

    /// The readback slot for a new choice. At most one step is submitted ahead of the one being
    /// read: a third forgets the oldest. Then the readback no pending step uses.
    fn choice_slot(&mut self) -> usize {
        if self.pending.len() >= 2 {
            self.pending.pop_front();
        }
        self.free_slot()
    }

    /// The readback no pending step uses.
    fn free_slot(&self) -> usize {
        if self.pending.iter().any(|p| p.0 == 0) {
            1
        } else {
            0
        }
    }

    /// After a head: the chosen id feeds the next step's embedding without leaving the GPU, and
    /// goes (with the sampler's results when logprobs are read) to readback `slot`.
    fn record_choice_copies(&self, enc: &mut wgpu::CommandEncoder, slot: usize) {
        enc.copy_buffer_to_buffer(&self.ws.out_ids.buf, 0, &self.ws.ids.buf, 0, 4);
        self.ids_readback[slot].copy_from(enc, &self.ws.out_ids.buf, 0, 4);
        if self.sampling && self.logprobs {
            enc.copy_buffer_to_buffer(
                &self.sampler.results.buf,
                0,
                &self.ids_readback[slot].staging,
                16,
                RESULT_WORDS as u64 * 4,
            );
        }
    }

    /// Feeds `ids` (any length) without computing logits.
    pub async fn prefill(&mut self, ids: &[u32]) -> Result<(), RunError> {
        self.prefill_with(ids, None).await
    }

    /// Feeds `ids` in chunks. With `next` (the token that follows `ids`) and an MTP head, the MTP
    /// cache is filled too: its row for position i pairs the hidden state at i with the id at
    /// i + 1 (spec §6, MTP cache prefill), so the head has the whole context when drafting.
    pub async fn prefill_with(&mut self, ids: &[u32], next: Option<u32>) -> Result<(), RunError> {
        self.check_ids(ids)?;
        if let Some(n) = next {
            self.check_ids(&[n])?;
        }
        if self.state.pos as usize + ids.len() > self.state.max_ctx as usize {
            return Err(RunError::ContextFull {
                needed: self.state.pos + ids.len() as u32,
                max: self.state.max_ctx,
            });
        }
        let with_mtp = next.is_some() && self.mtp.is_some() && self.mtp_synced;
        if !with_mtp {
            for chunk in ids.chunks(self.opts.prefill_chunk as usize) {
                self.submit(Some(chunk), chunk.len() as u32, false)?;
            }
            self.model.gpu.take_error()?;
            return Ok(());
        }
        let gpu = self.model.gpu.clone();
        let n = self.opts.prefill_chunk as usize;
        let mut s = 0;
        while s < ids.len() {
            let chunk = &ids[s..(s + n).min(ids.len())];
            let t = chunk.len() as u32;
            // The MTP pairs of this chunk: hidden at i with the id at i + 1.
            let mut pairs: Vec<u32> = ids[s + 1..(s + n + 1).min(ids.len())].to_vec();
            if pairs.len() < chunk.len() {
                pairs.push(next.unwrap_or(0));
            }
            self.write_step(
                0,
                Step {
                    n_tokens: t,
                    pos: self.state.pos,
                    n_confirmed: 0,
                    n_out: 1,
                    force: 0,
                    rollback: 0,
                    ..Default::default()
                },
            );
            self.write_step(
                1,
                Step {
                    n_tokens: t,
                    pos: self.state.mtp_pos,
                    n_confirmed: 0,
                    n_out: 1,
                    force: 0,
                    rollback: 0,
                    ..Default::default()
                },
            );
            gpu.queue
                .write_buffer(&self.ws.ids.buf, 0, bytemuck::cast_slice(chunk));
            gpu.queue
                .write_buffer(&self.ws.mtp_ids.buf, 0, bytemuck::cast_slice(&pairs));
            let shape = StepShape {
                n_tokens: t,
                n_out: 1,
                keys: self.state.pos + 1,
            };
            let mut enc = self.encoder("prefill+mtp");
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("prefill+mtp"),
                    timestamp_writes: None,
                });
                self.prefill
                    .record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
                if let Some(m) = &self.mtp {
                    m.front_prefill
                        .record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
                }
            }
            gpu.queue.submit([enc.finish()]);
            self.state.pos += t;
            self.state.mtp_pos += t;
            s += chunk.len();
        }
        gpu.take_error()?;
        Ok(())
    }

    /// The first speculative iteration (spec §7.3 A): feeds `id` (the last prompt token) and
    /// returns (the target's token, the MTP draft for the token after it). The MTP cache gets
    /// the pair (h, main).
    pub async fn mtp_first(&mut self, id: u32) -> Result<(u32, u32), RunError> {
        if !self.mtp_available() {
            return Err(RunError::Load(LoadError::Unsupported(
                "this session has no usable MTP head".into(),
            )));
        }
        self.check_ids(&[id])?;
        let needed = self.state.pos + 1;
        if needed > self.state.max_ctx {
            return Err(RunError::ContextFull {
                needed,
                max: self.state.max_ctx,
            });
        }
        let gpu = self.model.gpu.clone();
        self.write_step(
            0,
            Step {
                n_tokens: 1,
                pos: self.state.pos,
                n_confirmed: 0,
                n_out: 1,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        self.write_step(
            1,
            Step {
                n_tokens: 1,
                pos: self.state.mtp_pos,
                n_confirmed: 0,
                n_out: 1,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        gpu.queue
            .write_buffer(&self.ws.ids.buf, 0, bytemuck::bytes_of(&id));
        let shape = StepShape {
            n_tokens: 1,
            n_out: 1,
            keys: self.state.pos + 1,
        };
        let mut enc = self.encoder("mtp first");
        self.record_iteration(&mut enc, shape, true);
        self.pending.clear();
        self.ids_readback[0].copy_from(&mut enc, &self.ws.result.buf, 0, 16);
        gpu.queue.submit([enc.finish()]);
        self.state.pos += 1;
        self.state.mtp_pos += 1;
        self.draft_row = 0;
        let r = self.read_result().await?;
        Ok((r[0], r[3]))
    }

    /// One speculative iteration (spec §7.3 B): a 2-row forward of [last emitted, draft] that
    /// snapshots the GDN states after row 0, the greedy accept test, and the MTP head on both
    /// rows; all in one submission, reading back 4 ids. On rejection the KV caches are trimmed
    /// (positions) and the GDN states roll back to their snapshots before the next forward.
    pub async fn mtp_verify(&mut self) -> Result<MtpStep, RunError> {
        self.mtp_submit_verify()?;
        self.mtp_read_verify().await
    }

    /// MTP verifies submitted and not read, or a verify body waiting for its heads:
    /// [`Session::settle`] first.
    pub(crate) fn unsettled(&self) -> bool {
        self.pending_verifies() > 0 || self.verify_body.is_some()
    }

    /// Verify iterations submitted and not read yet.
    pub fn pending_verifies(&self) -> usize {
        self.pending
            .iter()
            .filter(|p| p.2 == Pending::Verify)
            .count()
    }

    /// Submits a verify iteration (see [`Session::mtp_verify`]); read its outcome with
    /// [`Session::mtp_read_verify`]. Verifies can be queued while earlier ones are still
    /// unread (greedy ones, and sampled ones where [`Session::mtp_queues`]): each iteration ends
    /// by advancing the next one's positions on the GPU and flagging the GDN rollback there
    /// (`Step::rollback`: the kernels start from the snapshots), so the GPU never waits for the
    /// host between iterations.
    pub fn mtp_submit_verify(&mut self) -> Result<(), RunError> {
        if self.verify_body.is_some() {
            return self.mtp_submit_heads();
        }
        let queued = self.pending_verifies() as u32;
        if queued > 0 && !self.mtp_queues() {
            return Err(RunError::Sampling(
                "these sampled MTP verifies cannot be queued (token masks, or the MTP head on \
                 both rows): read the pending one first"
                    .into(),
            ));
        }
        self.submit_verify_parts(true, true)
    }

    /// The first half of [`Session::mtp_submit_verify`]: submits the next verify's body (the
    /// 2-row forward of [last emitted, draft], the ids and positions as the iteration before it
    /// leaves them on the GPU) without its heads, which [`Session::mtp_submit_heads`] submits
    /// later. So whatever decides how the heads choose (token masks per row,
    /// [`Session::set_token_masks`], which need the previous iteration's tokens and draft) can
    /// wait for the previous iteration to be read while the GPU runs the body: the same kernels
    /// in the same order as one submission, so the same bits. Sampled iterations that cannot be
    /// queued whole ([`Session::mtp_queues`]) too (their heads wait for the previous one to be
    /// read, not their bodies).
    pub fn mtp_submit_body_ahead(&mut self) -> Result<(), RunError> {
        if self.verify_body.is_some() {
            return Err(RunError::Busy(
                "a verify body is already waiting for its heads".into(),
            ));
        }
        self.submit_verify_parts(true, false)
    }

    /// Submits the heads of the verify body submitted by [`Session::mtp_submit_body_ahead`] (as
    /// the session's sampling and masks are set now); the iteration is then pending as one from
    /// [`Session::mtp_submit_verify`]. Sampled heads need the iteration before them read first.
    pub fn mtp_submit_heads(&mut self) -> Result<(), RunError> {
        if self.verify_body.is_none() {
            return Err(RunError::NothingPending);
        }
        if self.sampling && self.pending_verifies() > 0 {
            return Err(RunError::Sampling(
                "sampled MTP heads need the iteration before them read first".into(),
            ));
        }
        self.submit_verify_parts(false, true)
    }

    fn submit_verify_parts(&mut self, body: bool, heads: bool) -> Result<(), RunError> {
        if !self.mtp_available() {
            return Err(RunError::Load(LoadError::Unsupported(
                "this session has no usable MTP head".into(),
            )));
        }
        let gpu = self.model.gpu.clone();
        let md = gpu.caps.max_workgroups_per_dim;
        let shape = match (body, self.verify_body) {
            (false, Some(shape)) => shape,
            (false, None) => return Err(RunError::NothingPending),
            (true, _) => {
                let queued = self.pending_verifies() as u32;
                if queued >= 2 {
                    return Err(RunError::Busy("two MTP verifies are already queued".into()));
                }
                // Worst case: every queued iteration accepts.
                let needed = self.state.pos + 2 * (queued + 1);
                if needed > self.state.max_ctx {
                    return Err(RunError::ContextFull {
                        needed,
                        max: self.state.max_ctx,
                    });
                }
                let force = match &mut self.force_accept {
                    Some((rate, rng)) => {
                        *rng = rng
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        if ((*rng >> 11) as f64 / (1u64 << 53) as f64) < *rate {
                            2
                        } else {
                            1
                        }
                    }
                    None => 0,
                };
                if queued == 0 {
                    // The host knows the state: it writes both slots and applies a pending
                    // rollback.
                    self.pending.clear();
                    self.write_step(
                        0,
                        Step {
                            n_tokens: 2,
                            pos: self.state.pos,
                            n_confirmed: 1,
                            n_out: 2,
                            force: 0,
                            rollback: 0,
                            ..Default::default()
                        },
                    );
                    self.write_step(
                        1,
                        Step {
                            n_tokens: 2,
                            pos: self.state.mtp_pos,
                            n_confirmed: 0,
                            n_out: 2,
                            force,
                            rollback: 0,
                            ..Default::default()
                        },
                    );
                } else {
                    // The previous iteration advances the positions and flags the rollback on
                    // the GPU; only the benchmark's forced decision comes from here.
                    let off = slot_offset(&gpu, 1) + std::mem::offset_of!(Step, force) as u64;
                    gpu.queue
                        .write_buffer(&self.step_buf.buf, off, bytemuck::bytes_of(&force));
                }
                StepShape {
                    n_tokens: 2,
                    n_out: 2,
                    keys: self.state.pos + 1,
                }
            }
        };
        // (A rollback the host knows about goes in front of the body.)
        let mut enc = self.encoder("mtp verify");
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("mtp iteration"),
                timestamp_writes: None,
            });
            if body {
                self.small.record(&mut pass, shape, md);
            }
            if heads {
                self.record_heads(&mut pass, shape, false);
            }
        }
        if heads {
            let slot = self.free_slot();
            self.ids_readback[slot].copy_from(&mut enc, &self.ws.result.buf, 0, 16);
            let index = gpu.queue.submit([enc.finish()]);
            self.pending.push_back((slot, index, Pending::Verify));
            self.verify_body = None;
        } else {
            gpu.queue.submit([enc.finish()]);
            self.verify_body = Some(shape);
        }
        Ok(())
    }

    /// The outcome of the oldest submitted verify (waits for that iteration only).
    pub async fn mtp_read_verify(&mut self) -> Result<MtpStep, RunError> {
        match self.pending.front() {
            Some(p) if p.2 == Pending::Verify => {}
            _ => return Err(RunError::NothingPending),
        }
        let Some((slot, index, _)) = self.pending.pop_front() else {
            return Err(RunError::NothingPending);
        };
        let b = self.ids_readback[slot]
            .read(&self.model.gpu, 16, Some(index))
            .await?;
        let r: Vec<u32> = bytemuck::pod_collect_to_vec(&b);
        let accepted = r[2] == 1;
        let adv = if accepted { 2 } else { 1 };
        self.state.pos += adv;
        self.state.mtp_pos += adv;
        // A queued iteration (or body) already started from the snapshots (GPU flag); otherwise
        // the next submission applies the rollback.
        self.rollback_pending = !accepted && self.pending.is_empty() && self.verify_body.is_none();
        self.draft_row = if accepted { 1 } else { 0 };
        Ok(MtpStep {
            verified: r[0],
            bonus: r[1],
            accepted,
            draft: r[3],
        })
    }

    /// Reads every submitted and unread step (discarding their choices), so the host's view of
    /// the state (positions, pending rollback) is exact again. Plain steps need nothing: their
    /// positions count from submission.
    pub async fn settle(&mut self) -> Result<(), RunError> {
        loop {
            while let Some(p) = self.pending.front() {
                if p.2 == Pending::Verify {
                    self.mtp_read_verify().await?;
                } else {
                    self.pending.pop_front();
                }
            }
            // A verify body without its heads: they run (as set now) and are read too.
            if self.verify_body.is_none() {
                return Ok(());
            }
            self.mtp_submit_heads()?;
        }
    }

    /// Records backbone + head + accept + MTP front + MTP head + select in one compute pass.
    fn record_iteration(&self, enc: &mut wgpu::CommandEncoder, shape: StepShape, first: bool) {
        let md = self.model.gpu.caps.max_workgroups_per_dim;
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("mtp iteration"),
            timestamp_writes: None,
        });
        if shape.n_tokens == 1 {
            &self.single
        } else {
            &self.small
        }
        .record(&mut pass, shape, md);
        self.record_heads(&mut pass, shape, first);
    }

    /// Everything of an MTP iteration after the backbone's body: the target's head and accept
    /// test, the MTP front and head (the next draft), select, and (not first) advance.
    fn record_heads(&self, pass: &mut wgpu::ComputePass<'_>, shape: StepShape, first: bool) {
        let md = self.model.gpu.caps.max_workgroups_per_dim;
        let Some(m) = &self.mtp else { return };
        // The MTP head's rows: the one the next draft comes from, or both.
        let head_shape = StepShape {
            n_out: if m.head_one_row { 1 } else { shape.n_out },
            ..shape
        };
        if !self.sampling {
            self.head.record(pass, shape, md);
            if first { &m.first } else { &m.verify }.record(pass, shape, md);
            m.front_small.record(pass, shape, md);
            m.head.record(pass, head_shape, md);
        } else {
            if first {
                // The first token is an ordinary draw from the target (committed to the history).
                self.head_sample.record(pass, shape, md);
                m.first.record(pass, shape, md);
            } else {
                m.target_sample.record(pass, shape, md);
                // The draft's q is in row 0 when the head ran on its one row.
                let row = if m.head_one_row { 0 } else { self.draft_row };
                m.accept[row as usize].record(pass, shape, md);
                m.sampled.record(pass, shape, md);
            }
            m.front_small.record(pass, shape, md);
            m.head_sampled.record(pass, head_shape, md);
        }
        m.select.record(pass, shape, md);
        if !first {
            m.advance.record(pass, shape, md);
        }
    }

    async fn read_result(&mut self) -> Result<[u32; 4], RunError> {
        let b = self.ids_readback[0].read(&self.model.gpu, 16, None).await?;
        let v: Vec<u32> = bytemuck::pod_collect_to_vec(&b);
        Ok([v[0], v[1], v[2], v[3]])
    }

    /// The MTP head's logits of its first out row from the last MTP call (tests and debugging;
    /// the token loop never reads logits back). After a greedy verify that row is the one the
    /// draft came from (row `accept` of the verify) unless the head runs on both rows
    /// ([`SessionOptions::mtp_head_one_row`]); see [`Session::mtp_logits_row`].
    pub async fn mtp_logits(&self) -> Result<Vec<f32>, RunError> {
        self.mtp_logits_row(0).await
    }

    /// The MTP head's logits of out row `row` (0 or 1) from the last MTP call (tests).
    pub async fn mtp_logits_row(&self, row: u32) -> Result<Vec<f32>, RunError> {
        let v = self.model.config.vocab_size;
        Ok(self
            .model
            .gpu
            .read_f32(&self.ws.mtp_logits.buf, row.min(1) as u64 * v as u64 * 4, v)
            .await?)
    }

    /// Times the pieces of a decode step on the GPU (benchmarks): a 1-token forward with its
    /// head, a 2-token verify with both heads, and an MTP step (input and layer over 2 rows, head
    /// on the one row a draft comes from),
    /// each recorded `reps` times into one pass after a warm-up. Seconds per piece: GPU time
    /// between the pass's first and last timestamps where the device has timestamp queries (the
    /// host's recording of the pass does not count), else the wall time of the submission
    /// (recording included). The state is scratched: reset the session afterwards.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&mut self, reps: u32) -> Result<(f64, f64, Option<f64>), RunError> {
        let gpu = self.model.gpu.clone();
        let md = gpu.caps.max_workgroups_per_dim;
        let reps = reps.max(1);
        let pos = self.state.pos.min(self.state.max_ctx.saturating_sub(3));
        self.write_step(
            0,
            Step {
                n_tokens: 1,
                pos,
                n_confirmed: 0,
                n_out: 1,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let stamps = crate::gpu::timer::Timestamps::new(&gpu, "profile", 2);
        let time = |plans: &[(&Plan, StepShape)], reps: u32| -> Result<f64, RunError> {
            let run =
                |n: u32, stamp: bool| {
                    let mut enc =
                        gpu.device
                            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                                label: Some("profile"),
                            });
                    let writes = stamps.as_ref().filter(|_| stamp).map(|t| {
                        wgpu::ComputePassTimestampWrites {
                            query_set: &t.set,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        }
                    });
                    {
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("profile"),
                            timestamp_writes: writes,
                        });
                        for _ in 0..n {
                            for (p, shape) in plans {
                                p.record(&mut pass, *shape, md);
                            }
                        }
                    }
                    if let (Some(t), true) = (&stamps, stamp) {
                        t.resolve(&mut enc, 2);
                    }
                    gpu.queue.submit([enc.finish()]);
                    gpu.wait();
                };
            run(2, false);
            let t0 = std::time::Instant::now();
            run(reps, true);
            let wall = t0.elapsed().as_secs_f64() / reps as f64;
            match &stamps {
                Some(t) => {
                    let s = t.seconds(&gpu, 2)?;
                    Ok((s[1] - s[0]).max(0.0) / reps as f64)
                }
                None => Ok(wall),
            }
        };
        let shape1 = StepShape {
            n_tokens: 1,
            n_out: 1,
            keys: pos + 1,
        };
        let one = time(&[(&self.single, shape1), (&self.head, shape1)], reps)?;
        self.write_step(
            0,
            Step {
                n_tokens: 2,
                pos,
                n_confirmed: 1,
                n_out: 2,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let shape2 = StepShape {
            n_tokens: 2,
            n_out: 2,
            keys: pos + 1,
        };
        let two = time(&[(&self.small, shape2), (&self.head, shape2)], reps)?;
        let mtp = match &self.mtp {
            Some(m) => {
                self.write_step(
                    1,
                    Step {
                        n_tokens: 2,
                        pos,
                        n_confirmed: 0,
                        n_out: 2,
                        force: 0,
                        rollback: 0,
                        ..Default::default()
                    },
                );
                // The head on row 1 alone, as after an accepted draft.
                let head_step = Step {
                    n_tokens: 2,
                    n_out: 1,
                    ..Default::default()
                };
                gpu.queue
                    .write_buffer(&self.head_step_buf.buf, 0, bytemuck::bytes_of(&head_step));
                Some(time(
                    &[
                        (&m.front_small, shape2),
                        (
                            &m.head,
                            StepShape {
                                n_out: if m.head_one_row { 1 } else { 2 },
                                ..shape2
                            },
                        ),
                    ],
                    reps,
                )?)
            }
            None => None,
        };
        gpu.take_error()?;
        Ok((one, two, mtp))
    }

    /// Times every dispatch of a `tokens`-token forward with its head (1: a decode step, 2: a
    /// verify; more: a prompt chunk of that many tokens, at most the prefill chunk, without the
    /// MTP head's part) inside one pass (benchmarks): a timestamp before the first dispatch and after
    /// each, the step recorded `reps` times in turn (each in its own submission after a
    /// warm-up). Returns each recorded dispatch's label and its mean GPU seconds from the end of
    /// the previous dispatch to its own end (so the boundary between two dispatches counts to
    /// the second), in step order; `None` where the device cannot write timestamps inside a
    /// pass. The state is scratched: reset the session afterwards.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile_dispatches(
        &mut self,
        tokens: u32,
        reps: u32,
    ) -> Result<Option<Vec<(String, f64)>>, RunError> {
        use crate::gpu::timer::Timestamps;
        let gpu = self.model.gpu.clone();
        if !Timestamps::inside_passes(&gpu) {
            return Ok(None);
        }
        let md = gpu.caps.max_workgroups_per_dim;
        let prompt = tokens > 2;
        let t = if prompt {
            tokens.min(self.opts.prefill_chunk)
        } else {
            tokens.clamp(1, 2)
        };
        let n_out = if prompt { 1 } else { t };
        let pos = self.state.pos.min(self.state.max_ctx.saturating_sub(t + 1));
        self.write_step(
            0,
            Step {
                n_tokens: t,
                pos,
                n_confirmed: if t == 2 && !prompt { 1 } else { 0 },
                n_out,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let shape = StepShape {
            n_tokens: t,
            n_out,
            keys: pos + 1,
        };
        let plans: Vec<&Plan> = match t {
            _ if prompt => vec![&self.prefill],
            1 => vec![&self.single, &self.head],
            _ => vec![&self.small, &self.head],
        };
        let recorded: Vec<&crate::gpu::plan::Dispatch> = plans
            .iter()
            .flat_map(|p| p.dispatches.iter())
            .filter(|d| d.grid.counts(shape, md)[2] > 0)
            .collect();
        let n = recorded.len() as u32 + 1;
        let Some(stamps) = Timestamps::new(&gpu, "profile dispatches", n) else {
            return Ok(None);
        };
        if stamps.capacity() < n {
            return Ok(None);
        }
        let mut sums = vec![0.0f64; recorded.len()];
        let reps = reps.max(1);
        for rep in 0..=reps {
            let mut enc = gpu
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("profile dispatches"),
                });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("profile dispatches"),
                    timestamp_writes: None,
                });
                pass.write_timestamp(&stamps.set, 0);
                for (i, d) in recorded.iter().enumerate() {
                    d.record(&mut pass, shape, md);
                    pass.write_timestamp(&stamps.set, i as u32 + 1);
                }
            }
            stamps.resolve(&mut enc, n);
            gpu.queue.submit([enc.finish()]);
            let s = stamps.seconds(&gpu, n)?;
            // The first round warms up.
            if rep > 0 {
                for (i, sum) in sums.iter_mut().enumerate() {
                    *sum += (s[i + 1] - s[i]).max(0.0);
                }
            }
        }
        gpu.take_error()?;
        Ok(Some(
            recorded
                .iter()
                .zip(sums)
                .map(|(d, sum)| (d.label.clone(), sum / reps as f64))
                .collect(),
        ))
    }

    /// Applies a pending GDN rollback now (so `read_state` and callers see a consistent state).
    pub fn flush(&mut self) {
        if self.rollback_pending {
            let enc = self.encoder("rollback");
            self.model.gpu.queue.submit([enc.finish()]);
        }
    }

    /// Feeds `ids` (any length) and returns the choice (greedy or sampled) after the last one.
    pub async fn forward_greedy(&mut self, ids: &[u32]) -> Result<u32, RunError> {
        self.feed(ids).await?;
        self.next_id().await
    }

    /// Feeds `ids` (any length): all but the last in prompt chunks, the last alone with the head,
    /// so its choice is pending (read it with [`Session::next_id`]).
    pub async fn feed(&mut self, ids: &[u32]) -> Result<(), RunError> {
        if ids.is_empty() {
            return Err(RunError::Empty);
        }
        self.check_ids(ids)?;
        let (head, last) = ids.split_at(ids.len() - 1);
        if !head.is_empty() {
            self.prefill(head).await?;
        }
        self.submit(Some(last), 1, true)
    }

    /// Feeds the id chosen by the previous step (already on the GPU) and returns the next choice.
    pub async fn decode_greedy(&mut self) -> Result<u32, RunError> {
        self.decode_ahead()?;
        self.next_id().await
    }

    /// Submits a decode step that feeds the id chosen by the step before it, without waiting for
    /// that id to be read: the GPU works on it while the host reads and handles the previous
    /// choice. Its choice is pending until [`Session::next_id`] reads it (oldest first).
    pub fn decode_ahead(&mut self) -> Result<(), RunError> {
        self.submit(None, 1, true)
    }

    /// The first half of [`Session::decode_ahead`]: submits the body of the step that feeds the
    /// id chosen by the step before it (embedding and layers, the 1-token decode kernels), without
    /// its head. [`Session::decode_head`] submits the head later, so whatever decides how the
    /// head chooses (a token mask, [`Session::set_token_mask`]) can wait for the previous id while
    /// the GPU runs the body. The two halves run the same kernels as one `decode_ahead`, so the
    /// same bits. Any other submission in between forgets the head (the body stays fed).
    pub fn decode_body_ahead(&mut self) -> Result<(), RunError> {
        let shape = self.submit_rows(None, 1, 0, false)?;
        self.headless = Some(shape);
        Ok(())
    }

    /// Feeds 1 or 2 forced ids (a constraint allowed only that id at its position, so the host
    /// knew it without a head choosing it) at the current position with the decode kernels, after
    /// any body submitted ahead: each row's state and logits have the bits of one 1-token step per
    /// id (the kernels are batch invariant), and the sampler's history takes the ids and their
    /// draws as the skipped heads would have. With `head`, the head chooses after the last id and
    /// the choice is pending as a step's. So a run of forced tokens costs a forward per two ids
    /// and no readback, and later choices are those of step-by-step decoding, bit for bit
    /// (logprobs of the forced ids are not computed: callers that read them feed step by step).
    pub fn feed_forced(&mut self, ids: &[u32], head: bool) -> Result<(), RunError> {
        if ids.is_empty() {
            return Err(RunError::Empty);
        }
        if ids.len() > 2 {
            return Err(RunError::Busy(format!(
                "the decode kernels take at most 2 ids per forward, not {}",
                ids.len()
            )));
        }
        self.check_ids(ids)?;
        self.submit_rows_with(Some(ids), ids.len() as u32, u32::from(head), false, true)
            .map(|_| ())
    }

    /// Whether per-token logprobs are read back (then every step runs its head).
    pub fn reads_logprobs(&self) -> bool {
        self.logprobs
    }

    /// Submits the head (final norm, lm_head, argmax or the sampler as set now) of the body
    /// submitted by [`Session::decode_body_ahead`]; its choice is pending as a step's.
    pub fn decode_head(&mut self) -> Result<(), RunError> {
        let Some(shape) = self.headless.take() else {
            return Err(RunError::NothingPending);
        };
        self.check_no_verify()?;
        let slot = self.choice_slot();
        let gpu = self.model.gpu.clone();
        let mut enc = self.encoder("head");
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("head"),
                timestamp_writes: None,
            });
            let head = if self.sampling {
                &self.head_sample
            } else {
                &self.head
            };
            head.record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
        }
        self.record_choice_copies(&mut enc, slot);
        let index = gpu.queue.submit([enc.finish()]);
        self.pending.push_back((slot, index, Pending::Id));
        Ok(())
    }

    /// Steps whose choices are not read yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether `n` more positions fit in the context.
    pub fn has_room(&self, n: u32) -> bool {
        self.state.pos + n <= self.state.max_ctx
    }

    /// Forgets the choices of plain steps submitted ahead and not read. Those steps stay fed:
    /// the state holds one token more than was read (the last token returned by
    /// [`Session::next_id`] before this call), and [`Session::pos`] counts it. (Unread MTP
    /// verifies are kept: [`Session::settle`] reads them.)
    pub fn discard_pending(&mut self) {
        self.pending.retain(|p| p.2 == Pending::Verify);
    }

    /// The choice of the oldest pending step (waits for that step only, not for later ones).
    pub async fn next_id(&mut self) -> Result<u32, RunError> {
        match self.pending.front() {
            Some(p) if p.2 == Pending::Id => {}
            _ => return Err(RunError::NothingPending),
        }
        let Some((slot, index, _)) = self.pending.pop_front() else {
            return Err(RunError::NothingPending);
        };
        let with_lp = self.sampling && self.logprobs;
        let n = if with_lp {
            16 + RESULT_WORDS as u64 * 4
        } else {
            4
        };
        let b = self.ids_readback[slot]
            .read(&self.model.gpu, n, Some(index))
            .await?;
        if with_lp {
            let words: Vec<u32> = bytemuck::pod_collect_to_vec(&b[16..]);
            self.last_result = parse_results(&words, 1).into_iter().next();
        }
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Feeds `ids` (at most 2 rows, as an MTP verify) in one call and returns the logits of
    /// every row, [ids.len(), vocab].
    pub async fn forward_rows_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>, RunError> {
        if ids.is_empty() {
            return Err(RunError::Empty);
        }
        self.check_ids(ids)?;
        let n = ids.len().min(self.ws.max_out as usize) as u32;
        let (head, tail) = ids.split_at(ids.len() - n as usize);
        if !head.is_empty() {
            self.prefill(head).await?;
        }
        self.submit_rows(Some(tail), n, n, false)?;
        let v = self.model.config.vocab_size;
        Ok(self
            .model
            .gpu
            .read_f32(&self.ws.logits.buf, 0, n as usize * v)
            .await?)
    }

    /// The sequence state copied to the host: the KV rows in use, the recurrent states, the MTP
    /// cache and the positions ([`SavedState`]; [`SavedState::to_bytes`] writes it out). Steps
    /// already submitted are part of it (plain steps whose ids are unread stay readable); unread
    /// MTP verifies are not allowed ([`Session::settle`] first). Restore it with
    /// [`Session::restore`], then feed the next ids.
    pub async fn save(&mut self) -> Result<SavedState, RunError> {
        if self.unsettled() {
            return Err(RunError::Busy(
                "MTP verifies are still unread: settle the session before saving it".into(),
            ));
        }
        self.flush();
        let gpu = self.model.gpu.clone();
        let entries = self.state.entries();
        let largest = entries.iter().map(|e| e.used).max().unwrap_or(0);
        let rb = Readback::new(&gpu, "state save", largest);
        let mut buffers = Vec::with_capacity(entries.len());
        for e in entries {
            let data = if e.used == 0 {
                Vec::new()
            } else {
                let mut enc = gpu
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                        label: Some("state save"),
                    });
                rb.copy_from(&mut enc, &e.buf.buf, 0, e.used);
                let index = gpu.queue.submit([enc.finish()]);
                rb.read(&gpu, e.used, Some(index)).await?
            };
            buffers.push(SavedBuffer { name: e.name, data });
        }
        Ok(SavedState {
            config_crc: config_crc(&self.model.config),
            model_type: self.model.config.model_type.clone(),
            pos: self.state.pos,
            mtp_pos: self.state.mtp_pos,
            mtp_synced: self.mtp_synced,
            tokens: Vec::new(),
            mtp_next: None,
            buffers,
        })
    }

    /// Replaces this session's sequence state with `saved` (from [`Session::save`] of a session
    /// of the same model; its context may differ if the positions fit). Unread steps are
    /// forgotten. Nothing is changed when `saved` does not fit.
    pub fn restore(&mut self, saved: &SavedState) -> Result<(), RunError> {
        let crc = config_crc(&self.model.config);
        if saved.config_crc != crc {
            return Err(StateError::Mismatch(format!(
                "saved from another model ({}, configuration {:08x}; this session's is {:08x})",
                saved.model_type, saved.config_crc, crc
            ))
            .into());
        }
        self.check_holds(saved.pos.max(saved.mtp_pos))?;
        let names: Vec<(String, u64)> = saved
            .buffers
            .iter()
            .map(|b| (b.name.clone(), b.data.len() as u64))
            .collect();
        self.state.check_fits(&names)?;
        let gpu = self.model.gpu.clone();
        for (e, b) in self.state.entries().into_iter().zip(&saved.buffers) {
            if !b.data.is_empty() {
                gpu.queue.write_buffer(&e.buf.buf, 0, &b.data);
            }
        }
        self.state.pos = saved.pos;
        self.state.mtp_pos = saved.mtp_pos;
        self.took_state(saved.mtp_synced)
    }

    /// A state of `held` positions fits this session's context.
    fn check_holds(&self, held: u32) -> Result<(), RunError> {
        if held > self.state.max_ctx {
            return Err(RunError::ContextFull {
                needed: held,
                max: self.state.max_ctx,
            });
        }
        Ok(())
    }

    /// After the state was replaced (restore or copy): unread steps, a pending rollback and the
    /// last logprobs belong to the old sequence.
    fn took_state(&mut self, mtp_synced: bool) -> Result<(), RunError> {
        self.mtp_synced = mtp_synced;
        self.pending.clear();
        self.headless = None;
        self.rollback_pending = false;
        self.last_result = None;
        self.model.gpu.take_error()?;
        Ok(())
    }

    /// Makes this session's sequence state a copy of `other`'s, on the GPU (both sessions of the
    /// same model). `other` must have no unread MTP verifies; this session's unread steps are
    /// forgotten.
    pub fn copy_state_from(&mut self, other: &mut Session) -> Result<(), RunError> {
        if other.unsettled() {
            return Err(RunError::Busy(
                "the source session has unread MTP verifies: settle it first".into(),
            ));
        }
        let (a, b) = (
            config_crc(&self.model.config),
            config_crc(&other.model.config),
        );
        if a != b {
            return Err(StateError::Mismatch(format!(
                "the sessions run different models (configurations {b:08x} and {a:08x})"
            ))
            .into());
        }
        self.check_holds(other.state.pos.max(other.state.mtp_pos))?;
        other.flush();
        self.headless = None;
        let gpu = self.model.gpu.clone();
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("state copy"),
            });
        self.state.record_copy_from(&other.state, &mut enc)?;
        gpu.queue.submit([enc.finish()]);
        self.took_state(other.mtp_synced)
    }

    /// A new session on the same model and sizes holding a copy of this one's sequence state
    /// (see [`Session::copy_state_from`]); sampling settings start at greedy.
    pub async fn fork(&mut self) -> Result<Session, RunError> {
        let mut s = Session::new(self.model.clone(), self.opts).await?;
        s.copy_state_from(self)?;
        Ok(s)
    }

    /// Reads every state buffer back (KV rows beyond `pos` included), for tests and debugging.
    pub async fn read_state(&mut self) -> Result<Vec<Vec<f32>>, RunError> {
        self.flush();
        let mut out = Vec::new();
        for b in self.state.buffers() {
            out.push(
                self.model
                    .gpu
                    .read_f32(&b.buf, 0, (b.size / 4) as usize)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Feeds `ids` and returns the logits after the last one (a caller that asks for logits;
    /// the token loop never reads them back).
    pub async fn forward_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>, RunError> {
        if ids.is_empty() {
            return Err(RunError::Empty);
        }
        self.check_ids(ids)?;
        let (head, last) = ids.split_at(ids.len() - 1);
        if !head.is_empty() {
            self.prefill(head).await?;
        }
        self.submit(Some(last), 1, true)?;
        let v = self.model.config.vocab_size;
        Ok(self.model.gpu.read_f32(&self.ws.logits.buf, 0, v).await?)
    }
}
