//! Constrained decoding (engine/src/decode/constrain.rs, engine/src/text/grammar.rs) on the
//! embedded default model and its real tokenizer: the output of a JSON schema parses (serde_json)
//! and meets the schema, checked field by field here; greedy picks, at every step, the token the
//! model's own logits rank first among those the grammar allows (logits read back through a
//! separate forward of the same ids); sampled outputs and a regular expression hold too; a
//! grammar that does not compile is an error naming the problem.

use std::sync::Arc;

use qwgpu_engine::decode::constrain::{generate_constrained_in_context, Allowed, TokenConstraint};
use qwgpu_engine::decode::sampler::SamplingParams;
use qwgpu_engine::decode::{Finish, GenOptions};
use qwgpu_engine::model::{Model, Session, SessionOptions};
use qwgpu_engine::text::grammar::{GrammarEnv, GrammarSpec};
use qwgpu_engine::text::Tokenizer;
use qwgpu_tests::model_gpu;
use serde_json::{json, Value};

/// The embedded default model's files.
const DEFAULT_MODEL: &str = "../models/default";

struct Fixture {
    model: Arc<Model>,
    tok: Arc<Tokenizer>,
    env: GrammarEnv,
}

fn fixture() -> Fixture {
    let dir = std::path::Path::new(DEFAULT_MODEL);
    let model = Arc::new(Model::load(model_gpu(), dir, &mut |_, _| {}).unwrap());
    let tok = Arc::new(Tokenizer::from_model_dir(dir).unwrap());
    let env = GrammarEnv::new(
        tok.clone(),
        model.config.vocab_size,
        &model.config.eos_token_ids,
    )
    .unwrap();
    Fixture { model, tok, env }
}

fn session(f: &Fixture) -> Session {
    let opts = SessionOptions {
        max_ctx: 1024,
        ..Default::default()
    };
    pollster::block_on(Session::new(f.model.clone(), opts)).unwrap()
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "year": {"type": "integer", "minimum": 1990, "maximum": 2030},
            "tags": {"type": "array", "items": {"enum": ["fast", "safe", "small"]}, "maxItems": 3},
            "stable": {"type": "boolean"}
        },
        "required": ["name", "year", "tags", "stable"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    })
}

/// The schema above, checked by hand on a parsed value.
fn meets_schema(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort();
    if keys != ["name", "stable", "tags", "year"] {
        return Err(format!("keys {keys:?}"));
    }
    let name = o["name"].as_str().ok_or("name is not a string")?;
    if name.chars().count() > 12 {
        return Err(format!("name {name:?} is longer than 12"));
    }
    let year = o["year"].as_i64().ok_or("year is not an integer")?;
    if !(1990..=2030).contains(&year) {
        return Err(format!("year {year} out of range"));
    }
    let tags = o["tags"].as_array().ok_or("tags is not an array")?;
    if tags.len() > 3
        || !tags
            .iter()
            .all(|t| ["fast", "safe", "small"].contains(&t.as_str().unwrap_or("")))
    {
        return Err(format!("tags {tags:?}"));
    }
    o["stable"].as_bool().ok_or("stable is not a boolean")?;
    Ok(())
}

fn gen_opts(f: &Fixture, max_tokens: usize) -> GenOptions {
    GenOptions {
        max_tokens,
        eos: f.model.config.eos_token_ids.clone(),
        ignore_eos: false,
    }
}

fn run(
    f: &Fixture,
    s: &mut Session,
    prompt: &[u32],
    c: &mut dyn TokenConstraint,
    max_tokens: usize,
) -> (Vec<u32>, Finish) {
    pollster::block_on(generate_constrained_in_context(
        s,
        prompt,
        0,
        &gen_opts(f, max_tokens),
        c,
        &mut |_| true,
    ))
    .unwrap()
}

fn allowed(mask: &[u32], id: u32) -> bool {
    mask[id as usize / 32] >> (id % 32) & 1 == 1
}

#[test]
fn json_schema_greedy_is_valid_and_each_token_is_the_best_allowed() {
    let f = fixture();
    let mut s = session(&f);
    let prompt = f
        .tok
        .encode("The crate's metadata as JSON:", false)
        .unwrap();
    s.set_sampling(None, false).unwrap();
    let mut g = f.env.compile(&GrammarSpec::JsonSchema(schema())).unwrap();
    let (ids, finish) = run(&f, &mut s, &prompt, &mut g, 200);
    let text = f.tok.decode(&ids, false).unwrap();
    assert_eq!(
        finish,
        Finish::Stop,
        "the grammar ends the output: {text:?}"
    );
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    meets_schema(&v).unwrap_or_else(|e| panic!("{text}: {e}"));

    // The reference: the model's logits for the same ids (a fresh session, one forward per
    // position) and the grammar's mask there; the chosen id is allowed and none allowed scores
    // higher (beyond the last bits a prompt-shaped forward may differ by).
    let mut r = session(&f);
    let mut g2 = f.env.compile(&GrammarSpec::JsonSchema(schema())).unwrap();
    let mut mask = vec![0u32; f.env.mask_words()];
    let mut fed: Vec<u32> = prompt.clone();
    let mut logits = pollster::block_on(r.forward_logits(&fed)).unwrap();
    for (i, &t) in ids.iter().enumerate() {
        mask.fill(0);
        assert_eq!(g2.allowed(&mut mask).unwrap(), Allowed::Mask);
        assert!(
            allowed(&mask, t),
            "step {i}: token {t} is not allowed there"
        );
        let best = (0..logits.len() as u32)
            .filter(|&id| allowed(&mask, id))
            .map(|id| logits[id as usize])
            .fold(f32::NEG_INFINITY, f32::max);
        let scale = logits.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(
            logits[t as usize] >= best - 1e-4 * scale,
            "step {i}: token {t} scores {} but an allowed token scores {best}",
            logits[t as usize]
        );
        g2.commit(t).unwrap();
        fed.push(t);
        logits = pollster::block_on(r.forward_logits(&[t])).unwrap();
    }
    // Unconstrained, the same prompt does not give this JSON (the mask did the work).
    let mut plain = session(&f);
    let (free, _) = pollster::block_on(qwgpu_engine::decode::generate(
        &mut plain,
        &prompt,
        &gen_opts(&f, ids.len()),
        &mut |_| true,
    ))
    .unwrap();
    assert_ne!(free, ids);
}

#[test]
fn sampled_outputs_and_a_regex_hold_and_bad_grammars_are_errors() {
    let f = fixture();
    let mut s = session(&f);
    let prompt = f.tok.encode("Release notes:", false).unwrap();
    let mut texts = Vec::new();
    for seed in 0..3u64 {
        let p = SamplingParams {
            temperature: 1.5,
            seed,
            presence_penalty: 0.5,
            ..Default::default()
        };
        s.set_sampling(Some(&p), false).unwrap();
        let mut g = f.env.compile(&GrammarSpec::JsonSchema(schema())).unwrap();
        let (ids, finish) = run(&f, &mut s, &prompt, &mut g, 300);
        let text = f.tok.decode(&ids, false).unwrap();
        assert_eq!(finish, Finish::Stop, "{text:?}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        meets_schema(&v).unwrap_or_else(|e| panic!("{text}: {e}"));
        texts.push(text);
    }
    assert!(
        texts.iter().any(|t| t != &texts[0]),
        "seeds should differ: {texts:?}"
    );
    // After the constrained request the session samples freely again.
    let p = SamplingParams::default();
    s.set_sampling(Some(&p), false).unwrap();

    s.set_sampling(None, false).unwrap();
    let rx = "[a-z]{3,8}( [a-z]{3,8}){2}\\.";
    let mut g = f.env.compile(&GrammarSpec::Regex(rx.into())).unwrap();
    let (ids, finish) = run(&f, &mut s, &prompt, &mut g, 100);
    let text = f.tok.decode(&ids, false).unwrap();
    assert_eq!(finish, Finish::Stop, "{text:?}");
    let words: Vec<&str> = text.trim_end_matches('.').split(' ').collect();
    assert!(text.ends_with('.') && words.len() == 3, "{text:?}");
    assert!(
        words
            .iter()
            .all(|w| (3..=8).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase())),
        "{text:?}"
    );
    // A max_tokens cut ends with Length, mid-output.
    let mut g = f.env.compile(&GrammarSpec::JsonSchema(schema())).unwrap();
    let (ids, finish) = run(&f, &mut s, &prompt, &mut g, 3);
    assert_eq!((ids.len(), finish), (3, Finish::Length));

    for bad in [
        GrammarSpec::JsonSchema(
            json!({"type": "object", "properties": {"a": {"type": "no-such-type"}}}),
        ),
        GrammarSpec::Lark("start: undefined_rule".into()),
        GrammarSpec::Regex("(unclosed".into()),
    ] {
        let e = f
            .env
            .compile(&bad)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} compiled"));
        assert!(!e.to_string().is_empty());
    }
}

/// A constraint that allows every token, either as "any" (the sampler's plain head) or as a
/// mask with every bit set (the masked head, a zero bias on every logit).
struct Everything {
    as_mask: bool,
    vocab: usize,
}

impl TokenConstraint for Everything {
    fn allowed(&mut self, mask: &mut [u32]) -> Result<Allowed, String> {
        if !self.as_mask {
            return Ok(Allowed::Any);
        }
        for i in 0..self.vocab {
            mask[i / 32] |= 1 << (i % 32);
        }
        Ok(Allowed::Mask)
    }
    fn commit(&mut self, _id: u32) -> Result<(), String> {
        Ok(())
    }
}

/// The constrained loop submits each step's body ahead of the host and its head after the mask
/// (`Session::decode_body_ahead` / `decode_head`): with a constraint that allows everything it
/// must give the plain loop's tokens and logprobs bit for bit (sampled, with penalties; the plain
/// loop, one submission per step, is the one checked against mlx-lm), including the EOS and
/// max-tokens endings and the state left behind (the next request's tokens).
#[test]
fn allowing_everything_gives_the_plain_loop_bit_for_bit() {
    use qwgpu_engine::decode::{generate, Event};
    let f = fixture();
    let vocab = f.model.config.vocab_size;
    let prompt = f.tok.encode("Write a haiku about the sea.", false).unwrap();
    let p = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: 11,
        frequency_penalty: 0.3,
        top_logprobs: 3,
        ..Default::default()
    };
    let collect = |s: &mut Session, c: Option<&mut dyn TokenConstraint>, max: usize| {
        let mut lps = Vec::new();
        let mut on = |e: Event| {
            if let Event::Token(_, lp) = e {
                lps.push(lp.expect("logprobs were asked for"));
            }
            true
        };
        let opts = gen_opts(&f, max);
        let (ids, finish) = match c {
            Some(c) => pollster::block_on(generate_constrained_in_context(
                s, &prompt, 0, &opts, c, &mut on,
            )),
            None => pollster::block_on(generate(s, &prompt, &opts, &mut on)),
        }
        .unwrap();
        // What the state holds after the request: the next (greedy) request's first tokens.
        let pos = s.pos();
        (ids, finish, lps, pos)
    };
    for max in [40, 200] {
        let mut s = session(&f);
        s.set_sampling(Some(&p), true).unwrap();
        let want = collect(&mut s, None, max);
        for as_mask in [false, true] {
            let mut s = session(&f);
            s.set_sampling(Some(&p), true).unwrap();
            let mut c = Everything { as_mask, vocab };
            let got = collect(&mut s, Some(&mut c), max);
            assert_eq!(got.0, want.0, "tokens, mask {as_mask}, max {max}");
            assert_eq!(got.1, want.1, "finish, mask {as_mask}, max {max}");
            assert_eq!(got.2, want.2, "logprobs, mask {as_mask}, max {max}");
            assert_eq!(got.3, want.3, "positions held, mask {as_mask}, max {max}");
        }
    }
}

/// Counts the masks of exactly one token a constraint gives.
struct CountForced<'a> {
    inner: &'a mut dyn TokenConstraint,
    forced: usize,
}

impl TokenConstraint for CountForced<'_> {
    fn allowed(&mut self, mask: &mut [u32]) -> Result<Allowed, String> {
        let a = self.inner.allowed(mask)?;
        if a == Allowed::Mask && mask.iter().map(|w| w.count_ones()).sum::<u32>() == 1 {
            self.forced += 1;
        }
        Ok(a)
    }
    fn commit(&mut self, id: u32) -> Result<(), String> {
        self.inner.commit(id)
    }
}

/// Without logprobs a run of forced tokens is fed two per forward without heads
/// (`Session::feed_forced`, the sampler's history and draws advanced for them); with logprobs
/// every token is a step of its own. Both must give the same tokens, greedy and sampled with
/// penalties (each row of a 2-id forward has the bits of its own step, and the history and draw
/// counter match), on outputs where the schema forces many tokens, and end the same way
/// (complete, or cut by max_tokens inside a run).
#[test]
fn forced_runs_fed_in_pairs_give_the_step_by_step_tokens() {
    let f = fixture();
    let mut s = session(&f);
    let sampled = SamplingParams {
        temperature: 1.2,
        seed: 5,
        presence_penalty: 0.4,
        repetition_penalty: 1.3,
        ..Default::default()
    };
    let cases = [
        ("Describe a tool as JSON:", None),
        ("A small library, as JSON.", None),
        ("{", None),
        ("Describe a tool as JSON:", Some(&sampled)),
        ("Release notes:", Some(&sampled)),
    ];
    for (i, (text, p)) in cases.iter().enumerate() {
        let prompt = f.tok.encode(text, false).unwrap();
        for max in [300, 3 + i] {
            let mut got = Vec::new();
            for logprobs in [true, false] {
                s.set_sampling(*p, logprobs).unwrap();
                let mut g = f.env.compile(&GrammarSpec::JsonSchema(schema())).unwrap();
                let mut c = CountForced {
                    inner: &mut g,
                    forced: 0,
                };
                let r = run(&f, &mut s, &prompt, &mut c, max);
                got.push((r, c.forced));
            }
            assert_eq!(got[0].0, got[1].0, "{text:?}, {p:?}, max_tokens {max}");
            if max == 300 {
                let ((ids, finish), forced) = &got[1];
                let out = f.tok.decode(ids, false).unwrap();
                assert_eq!(*finish, Finish::Stop, "{out:?}");
                meets_schema(&serde_json::from_str(&out).unwrap()).unwrap();
                // The schema's keys and punctuation: runs of forced tokens were taken.
                assert!(*forced >= 8, "{forced} forced tokens in {out:?}");
            }
        }
    }
}
