//! Batched decoding on the GPU thread (`--batch N`, 2 to 4): requests decode together in an
//! engine [`Batch`], one forward call per step for all of them, joining and leaving between
//! steps, each with its own sampling settings (and logprobs, read with each step). Each stream's
//! tokens are those it would get alone (the batch gives a row the bits of a lone sequence, and
//! each slot has its own sampler), so only throughput changes.
//!
//! A request with a required format (`response_format`, required tool calls) decodes in the
//! batch under its constraint: its slot's token mask for a step depends on its token of the step
//! before, so while such a stream runs each step goes in two submissions: the body (the layers)
//! first, then the step before it is read and its tokens handed out (each constraint taking its
//! stream's token and writing the mask for the next), then the head that chooses under those
//! masks ([`Batch::submit_body`], [`Batch::submit_head`]). The GPU runs the layers while the host
//! reads and computes the masks; one step is in flight instead of two.
//!
//! When the GPU thread is idle, a request that asks for MTP and finds no other request waiting
//! runs alone with speculative decoding as without `--batch` (the fastest for one user); under
//! load requests go to the batch, where they do not speculate.
//!
//! Two steps are in flight: the next step is submitted (each stream's id chained from its last
//! choice on the GPU) before the current one is read, so the GPU never waits for the host to
//! read a step, hand out its tokens and record the next. A stream that ends on a step (EOS, a
//! stop string, its client gone) has already one more step running; that row's token is
//! dropped (each stream has a serial number the in-flight steps remember). A stream never runs
//! past its `max_tokens`: once its running steps will bring it there, its slot leaves the
//! engine's batch while the stream waits for their tokens.

use std::sync::atomic::Ordering;
use std::time::Instant;

use qwgpu_engine::decode::constrain::{Allowed, TokenConstraint};
use qwgpu_engine::decode::mtp::MtpStats;
use qwgpu_engine::model::{Batch, RunError, Session};
use qwgpu_engine::ops::sample::RowResult;
use qwgpu_engine::text::stream::{FinishReason, StreamParser};
use qwgpu_engine::text::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::{GenerationRecord, Metrics};
use crate::worker::{
    fail, panic_event, prefill_job, Control, Done, Event, Job, JobFeed, PromptCache,
};

/// Whether `job` can decode in a batch: at least one token.
pub fn eligible(job: &Job) -> bool {
    job.max_tokens > 0
}

/// A request that speculated alone and stops there to continue in the batch (another request
/// arrived): the job, the tokens generated so far (the last one produced but not yet handed to
/// the client) and its timings and counts so far.
pub struct Handoff {
    pub job: Job,
    pub tokens: Vec<u32>,
    pub queue_s: f64,
    pub t0: Instant,
    pub ttft: f64,
    pub cached_tokens: usize,
    /// MTP counts (drafted, accepted) of its speculative part.
    pub mtp: Option<(u64, u64)>,
}

/// A stream that leaves the batch to speculate alone (the only one left, asking for MTP):
/// its request, the tokens it got in the batch and earlier (all handed out, the last not yet
/// fed), the parser that took them, and its timings and counts so far.
pub struct Resume {
    pub job: Job,
    pub tokens: Vec<u32>,
    pub parser: StreamParser,
    pub queue_s: f64,
    pub t0: Instant,
    pub ttft: f64,
    pub cached_tokens: usize,
    /// MTP counts (drafted, accepted) of its earlier speculative parts.
    pub mtp: Option<(u64, u64)>,
}

/// A request decoding in a batch slot.
struct Stream {
    /// The request again (no constraint, no logprobs), kept when it asks for MTP: left alone
    /// in the batch, it may continue alone with speculation ([`Batcher::detach_lone`]).
    again: Option<Job>,
    /// MTP counts of the part it ran alone before joining (a [`Handoff`]).
    mtp: Option<(u64, u64)>,
    /// Told apart from the slot's earlier and later streams by the steps in flight.
    serial: u64,
    /// Steps submitted with this stream's row and not read yet.
    in_flight: usize,
    tx: UnboundedSender<Event>,
    parser: StreamParser,
    eos: Vec<u32>,
    max_tokens: usize,
    deadline: Instant,
    /// The id the slot's next step feeds from the host (the prompt's last); after that, each
    /// step's choice feeds the next on the GPU.
    first: Option<u32>,
    tokens: Vec<u32>,
    prompt_tokens: usize,
    cached_tokens: usize,
    queue_s: f64,
    t0: Instant,
    ttft: Option<f64>,
    /// The reply's required form, and the mask it writes for the next token (vocabulary words).
    constraint: Option<(Box<dyn TokenConstraint + Send>, Vec<u32>)>,
    /// Each token goes to the client with its logprobs.
    logprobs: bool,
}

/// The batch and the requests in its slots.
pub struct Batcher {
    pub batch: Batch,
    slots: Vec<Option<Stream>>,
    /// The steps in flight, oldest first (as the batch's own queue): each slot's stream serial
    /// when the step was submitted (`None`: no row of a stream).
    in_flight: std::collections::VecDeque<Vec<Option<u64>>>,
    next_serial: u64,
    /// A request whose prompt is being prefilled a slice at a time, the streams' steps running
    /// between the slices ([`Batcher::advance_join`]).
    joining: Option<Joining>,
    /// Prompt ids per slice of a joining request while other streams decode (0: the whole
    /// prompt at once, the streams pausing).
    slice: usize,
    /// A stream left alone that asked for MTP may continue alone with speculation
    /// ([`Batcher::detach_lone`]; the GPU thread decides when).
    pub resume: bool,
}

/// A request on its way into the batch: its prompt partly prefilled in the GPU thread's session.
struct Joining {
    job: Job,
    feed: JobFeed,
    queue_s: f64,
    t0: Instant,
}

/// Steps the batch keeps in flight (the engine's limit).
const DEPTH: usize = 2;

impl Batcher {
    /// `slice`: prompt ids prefilled between two steps of the streams while a request joins
    /// (0: a joining prompt is prefilled whole, the streams pausing meanwhile).
    pub fn new(batch: Batch, slice: usize) -> Self {
        let n = batch.options().slots as usize;
        Batcher {
            batch,
            slots: (0..n).map(|_| None).collect(),
            in_flight: Default::default(),
            next_serial: 0,
            joining: None,
            slice,
            resume: true,
        }
    }

    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether a request's prompt is being prefilled between the streams' steps.
    pub fn joining(&self) -> bool {
        self.joining.is_some()
    }

    /// The joining request's client.
    pub fn joining_tx(&self) -> Option<UnboundedSender<Event>> {
        self.joining.as_ref().map(|j| j.job.tx.clone())
    }

    /// Drops the joining request (after an engine panic in its prefill; its client is told by
    /// the caller).
    pub fn drop_join(&mut self) {
        self.joining = None;
    }

    /// A slot that holds no stream and no sequence in the engine's batch.
    fn free_slot(&self) -> Option<u32> {
        (0..self.slots.len() as u32)
            .find(|&i| self.slots[i as usize].is_none() && self.batch.pos(i).is_none())
    }

    pub fn has_room(&self) -> bool {
        self.free_slot().is_some()
    }

    /// Starts `job`'s way into a free slot: its prompt (all but its last id, through the prompt
    /// cache) is prefilled in `session`, whole when no stream decodes (or slices are off), else
    /// one slice now and one per [`Batcher::advance_join`] with a step of the streams between
    /// (so a long prompt does not stall their replies); then the request is admitted. Failures
    /// are reported to the job's client. One request joins at a time.
    pub fn join(
        &mut self,
        session: &mut Session,
        job: Job,
        metrics: &Metrics,
        cache: &mut PromptCache,
    ) {
        if self.free_slot().is_none() || self.joining.is_some() {
            return fail(metrics, &job.tx, &RunError::Batch("no free slot".into()));
        }
        let queue_s = job.enqueued.elapsed().as_secs_f64();
        let _ = job.tx.send(Event::Started);
        let t0 = Instant::now();
        let points = (job.checkpoint, job.shared);
        // A request that may later continue alone with speculation (see `detach_lone`) has
        // its prompt's MTP cache filled too, so the prompt cache's entries serve that.
        let mtp = job.mtp && !job.logprobs && job.constraint.is_none() && session.has_mtp_head();
        let feed = match JobFeed::start(session, &job.prompt, points, cache, mtp) {
            Ok(f) => f,
            Err(e) => return fail(metrics, &job.tx, &e),
        };
        self.joining = Some(Joining {
            job,
            feed,
            queue_s,
            t0,
        });
        self.advance_join(session, metrics, cache);
    }

    /// The joining request's next slice of prompt (all of it when no stream decodes, or slices
    /// are off); once the prompt is in, the request is admitted into its slot. A client that
    /// left meanwhile ends its join.
    pub fn advance_join(
        &mut self,
        session: &mut Session,
        metrics: &Metrics,
        cache: &mut PromptCache,
    ) {
        let Some(mut j) = self.joining.take() else {
            return;
        };
        if j.job.tx.is_closed() {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let slice = match self.slice {
            0 => usize::MAX,
            _ if self.active() == 0 => usize::MAX,
            n => n,
        };
        if slice != usize::MAX {
            metrics.batch_join_slices.fetch_add(1, Ordering::Relaxed);
        }
        match j.feed.advance(session, slice, cache) {
            Ok(true) => {}
            Ok(false) => {
                self.joining = Some(j);
                return;
            }
            Err(e) => return fail(metrics, &j.job.tx, &e),
        }
        let cached_tokens = j.feed.finish(cache);
        self.admit_joined(session, j.job, j.queue_s, j.t0, cached_tokens, metrics);
    }

    /// Admits a request whose prompt `session` holds (all but its last id) into a free slot.
    fn admit_joined(
        &mut self,
        session: &mut Session,
        job: Job,
        queue_s: f64,
        t0: Instant,
        cached_tokens: usize,
        metrics: &Metrics,
    ) {
        let Some(slot) = self.free_slot() else {
            return fail(metrics, &job.tx, &RunError::Batch("no free slot".into()));
        };
        let admitted = self.batch.admit(slot, session).and_then(|_| {
            self.batch
                .set_sampling(slot, Some(&job.sampling), &job.prompt)?;
            self.batch.set_logprobs(slot, job.logprobs)
        });
        if let Err(e) = admitted {
            self.batch.release(slot);
            return fail(metrics, &job.tx, &e);
        }
        let vocab = self.batch.model.config.vocab_size;
        let mut stream = self.stream(job, queue_s, t0, cached_tokens, vocab);
        // A constrained stream's first mask, before its first step.
        match stream.next_mask(&mut self.batch, slot) {
            Ok(true) => self.slots[slot as usize] = Some(stream),
            Ok(false) => {
                // Complete before any token: the reply is empty.
                self.batch.release(slot);
                let _ = stream.tx.send(Event::PromptDone);
                stream.finish(
                    End {
                        reason: FinishReason::Stop,
                        gone: false,
                        cut_short: false,
                    },
                    metrics,
                );
            }
            Err(e) => {
                self.batch.release(slot);
                fail(metrics, &stream.tx, &e);
            }
        }
    }

    /// A stream for `job` under the next serial number, nothing generated yet (its first step
    /// feeds the prompt's last id).
    fn stream(
        &mut self,
        mut job: Job,
        queue_s: f64,
        t0: Instant,
        cached_tokens: usize,
        vocab: usize,
    ) -> Stream {
        let constraint = job
            .constraint
            .take()
            .map(|c| (c, vec![0u32; vocab.div_ceil(32)]));
        let again = (job.mtp && !job.logprobs && constraint.is_none()).then(|| Job {
            prompt: job.prompt.clone(),
            max_tokens: job.max_tokens,
            stream: job.stream.clone(),
            sampling: job.sampling.clone(),
            logprobs: false,
            mtp: true,
            mtp_adaptive: job.mtp_adaptive,
            ignore_eos: job.ignore_eos,
            constraint: None,
            checkpoint: job.checkpoint,
            shared: job.shared,
            enqueued: job.enqueued,
            deadline: job.deadline,
            tx: job.tx.clone(),
        });
        let mut cfg = job.stream;
        if job.ignore_eos {
            cfg.eos_ids.clear();
        }
        self.next_serial += 1;
        Stream {
            again,
            mtp: None,
            serial: self.next_serial,
            in_flight: 0,
            eos: cfg.eos_ids.clone(),
            parser: StreamParser::new(cfg, &job.prompt),
            max_tokens: job.max_tokens,
            deadline: job.deadline,
            first: job.prompt.last().copied(),
            tokens: Vec::new(),
            prompt_tokens: job.prompt.len(),
            cached_tokens,
            queue_s,
            t0,
            ttft: None,
            tx: job.tx,
            constraint,
            logprobs: job.logprobs,
        }
    }

    /// Continues a request that ran alone (a [`Handoff`]) in a free slot: its tokens so far go
    /// through a fresh stream parser unsent (the client has their text), its last token is handed
    /// out as the batch hands out any, and the state of the prompt and its tokens but the last
    /// (prefilled through the prompt cache) is admitted, the last token to be fed next. A greedy
    /// request's reply is the one it gets alone (plain greedy decoding equals greedy speculation);
    /// a sampled one samples the rest from the same distributions with draws of its own.
    pub fn adopt(
        &mut self,
        session: &mut Session,
        h: Handoff,
        tokenizer: &Tokenizer,
        metrics: &Metrics,
        control: &Control,
        cache: &mut PromptCache,
    ) {
        let Handoff {
            job,
            tokens,
            queue_s,
            t0,
            ttft,
            cached_tokens,
            mtp,
        } = h;
        let Some(slot) = self.free_slot() else {
            return fail(metrics, &job.tx, &RunError::Batch("no free slot".into()));
        };
        let Some((&last, before)) = tokens.split_last() else {
            return fail(
                metrics,
                &job.tx,
                &RunError::Batch("nothing to continue".into()),
            );
        };
        let mut ids = job.prompt.clone();
        ids.extend_from_slice(&tokens);
        // The prompt's own cache points: the entries its run recorded are reused, none added.
        let points = (
            Some(job.checkpoint.unwrap_or(job.prompt.len().saturating_sub(1))),
            job.shared,
        );
        // Draws of its own for the rest: the seed moved on by the tokens so far (the batch's
        // sampler would otherwise repeat the draws its start used).
        let mut sampling = job.sampling.clone();
        sampling.seed = sampling
            .seed
            .wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(tokens.len() as u64));
        if job.constraint.is_some() {
            // (The worker hands off only unconstrained requests: the constraint has taken the
            // tokens so far.)
            return fail(
                metrics,
                &job.tx,
                &RunError::Batch("a constrained request cannot move into the batch".into()),
            );
        }
        let vocab = self.batch.model.config.vocab_size;
        let mut stream = self.stream(job, queue_s, t0, cached_tokens, vocab);
        stream.mtp = mtp;
        stream.ttft = Some(ttft);
        stream.first = None;
        for &id in before {
            stream.tokens.push(id);
            let _ = stream.parser.push(tokenizer, id);
        }
        if let Some(end) = stream.push(last, None, tokenizer, control) {
            return stream.finish(end, metrics);
        }
        let admitted = prefill_job(session, &ids, points, cache, false)
            .and_then(|_| self.batch.admit(slot, session))
            .and_then(|_| self.batch.set_sampling(slot, Some(&sampling), &ids));
        if let Err(e) = admitted {
            self.batch.release(slot);
            return fail(metrics, &stream.tx, &e);
        }
        stream.first = Some(last);
        self.slots[slot as usize] = Some(stream);
    }

    /// Frees the batch's slots that hold no stream (after a join that panicked midway).
    pub fn release_stray(&mut self) {
        for (i, s) in self.slots.iter().enumerate() {
            if s.is_none() {
                self.batch.release(i as u32);
            }
        }
    }

    /// Fails every stream (after an engine panic: nothing of the batch is trusted again).
    pub fn fail_all(&mut self, metrics: &Metrics) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(s) = s.take() {
                metrics.failed.fetch_add(1, Ordering::Relaxed);
                let _ = s.tx.send(panic_event());
                self.batch.release(i as u32);
            }
        }
        if let Some(j) = self.joining.take() {
            metrics.failed.fetch_add(1, Ordering::Relaxed);
            let _ = j.job.tx.send(panic_event());
        }
        self.forget_in_flight();
    }

    /// Fails every stream with `e` (a step that could not run or be read).
    fn fail_streams(&mut self, metrics: &Metrics, e: &RunError) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(s) = s.take() {
                fail(metrics, &s.tx, e);
            }
            self.batch.release(i as u32);
        }
        self.forget_in_flight();
    }

    /// Waits for the steps in flight and drops their tokens (no stream is left to take them).
    fn forget_in_flight(&mut self) {
        if self.batch.body_waiting() {
            let _ = self.batch.submit_head();
        }
        while self.batch.pending() > 0 {
            let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pollster::block_on(self.batch.read())
            }));
            if !matches!(read, Ok(Ok(_))) {
                break;
            }
        }
        self.in_flight.clear();
    }

    /// Submits steps until [`DEPTH`] are in flight or no stream needs another: a stream's row
    /// runs while its tokens so far and in flight are fewer than its `max_tokens`; a stream that
    /// has all the steps it needs leaves the engine's batch (its tokens still come).
    fn fill(&mut self, metrics: &Metrics) -> Result<(), RunError> {
        while self.batch.pending() < DEPTH {
            if !self.submit_next(metrics, false)? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Submits the next step of the streams that need one (a stream whose tokens so far and in
    /// flight reach its `max_tokens` leaves the engine's batch first): whole, or its body alone
    /// (`body_only`, [`Batch::submit_body`]). False when no stream needs one.
    fn submit_next(&mut self, metrics: &Metrics, body_only: bool) -> Result<bool, RunError> {
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(s) = s {
                if s.tokens.len() + s.in_flight >= s.max_tokens {
                    self.batch.release(i as u32);
                }
            }
        }
        let rows: Vec<Option<u64>> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.as_ref()
                    .filter(|_| self.batch.pos(i as u32).is_some())
                    .map(|s| s.serial)
            })
            .collect();
        let streams = rows.iter().flatten().count();
        if streams == 0 {
            return Ok(false);
        }
        let ids: Vec<Option<u32>> = self
            .slots
            .iter_mut()
            .zip(&rows)
            .map(|(s, r)| r.and(s.as_mut()).and_then(|s| s.first.take()))
            .collect();
        if body_only {
            self.batch.submit_body(&ids)?;
        } else {
            self.batch.submit(&ids)?;
        }
        for (s, r) in self.slots.iter_mut().zip(&rows) {
            if let (Some(s), Some(_)) = (s.as_mut(), r) {
                s.in_flight += 1;
            }
        }
        self.in_flight.push_back(rows);
        metrics.batch_step(streams);
        Ok(true)
    }

    /// Whether a stream decodes under a constraint (steps then go in two submissions).
    fn constrained(&self) -> bool {
        self.slots.iter().flatten().any(|s| s.constraint.is_some())
    }

    /// One step while a stream is constrained: the next step's body, then every step before it
    /// read and handed out (the constraints take their tokens and set the masks), then its head.
    fn step_split(
        &mut self,
        tokenizer: &Tokenizer,
        metrics: &Metrics,
        control: &Control,
    ) -> Result<(), RunError> {
        while self.batch.pending() >= DEPTH {
            self.take(tokenizer, metrics, control)?;
        }
        let body = self.submit_next(metrics, true)?;
        while self.batch.pending() > 0 {
            self.take(tokenizer, metrics, control)?;
        }
        if body {
            self.batch.submit_head()?;
        }
        Ok(())
    }

    /// Reads the oldest step in flight and hands its tokens to their streams; streams that end
    /// (EOS, max_tokens, a stop string, the client gone, the time limit) leave the batch.
    fn take(
        &mut self,
        tokenizer: &Tokenizer,
        metrics: &Metrics,
        control: &Control,
    ) -> Result<(), RunError> {
        let chosen = pollster::block_on(self.batch.read())?;
        let rows = self.in_flight.pop_front().unwrap_or_default();
        for (i, id) in chosen.into_iter().enumerate() {
            let (Some(id), Some(serial)) = (id, rows.get(i).copied().flatten()) else {
                continue;
            };
            // The row of a stream that ended meanwhile (its slot free or another stream's).
            let Some(s) = self.slots[i].as_mut().filter(|s| s.serial == serial) else {
                continue;
            };
            s.in_flight -= 1;
            let lp = self
                .batch
                .last_logprobs(i as u32)
                .filter(|_| s.logprobs)
                .cloned();
            let end = match s.push(id, lp, tokenizer, control) {
                Some(end) => Some(Ok(end)),
                // The constraint takes the token and writes the mask for the next.
                None => match s.commit(id, &mut self.batch, i as u32) {
                    Ok(true) => None,
                    Ok(false) => Some(Ok(End {
                        reason: FinishReason::Stop,
                        gone: false,
                        cut_short: false,
                    })),
                    Err(e) => Some(Err(e)),
                },
            };
            if let Some(end) = end {
                if let Some(s) = self.slots[i].take() {
                    match end {
                        Ok(end) => s.finish(end, metrics),
                        Err(e) => fail(metrics, &s.tx, &e),
                    }
                }
                self.batch.release(i as u32);
            }
        }
        Ok(())
    }

    /// One step of every stream: the steps in flight topped up, then the oldest read and its
    /// tokens handed out (see the module docs). When no stream is left, the steps still in
    /// flight are waited for.
    pub fn step(&mut self, tokenizer: &Tokenizer, metrics: &Metrics, control: &Control) {
        if let Err(e) = self.compact(tokenizer, metrics, control) {
            return self.fail_streams(metrics, &e);
        }
        let ran = if self.constrained() {
            self.step_split(tokenizer, metrics, control)
        } else {
            self.fill(metrics)
                .and_then(|()| match self.batch.pending() {
                    0 => Ok(()),
                    _ => self.take(tokenizer, metrics, control),
                })
        };
        if let Err(e) = ran {
            // Nothing of this batch is trusted again: every stream fails.
            return self.fail_streams(metrics, &e);
        }
        if self.active() == 0 {
            self.forget_in_flight();
        }
    }

    /// Keeps the streams in the first slots: a step runs the rows up to the last occupied slot,
    /// so when a stream below others has left (one stream left in slot 2 would run three rows),
    /// the steps in flight are read and the last streams move into the free slots below them
    /// ([`Batch::relocate`]: state, sampler and position; each goes on with the tokens it would
    /// have had). Their next ids then come from the host: their last tokens.
    fn compact(
        &mut self,
        tokenizer: &Tokenizer,
        metrics: &Metrics,
        control: &Control,
    ) -> Result<(), RunError> {
        let gap = |b: &Batcher| {
            let n = b.slots.len() as u32;
            let last = (0..n).rev().find(|&i| b.batch.pos(i).is_some())?;
            let free =
                (0..last).find(|&i| b.batch.pos(i).is_none() && b.slots[i as usize].is_none())?;
            Some((last, free))
        };
        if gap(self).is_none() {
            return Ok(());
        }
        while self.batch.pending() > 0 {
            self.take(tokenizer, metrics, control)?;
        }
        self.in_flight.clear();
        while let Some((from, to)) = gap(self) {
            let (f, t) = (from as usize, to as usize);
            if self.slots[f].is_none() {
                // A sequence without a stream (cannot happen between steps): freed.
                self.batch.release(from);
                continue;
            }
            self.batch.relocate(from, to)?;
            let mut s = self.slots[f].take();
            if let Some(s) = s.as_mut() {
                s.in_flight = 0;
                if s.first.is_none() {
                    s.first = s.tokens.last().copied();
                }
            }
            self.slots[t] = s;
            metrics.batch_moves.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The only stream's request and its tokens so far, when it asked for MTP and could
    /// continue alone with speculation ([`Batcher::detach_lone`]); `None` while a request joins.
    pub fn lone_speculator(&self) -> Option<(&Job, &[u32])> {
        if !self.resume || self.joining.is_some() || self.active() != 1 {
            return None;
        }
        let s = self.slots.iter().flatten().next()?;
        Some((s.again.as_ref()?, &s.tokens))
    }

    /// The only stream stays in the batch to its end ([`Batcher::lone_speculator`] no longer
    /// offers it).
    pub fn keep_lone(&mut self) {
        if self.joining.is_some() || self.active() != 1 {
            return;
        }
        if let Some(s) = self.slots.iter_mut().flatten().next() {
            s.again = None;
        }
    }

    /// Takes the only stream out of the batch to continue alone (see
    /// [`Batcher::lone_speculator`]): the steps in flight are read first (their tokens handed
    /// out; one may end it: then `None`), and its slot is freed.
    pub fn detach_lone(
        &mut self,
        tokenizer: &Tokenizer,
        metrics: &Metrics,
        control: &Control,
    ) -> Option<Resume> {
        self.lone_speculator()?;
        self.settle(tokenizer, metrics, control);
        let i = self.slots.iter().position(|s| {
            s.as_ref()
                .is_some_and(|s| s.again.is_some() && !s.tokens.is_empty())
        })?;
        let s = self.slots[i].take()?;
        self.batch.release(i as u32);
        let job = s.again?;
        Some(Resume {
            job,
            tokens: s.tokens,
            parser: s.parser,
            queue_s: s.queue_s,
            t0: s.t0,
            ttft: s.ttft.unwrap_or(0.0),
            cached_tokens: s.cached_tokens,
            mtp: s.mtp,
        })
    }

    /// Reads every step in flight, handing out their tokens, and submits none (before the GPU
    /// thread runs a request alone: the batch pauses with nothing running).
    pub fn settle(&mut self, tokenizer: &Tokenizer, metrics: &Metrics, control: &Control) {
        while self.batch.pending() > 0 {
            if let Err(e) = self.take(tokenizer, metrics, control) {
                return self.fail_streams(metrics, &e);
            }
        }
        self.in_flight.clear();
    }
}

fn constraint_error(e: String) -> RunError {
    RunError::Sampling(format!("constrained decoding: {e}"))
}

/// How a stream ended.
struct End {
    /// The parser's ending (EOS, stop string) or the length limit.
    reason: FinishReason,
    gone: bool,
    cut_short: bool,
}

impl Stream {
    /// Sets the slot's token mask for the stream's next choice from its constraint (none: no
    /// mask). False when the constraint is complete (the reply ends, as on EOS).
    fn next_mask(&mut self, batch: &mut Batch, slot: u32) -> Result<bool, RunError> {
        let Some((c, mask)) = self.constraint.as_mut() else {
            return Ok(true);
        };
        mask.fill(0);
        let allowed = c.allowed(mask).map_err(constraint_error)?;
        match allowed {
            Allowed::End => Ok(false),
            Allowed::Any => batch.set_token_mask(slot, None).map(|()| true),
            Allowed::Mask => {
                if mask.iter().all(|&w| w == 0) {
                    return Err(constraint_error(
                        "no token can continue the output (the constraint allows none)".into(),
                    ));
                }
                batch.set_token_mask(slot, Some(mask)).map(|()| true)
            }
        }
    }

    /// The constraint takes the stream's token `id` (not one that ended it) and sets the mask
    /// for the next; false when the constraint is complete.
    fn commit(&mut self, id: u32, batch: &mut Batch, slot: u32) -> Result<bool, RunError> {
        let Some((c, _)) = self.constraint.as_mut() else {
            return Ok(true);
        };
        c.commit(id).map_err(constraint_error)?;
        self.next_mask(batch, slot)
    }

    /// Takes the stream's next token (with its logprobs where the request asked for them);
    /// `Some` when the stream ends with it.
    fn push(
        &mut self,
        id: u32,
        logprobs: Option<RowResult>,
        tokenizer: &Tokenizer,
        control: &Control,
    ) -> Option<End> {
        if self.ttft.is_none() {
            self.ttft = Some(self.t0.elapsed().as_secs_f64());
            let _ = self.tx.send(Event::PromptDone);
        }
        let end = |reason, gone, cut_short| {
            Some(End {
                reason,
                gone,
                cut_short,
            })
        };
        // EOS ends the reply and is not part of it.
        if self.eos.contains(&id) {
            return end(FinishReason::Stop, false, false);
        }
        self.tokens.push(id);
        if self.logprobs {
            let _ = self.tx.send(Event::Token { id, logprobs });
        }
        let d = self.parser.push(tokenizer, id);
        if !d.is_empty() {
            let _ = self.tx.send(Event::Delta(d.clone()));
        }
        if self.tx.is_closed() {
            return end(FinishReason::Stop, true, false);
        }
        if let Some(r) = d.finished {
            return end(r, false, false);
        }
        if self.tokens.len() >= self.max_tokens {
            return end(FinishReason::Length, false, false);
        }
        if control.cut(self.deadline) {
            return end(FinishReason::Length, false, true);
        }
        None
    }

    /// The stream's last delta, its `Done` and its metrics, as a lone request's.
    fn finish(mut self, end: End, metrics: &Metrics) {
        let (last, summary) = self.parser.finish(Some(end.reason));
        if !last.is_empty() {
            let _ = self.tx.send(Event::Delta(last));
        }
        let total_s = self.t0.elapsed().as_secs_f64();
        let ttft_s = self.ttft.unwrap_or(total_s);
        let completion_tokens = self.tokens.len();
        let mut finish = summary.finish_reason;
        if end.cut_short {
            finish = FinishReason::Length;
            metrics.timed_out.fetch_add(1, Ordering::Relaxed);
        }
        if end.gone {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        metrics.generation(&GenerationRecord {
            prompt_tokens: self.prompt_tokens,
            cached_tokens: self.cached_tokens,
            completion_tokens,
            ttft_s,
            total_s,
            finish_reason: finish.as_str(),
            mtp: self.mtp,
        });
        eprintln!(
            "qwgpu-server: {} prompt ({} cached) + {completion_tokens} generated tokens (batched), TTFT {ttft_s:.2}s, {:.1} tok/s, {}{}",
            self.prompt_tokens,
            self.cached_tokens,
            if completion_tokens > 1 { (completion_tokens - 1) as f64 / (total_s - ttft_s).max(1e-9) } else { 0.0 },
            finish.as_str(),
            if end.gone { " (client gone)" } else if end.cut_short { " (time limit)" } else { "" },
        );
        let done = Done {
            summary,
            finish,
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            queue_s: self.queue_s,
            ttft_s,
            total_s,
            mtp: self
                .mtp
                .map(|(drafted, accepted)| MtpStats { drafted, accepted }),
            cut_short: end.cut_short,
            cached_tokens: self.cached_tokens,
        };
        let _ = self.tx.send(Event::Done(Box::new(done)));
    }
}
