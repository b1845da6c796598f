//! Batched decoding on the GPU thread (`--batch 2`): requests without logprobs or a required
//! format decode together in an engine [`Batch`], one forward call per step for all of them,
//! joining and leaving between steps, each with its own sampling settings. Each stream's tokens
//! are those it would get alone (the batch gives a row the bits of a lone sequence, and each
//! slot has its own sampler), so only throughput changes.
//!
//! When the GPU thread is idle, a request that asks for MTP and finds no other request waiting
//! runs alone with speculative decoding as without `--batch` (the fastest for one user); under
//! load requests go to the batch, where they do not speculate.

use std::sync::atomic::Ordering;
use std::time::Instant;

use qwgpu_engine::model::{Batch, RunError, Session};
use qwgpu_engine::text::stream::{FinishReason, StreamParser};
use qwgpu_engine::text::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::{GenerationRecord, Metrics};
use crate::worker::{fail, panic_event, prefill_job, Control, Done, Event, Job, PromptCache};

/// Whether `job` can decode in a batch: no logprobs, no required format, at least one token.
pub fn eligible(job: &Job) -> bool {
    job.constraint.is_none() && !job.logprobs && job.max_tokens > 0
}

/// A request decoding in a batch slot.
struct Stream {
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
}

/// The batch and the requests in its slots.
pub struct Batcher {
    pub batch: Batch,
    slots: Vec<Option<Stream>>,
}

impl Batcher {
    pub fn new(batch: Batch) -> Self {
        let n = batch.options().slots as usize;
        Batcher {
            batch,
            slots: (0..n).map(|_| None).collect(),
        }
    }

    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn has_room(&self) -> bool {
        self.batch.free_slot().is_some()
    }

    /// Prefills `job`'s prompt (all but its last id, through the prompt cache) in `session` and
    /// admits it into a free slot. Failures are reported to the job's client.
    pub fn join(
        &mut self,
        session: &mut Session,
        job: Job,
        metrics: &Metrics,
        cache: &mut PromptCache,
    ) {
        let Some(slot) = self.batch.free_slot() else {
            return fail(metrics, &job.tx, &RunError::Batch("no free slot".into()));
        };
        let queue_s = job.enqueued.elapsed().as_secs_f64();
        let _ = job.tx.send(Event::Started);
        let t0 = Instant::now();
        let points = (job.checkpoint, job.shared);
        let cached_tokens = match prefill_job(session, &job.prompt, points, cache, false) {
            Ok(n) => n,
            Err(e) => return fail(metrics, &job.tx, &e),
        };
        let admitted = self.batch.admit(slot, session).and_then(|_| {
            self.batch
                .set_sampling(slot, Some(&job.sampling), &job.prompt)
        });
        if let Err(e) = admitted {
            self.batch.release(slot);
            return fail(metrics, &job.tx, &e);
        }
        let mut cfg = job.stream.clone();
        if job.ignore_eos {
            cfg.eos_ids.clear();
        }
        let eos = cfg.eos_ids.clone();
        self.slots[slot as usize] = Some(Stream {
            parser: StreamParser::new(cfg, &job.prompt),
            eos,
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
        });
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
    }

    /// One step of every stream: their next tokens go to their clients; streams that end
    /// (EOS, max_tokens, a stop string, the client gone, the time limit) leave the batch.
    pub fn step(&mut self, tokenizer: &Tokenizer, metrics: &Metrics, control: &Control) {
        let ids: Vec<Option<u32>> = self
            .slots
            .iter_mut()
            .map(|s| s.as_mut().and_then(|s| s.first.take()))
            .collect();
        let active = self.active();
        let chosen = match pollster::block_on(self.batch.step(&ids)) {
            Ok(c) => c,
            Err(e) => {
                // Nothing of this batch is trusted again: every stream fails.
                for (i, s) in self.slots.iter_mut().enumerate() {
                    if let Some(s) = s.take() {
                        fail(metrics, &s.tx, &e);
                        self.batch.release(i as u32);
                    }
                }
                return;
            }
        };
        metrics.batch_step(active);
        for (i, id) in chosen.into_iter().enumerate() {
            let (Some(id), Some(s)) = (id, self.slots[i].as_mut()) else {
                continue;
            };
            if let Some(end) = s.push(id, tokenizer, control) {
                if let Some(s) = self.slots[i].take() {
                    s.finish(end, metrics);
                }
                self.batch.release(i as u32);
            }
        }
    }
}

/// How a stream ended.
struct End {
    /// The parser's ending (EOS, stop string) or the length limit.
    reason: FinishReason,
    gone: bool,
    cut_short: bool,
}

impl Stream {
    /// Takes the stream's next token; `Some` when the stream ends with it.
    fn push(&mut self, id: u32, tokenizer: &Tokenizer, control: &Control) -> Option<End> {
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
            mtp: None,
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
            mtp: None,
            cut_short: end.cut_short,
            cached_tokens: self.cached_tokens,
        };
        let _ = self.tx.send(Event::Done(Box::new(done)));
    }
}
