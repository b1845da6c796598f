//! The streaming text layer between generated token ids and what a user or client sees.
//!
//! - [`Detokenizer`]: token ids → UTF-8 text, never half a character ([`Utf8Stream`]).
//! - [`StopMatcher`] / [`TextStream`]: EOS ids, stop strings across token boundaries, max tokens.
//! - [`super::reasoning`]: the `<think>` … `</think>` split on token ids.
//! - [`super::toolcall`]: incremental tool-call parsing on text.
//! - [`StreamParser`]: all of it in one object: feed ids one at a time, get [`Delta`]s, end with
//!   a [`StreamSummary`]. The deltas concatenate exactly to the summary's fields.
//!
//! Nothing here knows the tokenizer type: it reads token bytes through [`TokenText`] (or takes
//! per-token byte pieces directly), so it runs anywhere, including wasm32.

use std::borrow::Cow;

use super::reasoning::{Channel, ReasoningSplitter};
use super::toolcall::{ToolCall, ToolCallParser, ToolEvent, ToolSchemas};

/// Qwen3.5/3.6 `<think>`.
pub const QWEN_THINK_ID: u32 = 248068;
/// Qwen3.5/3.6 `</think>`.
pub const QWEN_END_THINK_ID: u32 = 248069;
/// Qwen3.5/3.6 `<|im_end|>` (the chat turn terminator).
pub const QWEN_IM_END_ID: u32 = 248046;
/// Qwen3.5/3.6 `<|endoftext|>`.
pub const QWEN_ENDOFTEXT_ID: u32 = 248044;

/// The text of each token. For a byte-level BPE vocabulary every token is a byte string (the
/// byte→unicode alphabet already mapped back to bytes); added tokens are their whole string.
pub trait TokenText {
    /// The token's bytes; `None` for an id outside the vocabulary (it produces no text).
    fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>>;
    /// Whether the token is a special (control) token that `skip_special` hides. For Qwen this is
    /// the tokenizer's "special" flag: `<|im_start|>`, `<|endoftext|>`… are special;
    /// `<think>`, `<tool_call>` are not.
    fn is_special(&self, id: u32) -> bool;
}

impl<T: TokenText + ?Sized> TokenText for &T {
    fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        (**self).token_bytes(id)
    }
    fn is_special(&self, id: u32) -> bool {
        (**self).is_special(id)
    }
}

// ---------------------------------------------------------------------------------------------
// UTF-8 and detokenizing

/// Incremental UTF-8 decoding. Complete characters are emitted as soon as their last byte
/// arrives; an incomplete sequence at the end is held back; invalid bytes become U+FFFD as soon as
/// they can no longer complete. The concatenated output of any split of a byte string, followed
/// by [`flush`](Self::flush), equals `String::from_utf8_lossy` of the whole.
#[derive(Clone, Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `bytes` after whatever is held back; appends the complete text to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        if self.pending.is_empty() {
            let used = decode_complete(bytes, out);
            self.pending.extend_from_slice(&bytes[used..]);
        } else {
            self.pending.extend_from_slice(bytes);
            let buf = std::mem::take(&mut self.pending);
            let used = decode_complete(&buf, out);
            self.pending.extend_from_slice(&buf[used..]);
        }
    }

    /// Ends the byte stream: an incomplete sequence becomes one U+FFFD.
    pub fn flush(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            self.pending.clear();
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }

    /// Drops an incomplete sequence without emitting anything.
    pub fn discard(&mut self) {
        self.pending.clear();
    }

    /// Whether an incomplete sequence is held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Decodes as much of `bytes` as is decided; returns how many bytes were used (the rest is an
/// incomplete sequence that may still complete).
fn decode_complete(bytes: &[u8], out: &mut String) -> usize {
    let mut at = 0;
    loop {
        match std::str::from_utf8(&bytes[at..]) {
            Ok(s) => {
                out.push_str(s);
                return bytes.len();
            }
            Err(e) => {
                let good = at + e.valid_up_to();
                if let Ok(s) = std::str::from_utf8(&bytes[at..good]) {
                    out.push_str(s);
                }
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        at = good + n;
                    }
                    None => return good,
                }
            }
        }
    }
}

/// Token ids → text, incrementally. Special tokens are shown as their text or, with
/// `skip_special`, hidden entirely (a hidden token is transparent: bytes around it join, as when
/// decoding with `skip_special_tokens`). Ids outside the vocabulary produce nothing.
#[derive(Clone, Debug)]
pub struct Detokenizer {
    utf8: Utf8Stream,
    skip_special: bool,
}

impl Detokenizer {
    pub fn new(skip_special: bool) -> Self {
        Self {
            utf8: Utf8Stream::new(),
            skip_special,
        }
    }

    /// The text that became complete with this token.
    pub fn push<T: TokenText + ?Sized>(&mut self, vocab: &T, id: u32) -> String {
        let special = vocab.is_special(id);
        if special && self.skip_special {
            return String::new();
        }
        match vocab.token_bytes(id) {
            Some(bytes) => self.push_piece(Some(&bytes), special),
            None => String::new(),
        }
    }

    /// The same from a token's bytes (`None`: unknown id).
    pub fn push_piece(&mut self, piece: Option<&[u8]>, special: bool) -> String {
        let mut out = String::new();
        if special && self.skip_special {
            return out;
        }
        if let Some(bytes) = piece {
            self.utf8.push(bytes, &mut out);
        }
        out
    }

    /// Ends the stream (an incomplete sequence becomes U+FFFD).
    pub fn flush(&mut self) -> String {
        let mut out = String::new();
        self.utf8.flush(&mut out);
        out
    }

    /// Drops held-back bytes.
    pub fn discard(&mut self) {
        self.utf8.discard();
    }

    pub fn has_pending(&self) -> bool {
        self.utf8.has_pending()
    }
}

// ---------------------------------------------------------------------------------------------
// Stop strings, EOS, max tokens

/// Why generation ended (the OpenAI `finish_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An EOS id or a stop string.
    Stop,
    /// The token limit.
    Length,
    /// Ended normally (EOS / stop string) after at least one complete tool call.
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// Result of feeding text to a [`StopMatcher`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopCheck {
    /// Text that is safe to emit now.
    pub text: String,
    /// Index (into the matcher's strings) of the stop string that matched; the text stops right
    /// before it and nothing after it is emitted.
    pub matched: Option<usize>,
}

/// Finds stop strings in streamed text. Holds back only the shortest tail that could still be
/// the start of a stop string. When several could match, the one that is complete first (its
/// last character comes earliest) wins, and among those the one that starts earliest — the same
/// answer for every split of the text, because it is the first moment any stop string is
/// complete.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// Empty strings are ignored.
    pub fn new<S: AsRef<str>>(stops: &[S]) -> Self {
        let mut list: Vec<String> = Vec::new();
        for s in stops {
            let s = s.as_ref();
            if !s.is_empty() && !list.iter().any(|x| x == s) {
                list.push(s.to_string());
            }
        }
        Self {
            stops: list,
            held: String::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    pub fn strings(&self) -> &[String] {
        &self.stops
    }

    /// Text held back (a possible start of a stop string).
    pub fn held(&self) -> &str {
        &self.held
    }

    pub fn push(&mut self, text: &str) -> StopCheck {
        if self.stops.is_empty() {
            return StopCheck {
                text: text.to_string(),
                matched: None,
            };
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(text);
        // Earliest end, then earliest start.
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, index)
        for (i, s) in self.stops.iter().enumerate() {
            if let Some(p) = buf.find(s.as_str()) {
                let cand = (p + s.len(), p, i);
                if best.is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                    best = Some(cand);
                }
            }
        }
        if let Some((_, start, i)) = best {
            buf.truncate(start);
            return StopCheck {
                text: buf,
                matched: Some(i),
            };
        }
        let keep = self.hold_from(&buf);
        self.held = buf[keep..].to_string();
        buf.truncate(keep);
        StopCheck {
            text: buf,
            matched: None,
        }
    }

    /// Releases the held-back text (the stream ended or a boundary no stop string spans).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Start of the longest suffix of `buf` that is a proper prefix of a stop string.
    fn hold_from(&self, buf: &str) -> usize {
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = buf.len().saturating_sub(longest.saturating_sub(1));
        while from < buf.len() {
            if buf.is_char_boundary(from) {
                let tail = &buf[from..];
                if self.stops.iter().any(|s| s.starts_with(tail)) {
                    return from;
                }
            }
            from += 1;
        }
        buf.len()
    }
}

/// When generation stops.
#[derive(Clone, Debug, Default)]
pub struct StopOptions {
    /// Ids that end generation; never shown as text.
    pub eos_ids: Vec<u32>,
    /// Strings that end generation; the text is cut right before the first one.
    pub stop_strings: Vec<String>,
    /// Generated tokens after which generation ends (EOS not counted).
    pub max_tokens: Option<usize>,
}

impl StopOptions {
    /// Qwen3.5/3.6: `<|im_end|>` and `<|endoftext|>`.
    pub fn qwen() -> Self {
        Self {
            eos_ids: vec![QWEN_IM_END_ID, QWEN_ENDOFTEXT_ID],
            ..Self::default()
        }
    }
}

/// Text and an end signal for one token of a [`TextStream`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextStep {
    pub text: String,
    /// Set once generation should stop; later pushes produce nothing.
    pub finished: Option<FinishReason>,
}

/// Plain text streaming with stop handling (no reasoning / tool split): detokenizer + EOS + stop
/// strings + max tokens.
#[derive(Clone, Debug)]
pub struct TextStream {
    detok: Detokenizer,
    stop: StopMatcher,
    eos: Vec<u32>,
    max_tokens: Option<usize>,
    tokens: usize,
    finished: Option<FinishReason>,
    matched: Option<String>,
}

impl TextStream {
    pub fn new(opts: &StopOptions, skip_special: bool) -> Self {
        Self {
            detok: Detokenizer::new(skip_special),
            stop: StopMatcher::new(&opts.stop_strings),
            eos: opts.eos_ids.clone(),
            max_tokens: opts.max_tokens,
            tokens: 0,
            finished: None,
            matched: None,
        }
    }

    pub fn push<T: TokenText + ?Sized>(&mut self, vocab: &T, id: u32) -> TextStep {
        let special = vocab.is_special(id);
        let bytes = vocab.token_bytes(id);
        self.push_piece(id, bytes.as_deref(), special)
    }

    pub fn push_piece(&mut self, id: u32, piece: Option<&[u8]>, special: bool) -> TextStep {
        let mut step = TextStep::default();
        if self.finished.is_some() {
            return step;
        }
        if self.eos.contains(&id) || self.max_tokens.is_some_and(|m| self.tokens >= m) {
            let reason = if self.eos.contains(&id) {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            return self.finish(Some(reason));
        }
        self.tokens += 1;
        let text = self.detok.push_piece(piece, special);
        let check = self.stop.push(&text);
        step.text = check.text;
        if let Some(i) = check.matched {
            self.matched = self.stop.strings().get(i).cloned();
            self.detok.discard();
            self.finished = Some(FinishReason::Stop);
            step.finished = self.finished;
            return step;
        }
        if self.max_tokens.is_some_and(|m| self.tokens >= m) {
            let end = self.finish(Some(FinishReason::Length));
            step.text.push_str(&end.text);
            step.finished = end.finished;
        }
        step
    }

    /// Ends the stream (if it has not ended): flushes held text. `ended_by` is the reason the
    /// generator stopped (e.g. it consumed the EOS id itself); `None` means `Length`.
    pub fn finish(&mut self, ended_by: Option<FinishReason>) -> TextStep {
        if let Some(f) = self.finished {
            return TextStep {
                text: String::new(),
                finished: Some(f),
            };
        }
        let tail = self.detok.flush();
        let check = self.stop.push(&tail);
        let mut text = check.text;
        let reason = if let Some(i) = check.matched {
            self.matched = self.stop.strings().get(i).cloned();
            FinishReason::Stop
        } else {
            text.push_str(&self.stop.flush());
            match ended_by {
                Some(FinishReason::Length) | None => FinishReason::Length,
                Some(_) => FinishReason::Stop,
            }
        };
        self.finished = Some(reason);
        TextStep {
            text,
            finished: Some(reason),
        }
    }

    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// The stop string that ended generation.
    pub fn matched_stop(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// Generated tokens seen (EOS not counted).
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

// ---------------------------------------------------------------------------------------------
// Display trimming

/// Removes leading and trailing newlines of a streamed text: deltas concatenate to
/// `whole.trim_matches(['\n', '\r'])`. Trailing newlines are held until more text follows.
#[derive(Clone, Debug, Default)]
pub struct NewlineTrim {
    started: bool,
    held: String,
}

impl NewlineTrim {
    pub fn push(&mut self, text: &str) -> String {
        let mut out = String::new();
        let mut s = text;
        if !self.started {
            s = s.trim_start_matches(['\n', '\r']);
            if s.is_empty() {
                return out;
            }
            self.started = true;
        }
        let body = s.trim_end_matches(['\n', '\r']);
        if !body.is_empty() {
            out.push_str(&self.held);
            self.held.clear();
            out.push_str(body);
        }
        self.held.push_str(&s[body.len()..]);
        out
    }

    /// The text ended: held newlines are dropped.
    pub fn finish(&mut self) {
        self.held.clear();
    }
}

// ---------------------------------------------------------------------------------------------
// The combined parser

/// Configuration of a [`StreamParser`].
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Ids that end generation (not shown).
    pub eos_ids: Vec<u32>,
    /// Stop strings (see [`StopMatcher`]); they never span a `<think>` / `</think>` marker.
    pub stop_strings: Vec<String>,
    pub max_tokens: Option<usize>,
    /// (`<think>`, `</think>`) ids; `None`: no reasoning split, everything is content.
    pub think_ids: Option<(u32, u32)>,
    /// Hide special tokens that are not EOS (see [`TokenText::is_special`]).
    pub skip_special: bool,
    /// Parse tool calls out of the content.
    pub tool_calls: bool,
    /// Also accept `<function=…>…</function>` without the `<tool_call>` wrapper.
    pub bare_function_calls: bool,
    /// Parameter types for tool-call arguments.
    pub tools: ToolSchemas,
    /// Stop strings also apply inside reasoning (mlx-lm: they apply everywhere).
    pub stop_in_reasoning: bool,
    /// Display mode: drop leading and trailing newlines of content and of reasoning. Off by
    /// default: content then starts with the "\n\n" the model writes after `</think>`, as in
    /// mlx-lm's server.
    pub trim_newlines: bool,
}

impl Default for StreamConfig {
    /// No EOS, no markers: plain text, tool calls parsed without schemas.
    fn default() -> Self {
        Self {
            eos_ids: Vec::new(),
            stop_strings: Vec::new(),
            max_tokens: None,
            think_ids: None,
            skip_special: true,
            tool_calls: true,
            bare_function_calls: true,
            tools: ToolSchemas::none(),
            stop_in_reasoning: true,
            trim_newlines: false,
        }
    }
}

impl StreamConfig {
    /// Qwen3.5/3.6: EOS `<|im_end|>` / `<|endoftext|>`, think ids 248068 / 248069.
    pub fn qwen() -> Self {
        Self {
            eos_ids: vec![QWEN_IM_END_ID, QWEN_ENDOFTEXT_ID],
            think_ids: Some((QWEN_THINK_ID, QWEN_END_THINK_ID)),
            ..Self::default()
        }
    }
}

/// One thing a token produced, in order.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    Reasoning {
        text: String,
    },
    Content {
        text: String,
    },
    /// A tool call's name is known.
    ToolCallStart {
        index: usize,
        name: String,
    },
    /// The tool call is complete; `arguments` is a JSON object string.
    ToolCallEnd {
        index: usize,
        name: String,
        arguments: String,
    },
    /// A started call did not terminate; its raw text has been (or is being) returned as
    /// content, and it is not in the final list. Only happens at the end of the stream.
    ToolCallInvalid {
        index: usize,
    },
}

/// What one token (or the end) produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub events: Vec<StreamEvent>,
    /// Set on the delta where generation ended (stop / length / tool_calls).
    pub finished: Option<FinishReason>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.finished.is_none()
    }

    /// All content text of this delta.
    pub fn content(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Content { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// All reasoning text of this delta.
    pub fn reasoning(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Reasoning { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The tool-call events of this delta.
    pub fn tool_events(&self) -> impl Iterator<Item = &StreamEvent> {
        self.events.iter().filter(|e| {
            !matches!(
                e,
                StreamEvent::Content { .. } | StreamEvent::Reasoning { .. }
            )
        })
    }

    fn push_text(&mut self, channel: Channel, text: String) {
        if text.is_empty() {
            return;
        }
        match (self.events.last_mut(), channel) {
            (Some(StreamEvent::Content { text: t }), Channel::Content)
            | (Some(StreamEvent::Reasoning { text: t }), Channel::Reasoning) => t.push_str(&text),
            (_, Channel::Content) => self.events.push(StreamEvent::Content { text }),
            (_, Channel::Reasoning) => self.events.push(StreamEvent::Reasoning { text }),
        }
    }
}

/// The whole reply.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StreamSummary {
    pub content: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    /// Tool calls returned as content because they were malformed or unterminated.
    pub malformed_tool_calls: usize,
    /// Generated tokens seen (EOS not counted).
    pub tokens: usize,
    /// The stop string that ended generation.
    pub matched_stop: Option<String>,
    /// The reply ended inside a think block (cut off while reasoning).
    pub ended_in_reasoning: bool,
}

/// Token ids in, [`Delta`]s out: detokenizing, EOS / stop strings / max tokens, the reasoning
/// split and tool calls. Feed every generated id with [`push`](Self::push) (or
/// [`push_piece`](Self::push_piece)); once [`finished`](Self::finished) is set the caller should
/// stop generating; then call [`finish`](Self::finish) for the last delta and the summary.
///
/// Routing, per token: an EOS id ends the reply. `<think>` in content opens reasoning, `</think>`
/// in reasoning closes it; neither is ever text (stray ones are dropped), except inside an open
/// tool call, where they are literal text of the call. Any other token's text goes through the
/// stop strings, then to reasoning or, in content, through the tool-call parser (tool calls
/// inside reasoning are not parsed).
#[derive(Clone, Debug)]
pub struct StreamParser {
    eos: Vec<u32>,
    max_tokens: Option<usize>,
    stop_in_reasoning: bool,
    trim: bool,
    detok: Detokenizer,
    stop: StopMatcher,
    think: Option<ReasoningSplitter>,
    tools: Option<ToolCallParser>,
    trim_content: NewlineTrim,
    trim_reasoning: NewlineTrim,
    tokens: usize,
    finished: Option<FinishReason>,
    matched: Option<String>,
    content: String,
    reasoning: String,
    calls: Vec<ToolCall>,
}

impl StreamParser {
    /// `prompt` is the prompt's token ids: the reply starts in reasoning when the prompt's last
    /// `<think>` comes after its last `</think>` (the thinking-mode generation prompt).
    pub fn new(config: StreamConfig, prompt: &[u32]) -> Self {
        let think = config
            .think_ids
            .map(|(t, e)| ReasoningSplitter::new(t, e, prompt));
        Self::build(config, think)
    }

    /// Starts in the given channel regardless of any prompt.
    pub fn starting_in(config: StreamConfig, channel: Channel) -> Self {
        let think = config
            .think_ids
            .map(|(t, e)| ReasoningSplitter::starting_in(t, e, channel));
        Self::build(config, think)
    }

    fn build(config: StreamConfig, think: Option<ReasoningSplitter>) -> Self {
        Self {
            eos: config.eos_ids,
            max_tokens: config.max_tokens,
            stop_in_reasoning: config.stop_in_reasoning,
            trim: config.trim_newlines,
            detok: Detokenizer::new(config.skip_special),
            stop: StopMatcher::new(&config.stop_strings),
            think,
            tools: config
                .tool_calls
                .then(|| ToolCallParser::new(config.tools, config.bare_function_calls)),
            trim_content: NewlineTrim::default(),
            trim_reasoning: NewlineTrim::default(),
            tokens: 0,
            finished: None,
            matched: None,
            content: String::new(),
            reasoning: String::new(),
            calls: Vec::new(),
        }
    }

    /// The channel the next token's text goes to.
    pub fn channel(&self) -> Channel {
        self.think
            .as_ref()
            .map_or(Channel::Content, |t| t.channel())
    }

    /// Set once generation should stop (EOS, stop string, max tokens); later pushes do nothing.
    pub fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    /// Generated tokens seen (EOS not counted).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Feeds one generated id.
    pub fn push<T: TokenText + ?Sized>(&mut self, vocab: &T, id: u32) -> Delta {
        let special = vocab.is_special(id);
        let bytes = vocab.token_bytes(id);
        self.push_piece(id, bytes.as_deref(), special)
    }

    /// Feeds one generated id with its bytes (`None`: unknown id) and special flag.
    pub fn push_piece(&mut self, id: u32, piece: Option<&[u8]>, special: bool) -> Delta {
        let mut d = Delta::default();
        if self.finished.is_some() {
            return d;
        }
        if self.eos.contains(&id) {
            self.end(FinishReason::Stop, &mut d);
            return d;
        }
        if self.max_tokens.is_some_and(|m| self.tokens >= m) {
            self.end(FinishReason::Length, &mut d);
            return d;
        }
        self.tokens += 1;
        let in_call = self.tools.as_ref().is_some_and(|t| t.in_call());
        let marker = match &self.think {
            Some(t) => t.is_marker(id) && !(in_call && t.channel() == Channel::Content),
            None => false,
        };
        if marker {
            if self.think.as_ref().is_some_and(|t| t.would_switch(id)) {
                self.flush_channel(&mut d);
                if self.finished.is_some() {
                    return d;
                }
            }
            if let Some(t) = &mut self.think {
                t.push(id);
            }
        } else {
            let text = self.detok.push_piece(piece, special);
            if self.process(&text, &mut d) {
                return d;
            }
        }
        if self.max_tokens.is_some_and(|m| self.tokens >= m) {
            self.end(FinishReason::Length, &mut d);
        }
        d
    }

    /// Ends the reply and returns the last delta and the summary. `ended_by` is why the
    /// generator stopped when this parser did not decide it (e.g. the loop consumed the EOS id
    /// itself: `Stop`); `None` means `Length`. After the parser finished by itself it is ignored.
    pub fn finish(&mut self, ended_by: Option<FinishReason>) -> (Delta, StreamSummary) {
        let mut d = Delta::default();
        if self.finished.is_none() {
            let reason = match ended_by {
                Some(FinishReason::Length) | None => FinishReason::Length,
                Some(_) => FinishReason::Stop,
            };
            self.end(reason, &mut d);
        }
        (d, self.summary())
    }

    /// The reply so far (final after [`finish`](Self::finish)); `finish_reason` is `Length`
    /// while unfinished.
    pub fn summary(&self) -> StreamSummary {
        StreamSummary {
            content: self.content.clone(),
            reasoning: self.reasoning.clone(),
            tool_calls: self.calls.clone(),
            finish_reason: self.finished.unwrap_or(FinishReason::Length),
            malformed_tool_calls: self.tools.as_ref().map_or(0, |t| t.malformed()),
            tokens: self.tokens,
            matched_stop: self.matched.clone(),
            ended_in_reasoning: self.channel() == Channel::Reasoning,
        }
    }

    /// Text from the detokenizer: stop strings, then routing. Returns true when a stop string
    /// ended the reply.
    fn process(&mut self, text: &str, d: &mut Delta) -> bool {
        if text.is_empty() {
            return false;
        }
        let channel = self.channel();
        if self.stop.is_empty() || (channel == Channel::Reasoning && !self.stop_in_reasoning) {
            self.route(text, d);
            return false;
        }
        let check = self.stop.push(text);
        self.route(&check.text, d);
        match check.matched {
            Some(i) => {
                self.matched = self.stop.strings().get(i).cloned();
                self.detok.discard();
                self.close(FinishReason::Stop, d);
                true
            }
            None => false,
        }
    }

    fn route(&mut self, text: &str, d: &mut Delta) {
        if text.is_empty() {
            return;
        }
        match self.channel() {
            Channel::Reasoning => self.emit(Channel::Reasoning, text, d),
            Channel::Content => match &mut self.tools {
                Some(t) => {
                    let events = t.push(text);
                    self.handle(events, d);
                }
                None => self.emit(Channel::Content, text, d),
            },
        }
    }

    fn handle(&mut self, events: Vec<ToolEvent>, d: &mut Delta) {
        for ev in events {
            match ev {
                ToolEvent::Content(text) => self.emit(Channel::Content, &text, d),
                ToolEvent::Start { index, name } => {
                    d.events.push(StreamEvent::ToolCallStart { index, name })
                }
                ToolEvent::End { index, call } => {
                    d.events.push(StreamEvent::ToolCallEnd {
                        index,
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    });
                    self.calls.push(call);
                }
                ToolEvent::Invalid { index } => {
                    d.events.push(StreamEvent::ToolCallInvalid { index })
                }
            }
        }
    }

    fn emit(&mut self, channel: Channel, text: &str, d: &mut Delta) {
        let text = match (self.trim, channel) {
            (false, _) => text.to_string(),
            (true, Channel::Content) => self.trim_content.push(text),
            (true, Channel::Reasoning) => self.trim_reasoning.push(text),
        };
        if text.is_empty() {
            return;
        }
        match channel {
            Channel::Content => self.content.push_str(&text),
            Channel::Reasoning => self.reasoning.push_str(&text),
        }
        d.push_text(channel, text);
    }

    /// A marker is about to switch channels: everything held back belongs to the current one.
    fn flush_channel(&mut self, d: &mut Delta) {
        let tail = self.detok.flush();
        if self.process(&tail, d) {
            return;
        }
        let held = self.stop.flush();
        self.route(&held, d);
        if self.channel() == Channel::Content {
            if let Some(t) = &mut self.tools {
                let events = t.finish();
                self.handle(events, d);
            }
        }
    }

    /// Ends the reply without a stop-string match: flush everything, then close.
    fn end(&mut self, reason: FinishReason, d: &mut Delta) {
        let tail = self.detok.flush();
        if self.process(&tail, d) {
            return;
        }
        let held = self.stop.flush();
        self.route(&held, d);
        self.close(reason, d);
    }

    fn close(&mut self, reason: FinishReason, d: &mut Delta) {
        if let Some(t) = &mut self.tools {
            let events = t.finish();
            self.handle(events, d);
        }
        self.trim_content.finish();
        self.trim_reasoning.finish();
        let reason = if reason == FinishReason::Stop && !self.calls.is_empty() {
            FinishReason::ToolCalls
        } else {
            reason
        };
        self.finished = Some(reason);
        d.finished = Some(reason);
    }
}
