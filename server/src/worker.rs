//! The GPU thread: it owns the model and its one session and runs one request at a time, in
//! arrival order, from a bounded queue; with `--batch`, greedy requests also decode together in
//! a batch ([`crate::batch`]). Each job reports back through its own channel; a closed channel
//! (the client went away) cancels the job before the next token.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qwgpu_engine::decode::cache::{reusable, PromptFeed};
use qwgpu_engine::decode::constrain::TokenConstraint;
use qwgpu_engine::decode::mtp::MtpStats;
use qwgpu_engine::decode::sampler::SamplingParams;
use qwgpu_engine::decode::text::{
    continue_text, generate_text_constrained, TextEvent, TextRequest,
};
use qwgpu_engine::gpu::{Gpu, GpuOptions};
use qwgpu_engine::model::{Batch, BatchOptions, Model, RunError, Session, SessionOptions};
use qwgpu_engine::ops::sample::RowResult;
use qwgpu_engine::state::SavedState;
use qwgpu_engine::text::stream::{Delta, FinishReason, StreamConfig, StreamParser, StreamSummary};
use qwgpu_engine::text::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::batch::{eligible, Batcher, Handoff, Resume};
use crate::metrics::{GenerationRecord, Metrics};

/// What a job hears from the GPU thread, in order: `Started`, `PromptDone`, tokens and deltas,
/// then `Done` or `Failed` (or nothing, when it was cancelled).
pub enum Event {
    /// The job left the queue; GPU work begins.
    Started,
    /// The prompt is processed and the first token is known.
    PromptDone,
    /// A generated token with its logprobs (only sent when logprobs were asked for).
    Token {
        id: u32,
        logprobs: Option<RowResult>,
    },
    /// MTP only: the running draft counts after a verify step (before that step's deltas).
    Mtp {
        drafted: u64,
        accepted: u64,
    },
    Delta(Delta),
    Done(Box<Done>),
    Failed {
        status: u16,
        code: &'static str,
        message: String,
    },
}

/// The end of a generation.
pub struct Done {
    pub summary: StreamSummary,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub queue_s: f64,
    pub ttft_s: f64,
    pub total_s: f64,
    pub mtp: Option<MtpStats>,
    /// The per-request time limit (or shutdown) cut the generation short.
    pub cut_short: bool,
    /// Prompt ids restored from the prompt cache instead of prefilled.
    pub cached_tokens: usize,
}

pub struct Job {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub stream: StreamConfig,
    pub sampling: SamplingParams,
    pub logprobs: bool,
    pub mtp: bool,
    /// Fall back to plain decoding when the drafts do not pay off.
    pub mtp_adaptive: bool,
    pub ignore_eos: bool,
    /// The reply's required form (`response_format`), checked token by token.
    pub constraint: Option<Box<dyn TokenConstraint + Send>>,
    /// Prompt ids later requests are expected to share (a conversation before its generation
    /// prompt): the prompt cache records the state there. `None` = all but the last id.
    pub checkpoint: Option<usize>,
    /// Fewer prompt ids that other conversations are expected to share (the system messages and
    /// tools): the prompt cache records the state there too.
    pub shared: Option<usize>,
    pub enqueued: Instant,
    pub deadline: Instant,
    pub tx: UnboundedSender<Event>,
}

/// Where the model comes from and how to run it.
pub struct WorkerOptions {
    pub model_dir: Option<PathBuf>,
    pub session: SessionOptions,
    pub adapter: Option<String>,
    pub shader_checks: bool,
    /// Keep the state of the last prompt (up to its checkpoint) for the next request.
    /// States of recent prompts (up to their checkpoints) kept for later requests that start the
    /// same way; 0 = none.
    pub prompt_cache: usize,
    /// Where the prompt cache's states are read at start and written at shutdown (one file per
    /// entry, named by the model's configuration); `None` = memory only.
    pub prompt_cache_dir: Option<PathBuf>,
    /// Streams decoded together (0 = no batching; see [`crate::batch`]).
    pub batch: u32,
    /// Prompt ids prefilled between two batch steps for a request joining while others decode
    /// (`None`: the session's prefill chunk; 0: the whole prompt first, the others pausing).
    pub join_slice: Option<usize>,
    /// A stream left alone in the batch that asked for MTP continues alone with speculation.
    pub batch_resume: bool,
    /// Benchmarks only: greedy MTP verifies accept with this probability (see
    /// [`Session::force_accept`]).
    pub force_accept: Option<f64>,
}

/// Shared between the GPU thread and the HTTP side.
#[derive(Default)]
pub struct Control {
    /// Shutdown began: queued jobs are refused, the running one gets `drain_deadline`.
    pub draining: AtomicBool,
    pub drain_deadline: Mutex<Option<Instant>>,
    /// The HTTP side is done: the thread exits once the queue is empty.
    pub stop: AtomicBool,
}

impl Control {
    /// Whether a running generation must end now: its deadline passed, or shutdown's grace
    /// period did.
    pub fn cut(&self, deadline: Instant) -> bool {
        let now = Instant::now();
        let drain = self.draining.load(Ordering::Relaxed)
            && self
                .drain_deadline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some_and(|d| now >= d);
        now >= deadline || drain
    }
}

/// What the loaded model looks like, for the HTTP side.
pub struct ModelInfo {
    pub has_mtp: bool,
    pub vocab_size: u32,
    pub max_ctx: u32,
    pub eos_ids: Vec<u32>,
    pub device: String,
    pub notes: Vec<String>,
}

pub struct Worker {
    pub queue: SyncSender<Job>,
    pub info: ModelInfo,
    pub thread: JoinHandle<()>,
}

/// Why a job could not be queued.
pub enum EnqueueError {
    Full,
    Closed,
}

pub fn enqueue(queue: &SyncSender<Job>, metrics: &Metrics, job: Job) -> Result<(), EnqueueError> {
    metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
    match queue.try_send(job) {
        Ok(()) => Ok(()),
        Err(e) => {
            metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
            Err(match e {
                TrySendError::Full(_) => EnqueueError::Full,
                TrySendError::Disconnected(_) => EnqueueError::Closed,
            })
        }
    }
}

/// Loads the model on a new thread and starts serving the queue. Returns once the model is
/// loaded (or failed to load).
pub fn start(
    opts: WorkerOptions,
    capacity: usize,
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<Metrics>,
    control: Arc<Control>,
) -> Result<Worker, String> {
    let (queue, rx) = sync_channel::<Job>(capacity);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<ModelInfo, String>>();
    let thread = std::thread::Builder::new()
        .name("qwgpu-gpu".into())
        .spawn(move || {
            let (session, batch) = match load(&opts) {
                Ok((session, batch, info)) => {
                    let _ = ready_tx.send(Ok(info));
                    (session, batch)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let cache = opts.prompt_cache;
            let dir = opts.prompt_cache_dir.as_deref();
            serve(
                session, batch, rx, &tokenizer, &metrics, &control, cache, dir,
            );
        })
        .map_err(|e| format!("cannot start the GPU thread: {e}"))?;
    match ready_rx.recv() {
        Ok(Ok(info)) => Ok(Worker {
            queue,
            info,
            thread,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("the GPU thread stopped while loading the model".into()),
    }
}

fn load(o: &WorkerOptions) -> Result<(Session, Option<Batcher>, ModelInfo), String> {
    let gopts = GpuOptions {
        adapter: o.adapter.clone(),
        shader_checks: Some(o.shader_checks),
        ..Default::default()
    };
    let gpu = pollster::block_on(Gpu::new(&gopts)).map_err(|e| e.to_string())?;
    let device = gpu.describe();
    let mut progress = |_: u64, _: u64| {};
    let model = match &o.model_dir {
        Some(dir) => Model::load(gpu, dir, &mut progress),
        #[cfg(feature = "default-model")]
        None => qwgpu_engine::default_model::load(gpu, &mut progress),
        #[cfg(not(feature = "default-model"))]
        None => return Err("no --model given and no embedded default model".into()),
    }
    .map_err(|e| e.to_string())?;
    let model = Arc::new(model);
    let mut session =
        pollster::block_on(Session::new(model.clone(), o.session)).map_err(|e| e.to_string())?;
    session.force_accept(o.force_accept);
    let batch = if o.batch > 0 {
        let b = pollster::block_on(Batch::new(
            model.clone(),
            BatchOptions {
                slots: o.batch,
                max_ctx: session.opts.max_ctx,
                kv_f16: session.opts.kv_f16,
                attn_split: session.opts.attn_split,
            },
        ))
        .map_err(|e| format!("--batch {}: {e}", o.batch))?;
        let slice = o.join_slice.unwrap_or(session.opts.prefill_chunk as usize);
        let mut b = Batcher::new(b, slice);
        b.resume = o.batch_resume;
        Some(b)
    } else {
        None
    };
    let info = ModelInfo {
        has_mtp: model.has_mtp(),
        vocab_size: model.config.vocab_size as u32,
        max_ctx: session.opts.max_ctx,
        eos_ids: model.config.eos_token_ids.clone(),
        device,
        notes: model.notes.clone(),
    };
    Ok((session, batch, info))
}

#[allow(clippy::too_many_arguments)]
fn serve(
    mut session: Session,
    mut batcher: Option<Batcher>,
    rx: Receiver<Job>,
    tokenizer: &Tokenizer,
    metrics: &Metrics,
    control: &Control,
    prompt_cache: usize,
    cache_dir: Option<&std::path::Path>,
) {
    let cache_dir = cache_dir.filter(|_| prompt_cache > 0);
    // The states of the most recent prompts, most recent first (a conversation's next request
    // starts with its last one's prompt; several conversations can take turns).
    let mut cache = PromptCache {
        entries: Vec::new(),
        capacity: prompt_cache,
    };
    if let Some(dir) = cache_dir {
        cache.entries = load_cache_dir(dir, &mut session, prompt_cache);
    }
    // Jobs taken from the queue while a batch ran, to run when it allows (arrival order).
    let mut deferred: std::collections::VecDeque<Job> = Default::default();
    loop {
        if let Some(b) = batcher.as_mut().filter(|b| b.active() > 0 || b.joining()) {
            // Between steps, in arrival order: a waiting greedy request joins when a slot is
            // free (its prompt prefilled a slice between two steps, one request at a time); one
            // that cannot join runs alone, the batch's streams pausing meanwhile (their state
            // stays in the batch).
            while let Ok(j) = rx.try_recv() {
                metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                deferred.push_back(j);
            }
            if b.joining() {
                advance_join(b, &mut session, metrics, &mut cache);
            }
            // The only stream left asks for MTP and nothing waits: it continues alone with
            // speculation (the fastest for one user), when its tokens to come can pay for
            // feeding its tokens so far again.
            // Once not worth it, it never is (its tokens left only shrink while the ids to feed
            // again grow): the stream stays in the batch without being weighed at every step.
            let resume = (deferred.is_empty()
                && metrics.queue_depth.load(Ordering::SeqCst) <= 0
                && session.has_mtp_head())
            .then(|| {
                b.lone_speculator()
                    .map(|(job, tokens)| worth_resuming(job, tokens, &cache))
            })
            .flatten();
            if resume == Some(false) {
                b.keep_lone();
            }
            if resume == Some(true) {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    b.detach_lone(tokenizer, metrics, control)
                }));
                let r = match r {
                    Ok(r) => r,
                    Err(_) => {
                        cache.entries.clear();
                        b.fail_all(metrics);
                        None
                    }
                };
                if let Some(r) = r {
                    metrics.batch_resumes.fetch_add(1, Ordering::Relaxed);
                    let (job, prior) = Prior::from(r);
                    let into = eligible(&job).then_some(&mut *b);
                    run_alone(
                        &mut session,
                        job,
                        tokenizer,
                        metrics,
                        control,
                        &mut cache,
                        into,
                        Some(prior),
                    );
                }
                metrics
                    .busy
                    .store(b.active() > 0 || b.joining(), Ordering::SeqCst);
                continue;
            }
            while let Some(front) = deferred.front() {
                if b.joining() {
                    break;
                }
                if eligible(front) && !b.has_room() {
                    break;
                }
                let Some(job) = deferred
                    .pop_front()
                    .and_then(|j| admissible(j, metrics, control))
                else {
                    continue;
                };
                if eligible(&job) {
                    join(b, &mut session, job, metrics, &mut cache);
                } else {
                    // Nothing of the batch runs meanwhile: its steps in flight are read first.
                    let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        b.settle(tokenizer, metrics, control)
                    }));
                    if settled.is_err() {
                        cache.entries.clear();
                        b.fail_all(metrics);
                    }
                    run_alone(
                        &mut session,
                        job,
                        tokenizer,
                        metrics,
                        control,
                        &mut cache,
                        None,
                        None,
                    );
                    break;
                }
            }
            if b.active() == 0 {
                continue;
            }
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                b.step(tokenizer, metrics, control)
            }));
            if stepped.is_err() {
                cache.entries.clear();
                b.fail_all(metrics);
            }
            metrics
                .busy
                .store(b.active() > 0 || b.joining(), Ordering::SeqCst);
            continue;
        }
        let job = match deferred.pop_front() {
            Some(j) => j,
            None => match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(j) => {
                    metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                    j
                }
                Err(RecvTimeoutError::Timeout) => {
                    if control.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let Some(job) = admissible(job, metrics, control) else {
            continue;
        };
        metrics.busy.store(true, Ordering::SeqCst);
        let mut handoff = false;
        if let Some(b) = batcher.as_mut() {
            // Alone with nothing waiting, a request that asks for MTP speculates instead, until
            // another request arrives: then it moves into the batch (`Handoff`).
            let alone = deferred.is_empty() && metrics.queue_depth.load(Ordering::SeqCst) <= 0;
            // (Per-token logprobs come from plain decoding: such a request joins the batch.)
            let speculate = job.mtp && !job.logprobs && session.has_mtp_head() && alone;
            if eligible(&job) && !speculate {
                join(b, &mut session, job, metrics, &mut cache);
                metrics.busy.store(b.active() > 0, Ordering::SeqCst);
                continue;
            }
            // (A constrained request that speculates alone finishes alone: its constraint has
            // taken the tokens so far.)
            handoff = eligible(&job) && job.constraint.is_none() && !job.logprobs;
        }
        run_alone(
            &mut session,
            job,
            tokenizer,
            metrics,
            control,
            &mut cache,
            batcher.as_mut().filter(|_| handoff),
            None,
        );
        // (A request handed into the batch decodes on there.)
        metrics.busy.store(
            batcher.as_ref().is_some_and(|b| b.active() > 0),
            Ordering::SeqCst,
        );
    }
    if let Some(dir) = cache_dir {
        store_cache_dir(dir, &session, &cache.entries);
    }
}

/// Whether a stream left alone in the batch (`job`, its `tokens` so far) should continue alone
/// with speculation: that feeds its prompt and tokens again (the part the prompt cache does not
/// hold), so it pays only if enough tokens may still come. Prefill runs many times faster than
/// decoding per token and speculation saves a fraction of a decode step per token, so a
/// request moves when the tokens it may still generate are at least the ids to feed again.
fn worth_resuming(job: &Job, tokens: &[u32], cache: &PromptCache) -> bool {
    let left = job.max_tokens.saturating_sub(tokens.len());
    if tokens.is_empty() || left < RESUME_MIN_LEFT {
        return false;
    }
    let mut ids = job.prompt.clone();
    ids.extend_from_slice(tokens);
    let cached = if cache.capacity > 0 {
        cache
            .best(&ids, true)
            .map_or(0, |i| reusable(&cache.entries[i], &ids, true))
    } else {
        0
    };
    left >= ids.len() - cached
}

/// The fewest tokens a stream may still generate for it to leave the batch and speculate.
const RESUME_MIN_LEFT: usize = 16;

/// The file of entry `i` (0 = the most recent) of the on-disk prompt cache of `session`'s model:
/// named by its configuration's checksum, so other models' entries in the same folder are left
/// alone.
fn cache_file(dir: &std::path::Path, session: &Session, i: usize) -> PathBuf {
    let crc = qwgpu_engine::state::config_crc(&session.model.config);
    dir.join(format!("prompt-{crc:08x}-{i}.state"))
}

/// The entries of this model's on-disk prompt cache that this session can restore (each is
/// restored once to check it: a state saved with another context size or KV type is left out
/// with a line on stderr), most recent first.
fn load_cache_dir(
    dir: &std::path::Path,
    session: &mut Session,
    capacity: usize,
) -> Vec<SavedState> {
    let mut out = Vec::new();
    for i in 0..capacity {
        let path = cache_file(dir, session, i);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                eprintln!("qwgpu-server: prompt cache {}: {e}", path.display());
                continue;
            }
        };
        let state = SavedState::from_bytes(&bytes)
            .map_err(RunError::from)
            .and_then(|s| session.restore(&s).map(|()| s));
        match state {
            Ok(s) => out.push(s),
            Err(e) => eprintln!(
                "qwgpu-server: prompt cache {}: not used: {e}",
                path.display()
            ),
        }
    }
    session.reset();
    if !out.is_empty() {
        eprintln!(
            "qwgpu-server: {} prompt states restored from {}",
            out.len(),
            dir.display()
        );
    }
    out
}

/// Writes the prompt cache's entries to `dir` (each through a temporary file, so a failed write
/// leaves the previous file) and removes this model's files past them.
fn store_cache_dir(dir: &std::path::Path, session: &Session, entries: &[SavedState]) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("qwgpu-server: prompt cache {}: {e}", dir.display());
        return;
    }
    for (i, st) in entries.iter().enumerate() {
        let path = cache_file(dir, session, i);
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, st.to_bytes()).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            eprintln!("qwgpu-server: prompt cache {}: {e}", path.display());
        }
    }
    for i in entries.len().. {
        let path = cache_file(dir, session, i);
        if std::fs::remove_file(&path).is_err() {
            break;
        }
    }
}

/// Saved prompt states, most recent first, at most `capacity`.
pub(crate) struct PromptCache {
    pub(crate) entries: Vec<SavedState>,
    pub(crate) capacity: usize,
}

impl PromptCache {
    /// The entry that stands for the most ids of `prompt`, if any does (the most recent of
    /// equals).
    fn best(&self, prompt: &[u32], mtp: bool) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (reusable(e, prompt, mtp), i))
            .filter(|(k, _)| *k > 0)
            .max_by_key(|(k, i)| (*k, std::cmp::Reverse(*i)))
            .map(|(_, i)| i)
    }

    /// After a request that used entry `used` and recorded `new` (shortest first): the used
    /// entry moves first, then the new ones go before it (each replacing one with the same ids),
    /// the longest first; the oldest fall out. So a shared start that new conversations keep
    /// using stays in.
    fn keep(&mut self, used: Option<usize>, new: Vec<SavedState>) {
        if let Some(i) = used {
            let e = self.entries.remove(i);
            self.entries.insert(0, e);
        }
        for n in new {
            self.entries
                .retain(|e| e.tokens != n.tokens || e.mtp_next != n.mtp_next);
            self.entries.insert(0, n);
        }
        self.entries.truncate(self.capacity);
    }
}

/// Admits `job` into the batch (its prompt prefilled in `session`). An engine panic fails this
/// request, not the server.
fn join(
    b: &mut Batcher,
    session: &mut Session,
    job: Job,
    metrics: &Metrics,
    cache: &mut PromptCache,
) {
    let tx = job.tx.clone();
    guarded(b, &tx, metrics, cache, |b, cache| {
        b.join(session, job, metrics, cache)
    });
}

/// The joining request's next prompt slice (see [`Batcher::advance_join`]). An engine panic
/// fails this request, not the server.
fn advance_join(
    b: &mut Batcher,
    session: &mut Session,
    metrics: &Metrics,
    cache: &mut PromptCache,
) {
    let Some(tx) = b.joining_tx() else {
        return;
    };
    guarded(b, &tx, metrics, cache, |b, cache| {
        b.advance_join(session, metrics, cache)
    });
}

/// Continues a request that ran alone in the batch (see [`Batcher::adopt`]). An engine panic
/// fails this request, not the server.
fn adopt(
    b: &mut Batcher,
    session: &mut Session,
    h: Handoff,
    tokenizer: &Tokenizer,
    metrics: &Metrics,
    control: &Control,
    cache: &mut PromptCache,
) {
    metrics.batch_handoffs.fetch_add(1, Ordering::Relaxed);
    let tx = h.job.tx.clone();
    guarded(b, &tx, metrics, cache, |b, cache| {
        b.adopt(session, h, tokenizer, metrics, control, cache)
    });
}

/// Runs `f` (a request entering the batch); if the engine panics in it, the batch's slots that
/// hold no stream are freed and the request on `tx` fails (500), not the server.
fn guarded(
    b: &mut Batcher,
    tx: &UnboundedSender<Event>,
    metrics: &Metrics,
    cache: &mut PromptCache,
    f: impl FnOnce(&mut Batcher, &mut PromptCache),
) {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *b, &mut *cache)));
    if ran.is_err() {
        b.drop_join();
        b.release_stray();
        panicked(metrics, tx, cache);
    }
}

/// After an engine panic in a request: it fails (500), and nothing of the run is trusted again.
fn panicked(metrics: &Metrics, tx: &UnboundedSender<Event>, cache: &mut PromptCache) {
    cache.entries.clear();
    metrics.failed.fetch_add(1, Ordering::Relaxed);
    let _ = tx.send(panic_event());
}

/// What a client hears when an engine panic ended its request.
pub(crate) fn panic_event() -> Event {
    Event::Failed {
        status: 500,
        code: "generation_failed",
        message: "the generation failed (engine panic; see the server log)".into(),
    }
}

/// Runs `job` alone in `session` (continuing `prior` when given). With `into`, the job may stop
/// after a token when another request waits and continue in that batch (a [`Handoff`]). An
/// engine panic fails this request, not the server (the next request resets the state).
#[allow(clippy::too_many_arguments)]
fn run_alone(
    session: &mut Session,
    job: Job,
    tokenizer: &Tokenizer,
    metrics: &Metrics,
    control: &Control,
    cache: &mut PromptCache,
    into: Option<&mut Batcher>,
    prior: Option<Prior>,
) {
    let tx = job.tx.clone();
    let handoff = into.is_some();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(
            session, job, tokenizer, metrics, control, cache, handoff, prior,
        )
    }));
    match ran {
        Ok(Some(h)) => {
            if let Some(b) = into {
                adopt(b, session, h, tokenizer, metrics, control, cache);
            }
        }
        Ok(None) => {}
        Err(_) => panicked(metrics, &tx, cache),
    }
}

/// `job` if it should still run: not when its client left, the server is draining or its
/// deadline passed in the queue (each reported).
fn admissible(job: Job, metrics: &Metrics, control: &Control) -> Option<Job> {
    if job.tx.is_closed() {
        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    if control.draining.load(Ordering::SeqCst) {
        let _ = job.tx.send(Event::Failed {
            status: 503,
            code: "shutting_down",
            message: "The server is shutting down".into(),
        });
        return None;
    }
    if Instant::now() >= job.deadline {
        metrics.timed_out.fetch_add(1, Ordering::Relaxed);
        let _ = job.tx.send(Event::Failed {
            status: 503,
            code: "timeout",
            message: "The request timed out while waiting in the queue".into(),
        });
        return None;
    }
    Some(job)
}

/// Prefills `prompt` but its last id in `session`, restoring and recording prompt cache entries
/// (at the job's `checkpoint` and `shared` points, see [`Job`]) when the cache is on (`mtp`: the
/// MTP cache too). Returns the prompt ids restored from the cache.
pub(crate) fn prefill_job(
    session: &mut Session,
    prompt: &[u32],
    points: (Option<usize>, Option<usize>),
    cache: &mut PromptCache,
    mtp: bool,
) -> Result<usize, RunError> {
    let mut feed = JobFeed::start(session, prompt, points, cache, mtp)?;
    while !feed.advance(session, usize::MAX, cache)? {}
    Ok(feed.finish(cache))
}

/// [`prefill_job`] in pieces (a prompt joining the batch between its steps): the prompt cache's
/// best entry restored at the start, at most a given number of ids fed per
/// [`JobFeed::advance`], the new entries kept at the end ([`JobFeed::finish`]). Nothing else may
/// use the session or the prompt cache meanwhile.
pub(crate) struct JobFeed {
    feed: PromptFeed,
    /// The cache entry restored (its index when the feed started).
    best: Option<usize>,
    /// The cache's length then (an entry index is only trusted while it stands).
    cache_len: usize,
}

impl JobFeed {
    pub(crate) fn start(
        session: &mut Session,
        prompt: &[u32],
        (checkpoint, shared): (Option<usize>, Option<usize>),
        cache: &mut PromptCache,
        mtp: bool,
    ) -> Result<JobFeed, RunError> {
        if cache.capacity == 0 {
            return Ok(JobFeed {
                feed: PromptFeed::start(session, prompt, None, false, &[])?,
                best: None,
                cache_len: 0,
            });
        }
        let at = checkpoint.unwrap_or(prompt.len().saturating_sub(1));
        let points: Vec<usize> = shared.into_iter().chain([at]).collect();
        let best = cache.best(prompt, mtp);
        let from = best.map(|i| &cache.entries[i]);
        match PromptFeed::start(session, prompt, from, mtp, &points) {
            Ok(feed) => Ok(JobFeed {
                feed,
                best,
                cache_len: cache.entries.len(),
            }),
            Err(e) => {
                cache.entries.clear();
                Err(e)
            }
        }
    }

    /// Feeds at most `max_ids` more ids; true once the prompt (but its last id) is in.
    pub(crate) fn advance(
        &mut self,
        session: &mut Session,
        max_ids: usize,
        cache: &mut PromptCache,
    ) -> Result<bool, RunError> {
        let r = pollster::block_on(self.feed.advance(session, max_ids));
        if r.is_err() && cache.capacity > 0 {
            cache.entries.clear();
        }
        r
    }

    /// Keeps the entries recorded; returns the ids restored from the cache.
    pub(crate) fn finish(self, cache: &mut PromptCache) -> usize {
        let (reused, entries) = self.feed.finish();
        if cache.capacity > 0 {
            // (The cache changed meanwhile only if an engine failure emptied it.)
            let best = self.best.filter(|_| cache.entries.len() == self.cache_len);
            cache.keep(best, entries);
        }
        reused
    }
}

/// A job the engine could not run: counted, logged and reported to the client.
pub(crate) fn fail(metrics: &Metrics, tx: &UnboundedSender<Event>, e: &RunError) {
    metrics.failed.fetch_add(1, Ordering::Relaxed);
    eprintln!("qwgpu-server: generation failed: {e}");
    let _ = tx.send(Event::Failed {
        status: 500,
        code: "generation_failed",
        message: e.to_string(),
    });
}

/// The part of a reply generated before a run continues it (a stream that left the batch, a
/// [`Resume`]): its tokens (all handed out, the last not yet fed), the parser that took them,
/// and its timings and counts.
pub(crate) struct Prior {
    tokens: Vec<u32>,
    /// (Taken by the run.)
    parser: Option<StreamParser>,
    queue_s: f64,
    t0: Instant,
    ttft: f64,
    cached_tokens: usize,
    mtp: Option<(u64, u64)>,
}

impl Prior {
    fn from(r: Resume) -> (Job, Prior) {
        (
            r.job,
            Prior {
                tokens: r.tokens,
                parser: Some(r.parser),
                queue_s: r.queue_s,
                t0: r.t0,
                ttft: r.ttft,
                cached_tokens: r.cached_tokens,
                mtp: r.mtp,
            },
        )
    }
}

/// Adds MTP counts (drafted, accepted).
fn mtp_sum(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some(a), Some(b)) => Some((a.0 + b.0, a.1 + b.1)),
        (a, b) => a.or(b),
    }
}

/// Runs `job` in `session`. `handoff`: the job may decode in the batch, so when another request
/// waits it stops after a token and is returned as a [`Handoff`] for the batch to continue.
/// `prior`: the reply's first part, generated elsewhere (the batch): the run feeds the prompt
/// and those tokens (through the prompt cache) and continues the reply.
#[allow(clippy::too_many_arguments)]
fn run(
    session: &mut Session,
    mut job: Job,
    tokenizer: &Tokenizer,
    metrics: &Metrics,
    control: &Control,
    cache: &mut PromptCache,
    handoff: bool,
    prior: Option<Prior>,
) -> Option<Handoff> {
    let tx = job.tx.clone();
    if prior.is_none() {
        let _ = tx.send(Event::Started);
    }
    let queue_s = prior
        .as_ref()
        .map_or_else(|| job.enqueued.elapsed().as_secs_f64(), |p| p.queue_s);
    let mut prior = prior;
    let parser = prior.as_mut().map(|p| p.parser.take());
    let prior = prior;
    let before: &[u32] = prior.as_ref().map_or(&[], |p| &p.tokens);
    // The job stays whole (a hand-off continues it in the batch).
    let mut prompt = job.prompt.clone();
    prompt.extend_from_slice(before);
    let mut sampling = job.sampling.clone();
    // Draws of its own for the rest (the sampler's draws restart with the run), as a request
    // handed into the batch gets.
    sampling.seed = sampling
        .seed
        .wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(before.len() as u64));
    let req = TextRequest {
        prompt,
        max_tokens: job.max_tokens.saturating_sub(before.len()),
        stream: job.stream.clone(),
        ignore_eos: job.ignore_eos,
        mtp: job.mtp,
        mtp_adaptive: job.mtp_adaptive,
        sampling: Some(sampling),
        logprobs: job.logprobs,
        in_context: 0,
    };
    session.reset();
    let t0 = prior.as_ref().map_or_else(Instant::now, |p| p.t0);
    let mut req = req;
    let mut cached_tokens = prior.as_ref().map_or(0, |p| p.cached_tokens);
    if cache.capacity > 0 {
        // generate_text speculates when the job asks for MTP without per-token logprobs.
        let mtp = req.mtp && !req.logprobs && session.mtp_available();
        // A continued reply: the prompt's own cache points (its entries reused, none added).
        let points = match prior {
            Some(_) => (
                Some(job.checkpoint.unwrap_or(job.prompt.len().saturating_sub(1))),
                job.shared,
            ),
            None => (job.checkpoint, job.shared),
        };
        match prefill_job(session, &req.prompt, points, cache, mtp) {
            Ok(reused) => {
                if prior.is_none() {
                    cached_tokens = reused;
                }
                req.in_context = req.prompt.len() - 1;
            }
            Err(e) => {
                fail(metrics, &tx, &e);
                return None;
            }
        }
    }
    let mut ttft = prior.as_ref().map(|p| p.ttft);
    let (mut gone, mut cut_short, mut handed) = (false, false, false);
    let earlier_mtp = prior.as_ref().and_then(|p| p.mtp);
    let mut mtp_counts = None;
    let deadline = job.deadline;
    let want_tokens = job.logprobs;
    let mut constraint = job.constraint.take();
    let c = constraint
        .as_deref_mut()
        .map(|c| c as &mut dyn TokenConstraint);
    let continued = prior.is_some();
    let mut on_event = |e: TextEvent<'_>| {
        if handed {
            // Handed over: what the generation flushes as it stops is the batch's to send.
            return false;
        }
        if handoff
            && matches!(e, TextEvent::Token(..))
            && metrics.queue_depth.load(Ordering::SeqCst) > 0
        {
            // Another request waits: this token and the rest go to the batch.
            handed = true;
            return false;
        }
        match e {
            TextEvent::PromptDone => {
                // (A continued reply's client had its first token long ago.)
                if !continued {
                    ttft = Some(t0.elapsed().as_secs_f64());
                    let _ = tx.send(Event::PromptDone);
                }
            }
            TextEvent::Token(id, lp) => {
                if want_tokens {
                    let _ = tx.send(Event::Token {
                        id,
                        logprobs: lp.cloned(),
                    });
                }
            }
            TextEvent::Delta(d) => {
                let _ = tx.send(Event::Delta(d.clone()));
            }
            TextEvent::Mtp { drafted, accepted } => {
                mtp_counts = Some((drafted, accepted));
                let (drafted, accepted) =
                    mtp_sum(earlier_mtp, mtp_counts).unwrap_or((drafted, accepted));
                let _ = tx.send(Event::Mtp { drafted, accepted });
            }
        }
        if tx.is_closed() {
            gone = true;
            return false;
        }
        if control.cut(deadline) {
            cut_short = true;
            return false;
        }
        true
    };
    let result = pollster::block_on(async {
        match parser.flatten() {
            Some(parser) => continue_text(session, tokenizer, &req, parser, &mut on_event).await,
            None => generate_text_constrained(session, tokenizer, &req, c, &mut on_event).await,
        }
    });
    let total_s = t0.elapsed().as_secs_f64();
    let out = match result {
        Ok(out) => out,
        Err(e) => {
            fail(metrics, &tx, &e);
            return None;
        }
    };
    let mtp = mtp_sum(earlier_mtp, out.mtp.map(|m| (m.drafted, m.accepted)));
    let mut tokens = prior.map(|p| p.tokens).unwrap_or_default();
    tokens.extend_from_slice(&out.tokens);
    if handed {
        return Some(Handoff {
            job,
            tokens,
            queue_s,
            t0,
            ttft: ttft.unwrap_or(total_s),
            cached_tokens,
            mtp: mtp_sum(earlier_mtp, mtp_counts),
        });
    }
    let completion_tokens = tokens.len();
    let ttft_s = ttft.unwrap_or(total_s);
    let mut finish = out.summary.finish_reason;
    if cut_short && !gone {
        // A limit ended the reply, as max_tokens would have.
        finish = FinishReason::Length;
        metrics.timed_out.fetch_add(1, Ordering::Relaxed);
    }
    if gone {
        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    metrics.generation(&GenerationRecord {
        prompt_tokens: job.prompt.len(),
        cached_tokens,
        completion_tokens,
        ttft_s,
        total_s,
        finish_reason: finish.as_str(),
        mtp,
    });
    eprintln!(
        "qwgpu-server: {} prompt ({cached_tokens} cached) + {completion_tokens} generated tokens{}, TTFT {ttft_s:.2}s, {:.1} tok/s{}, {}{}",
        job.prompt.len(),
        if continued { " (continued from the batch)" } else { "" },
        if completion_tokens > 1 { (completion_tokens - 1) as f64 / (total_s - ttft_s).max(1e-9) } else { 0.0 },
        mtp.map(|(d, a)| format!(", MTP {a}/{d} accepted")).unwrap_or_default(),
        finish.as_str(),
        if gone { " (client gone)" } else if cut_short { " (time limit)" } else { "" },
    );
    let done = Done {
        summary: out.summary,
        finish,
        prompt_tokens: job.prompt.len(),
        completion_tokens,
        queue_s,
        ttft_s,
        total_s,
        mtp: mtp.map(|(drafted, accepted)| MtpStats { drafted, accepted }),
        cut_short,
        cached_tokens,
    };
    let _ = tx.send(Event::Done(Box::new(done)));
    None
}
