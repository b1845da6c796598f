//! Chat templates: a checkpoint's Jinja `chat_template`, rendered with minijinja the way Hugging
//! Face `apply_chat_template` renders it with Jinja2 (trim_blocks, lstrip_blocks, loop controls,
//! Python string methods, `namespace()`, `raise_exception()`, a `tojson` that writes what Python's
//! `json.dumps(ensure_ascii=False)` writes), or the built-in Qwen3.6 template when the checkpoint
//! has none.

use std::path::Path;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error as MjError, ErrorKind};
use serde_json::{Map, Value as Json};

use super::{Result, TextError};

/// The built-in Qwen3.5 / Qwen3.6 chat template (written for this engine from the chat format:
/// ChatML, XML tool calls, think blocks, `enable_thinking`, `preserve_thinking`).
pub const BUILTIN_QWEN3_6: &str = include_str!("qwen3_6_template.jinja");

/// The name under which the built-in template reports itself as [`ChatTemplate::source`].
pub const BUILTIN_SOURCE: &str = "built-in Qwen3.6 template";

/// The special-token fields of tokenizer_config.json that Hugging Face passes to templates.
const SPECIAL_TOKEN_FIELDS: [&str; 6] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
];

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Names of the compiled templates: "default", and e.g. "tool_use" from a named-template list.
    names: Vec<String>,
    source: String,
    /// bos_token, eos_token, ... as strings, passed to the template.
    special_tokens: Map<String, Json>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("names", &self.names)
            .finish()
    }
}

fn template_err(source: &str, e: &MjError) -> TextError {
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    TextError::Template {
        source_name: source.to_string(),
        message,
    }
}

fn format_err(source_name: &str, message: impl std::fmt::Display) -> TextError {
    TextError::Format {
        source_name: source_name.to_string(),
        message: message.to_string(),
    }
}

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.add_function("raise_exception", raise_exception);
    env.add_filter("tojson", tojson);
    env
}

fn raise_exception(message: String) -> std::result::Result<Value, MjError> {
    Err(MjError::new(
        ErrorKind::InvalidOperation,
        format!("the template raised: {message}"),
    ))
}

impl ChatTemplate {
    /// Compiles one template; `source` names it in errors.
    pub fn new(template: &str, source: &str) -> Result<Self> {
        Self::from_named(&[("default".to_string(), template.to_string())], source)
    }

    /// Compiles a list of named templates (tokenizer_config.json may hold e.g. "default" and
    /// "tool_use"); "default" (or the first one) is used unless tools are given and a "tool_use"
    /// template exists.
    pub fn from_named(templates: &[(String, String)], source: &str) -> Result<Self> {
        if templates.is_empty() {
            return Err(TextError::Template {
                source_name: source.to_string(),
                message: "no template".to_string(),
            });
        }
        let mut env = new_environment();
        let mut names = Vec::new();
        for (name, text) in templates {
            env.add_template_owned(name.clone(), text.clone())
                .map_err(|e| template_err(source, &e))?;
            names.push(name.clone());
        }
        Ok(ChatTemplate {
            env,
            names,
            source: source.to_string(),
            special_tokens: Map::new(),
        })
    }

    /// The built-in Qwen3.6 template.
    pub fn builtin_qwen3_6() -> Self {
        let mut t =
            Self::new(BUILTIN_QWEN3_6, BUILTIN_SOURCE).expect("the built-in template compiles");
        t.special_tokens
            .insert("eos_token".into(), Json::from("<|im_end|>"));
        t.special_tokens
            .insert("pad_token".into(), Json::from("<|endoftext|>"));
        t
    }

    /// The chat template of a tokenizer_config.json text (`chat_template` as a string or as a list
    /// of `{name, template}`), with its special tokens; None when it has no `chat_template`.
    pub fn from_tokenizer_config(json: &str, source: &str) -> Result<Option<Self>> {
        let cfg: Json = serde_json::from_str(json)
            .map_err(|e| format_err(source, format!("not valid JSON: {e}")))?;
        let obj = cfg
            .as_object()
            .ok_or_else(|| format_err(source, "expected a JSON object"))?;
        let templates = match obj.get("chat_template") {
            None | Some(Json::Null) => return Ok(None),
            Some(Json::String(s)) => vec![("default".to_string(), s.clone())],
            Some(Json::Array(list)) => {
                let mut v = Vec::new();
                for (i, item) in list.iter().enumerate() {
                    let name = item.get("name").and_then(Json::as_str);
                    let text = item.get("template").and_then(Json::as_str);
                    match (name, text) {
                        (Some(n), Some(t)) => v.push((n.to_string(), t.to_string())),
                        _ => return Err(format_err(source, format!("chat_template[{i}]: expected {{\"name\": string, \"template\": string}}"))),
                    }
                }
                v
            }
            Some(_) => {
                return Err(format_err(
                    source,
                    "chat_template must be a string or a list of {name, template}",
                ))
            }
        };
        let mut t = Self::from_named(&templates, source)?;
        t.special_tokens = special_tokens_of(obj);
        Ok(Some(t))
    }

    /// The chat template of a checkpoint directory: `chat_template.jinja`, else the
    /// `chat_template` of `tokenizer_config.json`, else of `chat_template.json`, else the built-in
    /// Qwen3.6 template. Special tokens (bos_token, eos_token, ...) come from tokenizer_config.json.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let read = |name: &str| -> Result<Option<(String, String)>> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let shown = p.display().to_string();
            let text = std::fs::read_to_string(&p).map_err(|e| TextError::Io {
                path: shown.clone(),
                message: e.to_string(),
            })?;
            Ok(Some((text, shown)))
        };
        let config = read("tokenizer_config.json")?;
        let mut specials = Map::new();
        let mut from_config = None;
        if let Some((text, shown)) = &config {
            let cfg: Json = serde_json::from_str(text)
                .map_err(|e| format_err(shown, format!("not valid JSON: {e}")))?;
            if let Some(obj) = cfg.as_object() {
                specials = special_tokens_of(obj);
            }
            from_config = Self::from_tokenizer_config(text, shown)?;
        }
        let mut t = if let Some((text, shown)) = read("chat_template.jinja")? {
            Self::new(&text, &shown)?
        } else if let Some(t) = from_config {
            t
        } else if let Some((text, shown)) = read("chat_template.json")? {
            Self::from_tokenizer_config(&text, &shown)?.unwrap_or_else(Self::builtin_qwen3_6)
        } else {
            Self::builtin_qwen3_6()
        };
        if !specials.is_empty() {
            t.special_tokens = specials;
        }
        Ok(t)
    }

    /// Sets a variable such as `bos_token` or `eos_token` that the template sees.
    pub fn set_special_token(&mut self, name: &str, value: &str) {
        self.special_tokens
            .insert(name.to_string(), Json::from(value));
    }

    /// Where the template came from (a file path or [`BUILTIN_SOURCE`]).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether this is the built-in Qwen3.6 template.
    pub fn is_builtin(&self) -> bool {
        self.source == BUILTIN_SOURCE
    }

    /// Renders a conversation to the prompt text.
    ///
    /// - `messages`: OpenAI-style objects with `role` (system, user, assistant, tool), `content`
    ///   (a string, null, or a list of parts `{"type": "text", "text": ..}`, `{"type": "image"}`,
    ///   `{"type": "video"}`), and for assistants optional `reasoning_content` and `tool_calls`
    ///   (`[{"type": "function", "function": {"name": .., "arguments": ..}}]`; arguments given as a
    ///   JSON string are parsed into an object first, as OpenAI-compatible servers do).
    /// - `tools`: OpenAI function schemas (`{"type": "function", "function": {..}}`), or None.
    /// - `add_generation_prompt`: end with the opening of an assistant turn.
    /// - `kwargs`: extra template variables, e.g. `enable_thinking`, `preserve_thinking`.
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        kwargs: &Map<String, Json>,
    ) -> Result<String> {
        let messages = prepare_messages(messages)?;
        let mut ctx = self.special_tokens.clone();
        for (k, v) in kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("messages".into(), Json::Array(messages));
        ctx.insert(
            "tools".into(),
            tools.map_or(Json::Null, |t| Json::Array(t.to_vec())),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        let has_tools = tools.is_some_and(|t| !t.is_empty());
        let name = if has_tools && self.names.iter().any(|n| n == "tool_use") {
            "tool_use"
        } else if self.names.iter().any(|n| n == "default") {
            "default"
        } else {
            self.names[0].as_str()
        };
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| template_err(&self.source, &e))?;
        tmpl.render(Value::from(minijinja::value::Serde(Json::Object(ctx))))
            .map_err(|e| template_err(&self.source, &e))
    }

    /// [`render`](Self::render) with the arguments as one JSON object, as an OpenAI chat request
    /// carries them: `{"messages": [..], "tools": [..], "add_generation_prompt": bool,
    /// "chat_template_kwargs": {..}}` (tools and the last two optional; add_generation_prompt
    /// defaults to true).
    pub fn render_request(&self, request: &Json) -> Result<String> {
        let obj = request
            .as_object()
            .ok_or_else(|| TextError::Input("the request must be a JSON object".into()))?;
        let messages = obj
            .get("messages")
            .and_then(Json::as_array)
            .ok_or_else(|| TextError::Input("the request needs a 'messages' list".into()))?;
        let tools = match obj.get("tools") {
            None | Some(Json::Null) => None,
            Some(Json::Array(t)) => Some(t.as_slice()),
            Some(_) => return Err(TextError::Input("'tools' must be a list".into())),
        };
        let agp = match obj.get("add_generation_prompt") {
            None => true,
            Some(Json::Bool(b)) => *b,
            Some(_) => {
                return Err(TextError::Input(
                    "'add_generation_prompt' must be a boolean".into(),
                ))
            }
        };
        let empty = Map::new();
        let kwargs = match obj.get("chat_template_kwargs") {
            None | Some(Json::Null) => &empty,
            Some(Json::Object(m)) => m,
            Some(_) => {
                return Err(TextError::Input(
                    "'chat_template_kwargs' must be an object".into(),
                ))
            }
        };
        self.render(messages, tools, agp, kwargs)
    }
}

fn special_tokens_of(obj: &Map<String, Json>) -> Map<String, Json> {
    let mut m = Map::new();
    for field in SPECIAL_TOKEN_FIELDS {
        let v = match obj.get(field) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        };
        if let Some(v) = v {
            m.insert(field.to_string(), Json::String(v));
        }
    }
    m
}

/// Checks the messages' shape and parses tool-call arguments given as JSON strings.
fn prepare_messages(messages: &[Json]) -> Result<Vec<Json>> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Some(obj) = m.as_object() else {
            return Err(TextError::Input(format!("messages[{i}] is not an object")));
        };
        if !obj.get("role").is_some_and(Json::is_string) {
            return Err(TextError::Input(format!(
                "messages[{i}] has no string 'role'"
            )));
        }
        let mut obj = obj.clone();
        if let Some(calls) = obj.get_mut("tool_calls").and_then(Json::as_array_mut) {
            for (j, call) in calls.iter_mut().enumerate() {
                if call.get("function").is_some() {
                    if let Some(f) = call.get_mut("function") {
                        parse_arguments(f, i, j)?;
                    }
                } else {
                    parse_arguments(call, i, j)?;
                }
            }
        }
        out.push(Json::Object(obj));
    }
    Ok(out)
}

/// A tool call's `arguments` given as a JSON string becomes the JSON value it holds.
fn parse_arguments(func: &mut Json, i: usize, j: usize) -> Result<()> {
    if let Some(args) = func.get_mut("arguments") {
        if let Json::String(s) = args {
            let parsed: Json = if s.trim().is_empty() {
                Json::Object(Map::new())
            } else {
                serde_json::from_str(s).map_err(|e| {
                    TextError::Input(format!(
                        "messages[{i}].tool_calls[{j}]: arguments are not valid JSON: {e}"
                    ))
                })?
            };
            *args = parsed;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// tojson with Python json.dumps output

struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// `value | tojson(ensure_ascii=false, indent=none, separators=none, sort_keys=false)`, as Hugging
/// Face defines it for chat templates: Python's `json.dumps` with those arguments.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, MjError> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.is_integer() => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
        Some(v) => Some(v.as_str().map(str::to_string).ok_or_else(|| {
            MjError::new(
                ErrorKind::InvalidOperation,
                "tojson: indent must be an integer or a string",
            )
        })?),
    };
    let (item_sep, key_sep) = match separators {
        Some(s) if !s.is_none() && !s.is_undefined() => {
            let parts: Vec<Value> = s.try_iter()?.collect();
            match (
                parts.first().and_then(Value::as_str),
                parts.get(1).and_then(Value::as_str),
                parts.len(),
            ) {
                (Some(a), Some(b), 2) => (a.to_string(), b.to_string()),
                _ => {
                    return Err(MjError::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        _ => (
            if indent.is_some() { "," } else { ", " }.to_string(),
            ": ".to_string(),
        ),
    };
    let style = JsonStyle {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, &value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

fn newline_indent(out: &mut String, style: &JsonStyle, level: usize) {
    if let Some(ind) = &style.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(ind);
        }
    }
}

fn write_json(
    out: &mut String,
    v: &Value,
    style: &JsonStyle,
    level: usize,
) -> std::result::Result<(), MjError> {
    if level > 512 {
        return Err(MjError::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&i128::try_from(v.clone())?.to_string());
            } else {
                out.push_str(&py_float_repr(f64::try_from(v.clone())?));
            }
        }
        ValueKind::String => {
            write_json_str(out, v.as_str().unwrap_or_default(), style.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(out, style, level + 1);
                write_json(out, item, style, level + 1)?;
            }
            newline_indent(out, style, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let item = v.get_item(&key)?;
                let key = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_string(),
                    ValueKind::None => "null".to_string(),
                    ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_string(),
                    ValueKind::Number if key.is_integer() => {
                        i128::try_from(key.clone())?.to_string()
                    }
                    ValueKind::Number => py_float_repr(f64::try_from(key.clone())?),
                    k => {
                        return Err(MjError::new(
                            ErrorKind::InvalidOperation,
                            format!("tojson: keys must be str, int, float, bool or None, not {k}"),
                        ))
                    }
                };
                entries.push((key, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline_indent(out, style, level + 1);
                write_json_str(out, k, style.ensure_ascii);
                out.push_str(&style.key_sep);
                write_json(out, item, style, level + 1)?;
            }
            newline_indent(out, style, level);
            out.push('}');
        }
        k => {
            return Err(MjError::new(
                ErrorKind::InvalidOperation,
                format!("tojson: a value of type {k} is not JSON serializable"),
            ))
        }
    }
    Ok(())
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04x}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (what `json.dumps` writes): the shortest round-trip digits, in fixed
/// notation for exponents -4..16 and as `d.ddde+XX` otherwise.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{:e}", f.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let s = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                format!("{}{}.0", digits, "0".repeat(int_len - digits.len()))
            } else {
                format!("{}.{}", &digits[..int_len], &digits[int_len..])
            }
        };
        format!("{sign}{s}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        for (f, s) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1.2345e15, "1234500000000000.0"),
            (123.456, "123.456"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e300, "-2.5e+300"),
        ] {
            assert_eq!(py_float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let env = new_environment();
        let v = serde_json::json!({"b": [1, 2.5, true, null], "a": "é\"\n\u{1}<>&'", "c": {}});
        let r = env
            .render_str(
                "{{ v | tojson }}",
                minijinja::context! { v => Value::from(minijinja::value::Serde(&v)) },
            )
            .unwrap();
        assert_eq!(
            r,
            r#"{"b": [1, 2.5, true, null], "a": "é\"\n\u0001<>&'", "c": {}}"#
        );
        let r = env
            .render_str(
                "{{ v | tojson(indent=2, sort_keys=true) }}",
                minijinja::context! { v => Value::from(minijinja::value::Serde(&v)) },
            )
            .unwrap();
        assert_eq!(r, "{\n  \"a\": \"é\\\"\\n\\u0001<>&'\",\n  \"b\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"c\": {}\n}");
    }
}
