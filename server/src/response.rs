//! Turning the GPU thread's events into OpenAI responses: chat completion objects and chunks,
//! text completions, logprobs and usage.

use qwgpu_engine::ops::sample::RowResult;
use qwgpu_engine::text::stream::StreamEvent;
use qwgpu_engine::text::Tokenizer;
use serde_json::{json, Map, Value};

use crate::worker::{Done, Event};

/// A random id with a prefix (`chatcmpl-…`, `call_…`).
pub fn random_id(prefix: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut s = String::from(prefix);
    for _ in 0..len {
        s.push(ALPHABET[(random_u64() % ALPHABET.len() as u64) as usize] as char);
    }
    s
}

/// A non-cryptographic random number (ids and default seeds).
pub fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        x = t ^ (std::process::id() as u64).rotate_left(32);
    }
    // splitmix64
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    STATE.store(x, Ordering::Relaxed);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn system_fingerprint() -> String {
    format!("qwgpu-{}", env!("CARGO_PKG_VERSION"))
}

/// Token counts of a request's choices (`n`): the prompt counted once, the completions summed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    prompt: usize,
    completion: usize,
    cached: usize,
    choices: usize,
}

impl Totals {
    pub fn of<'a>(ds: impl IntoIterator<Item = &'a Done>) -> Totals {
        let mut t = Totals::default();
        for d in ds {
            t.add(d);
        }
        t
    }

    pub fn add(&mut self, d: &Done) {
        if self.choices == 0 {
            self.prompt = d.prompt_tokens;
            self.cached = d.cached_tokens;
        }
        self.completion += d.completion_tokens;
        self.choices += 1;
    }

    /// `usage`, with OpenAI's detail objects.
    pub fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }
}

/// Server-side timings and MTP statistics (an extension; clients ignore unknown fields).
pub fn timings(d: &Done) -> Value {
    let decode_s = (d.total_s - d.ttft_s).max(0.0);
    let decode_tps = if d.completion_tokens > 1 && decode_s > 0.0 {
        (d.completion_tokens - 1) as f64 / decode_s
    } else {
        0.0
    };
    let prefill_tps = if d.ttft_s > 0.0 {
        d.prompt_tokens as f64 / d.ttft_s
    } else {
        0.0
    };
    let mtp = d.mtp.map(
        |m| json!({"drafted": m.drafted, "accepted": m.accepted, "acceptance": m.acceptance()}),
    );
    json!({
        "queue_s": d.queue_s,
        "ttft_s": d.ttft_s,
        "total_s": d.total_s,
        "prompt_tokens_per_s": prefill_tps,
        "decode_tokens_per_s": decode_tps,
        "mtp": mtp,
        "cut_short": d.cut_short,
    })
}

fn token_bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    tok.token_bytes(id).unwrap_or_default()
}

/// One chat logprobs entry: token, logprob, bytes, top_logprobs.
pub fn chat_logprob(tok: &Tokenizer, id: u32, r: Option<&RowResult>) -> Value {
    let entry = |id: u32, lp: f32| {
        let b = token_bytes(tok, id);
        json!({"token": String::from_utf8_lossy(&b), "logprob": finite(lp), "bytes": b})
    };
    let mut e = entry(id, r.map_or(0.0, |r| r.logprob));
    let top: Vec<Value> = r
        .map(|r| r.top.iter().map(|&(t, lp)| entry(t, lp)).collect())
        .unwrap_or_default();
    e["top_logprobs"] = Value::Array(top);
    e
}

fn finite(x: f32) -> f64 {
    if x.is_finite() {
        x as f64
    } else {
        -9999.0
    }
}

/// Legacy completions logprobs: parallel arrays.
#[derive(Default)]
pub struct CompletionLogprobs {
    tokens: Vec<Value>,
    token_logprobs: Vec<Value>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<Value>,
    offset: usize,
}

impl CompletionLogprobs {
    pub fn push(&mut self, tok: &Tokenizer, id: u32, r: Option<&RowResult>) {
        let text = String::from_utf8_lossy(&token_bytes(tok, id)).into_owned();
        self.text_offset.push(self.offset.into());
        self.offset += text.chars().count();
        self.token_logprobs
            .push(finite(r.map_or(0.0, |r| r.logprob)).into());
        let mut top = Map::new();
        if let Some(r) = r {
            for &(t, lp) in &r.top {
                top.insert(
                    String::from_utf8_lossy(&token_bytes(tok, t)).into_owned(),
                    finite(lp).into(),
                );
            }
        }
        self.top_logprobs.push(Value::Object(top));
        self.tokens.push(text.into());
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Takes the entries gathered so far.
    pub fn take(&mut self) -> Value {
        json!({
            "tokens": std::mem::take(&mut self.tokens),
            "token_logprobs": std::mem::take(&mut self.token_logprobs),
            "top_logprobs": std::mem::take(&mut self.top_logprobs),
            "text_offset": std::mem::take(&mut self.text_offset),
        })
    }
}

/// Builds the SSE frames of a streamed chat completion.
pub struct ChatStream {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    pub logprobs: bool,
    tool_index: usize,
    pending_lp: Vec<Value>,
    /// The running MTP counts (drafted, accepted), once a verify step has reported them.
    mtp: Option<(u64, u64)>,
    /// The choice being streamed, of `n` (one after another, each ending with its own final
    /// chunk; the usage chunk and `[DONE]` come after the last).
    index: usize,
    n: usize,
    totals: Totals,
    pub finished: bool,
}

pub fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// The usage chunk a stream ends with when `stream_options.include_usage` is set (the timings
/// are the last choice's; each choice's final chunk carries its own).
fn usage_chunk(id: &str, object: &str, created: u64, model: &str, t: &Totals, d: &Done) -> String {
    sse(&json!({
        "id": id,
        "object": object,
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint(),
        "choices": [],
        "usage": t.usage(),
        "timings": timings(d),
    }))
}

impl ChatStream {
    /// The stream of `n` choices (at least 1).
    pub fn new(model: String, include_usage: bool, logprobs: bool, n: usize) -> Self {
        ChatStream {
            id: random_id("chatcmpl-", 24),
            created: unix_time(),
            model,
            include_usage,
            logprobs,
            tool_index: 0,
            pending_lp: Vec::new(),
            mtp: None,
            index: 0,
            n: n.max(1),
            totals: Totals::default(),
            finished: false,
        }
    }

    fn chunk(&mut self, delta: Value, finish: Option<&str>, with_lp: bool) -> String {
        sse(&self.chunk_value(delta, finish, with_lp))
    }

    fn chunk_value(&mut self, delta: Value, finish: Option<&str>, with_lp: bool) -> Value {
        let lp = if self.logprobs && with_lp && !self.pending_lp.is_empty() {
            json!({"content": std::mem::take(&mut self.pending_lp)})
        } else {
            Value::Null
        };
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": system_fingerprint(),
            "choices": [{"index": self.index, "delta": delta, "logprobs": lp, "finish_reason": finish}],
        });
        add_running_mtp(&mut c, self.mtp);
        c
    }

    /// The first chunk: the assistant role.
    pub fn role(&mut self) -> String {
        self.chunk(json!({"role": "assistant", "content": ""}), None, false)
    }

    /// Frames for one event (empty when it shows nothing).
    pub fn event(&mut self, tok: &Tokenizer, ev: Event) -> Vec<String> {
        let mut out = Vec::new();
        match ev {
            Event::Started | Event::PromptDone => {}
            Event::Mtp { drafted, accepted } => self.mtp = Some((drafted, accepted)),
            Event::Token { id, logprobs } => {
                self.pending_lp
                    .push(chat_logprob(tok, id, logprobs.as_ref()))
            }
            Event::Delta(d) => {
                for e in d.events {
                    match e {
                        StreamEvent::Content { text } => {
                            out.push(self.chunk(json!({"content": text}), None, true))
                        }
                        StreamEvent::Reasoning { text } => out.push(self.chunk(
                            json!({"reasoning": text, "reasoning_content": text}),
                            None,
                            true,
                        )),
                        StreamEvent::ToolCallEnd {
                            name, arguments, ..
                        } => {
                            let index = self.tool_index;
                            self.tool_index += 1;
                            let head = json!({"tool_calls": [{"index": index, "id": random_id("call_", 24), "type": "function", "function": {"name": name, "arguments": ""}}]});
                            out.push(self.chunk(head, None, false));
                            out.push(self.chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}), None, false));
                        }
                        StreamEvent::ToolCallStart { .. } | StreamEvent::ToolCallInvalid { .. } => {
                        }
                    }
                }
            }
            Event::Done(d) => {
                // The final chunk also carries the server's timings (an extension).
                let mut last = self.chunk_value(json!({}), Some(d.finish.as_str()), true);
                last["timings"] = timings(&d);
                out.push(sse(&last));
                self.totals.add(&d);
                if self.index + 1 < self.n {
                    // The next choice starts with its own role chunk.
                    self.index += 1;
                    self.tool_index = 0;
                    self.pending_lp.clear();
                    self.mtp = None;
                    out.push(self.role());
                    return out;
                }
                if self.include_usage {
                    out.push(usage_chunk(
                        &self.id,
                        "chat.completion.chunk",
                        self.created,
                        &self.model,
                        &self.totals,
                        &d,
                    ));
                }
                out.push(SSE_DONE.to_string());
                self.finished = true;
            }
            Event::Failed {
                status,
                code,
                message,
            } => {
                out.push(stream_error(status, code, &message));
                out.push(SSE_DONE.to_string());
                self.finished = true;
            }
        }
        out
    }
}

/// While MTP runs, every streamed choice chunk carries the running draft counts as an extension
/// field, `"mtp": {"drafted", "accepted"}` (clients ignore unknown fields); on the final chunk
/// they equal its `timings.mtp`. Absent when MTP is off.
fn add_running_mtp(chunk: &mut Value, mtp: Option<(u64, u64)>) {
    if let Some((drafted, accepted)) = mtp {
        chunk["mtp"] = json!({"drafted": drafted, "accepted": accepted});
    }
}

/// An error inside an event stream (the status line was already sent).
pub fn stream_error(status: u16, code: &str, message: &str) -> String {
    let kind = if status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    sse(&json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))
}

/// Builds the SSE frames of a streamed text completion.
pub struct CompletionStream {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
    pub logprobs: bool,
    lp: CompletionLogprobs,
    /// The running MTP counts (drafted, accepted), once a verify step has reported them.
    mtp: Option<(u64, u64)>,
    /// The choice being streamed, of `n`, as in [`ChatStream`].
    index: usize,
    n: usize,
    totals: Totals,
    /// The prompt, when `echo` asks each choice to start with it.
    echo: Option<String>,
    pub finished: bool,
}

impl CompletionStream {
    /// The stream of `n` choices (at least 1), each starting with `echo` when given.
    pub fn new(
        model: String,
        include_usage: bool,
        logprobs: bool,
        n: usize,
        echo: Option<String>,
    ) -> Self {
        CompletionStream {
            id: random_id("cmpl-", 24),
            created: unix_time(),
            model,
            include_usage,
            logprobs,
            lp: CompletionLogprobs::default(),
            mtp: None,
            index: 0,
            n: n.max(1),
            totals: Totals::default(),
            echo,
            finished: false,
        }
    }

    /// The frames a choice starts with (the echoed prompt, if any).
    pub fn start(&mut self) -> Vec<String> {
        match self.echo.clone() {
            Some(e) => vec![sse(&self.chunk(&e, None))],
            None => Vec::new(),
        }
    }

    pub fn chunk(&mut self, text: &str, finish: Option<&str>) -> Value {
        let lp = if self.logprobs && !self.lp.is_empty() {
            self.lp.take()
        } else {
            Value::Null
        };
        let mut c = json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": system_fingerprint(),
            "choices": [{"index": self.index, "text": text, "logprobs": lp, "finish_reason": finish}],
        });
        add_running_mtp(&mut c, self.mtp);
        c
    }

    pub fn event(&mut self, tok: &Tokenizer, ev: Event) -> Vec<String> {
        let mut out = Vec::new();
        match ev {
            Event::Started | Event::PromptDone => {}
            Event::Mtp { drafted, accepted } => self.mtp = Some((drafted, accepted)),
            Event::Token { id, logprobs } => self.lp.push(tok, id, logprobs.as_ref()),
            Event::Delta(d) => {
                let text = all_text(&d.events);
                if !text.is_empty() {
                    let c = self.chunk(&text, None);
                    out.push(sse(&c));
                }
            }
            Event::Done(d) => {
                let mut c = self.chunk("", Some(d.finish.as_str()));
                c["timings"] = timings(&d);
                out.push(sse(&c));
                self.totals.add(&d);
                if self.index + 1 < self.n {
                    self.index += 1;
                    self.lp = CompletionLogprobs::default();
                    self.mtp = None;
                    out.extend(self.start());
                    return out;
                }
                if self.include_usage {
                    out.push(usage_chunk(
                        &self.id,
                        "text_completion",
                        self.created,
                        &self.model,
                        &self.totals,
                        &d,
                    ));
                }
                out.push(SSE_DONE.to_string());
                self.finished = true;
            }
            Event::Failed {
                status,
                code,
                message,
            } => {
                out.push(stream_error(status, code, &message));
                out.push(SSE_DONE.to_string());
                self.finished = true;
            }
        }
        out
    }
}

/// Every piece of text in order (raw completions have no reasoning split or tool parsing; if any
/// appears it is shown as text).
pub fn all_text(events: &[StreamEvent]) -> String {
    let mut s = String::new();
    for e in events {
        match e {
            StreamEvent::Content { text } | StreamEvent::Reasoning { text } => s.push_str(text),
            _ => {}
        }
    }
    s
}

/// The message of a non-streamed chat choice.
fn chat_message(d: &Done) -> Value {
    let s = &d.summary;
    let calls: Vec<Value> = s
        .tool_calls
        .iter()
        .map(|c| json!({"id": random_id("call_", 24), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect();
    let content = if s.content.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::String(s.content.clone())
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !s.reasoning.is_empty() {
        message["reasoning"] = s.reasoning.clone().into();
        message["reasoning_content"] = s.reasoning.clone().into();
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// A non-streamed choice's own timings (an extension), when there are several.
fn choice_timings(c: &mut Value, d: &Done, several: bool) {
    if several {
        c["timings"] = timings(d);
    }
}

/// The non-streamed chat completion of one or more choices (each with its logprob entries when
/// asked for). `timings` at the top are the first choice's; with several, each choice has its own.
pub fn chat_completion(model: &str, outs: &[(Box<Done>, Option<Vec<Value>>)]) -> Value {
    let several = outs.len() > 1;
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, (d, lp))| {
            let lp = lp.as_ref().map_or(Value::Null, |v| json!({"content": v}));
            let mut c = json!({"index": i, "message": chat_message(d), "logprobs": lp, "finish_reason": d.finish.as_str()});
            choice_timings(&mut c, d, several);
            c
        })
        .collect();
    json!({
        "id": random_id("chatcmpl-", 24),
        "object": "chat.completion",
        "created": unix_time(),
        "model": model,
        "system_fingerprint": system_fingerprint(),
        "choices": choices,
        "usage": Totals::of(outs.iter().map(|(d, _)| &**d)).usage(),
        "timings": outs.first().map_or(Value::Null, |(d, _)| timings(d)),
    })
}

/// The non-streamed text completion of one or more choices: (result, text, logprobs).
pub fn text_completion(model: &str, outs: &[(Box<Done>, String, Option<Value>)]) -> Value {
    let several = outs.len() > 1;
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, (d, text, lp))| {
            let mut c = json!({"index": i, "text": text, "logprobs": lp.clone().unwrap_or(Value::Null), "finish_reason": d.finish.as_str()});
            choice_timings(&mut c, d, several);
            c
        })
        .collect();
    json!({
        "id": random_id("cmpl-", 24),
        "object": "text_completion",
        "created": unix_time(),
        "model": model,
        "system_fingerprint": system_fingerprint(),
        "choices": choices,
        "usage": Totals::of(outs.iter().map(|(d, _, _)| &**d)).usage(),
        "timings": outs.first().map_or(Value::Null, |(d, _, _)| timings(d)),
    })
}
