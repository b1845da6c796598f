//! Structured output: JSON schemas, JSON objects, Lark grammars and regular expressions as
//! [`TokenConstraint`]s, compiled against this model's vocabulary by `llguidance` (the
//! constrained-decoding library behind several inference servers) with the token trie built from
//! [`Tokenizer::token_bytes`].
//!
//! [`GrammarEnv`] is built once per tokenizer (its token trie and the parser factory take a
//! moment for a large vocabulary); each request compiles its grammar with it and gets a
//! [`Grammar`], which keeps the parser state of one output.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::decode::constrain::{Allowed, TokenConstraint};
use crate::text::Tokenizer;

/// The model's tokenizer as llguidance sees it: the trie of every id's bytes (special tokens as
/// `0xFF` + their text, so no grammar produces them as text) and the real tokenizer for text.
struct Env {
    trie: TokTrie,
    tok: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tok
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        true
    }
}

/// Whitespace allowed between two JSON tokens unless the schema says otherwise (its
/// `x-guidance` object): one space, or a line break and up to 20 spaces or tabs of indentation.
/// Compact and pretty-printed JSON both fit, and a model cannot loop on whitespace forever (with
/// any run of whitespace allowed, weak models fill their budget with it).
pub const JSON_WHITESPACE: &str = r"[\x20]|\r?\n[\x20\x09]{0,20}";

/// A schema with the default JSON options added where it sets none.
fn with_json_defaults(schema: Value) -> Value {
    match schema {
        Value::Object(mut o) => {
            if !o.contains_key("x-guidance") {
                o.insert(
                    "x-guidance".into(),
                    serde_json::json!({"whitespace_pattern": JSON_WHITESPACE}),
                );
            }
            Value::Object(o)
        }
        // `true`: any value; `false`: none (an error at compile time).
        Value::Bool(true) => with_json_defaults(serde_json::json!({})),
        other => other,
    }
}

/// What a grammar request asks for.
#[derive(Clone, Debug)]
pub enum GrammarSpec {
    /// Any JSON object.
    JsonObject,
    /// A value valid under this JSON schema (llguidance's `x-guidance` options in the schema are
    /// honoured, e.g. `{"whitespace_flexible": false}` for compact output).
    JsonSchema(Value),
    /// A Lark grammar (llguidance's dialect).
    Lark(String),
    /// A regular expression the whole output matches.
    Regex(String),
}

/// A grammar that does not compile (its message on one line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

fn one_line(e: impl std::fmt::Display) -> GrammarError {
    let text = e.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    GrammarError(lines.join("; "))
}

/// The vocabulary and parser factory shared by every grammar of one model.
pub struct GrammarEnv {
    factory: ParserFactory,
    /// Ids that end generation (EOS): allowed wherever the grammar may end.
    eos: Vec<u32>,
    /// Words of a mask over the model's vocabulary.
    words: usize,
    /// Ids of the tokenizer's vocabulary (ids past it, up to the model's vocabulary, are never
    /// allowed).
    n_tokens: usize,
}

impl GrammarEnv {
    /// Builds the token trie of `tok` for a model of `model_vocab` ids whose generation ends at
    /// `eos` (at least one id).
    pub fn new(
        tok: Arc<Tokenizer>,
        model_vocab: usize,
        eos: &[u32],
    ) -> Result<GrammarEnv, GrammarError> {
        let Some(&first_eos) = eos.first() else {
            return Err(GrammarError("no end-of-sequence id for the grammar".into()));
        };
        let n_tokens = tok.id_bound().min(model_vocab);
        let words: Vec<Vec<u8>> = (0..n_tokens as u32)
            .map(|id| {
                let bytes = tok.token_bytes(id).unwrap_or_default();
                if tok.is_special(id) || eos.contains(&id) {
                    let mut b = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    b.extend_from_slice(&bytes);
                    b
                } else {
                    bytes
                }
            })
            .collect();
        let info = TokRxInfo::new(n_tokens as u32, first_eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env { trie, tok });
        let mut factory = ParserFactory::new_simple(&env).map_err(one_line)?;
        factory.quiet();
        Ok(GrammarEnv {
            factory,
            eos: eos.to_vec(),
            words: model_vocab.div_ceil(32),
            n_tokens,
        })
    }

    /// Compiles `spec` for one output.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Grammar, GrammarError> {
        let top = match spec {
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(with_json_defaults(
                serde_json::json!({"type": "object"}),
            )),
            GrammarSpec::JsonSchema(s) => {
                TopLevelGrammar::from_json_schema(with_json_defaults(s.clone()))
            }
            GrammarSpec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            GrammarSpec::Regex(r) => TopLevelGrammar::from_regex(r),
        };
        let parser = self.factory.create_parser(top).map_err(one_line)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(one_line(e));
        }
        Ok(Grammar {
            matcher,
            eos: self.eos.clone(),
            words: self.words,
            n_tokens: self.n_tokens,
            eos_id: self.factory.tok_env().tok_trie().eos_token(),
        })
    }

    /// Words of a mask over the model's vocabulary.
    pub fn mask_words(&self) -> usize {
        self.words
    }
}

/// One output's grammar state.
pub struct Grammar {
    matcher: Matcher,
    eos: Vec<u32>,
    words: usize,
    n_tokens: usize,
    eos_id: TokenId,
}

impl Grammar {
    fn err(&self, what: &str) -> String {
        format!(
            "{what}: {}",
            self.matcher
                .get_error()
                .unwrap_or_else(|| "the grammar stopped".into())
        )
    }
}

impl TokenConstraint for Grammar {
    fn allowed(&mut self, mask: &mut [u32]) -> Result<Allowed, String> {
        if self.matcher.is_stopped() {
            return match self.matcher.get_error() {
                Some(e) => Err(e),
                None => Ok(Allowed::End),
            };
        }
        let v = self
            .matcher
            .compute_mask()
            .map_err(|e| format!("{e} ({})", self.err("token mask")))?;
        let n = mask.len().min(self.words);
        let src = v.as_slice();
        for (i, w) in mask[..n].iter_mut().enumerate() {
            *w = src.get(i).copied().unwrap_or(0);
        }
        // Ids past the tokenizer's vocabulary are never allowed.
        for id in self.n_tokens..n * 32 {
            mask[id / 32] &= !(1 << (id % 32));
        }
        // Where EOS is allowed, every end-of-sequence id is.
        if v.is_allowed(self.eos_id) {
            for &e in &self.eos {
                if let Some(w) = mask.get_mut(e as usize / 32) {
                    *w |= 1 << (e % 32);
                }
            }
        }
        Ok(Allowed::Mask)
    }

    fn commit(&mut self, id: u32) -> Result<(), String> {
        self.matcher
            .consume_token(id)
            .map_err(|e| format!("token {id} does not fit the grammar: {e}"))
    }

    fn lookahead(&self) -> bool {
        true
    }

    fn peek(&mut self, id: u32, mask: &mut [u32]) -> Result<Option<Allowed>, String> {
        // The matcher's errors are final, so the token is checked before it is consumed.
        let fits = !self.matcher.is_stopped()
            && self
                .matcher
                .validate_tokens(&[id])
                .map_err(|e| format!("{e} ({})", self.err("look-ahead")))?
                == 1;
        if !fits {
            return Err(format!("token {id} does not fit the grammar here"));
        }
        self.commit(id)?;
        let r = self.allowed(mask);
        self.matcher
            .rollback(1)
            .map_err(|e| format!("{e} ({})", self.err("look-ahead rollback")))?;
        r.map(Some)
    }
}

/// A grammar that starts after the model's reasoning: while the output is inside a
/// `<think>` … `</think>` block any token may come; once the block's end id is generated (or
/// from the start when the prompt leaves no block open) the grammar constrains the reply.
pub struct AfterReasoning {
    pub grammar: Grammar,
    /// The id that ends a reasoning block.
    pub think_end: Option<u32>,
    /// The output starts inside a reasoning block.
    pub in_reasoning: bool,
}

impl AfterReasoning {
    /// `prompt` decides whether the output starts inside a reasoning block: the last of
    /// `think = (start, end)` in it is the start id.
    pub fn new(grammar: Grammar, think: Option<(u32, u32)>, prompt: &[u32]) -> AfterReasoning {
        let in_reasoning = think.is_some_and(|(s, e)| {
            prompt
                .iter()
                .rev()
                .find(|&&t| t == s || t == e)
                .is_some_and(|&t| t == s)
        });
        AfterReasoning {
            grammar,
            think_end: think.map(|t| t.1),
            in_reasoning,
        }
    }
}

impl TokenConstraint for AfterReasoning {
    fn allowed(&mut self, mask: &mut [u32]) -> Result<Allowed, String> {
        if self.in_reasoning {
            return Ok(Allowed::Any);
        }
        self.grammar.allowed(mask)
    }

    fn commit(&mut self, id: u32) -> Result<(), String> {
        if self.in_reasoning {
            if Some(id) == self.think_end {
                self.in_reasoning = false;
            }
            return Ok(());
        }
        self.grammar.commit(id)
    }

    fn lookahead(&self) -> bool {
        true
    }

    fn peek(&mut self, id: u32, mask: &mut [u32]) -> Result<Option<Allowed>, String> {
        if self.in_reasoning {
            // The block's end starts the grammar (nothing consumed yet); any other id keeps
            // the output inside the block.
            if Some(id) == self.think_end {
                return self.grammar.allowed(mask).map(Some);
            }
            return Ok(Some(Allowed::Any));
        }
        self.grammar.peek(id, mask)
    }
}

/// A Lark grammar (llguidance's dialect) whose sentences are one or more tool calls in the Qwen
/// XML format (spec §9) to the functions of `tools` (OpenAI tool objects `{"type": "function",
/// "function": {"name", "parameters"}}`), calls separated by a line break (exactly one call
/// unless `parallel`), optionally after leading whitespace. Each call names one of the functions and gives its parameters in the
/// order of the schema's `properties`, the `required` ones always and the others optionally.
/// Values follow the parameter's schema: strings verbatim (one of an `enum`'s values, or any text
/// up to `\n</parameter>`), other types as JSON valid under the parameter's schema. A function
/// without `properties` takes any parameter names with text values.
pub fn tool_call_grammar(tools: &[Value], parallel: bool) -> Result<String, GrammarError> {
    let lit = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut rules = Vec::new();
    let mut calls = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let f = t.get("function").unwrap_or(t);
        let Some(name) = f.get("name").and_then(Value::as_str) else {
            return Err(GrammarError(format!("tool {i} has no function name")));
        };
        let params = f.get("parameters");
        let props = params
            .and_then(|p| p.get("properties"))
            .and_then(Value::as_object);
        let required: Vec<&str> = params
            .and_then(|p| p.get("required"))
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut body = Vec::new();
        match props {
            Some(props) => {
                for (j, (pname, schema)) in props.iter().enumerate() {
                    let rule = format!("p_{i}_{j}");
                    let value = match param_value(schema) {
                        ParamValue::Text => {
                            rules.push(format!(
                                "v_{i}_{j}[suffix=\"\\n</parameter>\\n\"]: /(.|\\n)*/"
                            ));
                            format!("v_{i}_{j}")
                        }
                        ParamValue::Alternatives(vals) => {
                            let alts: Vec<String> = vals.iter().map(|v| lit(v)).collect();
                            format!("({}) \"\\n</parameter>\\n\"", alts.join(" | "))
                        }
                        ParamValue::Json(s) => {
                            let schema = serde_json::to_string(&with_json_defaults(s))
                                .map_err(|e| GrammarError(e.to_string()))?;
                            format!("%json {schema} \"\\n</parameter>\\n\"")
                        }
                    };
                    rules.push(format!(
                        "{rule}: {} {value}",
                        lit(&format!("<parameter={pname}>\n"))
                    ));
                    body.push(if required.contains(&pname.as_str()) {
                        rule
                    } else {
                        format!("{rule}?")
                    });
                }
            }
            None => {
                rules.push(format!("pn_{i}: /[A-Za-z_][A-Za-z0-9_.-]*/"));
                rules.push(format!("pv_{i}[suffix=\"\\n</parameter>\\n\"]: /(.|\\n)*/"));
                rules.push(format!("pany_{i}: \"<parameter=\" pn_{i} \">\\n\" pv_{i}"));
                body.push(format!("pany_{i}*"));
            }
        }
        rules.push(format!(
            "call_{i}: {} {} \"</function>\\n</tool_call>\"",
            lit(&format!("<tool_call>\n<function={name}>\n")),
            body.join(" ")
        ));
        calls.push(format!("call_{i}"));
    }
    if calls.is_empty() {
        return Err(GrammarError("no tools to call".into()));
    }
    let mut g = String::from(if parallel {
        "start: /[ \\n]*/ call (\"\\n\" call)*\n"
    } else {
        "start: /[ \\n]*/ call\n"
    });
    g.push_str(&format!("call: {}\n", calls.join(" | ")));
    for r in rules {
        g.push_str(&r);
        g.push('\n');
    }
    Ok(g)
}

enum ParamValue {
    /// Verbatim text up to the closing tag.
    Text,
    /// One of these strings, verbatim.
    Alternatives(Vec<String>),
    /// JSON under this schema.
    Json(Value),
}

/// How a parameter's value is written in a Qwen tool call: strings verbatim, the rest as JSON.
fn param_value(schema: &Value) -> ParamValue {
    let ty = schema.get("type");
    let is_string = match ty {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(ts)) => ts.iter().all(|t| t == "string"),
        // No type (or an enum alone): strings when every enum value is one, else text.
        _ => schema
            .get("enum")
            .and_then(Value::as_array)
            .is_none_or(|e| e.iter().all(Value::is_string)),
    };
    if is_string {
        return match schema.get("enum").and_then(Value::as_array) {
            Some(e) if !e.is_empty() => ParamValue::Alternatives(
                e.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
            ),
            _ => ParamValue::Text,
        };
    }
    ParamValue::Json(schema.clone())
}
