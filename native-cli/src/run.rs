//! `qwgpu generate` and `qwgpu chat`: prompts, streaming output, the interactive loop.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, ValueEnum};
use qwgpu_engine::decode::cache::prefill_prompt;
use qwgpu_engine::decode::constrain::TokenConstraint;
use qwgpu_engine::decode::sampler::SamplingParams;
use qwgpu_engine::decode::text::{generate_text_constrained, TextEvent, TextOutput, TextRequest};
use qwgpu_engine::state::SavedState;
use qwgpu_engine::text::grammar::{AfterReasoning, GrammarEnv, GrammarSpec};
use qwgpu_engine::text::stream::{Delta, StreamEvent};
use serde_json::{json, Map, Value};

use crate::load::{load, Loaded, ModelArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MtpMode {
    /// On when the checkpoint has an MTP head (config and mtp.* tensors).
    Auto,
    On,
    Off,
}

/// Options shared by generate and chat.
#[derive(Args, Clone, Debug)]
pub struct GenArgs {
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalize tokens of the last --repetition-context tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 20)]
    pub repetition_context: u32,
    /// Subtract from the logits of tokens already generated (OpenAI semantics).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Subtract, per occurrence, from the logits of tokens already generated.
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Add to a token's logit: ID=BIAS (repeatable).
    #[arg(long, value_parser = parse_bias)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Random seed (same seed, same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Report each token's logprob and the N most likely alternatives (JSON output).
    #[arg(long)]
    pub logprobs: Option<u32>,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep going past the checkpoint's EOS ids.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Speculative decoding with the model's MTP head.
    #[arg(long, value_enum, default_value = "auto")]
    pub mtp: MtpMode,
    /// System prompt (chat mode).
    #[arg(long)]
    pub system: Option<String>,
    /// Turn thinking off (chat mode: the template's enable_thinking = false).
    #[arg(long)]
    pub no_think: bool,
    /// Do not print the model's reasoning.
    #[arg(long)]
    pub hide_reasoning: bool,
    /// Constrain the reply (after any reasoning) to JSON valid under the JSON schema in FILE.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<std::path::PathBuf>,
    /// Constrain the reply (after any reasoning) to a JSON object.
    #[arg(long)]
    pub json_object: bool,
    /// Constrain the reply (after any reasoning) to match this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub regex: Option<String>,
    /// Constrain the reply (after any reasoning) to the Lark grammar in FILE (llguidance's dialect).
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<std::path::PathBuf>,
}

impl GenArgs {
    /// The reply's required form, from --json-schema, --json-object, --regex or --grammar (at
    /// most one).
    pub fn format(&self) -> Result<Option<GrammarSpec>, String> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let mut specs = Vec::new();
        if let Some(p) = &self.json_schema {
            let v: Value = serde_json::from_str(&read(p)?)
                .map_err(|e| format!("{}: not JSON: {e}", p.display()))?;
            specs.push(GrammarSpec::JsonSchema(v));
        }
        if self.json_object {
            specs.push(GrammarSpec::JsonObject);
        }
        if let Some(r) = &self.regex {
            specs.push(GrammarSpec::Regex(r.clone()));
        }
        if let Some(p) = &self.grammar {
            specs.push(GrammarSpec::Lark(read(p)?));
        }
        if specs.len() > 1 {
            return Err(
                "give at most one of --json-schema, --json-object, --regex and --grammar".into(),
            );
        }
        Ok(specs.pop())
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt text.
    pub prompt: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt as comma-separated token ids (no tokenizer needed).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    pub prompt_ids: Option<Vec<u32>>,
    /// Format the prompt through the chat template (the default when the model has one).
    #[arg(long, conflicts_with = "raw")]
    pub chat: bool,
    /// Feed the prompt text as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub gen: GenArgs,
    /// Print one JSON object (tokens, text, reasoning, finish reason, timings) at the end.
    #[arg(long)]
    pub json: bool,
    /// Keep the prompt's state in FILE: a later prompt that starts with this one's ids (all but
    /// its last) restores it and prefills only the rest. Created when missing, replaced after
    /// each run; a file of another model or a damaged one is an error.
    #[arg(long, value_name = "FILE")]
    pub prompt_cache: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
    /// Prefill every turn's whole prompt (by default the state of the conversation so far is
    /// kept and only the new part is prefilled; the output is the same).
    #[arg(long)]
    pub no_prompt_cache: bool,
}

fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, b) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': expected ID=BIAS"))?;
    Ok((
        id.trim()
            .parse()
            .map_err(|_| format!("'{id}' is not a token id"))?,
        b.trim()
            .parse()
            .map_err(|_| format!("'{b}' is not a number"))?,
    ))
}

impl GenArgs {
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            repetition_context: self.repetition_context,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.clone(),
            seed: self.seed,
            top_logprobs: self.logprobs.unwrap_or(0),
        }
    }
}

/// Decides whether to use MTP; `on` without a head is an error.
fn use_mtp(l: &Loaded, mode: MtpMode) -> Result<bool, String> {
    let has = l.model.has_mtp();
    match mode {
        MtpMode::Off => Ok(false),
        MtpMode::On if !has => {
            Err("--mtp on: this checkpoint has no MTP head (no mtp.* tensors)".into())
        }
        MtpMode::On | MtpMode::Auto => Ok(has),
    }
}

/// With `--mtp on`, says once per run (a chat's turns share the options) that replies with
/// per-token logprobs decode without speculation: they take the plain loop.
fn note_plain_loop(g: &GenArgs) {
    if g.mtp != MtpMode::On || g.logprobs.is_none() {
        return;
    }
    static NOTED: std::sync::Once = std::sync::Once::new();
    NOTED.call_once(|| {
        eprintln!("note: --mtp on: replies decode without speculation (per-token logprobs take the plain loop)")
    });
}

/// Prints deltas: content to stdout; reasoning dimmed on a terminal, or to stderr when stdout is
/// piped (so the content stays clean), or not at all.
struct Printer {
    tty: bool,
    hide_reasoning: bool,
    in_reasoning: bool,
}

impl Printer {
    fn new(hide_reasoning: bool) -> Self {
        Printer {
            tty: std::io::stdout().is_terminal(),
            hide_reasoning,
            in_reasoning: false,
        }
    }
    fn delta(&mut self, d: &Delta) {
        let mut out = std::io::stdout().lock();
        for e in &d.events {
            match e {
                StreamEvent::Reasoning { text } => {
                    if self.hide_reasoning {
                        continue;
                    }
                    if self.tty {
                        if !self.in_reasoning {
                            let _ = write!(out, "\x1b[2m");
                            self.in_reasoning = true;
                        }
                        let _ = write!(out, "{text}");
                    } else {
                        eprint!("{text}");
                    }
                }
                StreamEvent::Content { text } => {
                    self.end_reasoning(&mut out);
                    let _ = write!(out, "{text}");
                }
                StreamEvent::ToolCallEnd {
                    name, arguments, ..
                } => {
                    self.end_reasoning(&mut out);
                    let _ = write!(out, "\n[tool call] {name}({arguments})\n");
                }
                _ => {}
            }
        }
        let _ = out.flush();
    }
    fn end_reasoning(&mut self, out: &mut impl Write) {
        if self.in_reasoning {
            let _ = write!(out, "\x1b[0m");
            self.in_reasoning = false;
        }
    }
    fn finish(&mut self) {
        let mut out = std::io::stdout().lock();
        self.end_reasoning(&mut out);
        let _ = writeln!(out);
    }
}

/// The state of the last prompt (all its ids but the last), kept so that a prompt that starts
/// the same way skips prefilling them: in memory (chat turns) and optionally in a file.
pub struct PromptCache {
    path: Option<std::path::PathBuf>,
    state: Option<SavedState>,
    /// Ids the last run took from the cache.
    reused: usize,
    /// Where the next run records its entry: the ids that later prompts are expected to share
    /// (before a chat template's generation prompt, say); `None` = all but the last id.
    checkpoint: Option<usize>,
}

impl PromptCache {
    fn memory() -> Self {
        PromptCache {
            path: None,
            state: None,
            reused: 0,
            checkpoint: None,
        }
    }

    /// The cache in `path` (empty when the file does not exist yet).
    fn file(path: &std::path::Path) -> Result<Self, String> {
        let state = match std::fs::read(path) {
            Ok(b) => Some(
                SavedState::from_bytes(&b)
                    .map_err(|e| format!("--prompt-cache {}: {e}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("--prompt-cache {}: {e}", path.display())),
        };
        Ok(PromptCache {
            path: Some(path.to_path_buf()),
            state,
            reused: 0,
            checkpoint: None,
        })
    }

    /// Writes the state to the file (through a temporary file, so a failed write loses nothing).
    fn store(&self) -> Result<(), String> {
        let (Some(path), Some(st)) = (&self.path, &self.state) else {
            return Ok(());
        };
        let tmp = path.with_extension("tmp");
        let err = |e: std::io::Error| format!("--prompt-cache {}: {e}", path.display());
        std::fs::write(&tmp, st.to_bytes()).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Puts the prompt but its last id into the session, from the cache where it can, and keeps
    /// the state at the checkpoint for the next prompt. Returns the ids now in the session's
    /// state.
    fn prefill(&mut self, l: &mut Loaded, prompt: &[u32], mtp: bool) -> Result<usize, String> {
        let save_at = self.checkpoint.unwrap_or(prompt.len().saturating_sub(1));
        let what = |e: qwgpu_engine::model::RunError| match &self.path {
            Some(p) => format!("--prompt-cache {}: {e}", p.display()),
            None => e.to_string(),
        };
        let (reused, entry) = pollster::block_on(prefill_prompt(
            &mut l.session,
            prompt,
            self.state.as_ref(),
            mtp,
            save_at,
        ))
        .map_err(what)?;
        if entry.is_some() {
            self.state = entry;
        }
        self.reused = reused;
        Ok(prompt.len() - 1)
    }
}

/// Timings of one generation.
struct Timed {
    out: TextOutput,
    /// Per token (id, logprob, top alternatives) when --logprobs was given.
    logprobs: Vec<Value>,
    ttft: f64,
    total: f64,
    /// Prompt ids restored from the prompt cache (not prefilled).
    cached: usize,
}

fn run_one(
    l: &mut Loaded,
    prompt: Vec<u32>,
    g: &GenArgs,
    mtp: bool,
    cancel: Option<&AtomicBool>,
    cache: Option<&mut PromptCache>,
    mut on_delta: impl FnMut(&Delta),
) -> Result<Timed, String> {
    let max_ctx = l.session.opts.max_ctx as usize;
    if prompt.len() + 1 > max_ctx {
        return Err(format!(
            "the prompt has {} tokens but the context holds {max_ctx} (use a larger --max-context)",
            prompt.len()
        ));
    }
    let sampling = g.sampling();
    sampling
        .validate(Some(l.model.config.vocab_size as u32))
        .map_err(|e| e.to_string())?;
    let tok = l.tokenizer.as_ref();
    let mut stream = match tok {
        Some(t) => t.stream_config(&l.model.config.eos_token_ids),
        None => Default::default(),
    };
    if tok.is_none() {
        stream.eos_ids = l.model.config.eos_token_ids.clone();
    }
    stream.stop_strings = g.stop.clone();
    let req = TextRequest {
        prompt,
        max_tokens: g.max_tokens,
        stream,
        ignore_eos: g.ignore_eos,
        mtp,
        mtp_adaptive: g.mtp == MtpMode::Auto,
        sampling: Some(sampling),
        logprobs: g.logprobs.is_some(),
        in_context: 0,
    };
    let mut logprobs = Vec::new();
    l.session.reset();
    let t0 = Instant::now();
    let mut req = req;
    let mut cached = 0;
    if let Some(c) = cache {
        // Speculation happens when generate_text takes the MTP loop (no per-token logprobs).
        req.in_context = c.prefill(l, &req.prompt, mtp && !req.logprobs)?;
        cached = c.reused;
    }
    let mut ttft = None;
    let tokenizer = match &l.tokenizer {
        Some(t) => t,
        None => {
            return Err("this checkpoint has no tokenizer; use --prompt-ids with --json".into())
        }
    };
    let mut constraint: Option<AfterReasoning> = match g.format()? {
        Some(spec) => {
            if l.grammar.is_none() {
                let env = GrammarEnv::new(
                    Arc::new(tokenizer.clone()),
                    l.model.config.vocab_size,
                    &l.model.config.eos_token_ids,
                )
                .map_err(|e| e.to_string())?;
                l.grammar = Some(env);
            }
            let env = l.grammar.as_ref().ok_or("no grammar environment")?;
            let grammar = env
                .compile(&spec)
                .map_err(|e| format!("the response format could not be compiled: {e}"))?;
            Some(AfterReasoning::new(
                grammar,
                req.stream.think_ids,
                &req.prompt,
            ))
        }
        None => None,
    };
    note_plain_loop(g);
    let c = constraint.as_mut().map(|c| c as &mut dyn TokenConstraint);
    let out = pollster::block_on(generate_text_constrained(
        &mut l.session,
        tokenizer,
        &req,
        c,
        &mut |e| {
            match e {
                TextEvent::PromptDone => ttft = Some(t0.elapsed().as_secs_f64()),
                TextEvent::Token(id, lp) => {
                    if let Some(r) = lp {
                        let top: Vec<Value> = r.top.iter().map(|(t, p)| json!([t, p])).collect();
                        logprobs.push(json!({"id": id, "logprob": r.logprob, "top": top}));
                    }
                }
                TextEvent::Delta(d) => on_delta(d),
                TextEvent::Mtp { .. } => {}
            }
            !cancel.is_some_and(|c| c.load(Ordering::Relaxed))
        },
    ))
    .map_err(|e| e.to_string())?;
    let total = t0.elapsed().as_secs_f64();
    Ok(Timed {
        out,
        logprobs,
        ttft: ttft.unwrap_or(total),
        total,
        cached,
    })
}

fn rates(t: &Timed) -> (f64, f64) {
    let n = t.out.tokens.len();
    // Prefill speed over the ids actually prefilled.
    let prefill = t.out.prompt_tokens.saturating_sub(t.cached) as f64 / t.ttft.max(1e-9);
    let decode = if n > 1 {
        (n - 1) as f64 / (t.total - t.ttft).max(1e-9)
    } else {
        0.0
    };
    (prefill, decode)
}

/// The ids of `messages` rendered without the generation prompt, when `prompt` starts with them:
/// where a conversation's later prompts stop sharing ids with this one (the template renders the
/// generation prompt, and a reply's reasoning, differently once a reply exists).
fn chat_checkpoint(l: &Loaded, messages: &[Value], g: &GenArgs, prompt: &[u32]) -> Option<usize> {
    if messages.is_empty() {
        return None;
    }
    let (tok, tpl) = (l.tokenizer.as_ref()?, l.template.as_ref()?);
    let text = tpl.render(messages, None, false, &chat_kwargs(g)).ok()?;
    let ids = tok.encode(&text, true).ok()?;
    (!ids.is_empty() && ids.len() < prompt.len() && prompt.starts_with(&ids)).then_some(ids.len())
}

/// Where prompts with the same system prompt and another question stop sharing ids: the
/// longest start `prompt` shares with the system messages followed by two different one-letter
/// questions (the template will not render system messages alone).
fn system_checkpoint(l: &Loaded, system: &[Value], g: &GenArgs, prompt: &[u32]) -> Option<usize> {
    if system.is_empty() {
        return None;
    }
    let (tok, tpl) = (l.tokenizer.as_ref()?, l.template.as_ref()?);
    let shared = |q: &str| -> Option<usize> {
        let mut m = system.to_vec();
        m.push(json!({"role": "user", "content": q}));
        let ids = tok
            .encode(&tpl.render(&m, None, false, &chat_kwargs(g)).ok()?, true)
            .ok()?;
        Some(ids.iter().zip(prompt).take_while(|(a, b)| a == b).count())
    };
    let k = shared("x")?.min(shared("y")?);
    (k > 0 && k < prompt.len()).then_some(k)
}

fn chat_kwargs(g: &GenArgs) -> Map<String, Value> {
    let mut kw = Map::new();
    kw.insert("enable_thinking".into(), Value::Bool(!g.no_think));
    kw
}

pub fn generate(mut a: GenerateArgs) -> Result<(), String> {
    a.model.speculative = a.gen.mtp != MtpMode::Off;
    let mut l = load(&a.model)?;
    let mtp = use_mtp(&l, a.gen.mtp)?;
    // The messages before the user's (the system prompt): what later prompts may share.
    let mut shared: Vec<Value> = Vec::new();
    let prompt: Vec<u32> = match (&a.prompt_ids, &a.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => {
            let tok = l
                .tokenizer
                .as_ref()
                .ok_or("this checkpoint has no tokenizer: pass --prompt-ids")?;
            let chat = !a.raw && l.template.is_some();
            if a.chat && l.template.is_none() {
                return Err("--chat: this checkpoint has no chat template".into());
            }
            if chat {
                let mut messages = Vec::new();
                if let Some(s) = &a.gen.system {
                    messages.push(json!({"role": "system", "content": s}));
                }
                shared = messages.clone();
                messages.push(json!({"role": "user", "content": text}));
                let t = l.template.as_ref().ok_or("no chat template")?;
                let rendered = t
                    .render(&messages, None, true, &chat_kwargs(&a.gen))
                    .map_err(|e| e.to_string())?;
                tok.encode(&rendered, true).map_err(|e| e.to_string())?
            } else {
                tok.encode(text, false).map_err(|e| e.to_string())?
            }
        }
        (None, None) => return Err("give a prompt (text) or --prompt-ids".into()),
    };
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if l.tokenizer.is_none() && !a.json {
        return Err("this checkpoint has no tokenizer: add --json to get the generated ids".into());
    }
    let json_mode = a.json;
    let mut cache = match &a.prompt_cache {
        Some(p) => Some(PromptCache::file(p)?),
        None => None,
    };
    if let Some(c) = &mut cache {
        c.checkpoint = system_checkpoint(&l, &shared, &a.gen, &prompt);
    }
    let mut printer = Printer::new(a.gen.hide_reasoning);
    let timed = if l.tokenizer.is_some() {
        run_one(
            &mut l,
            prompt.clone(),
            &a.gen,
            mtp,
            None,
            cache.as_mut(),
            |d| {
                if !json_mode {
                    printer.delta(d)
                }
            },
        )?
    } else {
        run_ids_only(&mut l, prompt.clone(), &a.gen, mtp, cache.as_mut())?
    };
    let (prefill, decode) = rates(&timed);
    if let Some(c) = &cache {
        c.store()?;
    }
    let reused = cache.as_ref().map(|c| c.reused);
    if json_mode {
        let s = &timed.out.summary;
        let mut j = json!({
            "model": l.name,
            "tokens": timed.out.tokens,
            "text": s.content,
            "reasoning": s.reasoning,
            "tool_calls": s.tool_calls.iter().map(|c| json!({"name": c.name, "arguments": c.arguments})).collect::<Vec<_>>(),
            "finish_reason": s.finish_reason,
            "prompt_tokens": prompt.len(),
            "generated_tokens": timed.out.tokens.len(),
            "timings": {"load_s": l.load_s, "ttft_s": timed.ttft, "prefill_tokens_per_s": prefill, "decode_tokens_per_s": decode, "total_s": timed.total},
            "device": l.model.gpu.describe(),
            "dispatches_per_token": l.session.dispatches_per_token(),
        });
        if let Some(m) = timed.out.mtp {
            j["mtp"] = json!({"drafted": m.drafted, "accepted": m.accepted});
        }
        if a.gen.logprobs.is_some() {
            j["logprobs"] = Value::Array(timed.logprobs.clone());
        }
        if let Some(r) = reused {
            j["prompt_cache"] = json!({"reused_tokens": r});
        }
        println!("{j}");
    } else {
        printer.finish();
        let mtp_note = timed
            .out
            .mtp
            .map(|m| format!(", MTP {}/{} drafts accepted", m.accepted, m.drafted))
            .unwrap_or_default();
        let cache_note = reused
            .map(|r| format!(" ({r} from the prompt cache)"))
            .unwrap_or_default();
        eprintln!(
            "{} prompt tokens{cache_note}, {} generated ({}); TTFT {:.3}s, decode {:.1} tok/s{mtp_note}",
            prompt.len(),
            timed.out.tokens.len(),
            timed.out.summary.finish_reason.as_str(),
            timed.ttft,
            decode
        );
    }
    Ok(())
}

/// Generation for a checkpoint without a tokenizer: ids in, ids out.
fn run_ids_only(
    l: &mut Loaded,
    prompt: Vec<u32>,
    g: &GenArgs,
    mtp: bool,
    cache: Option<&mut PromptCache>,
) -> Result<Timed, String> {
    use qwgpu_engine::decode::mtp::{generate_mtp_in_context, MtpOptions};
    use qwgpu_engine::decode::{generate_in_context, Event, Finish, GenOptions};
    use qwgpu_engine::text::stream::{FinishReason, StreamSummary};
    if g.format()?.is_some() {
        return Err(
            "--json-schema, --json-object, --regex and --grammar need the checkpoint's tokenizer"
                .into(),
        );
    }
    let max_ctx = l.session.opts.max_ctx as usize;
    if prompt.len() + 1 > max_ctx {
        return Err(format!(
            "the prompt has {} tokens but the context holds {max_ctx} (use a larger --max-context)",
            prompt.len()
        ));
    }
    let sampling = g.sampling();
    l.session
        .set_sampling(Some(&sampling), g.logprobs.is_some())
        .map_err(|e| e.to_string())?;
    let mut logprobs = Vec::new();
    let opts = GenOptions {
        max_tokens: g.max_tokens,
        eos: l.model.config.eos_token_ids.clone(),
        ignore_eos: g.ignore_eos,
    };
    l.session.reset();
    let t0 = Instant::now();
    note_plain_loop(g);
    let spec = mtp && l.session.mtp_available() && g.logprobs.is_none();
    let (in_context, cached) = match cache {
        Some(c) => (c.prefill(l, &prompt, spec)?, c.reused),
        None => (0, 0),
    };
    let mut ttft = None;
    let mut on = |e: Event| {
        match e {
            Event::PromptDone => ttft = Some(t0.elapsed().as_secs_f64()),
            Event::Token(id, Some(r)) => {
                let top: Vec<Value> = r.top.iter().map(|(t, p)| json!([t, p])).collect();
                logprobs.push(json!({"id": id, "logprob": r.logprob, "top": top}));
            }
            _ => {}
        }
        true
    };
    let policy = if g.mtp == MtpMode::Auto {
        MtpOptions::adaptive(&l.session)
    } else {
        MtpOptions::always()
    };
    let (tokens, finish, stats) = if spec && l.session.mtp_available() {
        let (t, f, s) = pollster::block_on(generate_mtp_in_context(
            &mut l.session,
            &prompt,
            in_context,
            &opts,
            &policy,
            &mut on,
        ))
        .map_err(|e| e.to_string())?;
        (t, f, Some(s))
    } else {
        let (t, f) = pollster::block_on(generate_in_context(
            &mut l.session,
            &prompt,
            in_context,
            &opts,
            &mut on,
        ))
        .map_err(|e| e.to_string())?;
        (t, f, None)
    };
    let total = t0.elapsed().as_secs_f64();
    let summary = StreamSummary {
        content: String::new(),
        reasoning: String::new(),
        tool_calls: vec![],
        finish_reason: if finish == Finish::Stop {
            FinishReason::Stop
        } else {
            FinishReason::Length
        },
        malformed_tool_calls: 0,
        tokens: tokens.len(),
        matched_stop: None,
        ended_in_reasoning: false,
    };
    Ok(Timed {
        out: TextOutput {
            tokens,
            summary,
            mtp: stats,
            prompt_tokens: prompt.len(),
        },
        logprobs,
        ttft: ttft.unwrap_or(total),
        total,
        cached,
    })
}

pub fn chat(mut a: ChatArgs) -> Result<(), String> {
    a.model.speculative = a.gen.mtp != MtpMode::Off;
    let mut l = load(&a.model)?;
    if l.tokenizer.is_none() || l.template.is_none() {
        return Err("chat needs a tokenizer and a chat template; this checkpoint has none".into());
    }
    let mtp = use_mtp(&l, a.gen.mtp)?;
    let mut g = a.gen.clone();
    let cancel = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(AtomicBool::new(false));
    {
        let (cancel, busy) = (cancel.clone(), busy.clone());
        // Ctrl-C stops the current answer; at the prompt it only reminds how to leave.
        ctrlc::set_handler(move || {
            if busy.load(Ordering::Relaxed) {
                cancel.store(true, Ordering::Relaxed);
            } else {
                eprintln!("\n(/exit or Ctrl-D to quit)");
            }
        })
        .map_err(|e| e.to_string())?;
    }
    let tty = std::io::stdin().is_terminal();
    if tty {
        eprintln!(
            "qwgpu chat — {} on {}. /help for commands.",
            l.name,
            l.model.gpu.describe()
        );
    }
    let mut history: Vec<Value> = Vec::new();
    // Each turn's prompt starts with the last one's: its state is restored, not prefilled again.
    let mut cache = PromptCache::memory();
    let mut last: Option<(usize, usize, f64, f64, Option<(u64, u64)>, usize)> = None;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if tty {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.map_err(|e| e.to_string())?;
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        if let Some(cmd) = input.strip_prefix('/') {
            let (name, arg) = cmd
                .split_once(' ')
                .map(|(a, b)| (a, b.trim()))
                .unwrap_or((cmd, ""));
            match name {
                "exit" | "quit" => break,
                "reset" => {
                    history.clear();
                    println!("(conversation cleared)");
                }
                "system" => {
                    g.system = if arg.is_empty() {
                        None
                    } else {
                        Some(arg.to_string())
                    };
                    history.clear();
                    println!(
                        "(system prompt {}; conversation cleared)",
                        if g.system.is_some() { "set" } else { "removed" }
                    );
                }
                "think" => match arg {
                    "on" => {
                        g.no_think = false;
                        println!("(thinking on)");
                    }
                    "off" => {
                        g.no_think = true;
                        println!("(thinking off)");
                    }
                    _ => println!("usage: /think on|off"),
                },
                "stats" => match last {
                    Some((p, n, ttft, dec, m, reused)) => {
                        let mtp = m
                            .map(|(d, a)| format!(", MTP {a}/{d} accepted"))
                            .unwrap_or_default();
                        println!("(last answer: {p} prompt tokens, {n} generated, TTFT {ttft:.3}s, {dec:.1} tok/s{mtp}; {reused} prompt tokens from the cache)");
                    }
                    None => println!("(no answer yet)"),
                },
                "help" => println!("/reset  /system TEXT  /think on|off  /stats  /exit"),
                other => println!("unknown command /{other} (/help)"),
            }
            continue;
        }
        history.push(json!({"role": "user", "content": input}));
        let mut messages = Vec::new();
        if let Some(s) = &g.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.extend(history.iter().cloned());
        let (tok, tpl) = (
            l.tokenizer.as_ref().ok_or("no tokenizer")?,
            l.template.as_ref().ok_or("no template")?,
        );
        let rendered = match tpl.render(&messages, None, true, &chat_kwargs(&g)) {
            Ok(r) => r,
            Err(e) => {
                history.pop();
                println!("error: {e}");
                continue;
            }
        };
        let prompt = tok.encode(&rendered, true).map_err(|e| e.to_string())?;
        cache.checkpoint = chat_checkpoint(&l, &messages, &g, &prompt);
        cancel.store(false, Ordering::Relaxed);
        busy.store(true, Ordering::Relaxed);
        let mut printer = Printer::new(g.hide_reasoning);
        let r = run_one(
            &mut l,
            prompt.clone(),
            &g,
            mtp,
            Some(&cancel),
            (!a.no_prompt_cache).then_some(&mut cache),
            |d| printer.delta(d),
        );
        busy.store(false, Ordering::Relaxed);
        printer.finish();
        match r {
            Ok(t) => {
                let (_, dec) = rates(&t);
                last = Some((
                    prompt.len(),
                    t.out.tokens.len(),
                    t.ttft,
                    dec,
                    t.out.mtp.map(|m| (m.drafted, m.accepted)),
                    cache.reused,
                ));
                let s = &t.out.summary;
                let mut msg =
                    json!({"role": "assistant", "content": s.content.trim_start_matches('\n')});
                if !s.reasoning.is_empty() {
                    msg["reasoning_content"] = Value::String(s.reasoning.trim().to_string());
                }
                history.push(msg);
                if cancel.load(Ordering::Relaxed) {
                    eprintln!("(stopped)");
                }
            }
            Err(e) => {
                history.pop();
                println!("error: {e}");
            }
        }
    }
    Ok(())
}
