//! `decode::text::continue_text`: a reply stopped after k tokens and continued in a fresh
//! session (prompt and tokens fed again) with the stream parser that took its first part gives
//! the tokens, the streamed reasoning and content, and the summary of the reply generated in one
//! call. On the default model with its own tokenizer and chat template (a thinking prompt: the
//! splits fall inside the reasoning block, at its end, in the newlines trimmed after it, and
//! later), continued plainly and with MTP speculation (greedy speculation gives plain greedy
//! tokens).

use std::path::Path;
use std::sync::Arc;

use qwgpu_engine::decode::text::{continue_text, generate_text, TextEvent, TextRequest};
use qwgpu_engine::model::{Model, Session, SessionOptions};
use qwgpu_engine::text::stream::{StreamParser, StreamSummary};
use qwgpu_engine::text::template::ChatTemplate;
use qwgpu_engine::text::Tokenizer;
use qwgpu_tests::model_gpu;
use serde_json::json;

/// (reasoning, content) streamed, the tokens, the summary.
type Run = (String, String, Vec<u32>, StreamSummary);

fn run(
    session: &mut Session,
    tok: &Tokenizer,
    req: &TextRequest,
    parser: Option<StreamParser>,
    streamed: (String, String),
) -> Run {
    let (mut reasoning, mut content) = streamed;
    let mut on_event = |e: TextEvent<'_>| {
        if let TextEvent::Delta(d) = e {
            reasoning.push_str(&d.reasoning());
            content.push_str(&d.content());
        }
        true
    };
    session.reset();
    let out = match parser {
        Some(p) => pollster::block_on(continue_text(session, tok, req, p, &mut on_event)),
        None => pollster::block_on(generate_text(session, tok, req, &mut on_event)),
    }
    .expect("generate");
    (reasoning, content, out.tokens, out.summary)
}

#[test]
fn a_reply_continued_with_its_parser_equals_the_reply_in_one_call() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    let model =
        Arc::new(Model::load(model_gpu(), &dir, &mut |_, _| {}).expect("the default model"));
    assert!(model.has_mtp(), "the default model has an MTP head");
    let tok = Tokenizer::from_model_dir(&dir).expect("tokenizer");
    let template = ChatTemplate::from_model_dir(&dir).expect("template");
    let messages = [json!({"role": "user", "content": "Question number 7: what is 7 plus 7?"})];
    let text = template
        .render(&messages, None, true, &Default::default())
        .expect("render");
    let prompt = tok.encode(&text, true).expect("encode");
    let mut stream = tok.stream_config(&model.config.eos_token_ids);
    stream.trim_newlines = true;
    let n = 64;
    let req = |prompt: Vec<u32>, max_tokens: usize, mtp: bool| TextRequest {
        prompt,
        max_tokens,
        stream: stream.clone(),
        ignore_eos: false,
        mtp,
        mtp_adaptive: false,
        sampling: None,
        logprobs: false,
        in_context: 0,
    };
    let mut session = pollster::block_on(Session::new(
        model.clone(),
        SessionOptions {
            max_ctx: 1024,
            prefill_chunk: 64,
            speculative: true,
            ..Default::default()
        },
    ))
    .expect("session");
    let whole = run(
        &mut session,
        &tok,
        &req(prompt.clone(), n, false),
        None,
        Default::default(),
    );
    let (reasoning, content, tokens, summary) = &whole;
    assert!(
        tokens.len() > 40 && !content.is_empty(),
        "the reply should be long: {whole:?}"
    );
    // (This small model closes its reasoning block at once: "\n", then `</think>`.)
    let (_, end) = stream.think_ids.expect("the tokenizer's reasoning markers");
    let think_end = tokens
        .iter()
        .position(|&t| t == end)
        .expect("</think> in the reply");
    let mut splits: Vec<usize> = (1..=think_end + 3).collect();
    splits.extend([tokens.len() / 2, tokens.len() - 1]);
    for k in splits {
        for mtp in [false, true] {
            // The first k tokens through a parser, as a batch slot streams them.
            let mut parser = StreamParser::new(stream.clone(), &prompt);
            let mut first = (String::new(), String::new());
            for &id in &tokens[..k] {
                let d = parser.push(&tok, id);
                first.0.push_str(&d.reasoning());
                first.1.push_str(&d.content());
            }
            let mut ids = prompt.clone();
            ids.extend_from_slice(&tokens[..k]);
            let (r, c, rest, s) = run(
                &mut session,
                &tok,
                &req(ids, n - k, mtp),
                Some(parser),
                first,
            );
            let what = format!("split after {k} of {} tokens, mtp {mtp}", tokens.len());
            assert_eq!(&rest[..], &tokens[k..], "{what}: tokens");
            assert_eq!((&r, &c), (reasoning, content), "{what}: streamed text");
            assert_eq!(&s, summary, "{what}: summary");
        }
    }
}
