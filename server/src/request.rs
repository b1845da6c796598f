//! Parsing and validating OpenAI request bodies. Unknown fields are ignored; a field with a wrong
//! type or an out-of-range value is a 400 that names it.

use qwgpu_engine::decode::sampler::{SamplingParams, HISTORY_RING, MAX_TOP_LOGPROBS};
use qwgpu_engine::text::grammar::{tool_call_grammar, GrammarSpec};
use serde_json::{json, Map, Value};

use crate::error::{type_name, ApiError};

/// Most stop strings a request may give.
pub const MAX_STOP: usize = 16;

/// Most choices one request may ask for (`n`); they run one after another on the GPU, the later
/// ones restoring the prompt's state from the prompt cache.
pub const MAX_CHOICES: usize = 16;

/// Generation settings shared by both endpoints.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// Requested completion limit (None: whatever the context leaves).
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    /// Whether the client gave a seed (otherwise sampled requests get a fresh one).
    pub seed_given: bool,
    pub stop: Vec<String>,
    /// Per-token logprobs asked for (`sampling.top_logprobs` alternatives each).
    pub logprobs: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// Per-request MTP switch (None: the server's default).
    pub mtp: Option<bool>,
    pub ignore_eos: bool,
    /// Choices to generate (`n`): choice i samples with seed `seed + i` when a seed is given.
    pub n: usize,
}

/// A validated chat request.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// Messages ready for the chat template.
    pub messages: Vec<Value>,
    /// Tools given to the template (after tool_choice).
    pub tools: Option<Vec<Value>>,
    /// Parse tool calls out of the reply.
    pub parse_tools: bool,
    pub kwargs: Map<String, Value>,
    pub gen: GenParams,
    /// The reply's required form (`response_format`, or tool calls) and the field a compile
    /// error names; None = free text.
    pub format: Option<(GrammarSpec, &'static str)>,
}

#[derive(Clone, Debug)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A validated (legacy) completion request.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub echo: bool,
    pub gen: GenParams,
    /// The text's required form (`response_format`, as for chat), None = free text.
    pub format: Option<(GrammarSpec, &'static str)>,
}

/// Typed access to the fields of a request object.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// The field, None when absent or null.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::wrong_type(name, "a boolean", v)),
        }
    }

    fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if !(x.is_finite() && x >= lo && x <= hi) {
                    return Err(ApiError::invalid(
                        name,
                        format!("'{name}' must be between {lo} and {hi}, got {n}"),
                    ));
                }
                Ok(Some(x))
            }
            Some(v) => Err(ApiError::wrong_type(name, "a number", v)),
        }
    }

    fn int(&self, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => int_value(v, name, lo, hi).map(Some),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::wrong_type(name, "a string", v)),
        }
    }
}

/// An integer in [lo, hi]; integral floats (2.0) are accepted.
fn int_value(v: &Value, name: &str, lo: i64, hi: i64) -> Result<i64, ApiError> {
    let Value::Number(n) = v else {
        return Err(ApiError::wrong_type(name, "an integer", v));
    };
    let x = if let Some(i) = n.as_i64() {
        i
    } else if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15) {
        f as i64
    } else if n.is_u64() {
        i64::MAX
    } else {
        return Err(ApiError::wrong_type(name, "an integer", v));
    };
    if x < lo || x > hi {
        let range = if hi == i64::MAX {
            format!("at least {lo}")
        } else {
            format!("between {lo} and {hi}")
        };
        return Err(ApiError::invalid(
            name,
            format!("'{name}' must be {range}, got {n}"),
        ));
    }
    Ok(x)
}

/// Parses the body: a JSON object, or a 400.
pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_json(
            "The request body is empty; expected a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(v) => Err(ApiError::bad_json(format!(
            "The request body must be a JSON object, got {}",
            type_name(&v)
        ))),
        Err(e) => Err(ApiError::bad_json(format!(
            "We could not parse the JSON body of your request: {e}"
        ))),
    }
}

fn model_field(f: &Fields) -> Result<Option<String>, ApiError> {
    Ok(f.string("model")?.map(str::to_string))
}

/// Fields common to both endpoints. `chat` selects the chat meaning of `logprobs` (a boolean plus
/// `top_logprobs`) over the completions one (an integer: how many alternatives).
fn gen_params(f: &Fields, chat: bool, vocab: u32) -> Result<GenParams, ApiError> {
    let mut s = SamplingParams::default();
    // OpenAI's `max_completion_tokens` replaces `max_tokens`; either is accepted.
    let mut max_tokens = f.int("max_tokens", 1, i64::MAX)?;
    if let Some(m) = f.int("max_completion_tokens", 1, i64::MAX)? {
        max_tokens = Some(m);
    }
    if let Some(t) = f.number("temperature", 0.0, 2.0)? {
        s.temperature = t as f32;
    }
    if let Some(p) = f.get("top_p") {
        let x = f.number("top_p", 0.0, 1.0)?.unwrap_or(1.0);
        if x <= 0.0 {
            return Err(ApiError::invalid(
                "top_p",
                format!("'top_p' must be in (0, 1], got {p}"),
            ));
        }
        s.top_p = x as f32;
    }
    if let Some(k) = f.int("top_k", -1, i64::from(u32::MAX))? {
        s.top_k = k.max(0) as u32;
    }
    if let Some(m) = f.number("min_p", 0.0, 1.0)? {
        s.min_p = m as f32;
    }
    if let Some(p) = f.number("presence_penalty", -2.0, 2.0)? {
        s.presence_penalty = p as f32;
    }
    if let Some(p) = f.number("frequency_penalty", -2.0, 2.0)? {
        s.frequency_penalty = p as f32;
    }
    if let Some(p) = f.number("repetition_penalty", 0.0, 100.0)? {
        s.repetition_penalty = p as f32;
    }
    for name in ["repetition_context_size", "repetition_context"] {
        if let Some(n) = f.int(name, 1, i64::from(HISTORY_RING))? {
            s.repetition_context = n as u32;
        }
    }
    let seed = f.int("seed", i64::MIN, i64::MAX)?;
    if let Some(seed) = seed {
        s.seed = seed as u64;
    }
    if let Some(bias) = f.get("logit_bias") {
        let Value::Object(m) = bias else {
            return Err(ApiError::wrong_type(
                "logit_bias",
                "an object mapping token ids to biases",
                bias,
            ));
        };
        for (k, v) in m {
            let param = format!("logit_bias.{k}");
            let id: u32 = k
                .trim()
                .parse()
                .map_err(|_| ApiError::invalid(&param, format!("'{k}' is not a token id")))?;
            if id >= vocab {
                return Err(ApiError::invalid(
                    &param,
                    format!("token id {id} is outside the vocabulary (size {vocab})"),
                ));
            }
            let Some(b) = v.as_f64().filter(|b| (-100.0..=100.0).contains(b)) else {
                return Err(ApiError::invalid(
                    &param,
                    format!("the bias must be a number between -100 and 100, got {v}"),
                ));
            };
            s.logit_bias.push((id, b as f32));
        }
    }
    let (logprobs, top) = if chat {
        let lp = f.bool("logprobs")?.unwrap_or(false);
        let top = f.int("top_logprobs", 0, i64::from(MAX_TOP_LOGPROBS))?;
        if top.is_some_and(|t| t > 0) && !lp {
            return Err(ApiError::invalid(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs': true",
            ));
        }
        (lp, top.unwrap_or(0) as u32)
    } else {
        match f.get("logprobs") {
            None | Some(Value::Bool(false)) => (false, 0),
            Some(v) => (
                true,
                int_value(v, "logprobs", 0, i64::from(MAX_TOP_LOGPROBS))? as u32,
            ),
        }
    };
    s.top_logprobs = top;
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP {
                return Err(ApiError::invalid(
                    "stop",
                    format!("at most {MAX_STOP} stop strings, got {}", a.len()),
                ));
            }
            let mut out = Vec::new();
            for (i, x) in a.iter().enumerate() {
                match x {
                    Value::String(x) => out.push(x.clone()),
                    other => {
                        return Err(ApiError::wrong_type(
                            &format!("stop[{i}]"),
                            "a string",
                            other,
                        ))
                    }
                }
            }
            out
        }
        Some(v) => {
            return Err(ApiError::wrong_type(
                "stop",
                "a string or an array of strings",
                v,
            ))
        }
    };
    let stop = stop.into_iter().filter(|x| !x.is_empty()).collect();
    let n = f.int("n", 1, MAX_CHOICES as i64)?.unwrap_or(1) as usize;
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => {
                return Err(ApiError::wrong_type(
                    "stream_options.include_usage",
                    "a boolean",
                    v,
                ))
            }
        },
        Some(v) => return Err(ApiError::wrong_type("stream_options", "an object", v)),
    };
    let mtp = f.bool("mtp")?;
    let ignore_eos = f.bool("ignore_eos")?.unwrap_or(false);
    s.validate(Some(vocab))
        .map_err(|e| ApiError::invalid(e.field, e.to_string()))?;
    Ok(GenParams {
        max_tokens: max_tokens.map(|m| m as usize),
        sampling: s,
        seed_given: seed.is_some(),
        stop,
        logprobs,
        stream,
        include_usage,
        mtp,
        ignore_eos,
        n,
    })
}

/// Text of a content value: a string, or a list of text parts (concatenated, as the Qwen
/// template does). `allow_null` for assistant turns that only carry tool calls.
fn content_text(v: Option<&Value>, param: &str, allow_null: bool) -> Result<Value, ApiError> {
    match v {
        None | Some(Value::Null) if allow_null => Ok(Value::String(String::new())),
        None => Err(ApiError::missing(param)),
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let pp = format!("{param}[{j}]");
                let Value::Object(o) = p else {
                    return Err(ApiError::wrong_type(&pp, "a content part object", p));
                };
                match o.get("type").and_then(Value::as_str) {
                    Some("text") | Some("input_text") => match o.get("text") {
                        Some(Value::String(t)) => text.push_str(t),
                        Some(other) => return Err(ApiError::wrong_type(&format!("{pp}.text"), "a string", other)),
                        None => return Err(ApiError::missing(&format!("{pp}.text"))),
                    },
                    Some(t) => {
                        return Err(ApiError::unsupported(format!("{pp}.type"), format!("content parts of type '{t}' are not supported (this model reads text only)")))
                    }
                    None => return Err(ApiError::missing(&format!("{pp}.type"))),
                }
            }
            Ok(Value::String(text))
        }
        Some(other) => Err(ApiError::wrong_type(
            param,
            "a string or an array of content parts",
            other,
        )),
    }
}

fn messages(f: &Fields) -> Result<Vec<Value>, ApiError> {
    let list = match f.get("messages") {
        None => return Err(ApiError::missing("messages")),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(ApiError::wrong_type("messages", "an array", v)),
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must contain at least one message",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let p = format!("messages[{i}]");
        let Value::Object(m) = m else {
            return Err(ApiError::wrong_type(&p, "an object", m));
        };
        let role = match m.get("role") {
            None | Some(Value::Null) => return Err(ApiError::missing(&format!("{p}.role"))),
            Some(Value::String(r)) => r.as_str(),
            Some(v) => return Err(ApiError::wrong_type(&format!("{p}.role"), "a string", v)),
        };
        let mut msg = Map::new();
        match role {
            "system" | "developer" | "user" | "tool" => {
                let role = if role == "developer" { "system" } else { role };
                msg.insert("role".into(), role.into());
                msg.insert(
                    "content".into(),
                    content_text(m.get("content"), &format!("{p}.content"), false)?,
                );
                if let Some(id) = m.get("tool_call_id").filter(|v| v.is_string()) {
                    msg.insert("tool_call_id".into(), id.clone());
                }
                if let Some(n) = m.get("name").filter(|v| v.is_string()) {
                    msg.insert("name".into(), n.clone());
                }
            }
            "assistant" => {
                msg.insert("role".into(), role.into());
                let calls = match m.get("tool_calls") {
                    None | Some(Value::Null) => None,
                    Some(Value::Array(c)) => Some(c),
                    Some(v) => {
                        return Err(ApiError::wrong_type(
                            &format!("{p}.tool_calls"),
                            "an array",
                            v,
                        ))
                    }
                };
                msg.insert(
                    "content".into(),
                    content_text(m.get("content"), &format!("{p}.content"), true)?,
                );
                let reasoning = m.get("reasoning_content").or_else(|| m.get("reasoning"));
                match reasoning {
                    None | Some(Value::Null) => {}
                    Some(Value::String(r)) => {
                        msg.insert("reasoning_content".into(), r.clone().into());
                    }
                    Some(v) => {
                        return Err(ApiError::wrong_type(
                            &format!("{p}.reasoning_content"),
                            "a string",
                            v,
                        ))
                    }
                }
                if let Some(calls) = calls {
                    let mut checked = Vec::new();
                    for (j, c) in calls.iter().enumerate() {
                        let cp = format!("{p}.tool_calls[{j}]");
                        let func = c
                            .get("function")
                            .ok_or_else(|| ApiError::missing(&format!("{cp}.function")))?;
                        let name = func
                            .get("name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| ApiError::missing(&format!("{cp}.function.name")))?;
                        let args = match func.get("arguments") {
                            None | Some(Value::Null) => Value::Object(Map::new()),
                            Some(Value::String(s)) if s.trim().is_empty() => {
                                Value::Object(Map::new())
                            }
                            Some(Value::String(s)) => {
                                serde_json::from_str::<Value>(s).map_err(|e| {
                                    ApiError::invalid(
                                        format!("{cp}.function.arguments"),
                                        format!("the arguments are not valid JSON: {e}"),
                                    )
                                })?
                            }
                            Some(v @ Value::Object(_)) => v.clone(),
                            Some(v) => {
                                return Err(ApiError::wrong_type(
                                    &format!("{cp}.function.arguments"),
                                    "a JSON string or an object",
                                    v,
                                ))
                            }
                        };
                        let mut call = serde_json::json!({"type": "function", "function": {"name": name, "arguments": args}});
                        if let Some(id) = c.get("id").filter(|v| v.is_string()) {
                            call["id"] = id.clone();
                        }
                        checked.push(call);
                    }
                    msg.insert("tool_calls".into(), Value::Array(checked));
                }
            }
            other => {
                return Err(ApiError::invalid(
                    format!("{p}.role"),
                    format!(
                    "unknown role '{other}' (expected system, developer, user, assistant or tool)"
                ),
                ))
            }
        }
        out.push(Value::Object(msg));
    }
    Ok(out)
}

fn tools(f: &Fields) -> Result<(Option<Vec<Value>>, bool), ApiError> {
    let list = match f.get("tools") {
        None => None,
        Some(Value::Array(a)) => Some(a),
        Some(v) => return Err(ApiError::wrong_type("tools", "an array", v)),
    };
    let mut names = Vec::new();
    let mut checked = Vec::new();
    for (i, t) in list.into_iter().flatten().enumerate() {
        let p = format!("tools[{i}]");
        let Value::Object(o) = t else {
            return Err(ApiError::wrong_type(&p, "an object", t));
        };
        match o.get("type") {
            Some(Value::String(s)) if s == "function" => {}
            None => return Err(ApiError::missing(&format!("{p}.type"))),
            Some(v) => {
                return Err(ApiError::unsupported(
                    format!("{p}.type"),
                    format!("only tools of type 'function' are supported, got {v}"),
                ))
            }
        }
        let func = match o.get("function") {
            Some(Value::Object(f)) => f,
            None => return Err(ApiError::missing(&format!("{p}.function"))),
            Some(v) => {
                return Err(ApiError::wrong_type(
                    &format!("{p}.function"),
                    "an object",
                    v,
                ))
            }
        };
        let name = match func.get("name") {
            Some(Value::String(n)) if !n.trim().is_empty() => n.clone(),
            Some(Value::String(_)) => {
                return Err(ApiError::invalid(
                    format!("{p}.function.name"),
                    "the function name is empty",
                ))
            }
            None => return Err(ApiError::missing(&format!("{p}.function.name"))),
            Some(v) => {
                return Err(ApiError::wrong_type(
                    &format!("{p}.function.name"),
                    "a string",
                    v,
                ))
            }
        };
        if let Some(d) = func
            .get("description")
            .filter(|v| !v.is_null() && !v.is_string())
        {
            return Err(ApiError::wrong_type(
                &format!("{p}.function.description"),
                "a string",
                d,
            ));
        }
        if let Some(ps) = func
            .get("parameters")
            .filter(|v| !v.is_null() && !v.is_object())
        {
            return Err(ApiError::wrong_type(
                &format!("{p}.function.parameters"),
                "a JSON schema object",
                ps,
            ));
        }
        names.push(name);
        checked.push(t.clone());
    }
    // tool_choice: "none" hides the tools; "auto" and "required" show them all; a named function
    // shows only that one. With "required" or a named function the reply is constrained to
    // tool calls (see `chat`).
    let choice = f.get("tool_choice");
    let mut parse = !checked.is_empty();
    match choice {
        None => {}
        Some(Value::String(c)) => match c.as_str() {
            "none" => {
                parse = false;
                checked.clear();
            }
            "auto" | "required" => {}
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!(
                    "unknown tool_choice '{other}' (expected none, auto, required or a function)"
                ),
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            let Some(name) = name else {
                return Err(ApiError::missing("tool_choice.function.name"));
            };
            let Some(k) = names.iter().position(|n| n == name) else {
                return Err(ApiError::invalid(
                    "tool_choice.function.name",
                    format!("the function '{name}' is not among the tools"),
                ));
            };
            let only = checked[k].clone();
            checked = vec![only];
        }
        Some(v) => {
            return Err(ApiError::wrong_type(
                "tool_choice",
                "a string or an object",
                v,
            ))
        }
    }
    Ok((
        if checked.is_empty() {
            None
        } else {
            Some(checked)
        },
        parse,
    ))
}

pub fn chat(body: &Map<String, Value>, vocab: u32) -> Result<ChatRequest, ApiError> {
    let f = Fields { obj: body };
    let model = model_field(&f)?;
    let messages = messages(&f)?;
    let (tools, parse_tools) = tools(&f)?;
    let kwargs = match f.get("chat_template_kwargs") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(v) => return Err(ApiError::wrong_type("chat_template_kwargs", "an object", v)),
    };
    if let Some(v) = kwargs
        .get("enable_thinking")
        .filter(|v| !v.is_null() && !v.is_boolean())
    {
        return Err(ApiError::wrong_type(
            "chat_template_kwargs.enable_thinking",
            "a boolean",
            v,
        ));
    }
    let mut format = response_format(&f)?;
    // tool_choice "required" or a named function: the reply is tool calls to the tools shown.
    let must_call = match f.get("tool_choice") {
        Some(Value::String(c)) => c == "required",
        Some(Value::Object(_)) => true,
        _ => false,
    };
    if let (true, Some(list)) = (must_call, &tools) {
        if format.is_some() {
            return Err(ApiError::unsupported(
                "response_format",
                "response_format together with tool_choice 'required' or a named function is not supported (the reply must be a tool call)",
            ));
        }
        let parallel = f.bool("parallel_tool_calls")?.unwrap_or(true);
        let g = tool_call_grammar(list, parallel)
            .map_err(|e| ApiError::invalid("tools", e.to_string()))?;
        format = Some((GrammarSpec::Lark(g), "tools"));
    }
    let gen = gen_params(&f, true, vocab)?;
    Ok(ChatRequest {
        model,
        messages,
        tools,
        parse_tools,
        kwargs,
        gen,
        format,
    })
}

/// `response_format`: `text` (None), `json_object`, `json_schema` (`json_schema.schema`, any JSON
/// value when absent) and two extensions, `regex` (`"regex": "..."`) and `grammar` (`"grammar":
/// "..."`, a Lark grammar).
fn response_format(f: &Fields) -> Result<Option<(GrammarSpec, &'static str)>, ApiError> {
    Ok(response_format_spec(f)?.map(|s| {
        let p = format_param(&s);
        (s, p)
    }))
}

fn response_format_spec(f: &Fields) -> Result<Option<GrammarSpec>, ApiError> {
    let o = match f.get("response_format") {
        None => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(v) => return Err(ApiError::wrong_type("response_format", "an object", v)),
    };
    let text_field = |name: &str| -> Result<String, ApiError> {
        let param = format!("response_format.{name}");
        match o.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(ApiError::invalid(param, format!("'{name}' is empty"))),
            None | Some(Value::Null) => Err(ApiError::missing(&param)),
            Some(v) => Err(ApiError::wrong_type(&param, "a string", v)),
        }
    };
    match o.get("type") {
        Some(Value::String(t)) => match t.as_str() {
            "text" => Ok(None),
            "json_object" => Ok(Some(GrammarSpec::JsonObject)),
            "json_schema" => {
                let js = match o.get("json_schema") {
                    Some(Value::Object(js)) => js,
                    None | Some(Value::Null) => {
                        return Err(ApiError::missing("response_format.json_schema"))
                    }
                    Some(v) => {
                        return Err(ApiError::wrong_type(
                            "response_format.json_schema",
                            "an object",
                            v,
                        ))
                    }
                };
                if let Some(v) = js.get("name").filter(|v| !v.is_null() && !v.is_string()) {
                    return Err(ApiError::wrong_type(
                        "response_format.json_schema.name",
                        "a string",
                        v,
                    ));
                }
                match js.get("schema") {
                    None | Some(Value::Null) => Ok(Some(GrammarSpec::JsonSchema(json!({})))),
                    Some(v @ (Value::Object(_) | Value::Bool(_))) => {
                        Ok(Some(GrammarSpec::JsonSchema(v.clone())))
                    }
                    Some(v) => Err(ApiError::wrong_type(
                        "response_format.json_schema.schema",
                        "an object",
                        v,
                    )),
                }
            }
            "regex" => Ok(Some(GrammarSpec::Regex(text_field("regex")?))),
            "grammar" => Ok(Some(GrammarSpec::Lark(text_field("grammar")?))),
            t => Err(ApiError::unsupported(
                "response_format.type",
                format!("response_format '{t}' is not supported; use 'text', 'json_object', 'json_schema', 'regex' or 'grammar'"),
            )),
        },
        None => Err(ApiError::missing("response_format.type")),
        Some(v) => Err(ApiError::wrong_type("response_format.type", "a string", v)),
    }
}

/// Where a grammar's compile error points: the schema, the regex or the grammar.
fn format_param(spec: &GrammarSpec) -> &'static str {
    match spec {
        GrammarSpec::JsonObject => "response_format",
        GrammarSpec::JsonSchema(_) => "response_format.json_schema.schema",
        GrammarSpec::Regex(_) => "response_format.regex",
        GrammarSpec::Lark(_) => "response_format.grammar",
    }
}

pub fn completion(body: &Map<String, Value>, vocab: u32) -> Result<CompletionRequest, ApiError> {
    let f = Fields { obj: body };
    let model = model_field(&f)?;
    let ids = |a: &[Value], param: &str| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                int_value(v, &format!("{param}[{i}]"), 0, i64::from(vocab) - 1).map(|x| x as u32)
            })
            .collect()
    };
    let prompt = match f.get("prompt") {
        None => return Err(ApiError::missing("prompt")),
        Some(Value::String(s)) => Prompt::Text(s.clone()),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::invalid("prompt", "the prompt is empty"))
        }
        Some(Value::Array(a)) => match &a[0] {
            Value::String(_) | Value::Array(_) if a.len() > 1 => {
                return Err(ApiError::unsupported(
                    "prompt",
                    "only one prompt per request is supported",
                ));
            }
            Value::String(s) => Prompt::Text(s.clone()),
            Value::Array(inner) => Prompt::Ids(ids(inner, "prompt[0]")?),
            Value::Number(_) => Prompt::Ids(ids(a, "prompt")?),
            v => {
                return Err(ApiError::wrong_type(
                    "prompt[0]",
                    "a string, a token id or an array of token ids",
                    v,
                ))
            }
        },
        Some(v) => {
            return Err(ApiError::wrong_type(
                "prompt",
                "a string, an array of strings or an array of token ids",
                v,
            ))
        }
    };
    if matches!(&prompt, Prompt::Text(s) if s.is_empty())
        || matches!(&prompt, Prompt::Ids(v) if v.is_empty())
    {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "'suffix' is not supported"));
    }
    let echo = f.bool("echo")?.unwrap_or(false);
    let gen = gen_params(&f, false, vocab)?;
    if let Some(b) = f.int("best_of", 1, i64::MAX)? {
        if b as usize != gen.n {
            return Err(ApiError::unsupported(
                "best_of",
                format!(
                    "only best_of = n is supported (every generated choice is returned), got best_of = {b} with n = {}",
                    gen.n
                ),
            ));
        }
    }
    if echo && gen.logprobs {
        return Err(ApiError::unsupported(
            "echo",
            "'echo' together with 'logprobs' (prompt logprobs) is not supported",
        ));
    }
    let format = response_format(&f)?;
    Ok(CompletionRequest {
        model,
        prompt,
        echo,
        gen,
        format,
    })
}
