//! Counters for `GET /metrics` (Prometheus text format, version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds of the time-to-first-token histogram, in seconds.
const TTFT_BUCKETS: [f64; 12] = [
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Default)]
struct Inner {
    /// (endpoint, status) → count.
    requests: BTreeMap<(String, u16), u64>,
    /// finish_reason → count.
    finished: BTreeMap<&'static str, u64>,
    ttft_counts: [u64; TTFT_BUCKETS.len()],
    ttft_sum: f64,
    ttft_count: u64,
    /// Decode phase: tokens after the first and the seconds they took.
    decode_tokens: u64,
    decode_seconds: f64,
    prefill_tokens: u64,
    prefill_seconds: f64,
    last_decode_tps: f64,
    last_prefill_tps: f64,
    request_seconds_sum: f64,
    request_seconds_count: u64,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens restored from the prompt cache (part of `prompt_tokens`).
    pub prompt_tokens_cached: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    pub timed_out: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub failed: AtomicU64,
    pub mtp_drafted: AtomicU64,
    pub mtp_accepted: AtomicU64,
    /// Requests waiting for the GPU (not counting the one running).
    pub queue_depth: AtomicI64,
    pub busy: AtomicBool,
    /// Batched steps (`--batch`) by the number of streams they decoded (index 0: one).
    pub batch_steps: [AtomicU64; 4],
    /// Speculating requests that moved into the batch when another request arrived.
    pub batch_handoffs: AtomicU64,
    /// Slices of prompt prefilled for requests joining the batch while other streams decoded
    /// (a step of theirs between two slices).
    pub batch_join_slices: AtomicU64,
    /// Streams moved into a lower free slot of the batch (so steps run fewer rows).
    pub batch_moves: AtomicU64,
    /// Streams left alone in the batch that continued alone with speculation (MTP).
    pub batch_resumes: AtomicU64,
}

/// What one finished generation adds.
pub struct GenerationRecord {
    pub prompt_tokens: usize,
    /// Of those, restored from the prompt cache (not prefilled).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub ttft_s: f64,
    pub total_s: f64,
    pub finish_reason: &'static str,
    pub mtp: Option<(u64, u64)>,
}

impl Metrics {
    /// A batched step of `streams` streams.
    pub fn batch_step(&self, streams: usize) {
        if let Some(c) = streams.checked_sub(1).and_then(|i| self.batch_steps.get(i)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters behind the mutex (a panic elsewhere never makes them unreadable).
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn request(&self, endpoint: &str, status: u16) {
        let mut m = self.lock();
        *m.requests
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
    }

    pub fn generation(&self, r: &GenerationRecord) {
        self.prompt_tokens
            .fetch_add(r.prompt_tokens as u64, Ordering::Relaxed);
        self.prompt_tokens_cached
            .fetch_add(r.cached_tokens as u64, Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(r.completion_tokens as u64, Ordering::Relaxed);
        if let Some((d, a)) = r.mtp {
            self.mtp_drafted.fetch_add(d, Ordering::Relaxed);
            self.mtp_accepted.fetch_add(a, Ordering::Relaxed);
        }
        let mut m = self.lock();
        *m.finished.entry(r.finish_reason).or_default() += 1;
        for (i, b) in TTFT_BUCKETS.iter().enumerate() {
            if r.ttft_s <= *b {
                m.ttft_counts[i] += 1;
            }
        }
        m.ttft_sum += r.ttft_s;
        m.ttft_count += 1;
        // Prefill speed counts the tokens actually prefilled.
        let prefilled = r.prompt_tokens.saturating_sub(r.cached_tokens);
        m.prefill_tokens += prefilled as u64;
        m.prefill_seconds += r.ttft_s;
        if r.ttft_s > 0.0 {
            m.last_prefill_tps = prefilled as f64 / r.ttft_s;
        }
        if r.completion_tokens > 1 {
            let dt = (r.total_s - r.ttft_s).max(1e-9);
            m.decode_tokens += r.completion_tokens as u64 - 1;
            m.decode_seconds += dt;
            m.last_decode_tps = (r.completion_tokens - 1) as f64 / dt;
        }
        m.request_seconds_sum += r.total_s;
        m.request_seconds_count += 1;
    }

    /// Mean seconds of GPU time per request so far (for Retry-After).
    pub fn mean_request_seconds(&self) -> f64 {
        let m = self.lock();
        if m.request_seconds_count == 0 {
            1.0
        } else {
            m.request_seconds_sum / m.request_seconds_count as f64
        }
    }

    /// The Prometheus exposition text. `info` labels describe the model.
    pub fn render(&self, info: &[(&str, String)], queue_capacity: usize) -> String {
        let m = self.lock();
        let mut s = String::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            for (labels, v) in lines {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let labels: Vec<String> = info
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        metric(
            "qwgpu_model_info",
            "gauge",
            "The served model (labels) ",
            vec![(format!("{{{}}}", labels.join(",")), "1".into())],
        );
        let mut req: Vec<(String, String)> = m
            .requests
            .iter()
            .map(|((e, c), n)| {
                (
                    format!("{{endpoint=\"{}\",status=\"{c}\"}}", escape(e)),
                    n.to_string(),
                )
            })
            .collect();
        if req.is_empty() {
            req.push((String::new(), "0".into()));
        }
        metric(
            "qwgpu_requests_total",
            "counter",
            "HTTP requests by endpoint and status code.",
            req,
        );
        let fin: Vec<(String, String)> = ["stop", "length", "tool_calls"]
            .iter()
            .map(|r| {
                (
                    format!("{{finish_reason=\"{r}\"}}"),
                    m.finished.get(r).copied().unwrap_or(0).to_string(),
                )
            })
            .collect();
        metric(
            "qwgpu_generations_total",
            "counter",
            "Finished generations by finish reason.",
            fin,
        );
        metric(
            "qwgpu_generations_cancelled_total",
            "counter",
            "Generations stopped because the client went away (or skipped while queued).",
            vec![(String::new(), load(&self.cancelled).to_string())],
        );
        metric(
            "qwgpu_generations_timed_out_total",
            "counter",
            "Generations stopped by the per-request time limit.",
            vec![(String::new(), load(&self.timed_out).to_string())],
        );
        metric(
            "qwgpu_generations_failed_total",
            "counter",
            "Generations that ended with an engine error.",
            vec![(String::new(), load(&self.failed).to_string())],
        );
        metric(
            "qwgpu_rejected_total",
            "counter",
            "Requests refused with 429 because the queue was full.",
            vec![(
                "{reason=\"queue_full\"}".into(),
                load(&self.rejected_queue_full).to_string(),
            )],
        );
        metric(
            "qwgpu_prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            vec![(String::new(), load(&self.prompt_tokens).to_string())],
        );
        metric(
            "qwgpu_prompt_tokens_cached_total",
            "counter",
            "Prompt tokens restored from the prompt cache instead of prefilled.",
            vec![(String::new(), load(&self.prompt_tokens_cached).to_string())],
        );
        metric(
            "qwgpu_generation_tokens_total",
            "counter",
            "Tokens generated.",
            vec![(String::new(), load(&self.generation_tokens).to_string())],
        );
        let rate = |n: u64, t: f64| if t > 0.0 { n as f64 / t } else { 0.0 };
        metric(
            "qwgpu_decode_tokens_per_second",
            "gauge",
            "Decode speed over all requests (tokens after the first / decode seconds).",
            vec![(String::new(), fmt(rate(m.decode_tokens, m.decode_seconds)))],
        );
        metric(
            "qwgpu_decode_tokens_per_second_last",
            "gauge",
            "Decode speed of the last request.",
            vec![(String::new(), fmt(m.last_decode_tps))],
        );
        metric(
            "qwgpu_prefill_tokens_per_second",
            "gauge",
            "Prompt processing speed over all requests.",
            vec![(
                String::new(),
                fmt(rate(m.prefill_tokens, m.prefill_seconds)),
            )],
        );
        metric(
            "qwgpu_prefill_tokens_per_second_last",
            "gauge",
            "Prompt processing speed of the last request.",
            vec![(String::new(), fmt(m.last_prefill_tps))],
        );
        let mut ttft: Vec<(String, String)> = TTFT_BUCKETS
            .iter()
            .zip(m.ttft_counts.iter())
            .map(|(b, c)| (format!("_bucket{{le=\"{b}\"}}"), c.to_string()))
            .collect();
        ttft.push(("_bucket{le=\"+Inf\"}".into(), m.ttft_count.to_string()));
        ttft.push(("_sum".into(), fmt(m.ttft_sum)));
        ttft.push(("_count".into(), m.ttft_count.to_string()));
        metric(
            "qwgpu_time_to_first_token_seconds",
            "histogram",
            "Seconds from the start of GPU work to the first token (prompt processing).",
            ttft,
        );
        let (d, a) = (load(&self.mtp_drafted), load(&self.mtp_accepted));
        metric(
            "qwgpu_mtp_drafted_total",
            "counter",
            "Tokens drafted by the MTP head.",
            vec![(String::new(), d.to_string())],
        );
        metric(
            "qwgpu_mtp_accepted_total",
            "counter",
            "MTP drafts accepted.",
            vec![(String::new(), a.to_string())],
        );
        metric(
            "qwgpu_mtp_acceptance_ratio",
            "gauge",
            "Accepted / drafted MTP tokens over all requests.",
            vec![(
                String::new(),
                fmt(if d > 0 { a as f64 / d as f64 } else { 0.0 }),
            )],
        );
        metric(
            "qwgpu_batch_steps_total",
            "counter",
            "Batched decode steps (--batch), by the streams they decoded.",
            self.batch_steps
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{{streams=\"{}\"}}", i + 1), load(c).to_string()))
                .collect(),
        );
        metric(
            "qwgpu_batch_handoffs_total",
            "counter",
            "Requests that speculated alone and moved into the batch (--batch) when another request arrived.",
            vec![(String::new(), load(&self.batch_handoffs).to_string())],
        );
        metric(
            "qwgpu_batch_join_slices_total",
            "counter",
            "Prompt slices of requests joining the batch (--batch) prefilled while other requests decoded, a step of theirs between two slices.",
            vec![(String::new(), load(&self.batch_join_slices).to_string())],
        );
        metric(
            "qwgpu_batch_moves_total",
            "counter",
            "Streams moved into a lower free slot of the batch (--batch) when a stream below them ended, so steps run no rows for free slots.",
            vec![(String::new(), load(&self.batch_moves).to_string())],
        );
        metric(
            "qwgpu_batch_resumes_total",
            "counter",
            "Requests that asked for MTP, were left alone in the batch (--batch) and continued alone with speculation.",
            vec![(String::new(), load(&self.batch_resumes).to_string())],
        );
        metric(
            "qwgpu_queue_depth",
            "gauge",
            "Requests waiting for the GPU.",
            vec![(
                String::new(),
                self.queue_depth.load(Ordering::Relaxed).max(0).to_string(),
            )],
        );
        metric(
            "qwgpu_queue_capacity",
            "gauge",
            "Most requests that may wait.",
            vec![(String::new(), queue_capacity.to_string())],
        );
        metric(
            "qwgpu_busy",
            "gauge",
            "1 while a request runs on the GPU.",
            vec![(
                String::new(),
                u8::from(self.busy.load(Ordering::Relaxed)).to_string(),
            )],
        );
        s
    }
}

fn fmt(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "0".into()
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
