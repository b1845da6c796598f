//! The streaming text layer (engine/src/text/{stream,reasoning,toolcall}.rs) on a small fake
//! byte-level vocabulary: every component is run on every way of splitting its input into tokens
//! (all segmentations of short inputs; for longer ones every split into 1, 2 or 3 pieces, byte by
//! byte, and a fixed set of pseudo-random splits). Each run must give the same, hand-written
//! result, and the streamed deltas must concatenate exactly to the final fields.

use std::borrow::Cow;
use std::collections::HashMap;

use qwgpu_engine::text::reasoning::{initial_channel, Channel, ReasoningSplitter, ThinkStep};
use qwgpu_engine::text::stream::{
    Delta, Detokenizer, FinishReason, StopMatcher, StopOptions, StreamConfig, StreamEvent,
    StreamParser, StreamSummary, TextStream, TokenText, Utf8Stream,
};
use qwgpu_engine::text::toolcall::{convert_param, ToolCallParser, ToolEvent, ToolSchemas};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Fake vocabulary: ids 0..=255 are single bytes, then added tokens, then multi-byte pieces.

const IM_END: u32 = 256;
const ENDOFTEXT: u32 = 257;
const IM_START: u32 = 258;
const THINK: u32 = 259;
const END_THINK: u32 = 260;
const TOOL_CALL: u32 = 261;
const END_TOOL_CALL: u32 = 262;

const FFFD: char = char::REPLACEMENT_CHARACTER;

struct Vocab {
    pieces: Vec<Vec<u8>>,
    special: Vec<bool>,
    index: HashMap<Vec<u8>, u32>,
}

impl Vocab {
    fn new() -> Self {
        let mut v = Vocab {
            pieces: Vec::new(),
            special: Vec::new(),
            index: HashMap::new(),
        };
        for b in 0..=255u8 {
            v.intern(&[b]);
        }
        // Added tokens: matched as whole strings, never through `intern`. Like Qwen's tokenizer,
        // only the <|…|> ones are "special" (hidden by skip_special).
        for (text, special) in [
            ("<|im_end|>", true),
            ("<|endoftext|>", true),
            ("<|im_start|>", true),
            ("<think>", false),
            ("</think>", false),
            ("<tool_call>", false),
            ("</tool_call>", false),
        ] {
            v.pieces.push(text.as_bytes().to_vec());
            v.special.push(special);
        }
        v
    }

    /// The id of a plain (non-added) piece, added to the vocabulary if new.
    fn intern(&mut self, bytes: &[u8]) -> u32 {
        if let Some(&id) = self.index.get(bytes) {
            return id;
        }
        let id = self.pieces.len() as u32;
        self.pieces.push(bytes.to_vec());
        self.special.push(false);
        self.index.insert(bytes.to_vec(), id);
        id
    }

    fn ids(&mut self, pieces: &[&[u8]]) -> Vec<u32> {
        pieces.iter().map(|p| self.intern(p)).collect()
    }
}

impl TokenText for Vocab {
    fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        self.pieces
            .get(id as usize)
            .map(|p| Cow::Borrowed(p.as_slice()))
    }
    fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }
}

/// A generated stream: text (split into tokens by the test), raw bytes, or an added token.
#[derive(Clone, Copy, Debug)]
enum Seg<'a> {
    T(&'a str),
    B(&'a [u8]),
    S(u32),
}
use Seg::{B, S, T};

fn text_len(segs: &[Seg]) -> usize {
    segs.iter()
        .map(|s| match s {
            T(t) => t.len(),
            B(b) => b.len(),
            S(_) => 0,
        })
        .sum()
}

/// Token ids for `segs` with the text bytes cut at the given offsets (counted over all text and
/// byte segments together; an added token is always its own token).
fn tokenize(vocab: &mut Vocab, segs: &[Seg], cuts: &[usize]) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut at = 0;
    for seg in segs {
        let bytes: &[u8] = match seg {
            T(t) => t.as_bytes(),
            B(b) => b,
            S(id) => {
                ids.push(*id);
                continue;
            }
        };
        let mut from = 0;
        for &c in cuts {
            if c > at + from && c < at + bytes.len() {
                ids.push(vocab.intern(&bytes[from..c - at]));
                from = c - at;
            }
        }
        if from < bytes.len() {
            ids.push(vocab.intern(&bytes[from..]));
        }
        at += bytes.len();
    }
    ids
}

/// Cut sets over `n` bytes: all 2^(n-1) for short inputs; otherwise no cut, every single cut,
/// every pair of cuts, byte by byte, and 64 pseudo-random splits.
fn segmentations(n: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    if n <= 1 {
        out.push(Vec::new());
        return out;
    }
    if n <= 13 {
        for mask in 0u32..(1 << (n - 1)) {
            out.push((1..n).filter(|i| mask & (1 << (i - 1)) != 0).collect());
        }
        return out;
    }
    out.push(Vec::new());
    for i in 1..n {
        out.push(vec![i]);
        for j in i + 1..n {
            out.push(vec![i, j]);
        }
    }
    out.push((1..n).collect());
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..64 {
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            at += 1 + (state >> 60) as usize % 6;
            if at >= n {
                break;
            }
            cuts.push(at);
        }
        out.push(cuts);
    }
    out
}

/// Every tokenization of `segs`, with the cut set for failure messages.
fn for_each_split(vocab: &mut Vocab, segs: &[Seg], mut f: impl FnMut(&Vocab, &[u32], &[usize])) {
    for cuts in segmentations(text_len(segs)) {
        let ids = tokenize(vocab, segs, &cuts);
        f(vocab, &ids, &cuts);
    }
}

// ---------------------------------------------------------------------------------------------
// Running the combined parser and checking its deltas

/// An event of the merged log: adjacent text of one channel joined across deltas.
#[derive(Clone, Debug, PartialEq)]
enum Log {
    Reasoning(String),
    Content(String),
    Start(usize, String),
    End(usize, String, String),
    Invalid(usize),
}

struct Run {
    summary: StreamSummary,
    log: Vec<Log>,
}

/// Feeds `ids` until the parser finishes, then ends it. Checks the streaming contract: the
/// deltas' text concatenates to the summary, tool-call events rebuild the summary's calls, the
/// finish reason is reported exactly once and tokens after the end produce nothing.
fn run(
    vocab: &Vocab,
    cfg: &StreamConfig,
    prompt: &[u32],
    ids: &[u32],
    ended_by: Option<FinishReason>,
) -> Run {
    let mut p = StreamParser::new(cfg.clone(), prompt);
    let mut deltas: Vec<Delta> = Vec::new();
    for &id in ids {
        if p.finished().is_some() {
            assert!(
                p.push(vocab, id).is_empty(),
                "tokens after the end produce nothing"
            );
            continue;
        }
        deltas.push(p.push(vocab, id));
    }
    let (last, summary) = p.finish(ended_by);
    deltas.push(last);

    let finishes: Vec<FinishReason> = deltas.iter().filter_map(|d| d.finished).collect();
    assert_eq!(
        finishes,
        vec![summary.finish_reason],
        "finish reason reported once"
    );

    let mut log: Vec<Log> = Vec::new();
    let mut open: HashMap<usize, String> = HashMap::new();
    let mut calls: Vec<(usize, String, String)> = Vec::new();
    for d in &deltas {
        for e in &d.events {
            match e {
                StreamEvent::Reasoning { text } | StreamEvent::Content { text } => {
                    assert!(!text.is_empty(), "no empty text events");
                    let reasoning = matches!(e, StreamEvent::Reasoning { .. });
                    match (log.last_mut(), reasoning) {
                        (Some(Log::Reasoning(t)), true) | (Some(Log::Content(t)), false) => {
                            t.push_str(text)
                        }
                        (_, true) => log.push(Log::Reasoning(text.clone())),
                        (_, false) => log.push(Log::Content(text.clone())),
                    }
                }
                StreamEvent::ToolCallStart { index, name } => {
                    assert!(
                        open.insert(*index, name.clone()).is_none(),
                        "index {index} reused"
                    );
                    log.push(Log::Start(*index, name.clone()));
                }
                StreamEvent::ToolCallEnd {
                    index,
                    name,
                    arguments,
                } => {
                    assert_eq!(open.remove(index).as_deref(), Some(name.as_str()));
                    calls.push((*index, name.clone(), arguments.clone()));
                    log.push(Log::End(*index, name.clone(), arguments.clone()));
                }
                StreamEvent::ToolCallInvalid { index } => {
                    assert!(
                        open.remove(index).is_some(),
                        "invalid call {index} was started"
                    );
                    log.push(Log::Invalid(*index));
                }
            }
        }
    }
    assert!(open.is_empty(), "every started call ends or is invalidated");
    let content: String = deltas.iter().map(|d| d.content()).collect();
    let reasoning: String = deltas.iter().map(|d| d.reasoning()).collect();
    assert_eq!(
        content, summary.content,
        "content deltas concatenate to the summary"
    );
    assert_eq!(
        reasoning, summary.reasoning,
        "reasoning deltas concatenate to the summary"
    );
    let rebuilt: Vec<(String, String)> = calls
        .iter()
        .map(|(_, n, a)| (n.clone(), a.clone()))
        .collect();
    let listed: Vec<(String, String)> = summary
        .tool_calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments.clone()))
        .collect();
    assert_eq!(
        rebuilt, listed,
        "tool-call events rebuild the summary's calls"
    );
    for (i, (index, _, _)) in calls.iter().enumerate() {
        assert_eq!(*index, i, "call indices are 0, 1, 2, …");
    }
    Run { summary, log }
}

struct Expect<'a> {
    reasoning: &'a str,
    content: &'a str,
    calls: &'a [(&'a str, &'a str)],
    finish: FinishReason,
    malformed: usize,
}

/// Runs every split of `segs` and compares each summary (and, when given, the merged event log)
/// with the expectation.
fn check(
    cfg: &StreamConfig,
    prompt: &[Seg],
    segs: &[Seg],
    ended_by: Option<FinishReason>,
    want: &Expect,
    log: Option<&[Log]>,
) {
    let mut vocab = Vocab::new();
    let prompt = tokenize(&mut vocab, prompt, &[]);
    let mut runs = 0;
    for_each_split(&mut vocab, segs, |vocab, ids, cuts| {
        let r = run(vocab, cfg, &prompt, ids, ended_by);
        let s = &r.summary;
        let calls: Vec<(&str, &str)> = s
            .tool_calls
            .iter()
            .map(|c| (c.name.as_str(), c.arguments.as_str()))
            .collect();
        let ctx = format!("cuts {cuts:?}");
        assert_eq!(s.reasoning, want.reasoning, "reasoning, {ctx}");
        assert_eq!(s.content, want.content, "content, {ctx}");
        assert_eq!(calls, want.calls, "tool calls, {ctx}");
        assert_eq!(s.finish_reason, want.finish, "finish reason, {ctx}");
        assert_eq!(
            s.malformed_tool_calls, want.malformed,
            "malformed calls, {ctx}"
        );
        if let Some(log) = log {
            assert_eq!(r.log, log, "event log, {ctx}");
        }
        runs += 1;
    });
    assert!(runs > 0);
}

fn thinking_prompt() -> Vec<Seg<'static>> {
    vec![
        S(IM_START),
        T("user\nHi"),
        S(IM_END),
        T("\n"),
        S(IM_START),
        T("assistant\n"),
        S(THINK),
        T("\n"),
    ]
}

fn non_thinking_prompt() -> Vec<Seg<'static>> {
    vec![
        S(IM_START),
        T("user\nHi"),
        S(IM_END),
        T("\n"),
        S(IM_START),
        T("assistant\n"),
        S(THINK),
        T("\n\n"),
        S(END_THINK),
        T("\n\n"),
    ]
}

fn cfg() -> StreamConfig {
    StreamConfig {
        eos_ids: vec![IM_END, ENDOFTEXT],
        think_ids: Some((THINK, END_THINK)),
        ..StreamConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// 1. UTF-8 and the detokenizer

#[test]
fn utf8_stream_matches_lossy_decoding_at_every_split() {
    let cases: &[(&[u8], &str)] = &[
        ("a🎉b".as_bytes(), "a🎉b"),
        ("你好".as_bytes(), "你好"),
        ("สวัสดี".as_bytes(), "สวัสดี"),
        ("é🎉中ก".as_bytes(), "é🎉中ก"),
        // A 4-byte lead cut short by ASCII: one U+FFFD for the maximal prefix, then the ASCII.
        (b"\xF0\x9F\x41", "\u{FFFD}A"),
        // Incomplete at the very end: one U+FFFD when the stream ends.
        (b"ok\xE4\xBD", "ok\u{FFFD}"),
        // Lone continuation byte, invalid lead byte before a valid 2-byte char.
        (b"\x80x\xFF\xC3\xA9", "\u{FFFD}x\u{FFFD}é"),
        // Encoded surrogate: three separate invalid bytes.
        (b"\xED\xA0\x80!", "\u{FFFD}\u{FFFD}\u{FFFD}!"),
    ];
    for &(bytes, want) in cases {
        assert_eq!(String::from_utf8_lossy(bytes), want);
        let valid = std::str::from_utf8(bytes).is_ok();
        for cuts in segmentations(bytes.len()) {
            let mut u = Utf8Stream::new();
            let mut out = String::new();
            let mut from = 0;
            for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
                let mut piece = String::new();
                u.push(&bytes[from..c], &mut piece);
                if valid {
                    assert!(
                        !piece.contains(FFFD),
                        "{want:?} cut at {cuts:?}: half a character emitted"
                    );
                }
                out.push_str(&piece);
                from = c;
            }
            u.flush(&mut out);
            assert_eq!(out, want, "cuts {cuts:?}");
        }
    }
}

#[test]
fn detokenizer_emits_whole_characters_and_handles_special_tokens() {
    let mut v = Vocab::new();
    // 🎉 = F0 9F 8E 89 in two pieces; สวัสดี (18 bytes) in pieces that cut through characters.
    let party = v.ids(&[b"\xF0\x9F", b"\x8E\x89"]);
    let thai = "สวัสดี".as_bytes();
    let thai_ids = v.ids(&[&thai[..4], &thai[4..11], &thai[11..]]);
    let hi = v.intern(b"hi ");

    let mut d = Detokenizer::new(true);
    assert_eq!(d.push(&v, hi), "hi ");
    assert_eq!(d.push(&v, party[0]), "");
    assert!(d.has_pending());
    assert_eq!(d.push(&v, party[1]), "🎉");
    assert_eq!(d.push(&v, thai_ids[0]), "ส"); // 4 bytes: one character and one byte held
    assert_eq!(d.push(&v, thai_ids[1]), "วั"); // 7 more: completes two, holds two
    assert_eq!(d.push(&v, thai_ids[2]), "สดี");
    assert_eq!(d.flush(), "");

    // A hidden special token is transparent: the bytes around it still join.
    let mut d = Detokenizer::new(true);
    assert_eq!(d.push(&v, party[0]), "");
    assert_eq!(d.push(&v, IM_START), "");
    assert_eq!(d.push(&v, party[1]), "🎉");
    // Shown, its text is part of the byte stream, so the cut emoji becomes U+FFFD (as
    // from_utf8_lossy of the whole): F0 9F is one invalid prefix, 8E and 89 are one each.
    let mut d = Detokenizer::new(false);
    let out: String = [party[0], IM_START, party[1]]
        .iter()
        .map(|&id| d.push(&v, id))
        .collect();
    assert_eq!(out, "\u{FFFD}<|im_start|>\u{FFFD}\u{FFFD}");
    // Non-special added tokens are text even with skip_special.
    let mut d = Detokenizer::new(true);
    assert_eq!(d.push(&v, TOOL_CALL), "<tool_call>");
    // Unknown ids produce nothing; an incomplete character at the end becomes one U+FFFD.
    assert_eq!(d.push(&v, 999_999), "");
    assert_eq!(d.push(&v, party[0]), "");
    assert_eq!(d.flush(), "\u{FFFD}");
    // By pieces, without a vocabulary.
    let mut d = Detokenizer::new(true);
    assert_eq!(d.push_piece(Some(b"\xE4\xBD"), false), "");
    assert_eq!(d.push_piece(Some(b"<|x|>"), true), "");
    assert_eq!(d.push_piece(Some(b"\xA0!"), false), "你!");
}

// ---------------------------------------------------------------------------------------------
// 2. Stop strings, EOS, max tokens

struct StopCase<'a> {
    stops: &'a [&'a str],
    segs: &'a [Seg<'a>],
    ended_by: Option<FinishReason>,
    text: &'a str,
    finish: FinishReason,
    matched: Option<&'a str>,
}

#[test]
fn stop_strings_across_token_boundaries() {
    let cases = [
        // Plain match; the text after it and the EOS are never emitted.
        StopCase {
            stops: &["STOP"],
            segs: &[T("Hello STOP world"), S(IM_END)],
            ended_by: None,
            text: "Hello ",
            finish: FinishReason::Stop,
            matched: Some("STOP"),
        },
        // A stop string that is a prefix of another: the shorter is complete first.
        StopCase {
            stops: &["abc", "ab"],
            segs: &[T("xxabcyy")],
            ended_by: None,
            text: "xx",
            finish: FinishReason::Stop,
            matched: Some("ab"),
        },
        // "b" inside "abc" is complete first, even though "abc" starts earlier.
        StopCase {
            stops: &["abc", "b"],
            segs: &[T("zabc")],
            ended_by: None,
            text: "za",
            finish: FinishReason::Stop,
            matched: Some("b"),
        },
        // Both complete on the same character: the one that starts earlier wins.
        StopCase {
            stops: &["bc", "abc"],
            segs: &[T("zabcd")],
            ended_by: None,
            text: "z",
            finish: FinishReason::Stop,
            matched: Some("abc"),
        },
        // Overlapping partial matches ("aba" fails at "c", restarts inside itself).
        StopCase {
            stops: &["abad"],
            segs: &[T("xabacabadx")],
            ended_by: None,
            text: "xabac",
            finish: FinishReason::Stop,
            matched: Some("abad"),
        },
        StopCase {
            stops: &["aab"],
            segs: &[T("aaaab!")],
            ended_by: None,
            text: "aa",
            finish: FinishReason::Stop,
            matched: Some("aab"),
        },
        // Multi-byte stop strings whose characters are split across tokens.
        StopCase {
            stops: &["🎉!"],
            segs: &[T("Party🎉🎉! now")],
            ended_by: None,
            text: "Party🎉",
            finish: FinishReason::Stop,
            matched: Some("🎉!"),
        },
        StopCase {
            stops: &["é"],
            segs: &[T("café au lait")],
            ended_by: None,
            text: "caf",
            finish: FinishReason::Stop,
            matched: Some("é"),
        },
        // 🎊 shares three bytes with 🎉 but is not a match.
        StopCase {
            stops: &["🎉"],
            segs: &[T("Party🎊 time"), S(IM_END)],
            ended_by: None,
            text: "Party🎊 time",
            finish: FinishReason::Stop,
            matched: None,
        },
        StopCase {
            stops: &["\n\n"],
            segs: &[T("line1\nline2\n\nmore")],
            ended_by: None,
            text: "line1\nline2",
            finish: FinishReason::Stop,
            matched: Some("\n\n"),
        },
        StopCase {
            stops: &["Hello"],
            segs: &[T("Hello")],
            ended_by: None,
            text: "",
            finish: FinishReason::Stop,
            matched: Some("Hello"),
        },
        // A held-back partial match is released when the stream ends (EOS, or the generator's
        // own limit).
        StopCase {
            stops: &["STOP"],
            segs: &[T("Hi ST"), S(IM_END)],
            ended_by: None,
            text: "Hi ST",
            finish: FinishReason::Stop,
            matched: None,
        },
        StopCase {
            stops: &["STOP"],
            segs: &[T("Hi STO")],
            ended_by: None,
            text: "Hi STO",
            finish: FinishReason::Length,
            matched: None,
        },
        StopCase {
            stops: &["STOP"],
            segs: &[T("Hi STO")],
            ended_by: Some(FinishReason::Stop),
            text: "Hi STO",
            finish: FinishReason::Stop,
            matched: None,
        },
        // EOS: not text, and nothing after it counts.
        StopCase {
            stops: &[],
            segs: &[T("abc"), S(ENDOFTEXT), T("def")],
            ended_by: None,
            text: "abc",
            finish: FinishReason::Stop,
            matched: None,
        },
    ];
    for case in &cases {
        let mut vocab = Vocab::new();
        let opts = StopOptions {
            eos_ids: vec![IM_END, ENDOFTEXT],
            stop_strings: case.stops.iter().map(|s| s.to_string()).collect(),
            max_tokens: None,
        };
        for_each_split(&mut vocab, case.segs, |vocab, ids, cuts| {
            let mut ts = TextStream::new(&opts, true);
            let mut text = String::new();
            let mut finishes = Vec::new();
            for &id in ids {
                let step = ts.push(vocab, id);
                assert!(!step.text.contains(FFFD), "half a character, cuts {cuts:?}");
                text.push_str(&step.text);
                finishes.extend(step.finished);
            }
            let end = ts.finish(case.ended_by);
            text.push_str(&end.text);
            if finishes.is_empty() {
                finishes.extend(end.finished);
            }
            let ctx = format!("stops {:?}, cuts {cuts:?}", case.stops);
            assert_eq!(text, case.text, "{ctx}");
            assert_eq!(finishes, vec![case.finish], "{ctx}");
            assert_eq!(ts.matched_stop(), case.matched, "{ctx}");
        });
    }
}

#[test]
fn stop_matcher_holds_back_only_possible_starts() {
    let mut m = StopMatcher::new(&["</answer>", "", "END"]);
    assert_eq!(m.strings(), ["</answer>", "END"]);
    let r = m.push("result: 42 </ans");
    assert_eq!((r.text.as_str(), r.matched), ("result: 42 ", None));
    assert_eq!(m.held(), "</ans");
    let r = m.push("wer is E");
    assert_eq!((r.text.as_str(), r.matched), ("</answer is ", None));
    assert_eq!(m.held(), "E");
    let r = m.push("NDING");
    assert_eq!((r.text.as_str(), r.matched), ("", Some(1)));
}

#[test]
fn max_tokens_ends_with_length() {
    let mut v = Vocab::new();
    let ids = v.ids(&[b"ab", b"cd", b"ef", b"gh"]);
    let opts = StopOptions {
        eos_ids: vec![IM_END],
        stop_strings: vec!["STOP".into()],
        max_tokens: Some(3),
    };
    let mut ts = TextStream::new(&opts, true);
    let steps: Vec<_> = ids.iter().map(|&id| ts.push(&v, id)).collect();
    let text: String = steps.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(text, "abcdef");
    assert_eq!(steps[2].finished, Some(FinishReason::Length));
    assert_eq!(steps[3], Default::default());
    assert_eq!(ts.tokens(), 3);

    // Cut off in the middle of a character and of a possible stop string: both are released.
    let ids = v.ids(&[b"x", b"ST", b"\xF0\x9F"]);
    let mut ts = TextStream::new(&opts, true);
    let text: String = ids.iter().map(|&id| ts.push(&v, id).text).collect();
    assert_eq!(text, "xST\u{FFFD}");
    assert_eq!(ts.finished(), Some(FinishReason::Length));

    // In the combined parser the limit counts markers too, and EOS is not counted.
    let ab = v.intern(b"ab");
    let cd = v.intern(b"cd");
    let ef = v.intern(b"ef");
    let c = StreamConfig {
        max_tokens: Some(3),
        ..cfg()
    };
    let r = run(&v, &c, &[THINK], &[ab, cd, END_THINK, ef], None);
    assert_eq!(
        (r.summary.reasoning.as_str(), r.summary.content.as_str()),
        ("abcd", "")
    );
    assert_eq!(
        (r.summary.finish_reason, r.summary.tokens),
        (FinishReason::Length, 3)
    );
    let r = run(&v, &c, &[THINK], &[ab, IM_END], None);
    assert_eq!(
        (r.summary.finish_reason, r.summary.tokens),
        (FinishReason::Stop, 1)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Reasoning

#[test]
fn initial_channel_follows_the_prompts_last_think_marker() {
    let mut v = Vocab::new();
    let thinking = tokenize(&mut v, &thinking_prompt(), &[]);
    let non_thinking = tokenize(&mut v, &non_thinking_prompt(), &[]);
    assert_eq!(
        initial_channel(&thinking, THINK, END_THINK),
        Channel::Reasoning
    );
    assert_eq!(
        initial_channel(&non_thinking, THINK, END_THINK),
        Channel::Content
    );
    assert_eq!(initial_channel(&[], THINK, END_THINK), Channel::Content);
    // History with closed think blocks, then an open one.
    assert_eq!(
        initial_channel(&[THINK, 1, END_THINK, 2, THINK, 3], THINK, END_THINK),
        Channel::Reasoning
    );
    assert_eq!(
        initial_channel(&[THINK, 1, END_THINK, 2], THINK, END_THINK),
        Channel::Content
    );

    let mut s = ReasoningSplitter::new(THINK, END_THINK, &thinking);
    assert_eq!(s.push(65), ThinkStep::Text(Channel::Reasoning));
    assert_eq!(s.push(THINK), ThinkStep::Stray);
    assert_eq!(s.push(END_THINK), ThinkStep::Close);
    assert_eq!(s.push(65), ThinkStep::Text(Channel::Content));
    assert_eq!(s.push(END_THINK), ThinkStep::Stray);
    assert_eq!(s.push(THINK), ThinkStep::Open);
    assert_eq!(s.channel(), Channel::Reasoning);
}

#[test]
fn thinking_prompt_splits_reasoning_and_keeps_newlines_in_content() {
    let segs = [
        T("Let me think about 你好 🎉.\n"),
        S(END_THINK),
        T("\n\nThe answer is 42."),
        S(IM_END),
    ];
    check(
        &cfg(),
        &thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "Let me think about 你好 🎉.\n",
            content: "\n\nThe answer is 42.",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        Some(&[
            Log::Reasoning("Let me think about 你好 🎉.\n".into()),
            Log::Content("\n\nThe answer is 42.".into()),
        ]),
    );
    // Display trimming: leading and trailing newlines of both fields go.
    let c = StreamConfig {
        trim_newlines: true,
        ..cfg()
    };
    let segs = [
        T("\nStep 1.\n\nStep 2.\n"),
        S(END_THINK),
        T("\n\nA\n\nB\n"),
        S(IM_END),
    ];
    check(
        &c,
        &thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "Step 1.\n\nStep 2.",
            content: "A\n\nB",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
}

#[test]
fn non_thinking_prompt_starts_in_content() {
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[T("Hello สวัสดี!"), S(IM_END)],
        None,
        &Expect {
            reasoning: "",
            content: "Hello สวัสดี!",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
    // The model opens a think block itself; stray markers are dropped, never shown.
    check(
        &cfg(),
        &[],
        &[
            S(END_THINK),
            T("x"),
            S(THINK),
            T("plan"),
            S(THINK),
            T(" more"),
            S(END_THINK),
            T("\n\nDone"),
            S(END_THINK),
            S(IM_END),
        ],
        None,
        &Expect {
            reasoning: "plan more",
            content: "x\n\nDone",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        Some(&[
            Log::Content("x".into()),
            Log::Reasoning("plan more".into()),
            Log::Content("\n\nDone".into()),
        ]),
    );
    // Invalid bytes become U+FFFD once they cannot complete, wherever the tokens are cut.
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[
            T("x"),
            B(b"\xF0\x9F\x8E"),
            T("y🎉"),
            B(b"\xE4\xBD"),
            S(IM_END),
        ],
        None,
        &Expect {
            reasoning: "",
            content: "x\u{FFFD}y🎉\u{FFFD}",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
    // Without think ids everything is content and the markers are ordinary text.
    let c = StreamConfig {
        think_ids: None,
        ..cfg()
    };
    check(
        &c,
        &thinking_prompt(),
        &[T("a"), S(END_THINK), T("b"), S(IM_END)],
        None,
        &Expect {
            reasoning: "",
            content: "a</think>b",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
}

#[test]
fn reply_cut_off_inside_thinking_keeps_reasoning_out_of_content() {
    let segs = [T("Still thinking about สวัสดี and 🎉 and")];
    check(
        &cfg(),
        &thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "Still thinking about สวัสดี and 🎉 and",
            content: "",
            calls: &[],
            finish: FinishReason::Length,
            malformed: 0,
        },
        None,
    );
    let segs = [T("I think 中文"), S(IM_END)];
    check(
        &cfg(),
        &thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "I think 中文",
            content: "",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
    let mut v = Vocab::new();
    let prompt = tokenize(&mut v, &thinking_prompt(), &[]);
    let ids = tokenize(&mut v, &segs, &[3]);
    let r = run(&v, &cfg(), &prompt, &ids, None);
    assert!(r.summary.ended_in_reasoning);
}

#[test]
fn stop_strings_in_reasoning_and_content() {
    let segs = [
        T("plan ### more"),
        S(END_THINK),
        T("\n\nanswer ### tail"),
        S(IM_END),
    ];
    // As mlx-lm: stop strings apply while reasoning too.
    let c = StreamConfig {
        stop_strings: vec!["###".into()],
        ..cfg()
    };
    check(
        &c,
        &thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "plan ",
            content: "",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
    // Only in content.
    let c = StreamConfig {
        stop_strings: vec!["###".into()],
        stop_in_reasoning: false,
        ..cfg()
    };
    check(
        &c,
        &thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "plan ### more",
            content: "\n\nanswer ",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
    // A stop string never spans the </think> marker; the held "a" is released to reasoning.
    let c = StreamConfig {
        stop_strings: vec!["ab".into()],
        ..cfg()
    };
    check(
        &c,
        &thinking_prompt(),
        &[T("xa"), S(END_THINK), T("by"), S(IM_END)],
        None,
        &Expect {
            reasoning: "xa",
            content: "by",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
    // Content with a stop string split between characters and tokens.
    let c = StreamConfig {
        stop_strings: vec!["。\n".into()],
        ..cfg()
    };
    check(
        &c,
        &non_thinking_prompt(),
        &[T("你好。\n再见"), S(IM_END)],
        None,
        &Expect {
            reasoning: "",
            content: "你好",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Tool calls

fn write_file_tools() -> ToolSchemas {
    ToolSchemas::from_json(&json!([{
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Write a file",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"},
                    "mode": {"type": "integer"},
                    "ratio": {"type": "number"},
                    "overwrite": {"type": "boolean"},
                    "options": {"type": "object"},
                    "tags": {"type": "array"},
                    "backup": {"type": ["string", "null"]}
                }
            }
        }
    }]))
}

const WRITE_FILE_BODY: &str = "\n<function=write_file>\n<parameter=path>\nsrc/é.html\n</parameter>\n<parameter=content>\n\n<div class=\"x\">\n  <p>1 < 2 && </para></p>\n</div>\n\n</parameter>\n<parameter=mode>\n420\n</parameter>\n<parameter=ratio>\n0.75\n</parameter>\n<parameter=overwrite>\ntrue\n</parameter>\n<parameter=options>\n{\"indent\": 2, \"eol\": \"lf\"}\n</parameter>\n<parameter=tags>\n[\"a\", 1, null]\n</parameter>\n<parameter=backup>\nnull\n</parameter>\n</function>\n";

const WRITE_FILE_ARGS: &str = r#"{"path":"src/é.html","content":"\n<div class=\"x\">\n  <p>1 < 2 && </para></p>\n</div>\n","mode":420,"ratio":0.75,"overwrite":true,"options":{"indent":2,"eol":"lf"},"tags":["a",1,null],"backup":null}"#;

#[test]
fn tool_call_arguments_are_typed_by_schema() {
    let c = StreamConfig {
        tools: write_file_tools(),
        ..cfg()
    };
    let want = Expect {
        reasoning: "",
        content: "",
        calls: &[("write_file", WRITE_FILE_ARGS)],
        finish: FinishReason::ToolCalls,
        malformed: 0,
    };
    let log = [
        Log::Start(0, "write_file".into()),
        Log::End(0, "write_file".into(), WRITE_FILE_ARGS.into()),
    ];
    // Markers as added tokens.
    check(
        &c,
        &non_thinking_prompt(),
        &[
            S(TOOL_CALL),
            T(WRITE_FILE_BODY),
            S(END_TOOL_CALL),
            S(IM_END),
        ],
        None,
        &want,
        Some(&log),
    );
    // Markers as plain text, split anywhere.
    let text = format!("<tool_call>{WRITE_FILE_BODY}</tool_call>");
    check(
        &c,
        &non_thinking_prompt(),
        &[T(&text), S(IM_END)],
        None,
        &want,
        Some(&log),
    );
}

#[test]
fn two_calls_with_content_before() {
    let tools = ToolSchemas::from_json(&json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}
    }}]));
    let c = StreamConfig { tools, ..cfg() };
    let call = |city: &str, days: &str| {
        format!("<function=get_weather>\n<parameter=city>\n{city}\n</parameter>\n<parameter=days>\n{days}\n</parameter>\n</function>")
    };
    let (a, b) = (call("Paris", "3"), call("東京", "1"));
    let segs = [
        T("I'll check both.\n\n"),
        S(TOOL_CALL),
        T("\n"),
        T(&a),
        T("\n"),
        S(END_TOOL_CALL),
        T("\n"),
        S(TOOL_CALL),
        T("\n"),
        T(&b),
        T("\n"),
        S(END_TOOL_CALL),
        S(IM_END),
    ];
    let args_a = r#"{"city":"Paris","days":3}"#;
    let args_b = r#"{"city":"東京","days":1}"#;
    let log = [
        Log::Content("I'll check both.\n\n".into()),
        Log::Start(0, "get_weather".into()),
        Log::End(0, "get_weather".into(), args_a.into()),
        Log::Content("\n".into()),
        Log::Start(1, "get_weather".into()),
        Log::End(1, "get_weather".into(), args_b.into()),
    ];
    let calls = [("get_weather", args_a), ("get_weather", args_b)];
    check(
        &c,
        &thinking_prompt(),
        &[&[T("Two cities."), S(END_THINK), T("\n\n")][..], &segs[..]].concat(),
        None,
        &Expect {
            reasoning: "Two cities.",
            content: "\n\nI'll check both.\n\n\n",
            calls: &calls,
            finish: FinishReason::ToolCalls,
            malformed: 0,
        },
        None,
    );
    check(
        &c,
        &non_thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "",
            content: "I'll check both.\n\n\n",
            calls: &calls,
            finish: FinishReason::ToolCalls,
            malformed: 0,
        },
        Some(&log),
    );
    // The generator stopped at its own limit right after the calls: the reason stays "length".
    check(
        &c,
        &non_thinking_prompt(),
        &segs[..segs.len() - 1],
        Some(FinishReason::Length),
        &Expect {
            reasoning: "",
            content: "I'll check both.\n\n\n",
            calls: &calls,
            finish: FinishReason::Length,
            malformed: 0,
        },
        None,
    );
    // Display trimming drops the newlines around the calls.
    let c = StreamConfig {
        trim_newlines: true,
        ..c
    };
    check(
        &c,
        &non_thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "",
            content: "I'll check both.",
            calls: &calls,
            finish: FinishReason::ToolCalls,
            malformed: 0,
        },
        None,
    );
}

#[test]
fn malformed_calls_are_returned_as_content() {
    // Unterminated (EOS inside the call): started, then invalidated; its raw text is content.
    let raw = "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar";
    let log = [
        Log::Content("Sure.\n".into()),
        Log::Start(0, "get_weather".into()),
        Log::Invalid(0),
        Log::Content(raw.into()),
    ];
    let want = Expect {
        reasoning: "",
        content: &format!("Sure.\n{raw}"),
        calls: &[],
        finish: FinishReason::Stop,
        malformed: 1,
    };
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[T("Sure.\n"), T(raw), S(IM_END)],
        None,
        &want,
        Some(&log),
    );
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[T("Sure.\n"), S(TOOL_CALL), T(&raw[11..]), S(IM_END)],
        None,
        &want,
        Some(&log),
    );
    // Cut off by the generator's limit: the same, with "length".
    let want_len = Expect {
        finish: FinishReason::Length,
        ..want
    };
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[T("Sure.\n"), T(raw)],
        None,
        &want_len,
        Some(&log),
    );

    // No <function=…> header.
    let raw = "<tool_call>\nhello\n</tool_call>";
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[T(raw), T("\nok"), S(IM_END)],
        None,
        &Expect {
            reasoning: "",
            content: "<tool_call>\nhello\n</tool_call>\nok",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 1,
        },
        Some(&[Log::Content("<tool_call>\nhello\n</tool_call>\nok".into())]),
    );
    // A broken function name.
    let raw = "<tool_call>\n<function=get\nweather>\n</function>\n</tool_call>";
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[T(raw), S(IM_END)],
        None,
        &Expect {
            reasoning: "",
            content: raw,
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 1,
        },
        None,
    );
    // A valid call after a malformed one gets index 0.
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[
            T("<tool_call>oops</tool_call><tool_call>\n<function=f>\n</function>\n</tool_call>"),
            S(IM_END),
        ],
        None,
        &Expect {
            reasoning: "",
            content: "<tool_call>oops</tool_call>",
            calls: &[("f", "{}")],
            finish: FinishReason::ToolCalls,
            malformed: 1,
        },
        Some(&[
            Log::Content("<tool_call>oops</tool_call>".into()),
            Log::Start(0, "f".into()),
            Log::End(0, "f".into(), "{}".into()),
        ]),
    );
    // A stop string inside a call leaves it unterminated.
    let c = StreamConfig {
        stop_strings: vec!["STOP".into()],
        ..cfg()
    };
    check(
        &c,
        &non_thinking_prompt(),
        &[
            S(TOOL_CALL),
            T("\n<function=f>\n<parameter=a>\nxSTOPy\n</parameter>\n</function>\n"),
            S(END_TOOL_CALL),
            S(IM_END),
        ],
        None,
        &Expect {
            reasoning: "",
            content: "<tool_call>\n<function=f>\n<parameter=a>\nx",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 1,
        },
        None,
    );
}

#[test]
fn unknown_parameters_and_unparsable_values_stay_strings() {
    let tools = ToolSchemas::from_json(
        &json!([{"type": "function", "function": {"name": "f", "parameters": {"properties": {
            "n": {"type": "integer"}, "n2": {"type": "integer"}, "x": {"type": "number"}, "x2": {"type": "number"},
            "b": {"type": "boolean"}, "b2": {"type": "boolean"}, "o": {"type": "object"}, "s": {"type": "string"},
            "opt": {"anyOf": [{"type": "null"}, {"type": "integer"}]}
        }}}}]),
    );
    let body = "<tool_call>\n<function=f>\n<parameter=n>\n12abc\n</parameter>\n<parameter=n2>\n 7 \n</parameter>\n<parameter=x>\n2.0\n</parameter>\n<parameter=x2>\n1.5e3\n</parameter>\n<parameter=b>\nyes\n</parameter>\n<parameter=b2>\nFALSE\n</parameter>\n<parameter=o>\n{bad\n</parameter>\n<parameter=s>\nNULL\n</parameter>\n<parameter=extra>\n42\n</parameter>\n<parameter=opt>\n5\n</parameter>\n</function>\n</tool_call>";
    let args = r#"{"n":"12abc","n2":7,"x":2,"x2":1500,"b":"yes","b2":false,"o":"{bad","s":null,"extra":"42","opt":5}"#;
    let c = StreamConfig { tools, ..cfg() };
    check(
        &c,
        &non_thinking_prompt(),
        &[T(body), S(IM_END)],
        None,
        &Expect {
            reasoning: "",
            content: "",
            calls: &[("f", args)],
            finish: FinishReason::ToolCalls,
            malformed: 0,
        },
        None,
    );

    // Without schemas every value is a string except null.
    assert_eq!(convert_param("42", None), json!("42"));
    assert_eq!(convert_param("null", None), json!(null));
    assert_eq!(convert_param("3.5", Some("number")), json!(3.5));
    assert_eq!(convert_param("-4", Some("int64")), json!(-4));
    assert_eq!(convert_param("inf", Some("number")), json!("inf"));
    assert_eq!(
        convert_param("[1, {\"a\": [2]}]", Some("array")),
        json!([1, {"a": [2]}])
    );
    assert_eq!(convert_param(" x ", Some("string")), json!(" x "));
    // Bare function objects are accepted as schemas.
    let s = ToolSchemas::from_json(
        &json!([{"name": "g", "parameters": {"properties": {"k": {"type": "Integer"}}}}]),
    );
    assert_eq!(s.param_type("g", "k"), Some("integer"));
    assert_eq!(s.param_type("g", "zz"), None);
    assert_eq!(s.param_type("nope", "k"), None);
}

#[test]
fn tool_calls_inside_reasoning_are_not_parsed() {
    let segs = [
        T("maybe <tool_call>\n<function=f>\n</function>\n</tool_call> or "),
        S(TOOL_CALL),
        T("x"),
        S(END_THINK),
        T("\n\nNo call."),
        S(IM_END),
    ];
    check(
        &cfg(),
        &thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "maybe <tool_call>\n<function=f>\n</function>\n</tool_call> or <tool_call>x",
            content: "\n\nNo call.",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
}

#[test]
fn bare_function_blocks_and_json_bodies() {
    let segs = [
        T("Ok. <function=f>\n<parameter=a>\n1\n</parameter>\n</function> done"),
        S(IM_END),
    ];
    check(
        &cfg(),
        &non_thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "",
            content: "Ok.  done",
            calls: &[("f", r#"{"a":"1"}"#)],
            finish: FinishReason::ToolCalls,
            malformed: 0,
        },
        None,
    );
    let c = StreamConfig {
        bare_function_calls: false,
        ..cfg()
    };
    check(
        &c,
        &non_thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "",
            content: "Ok. <function=f>\n<parameter=a>\n1\n</parameter>\n</function> done",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
    let c = StreamConfig {
        tool_calls: false,
        ..cfg()
    };
    check(
        &c,
        &non_thinking_prompt(),
        &[
            S(TOOL_CALL),
            T("\n<function=f>\n</function>\n"),
            S(END_TOOL_CALL),
            S(IM_END),
        ],
        None,
        &Expect {
            reasoning: "",
            content: "<tool_call>\n<function=f>\n</function>\n</tool_call>",
            calls: &[],
            finish: FinishReason::Stop,
            malformed: 0,
        },
        None,
    );
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[
            S(TOOL_CALL),
            T("\n{\"name\": \"f\", \"arguments\": {\"b\": [1], \"a\": \"x\"}}\n"),
            S(END_TOOL_CALL),
            S(IM_END),
        ],
        None,
        &Expect {
            reasoning: "",
            content: "",
            calls: &[("f", r#"{"b":[1],"a":"x"}"#)],
            finish: FinishReason::ToolCalls,
            malformed: 0,
        },
        None,
    );
    // A missing </parameter> ends the value at the next parameter; a missing </function> is
    // accepted.
    check(
        &cfg(),
        &non_thinking_prompt(),
        &[
            T("<tool_call>\n<function=f>\n<parameter=a>\n1\n<parameter=b>\n2\n</tool_call>"),
            S(IM_END),
        ],
        None,
        &Expect {
            reasoning: "",
            content: "",
            calls: &[("f", r#"{"a":"1","b":"2"}"#)],
            finish: FinishReason::ToolCalls,
            malformed: 0,
        },
        None,
    );
}

#[test]
fn think_markers_inside_a_tool_call_are_literal_text() {
    let segs = [
        S(TOOL_CALL),
        T("\n<function=note>\n<parameter=text>\nuse "),
        S(THINK),
        T(" and "),
        S(END_THINK),
        T("\n</parameter>\n</function>\n"),
        S(END_TOOL_CALL),
        S(IM_END),
    ];
    check(
        &cfg(),
        &non_thinking_prompt(),
        &segs,
        None,
        &Expect {
            reasoning: "",
            content: "",
            calls: &[("note", r#"{"text":"use <think> and </think>"}"#)],
            finish: FinishReason::ToolCalls,
            malformed: 0,
        },
        None,
    );
}

#[test]
fn tool_call_parser_on_its_own() {
    let mut p = ToolCallParser::new(ToolSchemas::none(), false);
    let mut events = Vec::new();
    for piece in [
        "Hi <",
        "tool_",
        "call>\n<funct",
        "ion=ls>\n<parameter=dir>\n/tmp\n</param",
        "eter>\n</function>\n</tool_call",
        ">bye <",
    ] {
        events.extend(p.push(piece));
    }
    assert!(!p.in_call());
    events.extend(p.finish());
    let call = qwgpu_engine::text::toolcall::ToolCall {
        name: "ls".into(),
        arguments: r#"{"dir":"/tmp"}"#.into(),
    };
    assert_eq!(
        events,
        vec![
            ToolEvent::Content("Hi ".into()),
            ToolEvent::Start {
                index: 0,
                name: "ls".into()
            },
            ToolEvent::End {
                index: 0,
                call: call.clone()
            },
            ToolEvent::Content("bye ".into()),
            ToolEvent::Content("<".into()),
        ]
    );
    assert_eq!(p.calls(), [call]);
    assert_eq!(call_args(&p), json!({"dir": "/tmp"}));
}

fn call_args(p: &ToolCallParser) -> serde_json::Value {
    p.calls()[0].arguments_value()
}

#[test]
fn tokens_after_the_end_are_ignored() {
    let mut v = Vocab::new();
    let ids = tokenize(&mut v, &[T("ab"), S(IM_END), T("cd")], &[1]);
    let mut p = StreamParser::new(cfg(), &[]);
    let deltas: Vec<Delta> = ids.iter().map(|&id| p.push(&v, id)).collect();
    assert_eq!(deltas[0].content(), "a");
    assert_eq!(deltas[1].content(), "b");
    assert_eq!(deltas[2].finished, Some(FinishReason::Stop));
    assert!(deltas[3].is_empty());
    let (last, s) = p.finish(Some(FinishReason::Length));
    assert!(last.is_empty());
    assert_eq!(
        (s.content.as_str(), s.finish_reason, s.tokens),
        ("ab", FinishReason::Stop, 2)
    );
    // Special tokens other than EOS are hidden by default, shown on request.
    let ids = [v.intern(b"a"), IM_START, v.intern(b"b")];
    let r = run(&v, &cfg(), &[], &ids, None);
    assert_eq!(r.summary.content, "ab");
    let r = run(
        &v,
        &StreamConfig {
            skip_special: false,
            ..cfg()
        },
        &[],
        &ids,
        None,
    );
    assert_eq!(r.summary.content, "a<|im_start|>b");
}

// ---------------------------------------------------------------------------------------------
// 5. Random markup soup against reference models

/// Random streams built from marker fragments, split characters, invalid bytes and added
/// tokens. With the tool parser on and no call parsed, or with it off, content must equal the
/// lossy decoding of every shown token's bytes (no text lost or invented); with the reasoning
/// split on, each channel must equal the lossy decoding of its own runs of tokens between
/// markers. Every run also goes through `run`'s delta checks.
#[test]
fn random_streams_lose_no_text() {
    let mut v = Vocab::new();
    let plain: Vec<u32> = v.ids(&[
        b"<",
        b"<tool",
        b"_call>",
        b"</tool_call>",
        b"<function=",
        b"f>",
        b"<parameter=",
        b"a>",
        b"</parameter>",
        b"</function>",
        b"\n",
        b"x",
        b"\xF0\x9F",
        b"\x8E\x89",
        b"\xE4",
        b"\xBD\xA0",
        b"\xFF",
        b">",
        b"{\"k\": 1}",
        b"7",
        b"ST",
        b"OP",
    ]);
    let added = [TOOL_CALL, END_TOOL_CALL, THINK, END_THINK, IM_START];
    let tools = ToolSchemas::from_json(
        &json!([{"name": "f", "parameters": {"properties": {"a": {"type": "integer"}}}}]),
    );
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = |m: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % m as u64) as usize
    };
    let mut parsed_calls = 0;
    for round in 0..3000 {
        let len = 1 + next(40);
        let ids: Vec<u32> = (0..len)
            .map(|_| {
                if next(5) == 0 {
                    added[next(added.len())]
                } else {
                    plain[next(plain.len())]
                }
            })
            .collect();
        let shown = |id: u32| !v.is_special(id);
        let bytes_of = |ids: &[u32]| -> Vec<u8> {
            ids.iter()
                .filter(|&&id| shown(id))
                .flat_map(|&id| v.pieces[id as usize].clone())
                .collect()
        };
        match round % 3 {
            // Tool parser on, no reasoning split, no stop strings.
            0 => {
                let c = StreamConfig {
                    think_ids: None,
                    tools: tools.clone(),
                    ..cfg()
                };
                let r = run(&v, &c, &[], &ids, None);
                if r.summary.tool_calls.is_empty() {
                    assert_eq!(
                        r.summary.content,
                        String::from_utf8_lossy(&bytes_of(&ids)),
                        "{ids:?}"
                    );
                } else {
                    parsed_calls += 1;
                }
            }
            // Reasoning split only: a reference state machine over the ids.
            1 => {
                let c = StreamConfig {
                    tool_calls: false,
                    ..cfg()
                };
                let r = run(&v, &c, &[THINK], &ids, None);
                let (mut reasoning, mut content) = (String::new(), String::new());
                let mut thinking = true;
                let mut run_ids: Vec<u32> = Vec::new();
                let mut flush = |thinking: bool, run_ids: &mut Vec<u32>| {
                    let text = String::from_utf8_lossy(&bytes_of(run_ids)).into_owned();
                    if thinking {
                        reasoning.push_str(&text)
                    } else {
                        content.push_str(&text)
                    }
                    run_ids.clear();
                };
                for &id in &ids {
                    if (id == THINK && !thinking) || (id == END_THINK && thinking) {
                        flush(thinking, &mut run_ids);
                        thinking = id == THINK;
                    } else if id != THINK && id != END_THINK {
                        run_ids.push(id);
                    }
                }
                flush(thinking, &mut run_ids);
                assert_eq!(
                    (r.summary.reasoning.as_str(), r.summary.content.as_str()),
                    (reasoning.as_str(), content.as_str()),
                    "{ids:?}"
                );
            }
            // Everything on, with a stop string and trimming: the delta checks of `run`, and the
            // text never grows past what was generated.
            _ => {
                let c = StreamConfig {
                    stop_strings: vec!["STOP".into()],
                    tools: tools.clone(),
                    trim_newlines: round % 2 == 0,
                    ..cfg()
                };
                let r = run(&v, &c, &[THINK], &ids, None);
                let total = String::from_utf8_lossy(&bytes_of(&ids)).chars().count();
                let s = &r.summary;
                assert!(
                    s.content.chars().count() + s.reasoning.chars().count() <= total,
                    "{ids:?}"
                );
                if s.matched_stop.is_some() {
                    assert_eq!(
                        s.finish_reason,
                        if s.tool_calls.is_empty() {
                            FinishReason::Stop
                        } else {
                            FinishReason::ToolCalls
                        }
                    );
                }
            }
        }
    }
    assert!(parsed_calls > 0, "the soup contains some well-formed calls");
}
