//! qwgpu in the browser: the engine compiled to wasm32, on the browser's WebGPU.
//!
//! The JavaScript side (`web/demo/worker.js`, a module Worker) drives three exports:
//!
//! * [`ModelFiles`]: the files of a checkpoint, streamed chunk by chunk into wasm memory as they
//!   are fetched or read from disk (each file is held once; nothing is copied whole).
//! * [`Engine`]: the WebGPU device, the loaded model and its session; [`Engine::load`] uploads the
//!   weights and frees the file bytes, [`Engine::generate`] streams events to a callback,
//!   [`Engine::cancel`] stops a running generation at the next token.
//! * [`check_model_size`] and [`memory_limits`]: the wasm32 memory budget, checked before a
//!   download starts.
//!
//! Requests, events and results cross the boundary as plain JSON-shaped objects (see
//! `web/README.md` for their fields).

// The model's RefCell borrow is held across a generation's awaits on purpose: it is the "busy"
// lock (a second request gets a clear error from try_borrow, never a panic). The engine is
// single-threaded on wasm, so its Arcs need not be Send.
#![allow(clippy::await_holding_refcell_ref, clippy::arc_with_non_send_sync)]

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use js_sys::{Function, Uint8Array};
use serde_json::{json, Map, Value as Json};
use wasm_bindgen::prelude::*;

use qwgpu_engine::decode::cache::prefill_prompt;
use qwgpu_engine::decode::mtp::{generate_mtp_in_context, MtpOptions, MtpStats};
use qwgpu_engine::decode::sampler::SamplingParams;
use qwgpu_engine::decode::text::{generate_text, TextEvent, TextRequest};
use qwgpu_engine::decode::{generate_in_context, Event, Finish, GenOptions};
use qwgpu_engine::gpu::{Gpu, GpuOptions};
use qwgpu_engine::model::config::ModelConfig;
use qwgpu_engine::model::{Model, Session, SessionOptions};
use qwgpu_engine::state::SavedState;
use qwgpu_engine::text::stream::StreamEvent;
use qwgpu_engine::text::{ChatTemplate, Tokenizer};
use qwgpu_engine::weights::{Blob, Checkpoint};

// ---------------------------------------------------------------------------------------------
// The wasm32 memory budget

/// wasm32 linear memory grows to at most 4 GiB (65,536 pages of 64 KiB) in every browser.
pub const WASM32_MEMORY_LIMIT: u64 = 4 << 30;
/// One allocation is at most `isize::MAX` bytes on a 32-bit target: the largest single file.
pub const MAX_FILE_BYTES: u64 = i32::MAX as u64;
/// Memory kept free for everything but the checkpoint bytes: the tokenizer (a 248k vocabulary
/// takes a few hundred MB parsed), the upload staging copy of one binding, the sessions' host
/// data and the JavaScript glue.
pub const RESERVED_BYTES: u64 = 768 << 20;
/// The most checkpoint bytes (all safetensors files together) that can be loaded: the files are
/// held in wasm memory until their tensors are uploaded to the GPU.
pub const MAX_CHECKPOINT_BYTES: u64 = WASM32_MEMORY_LIMIT - RESERVED_BYTES;

fn gib(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

fn too_big(total: u64) -> String {
    format!(
        "this model's weights are {} ({total} bytes); in the browser they must fit in wasm32 memory while they are uploaded: \
         4 GiB at most for a WebAssembly module, of which {} is left for weights. Use a smaller (or more strongly quantized) \
         checkpoint, or the native qwgpu.",
        gib(total),
        gib(MAX_CHECKPOINT_BYTES)
    )
}

/// Fails (naming the limit) when `total_bytes` of safetensors cannot be loaded in the browser.
#[wasm_bindgen(js_name = checkModelSize)]
pub fn check_model_size(total_bytes: f64) -> Result<(), JsError> {
    let total = total_bytes.max(0.0) as u64;
    if total > MAX_CHECKPOINT_BYTES {
        return Err(JsError::new(&too_big(total)));
    }
    Ok(())
}

/// The limits [`check_model_size`] applies and the memory in use now, as
/// `{wasm32_memory_limit, max_checkpoint_bytes, max_file_bytes, memory_bytes}`.
#[wasm_bindgen(js_name = memoryLimits)]
pub fn memory_limits() -> JsValue {
    to_js(&json!({
        "wasm32_memory_limit": WASM32_MEMORY_LIMIT,
        "max_checkpoint_bytes": MAX_CHECKPOINT_BYTES,
        "max_file_bytes": MAX_FILE_BYTES,
        "memory_bytes": memory_bytes(),
    }))
}

/// Bytes of wasm linear memory now.
fn memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size(0) as u64 * 65536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

// ---------------------------------------------------------------------------------------------
// JavaScript helpers

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
    /// `performance.now()`: milliseconds, in windows and workers alike.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn perf_now() -> f64;
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the panic hook: a panic's message goes to the console and to [`last_panic`] (the
/// wasm instance cannot be used after a panic; the worker reports it and asks for a reload).
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        #[cfg(target_arch = "wasm32")]
        console_error(&format!("qwgpu panicked: {msg}"));
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
    }));
}

/// The message of the panic that stopped the module, if any.
#[wasm_bindgen(js_name = lastPanic)]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow().clone())
}

fn to_js(v: &Json) -> JsValue {
    js_sys::JSON::parse(&v.to_string()).unwrap_or(JsValue::NULL)
}

fn from_js(v: &JsValue, what: &str) -> Result<Json, JsError> {
    if v.is_undefined() || v.is_null() {
        return Ok(Json::Object(Map::new()));
    }
    let s = js_sys::JSON::stringify(v)
        .map_err(|_| JsError::new(&format!("{what}: not a JSON-serializable object")))?;
    let s: String = s.into();
    serde_json::from_str(&s).map_err(|e| JsError::new(&format!("{what}: {e}")))
}

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// Calls `f(event)`; false when the callback threw or returned exactly `false`.
fn call(f: Option<&Function>, event: &Json) -> bool {
    match f {
        None => true,
        Some(f) => match f.call1(&JsValue::NULL, &to_js(event)) {
            Ok(r) => r.as_bool() != Some(false),
            Err(e) => {
                console_error(&format!("qwgpu: an event callback threw: {e:?}"));
                false
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Model files

/// The files of a checkpoint, in wasm memory. Stream each file with `begin`, `push` (any number
/// of chunks) and `end`; small text files can be given whole with `setText`. The bytes of
/// every file are held exactly once, and [`Engine::load`] frees them after the upload.
#[wasm_bindgen]
#[derive(Default)]
pub struct ModelFiles {
    files: Vec<(String, Vec<u8>)>,
    /// The file being streamed: its index and its expected size (0 = unknown).
    current: Option<(usize, u64)>,
    safetensors_bytes: u64,
}

fn is_safetensors(name: &str) -> bool {
    name.starts_with("model") && name.ends_with(".safetensors")
}

#[wasm_bindgen]
impl ModelFiles {
    #[wasm_bindgen(constructor)]
    pub fn new() -> ModelFiles {
        ModelFiles::default()
    }

    /// Starts the file `name` of `size` bytes (0 when unknown). Checks the wasm32 budget first.
    pub fn begin(&mut self, name: &str, size: f64) -> Result<(), JsError> {
        if self.current.is_some() {
            return Err(JsError::new(
                "ModelFiles.begin: the previous file was not ended",
            ));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(JsError::new(&format!(
                "ModelFiles.begin: '{name}' was already given"
            )));
        }
        let size = size.max(0.0) as u64;
        if size > MAX_FILE_BYTES {
            return Err(JsError::new(&format!(
                "{name} is {} ({size} bytes); one file must be smaller than 2 GiB in wasm32 memory. Re-shard the checkpoint \
                 into smaller files (e.g. mlx_lm.convert's --max-shard-size / save with a smaller shard size).",
                gib(size)
            )));
        }
        if is_safetensors(name) && self.safetensors_bytes + size > MAX_CHECKPOINT_BYTES {
            return Err(JsError::new(&too_big(self.safetensors_bytes + size)));
        }
        let mut v = Vec::new();
        v.try_reserve_exact(size as usize).map_err(|_| {
            JsError::new(&format!(
                "{name}: could not allocate {} of wasm memory (limit {})",
                gib(size),
                gib(WASM32_MEMORY_LIMIT)
            ))
        })?;
        self.files.push((name.to_string(), v));
        self.current = Some((self.files.len() - 1, size));
        Ok(())
    }

    /// Appends a chunk to the current file (copied straight from the JavaScript buffer).
    pub fn push(&mut self, chunk: &Uint8Array) -> Result<(), JsError> {
        let Some((i, _)) = self.current else {
            return Err(JsError::new("ModelFiles.push: no file was begun"));
        };
        let n = chunk.length() as usize;
        let Some((name, v)) = self.files.get_mut(i) else {
            return Err(JsError::new("ModelFiles.push: the file was lost"));
        };
        if is_safetensors(name) {
            self.safetensors_bytes += n as u64;
            if self.safetensors_bytes > MAX_CHECKPOINT_BYTES {
                return Err(JsError::new(&too_big(self.safetensors_bytes)));
            }
        }
        if v.len() as u64 + n as u64 > MAX_FILE_BYTES {
            return Err(JsError::new(&format!(
                "{name}: one file must be smaller than 2 GiB in wasm32 memory"
            )));
        }
        v.try_reserve(n).map_err(|_| {
            JsError::new(&format!(
                "{name}: out of wasm memory after {} (the limit is {} for everything the page holds)",
                gib(memory_bytes()),
                gib(WASM32_MEMORY_LIMIT)
            ))
        })?;
        let start = v.len();
        v.resize(start + n, 0);
        chunk.copy_to(&mut v[start..]);
        Ok(())
    }

    /// Ends the current file; fails when fewer or more bytes arrived than announced.
    pub fn end(&mut self) -> Result<(), JsError> {
        let Some((i, size)) = self.current.take() else {
            return Err(JsError::new("ModelFiles.end: no file was begun"));
        };
        let Some((name, v)) = self.files.get_mut(i) else {
            return Err(JsError::new("ModelFiles.end: the file was lost"));
        };
        if size > 0 && v.len() as u64 != size {
            return Err(JsError::new(&format!(
                "{name}: received {} bytes, expected {size} (interrupted download?)",
                v.len()
            )));
        }
        v.shrink_to_fit();
        Ok(())
    }

    /// Adds a whole small file (config.json, an index, a chat template).
    #[wasm_bindgen(js_name = setText)]
    pub fn set_text(&mut self, name: &str, text: &str) -> Result<(), JsError> {
        self.begin(name, text.len() as f64)?;
        let Some((i, _)) = self.current.take() else {
            return Err(JsError::new("ModelFiles.setText: the file was not begun"));
        };
        match self.files.get_mut(i) {
            Some((_, v)) => v.extend_from_slice(text.as_bytes()),
            None => return Err(JsError::new("ModelFiles.setText: the file was lost")),
        }
        Ok(())
    }

    /// The names given so far.
    pub fn names(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Total bytes held.
    pub fn bytes(&self) -> f64 {
        self.files.iter().map(|(_, v)| v.len() as f64).sum()
    }
}

impl ModelFiles {
    fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        let i = self.files.iter().position(|(n, _)| n == name)?;
        Some(self.files.remove(i).1)
    }

    fn take_text(&mut self, name: &str) -> Result<Option<String>, JsError> {
        match self.take(name) {
            None => Ok(None),
            Some(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| JsError::new(&format!("{name}: not UTF-8 text"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engine

struct Loaded {
    model: Arc<Model>,
    session: Session,
    tokenizer: Option<Tokenizer>,
    template: Option<ChatTemplate>,
    /// The last prompt's state up to its checkpoint (a chat's messages before the generation
    /// prompt): the next turn of a conversation prefills only what is new.
    cache: Option<SavedState>,
}

/// A WebGPU device with (after [`Engine::load`]) a model and one session.
#[wasm_bindgen]
pub struct Engine {
    gpu: Arc<Gpu>,
    loaded: RefCell<Option<Loaded>>,
    /// Description of the loaded model (kept apart so it can be read during a generation).
    info: RefCell<Json>,
    last_stats: RefCell<Json>,
    cancel: Cell<bool>,
    /// The adapter's name: wgpu's, else the page's (`options.adapter_label`, from `GPUAdapterInfo`
    /// vendor and architecture; browsers often leave the description empty).
    adapter_name: String,
}

/// [`Gpu::describe`] with `name` in place of an empty adapter name.
fn describe(gpu: &Gpu, name: &str) -> String {
    let d = gpu.describe();
    if gpu.info.name.is_empty() {
        format!("{name}{d}")
    } else {
        d
    }
}

fn adapter_json(gpu: &Gpu, name: &str) -> Json {
    let i = &gpu.info;
    let l = &gpu.limits;
    json!({
        "name": name,
        "backend": format!("{:?}", i.backend).to_lowercase(),
        "device_type": format!("{:?}", i.device_type),
        "driver": i.driver,
        "driver_info": i.driver_info,
        "vendor": i.vendor,
        "device": i.device,
        "description": describe(gpu, name),
        "subgroups": gpu.caps.subgroups,
        "subgroup_sizes": [gpu.caps.subgroup_min_size, gpu.caps.subgroup_max_size],
        "shader_f16": gpu.caps.f16,
        "max_buffer_size": l.max_buffer_size,
        "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
        "max_binding_used": gpu.caps.max_binding,
        "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
        "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
        "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
        "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
    })
}

fn model_json(
    name: &str,
    m: &Model,
    session: &Session,
    tok: Option<&Tokenizer>,
    tmpl: Option<&ChatTemplate>,
    file_bytes: u64,
) -> Json {
    let c: &ModelConfig = &m.config;
    let quant = c
        .quantization
        .global
        .map(|q| json!({"bits": q.bits, "group_size": q.group_size}));
    json!({
        "name": name,
        "model_type": c.model_type,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "vocab_size": c.vocab_size,
        "quantization": quant,
        "eos_token_ids": c.eos_token_ids,
        "mtp": m.has_mtp(),
        "checkpoint_bytes": file_bytes,
        "gpu_weight_bytes": m.weights.bytes(),
        "max_context": session.opts.max_ctx,
        "prefill_chunk": session.opts.prefill_chunk,
        "kv_cache": if session.opts.kv_f16 { "f16" } else { "f32" },
        "tokenizer": tok.map(|t| t.source().to_string()),
        "chat_template": tmpl.map(|t| t.source().to_string()),
        "notes": m.notes,
    })
}

/// What a request asks for (see web/README.md).
struct Request {
    prompt: Prompt,
    max_tokens: usize,
    mtp: Mtp,
    ignore_eos: bool,
    stop: Vec<String>,
    sampling: SamplingParams,
    logprobs: bool,
}

/// MTP speculative decoding: off, always, or while it pays off (the acceptance rate is checked
/// after a few drafts, as `qwgpu --mtp auto`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mtp {
    Off,
    On,
    Auto,
}

enum Prompt {
    Messages {
        messages: Vec<Json>,
        tools: Option<Vec<Json>>,
        kwargs: Map<String, Json>,
        add_generation_prompt: bool,
    },
    Text(String),
    Ids(Vec<u32>),
}

fn parse_request(mut v: Json) -> Result<Request, String> {
    let obj = v.as_object_mut().ok_or("the request must be an object")?;
    let mut take = |k: &str| obj.remove(k);
    let as_bool = |v: Option<Json>, k: &str, d: bool| -> Result<bool, String> {
        match v {
            None | Some(Json::Null) => Ok(d),
            Some(Json::Bool(b)) => Ok(b),
            Some(_) => Err(format!("'{k}' must be true or false")),
        }
    };
    let messages = take("messages");
    let prompt_text = take("prompt");
    let prompt_ids = take("prompt_ids");
    let tools = take("tools");
    let enable_thinking = take("enable_thinking");
    let kwargs = take("chat_template_kwargs");
    let agp = take("add_generation_prompt");
    let prompt = match (messages, prompt_text, prompt_ids) {
        (Some(Json::Array(messages)), None, None) => {
            let mut kw = match kwargs {
                None | Some(Json::Null) => Map::new(),
                Some(Json::Object(m)) => m,
                Some(_) => return Err("'chat_template_kwargs' must be an object".into()),
            };
            if let Some(t) = enable_thinking {
                kw.insert(
                    "enable_thinking".into(),
                    Json::Bool(as_bool(Some(t), "enable_thinking", true)?),
                );
            }
            let tools = match tools {
                None | Some(Json::Null) => None,
                Some(Json::Array(t)) => Some(t),
                Some(_) => return Err("'tools' must be a list".into()),
            };
            Prompt::Messages {
                messages,
                tools,
                kwargs: kw,
                add_generation_prompt: as_bool(agp, "add_generation_prompt", true)?,
            }
        }
        (None, Some(Json::String(s)), None) => Prompt::Text(s),
        (None, None, Some(Json::Array(ids))) => {
            let ids: Option<Vec<u32>> = ids
                .iter()
                .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect();
            Prompt::Ids(ids.ok_or("'prompt_ids' must be a list of token ids")?)
        }
        (None, None, None) => {
            return Err(
                "give 'messages' (chat), 'prompt' (text) or 'prompt_ids' (token ids)".into(),
            )
        }
        _ => return Err(
            "give exactly one of 'messages' (a list), 'prompt' (a string) or 'prompt_ids' (a list)"
                .into(),
        ),
    };
    let max_tokens = match take("max_tokens") {
        None | Some(Json::Null) => 256,
        Some(x) => x
            .as_u64()
            .ok_or("'max_tokens' must be a non-negative integer")? as usize,
    };
    let mtp = match take("mtp") {
        None | Some(Json::Null) => Mtp::Auto,
        Some(Json::Bool(true)) => Mtp::On,
        Some(Json::Bool(false)) => Mtp::Off,
        Some(Json::String(s)) if s == "auto" => Mtp::Auto,
        Some(Json::String(s)) if s == "on" => Mtp::On,
        Some(Json::String(s)) if s == "off" => Mtp::Off,
        Some(_) => return Err("'mtp' must be true, false, \"on\", \"off\" or \"auto\"".into()),
    };
    let ignore_eos = as_bool(take("ignore_eos"), "ignore_eos", false)?;
    let logprobs = as_bool(take("logprobs"), "logprobs", false)?;
    let stop = match take("stop") {
        None | Some(Json::Null) => vec![],
        Some(Json::String(s)) => vec![s],
        Some(Json::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or("'stop' must be a string or a list of strings")?,
        Some(_) => return Err("'stop' must be a string or a list of strings".into()),
    };
    // OpenAI's {"id": bias} map is accepted as well as [[id, bias], ...].
    if let Some(Json::Object(m)) = obj.get("logit_bias") {
        let list: Vec<Json> = m
            .iter()
            .map(|(k, b)| json!([k.parse::<u64>().unwrap_or(u64::MAX), b]))
            .collect();
        obj.insert("logit_bias".into(), Json::Array(list));
    }
    // Everything else is a sampling parameter (unknown names are errors).
    let sampling: SamplingParams =
        serde_json::from_value(v).map_err(|e| format!("invalid request: {e}"))?;
    Ok(Request {
        prompt,
        max_tokens,
        mtp,
        ignore_eos,
        stop,
        sampling,
        logprobs,
    })
}

fn delta_json(d: &qwgpu_engine::text::stream::Delta) -> Json {
    let tools: Vec<&StreamEvent> = d.tool_events().collect();
    let mut j = json!({"type": "delta", "content": d.content(), "reasoning": d.reasoning()});
    if !tools.is_empty() {
        j["tool_events"] = serde_json::to_value(tools).unwrap_or(Json::Null);
    }
    if let Some(f) = d.finished {
        j["finished"] = json!(f.as_str());
    }
    j
}

/// While MTP runs, token and delta events carry the running draft counts, `mtp: {drafted,
/// accepted}` (the last equals the result's `stats.mtp`).
fn with_mtp(mut j: Json, running: Option<(u64, u64)>) -> Json {
    if let Some((drafted, accepted)) = running {
        j["mtp"] = json!({"drafted": drafted, "accepted": accepted});
    }
    j
}

#[wasm_bindgen]
impl Engine {
    /// Opens the WebGPU device. `options`: `{max_binding?: bytes, no_subgroups?: bool,
    /// adapter_label?: string}` (the first two for testing the split paths; the defaults use what
    /// the adapter allows; the label names the adapter when the browser gives no description).
    pub async fn create(options: JsValue) -> Result<Engine, JsError> {
        let o = from_js(&options, "Engine.create options")?;
        let label = o
            .get("adapter_label")
            .and_then(Json::as_str)
            .unwrap_or("WebGPU adapter")
            .to_string();
        let opts = GpuOptions {
            max_binding: o.get("max_binding").and_then(Json::as_u64),
            no_subgroups: o
                .get("no_subgroups")
                .and_then(Json::as_bool)
                .unwrap_or(false),
            ..Default::default()
        };
        let gpu = Gpu::new(&opts).await.map_err(err)?;
        let adapter_name = if gpu.info.name.is_empty() {
            label
        } else {
            gpu.info.name.clone()
        };
        Ok(Engine {
            gpu,
            loaded: RefCell::new(None),
            info: RefCell::new(Json::Null),
            last_stats: RefCell::new(Json::Null),
            cancel: Cell::new(false),
            adapter_name,
        })
    }

    /// The adapter: name, backend, features and the limits that matter here.
    pub fn adapter(&self) -> JsValue {
        to_js(&adapter_json(&self.gpu, &self.adapter_name))
    }

    /// The loaded model (null before [`Engine::load`]).
    pub fn model(&self) -> JsValue {
        to_js(&self.info.borrow())
    }

    /// The last generation's numbers: tokens, TTFT, prefill and decode tok/s, MTP drafts.
    pub fn stats(&self) -> JsValue {
        to_js(&self.last_stats.borrow())
    }

    /// Stops the running generation after the current token.
    pub fn cancel(&self) {
        self.cancel.set(true);
    }

    /// Loads a checkpoint from `files` (consumed; its bytes are freed once uploaded).
    /// `options`: `{name?, max_context? (4096), prefill_chunk? (512)}`. `progress({phase, done,
    /// total})` is called while uploading (phase "upload") and once the session is ready.
    pub async fn load(
        &self,
        files: ModelFiles,
        options: JsValue,
        progress: Option<Function>,
    ) -> Result<JsValue, JsError> {
        let mut files = files;
        if files.current.is_some() {
            return Err(JsError::new(
                "Engine.load: a file is still being streamed (call ModelFiles.end)",
            ));
        }
        let o = from_js(&options, "Engine.load options")?;
        let name = o
            .get("name")
            .and_then(Json::as_str)
            .unwrap_or("model")
            .to_string();
        let max_ctx = o.get("max_context").and_then(Json::as_u64).unwrap_or(4096) as u32;
        let chunk = o.get("prefill_chunk").and_then(Json::as_u64).unwrap_or(512) as u32;
        let kv_f16 = match o.get("kv_cache") {
            None | Some(Json::Null) => false,
            Some(v) => match v.as_str() {
                Some("f32") => false,
                Some("f16") => true,
                _ => {
                    return Err(JsError::new(&format!(
                        "Engine.load options: kv_cache must be \"f32\" or \"f16\", not {v}"
                    )))
                }
            },
        };
        let mut slot = self
            .loaded
            .try_borrow_mut()
            .map_err(|_| JsError::new("the engine is busy generating; cancel first"))?;
        // Free the previous model's GPU memory before uploading the next one.
        *slot = None;
        *self.info.borrow_mut() = Json::Null;

        let config_text = files
            .take_text("config.json")?
            .ok_or_else(|| JsError::new("config.json is missing"))?;
        let gen_text = files.take_text("generation_config.json")?;
        let config =
            ModelConfig::parse("config.json", &config_text, gen_text.as_deref()).map_err(err)?;

        let tokenizer = match (
            files.take("tokenizer.json"),
            files.take("tokenizer.json.gz"),
        ) {
            (Some(b), _) => Some(Tokenizer::from_bytes(&b, "tokenizer.json").map_err(err)?),
            (None, Some(b)) => Some(Tokenizer::from_bytes(&b, "tokenizer.json.gz").map_err(err)?),
            (None, None) => None,
        };
        // Another model's tokenizer (vocabulary larger than the embedding, EOS ids it lacks) is
        // refused before any weight is uploaded.
        if let Some(t) = &tokenizer {
            t.check_model(config.vocab_size, &config.eos_token_ids)
                .map_err(err)?;
        }
        // The chat template as a checkpoint directory gives it (ChatTemplate::from_model_dir):
        // chat_template.jinja, else tokenizer_config.json's, else chat_template.json's, else the
        // built-in Qwen3.6 one; special tokens from tokenizer_config.json.
        let tok_cfg = files.take_text("tokenizer_config.json")?;
        let jinja = files.take_text("chat_template.jinja")?;
        let tmpl_json = files.take_text("chat_template.json")?;
        let template = if tokenizer.is_some() {
            let from_cfg = match &tok_cfg {
                Some(t) => {
                    ChatTemplate::from_tokenizer_config(t, "tokenizer_config.json").map_err(err)?
                }
                None => None,
            };
            let mut t = if let Some(j) = &jinja {
                ChatTemplate::new(j, "chat_template.jinja").map_err(err)?
            } else if let Some(t) = from_cfg {
                t
            } else if let Some(j) = &tmpl_json {
                ChatTemplate::from_tokenizer_config(j, "chat_template.json")
                    .map_err(err)?
                    .unwrap_or_else(ChatTemplate::builtin_qwen3_6)
            } else {
                ChatTemplate::builtin_qwen3_6()
            };
            if let Some(Ok(Json::Object(cfg))) =
                tok_cfg.as_deref().map(serde_json::from_str::<Json>)
            {
                for field in [
                    "bos_token",
                    "eos_token",
                    "unk_token",
                    "pad_token",
                    "sep_token",
                    "cls_token",
                ] {
                    let v = match cfg.get(field) {
                        Some(Json::String(s)) => Some(s.as_str()),
                        Some(Json::Object(o)) => o.get("content").and_then(Json::as_str),
                        _ => None,
                    };
                    if let Some(v) = v {
                        t.set_special_token(field, v);
                    }
                }
            }
            Some(t)
        } else {
            None
        };

        let index = files.take_text("model.safetensors.index.json")?;
        let mut shards: Vec<(String, Vec<u8>)> = std::mem::take(&mut files.files)
            .into_iter()
            .filter(|(n, _)| is_safetensors(n))
            .collect();
        shards.sort_by(|a, b| a.0.cmp(&b.0));
        let file_bytes: u64 = shards.iter().map(|(_, b)| b.len() as u64).sum();
        let blobs = shards
            .into_iter()
            .map(|(n, b)| (n, Blob::Owned(b)))
            .collect();
        let ck = Checkpoint::from_blobs(
            blobs,
            index
                .as_deref()
                .map(|t| ("model.safetensors.index.json", t)),
        )
        .map_err(err)?;
        let prog = progress.as_ref();
        let model = Model::from_checkpoint(self.gpu.clone(), config, &ck, &mut |done, total| {
            call(
                prog,
                &json!({"phase": "upload", "done": done, "total": total}),
            );
        })
        .map_err(err)?;
        drop(ck);
        let model = Arc::new(model);
        call(prog, &json!({"phase": "session", "done": 0, "total": 1}));
        let session = Session::new(
            model.clone(),
            SessionOptions {
                max_ctx,
                prefill_chunk: chunk,
                speculative: true,
                kv_f16,
                ..Default::default()
            },
        )
        .await
        .map_err(err)?;
        self.gpu.take_error().map_err(err)?;
        let info = model_json(
            &name,
            &model,
            &session,
            tokenizer.as_ref(),
            template.as_ref(),
            file_bytes,
        );
        *self.info.borrow_mut() = info.clone();
        *slot = Some(Loaded {
            model,
            session,
            tokenizer,
            template,
            cache: None,
        });
        call(prog, &json!({"phase": "ready", "done": 1, "total": 1}));
        Ok(to_js(&info))
    }

    /// Renders `messages` with the chat template and tokenizes them (no generation).
    /// `request` takes the same prompt fields as [`Engine::generate`].
    pub fn tokenize(&self, request: JsValue) -> Result<Vec<u32>, JsError> {
        let req = parse_request(from_js(&request, "request")?).map_err(err)?;
        let slot = self
            .loaded
            .try_borrow()
            .map_err(|_| JsError::new("the engine is busy"))?;
        let l = slot
            .as_ref()
            .ok_or_else(|| JsError::new("no model is loaded"))?;
        prompt_ids(l, &req.prompt).map_err(err)
    }

    /// Generates. `request`: a prompt (`messages`, `prompt` or `prompt_ids`), `max_tokens`,
    /// `mtp`, `ignore_eos`, `stop`, `enable_thinking`, `logprobs` and sampling parameters
    /// (`temperature`, `top_k`, `top_p`, `min_p`, penalties, `logit_bias`, `seed`, ...).
    /// `on_event` receives `{type: "prompt_done"}`, `{type: "token", id}` and `{type: "delta",
    /// content, reasoning}` objects (with MTP on, token and delta events also carry the running
    /// `mtp: {drafted, accepted}`); returning `false` stops generation (as [`Engine::cancel`]).
    /// Resolves to `{tokens, content, reasoning, finish_reason, stats}`.
    pub async fn generate(
        &self,
        request: JsValue,
        on_event: Option<Function>,
    ) -> Result<JsValue, JsError> {
        let req = parse_request(from_js(&request, "request")?).map_err(err)?;
        let mut slot = self
            .loaded
            .try_borrow_mut()
            .map_err(|_| JsError::new("the engine is busy with another request"))?;
        let l = slot
            .as_mut()
            .ok_or_else(|| JsError::new("no model is loaded"))?;
        let prompt = prompt_ids(l, &req.prompt).map_err(err)?;
        if prompt.is_empty() {
            return Err(JsError::new("the prompt is empty"));
        }
        let max_ctx = l.session.opts.max_ctx as usize;
        if prompt.len() + 2 > max_ctx {
            return Err(JsError::new(&format!("the prompt has {} tokens but the context holds {max_ctx} (load with a larger max_context)", prompt.len())));
        }
        let max_tokens = req.max_tokens.min(max_ctx - prompt.len() - 2);
        let vocab = l.model.config.vocab_size as u32;
        req.sampling.validate(Some(vocab)).map_err(err)?;
        self.cancel.set(false);
        let cb = on_event.as_ref();
        let cancel = &self.cancel;
        l.session.reset();
        let t0 = perf_now();
        // The prompt but its last id goes in first, from the cache where it can (the last
        // conversation's state up to its last message); speculation as below.
        let spec = req.mtp != Mtp::Off && !req.logprobs && l.session.mtp_available();
        let at = checkpoint(l, &req.prompt, &prompt).unwrap_or(prompt.len() - 1);
        let (cached, entry) = prefill_prompt(&mut l.session, &prompt, l.cache.as_ref(), spec, at)
            .await
            .map_err(err)?;
        if entry.is_some() {
            l.cache = entry;
        }
        let in_context = prompt.len() - 1;
        let mut ttft = None;
        let (tokens, content, reasoning, finish, mtp, tool_calls) = if let Some(tok) = &l.tokenizer
        {
            let mut stream = tok.stream_config(&l.model.config.eos_token_ids);
            stream.stop_strings = req.stop.clone();
            let treq = TextRequest {
                prompt: prompt.clone(),
                max_tokens,
                stream,
                ignore_eos: req.ignore_eos,
                mtp: req.mtp != Mtp::Off,
                mtp_adaptive: req.mtp == Mtp::Auto,
                sampling: Some(req.sampling.clone()),
                logprobs: req.logprobs,
                in_context,
            };
            let mut running = None;
            let out = generate_text(&mut l.session, tok, &treq, &mut |e| {
                let go = match e {
                    TextEvent::PromptDone => {
                        let t = (perf_now() - t0) / 1e3;
                        ttft = Some(t);
                        call(cb, &json!({"type": "prompt_done", "prompt_tokens": prompt.len(), "ttft_s": t}))
                    }
                    TextEvent::Token(id, lp) => {
                        let mut j = json!({"type": "token", "id": id});
                        if let Some(r) = lp {
                            j["logprob"] = json!(r.logprob);
                            j["top"] = json!(r.top);
                        }
                        call(cb, &with_mtp(j, running))
                    }
                    TextEvent::Delta(d) => call(cb, &with_mtp(delta_json(d), running)),
                    TextEvent::Mtp { drafted, accepted } => {
                        running = Some((drafted, accepted));
                        true
                    }
                };
                go && !cancel.get()
            })
            .await
            .map_err(err)?;
            let s = out.summary;
            let calls: Vec<Json> = s
                .tool_calls
                .iter()
                .map(|c| json!({"name": c.name, "arguments": c.arguments}))
                .collect();
            (
                out.tokens,
                s.content,
                s.reasoning,
                s.finish_reason.as_str().to_string(),
                out.mtp,
                calls,
            )
        } else {
            // A checkpoint without a tokenizer: ids in, ids out.
            l.session
                .set_sampling(Some(&req.sampling), req.logprobs)
                .map_err(err)?;
            let opts = GenOptions {
                max_tokens,
                eos: l.model.config.eos_token_ids.clone(),
                ignore_eos: req.ignore_eos,
            };
            let mut running = None;
            let mut on = |e: Event| -> bool {
                let go = match e {
                    Event::PromptDone => {
                        let t = (perf_now() - t0) / 1e3;
                        ttft = Some(t);
                        call(
                            cb,
                            &json!({"type": "prompt_done", "prompt_tokens": prompt.len(), "ttft_s": t}),
                        )
                    }
                    Event::Token(id, lp) => {
                        let mut j = json!({"type": "token", "id": id});
                        if let Some(r) = lp {
                            j["logprob"] = json!(r.logprob);
                            j["top"] = json!(r.top);
                        }
                        call(cb, &with_mtp(j, running))
                    }
                    Event::Mtp { drafted, accepted } => {
                        running = Some((drafted, accepted));
                        true
                    }
                };
                go && !cancel.get()
            };
            // As generate_text: speculation for greedy and sampled requests, not with logprobs.
            let (t, f, s): (Vec<u32>, Finish, Option<MtpStats>) =
                if req.mtp != Mtp::Off && l.session.mtp_available() && !req.logprobs {
                    let policy = if req.mtp == Mtp::Auto {
                        MtpOptions::adaptive(&l.session)
                    } else {
                        MtpOptions::always()
                    };
                    let (t, f, s) = generate_mtp_in_context(
                        &mut l.session,
                        &prompt,
                        in_context,
                        &opts,
                        &policy,
                        &mut on,
                    )
                    .await
                    .map_err(err)?;
                    (t, f, Some(s))
                } else {
                    let (t, f) =
                        generate_in_context(&mut l.session, &prompt, in_context, &opts, &mut on)
                            .await
                            .map_err(err)?;
                    (t, f, None)
                };
            let finish = if f == Finish::Stop || cancel.get() {
                "stop"
            } else {
                "length"
            };
            (
                t,
                String::new(),
                String::new(),
                finish.to_string(),
                s,
                vec![],
            )
        };
        let total = (perf_now() - t0) / 1e3;
        let ttft = ttft.unwrap_or(total);
        let n = tokens.len();
        let stats = json!({
            "prompt_tokens": prompt.len(),
            "generated_tokens": n,
            "ttft_s": ttft,
            "total_s": total,
            "cached_tokens": cached,
            "prefill_tokens_per_s": (prompt.len() - cached) as f64 / ttft.max(1e-9),
            "decode_tokens_per_s": if n > 1 { (n - 1) as f64 / (total - ttft).max(1e-9) } else { 0.0 },
            "mtp": mtp.map(|m| json!({"drafted": m.drafted, "accepted": m.accepted, "acceptance": m.acceptance()})),
            "cancelled": cancel.get(),
            "adapter": describe(&self.gpu, &self.adapter_name),
        });
        *self.last_stats.borrow_mut() = stats.clone();
        self.gpu.take_error().map_err(err)?;
        Ok(to_js(&json!({
            "tokens": tokens,
            "content": content,
            "reasoning": reasoning,
            "tool_calls": tool_calls,
            "finish_reason": finish,
            "stats": stats,
        })))
    }
}

/// The prompt's token ids: the chat template + tokenizer for messages, the tokenizer for text.
/// For a chat prompt, the ids of its messages without the generation prompt when `ids` starts
/// with them: where the conversation's next prompt stops sharing ids with this one.
fn checkpoint(l: &Loaded, p: &Prompt, ids: &[u32]) -> Option<usize> {
    let Prompt::Messages {
        messages,
        tools,
        kwargs,
        add_generation_prompt: true,
    } = p
    else {
        return None;
    };
    let (tok, t) = (l.tokenizer.as_ref()?, l.template.as_ref()?);
    let text = t.render(messages, tools.as_deref(), false, kwargs).ok()?;
    let h = tok.encode(&text, true).ok()?;
    (!h.is_empty() && h.len() < ids.len() && ids.starts_with(&h)).then_some(h.len())
}

fn prompt_ids(l: &Loaded, p: &Prompt) -> Result<Vec<u32>, String> {
    match p {
        Prompt::Ids(ids) => {
            let vocab = l.model.config.vocab_size as u32;
            if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
                return Err(format!(
                    "token id {bad} is outside the vocabulary (size {vocab})"
                ));
            }
            Ok(ids.clone())
        }
        Prompt::Text(t) => {
            let tok = l
                .tokenizer
                .as_ref()
                .ok_or("this checkpoint has no tokenizer.json: give 'prompt_ids'")?;
            tok.encode(t, false).map_err(|e| e.to_string())
        }
        Prompt::Messages {
            messages,
            tools,
            kwargs,
            add_generation_prompt,
        } => {
            let tok = l.tokenizer.as_ref().ok_or(
                "this checkpoint has no tokenizer.json: chat needs one (give 'prompt_ids')",
            )?;
            let t = l
                .template
                .as_ref()
                .ok_or("this checkpoint has no chat template")?;
            let text = t
                .render(messages, tools.as_deref(), *add_generation_prompt, kwargs)
                .map_err(|e| e.to_string())?;
            tok.encode(&text, true).map_err(|e| e.to_string())
        }
    }
}
