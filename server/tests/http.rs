//! The real `qwgpu-server` binary on loopback with the embedded default model, driven over raw
//! TCP (HTTP/1.1 written by hand): error statuses and bodies, static content, 20 concurrent
//! clients whose answers must equal the engine's own (run in this process through its library
//! API), a disconnect that frees the GPU, a full queue, the per-request time limit and a
//! graceful shutdown. No assertion depends on how fast the device is.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One server at a time: the queue tests need the GPU to themselves.
static GPU: Mutex<()> = Mutex::new(());

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qwgpu-server"))
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qwgpu-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.rsplit(':').next().unwrap().parse::<u16>().unwrap());
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(300))
            .expect("the server did not start");
        Server { child, port }
    }

    fn get(&self, path: &str) -> Resp {
        http(self.port, "GET", path, &[], None)
    }

    fn post(&self, path: &str, body: &Value) -> Resp {
        http_post(self.port, path, body)
    }

    /// SIGTERM, then the exit code.
    fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `data:` payloads of an event stream.
    fn events(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|b| {
                b.lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .map(str::to_string)
            })
            .collect()
    }
}

fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    s.write_all(&request_bytes(method, path, headers, body))
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// Asserts an OpenAI-style error: status, and which field it names (None: `param` is null).
fn assert_error(r: &Resp, status: u16, param: Option<&str>, code: Option<&str>) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let j = r.json();
    let e = &j["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
    assert!(e["type"].is_string(), "{j}");
    assert!(
        e.as_object().unwrap().contains_key("param") && e.as_object().unwrap().contains_key("code"),
        "{j}"
    );
    match param {
        Some(p) => assert_eq!(e["param"], p, "{j}"),
        None => assert!(e["param"].is_null(), "{j}"),
    }
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{j}");
    }
    j
}

/// The endpoint of a request body: completions when it has a `prompt`, else chat.
fn endpoint(r: &Value) -> &'static str {
    if r.get("prompt").is_some() {
        "/v1/completions"
    } else {
        "/v1/chat/completions"
    }
}

/// A POST of `body` as JSON on a new connection.
fn http_post(port: u16, path: &str, body: &Value) -> Resp {
    http(
        port,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

/// A connection that has sent a POST of `body` (a streamed request the caller reads or drops).
fn open_stream(port: u16, path: &str, body: &Value) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(&request_bytes(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        ))
        .unwrap();
    stream
}

fn chat(content: &str, extra: Value) -> Value {
    let mut b =
        json!({"model": "qwgpu-default", "messages": [{"role": "user", "content": content}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[test]
fn a_tokenizer_of_another_model_is_refused() {
    // The Qwen3.6 tokenizer (248,077 ids) next to a checkpoint whose embedding has 256 rows: the
    // server names both sizes and exits before reading any weight.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("qwgpu-server-mismatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        root.join("tests/fixtures/models/f32-q4-g64/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        root.join("tests/fixtures/qwen3.6-tokenizer/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_qwgpu-server"))
        .args(["--port", "0", "--model", dir.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("tokenizer.json") && err.contains("248077") && err.contains("256 rows"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_and_static_content() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let demo = std::env::temp_dir().join(format!("qwgpu-demo-{}", std::process::id()));
    std::fs::create_dir_all(demo.join("assets")).unwrap();
    std::fs::write(demo.join("index.html"), "<!doctype html><p>demo</p>").unwrap();
    std::fs::write(demo.join("assets/app.wasm"), b"\0asm").unwrap();
    let s = Server::start(&["--max-context", "64", "--demo-dir", demo.to_str().unwrap()]);
    let post_raw = |body: &[u8]| {
        http(
            s.port,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            Some(body),
        )
    };

    // Malformed JSON, not an object, empty body.
    assert_error(
        &post_raw(b"{\"messages\": [}"),
        400,
        None,
        Some("invalid_json"),
    );
    assert_error(&post_raw(b"[1, 2]"), 400, None, Some("invalid_json"));
    assert_error(&post_raw(b""), 400, None, Some("invalid_json"));
    // Missing fields.
    assert_error(
        &s.post("/v1/chat/completions", &json!({"model": "qwgpu-default"})),
        400,
        Some("messages"),
        Some("missing_required_parameter"),
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &json!({"messages": [{"content": "hi"}]}),
        ),
        400,
        Some("messages[0].role"),
        Some("missing_required_parameter"),
    );
    assert_error(
        &s.post("/v1/completions", &json!({"max_tokens": 3})),
        400,
        Some("prompt"),
        Some("missing_required_parameter"),
    );
    assert_error(
        &s.post("/v1/chat/completions", &json!({"messages": []})),
        400,
        Some("messages"),
        None,
    );
    // Wrong types.
    assert_error(
        &s.post("/v1/chat/completions", &json!({"messages": "hello"})),
        400,
        Some("messages"),
        Some("invalid_type"),
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"temperature": "warm"})),
        ),
        400,
        Some("temperature"),
        Some("invalid_type"),
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"max_tokens": 2.5})),
        ),
        400,
        Some("max_tokens"),
        Some("invalid_type"),
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"stream": "yes"})),
        ),
        400,
        Some("stream"),
        Some("invalid_type"),
    );
    assert_error(
        &s.post("/v1/chat/completions", &chat("hi", json!({"stop": [1, 2]}))),
        400,
        Some("stop[0]"),
        Some("invalid_type"),
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": 5}]}),
        ),
        400,
        Some("messages[0].content"),
        Some("invalid_type"),
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"tools": {"type": "function"}})),
        ),
        400,
        Some("tools"),
        Some("invalid_type"),
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat(
                "hi",
                json!({"chat_template_kwargs": {"enable_thinking": "no"}}),
            ),
        ),
        400,
        Some("chat_template_kwargs.enable_thinking"),
        None,
    );
    // Values out of range or unsupported.
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"temperature": 3.5})),
        ),
        400,
        Some("temperature"),
        Some("invalid_value"),
    );
    assert_error(
        &s.post("/v1/chat/completions", &chat("hi", json!({"top_p": 0}))),
        400,
        Some("top_p"),
        None,
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"max_tokens": 0})),
        ),
        400,
        Some("max_tokens"),
        None,
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"presence_penalty": 9})),
        ),
        400,
        Some("presence_penalty"),
        None,
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"logprobs": true, "top_logprobs": 50})),
        ),
        400,
        Some("top_logprobs"),
        None,
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"logit_bias": {"999999999": 1}})),
        ),
        400,
        Some("logit_bias.999999999"),
        None,
    );
    assert_error(
        &s.post("/v1/chat/completions", &chat("hi", json!({"n": 17}))),
        400,
        Some("n"),
        Some("invalid_value"),
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"response_format": {"type": "xml"}})),
        ),
        400,
        Some("response_format.type"),
        Some("unsupported_value"),
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "robot", "content": "x"}]}),
        ),
        400,
        Some("messages[0].role"),
        None,
    );
    assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat(
                "hi",
                json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            ),
        ),
        400,
        Some("tool_choice.function.name"),
        None,
    );
    assert_error(
        &s.post("/v1/completions", &json!({"prompt": [1, 999999999]})),
        400,
        Some("prompt[1]"),
        None,
    );
    // A system message after the first is refused by the Qwen template.
    let j = assert_error(
        &s.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]})),
        400,
        Some("messages"),
        None,
    );
    assert!(
        j["error"]["message"].as_str().unwrap().contains("template"),
        "{j}"
    );
    // Unknown model (404 naming it), unknown paths and methods.
    let j = assert_error(
        &s.post(
            "/v1/chat/completions",
            &chat("hi", json!({"model": "gpt-9"})),
        ),
        404,
        Some("model"),
        Some("model_not_found"),
    );
    assert!(j["error"]["message"].as_str().unwrap().contains("gpt-9"));
    assert_error(
        &s.post("/v1/completions", &json!({"model": "other", "prompt": "x"})),
        404,
        Some("model"),
        Some("model_not_found"),
    );
    assert_error(
        &s.get("/v1/models/gpt-9"),
        404,
        Some("model"),
        Some("model_not_found"),
    );
    assert_error(&s.get("/v1/nothing-here"), 404, None, Some("unknown_url"));
    assert_error(&s.get("/demo/../Cargo.toml"), 404, None, None);
    assert_error(
        &s.get("/v1/chat/completions"),
        405,
        None,
        Some("method_not_allowed"),
    );
    // The context limit is checked before any GPU work.
    let long = "word ".repeat(200);
    let j = assert_error(
        &s.post("/v1/chat/completions", &chat(&long, json!({}))),
        400,
        Some("messages"),
        Some("context_length_exceeded"),
    );
    assert!(
        j["error"]["message"].as_str().unwrap().contains("64"),
        "{j}"
    );
    assert_error(
        &s.post("/v1/completions", &json!({"prompt": long})),
        400,
        Some("prompt"),
        Some("context_length_exceeded"),
    );
    // An oversized body: 413 with the error body, whether the length is declared up front or the
    // body comes in chunks (the limit is 4 MiB by default).
    let oversized = |chunked: bool| -> Resp {
        let big = vec![b' '; 5 * 1024 * 1024];
        let mut stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let len = big.len().to_string();
        let framing = if chunked {
            ("Transfer-Encoding", "chunked")
        } else {
            ("Content-Length", len.as_str())
        };
        stream
            .write_all(&request_bytes(
                "POST",
                "/v1/completions",
                &[("Content-Type", "application/json"), framing],
                None,
            ))
            .unwrap();
        let mut w = stream.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            if chunked {
                for piece in big.chunks(64 * 1024) {
                    if w.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .and_then(|_| w.write_all(piece))
                        .and_then(|_| w.write_all(b"\r\n"))
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = w.write_all(b"0\r\n\r\n");
            } else {
                let _ = w.write_all(&big);
            }
        });
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let _ = writer.join();
        parse(&raw)
    };
    assert_error(&oversized(false), 413, None, Some("request_too_large"));
    assert_error(&oversized(true), 413, None, Some("request_too_large"));
    assert_eq!(
        s.metrics_value("qwgpu_requests_total{endpoint=\"/v1/completions\",status=\"413\"}"),
        2.0
    );

    // Endpoints that always work.
    let h = s.get("/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["demo"], true);
    assert_eq!(h.json()["max_context"], 64);
    let m = s.get("/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], "qwgpu-default");
    assert_eq!(
        s.get("/v1/models/qwgpu-default").json()["id"],
        "qwgpu-default"
    );
    let ui = s.get("/");
    assert_eq!(ui.status, 200);
    assert!(ui.header("content-type").unwrap().starts_with("text/html"));
    assert!(ui
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    assert!(ui.text().contains("/ui/app.js"));
    for remote in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "url(http",
        "@import",
    ] {
        assert!(
            !ui.text().contains(remote),
            "the UI must not load anything from elsewhere ({remote})"
        );
    }
    for (path, ty) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.header("content-type").unwrap().starts_with(ty), "{path}");
    }
    // The embedded default model's files, byte for byte.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "tokenizer.json",
        "model.safetensors",
    ] {
        let r = s.get(&format!("/models/default/{f}"));
        assert_eq!(r.status, 200, "{f}");
        assert_eq!(r.body, std::fs::read(root.join(f)).unwrap(), "{f}");
    }
    assert_error(&s.get("/models/default/secret.txt"), 404, None, None);
    // The demo directory.
    let d = s.get("/demo/");
    assert_eq!(d.status, 200);
    assert!(d.text().contains("demo"));
    let w = s.get("/demo/assets/app.wasm");
    assert_eq!(w.header("content-type"), Some("application/wasm"));
    assert_eq!(w.body, b"\0asm");
    assert_eq!(s.get("/demo").status, 308);
    let metrics = s.get("/metrics");
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    for name in [
        "qwgpu_requests_total",
        "qwgpu_generation_tokens_total",
        "qwgpu_decode_tokens_per_second",
        "qwgpu_time_to_first_token_seconds_bucket",
        "qwgpu_mtp_acceptance_ratio",
        "qwgpu_queue_depth",
    ] {
        assert!(
            metrics.text().contains(name),
            "{name} missing from /metrics"
        );
    }
    // No GPU work was done by any of the above.
    assert_eq!(s.metrics_value("qwgpu_generation_tokens_total"), 0.0);
    assert_eq!(s.metrics_value("qwgpu_prompt_tokens_total"), 0.0);
    // A prompt that nearly fills the context: max_tokens is cut to what is left (with and without
    // MTP, whose verify step looks one position ahead), and the reply ends with "length".
    let ids: Vec<u32> = (0..60).map(|i| 1000 + i).collect();
    for mtp in [true, false] {
        let r = s.post(
            "/v1/completions",
            &json!({"prompt": ids, "max_tokens": 100, "ignore_eos": true, "mtp": mtp}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        assert_eq!(j["usage"]["completion_tokens"], 4, "{j}");
        assert_eq!(j["choices"][0]["finish_reason"], "length");
        assert_eq!(j["timings"]["mtp"].is_object(), mtp, "{j}");
    }
    let _ = std::fs::remove_dir_all(&demo);
    assert_eq!(s.terminate(), Some(0));
}

impl Server {
    fn metrics_value(&self, series: &str) -> f64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .map(|v| v.trim().parse::<f64>().unwrap())
            })
            .unwrap_or(0.0)
    }
}

/// The reply of a completion as (reasoning, content); completions have only content.
fn reply_text(j: &Value) -> (String, String) {
    let c = &j["choices"][0];
    if let Some(t) = c["text"].as_str() {
        return (String::new(), t.to_string());
    }
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    (
        s(&c["message"]["reasoning_content"]),
        s(&c["message"]["content"]),
    )
}

/// What the engine itself produces for a request, run directly through its library API (default
/// model, plain greedy decoding, no MTP): the reference the server's answers must equal.
#[derive(Debug, PartialEq)]
struct Reference {
    reasoning: String,
    content: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish: &'static str,
}

fn engine_references(requests: &[Value], max_ctx: u32) -> Vec<Reference> {
    use qwgpu_engine::decode::text::{generate_text, TextRequest};
    use qwgpu_engine::default_model as dm;
    use qwgpu_engine::gpu::{Gpu, GpuOptions};
    use qwgpu_engine::model::{Session, SessionOptions};

    let gpu = pollster::block_on(Gpu::new(&GpuOptions {
        shader_checks: Some(false),
        ..Default::default()
    }))
    .expect("GPU");
    let model = std::sync::Arc::new(dm::load(gpu, &mut |_, _| {}).expect("default model"));
    let eos = model.config.eos_token_ids.clone();
    let mut session = pollster::block_on(Session::new(
        model,
        SessionOptions {
            max_ctx,
            prefill_chunk: 512,
            speculative: true,
            ..Default::default()
        },
    ))
    .expect("session");
    let tok = dm::tokenizer().expect("tokenizer");
    let template = dm::template().expect("template");
    requests
        .iter()
        .map(|r| {
            let mut stream = tok.stream_config(&eos);
            stream.tool_calls = false;
            if let Some(stop) = r["stop"].as_array() {
                stream.stop_strings = stop
                    .iter()
                    .map(|v| v.as_str().expect("stop").to_string())
                    .collect();
            }
            let prompt = if let Some(messages) = r["messages"].as_array() {
                // Chat: the template's thinking prompt; reasoning and content without the newlines
                // around </think>.
                stream.trim_newlines = true;
                let kwargs = r["chat_template_kwargs"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let text = template
                    .render(messages, None, true, &kwargs)
                    .expect("render");
                tok.encode(&text, true).expect("encode")
            } else {
                // Raw completion: everything is content.
                stream.think_ids = None;
                tok.encode(r["prompt"].as_str().expect("prompt"), true)
                    .expect("encode")
            };
            let req = TextRequest {
                prompt: prompt.clone(),
                max_tokens: r["max_tokens"].as_u64().expect("max_tokens") as usize,
                stream,
                ignore_eos: r["ignore_eos"].as_bool().unwrap_or(false),
                mtp: false,
                mtp_adaptive: false,
                sampling: None,
                logprobs: false,
                in_context: 0,
            };
            session.reset();
            let out = pollster::block_on(generate_text(&mut session, &tok, &req, &mut |_| true))
                .expect("generate");
            Reference {
                reasoning: out.summary.reasoning,
                content: out.summary.content,
                prompt_tokens: prompt.len(),
                completion_tokens: out.tokens.len(),
                finish: out.summary.finish_reason.as_str(),
            }
        })
        .collect()
}

/// What the server answered, in the reference's terms.
fn answer(j: &Value) -> Reference {
    let (reasoning, content) = reply_text(j);
    let finish = match j["choices"][0]["finish_reason"].as_str() {
        Some("stop") => "stop",
        Some("length") => "length",
        Some("tool_calls") => "tool_calls",
        other => panic!("unexpected finish_reason {other:?} in {j}"),
    };
    Reference {
        reasoning,
        content,
        prompt_tokens: j["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        completion_tokens: j["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        finish,
    }
}

/// Reads a streamed response until it has shown `n` reasoning or content deltas (a chat stream's
/// first chunk, the assistant role with empty content, counts as one).
fn read_deltas(stream: &mut TcpStream, n: usize) -> String {
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\"reasoning\":").count() + seen.matches("\"content\":\"").count() < n {
        let k = stream.read(&mut buf).unwrap();
        assert!(k > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..k]));
    }
    seen
}

#[test]
fn concurrent_clients_and_disconnect() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    // Five different requests (chat with thinking, one of them with MTP, and raw completions),
    // answered by the engine directly first.
    let requests: Vec<Value> = vec![
        chat(
            "Question number 0: what is 0 plus 0?",
            json!({"max_tokens": 3}),
        ),
        json!({"model": "qwgpu-default", "prompt": "Story 1: once upon a time", "max_tokens": 3}),
        chat(
            "Question number 2: what is 2 plus 2?",
            json!({"max_tokens": 3, "mtp": true}),
        ),
        json!({"model": "qwgpu-default", "prompt": "The capital of France is", "max_tokens": 3}),
        chat(
            "Question number 4, no thinking.",
            json!({"max_tokens": 3, "chat_template_kwargs": {"enable_thinking": false}}),
        ),
    ];
    let max_ctx = 4096;
    let expected = engine_references(&requests, max_ctx);
    // (A short chat reply may be all markup, e.g. an empty think block, so not every reference
    // need show text; most must.)
    assert!(
        expected.iter().all(|e| e.completion_tokens > 0),
        "{expected:?}"
    );
    assert!(
        expected
            .iter()
            .filter(|e| e.reasoning.len() + e.content.len() > 0)
            .count()
            >= 3,
        "{expected:?}"
    );
    let distinct: std::collections::HashSet<(&str, &str)> = expected
        .iter()
        .map(|e| (e.reasoning.as_str(), e.content.as_str()))
        .collect();
    assert!(
        distinct.len() >= 3,
        "the requests should not all get the same reply: {expected:?}"
    );
    assert!(
        !expected[4].content.is_empty() && expected[4].reasoning.is_empty(),
        "thinking off: the reply is content ({:?})",
        expected[4]
    );

    let s = Server::start(&["--max-context", &max_ctx.to_string(), "--queue", "32"]);
    let path = endpoint;
    // One request alone.
    let alone = s.post(path(&requests[0]), &requests[0]);
    assert_eq!(alone.status, 200, "{}", alone.text());
    assert_eq!(answer(&alone.json()), expected[0]);

    // A long streamed generation holds the GPU while 20 clients connect: all 20 must queue.
    let max_long = 3000u64;
    let long = chat(
        "Tell me a very long story.",
        json!({"max_tokens": max_long, "ignore_eos": true, "stream": true, "mtp": false}),
    );
    let mut blocker = open_stream(s.port, "/v1/chat/completions", &long);
    read_deltas(&mut blocker, 2);
    let tokens_before = s.metrics_value("qwgpu_generation_tokens_total");
    let handles: Vec<_> = (0..20)
        .map(|k| {
            let r = requests[k % requests.len()].clone();
            let port = s.port;
            std::thread::spawn(move || (k, http_post(port, endpoint(&r), &r)))
        })
        .collect();
    let t = Instant::now();
    while s.metrics_value("qwgpu_queue_depth") < 20.0 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the 20 requests never all queued (depth {})",
            s.metrics_value("qwgpu_queue_depth")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        handles.iter().all(|h| !h.is_finished()),
        "a queued request was answered while the GPU was busy"
    );
    // The streaming client goes away: its generation stops and the queue runs.
    drop(blocker);
    let mut answered = 0;
    for h in handles {
        let (k, resp) = h.join().unwrap();
        assert_eq!(resp.status, 200, "client {k}: {}", resp.text());
        let got = answer(&resp.json());
        assert_eq!(got, expected[k % requests.len()], "client {k}");
        answered += got.completion_tokens as u64;
    }
    assert_eq!(s.metrics_value("qwgpu_generations_cancelled_total"), 1.0);
    assert_eq!(s.metrics_value("qwgpu_queue_depth"), 0.0);
    // Tokens generated since the 20 connected: theirs, plus whatever the cancelled one produced
    // before it noticed (far fewer than it asked for).
    let cancelled_tokens =
        s.metrics_value("qwgpu_generation_tokens_total") - tokens_before - answered as f64;
    assert!(
        cancelled_tokens >= 0.0 && cancelled_tokens < (max_long / 2) as f64,
        "the cancelled request generated {cancelled_tokens} more tokens"
    );
    let finished: f64 = ["stop", "length"]
        .iter()
        .map(|r| s.metrics_value(&format!("qwgpu_generations_total{{finish_reason=\"{r}\"}}")))
        .sum();
    assert_eq!(finished, 22.0, "1 alone + 20 + the cancelled one");

    // A disconnect while the reply streams, with nothing queued: the next request is answered
    // (the GPU was freed) and equals the engine's answer (the session state was reset).
    let mut stream = open_stream(s.port, "/v1/chat/completions", &long);
    read_deltas(&mut stream, 4);
    drop(stream);
    let next = s.post(path(&requests[2]), &requests[2]);
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(answer(&next.json()), expected[2]);
    assert_eq!(s.metrics_value("qwgpu_generations_cancelled_total"), 2.0);

    // Streamed with MTP, the chunks carry the running draft counts, live; off, they do not.
    for (p, body) in [
        (
            "/v1/chat/completions",
            chat(
                "Count slowly.",
                json!({"max_tokens": 48, "ignore_eos": true, "stream": true, "mtp": true, "stream_options": {"include_usage": true}}),
            ),
        ),
        (
            "/v1/completions",
            json!({"prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": true, "stream": true, "mtp": true}),
        ),
    ] {
        let r = s.post(p, &body);
        assert_eq!(r.status, 200, "{}", r.text());
        check_running_mtp(p, &r.events());
    }
    let off = s.post(
        "/v1/chat/completions",
        &chat(
            "Count slowly.",
            json!({"max_tokens": 8, "stream": true, "mtp": false}),
        ),
    );
    assert!(
        off.events()
            .iter()
            .filter(|e| *e != "[DONE]")
            .all(|e| serde_json::from_str::<Value>(e)
                .unwrap()
                .get("mtp")
                .is_none()),
        "{}",
        off.text()
    );
    assert_eq!(s.terminate(), Some(0));
}

/// The running MTP counts of a streamed reply: present on the choice chunks once a verify step
/// ran, updated while it streams, never decreasing, and the last equal to the final `timings.mtp`.
fn check_running_mtp(path: &str, events: &[String]) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{path}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let (mut last, mut updates, mut final_stats) = ((0u64, 0u64), 0, None);
    for c in &chunks {
        assert!(c["choices"].is_array(), "{path}: {c}");
        if let Some(t) = c.get("timings") {
            let m = &t["mtp"];
            let f = (
                m["drafted"].as_u64().unwrap(),
                m["accepted"].as_u64().unwrap(),
            );
            assert!(
                final_stats.is_none() || final_stats == Some(f),
                "{path}: timings differ between chunks: {c}"
            );
            final_stats = Some(f);
        }
        let with_choices = !c["choices"].as_array().unwrap().is_empty();
        let Some(m) = c.get("mtp") else {
            assert!(
                !with_choices || last == (0, 0),
                "{path}: a chunk after the counts started lacks them: {c}"
            );
            continue;
        };
        assert!(
            with_choices,
            "{path}: the counts ride on choice chunks: {c}"
        );
        let now = (
            m["drafted"].as_u64().unwrap(),
            m["accepted"].as_u64().unwrap(),
        );
        assert!(
            now.1 <= now.0 && now.0 >= last.0 && now.1 >= last.1,
            "{path}: the counts went from {last:?} to {now:?}"
        );
        if now != last {
            updates += 1;
        }
        last = now;
    }
    let final_stats = final_stats.unwrap_or_else(|| panic!("{path}: no timings"));
    assert!(final_stats.0 > 0, "{path}: {final_stats:?}");
    assert_eq!(
        last, final_stats,
        "{path}: the last running counts differ from the final ones"
    );
    assert!(
        updates >= 2,
        "{path}: the counts should update while the reply streams ({updates} updates)"
    );
}

#[test]
fn full_queue_time_limit_and_graceful_shutdown() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    // A long context, so only the time limit can end these generations early on any device.
    let limited = Server::start(&["--max-context", "8192", "--timeout-s", "5"]);
    // The time limit: a long generation ends with "length" when the limit is reached.
    let r = limited.post(
        "/v1/chat/completions",
        &chat(
            "Count to a thousand.",
            json!({"max_tokens": 8000, "ignore_eos": true, "mtp": false}),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["choices"][0]["finish_reason"], "length");
    assert_eq!(j["timings"]["cut_short"], true);
    let n = j["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n > 0 && n < 8000, "{j}");
    assert_eq!(
        limited.metrics_value("qwgpu_generations_timed_out_total"),
        1.0
    );
    drop(limited);

    // The queue and the shutdown on a server without a time limit (on a CPU adapter the default
    // model's prefill alone can take most of 5 s, and these requests must be seen streaming).
    let s = Server::start(&[
        "--max-context",
        "8192",
        "--queue",
        "1",
        "--shutdown-grace-s",
        "2",
    ]);
    // One running, one waiting, the next one gets 429 with Retry-After.
    let long = chat(
        "A long answer please.",
        json!({"max_tokens": 8000, "ignore_eos": true, "stream": true, "mtp": false}),
    );
    let mut running = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    running
        .write_all(&request_bytes(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(long.to_string().as_bytes()),
        ))
        .unwrap();
    read_deltas(&mut running, 2); // the role chunk, then a generated delta: the job is running
    let port = s.port;
    let waiting = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/v1/chat/completions",
            &[],
            Some(
                chat("queued", json!({"max_tokens": 1}))
                    .to_string()
                    .as_bytes(),
            ),
        )
    });
    let t = Instant::now();
    while s.metrics_value("qwgpu_queue_depth") < 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the second request never queued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = s.post(
        "/v1/chat/completions",
        &chat("one too many", json!({"max_tokens": 1})),
    );
    assert_error(&r, 429, None, Some("queue_full"));
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(
        s.metrics_value("qwgpu_rejected_total{reason=\"queue_full\"}"),
        1.0
    );
    // The running client goes away; the queued request runs next.
    drop(running);
    let queued = waiting.join().unwrap();
    assert_eq!(queued.status, 200, "{}", queued.text());

    // Graceful shutdown: SIGTERM while streaming; the stream still ends properly, exit code 0.
    let mut stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    let req = chat(
        "Talk.",
        json!({"max_tokens": 8000, "ignore_eos": true, "stream": true, "mtp": false, "stream_options": {"include_usage": true}}),
    );
    stream
        .write_all(&request_bytes(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(req.to_string().as_bytes()),
        ))
        .unwrap();
    let seen = read_deltas(&mut stream, 2);
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        seen + &rest
    });
    assert_eq!(
        s.terminate(),
        Some(0),
        "the server should exit 0 on SIGTERM"
    );
    let body = reader.join().unwrap();
    let resp = parse(body.as_bytes());
    let events = resp.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    let finals: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .collect();
    // Cut by the shutdown's grace period: "length", marked cut short.
    assert!(
        finals
            .iter()
            .any(|e| e["choices"][0]["finish_reason"] == "length"
                && e["timings"]["cut_short"] == true),
        "{body}"
    );
    assert!(
        finals
            .iter()
            .any(|e| e["usage"]["completion_tokens"].as_u64().is_some()),
        "{body}"
    );
}

#[test]
fn a_conversation_reuses_the_state_of_its_last_request() {
    use qwgpu_engine::default_model as dm;
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start(&[]);
    let kwargs = json!({"enable_thinking": false});
    let mut messages: Vec<Value> = Vec::new();
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    let mut cached = Vec::new();
    for q in ["Hello there.", "What is Rust?", "And what is cargo?"] {
        messages.push(json!({"role": "user", "content": q}));
        let body = json!({"model": "qwgpu-default", "messages": messages, "max_tokens": 6,
            "chat_template_kwargs": kwargs});
        let r = server.post("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let j = r.json();
        cached.push(
            j["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap() as usize,
        );
        answers.push(answer(&j));
        let (_, content) = reply_text(&j);
        messages.push(json!({"role": "assistant", "content": content}));
        requests.push(body);
    }
    // The same answers as the engine prefilling every prompt whole.
    assert_eq!(answers, engine_references(&requests, 4096));
    // Request 2 restores the state after request 1's user message (the ids the template renders
    // alike in both), request 3 the state after request 2's.
    let tok = dm::tokenizer().expect("tokenizer");
    let tpl = dm::template().expect("template");
    let kw = kwargs.as_object().unwrap().clone();
    let upto = |n: usize| -> usize {
        let text = tpl
            .render(&messages[..n], None, false, &kw)
            .expect("render");
        tok.encode(&text, true).expect("encode").len()
    };
    assert_eq!(cached, vec![0, upto(1), upto(3)]);
    let metrics = server.get("/metrics").text();
    let counter = metrics
        .lines()
        .find_map(|l| l.strip_prefix("qwgpu_prompt_tokens_cached_total "))
        .and_then(|v| v.trim().parse::<usize>().ok());
    assert_eq!(counter, Some(upto(1) + upto(3)), "{metrics}");
    // Another conversation shares nothing; after it the first one's entries are still there:
    // request 3 again reuses its own prompt up to its last message.
    let other = chat("Something else entirely.", json!({"max_tokens": 2}));
    let j = server.post("/v1/chat/completions", &other).json();
    assert_eq!(j["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let j = server.post("/v1/chat/completions", &requests[2]).json();
    assert_eq!(
        j["usage"]["prompt_tokens_details"]["cached_tokens"],
        upto(5) as u64
    );
    assert_eq!(answer(&j), answers[2]);
    drop(server);

    // --prompt-cache-entries 0: nothing reused, the same answers.
    let server = Server::start(&["--prompt-cache-entries", "0"]);
    for (i, body) in requests.iter().enumerate() {
        let j = server.post("/v1/chat/completions", body).json();
        assert_eq!(j["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(answer(&j), answers[i]);
    }
}

#[test]
fn a_long_prompt_joins_the_batch_between_the_steps_of_a_running_reply() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    // A streamed reply decodes in the batch when a chat request with a long system prompt
    // arrives (`--join-slice 24`): its prompt is prefilled a slice at a time with a step of the
    // stream between two slices (counted in /metrics), recording the prompt cache's entries
    // (the shared system prompt, the conversation) on the way, and both replies are their lone
    // answers, so the running reply neither stalls for the whole prompt nor changes. A second
    // conversation with the same system prompt then reuses its entry.
    let long = json!({"model": "qwgpu-default", "prompt": "The Rust programming language",
                      "max_tokens": 100, "ignore_eos": true, "stream": true, "mtp": false});
    let system: String = (0..12)
        .map(|i| format!("Rule {i}: the quick brown fox jumps over the lazy dog. "))
        .collect();
    let ask = |q: &str| {
        json!({"model": "qwgpu-default", "max_tokens": 8, "mtp": false,
               "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]})
    };
    let (first, second) = (
        ask("Which rule comes first?"),
        ask("How many rules are there?"),
    );
    let max_ctx = 2048;
    let refs = engine_references(&[long.clone(), first.clone(), second.clone()], max_ctx);
    let slice = 24;
    let s = Server::start(&[
        "--max-context",
        &max_ctx.to_string(),
        "--batch",
        "2",
        "--prefill-chunk",
        "16",
        "--join-slice",
        &slice.to_string(),
    ]);
    let mut stream = open_stream(s.port, "/v1/completions", &long);
    let mut raw = read_chunks(&mut stream, 3);
    let r = s.post("/v1/chat/completions", &first);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = answer(&r.json());
    assert_eq!(got, refs[1], "the newcomer's reply");
    assert!(
        got.prompt_tokens > 6 * slice,
        "{} prompt tokens",
        got.prompt_tokens
    );
    // Every slice of the newcomer's prompt (all of it but its last id) ran beside the stream.
    let slices = (got.prompt_tokens - 1).div_ceil(slice) as f64;
    assert_eq!(s.metrics_value("qwgpu_batch_join_slices_total"), slices);
    // A joining client that leaves after its first slice: the join ends there, the stream goes
    // on unchanged.
    let gone_prompt: String = (0..24)
        .map(|i| format!("Entry {i} of a long list. "))
        .collect();
    let gone =
        json!({"model": "qwgpu-default", "prompt": gone_prompt, "max_tokens": 4, "mtp": false});
    let conn = open_stream(s.port, "/v1/completions", &gone);
    let t = Instant::now();
    while s.metrics_value("qwgpu_batch_join_slices_total") == slices {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the join did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(conn);
    stream.read_to_end(&mut raw).unwrap();
    assert_eq!(streamed_text(&raw), refs[0].content, "the running reply");
    assert_eq!(s.metrics_value("qwgpu_generations_cancelled_total"), 1.0);
    let gone_slices = s.metrics_value("qwgpu_batch_join_slices_total") - slices;
    assert!(
        (1.0..6.0).contains(&gone_slices),
        "{gone_slices} slices of the departed client's prompt ran"
    );
    // The system prompt's entry, recorded on the way, serves another conversation.
    let r = s.post("/v1/chat/completions", &second);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(answer(&j), refs[2], "the second conversation");
    let cached = j["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0) as usize;
    assert!(
        cached > 4 * slice && cached < got.prompt_tokens,
        "{cached} cached tokens of {}",
        got.prompt_tokens
    );
}

#[test]
fn a_stream_above_a_free_slot_moves_down() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    // Two streamed replies decode in slots 0 and 1 (`--batch 4`); the first ends, and the one
    // left in slot 1 moves into slot 0 (counted in /metrics), so its steps run one row; a
    // sampled reply moved that way keeps its draws. Each reply is its lone answer.
    let first = json!({"model": "qwgpu-default", "prompt": "One two three", "max_tokens": 30,
                       "ignore_eos": true, "stream": true, "mtp": false});
    let second = json!({"model": "qwgpu-default", "prompt": "The Rust programming language",
                        "max_tokens": 90, "ignore_eos": true, "stream": true, "mtp": false,
                        "temperature": 0.8, "seed": 3});
    let s = Server::start(&["--max-context", "1024", "--batch", "4"]);
    // The lone answers (one request at a time).
    let lone: Vec<String> = [&first, &second]
        .iter()
        .map(|r| {
            let mut raw = Vec::new();
            open_stream(s.port, "/v1/completions", r)
                .read_to_end(&mut raw)
                .unwrap();
            streamed_text(&raw)
        })
        .collect();
    assert_eq!(s.metrics_value("qwgpu_batch_moves_total"), 0.0);
    let mut a = open_stream(s.port, "/v1/completions", &first);
    let mut raw_a = read_chunks(&mut a, 2);
    let mut raw_b = Vec::new();
    open_stream(s.port, "/v1/completions", &second)
        .read_to_end(&mut raw_b)
        .unwrap();
    a.read_to_end(&mut raw_a).unwrap();
    assert_eq!(streamed_text(&raw_a), lone[0], "the first reply");
    assert_eq!(streamed_text(&raw_b), lone[1], "the reply that moved");
    assert_eq!(s.metrics_value("qwgpu_batch_moves_total"), 1.0);
}

#[test]
fn a_stream_left_alone_in_the_batch_speculates_again() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    // Requests that ask for MTP join the batch beside a plain streamed reply (`--batch 2`);
    // when that one ends, the one left alone leaves the batch and continues alone with
    // speculation (its prompt and tokens so far fed again, the prompt from the cache): a
    // streamed completion and a chat with thinking that is not streamed (its reasoning and
    // content whole, the batched part included) each give their greedy reply alone, with the
    // counts of their speculative part; the streamed counts never go back.
    let companion = json!({"model": "qwgpu-default", "prompt": "One two three", "max_tokens": 12,
                           "ignore_eos": true, "stream": true, "mtp": false});
    let long = json!({"model": "qwgpu-default", "prompt": "The Rust programming language",
                      "max_tokens": 100, "ignore_eos": true, "stream": true, "mtp": true});
    let asked = chat(
        "Question number 7: what is 7 plus 7?",
        json!({"max_tokens": 90, "mtp": true}),
    );
    let max_ctx = 1024;
    let refs = engine_references(&[long.clone(), asked.clone()], max_ctx);
    assert!(
        refs[1].completion_tokens > 40,
        "the chat's reply is too short to outlast its companion: {:?}",
        refs[1]
    );
    let s = Server::start(&["--max-context", &max_ctx.to_string(), "--batch", "2"]);
    let mut c = open_stream(s.port, "/v1/completions", &companion);
    let mut raw_c = read_chunks(&mut c, 2);
    let mut raw = Vec::new();
    open_stream(s.port, "/v1/completions", &long)
        .read_to_end(&mut raw)
        .unwrap();
    c.read_to_end(&mut raw_c).unwrap();
    assert_eq!(streamed_text(&raw), refs[0].content, "the streamed reply");
    let events = parse(&raw).events();
    check_running_mtp("/v1/completions", &events);
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    let drafted = last["timings"]["mtp"]["drafted"].as_u64().unwrap_or(0);
    assert!(drafted > 0, "no speculation after the batch: {last}");
    assert_eq!(s.metrics_value("qwgpu_batch_resumes_total"), 1.0);
    assert_eq!(s.metrics_value("qwgpu_batch_handoffs_total"), 0.0);
    assert!(!streamed_text(&raw_c).is_empty());

    let mut c = open_stream(s.port, "/v1/completions", &companion);
    let mut raw_c = read_chunks(&mut c, 2);
    let r = s.post("/v1/chat/completions", &asked);
    c.read_to_end(&mut raw_c).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answer(&r.json()), refs[1], "the chat's reply");
    assert!(
        r.json()["timings"]["mtp"]["drafted"]
            .as_u64()
            .is_some_and(|d| d > 0),
        "{}",
        r.text()
    );
    assert_eq!(s.metrics_value("qwgpu_batch_resumes_total"), 2.0);
    // Alone after the batch's work (the session's last prefill had no MTP cache), a request
    // that asks for MTP speculates from its start: it never enters the batch.
    let lone_steps = "qwgpu_batch_steps_total{streams=\"1\"}";
    let steps = s.metrics_value(lone_steps);
    let r = s.post("/v1/chat/completions", &asked);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answer(&r.json()), refs[1], "the lone chat's reply");
    assert_eq!(s.metrics_value("qwgpu_batch_resumes_total"), 2.0);
    assert_eq!(s.metrics_value(lone_steps), steps);
}

/// What `stream` sends until `chunks` text chunks have come (the stream must not end first).
fn read_chunks(stream: &mut TcpStream, chunks: usize) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while raw.windows(7).filter(|w| w == b"\"text\":").count() < chunks {
        let k = stream.read(&mut buf).unwrap();
        assert!(
            k > 0,
            "the stream ended early: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..k]);
    }
    raw
}

/// The text of a streamed completion's chunks.
fn streamed_text(raw: &[u8]) -> String {
    let events = parse(raw).events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn batched_clients_get_their_lone_answers() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    // Greedy requests (chat with thinking, one asking for MTP, raw completions) that decode
    // together under `--batch 4` (steps of up to four streams: the 4-token tiles): each answer
    // must equal the engine's own for it alone.
    let requests: Vec<Value> = vec![
        chat(
            "Question number 0: what is 0 plus 0?",
            json!({"max_tokens": 6}),
        ),
        json!({"model": "qwgpu-default", "prompt": "Story 1: once upon a time", "max_tokens": 7}),
        chat(
            "Question number 2: what is 2 plus 2?",
            json!({"max_tokens": 5, "mtp": true}),
        ),
        json!({"model": "qwgpu-default", "prompt": "The capital of France is", "max_tokens": 4}),
        chat(
            "Question number 4, no thinking.",
            json!({"max_tokens": 6, "chat_template_kwargs": {"enable_thinking": false}}),
        ),
    ];
    let max_ctx = 4096;
    let mut expected = engine_references(&requests, max_ctx);
    // A raw completion that ends on a stop string (a character from the middle of its greedy
    // reply): in the batch, the step after the one that ends it is already running when the
    // end is read, and that step's token must reach neither the reply nor its usage.
    let mut requests = requests;
    let base = expected[1].content.chars().collect::<Vec<char>>();
    assert!(
        base.len() >= 4,
        "reply too short for a stop string: {base:?}"
    );
    let mut stopped = requests[1].clone();
    stopped["max_tokens"] = json!(16);
    stopped["stop"] = json!([base[base.len() / 2].to_string()]);
    let stop_ref = engine_references(std::slice::from_ref(&stopped), max_ctx)
        .pop()
        .unwrap();
    assert_eq!(stop_ref.finish, "stop", "{stop_ref:?}");
    requests.push(stopped);
    expected.push(stop_ref);
    // A streamed raw completion that asks for MTP (greedy, EOS ignored): alone it speculates,
    // and when another request arrives it moves into the batch.
    let long_mtp = json!({"model": "qwgpu-default", "prompt": "The Rust programming language", "max_tokens": 120, "ignore_eos": true, "stream": true, "mtp": true});
    let long_ref = engine_references(std::slice::from_ref(&long_mtp), max_ctx)
        .pop()
        .unwrap();
    let s = Server::start(&[
        "--max-context",
        &max_ctx.to_string(),
        "--queue",
        "32",
        "--batch",
        "4",
    ]);
    let path = endpoint;
    // Alone, the request that asks for MTP speculates (nothing waits beside it).
    let alone = s.post(path(&requests[2]), &requests[2]);
    assert_eq!(alone.status, 200, "{}", alone.text());
    assert_eq!(answer(&alone.json()), expected[2]);
    assert!(
        alone.json()["timings"]["mtp"].is_object(),
        "{}",
        alone.text()
    );

    // The lone MTP request speculates until another request arrives, then continues in the
    // batch beside it (a hand-off): its streamed reply is still its greedy reply alone, with the
    // counts of its speculative part; the newcomer gets its own answer meanwhile.
    let mut long = open_stream(s.port, "/v1/completions", &long_mtp);
    let mut raw = read_chunks(&mut long, 3);
    let newcomer = s.post(path(&requests[1]), &requests[1]);
    assert_eq!(newcomer.status, 200, "{}", newcomer.text());
    assert_eq!(answer(&newcomer.json()), expected[1]);
    long.read_to_end(&mut raw).unwrap();
    let events = parse(&raw).events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, long_ref.content, "the handed-off reply");
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["length"]);
    let stats = chunks
        .iter()
        .rev()
        .find_map(|c| c.get("timings"))
        .expect("timings");
    assert!(
        stats["mtp"]["drafted"].as_u64().is_some_and(|d| d > 0),
        "{stats}"
    );
    assert_eq!(s.metrics_value("qwgpu_batch_handoffs_total"), 1.0);

    // A sampled request and one with logprobs, answered alone first (a fixed seed: the same
    // reply every time).
    let sampled = chat(
        "Tell me something.",
        json!({"max_tokens": 5, "temperature": 0.8, "seed": 11, "mtp": false}),
    );
    let sampled_alone = s.post("/v1/chat/completions", &sampled);
    assert_eq!(sampled_alone.status, 200, "{}", sampled_alone.text());
    let with_logprobs = chat(
        "Tell me more.",
        json!({"max_tokens": 4, "logprobs": true, "top_logprobs": 2, "mtp": false}),
    );
    let logprobs_alone = s.post("/v1/chat/completions", &with_logprobs);
    assert_eq!(logprobs_alone.status, 200, "{}", logprobs_alone.text());
    // And one with a required format (its tokens chosen under its constraint's masks).
    let constrained = chat(
        "Describe a book as JSON.",
        json!({"max_tokens": 20, "mtp": false, "response_format": {"type": "json_object"},
               "chat_template_kwargs": {"enable_thinking": false}}),
    );
    let constrained_alone = s.post("/v1/chat/completions", &constrained);
    assert_eq!(
        constrained_alone.status,
        200,
        "{}",
        constrained_alone.text()
    );
    assert!(
        reply_text(&constrained_alone.json())
            .1
            .trim_start()
            .starts_with('{'),
        "{}",
        constrained_alone.text()
    );

    // A long streamed greedy reply holds one slot; 13 clients arrive meanwhile (the sampled one
    // joins the batch with its own sampler, the one with logprobs too), then the stream leaves.
    let long = chat(
        "Tell me a very long story.",
        json!({"max_tokens": 3000, "ignore_eos": true, "stream": true, "mtp": false}),
    );
    let mut blocker = open_stream(s.port, "/v1/chat/completions", &long);
    read_deltas(&mut blocker, 2);
    // The constrained request decodes in the batch beside the long reply (each of its steps a
    // step of two streams, the body submitted before its masks are set) and gets its reply alone.
    let two = s.metrics_value("qwgpu_batch_steps_total{streams=\"2\"}");
    let c = s.post("/v1/chat/completions", &constrained);
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(
        reply_text(&c.json()),
        reply_text(&constrained_alone.json()),
        "the constrained request in the batch"
    );
    let k = c.json()["usage"]["completion_tokens"].as_u64().unwrap_or(0) as f64;
    assert!(
        k >= 2.0 && s.metrics_value("qwgpu_batch_steps_total{streams=\"2\"}") >= two + k - 1.0,
        "the constrained request did not decode in the batch ({k} tokens)"
    );
    // So does the request with logprobs (read with each step from its slot's sampler).
    let two = s.metrics_value("qwgpu_batch_steps_total{streams=\"2\"}");
    let l = s.post("/v1/chat/completions", &with_logprobs);
    assert_eq!(l.status, 200, "{}", l.text());
    assert_eq!(
        l.json()["choices"][0]["logprobs"],
        logprobs_alone.json()["choices"][0]["logprobs"],
        "the request with logprobs in the batch"
    );
    let k = l.json()["usage"]["completion_tokens"].as_u64().unwrap_or(0) as f64;
    assert!(
        k >= 2.0 && s.metrics_value("qwgpu_batch_steps_total{streams=\"2\"}") >= two + k - 1.0,
        "the request with logprobs did not decode in the batch ({k} tokens)"
    );
    let mut bodies: Vec<(usize, Value)> = (0..11)
        .map(|k| (k % requests.len(), requests[k % requests.len()].clone()))
        .collect();
    bodies.insert(5, (usize::MAX, sampled.clone()));
    bodies.insert(8, (usize::MAX - 1, with_logprobs.clone()));
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|(k, r)| {
            let port = s.port;
            std::thread::spawn(move || (k, http_post(port, endpoint(&r), &r)))
        })
        .collect();
    // The greedy ones are answered while the long reply still streams (they share its steps).
    let t = Instant::now();
    while s.metrics_value("qwgpu_generations_total{finish_reason=\"length\"}")
        + s.metrics_value("qwgpu_generations_total{finish_reason=\"stop\"}")
        < 3.0 + 13.0
    {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "the greedy requests were not answered beside the long reply"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    read_deltas(&mut blocker, 6);
    drop(blocker);
    for h in handles {
        let (k, resp) = h.join().unwrap();
        assert_eq!(resp.status, 200, "client {k}: {}", resp.text());
        if k == usize::MAX {
            assert_eq!(
                reply_text(&resp.json()),
                reply_text(&sampled_alone.json()),
                "the sampled request in the batch"
            );
        } else if k == usize::MAX - 1 {
            let j = resp.json();
            assert_eq!(reply_text(&j), reply_text(&logprobs_alone.json()));
            assert_eq!(
                j["choices"][0]["logprobs"],
                logprobs_alone.json()["choices"][0]["logprobs"],
                "the request with logprobs among the others"
            );
        } else {
            assert_eq!(answer(&resp.json()), expected[k], "client {k}");
            assert!(resp.json()["timings"]["mtp"].is_null(), "{}", resp.text());
        }
    }
    assert!(
        s.metrics_value("qwgpu_batch_steps_total{streams=\"2\"}") > 0.0,
        "no step decoded two streams"
    );
    assert!(
        s.metrics_value("qwgpu_batch_steps_total{streams=\"3\"}")
            + s.metrics_value("qwgpu_batch_steps_total{streams=\"4\"}")
            > 0.0,
        "no step decoded more than two streams"
    );
    // The stream whose client left ends at its next tokens.
    let t = Instant::now();
    while s.metrics_value("qwgpu_generations_cancelled_total") < 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the stream whose client left was not cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.metrics_value("qwgpu_generations_cancelled_total"), 1.0);
    assert_eq!(s.metrics_value("qwgpu_queue_depth"), 0.0);
    // After all that, a request alone still gets its answer.
    let again = s.post(path(&requests[4]), &requests[4]);
    assert_eq!(answer(&again.json()), expected[4]);
    assert_eq!(s.terminate(), Some(0));
}

#[test]
fn batched_replies_fill_the_context() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    // Two batched completions without max_tokens run to the end of a small context: the steps
    // kept in flight never run a stream past its last position, and each reply is the engine's
    // own for that length.
    let max_ctx = 40u32;
    let s = Server::start(&["--max-context", &max_ctx.to_string(), "--batch", "2"]);
    let bodies: Vec<Value> = ["Ownership in Rust", "A trait is"]
        .iter()
        .map(|p| json!({"model": "qwgpu-default", "prompt": p, "ignore_eos": true, "mtp": false}))
        .collect();
    let handles: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|b| {
            let port = s.port;
            std::thread::spawn(move || http_post(port, "/v1/completions", &b))
        })
        .collect();
    for (h, body) in handles.into_iter().zip(&bodies) {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let got = answer(&r.json());
        let room = max_ctx as usize - got.prompt_tokens;
        let mut want = body.clone();
        want["max_tokens"] = json!(room);
        let want = engine_references(std::slice::from_ref(&want), max_ctx)
            .pop()
            .unwrap();
        assert_eq!(got, want);
        assert_eq!(got.completion_tokens, room);
        assert_eq!(got.finish, "length");
    }
    assert!(s.metrics_value("qwgpu_batch_steps_total{streams=\"2\"}") > 0.0);
    // Alone in the batch, a request runs one step per token and none after its last.
    let one = "qwgpu_batch_steps_total{streams=\"1\"}";
    let before = s.metrics_value(one);
    let r = s.post("/v1/completions", &bodies[0]);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = answer(&r.json());
    assert_eq!(got.completion_tokens, max_ctx as usize - got.prompt_tokens);
    assert_eq!(s.metrics_value(one) - before, got.completion_tokens as f64);
    assert_eq!(s.metrics_value("qwgpu_generations_failed_total"), 0.0);
}
