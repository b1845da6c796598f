//! Several independent sequences decoded together: one forward call whose rows are different
//! streams, so every weight byte read by a step serves all of them.
//!
//! A [`Batch`] owns a state of `slots` sequences side by side ([`State::with_slots`]) and a
//! decode plan whose state kernels run in their `STREAMS` form: row t of a call is stream t, at
//! its own position, reading and updating slot t (attention prep and attention over slot t's KV
//! rows, the conv and recurrence on slot t's Gated-DeltaNet state). Everything else (embedding,
//! every matmul with its epilogues, norms, lm_head) is row-local already. The matmuls run their
//! 2-, 3- or 4-token decode tile for a step of that many rows, whose rows are computed with the
//! arithmetic of the 1-token tile, and the state kernels give each row the bits
//! of a one-row call, so a stream's logits and tokens are those of the same sequence decoded
//! alone in a [`Session`], bit for bit (tested).
//!
//! Sequences enter through a session: prefill the prompt there (all but its last id), then
//! [`Batch::admit`] copies the session's state into a free slot on the GPU; the batch then
//! decodes it with the others, greedy or sampled with the slot's own sampler
//! ([`Batch::set_sampling`]). A slot is freed by [`Batch::release`]. A step runs the rows up
//! to the last occupied slot (one to four, each count its own plan); a free slot's row among them
//! still runs (on its own slot, so it disturbs nothing) and its output is ignored.

use std::sync::Arc;

use crate::decode::sampler::SamplingParams;
use crate::error::LoadError;
use crate::gpu::readback::Readback;
use crate::gpu::{GpuBuffer, Plan, Step, StepShape, StepSlot};
use crate::model::forward::{Builder, Workspace};
use crate::model::session::{plain_greedy, Model, RunError, Session};
use crate::ops::matmul::{MT_FOUR, MT_ONE, MT_SMALL, MT_THREE};
use crate::ops::sample::{parse_results, RowResult, SampleIo, Sampler, RESULT_WORDS};
use crate::state::{config_crc, State, StateError};

/// Streams one batch decodes together at most: the largest decode matmul tile's rows (the 2-, 3-
/// and 4-token tiles compute each row with the arithmetic of the 1-token tile, so batched rows
/// keep a lone sequence's bits).
pub const MAX_BATCH: u32 = MT_FOUR;

/// Where a readback holds the slots' sampler results (after the step's ids), and each one's size.
const RESULTS_AT: u64 = 4 * MAX_BATCH as u64;
const RESULT_BYTES: u64 = RESULT_WORDS as u64 * 4;

/// How a [`Batch`] is built.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Streams decoded together (1 to [`MAX_BATCH`]).
    pub slots: u32,
    /// Positions each stream's slot holds.
    pub max_ctx: u32,
    /// KV caches in f16 (the admitted sessions' caches must be too).
    pub kv_f16: bool,
    /// Attention's split pass for the decode rows (the same bits either way; `None`: the
    /// device's default, as for sessions).
    pub attn_split: Option<bool>,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            slots: MAX_BATCH,
            max_ctx: 4096,
            kv_f16: false,
            attn_split: None,
        }
    }
}

/// Independent sequences decoded in one forward call per step (see the module docs).
pub struct Batch {
    pub model: Arc<Model>,
    opts: BatchOptions,
    ws: Workspace,
    state: State,
    step_buf: GpuBuffer,
    /// Embedding and layers, the state kernels in their streams form (2-token tiles: steps of
    /// two rows).
    body: Plan,
    /// The same with the 3-token tiles, for steps of three rows (batches of more than two
    /// slots: the 4-token tile would run a fourth row's products for nothing).
    body_three: Option<Plan>,
    /// The same with the 4-token tiles, for steps of four rows (batches of four slots).
    body_four: Option<Plan>,
    /// The same with the 1-token decode tiles, for steps of slot 0 alone (one row: a lone
    /// stream decodes at a plain session's speed; the tiles give a row the same bits).
    body_one: Plan,
    /// Final norm, lm_head and argmax of every row.
    head: Plan,
    /// Final norm and lm_head of every row (logits only).
    head_logits: Plan,
    /// Final norm, lm_head and each slot's sampler on its row (steps where a slot samples).
    head_sample: Plan,
    /// One sampler per slot (parameters, penalty history and draws of its stream), on step
    /// slot 1 + t of the step buffer (one row each).
    samplers: Vec<Sampler>,
    /// The slot's stream samples (or applies penalties or bias) rather than taking the argmax.
    sampled: Vec<bool>,
    /// The slot's next choices are limited by a token mask ([`Batch::set_token_mask`]).
    masked: Vec<bool>,
    /// The slot's choices come with their logprobs ([`Batch::set_logprobs`]).
    logprobs: Vec<bool>,
    /// The logprobs of each slot's choice in the step read last (slots that read them).
    last_results: Vec<Option<RowResult>>,
    /// A step whose body was submitted and whose head waits ([`Batch::submit_body`]): its shape
    /// and the slots that held a sequence then.
    body_only: Option<(StepShape, Vec<bool>)>,

    /// Position of each slot's sequence (tokens its state holds once every submitted step has
    /// run); `None` = free.
    pos: Vec<Option<u32>>,
    /// The slot's next id is its last step's choice, already on the GPU (steps copy
    /// their choices into the next step's ids).
    chained: Vec<bool>,
    /// Two readbacks, so a step can be submitted while the one before it is being read.
    readback: [Readback; 2],
    /// Submitted steps not read yet, oldest first: (readback, submission, the slots
    /// that held a sequence then, the slots whose logprobs it copied).
    pending: std::collections::VecDeque<(usize, wgpu::SubmissionIndex, Vec<bool>, Vec<bool>)>,
    /// The pieces a sequence moves through from one slot to another ([`Batch::relocate`]).
    move_scratch: GpuBuffer,
}

/// Largest piece of a slot's state [`Batch::relocate`] copies at once.
const MOVE_PIECE: u64 = 16 << 20;

impl Batch {
    pub async fn new(model: Arc<Model>, opts: BatchOptions) -> Result<Batch, LoadError> {
        if opts.slots == 0 || opts.slots > MAX_BATCH {
            return Err(LoadError::Unsupported(format!(
                "a batch of {} streams: 1 to {MAX_BATCH} are supported",
                opts.slots
            )));
        }
        let gpu = model.gpu.clone();
        let cfg = &model.config;
        let max_ctx = opts.max_ctx.max(1);
        let attn_split = opts
            .attn_split
            .unwrap_or_else(|| crate::ops::attention::split_by_default(&gpu));
        let ws = Workspace::new(&gpu, cfg, MAX_BATCH, MAX_BATCH, false)?;
        let state = State::with_slots(&gpu, cfg, max_ctx, false, opts.kv_f16, opts.slots)?;
        let move_scratch = gpu.storage("batch.move", MOVE_PIECE)?;
        // Step slot 0: the batch's call; slot 1 + t: the call as slot t's sampler sees it (one
        // out row, its own).
        let align = gpu.caps.storage_align.max(256);
        let step_buf = gpu.storage("batch.step", align * (1 + opts.slots as u64))?;
        let scope = gpu.scope("building the batch's plans");
        let b = Builder {
            gpu: &gpu,
            cfg,
            w: &model.weights,
            ws: &ws,
            step: StepSlot {
                buf: &step_buf,
                offset: 0,
            },
            mt: MT_SMALL,
            max_ctx,
            x: &ws.x,
            // As a plain session's decode (row 0 of its verify tile equals its 1-token tile).
            fold_norms: true,
            attn_split,
            streams: opts.slots,
        };
        let body = b.body(&state).await?;
        let body_one = Builder { mt: MT_ONE, ..b }.body(&state).await?;
        let body_three = if opts.slots >= MT_THREE {
            Some(Builder { mt: MT_THREE, ..b }.body(&state).await?)
        } else {
            None
        };
        let body_four = if opts.slots >= MT_FOUR {
            Some(Builder { mt: MT_FOUR, ..b }.body(&state).await?)
        } else {
            None
        };
        let head = b.head().await?;
        let head_logits = b.head_logits().await?;
        let mut head_sample = b.head_logits().await?;
        let mut samplers = Vec::with_capacity(opts.slots as usize);
        for t in 0..opts.slots {
            let sampler = Sampler::new(&gpu, cfg.vocab_size as u32, 1).await?;
            let io = SampleIo {
                id_offset: t,
                logit_row: t,
                commit: true,
                ..Default::default()
            };
            let slot = StepSlot {
                buf: &step_buf,
                offset: align * (1 + t as u64),
            };
            head_sample.extend_vec(
                sampler
                    .dispatches_with(&gpu, &ws.logits, &ws.out_ids, slot, &io)
                    .await?,
            );
            let one = Step {
                n_tokens: 1,
                n_out: 1,
                ..Default::default()
            };
            gpu.queue
                .write_buffer(&step_buf.buf, slot.offset, bytemuck::bytes_of(&one));
            samplers.push(sampler);
        }
        scope.finish().await?;
        // The step's ids, then each slot's sampler results (its logprobs) where asked for.
        let readback = [0, 1].map(|i| {
            Readback::new(
                &gpu,
                &format!("batch ids {i}"),
                RESULTS_AT + MAX_BATCH as u64 * RESULT_BYTES,
            )
        });
        Ok(Batch {
            opts: BatchOptions {
                max_ctx,
                attn_split: Some(attn_split),
                ..opts
            },
            pos: vec![None; opts.slots as usize],
            chained: vec![false; opts.slots as usize],
            pending: Default::default(),
            model,
            ws,
            state,
            step_buf,
            body,
            body_one,
            body_three,
            body_four,
            head,
            head_logits,
            head_sample,
            samplers,
            sampled: vec![false; opts.slots as usize],
            masked: vec![false; opts.slots as usize],
            logprobs: vec![false; opts.slots as usize],
            last_results: vec![None; opts.slots as usize],
            body_only: None,
            readback,
            move_scratch,
        })
    }

    pub fn options(&self) -> BatchOptions {
        self.opts
    }

    /// Position of slot `slot`'s sequence (the tokens its state holds), `None` when free.
    pub fn pos(&self, slot: u32) -> Option<u32> {
        self.pos.get(slot as usize).copied().flatten()
    }

    /// The first free slot.
    pub fn free_slot(&self) -> Option<u32> {
        self.pos.iter().position(|p| p.is_none()).map(|i| i as u32)
    }

    /// Dispatches per step (the whole batch).
    pub fn dispatches_per_step(&self) -> usize {
        let shape = StepShape {
            n_tokens: self.opts.slots,
            n_out: self.opts.slots,
            keys: 1,
        };
        self.body.recorded(shape) + self.head.recorded(shape)
    }

    /// Bytes of GPU memory the batch's state holds.
    pub fn state_bytes(&self) -> u64 {
        self.state.bytes()
    }

    /// Copies `session`'s sequence state (KV rows in use, conv and recurrent states) into slot
    /// `slot` on the GPU; the slot's sequence then continues from the session's position. The
    /// session is left as it is. Its MTP cache, if any, is not taken (a batch decodes plainly).
    pub fn admit(&mut self, slot: u32, session: &mut Session) -> Result<(), RunError> {
        let Some(cur) = self.pos.get(slot as usize) else {
            return Err(RunError::Batch(format!(
                "no slot {slot} in a batch of {}",
                self.opts.slots
            )));
        };
        if cur.is_some() {
            return Err(RunError::Busy(format!(
                "slot {slot} holds a sequence: release it first"
            )));
        }
        if session.unsettled() {
            return Err(RunError::Busy(
                "the session has unread MTP verifies: settle it first".into(),
            ));
        }
        let (a, b) = (
            config_crc(&self.model.config),
            config_crc(&session.model.config),
        );
        if a != b {
            return Err(StateError::Mismatch(format!(
                "the session runs another model (configuration {b:08x}, the batch's {a:08x})"
            ))
            .into());
        }
        let pos = session.state.pos;
        if pos >= self.opts.max_ctx {
            return Err(RunError::ContextFull {
                needed: pos + 1,
                max: self.opts.max_ctx,
            });
        }
        // A rejected draft's rollback, if one waits, goes first.
        session.flush();
        let gpu = self.model.gpu.clone();
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("batch admit"),
            });
        self.state
            .record_copy_to_slot(slot, &session.state, &mut enc)?;
        gpu.queue.submit([enc.finish()]);
        self.pos[slot as usize] = Some(pos);
        self.chained[slot as usize] = false;
        self.logprobs[slot as usize] = false;
        self.set_sampling(slot, None, &[])
    }

    /// Moves slot `from`'s sequence into the free slot `to`: its state, position and sampler
    /// (parameters, mask, penalty history, draws) and its logprobs setting; `from` is freed. A
    /// step runs the rows up to the last occupied slot, so moving the last stream into a lower
    /// free slot spares the rows between (one stream left in slot 2 otherwise runs three rows).
    /// No step may be in flight (read them first). The stream's next id then comes from the host
    /// (its last choice, read with the last step), as after [`Batch::admit`]; it continues with
    /// the bits and tokens it would have had in its old slot.
    pub fn relocate(&mut self, from: u32, to: u32) -> Result<(), RunError> {
        if !self.pending.is_empty() || self.body_only.is_some() {
            return Err(RunError::Busy(
                "steps are still unread: read them before moving a sequence".into(),
            ));
        }
        let n = self.opts.slots;
        if from >= n || to >= n {
            return Err(RunError::Batch(format!(
                "slots {from} and {to} in a batch of {n}"
            )));
        }
        let Some(pos) = self.pos[from as usize] else {
            return Err(RunError::Batch(format!("slot {from} holds no sequence")));
        };
        if self.pos[to as usize].is_some() {
            return Err(RunError::Busy(format!(
                "slot {to} holds a sequence: release it first"
            )));
        }
        let gpu = self.model.gpu.clone();
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("batch relocate"),
            });
        self.state
            .record_move_slot(from, to, pos, &self.move_scratch, &mut enc)?;
        let (f, t) = (from as usize, to as usize);
        self.samplers[t]
            .record_copy_from(&gpu, &self.samplers[f], &mut enc)
            .map_err(|e| RunError::Sampling(e.to_string()))?;
        gpu.queue.submit([enc.finish()]);
        self.pos[t] = self.pos[f].take();
        self.chained[t] = false;
        self.chained[f] = false;
        self.sampled[t] = self.sampled[f];
        self.masked[t] = self.masked[f];
        self.logprobs[t] = self.logprobs[f];
        self.last_results[t] = None;
        Ok(())
    }

    /// How slot `slot`'s stream chooses its tokens from now on: `None` = greedy (argmax), else
    /// the GPU sampler with these parameters (temperature, filters, penalties, bias, seed),
    /// its history `history` (the stream's ids so far: the prompt, for the penalties) and its
    /// draw counter reset, as [`Session::set_sampling`] and a request's start do for a lone
    /// sequence, so the stream samples the tokens it would sample alone. Logprobs are not
    /// reported where [`Batch::set_logprobs`] asks for them. [`Batch::admit`] sets greedy,
    /// without logprobs.
    pub fn set_sampling(
        &mut self,
        slot: u32,
        p: Option<&SamplingParams>,
        history: &[u32],
    ) -> Result<(), RunError> {
        let Some(sampler) = self.samplers.get(slot as usize) else {
            return Err(RunError::Batch(format!(
                "no slot {slot} in a batch of {}",
                self.opts.slots
            )));
        };
        let p = p.cloned().unwrap_or_default();
        let gpu = &self.model.gpu;
        sampler
            .set_params(gpu, &p)
            .map_err(|e| RunError::Sampling(e.to_string()))?;
        sampler
            .reset_history(gpu, history)
            .map_err(|e| RunError::Sampling(e.to_string()))?;
        self.sampled[slot as usize] = !plain_greedy(&p, self.logprobs[slot as usize]);
        self.masked[slot as usize] = false;
        Ok(())
    }

    /// Whether slot `slot`'s choices come with their logprobs (the chosen token's and the top
    /// `top_logprobs` of its sampling parameters), read with each step
    /// ([`Batch::last_logprobs`]), as [`Session::set_sampling`] with `logprobs` gives them for a
    /// lone sequence. Off for a newly admitted sequence.
    pub fn set_logprobs(&mut self, slot: u32, on: bool) -> Result<(), RunError> {
        let Some(sampler) = self.samplers.get(slot as usize) else {
            return Err(RunError::Batch(format!(
                "no slot {slot} in a batch of {}",
                self.opts.slots
            )));
        };
        self.sampled[slot as usize] = !plain_greedy(&sampler.params(), on);
        self.logprobs[slot as usize] = on;
        Ok(())
    }

    /// The logprobs of slot `slot`'s choice in the step read last ([`Batch::read`]), where
    /// [`Batch::set_logprobs`] asked for them when that step was submitted.
    pub fn last_logprobs(&self, slot: u32) -> Option<&RowResult> {
        self.last_results.get(slot as usize)?.as_ref()
    }

    /// Limits slot `slot`'s choices in the heads submitted from now on to the tokens whose bit is
    /// set in `allowed` (bit `i % 32` of word `i / 32`, the vocabulary's words), on top of its
    /// sampling ([`Batch::set_sampling`]); `None` lifts the limit. As
    /// [`Session::set_token_mask`] for a lone sequence, so a constrained stream chooses in a batch
    /// what it chooses alone. A mask that depends on the previous choice is set between
    /// [`Batch::submit_body`] and [`Batch::submit_head`].
    pub fn set_token_mask(&mut self, slot: u32, allowed: Option<&[u32]>) -> Result<(), RunError> {
        let Some(sampler) = self.samplers.get(slot as usize) else {
            return Err(RunError::Batch(format!(
                "no slot {slot} in a batch of {}",
                self.opts.slots
            )));
        };
        let p = sampler.params();
        sampler
            .set_params_masked(&self.model.gpu, &p, allowed)
            .map_err(|e| RunError::Sampling(e.to_string()))?;
        self.masked[slot as usize] = allowed.is_some();
        Ok(())
    }

    /// Frees slot `slot` (its state stays until a sequence is admitted there; a step already
    /// submitted still runs its row, on the slot's own state).
    pub fn release(&mut self, slot: u32) {
        if let Some(p) = self.pos.get_mut(slot as usize) {
            *p = None;
            self.chained[slot as usize] = false;
        }
    }

    /// Steps submitted and not read yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Feeds each occupied slot its next id (`ids[slot]`; free slots' entries are ignored) and
    /// returns each slot's choice after it (greedy or sampled, see [`Batch::set_sampling`];
    /// `None` for free slots): [`Batch::submit`] then [`Batch::read`].
    pub async fn step(&mut self, ids: &[Option<u32>]) -> Result<Vec<Option<u32>>, RunError> {
        if !self.pending.is_empty() {
            return Err(RunError::Busy(
                "steps are still unread: read them first".into(),
            ));
        }
        self.submit(ids)?;
        self.read().await
    }

    /// Submits one step for every occupied slot: `ids[slot]` = `Some(id)` feeds that id,
    /// `None` feeds the slot's previous choice without it leaving the GPU (the slot must have
    /// run a step since it was admitted); free slots' entries are ignored. One forward call and
    /// one submission for the whole batch; at most two steps wait to be read
    /// ([`Batch::read`]), so the GPU runs a step while the host reads the one before.
    pub fn submit(&mut self, ids: &[Option<u32>]) -> Result<(), RunError> {
        self.can_submit()?;
        let slot = self.free_readback();
        let occupied: Vec<bool> = self.pos.iter().map(Option::is_some).collect();
        let (_, index) = self.record_step(ids, Some(slot))?;
        let lp = self.with_logprobs(&occupied);
        self.pending.push_back((slot, index, occupied, lp));
        for (c, p) in self.chained.iter_mut().zip(&self.pos) {
            *c = p.is_some();
        }
        Ok(())
    }

    /// [`Batch::submit`] in two parts, for choices that wait for the host: the step's body
    /// (embedding and layers) now, its head (final norm, lm_head, the choices) with
    /// [`Batch::submit_head`]. Meanwhile the GPU runs the layers while the host reads the step
    /// before ([`Batch::read`]) and sets the token masks that its choices decide
    /// ([`Batch::set_token_mask`]: constrained streams). The same step, the same bits.
    pub fn submit_body(&mut self, ids: &[Option<u32>]) -> Result<(), RunError> {
        self.can_submit()?;
        let occupied: Vec<bool> = self.pos.iter().map(Option::is_some).collect();
        let shape = self.write_step(ids, true)?;
        self.encode(shape, true, None, &occupied);
        self.body_only = Some((shape, occupied));
        Ok(())
    }

    /// The head of the step [`Batch::submit_body`] submitted: the choices, to be read with
    /// [`Batch::read`] and fed to the next step on the GPU.
    pub fn submit_head(&mut self) -> Result<(), RunError> {
        let Some((shape, occupied)) = self.body_only.take() else {
            return Err(RunError::Batch(
                "no step body waits for its head (submit_body first)".into(),
            ));
        };
        let slot = self.free_readback();
        let index = self.encode(shape, false, Some(Some(slot)), &occupied);
        let lp = self.with_logprobs(&occupied);
        self.pending.push_back((slot, index, occupied, lp));
        for (c, p) in self.chained.iter_mut().zip(&self.pos) {
            *c = p.is_some();
        }
        Ok(())
    }

    /// Whether a step's body waits for its head ([`Batch::submit_body`]).
    pub fn body_waiting(&self) -> bool {
        self.body_only.is_some()
    }

    /// Whether another step may be submitted: fewer than two unread, no body waiting for its head.
    fn can_submit(&self) -> Result<(), RunError> {
        if self.body_only.is_some() {
            return Err(RunError::Busy(
                "a step's body waits for its head: submit_head first".into(),
            ));
        }
        if self.pending.len() >= 2 {
            return Err(RunError::Busy(
                "two steps are already in flight: read one first".into(),
            ));
        }
        Ok(())
    }

    /// The slots of a step over `occupied` whose logprobs its head copies to the readback.
    fn with_logprobs(&self, occupied: &[bool]) -> Vec<bool> {
        occupied
            .iter()
            .zip(&self.logprobs)
            .map(|(o, l)| *o && *l)
            .collect()
    }

    /// The readback that no unread step uses.
    fn free_readback(&self) -> usize {
        if self.pending.iter().any(|p| p.0 == 0) {
            1
        } else {
            0
        }
    }

    /// The choices of the oldest submitted step: `Some(id)` for each slot that held a sequence
    /// when it was submitted.
    pub async fn read(&mut self) -> Result<Vec<Option<u32>>, RunError> {
        let (slot, index, occupied, lp) =
            self.pending.pop_front().ok_or(RunError::NothingPending)?;
        let n = self.opts.slots as usize;
        // The ids, and the results of the slots up to the last that copied its logprobs.
        let upto = lp.iter().rposition(|&l| l).map_or(0, |i| i + 1);
        let len = if upto > 0 {
            RESULTS_AT + upto as u64 * RESULT_BYTES
        } else {
            4 * n as u64
        };
        let bytes = self.readback[slot]
            .read(&self.model.gpu, len, Some(index))
            .await?;
        let chosen: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[..4 * n]);
        for (i, r) in self.last_results.iter_mut().enumerate() {
            *r = None;
            if lp[i] {
                let at = (RESULTS_AT + i as u64 * RESULT_BYTES) as usize;
                let words: Vec<u32> =
                    bytemuck::pod_collect_to_vec(&bytes[at..at + RESULT_BYTES as usize]);
                *r = parse_results(&words, 1).into_iter().next();
            }
        }
        Ok(chosen
            .into_iter()
            .zip(occupied)
            .map(|(id, o)| o.then_some(id))
            .collect())
    }

    /// As [`Batch::step`], returning each occupied slot's logits instead of a choice (tests and
    /// debugging: the token loop never reads logits back).
    pub async fn step_logits(
        &mut self,
        ids: &[Option<u32>],
    ) -> Result<Vec<Option<Vec<f32>>>, RunError> {
        if !self.pending.is_empty() || self.body_only.is_some() {
            return Err(RunError::Busy(
                "steps are still unread: read them first".into(),
            ));
        }
        let occupied: Vec<bool> = self.pos.iter().map(Option::is_some).collect();
        let (shape, _) = self.record_step(ids, None)?;
        // No choice is made: every slot's next id comes from the host.
        self.chained.iter_mut().for_each(|c| *c = false);
        let v = self.model.config.vocab_size;
        let all = self
            .model
            .gpu
            .read_f32(&self.ws.logits.buf, 0, shape.n_tokens as usize * v)
            .await?;
        Ok(occupied
            .into_iter()
            .enumerate()
            .map(|(i, o)| o.then(|| all[i * v..(i + 1) * v].to_vec()))
            .collect())
    }

    /// Checks and writes one step (every slot a row), records and submits it, and moves every
    /// occupied slot on by one position. `greedy = Some(readback)`: a head that chooses (the
    /// argmax, or the slots' samplers), whose choices feed the next step without leaving the GPU
    /// and go to that readback; `None`: the logits head.
    fn record_step(
        &mut self,
        ids: &[Option<u32>],
        greedy: Option<usize>,
    ) -> Result<(StepShape, wgpu::SubmissionIndex), RunError> {
        let occupied: Vec<bool> = self.pos.iter().map(Option::is_some).collect();
        let shape = self.write_step(ids, greedy.is_some())?;
        Ok((shape, self.encode(shape, true, Some(greedy), &occupied)))
    }

    /// Whether a head over the rows of `occupied` slots runs the slots' samplers (a slot
    /// samples, or its choices are masked) rather than the argmax.
    fn samples(&self, occupied: &[bool]) -> bool {
        occupied
            .iter()
            .zip(self.sampled.iter().zip(&self.masked))
            .any(|(o, (s, m))| *o && (*s || *m))
    }

    /// Checks one step's ids (`chained`: a slot without one feeds its last choice) and writes
    /// them and the step's rows and positions; moves every occupied slot on by one position.
    fn write_step(&mut self, ids: &[Option<u32>], chained: bool) -> Result<StepShape, RunError> {
        let slots = self.opts.slots as usize;
        if ids.len() != slots {
            return Err(RunError::Batch(format!(
                "{} ids for a batch of {slots} slots (one per slot, None for free ones)",
                ids.len()
            )));
        }
        let vocab = self.model.config.vocab_size as u32;
        // The ids the host writes (slot, id); the others stay as the last step left them.
        let mut written: Vec<(usize, u32)> = Vec::new();
        let mut row_pos = [0u32; 4];
        let mut any = false;
        for (i, (id, pos)) in ids.iter().zip(&self.pos).enumerate() {
            let Some(p) = pos else {
                // A free slot's row runs on its own slot at position 0 (ignored).
                continue;
            };
            match id {
                Some(id) if *id >= vocab => {
                    return Err(RunError::BadToken { id: *id, vocab });
                }
                Some(id) => written.push((i, *id)),
                None if chained && self.chained[i] => {}
                None => {
                    return Err(RunError::Batch(format!(
                        "slot {i} holds a sequence but was given no id (and no step of it chose one)"
                    )));
                }
            }
            if *p >= self.opts.max_ctx {
                return Err(RunError::ContextFull {
                    needed: p + 1,
                    max: self.opts.max_ctx,
                });
            }
            row_pos[i] = *p;
            any = true;
        }
        if !any {
            return Err(RunError::Batch("no slot holds a sequence".into()));
        }
        let gpu = &self.model.gpu;
        // The rows up to the last occupied slot (slot t runs row t).
        let t = self
            .pos
            .iter()
            .rposition(Option::is_some)
            .map_or(1, |i| i as u32 + 1);
        let step = Step {
            n_tokens: t,
            pos: row_pos[0],
            n_out: t,
            pos1: row_pos[1],
            pos2: row_pos[2],
            pos3: row_pos[3],
            ..Default::default()
        };
        gpu.queue
            .write_buffer(&self.step_buf.buf, 0, bytemuck::bytes_of(&step));
        for (i, id) in written {
            gpu.queue
                .write_buffer(&self.ws.ids.buf, 4 * i as u64, bytemuck::bytes_of(&id));
        }
        for p in self.pos.iter_mut().flatten() {
            *p += 1;
        }
        Ok(StepShape {
            n_tokens: t,
            n_out: t,
            keys: row_pos.iter().take(slots).max().copied().unwrap_or(0) + 1,
        })
    }

    /// Records and submits the step `write_step` wrote: its body (`body`) and its head (`head`:
    /// `Some(Some(readback))` the choosing head, `Some(None)` the logits head, `None` none) over
    /// the rows of the slots `occupied` when it was written.
    fn encode(
        &self,
        shape: StepShape,
        body: bool,
        head: Option<Option<usize>>,
        occupied: &[bool],
    ) -> wgpu::SubmissionIndex {
        let gpu = &self.model.gpu;
        let md = gpu.caps.max_workgroups_per_dim;
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("batch step"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("batch step"),
                timestamp_writes: None,
            });
            if body {
                // (A batch of `slots` streams runs at most `slots` rows: its plans for them
                // exist.)
                match (shape.n_tokens, &self.body_three, &self.body_four) {
                    (1, _, _) => &self.body_one,
                    (3, Some(three), _) => three,
                    (4, _, Some(four)) => four,
                    _ => &self.body,
                }
                .record(&mut pass, shape, md);
            }
            let plan = match head {
                Some(Some(_)) if self.samples(occupied) => Some(&self.head_sample),
                Some(Some(_)) => Some(&self.head),
                Some(None) => Some(&self.head_logits),
                None => None,
            };
            if let Some(h) = plan {
                h.record(&mut pass, shape, md);
            }
        }
        if let Some(Some(rb)) = head {
            let bytes = 4 * shape.n_tokens as u64;
            enc.copy_buffer_to_buffer(&self.ws.out_ids.buf, 0, &self.ws.ids.buf, 0, bytes);
            self.readback[rb].copy_from(&mut enc, &self.ws.out_ids.buf, 0, bytes);
            // (A slot with logprobs samples: the head ran its sampler.)
            for (i, (o, lp)) in occupied.iter().zip(&self.logprobs).enumerate() {
                if *o && *lp {
                    enc.copy_buffer_to_buffer(
                        &self.samplers[i].results.buf,
                        0,
                        &self.readback[rb].staging,
                        RESULTS_AT + i as u64 * RESULT_BYTES,
                        RESULT_BYTES,
                    );
                }
            }
        }
        gpu.queue.submit([enc.finish()])
    }
}
