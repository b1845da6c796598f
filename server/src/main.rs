//! `qwgpu-server`: an OpenAI-compatible HTTP API (chat completions, completions, models) and a
//! web chat UI for a qwgpu model. One GPU thread runs one request at a time from a bounded queue
//! (see `worker`); the HTTP side validates requests, renders the chat template, tokenizes, checks
//! the context limit, and streams the GPU thread's events back as JSON or server-sent events.

mod batch;
mod error;
mod files;
mod metrics;
mod request;
mod response;
mod worker;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, ValueEnum};
use qwgpu_engine::decode::constrain::TokenConstraint;
use qwgpu_engine::model::SessionOptions;
use qwgpu_engine::text::grammar::{AfterReasoning, GrammarEnv, GrammarSpec};
use qwgpu_engine::text::stream::StreamConfig;
use qwgpu_engine::text::toolcall::ToolSchemas;
use qwgpu_engine::text::{ChatTemplate, Tokenizer};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use error::ApiError;
use metrics::Metrics;
use request::{GenParams, Prompt};
use response::{ChatStream, CompletionStream};
use worker::{Control, EnqueueError, Event, Job, ModelInfo};

/// The value type of the KV caches (`--kv-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum KvCacheType {
    F32,
    F16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum MtpMode {
    /// Speculative decoding when the checkpoint has an MTP head, dropped for the rest of a
    /// request whose drafts are rarely accepted.
    Auto,
    /// Always speculate; refuse to start without an MTP head.
    On,
    /// Never.
    Off,
}

#[derive(Parser, Debug)]
#[command(
    name = "qwgpu-server",
    version,
    about = "OpenAI-compatible API and web chat UI for Qwen3.5 / Qwen3.6 on any GPU through wgpu"
)]
struct Args {
    /// Model directory (config.json, model*.safetensors, tokenizer.json). Default: the embedded
    /// default model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The id clients use in "model" (default: the directory name, or qwgpu-default).
    #[arg(long)]
    model_name: Option<String>,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Positions the context holds (prompt + generated tokens).
    #[arg(long, default_value_t = 4096)]
    max_context: u32,
    /// Prompt tokens per prefill call (larger chunks keep more of a large GPU busy: a 1024-token
    /// prompt of the 27B on an H200 in 0.70 s with 1024 against 0.84 s with 512, for 0.3 GB more
    /// workspace).
    #[arg(long, default_value_t = 1024)]
    prefill_chunk: u32,
    /// What the attention KV caches hold: f32, or f16 (half the memory and the reads at long
    /// contexts; keys and values rounded to f16 as they are written).
    #[arg(long, value_enum, default_value = "f32")]
    kv_cache: KvCacheType,
    /// Requests that may wait for the GPU; more get 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Time limit of one request in seconds, queueing included; a generation that reaches it
    /// ends with finish_reason "length".
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Speculative decoding with the model's MTP head.
    #[arg(long, value_enum, default_value = "auto")]
    mtp: MtpMode,
    /// Directory served at /demo/ (default: web/dist when it exists).
    #[arg(long)]
    demo_dir: Option<PathBuf>,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Seconds a running generation may continue after Ctrl-C / SIGTERM before it is cut.
    #[arg(long, default_value_t = 10)]
    shutdown_grace_s: u64,
    /// Adapter: a backend (vulkan, metal, dx12, gl) or part of the adapter name (also QWGPU_ADAPTER).
    #[arg(long)]
    adapter: Option<String>,
    /// Keep wgpu's shader bounds checks (slower; for debugging).
    #[arg(long)]
    shader_checks: bool,
    /// Prompt states kept for reuse (host memory: ≈ 150 MB + 136 MB per 1024 positions for the 27B;
    /// 0 = prefill every prompt whole). A chat request's state is kept up to its last message, so
    /// the conversation's next request prefills only the reply and the new message (same output;
    /// usage.prompt_tokens_details.cached_tokens counts the ids reused).
    #[arg(long, default_value_t = 4)]
    prompt_cache_entries: usize,
    /// Keep the prompt cache across restarts: its states are read from DIR at start and written
    /// there at shutdown (one file per entry; for the 27B ≈ 150 MB plus 136 MB per 1024 positions
    /// each).
    #[arg(long, value_name = "DIR")]
    prompt_cache_dir: Option<PathBuf>,
    /// Decode up to N requests together (4 at most; 0 = one request at a time): one forward
    /// call per step serves all of them, each getting the tokens (and logprobs) it would get
    /// alone, constrained ones under their response_format; a lone request that asks for MTP
    /// still speculates.
    #[arg(long, default_value_t = 0, value_name = "N")]
    batch: u32,
    /// With --batch: a request that arrives while others decode has its prompt prefilled N ids
    /// at a time, with a step of theirs between two slices, so a long prompt does not stall
    /// their replies (default: --prefill-chunk; 0 = the whole prompt first, the others pausing).
    #[arg(long, value_name = "N")]
    join_slice: Option<usize>,
    /// With --batch: a request that asked for MTP and is left alone in the batch stays there
    /// (by default it continues alone with speculation when the tokens it may still generate
    /// pay for feeding its tokens so far again).
    #[arg(long)]
    no_batch_resume: bool,
    /// Benchmarks only: greedy MTP verifies accept with this probability whatever the drafts
    /// (a synthetic checkpoint's head never agrees), so replies are NOT the model's output.
    #[arg(long, value_name = "RATE")]
    bench_force_accept: Option<f64>,
}

/// Everything the handlers share.
struct App {
    name: String,
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    queue: std::sync::mpsc::SyncSender<Job>,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
    control: Arc<Control>,
    mtp: MtpMode,
    timeout: Duration,
    max_body: usize,
    demo_dir: Option<PathBuf>,
    created: u64,
    /// The vocabulary's token trie for `response_format` (None: it could not be built; such
    /// requests get 400).
    grammar: Option<Arc<GrammarEnv>>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qwgpu-server: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let t0 = Instant::now();
    let (tokenizer, template, name) = match &args.model {
        Some(dir) => {
            // The config first, so a missing directory is named as such; a tokenizer of another
            // model is refused before the weights are read.
            let cfg = qwgpu_engine::model::session::read_config(dir).map_err(|e| e.to_string())?;
            let tok = Tokenizer::from_model_dir(dir).map_err(|e| format!("{}: the server needs the checkpoint's tokenizer.json: {e}", dir.display()))?;
            tok.check_model(cfg.vocab_size, &cfg.eos_token_ids).map_err(|e| e.to_string())?;
            let tpl = ChatTemplate::from_model_dir(dir).map_err(|e| e.to_string())?;
            let name = dir.canonicalize().ok().and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| dir.display().to_string());
            (tok, tpl, name)
        }
        #[cfg(feature = "default-model")]
        None => {
            use qwgpu_engine::default_model as dm;
            let (cfg, tok) = (dm::config().map_err(|e| e.to_string())?, dm::tokenizer().map_err(|e| e.to_string())?);
            tok.check_model(cfg.vocab_size, &cfg.eos_token_ids).map_err(|e| e.to_string())?;
            (tok, dm::template().map_err(|e| e.to_string())?, dm::NAME.to_string())
        }
        #[cfg(not(feature = "default-model"))]
        None => return Err("no --model given, and this qwgpu-server was built without the embedded default model (feature default-model)".into()),
    };
    let name = args.model_name.clone().unwrap_or(name);
    let tokenizer = Arc::new(tokenizer);
    let metrics = Arc::new(Metrics::default());
    let control = Arc::new(Control::default());
    eprintln!(
        "qwgpu-server: loading {}",
        args.model
            .as_ref()
            .map_or("the embedded default model".to_string(), |d| d
                .display()
                .to_string())
    );
    let w = worker::start(
        worker::WorkerOptions {
            model_dir: args.model.clone(),
            session: SessionOptions {
                max_ctx: args.max_context,
                prefill_chunk: args.prefill_chunk,
                // `--mtp off`: a plain session, whose decode matmuls take the RMSNorms.
                speculative: args.mtp != MtpMode::Off,
                kv_f16: args.kv_cache == KvCacheType::F16,
                ..Default::default()
            },
            adapter: args.adapter.clone(),
            shader_checks: args.shader_checks,
            prompt_cache: args.prompt_cache_entries,
            prompt_cache_dir: args.prompt_cache_dir.clone(),
            batch: args.batch,
            join_slice: args.join_slice,
            batch_resume: !args.no_batch_resume,
            force_accept: args.bench_force_accept,
        },
        args.queue,
        tokenizer.clone(),
        metrics.clone(),
        control.clone(),
    )?;
    for n in &w.info.notes {
        eprintln!("qwgpu-server: note: {n}");
    }
    if let Some(r) = args.bench_force_accept {
        eprintln!(
            "qwgpu-server: BENCHMARK MODE: MTP verifies accept with probability {r} whatever the drafts; replies are not the model's output"
        );
    }
    if args.mtp == MtpMode::On && !w.info.has_mtp {
        return Err("--mtp on: this checkpoint has no MTP head (no mtp.* tensors)".into());
    }
    let demo_dir = args
        .demo_dir
        .clone()
        .or_else(|| Some(PathBuf::from("web/dist")).filter(|p| p.is_dir()));
    eprintln!(
        "qwgpu-server: {name} on {} in {:.1}s; context {} tokens, MTP {}{}",
        w.info.device,
        t0.elapsed().as_secs_f64(),
        w.info.max_ctx,
        if !w.info.has_mtp || args.mtp == MtpMode::Off {
            "off"
        } else if args.mtp == MtpMode::On {
            "on"
        } else {
            "auto"
        },
        demo_dir
            .as_ref()
            .map(|d| format!(", /demo/ from {}", d.display()))
            .unwrap_or_default()
    );
    let grammar = match GrammarEnv::new(
        tokenizer.clone(),
        w.info.vocab_size as usize,
        &w.info.eos_ids,
    ) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            eprintln!("qwgpu-server: note: response_format is unavailable: {e}");
            None
        }
    };
    let app = Arc::new(App {
        grammar,
        name,
        info: w.info,
        tokenizer,
        template,
        queue: w.queue,
        queue_capacity: args.queue,
        metrics,
        control: control.clone(),
        mtp: args.mtp,
        timeout: Duration::from_secs(args.timeout_s.max(1)),
        max_body: args.max_body_bytes,
        demo_dir,
        created: response::unix_time(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let grace = Duration::from_secs(args.shutdown_grace_s);
    let result = rt.block_on(serve(app.clone(), &args.host, args.port, grace));
    control.stop.store(true, Ordering::SeqCst);
    drop(app);
    let _ = w.thread.join();
    rt.shutdown_timeout(Duration::from_secs(1));
    eprintln!("qwgpu-server: stopped");
    result
}

async fn serve(app: Arc<App>, host: &str, port: u16, grace: Duration) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let shown = if addr.is_ipv6() {
        format!("[{}]:{}", addr.ip(), addr.port())
    } else {
        addr.to_string()
    };
    // Tests and scripts read this line to find the port.
    println!("listening on http://{shown}");
    let router = router(app.clone());
    let control = app.control.clone();
    let shutdown = async move {
        wait_for_signal().await;
        eprintln!(
            "qwgpu-server: shutting down (running request: {} s to finish)",
            grace.as_secs()
        );
        *control
            .drain_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + grace);
        control.draining.store(true, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::time::sleep(grace + Duration::from_secs(10)).await;
            eprintln!("qwgpu-server: connections still open after the grace period; exiting");
            std::process::exit(0);
        });
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| e.to_string())
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { files::ui("index.html") }))
        .route(
            "/ui/{file}",
            get(|UrlPath(f): UrlPath<String>| async move { files::ui(&f) }),
        )
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/demo", get(|| async { files::redirect("/demo/") }))
        .route("/demo/", get(demo_index))
        .route("/demo/{*path}", get(demo))
        .route(
            "/models/default/{file}",
            get(|UrlPath(f): UrlPath<String>| async move { files::default_model_file(&f) }),
        )
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(app.max_body))
        .layer(axum::middleware::from_fn_with_state(app.clone(), track))
        .with_state(app)
}

/// Counts every request by endpoint and status.
async fn track(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let endpoint = match path {
        "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/models"
        | "/health"
        | "/metrics"
        | "/" => path.to_string(),
        p if p.starts_with("/v1/models/") => "/v1/models/{id}".into(),
        p if p.starts_with("/ui/") => "/ui".into(),
        p if p.starts_with("/demo") => "/demo".into(),
        p if p.starts_with("/models/") => "/models".into(),
        _ => "other".into(),
    };
    let r = next.run(req).await;
    app.metrics.request(&endpoint, r.status().as_u16());
    r
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let draining = app.control.draining.load(Ordering::SeqCst);
    let body = json!({
        "status": if draining { "shutting_down" } else { "ok" },
        "model": app.name,
        "device": app.info.device,
        "max_context": app.info.max_ctx,
        "mtp": app.info.has_mtp && app.mtp != MtpMode::Off,
        "busy": app.metrics.busy.load(Ordering::Relaxed),
        "queue_depth": app.metrics.queue_depth.load(Ordering::Relaxed).max(0),
        "queue_capacity": app.queue_capacity,
        "demo": app.demo_dir.is_some(),
    });
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let info = [
        ("model", app.name.clone()),
        ("device", app.info.device.clone()),
        (
            "mtp",
            (app.info.has_mtp && app.mtp != MtpMode::Off).to_string(),
        ),
        ("max_context", app.info.max_ctx.to_string()),
    ];
    let text = app.metrics.render(&info, app.queue_capacity);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn model_object(app: &App) -> Value {
    json!({
        "id": app.name,
        "object": "model",
        "created": app.created,
        "owned_by": "qwgpu",
        "max_model_len": app.info.max_ctx,
    })
}

async fn models(State(app): State<Arc<App>>) -> Response {
    Json(json!({"object": "list", "data": [model_object(&app)]})).into_response()
}

async fn model(State(app): State<Arc<App>>, UrlPath(id): UrlPath<String>) -> Response {
    if id == app.name {
        Json(model_object(&app)).into_response()
    } else {
        ApiError::model_not_found(&id, &app.name).into_response()
    }
}

async fn demo_index(State(app): State<Arc<App>>) -> Response {
    files::demo_file(app.demo_dir.as_deref(), "").await
}

async fn demo(State(app): State<Arc<App>>, UrlPath(path): UrlPath<String>) -> Response {
    files::demo_file(app.demo_dir.as_deref(), &path).await
}

// ------------------------------------------------------------------------------------------------
// Generation endpoints

fn body_bytes(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    match body {
        Ok(b) => Ok(b),
        Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(ApiError::too_large(app.max_body))
        }
        Err(r) => Err(ApiError::bad_json(format!(
            "could not read the request body: {}",
            r.body_text()
        ))),
    }
}

impl App {
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.name => Err(ApiError::model_not_found(m, &self.name)),
            _ => Ok(()),
        }
    }

    fn check_open(&self) -> Result<(), ApiError> {
        if self.control.draining.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable(
                "shutting_down",
                "The server is shutting down",
            ));
        }
        Ok(())
    }

    /// Checks the context limit and builds the job (nothing has touched the GPU yet).
    fn job(
        &self,
        prompt: Vec<u32>,
        gen: &GenParams,
        stream: StreamConfig,
        what: &str,
        received: Instant,
    ) -> Result<(Job, UnboundedReceiver<Event>), ApiError> {
        let max_ctx = self.info.max_ctx as usize;
        if prompt.len() + 1 > max_ctx {
            return Err(ApiError::context_length(
                what,
                format!(
                    "This model's maximum context length is {max_ctx} tokens. However, your {what} resulted in {} tokens, which leaves no room for a completion. Please reduce the length of the {what}.",
                    prompt.len()
                ),
            ));
        }
        let room = max_ctx - prompt.len();
        let max_tokens = gen.max_tokens.map_or(room, |m| m.min(room));
        let mut sampling = gen.sampling.clone();
        if !gen.seed_given {
            sampling.seed = response::random_u64();
        }
        let mtp = match self.mtp {
            MtpMode::Off => false,
            MtpMode::Auto | MtpMode::On => self.info.has_mtp && gen.mtp.unwrap_or(true),
        };
        let (tx, rx) = unbounded_channel();
        let job = Job {
            prompt,
            max_tokens,
            stream,
            sampling,
            logprobs: gen.logprobs,
            mtp,
            mtp_adaptive: self.mtp == MtpMode::Auto,
            ignore_eos: gen.ignore_eos,
            constraint: None,
            checkpoint: None,
            shared: None,
            enqueued: Instant::now(),
            deadline: received + self.timeout,
            tx,
        };
        Ok((job, rx))
    }

    /// The request's `n` jobs (choice i samples with seed `seed + i` when the client gave a
    /// seed, with a fresh one each otherwise), queued together; if the queue cannot take them
    /// all, none runs (the receivers of those already queued are dropped with the error, which
    /// cancels them).
    /// A `format` (response_format, required tool calls) is compiled for each choice first.
    #[allow(clippy::too_many_arguments)]
    async fn enqueue_choices(
        self: &Arc<Self>,
        prompt: Vec<u32>,
        gen: &GenParams,
        stream: StreamConfig,
        what: &str,
        received: Instant,
        format: Option<&(GrammarSpec, &'static str)>,
        adjust: impl Fn(&mut Job),
    ) -> Result<(Vec<UnboundedReceiver<Event>>, Instant), ApiError> {
        let constraints = self.constraints(format, gen.n, &prompt, &stream).await?;
        let mut rxs = Vec::with_capacity(gen.n);
        let mut deadline = received + self.timeout;
        let mut constraints = constraints.into_iter();
        for i in 0..gen.n.max(1) {
            let mut g = gen.clone();
            if g.seed_given {
                g.sampling.seed = g.sampling.seed.wrapping_add(i as u64);
            }
            let constraint = constraints.next();
            let (mut job, rx) = self.job(prompt.clone(), &g, stream.clone(), what, received)?;
            job.constraint = constraint;
            adjust(&mut job);
            deadline = job.deadline;
            self.enqueue(job)?;
            rxs.push(rx);
        }
        Ok((rxs, deadline))
    }

    /// The compiled `format` of each of `n` choices (none without a format), compiled off the
    /// I/O threads (a large schema can take a while).
    async fn constraints(
        self: &Arc<Self>,
        format: Option<&(GrammarSpec, &'static str)>,
        n: usize,
        prompt: &[u32],
        stream: &StreamConfig,
    ) -> Result<Vec<Box<dyn TokenConstraint + Send>>, ApiError> {
        let Some((spec, param)) = format.cloned() else {
            return Ok(Vec::new());
        };
        let (a, p, st) = (self.clone(), prompt.to_vec(), stream.clone());
        tokio::task::spawn_blocking(move || {
            (0..n.max(1))
                .map(|_| a.constraint(&spec, param, &p, &st))
                .collect()
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
    }

    /// The compiled `response_format` of one choice: it applies to the reply after any
    /// reasoning block the prompt leaves open.
    fn constraint(
        &self,
        spec: &GrammarSpec,
        param: &str,
        prompt: &[u32],
        stream: &StreamConfig,
    ) -> Result<Box<dyn TokenConstraint + Send>, ApiError> {
        let env = self.grammar.as_ref().ok_or_else(|| {
            ApiError::unsupported(
                "response_format",
                "structured output is unavailable for this model's tokenizer (see the server log)",
            )
        })?;
        let g = env.compile(spec).map_err(|e| {
            ApiError::invalid(
                param,
                format!("'{param}' could not be compiled into a constraint: {e}"),
            )
        })?;
        Ok(Box::new(AfterReasoning::new(g, stream.think_ids, prompt)))
    }

    fn enqueue(&self, job: Job) -> Result<(), ApiError> {
        match worker::enqueue(&self.queue, &self.metrics, job) {
            Ok(()) => Ok(()),
            Err(EnqueueError::Full) => {
                self.metrics
                    .rejected_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                let wait = self.metrics.mean_request_seconds() * (self.queue_capacity as f64 + 1.0);
                Err(ApiError::queue_full(
                    self.queue_capacity,
                    wait.ceil().clamp(1.0, 600.0) as u64,
                ))
            }
            Err(EnqueueError::Closed) => Err(ApiError::unavailable(
                "shutting_down",
                "The server is shutting down",
            )),
        }
    }

    fn base_stream_config(&self, stop: &[String]) -> StreamConfig {
        let mut s = self.tokenizer.stream_config(&self.info.eos_ids);
        s.stop_strings = stop.to_vec();
        s
    }
}

/// Fewest prompt ids worth a cache entry of their own for a conversation's shared start:
/// restoring a state copies every layer's recurrent state, which costs more than prefilling a
/// few ids.
const MIN_SHARED_IDS: usize = 32;

/// Where a chat prompt's `ids` stop being what any conversation with the same system messages,
/// tools and template arguments starts with: one id before the end of the common start of `ids`
/// and of the same system messages followed by a user message no real one begins with (a state
/// kept for speculation pairs its MTP cache with the id after it, which must then be shared
/// too). `None` without system messages or tools, or when that is fewer than
/// [`MIN_SHARED_IDS`]. Derived from the prompt's own ids, so a state saved there is this
/// prompt's; later prompts reuse it only where their ids match.
fn shared_start(
    app: &App,
    messages: &[Value],
    tools: Option<&[Value]>,
    kwargs: &serde_json::Map<String, Value>,
    ids: &[u32],
) -> Option<usize> {
    let lead = messages
        .iter()
        .take_while(|m| {
            matches!(
                m.get("role").and_then(Value::as_str),
                Some("system") | Some("developer")
            )
        })
        .count();
    if lead == 0 && tools.is_none_or(|t| t.is_empty()) {
        return None;
    }
    let mut probe = messages[..lead].to_vec();
    probe.push(json!({"role": "user", "content": "\u{E000}"}));
    let text = app.template.render(&probe, tools, false, kwargs).ok()?;
    let other = app.tokenizer.encode(&text, true).ok()?;
    let k = ids.iter().zip(&other).take_while(|(a, b)| a == b).count();
    let k = k.saturating_sub(1);
    (k >= MIN_SHARED_IDS).then_some(k)
}

async fn chat_completions(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    chat_inner(app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat_inner(
    app: Arc<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = body_bytes(&app, body)?;
    let obj = request::parse_body(&bytes)?;
    let req = request::chat(&obj, app.info.vocab_size)?;
    app.check_model(req.model.as_deref())?;
    app.check_open()?;
    // Rendering and tokenizing a long conversation takes a while: keep it off the I/O threads.
    let a = app.clone();
    let (req, prompt, checkpoint, shared) = tokio::task::spawn_blocking(move || {
        let text = a
            .template
            .render(&req.messages, req.tools.as_deref(), true, &req.kwargs)
            .map_err(|e| {
                ApiError::invalid(
                    "messages",
                    format!("the chat template could not render the messages: {e}"),
                )
            })?;
        let ids = a
            .tokenizer
            .encode(&text, true)
            .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        // Where the next request of this conversation stops sharing ids with this one: the
        // messages without the generation prompt (the template renders a reply differently once
        // it is history).
        let checkpoint = a
            .template
            .render(&req.messages, req.tools.as_deref(), false, &req.kwargs)
            .ok()
            .and_then(|t| a.tokenizer.encode(&t, true).ok())
            .filter(|h| !h.is_empty() && h.len() < ids.len() && ids.starts_with(h))
            .map(|h| h.len());
        let shared = shared_start(&a, &req.messages, req.tools.as_deref(), &req.kwargs, &ids)
            .filter(|&k| k < checkpoint.unwrap_or(ids.len().saturating_sub(1)));
        Ok::<_, ApiError>((req, ids, checkpoint, shared))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    let mut stream = app.base_stream_config(&req.gen.stop);
    stream.tool_calls = req.parse_tools;
    stream.tools = req.tools.as_ref().map_or_else(ToolSchemas::none, |t| {
        ToolSchemas::from_json(&Value::Array(t.clone()))
    });
    // Content and reasoning without the newlines around `</think>` (the template strips them
    // again when the reply comes back as history).
    stream.trim_newlines = true;
    let (rxs, deadline) = app
        .enqueue_choices(
            prompt,
            &req.gen,
            stream,
            "messages",
            received,
            req.format.as_ref(),
            |job| {
                job.checkpoint = checkpoint;
                job.shared = shared;
            },
        )
        .await?;
    if req.gen.stream {
        let mut s = ChatStream::new(
            app.name.clone(),
            req.gen.include_usage,
            req.gen.logprobs,
            rxs.len(),
        );
        let first = vec![s.role()];
        return Ok(sse_response(app, rxs, deadline, first, Box::new(s)));
    }
    let mut outs = Vec::with_capacity(rxs.len());
    for rx in rxs {
        let (done, lps) =
            collect(&app, rx, deadline, req.gen.logprobs, response::chat_logprob).await?;
        outs.push((done, req.gen.logprobs.then_some(lps)));
    }
    Ok(Json(response::chat_completion(&app.name, &outs)).into_response())
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    completion_inner(app, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completion_inner(
    app: Arc<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let bytes = body_bytes(&app, body)?;
    let obj = request::parse_body(&bytes)?;
    let req = request::completion(&obj, app.info.vocab_size)?;
    app.check_model(req.model.as_deref())?;
    app.check_open()?;
    let a = app.clone();
    let prompt_in = req.prompt.clone();
    let (prompt, prompt_text) = tokio::task::spawn_blocking(move || match prompt_in {
        Prompt::Text(t) => a
            .tokenizer
            .encode(&t, true)
            .map(|ids| (ids, t))
            .map_err(|e| ApiError::invalid("prompt", e.to_string())),
        Prompt::Ids(ids) => {
            let text = a.tokenizer.decode(&ids, false).unwrap_or_default();
            Ok((ids, text))
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    // Raw text: no reasoning split, no tool-call parsing.
    let mut stream = app.base_stream_config(&req.gen.stop);
    stream.think_ids = None;
    stream.tool_calls = false;
    let (rxs, deadline) = app
        .enqueue_choices(
            prompt,
            &req.gen,
            stream,
            "prompt",
            received,
            req.format.as_ref(),
            |_| {},
        )
        .await?;
    if req.gen.stream {
        let mut s = CompletionStream::new(
            app.name.clone(),
            req.gen.include_usage,
            req.gen.logprobs,
            rxs.len(),
            req.echo.then(|| prompt_text.clone()),
        );
        let first = s.start();
        return Ok(sse_response(app, rxs, deadline, first, Box::new(s)));
    }
    let mut outs = Vec::with_capacity(rxs.len());
    for rx in rxs {
        let mut lp = response::CompletionLogprobs::default();
        let (done, _) = collect(&app, rx, deadline, req.gen.logprobs, |tok, id, r| {
            lp.push(tok, id, r);
            Value::Null
        })
        .await?;
        let mut text = String::new();
        if req.echo {
            text.push_str(&prompt_text);
        }
        text.push_str(&done.summary.content);
        text.push_str(&done.summary.reasoning);
        let logprobs = req.gen.logprobs.then(|| lp.take());
        outs.push((done, text, logprobs));
    }
    Ok(Json(response::text_completion(&app.name, &outs)).into_response())
}

/// Waits for the end of a non-streamed job. Logprob entries are built with `lp` as tokens arrive.
async fn collect(
    app: &App,
    mut rx: UnboundedReceiver<Event>,
    deadline: Instant,
    want_lp: bool,
    mut lp: impl FnMut(&Tokenizer, u32, Option<&qwgpu_engine::ops::sample::RowResult>) -> Value,
) -> Result<(Box<worker::Done>, Vec<Value>), ApiError> {
    let mut entries = Vec::new();
    let mut started = false;
    loop {
        let ev = if started {
            rx.recv().await
        } else {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(ev) => ev,
                Err(_) => {
                    app.metrics.timed_out.fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::unavailable(
                        "timeout",
                        "The request timed out while waiting in the queue",
                    ));
                }
            }
        };
        match ev {
            Some(Event::Started) => started = true,
            Some(Event::Token { id, logprobs }) if want_lp => {
                entries.push(lp(&app.tokenizer, id, logprobs.as_ref()))
            }
            Some(Event::Done(d)) => return Ok((d, entries)),
            Some(Event::Failed {
                status,
                code,
                message,
            }) => {
                let mut e = if status >= 500 {
                    ApiError::unavailable(code, message)
                } else {
                    ApiError::invalid("messages", message)
                };
                if status == 500 {
                    e = ApiError::internal(e.message);
                }
                return Err(e);
            }
            Some(_) => {}
            None => return Err(ApiError::internal("the generation ended without a result")),
        }
    }
}

/// Something that turns events into SSE frames.
trait Frames: Send {
    fn frames(&mut self, tok: &Tokenizer, ev: Event) -> Vec<String>;
}

impl Frames for ChatStream {
    fn frames(&mut self, tok: &Tokenizer, ev: Event) -> Vec<String> {
        self.event(tok, ev)
    }
}

impl Frames for CompletionStream {
    fn frames(&mut self, tok: &Tokenizer, ev: Event) -> Vec<String> {
        self.event(tok, ev)
    }
}

/// Seconds between SSE comments while nothing else is sent (a queue wait, a long prompt).
const KEEPALIVE: Duration = Duration::from_secs(10);

struct SseState {
    app: Arc<App>,
    rx: UnboundedReceiver<Event>,
    /// The later choices' jobs, in order.
    rest: VecDeque<UnboundedReceiver<Event>>,
    deadline: Instant,
    started: bool,
    pending: VecDeque<String>,
    frames: Box<dyn Frames>,
    ended: bool,
}

/// A `text/event-stream` response fed by the events of the request's jobs, one choice after
/// another. Dropping it (the client went away) drops the receivers, which the GPU thread notices
/// before its next token (or when a queued choice's turn comes).
fn sse_response(
    app: Arc<App>,
    rxs: Vec<UnboundedReceiver<Event>>,
    deadline: Instant,
    first: Vec<String>,
    frames: Box<dyn Frames>,
) -> Response {
    let mut rest: VecDeque<_> = rxs.into();
    let Some(rx) = rest.pop_front() else {
        return ApiError::internal("no job for the stream").into_response();
    };
    let state = SseState {
        app,
        rx,
        rest,
        deadline,
        started: false,
        pending: first.into(),
        frames,
        ended: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(f) = s.pending.pop_front() {
                return Some((Ok::<Bytes, Infallible>(Bytes::from(f)), s));
            }
            if s.ended {
                return None;
            }
            let wait = if s.started {
                KEEPALIVE
            } else {
                KEEPALIVE.min(s.deadline.saturating_duration_since(Instant::now()))
            };
            match tokio::time::timeout(wait, s.rx.recv()).await {
                Ok(Some(ev)) => {
                    if matches!(ev, Event::Started) {
                        s.started = true;
                    }
                    let done = matches!(ev, Event::Done(_));
                    let end = matches!(ev, Event::Failed { .. }) || (done && s.rest.is_empty());
                    let frames = s.frames.frames(&s.app.tokenizer, ev);
                    s.pending.extend(frames);
                    s.ended |= end;
                    if done && !end {
                        // The next choice: its job waits in the queue (or has started) now.
                        if let Some(next) = s.rest.pop_front() {
                            s.rx = next;
                            s.started = false;
                        }
                    }
                }
                Ok(None) => {
                    s.pending.push_back(response::stream_error(
                        500,
                        "internal_error",
                        "the generation ended without a result",
                    ));
                    s.pending.push_back(response::SSE_DONE.into());
                    s.ended = true;
                }
                Err(_) if !s.started && Instant::now() >= s.deadline => {
                    s.app.metrics.timed_out.fetch_add(1, Ordering::Relaxed);
                    s.pending.push_back(response::stream_error(
                        503,
                        "timeout",
                        "The request timed out while waiting in the queue",
                    ));
                    s.pending.push_back(response::SSE_DONE.into());
                    s.ended = true;
                }
                Err(_) => s.pending.push_back(": keepalive\n\n".into()),
            }
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
