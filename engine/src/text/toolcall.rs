//! Incremental parser for Qwen3.5/3.6 tool calls (the "qwen3_coder" XML format):
//!
//! ```text
//! <tool_call>
//! <function=NAME>
//! <parameter=KEY>
//! VALUE
//! </parameter>
//! ...
//! </function>
//! </tool_call>
//! ```
//!
//! It works on text, so the markers may arrive as single special tokens or as plain text split at
//! any byte. Text outside calls is content; text that could still be the start of a marker is held
//! back until it is decided. Values are typed by the tool's JSON schema like mlx-lm's
//! `qwen3_coder` parser: strings verbatim, numbers / booleans / objects / arrays parsed, "null" →
//! null; what does not parse stays a string. One leading and one trailing newline of each value
//! are stripped. A call that never terminates or has no `<function=NAME>` header is returned as
//! content text, counted in [`ToolCallParser::malformed`]; no text is lost.
//!
//! Leniency beyond mlx-lm: a missing `</parameter>` ends the value at the next `<parameter=` or
//! `</function>`; a missing `</function>` is accepted; a `<tool_call>` whose body is Hermes-style
//! JSON (`{"name": …, "arguments": {…}}`) is accepted; `anyOf`/`oneOf`/type-array schemas use
//! their first non-null type.

use serde_json::{Map, Value};

pub const TOOL_CALL_START: &str = "<tool_call>";
pub const TOOL_CALL_END: &str = "</tool_call>";
pub const FUNCTION_START: &str = "<function=";
pub const FUNCTION_END: &str = "</function>";
pub const PARAMETER_START: &str = "<parameter=";
pub const PARAMETER_END: &str = "</parameter>";

/// A function name longer than this (no `>` after `<function=`) marks the call malformed.
const MAX_NAME_LEN: usize = 256;

/// One parsed call. `arguments` is a JSON object in the order the model wrote the parameters.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as a JSON value (always an object for calls produced by this parser).
    pub fn arguments_value(&self) -> Value {
        serde_json::from_str(&self.arguments).unwrap_or(Value::Null)
    }
}

/// Parameter types per function, from OpenAI-style tool definitions.
#[derive(Clone, Debug, Default)]
pub struct ToolSchemas {
    /// (function name, [(parameter name, lower-case type name)]).
    tools: Vec<(String, Vec<(String, String)>)>,
}

impl ToolSchemas {
    /// No schemas: every value stays a string (except "null").
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads `[{"type": "function", "function": {"name", "parameters": {"properties"}}}, …]`;
    /// bare `{"name", "parameters"}` entries and a single object are accepted too. Entries that do
    /// not have this shape are skipped.
    pub fn from_json(tools: &Value) -> Self {
        let mut out = Self::default();
        let list: Vec<&Value> = match tools {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![tools],
            _ => Vec::new(),
        };
        for tool in list {
            let func = tool
                .get("function")
                .filter(|f| f.is_object())
                .unwrap_or(tool);
            let Some(name) = func.get("name").and_then(Value::as_str) else {
                continue;
            };
            let mut params = Vec::new();
            if let Some(props) = func
                .get("parameters")
                .and_then(|p| p.get("properties"))
                .and_then(Value::as_object)
            {
                for (key, prop) in props {
                    params.push((key.clone(), schema_type(prop)));
                }
            }
            out.tools.push((name.to_string(), params));
        }
        out
    }

    /// The type of `param` of `function`; `None` when either is unknown.
    pub fn param_type(&self, function: &str, param: &str) -> Option<&str> {
        let (_, params) = self.tools.iter().find(|(n, _)| n == function)?;
        params
            .iter()
            .find(|(k, _)| k == param)
            .map(|(_, t)| t.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// The type name a property schema declares (lower case). No type → "string" (as mlx-lm).
fn schema_type(prop: &Value) -> String {
    fn first_non_null(types: &[Value]) -> Option<String> {
        types
            .iter()
            .filter_map(Value::as_str)
            .map(|s| s.trim().to_lowercase())
            .find(|s| s != "null")
    }
    match prop.get("type") {
        Some(Value::String(s)) => s.trim().to_lowercase(),
        Some(Value::Array(a)) => first_non_null(a).unwrap_or_else(|| "string".into()),
        Some(other) => other.to_string().to_lowercase(),
        None => {
            for key in ["anyOf", "oneOf"] {
                if let Some(variants) = prop.get(key).and_then(Value::as_array) {
                    let types: Vec<Value> = variants
                        .iter()
                        .filter_map(|v| v.get("type").cloned())
                        .collect();
                    if let Some(t) = first_non_null(&types) {
                        return t;
                    }
                }
            }
            "string".into()
        }
    }
}

/// Converts one raw parameter value (newlines already stripped) by its schema type; `ty` is
/// `None` for a parameter the schema does not know. Never fails: what does not parse stays a
/// string.
pub fn convert_param(raw: &str, ty: Option<&str>) -> Value {
    let t = raw.trim();
    if t.eq_ignore_ascii_case("null") {
        return Value::Null;
    }
    let Some(ty) = ty else {
        return Value::String(raw.to_string());
    };
    let keep = || Value::String(raw.to_string());
    match ty {
        "string" | "str" | "text" | "varchar" | "char" | "enum" => keep(),
        _ if ["int", "uint", "long", "short", "unsigned"]
            .iter()
            .any(|p| ty.starts_with(p)) =>
        {
            if let Ok(v) = t.parse::<i64>() {
                Value::from(v)
            } else if let Ok(v) = t.parse::<u64>() {
                Value::from(v)
            } else {
                keep()
            }
        }
        _ if ty.starts_with("num") || ty.starts_with("float") || ty.starts_with("double") => {
            match t.parse::<f64>() {
                Ok(v) if v.is_finite() => {
                    if v.fract() == 0.0 && v.abs() < 9.0e15 {
                        Value::from(v as i64)
                    } else {
                        serde_json::Number::from_f64(v)
                            .map(Value::Number)
                            .unwrap_or_else(keep)
                    }
                }
                _ => keep(),
            }
        }
        "boolean" | "bool" | "binary" => {
            if t.eq_ignore_ascii_case("true") {
                Value::Bool(true)
            } else if t.eq_ignore_ascii_case("false") {
                Value::Bool(false)
            } else {
                keep()
            }
        }
        _ => serde_json::from_str::<Value>(t).unwrap_or_else(|_| keep()),
    }
}

/// What the parser reports while text streams in.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolEvent {
    /// Text outside tool calls (also the raw text of a malformed call).
    Content(String),
    /// A call's `<function=NAME>` header is complete.
    Start { index: usize, name: String },
    /// The call is complete; `call.arguments` is final.
    End { index: usize, call: ToolCall },
    /// A started call turned out malformed (it never terminated); its raw text follows as
    /// [`ToolEvent::Content`] and its index is given to the next call.
    Invalid { index: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `<tool_call>` … `</tool_call>`.
    Wrapped,
    /// `<function=` … `</function>` without the wrapper.
    Bare,
}

impl Kind {
    fn open(self) -> &'static str {
        match self {
            Kind::Wrapped => TOOL_CALL_START,
            Kind::Bare => FUNCTION_START,
        }
    }
    fn close(self) -> &'static str {
        match self {
            Kind::Wrapped => TOOL_CALL_END,
            Kind::Bare => FUNCTION_END,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Header {
    /// `<function=` not seen yet: search from this byte of the call text.
    Searching(usize),
    /// `<function=` at this byte, `>` not seen yet.
    Open(usize),
    Started(usize),
    Bad,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Content,
    Call {
        kind: Kind,
        scan_from: usize,
        header: Header,
    },
}

/// The incremental tool-call parser. Feed text with [`push`](Self::push), end with
/// [`finish`](Self::finish).
#[derive(Clone, Debug)]
pub struct ToolCallParser {
    schemas: ToolSchemas,
    bare: bool,
    mode: Mode,
    /// Content mode: held-back text that may start a marker. Call mode: the call's raw text.
    buf: String,
    next_index: usize,
    calls: Vec<ToolCall>,
    malformed: usize,
}

impl ToolCallParser {
    /// `bare_functions`: also accept a `<function=…>…</function>` block without the
    /// `<tool_call>` wrapper (mlx-lm does).
    pub fn new(schemas: ToolSchemas, bare_functions: bool) -> Self {
        Self {
            schemas,
            bare: bare_functions,
            mode: Mode::Content,
            buf: String::new(),
            next_index: 0,
            calls: Vec::new(),
            malformed: 0,
        }
    }

    /// Whether a call is open (its start marker seen, its end not yet).
    pub fn in_call(&self) -> bool {
        matches!(self.mode, Mode::Call { .. })
    }

    /// The completed calls so far.
    pub fn calls(&self) -> &[ToolCall] {
        &self.calls
    }

    /// How many calls were returned as content because they were malformed or unterminated.
    pub fn malformed(&self) -> usize {
        self.malformed
    }

    /// Feeds more text; returns what became known.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        self.buf.push_str(text);
        loop {
            match self.mode {
                Mode::Content => match self.find_open() {
                    Some((p, kind)) => {
                        let before: String = self.buf.drain(..p).collect();
                        push_content(&mut out, before);
                        self.mode = Mode::Call {
                            kind,
                            scan_from: kind.open().len(),
                            header: Header::Searching(0),
                        };
                    }
                    None => {
                        let emit = self.buf.len() - self.hold_len();
                        let text: String = self.buf.drain(..emit).collect();
                        push_content(&mut out, text);
                        break;
                    }
                },
                Mode::Call {
                    kind,
                    scan_from,
                    header,
                } => {
                    let close = kind.close();
                    let found = self.buf[scan_from..].find(close).map(|q| scan_from + q);
                    let limit = found.unwrap_or(self.buf.len());
                    let header = self.advance_header(header, limit, found.is_some(), &mut out);
                    match found {
                        Some(q) => {
                            let raw: String = self.buf.drain(..q + close.len()).collect();
                            self.mode = Mode::Content;
                            self.complete(kind, &raw, header, &mut out);
                        }
                        None => {
                            let from = floor_boundary(
                                &self.buf,
                                self.buf.len().saturating_sub(close.len() - 1),
                            )
                            .max(scan_from);
                            self.mode = Mode::Call {
                                kind,
                                scan_from: from,
                                header,
                            };
                            break;
                        }
                    }
                }
            }
        }
        out
    }

    /// Ends the text: held-back text becomes content; an open call is malformed and its raw text
    /// becomes content.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        if let Mode::Call { header, .. } = self.mode {
            if let Header::Started(index) = header {
                out.push(ToolEvent::Invalid { index });
                self.next_index = index;
            }
            self.malformed += 1;
        }
        self.mode = Mode::Content;
        let rest = std::mem::take(&mut self.buf);
        push_content(&mut out, rest);
        out
    }

    /// Earliest start marker in the buffer.
    fn find_open(&self) -> Option<(usize, Kind)> {
        let wrapped = self.buf.find(TOOL_CALL_START).map(|p| (p, Kind::Wrapped));
        let bare = if self.bare {
            self.buf.find(FUNCTION_START).map(|p| (p, Kind::Bare))
        } else {
            None
        };
        match (wrapped, bare) {
            (Some(w), Some(b)) => Some(if b.0 < w.0 { b } else { w }),
            (w, b) => w.or(b),
        }
    }

    /// Length of the longest suffix of the buffer that is a proper prefix of a start marker.
    fn hold_len(&self) -> usize {
        let b = self.buf.as_bytes();
        let mut best = 0;
        let markers: &[&str] = if self.bare {
            &[TOOL_CALL_START, FUNCTION_START]
        } else {
            &[TOOL_CALL_START]
        };
        for m in markers {
            let m = m.as_bytes();
            for k in (best + 1..m.len()).rev() {
                if b.ends_with(&m[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }

    /// Looks for the `<function=NAME>` header in `buf[..limit]`; emits `Start` when it is
    /// complete and valid.
    fn advance_header(
        &mut self,
        header: Header,
        limit: usize,
        complete: bool,
        out: &mut Vec<ToolEvent>,
    ) -> Header {
        let region = &self.buf[..limit.min(self.buf.len())];
        let open_at = match header {
            Header::Searching(from) => {
                match region[floor_boundary(region, from)..].find(FUNCTION_START) {
                    Some(f) => floor_boundary(region, from) + f,
                    None => {
                        let from = floor_boundary(
                            region,
                            region.len().saturating_sub(FUNCTION_START.len() - 1),
                        )
                        .max(from);
                        return Header::Searching(from);
                    }
                }
            }
            Header::Open(at) => at,
            done => return done,
        };
        let name_from = open_at + FUNCTION_START.len();
        let Some(after) = region.get(name_from..) else {
            return Header::Open(open_at);
        };
        match after.find('>') {
            Some(g) => match valid_name(&region[name_from..name_from + g]) {
                Some(name) => {
                    let index = self.next_index;
                    self.next_index += 1;
                    out.push(ToolEvent::Start {
                        index,
                        name: name.to_string(),
                    });
                    Header::Started(index)
                }
                None => Header::Bad,
            },
            None if complete || region.len() - name_from > MAX_NAME_LEN => Header::Bad,
            None => Header::Open(open_at),
        }
    }

    /// A call's end marker arrived: parse it or return it as content.
    fn complete(&mut self, kind: Kind, raw: &str, header: Header, out: &mut Vec<ToolEvent>) {
        let body = match kind {
            Kind::Wrapped => &raw[TOOL_CALL_START.len()..raw.len() - TOOL_CALL_END.len()],
            Kind::Bare => raw,
        };
        let parsed = match header {
            Header::Started(index) => parse_function(body, &self.schemas).map(|c| (index, c)),
            Header::Searching(_) if kind == Kind::Wrapped => parse_hermes(body).map(|c| {
                let index = self.next_index;
                self.next_index += 1;
                out.push(ToolEvent::Start {
                    index,
                    name: c.name.clone(),
                });
                (index, c)
            }),
            _ => None,
        };
        match parsed {
            Some((index, call)) => {
                self.calls.push(call.clone());
                out.push(ToolEvent::End { index, call });
            }
            None => {
                if let Header::Started(index) = header {
                    out.push(ToolEvent::Invalid { index });
                    self.next_index = index;
                }
                self.malformed += 1;
                push_content(out, raw.to_string());
            }
        }
    }
}

fn push_content(out: &mut Vec<ToolEvent>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(ToolEvent::Content(last)) = out.last_mut() {
        last.push_str(&text);
    } else {
        out.push(ToolEvent::Content(text));
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn valid_name(raw: &str) -> Option<&str> {
    let name = raw.trim();
    (!name.is_empty() && !name.contains(['<', '\n', '\r'])).then_some(name)
}

/// Parses `…<function=NAME>…<parameter=K>\nV\n</parameter>…</function>…`.
fn parse_function(body: &str, schemas: &ToolSchemas) -> Option<ToolCall> {
    let f = body.find(FUNCTION_START)? + FUNCTION_START.len();
    let g = body[f..].find('>')?;
    let name = valid_name(&body[f..f + g])?;
    let params_from = f + g + 1;
    let params_to = body[params_from..]
        .rfind(FUNCTION_END)
        .map_or(body.len(), |e| params_from + e);
    let region = &body[params_from..params_to];

    let mut args = Map::new();
    let mut pos = 0;
    while let Some(s) = region[pos..].find(PARAMETER_START) {
        let key_from = pos + s + PARAMETER_START.len();
        let Some(g) = region[key_from..].find('>') else {
            break;
        };
        let key = region[key_from..key_from + g].trim();
        let value_from = key_from + g + 1;
        let rest = &region[value_from..];
        let close = rest.find(PARAMETER_END);
        let next_open = rest.find(PARAMETER_START);
        let (value_len, next) = match (close, next_open) {
            (Some(c), Some(o)) if o < c => (o, o),
            (Some(c), _) => (c, c + PARAMETER_END.len()),
            (None, Some(o)) => (o, o),
            (None, None) => (rest.len(), rest.len()),
        };
        let mut value = &rest[..value_len];
        value = value.strip_prefix('\n').unwrap_or(value);
        value = value.strip_suffix('\n').unwrap_or(value);
        if !key.is_empty() {
            args.insert(
                key.to_string(),
                convert_param(value, schemas.param_type(name, key)),
            );
        }
        pos = value_from + next;
    }
    Some(ToolCall {
        name: name.to_string(),
        arguments: Value::Object(args).to_string(),
    })
}

/// Parses a Hermes-style JSON body `{"name": …, "arguments": {…} | "…"}`.
fn parse_hermes(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let obj = v.as_object()?;
    let name = valid_name(obj.get("name")?.as_str()?)?;
    let args = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(s)) => serde_json::from_str::<Map<String, Value>>(s).ok()?,
        Some(_) => return None,
    };
    Some(ToolCall {
        name: name.to_string(),
        arguments: Value::Object(args).to_string(),
    })
}
