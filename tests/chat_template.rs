//! Chat templates against Hugging Face transformers' `apply_chat_template`.
//!
//! tests/fixtures/tokenizer/chat_cases.json holds a matrix of conversations (system prompts,
//! multi-turn reasoning, tools and tool results, thinking on/off, preserve_thinking, content
//! parts); chat_expected.json holds transformers' rendered text and `tokenize=True` ids for each,
//! on the real Qwen3.6 tokenizer (tests/fixtures/qwen3.6-tokenizer: tokenizer.json and the
//! tokenizer_config.json chat template), or the error it raised. Our render + encode must give
//! the same ids (and text), with that tokenizer_config.json's template and with the built-in one. `QWGPU_TEXT_FIXTURES=<dir>` reads regenerated references.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qwgpu_engine::text::template::{ChatTemplate, BUILTIN_QWEN3_6};
use qwgpu_engine::text::{TextError, Tokenizer};
use serde_json::{json, Map, Value};

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

struct Case {
    name: String,
    messages: Vec<Value>,
    tools: Option<Vec<Value>>,
    add_generation_prompt: bool,
    kwargs: Map<String, Value>,
    /// transformers' output: Ok((text, ids)) or Err(the error it raised)
    expected: Result<(String, Vec<u32>), String>,
}

impl Case {
    fn render(&self, t: &ChatTemplate) -> Result<String, TextError> {
        t.render(
            &self.messages,
            self.tools.as_deref(),
            self.add_generation_prompt,
            &self.kwargs,
        )
    }
}

fn cases() -> &'static [Case] {
    static C: OnceLock<Vec<Case>> = OnceLock::new();
    C.get_or_init(|| {
        let read = |p: PathBuf| -> Value {
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
        };
        let inputs = read(repo().join("tests/fixtures/tokenizer/chat_cases.json"));
        let expected = read(fixtures_dir().join("chat_expected.json"));
        let expected = expected["cases"].as_array().unwrap();
        let inputs = inputs.as_array().unwrap();
        assert_eq!(inputs.len(), expected.len());
        inputs
            .iter()
            .zip(expected)
            .map(|(c, e)| {
                assert_eq!(c["name"], e["name"]);
                let expected = match e.get("error") {
                    Some(err) => Err(err.as_str().unwrap().to_string()),
                    None => Ok((
                        e["text"].as_str().unwrap().to_string(),
                        e["ids"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_u64().unwrap() as u32)
                            .collect(),
                    )),
                };
                Case {
                    name: c["name"].as_str().unwrap().to_string(),
                    messages: c["messages"].as_array().unwrap().clone(),
                    tools: c["tools"].as_array().cloned(),
                    add_generation_prompt: c["add_generation_prompt"].as_bool().unwrap(),
                    kwargs: c["kwargs"].as_object().unwrap().clone(),
                    expected,
                }
            })
            .collect()
    })
}

fn checkpoint_template() -> ChatTemplate {
    let t = ChatTemplate::from_model_dir(qwen_dir()).unwrap();
    assert!(
        t.source().ends_with("tokenizer_config.json"),
        "{}",
        t.source()
    );
    t
}

/// Renders every case with `t` and compares ids (and text) with transformers.
fn check_matrix(t: &ChatTemplate) {
    let mut checked = 0;
    for c in cases() {
        let Ok((want_text, want_ids)) = &c.expected else {
            continue;
        };
        let text = c.render(t).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let ids = tok().encode(&text, true).unwrap();
        if ids != *want_ids {
            let at = text
                .char_indices()
                .zip(want_text.chars())
                .find(|((_, a), b)| a != b)
                .map(|((i, _), _)| i);
            panic!(
                "{} ({}): ids differ from transformers\nfirst text difference at byte {at:?}\n--- ours\n{text}\n--- transformers\n{want_text}",
                c.name,
                t.source()
            );
        }
        assert_eq!(&text, want_text, "{}", c.name);
        checked += 1;
    }
    assert!(checked >= 20, "{checked} cases");
}

#[test]
fn checkpoint_template_matches_transformers() {
    check_matrix(&checkpoint_template());
}

#[test]
fn builtin_template_matches_transformers() {
    let t = ChatTemplate::builtin_qwen3_6();
    assert!(t.is_builtin());
    check_matrix(&t);
}

#[test]
fn builtin_and_checkpoint_templates_agree() {
    let ck = checkpoint_template();
    let builtin = ChatTemplate::builtin_qwen3_6();
    for c in cases() {
        match (c.render(&ck), c.render(&builtin)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", c.name),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{}: checkpoint {a:?} vs built-in {b:?}", c.name),
        }
    }
}

#[test]
fn template_errors_come_back_as_results() {
    let t = checkpoint_template();
    let mut n = 0;
    for c in cases() {
        let Err(theirs) = &c.expected else { continue };
        let ours = c.render(&t).expect_err(&c.name).to_string();
        eprintln!("{}: ours: {ours}\n    transformers: {theirs}", c.name);
        assert!(ours.starts_with("chat template ("), "{ours}");
        n += 1;
    }
    assert!(n >= 4);
    let case = |name: &str| cases().iter().find(|c| c.name == name).unwrap();
    let m = case("error_system_not_first")
        .render(&t)
        .unwrap_err()
        .to_string();
    assert!(m.contains("A system message is only allowed first"), "{m}");
    let m = case("error_unknown_role")
        .render(&t)
        .unwrap_err()
        .to_string();
    assert!(m.contains("narrator"), "{m}");
}

/// Spec §9: the generation prompt opens a think block, or an empty closed one without thinking.
#[test]
fn generation_prompt_ids() {
    let t = ChatTemplate::builtin_qwen3_6();
    let msgs = [json!({"role": "user", "content": "Hi"})];
    let on = tok()
        .encode(&t.render(&msgs, None, true, &Map::new()).unwrap(), true)
        .unwrap();
    assert!(
        on.ends_with(&[248046, 198, 248045, 74455, 198, 248068, 198]),
        "{on:?}"
    );
    let kw = json!({"enable_thinking": false})
        .as_object()
        .unwrap()
        .clone();
    let off = tok()
        .encode(&t.render(&msgs, None, true, &kw).unwrap(), true)
        .unwrap();
    assert!(
        off.ends_with(&[248045, 74455, 198, 248068, 271, 248069, 271]),
        "{off:?}"
    );
    assert_eq!(
        &on[..5],
        [248045, 846, 198, 12675, 248046],
        "<|im_start|>user\\nHi<|im_end|>"
    );
    let none = t.render(&msgs, None, false, &Map::new()).unwrap();
    assert_eq!(none, "<|im_start|>user\nHi<|im_end|>\n");
}

#[test]
fn request_form_and_argument_strings() {
    let t = ChatTemplate::builtin_qwen3_6();
    let call = |args: Value| {
        json!({"messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": args}}]}
        ], "add_generation_prompt": false, "chat_template_kwargs": {"enable_thinking": false}})
    };
    let as_object = t.render_request(&call(json!({"b": 1, "a": "x"}))).unwrap();
    let as_string = t
        .render_request(&call(json!("{\"b\": 1, \"a\": \"x\"}")))
        .unwrap();
    assert_eq!(as_object, as_string);
    assert!(
        as_object.contains("<parameter=b>\n1\n</parameter>\n<parameter=a>\nx\n</parameter>"),
        "{as_object}"
    );
    let e = t
        .render_request(&call(json!("{not json")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("messages[1].tool_calls[0]") && e.contains("not valid JSON"),
        "{e}"
    );
    let e = t
        .render_request(&json!({"messages": [1]}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("messages[0] is not an object"), "{e}");
    let e = t
        .render_request(&json!({"messages": [{"content": "x"}]}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("messages[0] has no string 'role'"), "{e}");
    let e = t
        .render_request(&json!({"msgs": []}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("'messages'"), "{e}");
}

#[test]
fn template_sources_in_a_model_dir() {
    let dir = std::env::temp_dir().join(format!("qwgpu-chat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let msgs = [json!({"role": "user", "content": "Hi"})];
    let render = |t: &ChatTemplate, tools: Option<&[Value]>| {
        t.render(&msgs, tools, true, &Map::new()).unwrap()
    };

    // Nothing: the built-in template.
    let t = ChatTemplate::from_model_dir(&dir).unwrap();
    assert!(t.is_builtin());

    // tokenizer_config.json with named templates and special tokens.
    let cfg = json!({"eos_token": {"content": "<E>"}, "bos_token": "<B>", "chat_template": [
        {"name": "default", "template": "{{ bos_token }}D{{ messages[0].content }}{{ eos_token }}"},
        {"name": "tool_use", "template": "T{{ tools | length }}"}]});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = ChatTemplate::from_model_dir(&dir).unwrap();
    assert_eq!(render(&t, None), "<B>DHi<E>");
    assert_eq!(render(&t, Some(&[json!({"type": "function"})])), "T1");

    // chat_template.jinja wins over tokenizer_config.json; special tokens still come from it.
    std::fs::write(
        dir.join("chat_template.jinja"),
        "J{{ eos_token }}{% for m in messages %}{{ m.role }}{% endfor %}\n",
    )
    .unwrap();
    let t = ChatTemplate::from_model_dir(&dir).unwrap();
    assert!(t.source().ends_with("chat_template.jinja"));
    assert_eq!(render(&t, None), "J<E>user");

    // A syntax error names the file and the line.
    std::fs::write(dir.join("chat_template.jinja"), "ok\n{% if %}").unwrap();
    let e = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
    assert!(
        e.contains("chat_template.jinja") && e.contains("syntax error") && e.contains(":2)"),
        "{e}"
    );
    std::fs::write(dir.join("tokenizer_config.json"), "{").unwrap();
    let e = ChatTemplate::from_model_dir(&dir).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer_config.json") && e.contains("not valid JSON"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What Hugging Face templates use beyond core Jinja: loop controls, namespace(), Python string
/// and dict methods, tojson like Python's json.dumps, raise_exception, slicing, loop.previtem.
#[test]
fn jinja_features_hf_templates_need() {
    let src = r#"{%- set ns = namespace(n=0) -%}
{%- for m in messages -%}{%- if loop.index0 > 1 %}{% break %}{% endif -%}{%- if m.role == 'skip' %}{% continue %}{% endif -%}
{%- set ns.n = ns.n + 1 -%}[{{ m.content.strip().upper() }}|{{ m.content.startswith(' a') }}|{{ m.content.split(',')[-1].lstrip() }}|{{ loop.previtem.role if loop.previtem else '-' }}]
{%- endfor -%}
{{ ns.n }} {{ messages[::-1][0].role }} {{ (messages[0].content | trim).endswith('b') }} {{ {'k': 'é', 'n': [1.0, none]} | tojson }} {{ {'x': 1}.items() | list | length }} {{ 'a\tb' | tojson(indent=2) }}"#;
    let t = ChatTemplate::new(src, "inline").unwrap();
    let msgs = [
        json!({"role": "user", "content": " a, b "}),
        json!({"role": "skip", "content": "x"}),
        json!({"role": "assistant", "content": "c"}),
    ];
    let out = t.render(&msgs, None, false, &Map::new()).unwrap();
    assert_eq!(
        out,
        r#"[A, B|True|b |-]1 assistant True {"k": "é", "n": [1.0, null]} 1 "a\tb""#
    );
    let t = ChatTemplate::new(
        "{{ raise_exception('bad ' ~ messages | length) }}",
        "inline",
    )
    .unwrap();
    let e = t
        .render(&msgs, None, false, &Map::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("the template raised: bad 3"), "{e}");
    // The built-in template text is the Qwen3.6 tokenizer_config.json's.
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(qwen_dir().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["chat_template"].as_str(), Some(BUILTIN_QWEN3_6));
}
