//! Constrained decoding with MTP speculation (engine/src/decode/constrain.rs,
//! `generate_constrained_mtp_in_context`): per-row masks in the verify, the mask after the draft
//! from the constraint's look-ahead. On the mtp-perm fixture (a head that agrees with the
//! backbone most of the time, so drafts are accepted, rejected by the model, and rejected because
//! the constraint forbids them): greedy tokens equal the plain constrained loop's token for
//! token, every token is one the rule allows (checked by replaying the rule here), and sampled
//! tokens follow the plain constrained loop's law (two-sample chi-square). The embedded default
//! model with a real JSON-schema grammar: the same reply as the plain constrained loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use qwgpu_engine::decode::constrain::{
    generate_constrained_in_context, generate_constrained_mtp_in_context, Allowed, TokenConstraint,
};
use qwgpu_engine::decode::mtp::{MtpOptions, MtpStats};
use qwgpu_engine::decode::sampler::SamplingParams;
use qwgpu_engine::decode::{Event, Finish, GenOptions};
use qwgpu_engine::model::{Model, Session, SessionOptions};
use qwgpu_engine::text::grammar::{GrammarEnv, GrammarSpec};
use qwgpu_engine::text::Tokenizer;
use qwgpu_tests::fixtures::*;
use qwgpu_tests::model_gpu;
use qwgpu_tests::stats::assert_same_law;

/// A rule over token ids, a pure function of the tokens committed so far: after `len` tokens the
/// output is complete; every `force_every`-th position allows one id; otherwise an id is allowed
/// when `(id * 7 + prev * 3 + k) % modulus != 0` (k = position, prev = last committed id), so the
/// model's favourite (and the draft) is forbidden now and then. The EOS id is allowed from
/// position `eos_from` on.
#[derive(Clone)]
struct Rule {
    vocab: u32,
    len: usize,
    force_every: usize,
    modulus: u32,
    eos: u32,
    eos_from: usize,
    history: Vec<u32>,
    /// Peeks answered (the look-ahead was used).
    peeks: usize,
}

impl Rule {
    fn new(vocab: u32, len: usize, eos: u32) -> Rule {
        Rule {
            vocab,
            len,
            force_every: 5,
            modulus: 4,
            eos,
            eos_from: usize::MAX,
            history: Vec::new(),
            peeks: 0,
        }
    }

    /// The allowed ids after `hist` (None: complete).
    fn allowed_after(&self, hist: &[u32]) -> Option<Vec<u32>> {
        let k = hist.len();
        if k >= self.len {
            return None;
        }
        let prev = hist.last().copied().unwrap_or(1);
        if k % self.force_every == self.force_every - 1 {
            return Some(vec![(prev * 3 + k as u32 + 1) % (self.vocab - 2)]);
        }
        Some(
            (0..self.vocab)
                .filter(|&id| {
                    if id == self.eos {
                        return k >= self.eos_from;
                    }
                    (id * 7 + prev * 3 + k as u32) % self.modulus != 0
                })
                .collect(),
        )
    }

    fn write(&self, hist: &[u32], mask: &mut [u32]) -> Allowed {
        match self.allowed_after(hist) {
            None => Allowed::End,
            Some(ids) => {
                for id in ids {
                    mask[id as usize / 32] |= 1 << (id % 32);
                }
                Allowed::Mask
            }
        }
    }
}

impl TokenConstraint for Rule {
    fn allowed(&mut self, mask: &mut [u32]) -> Result<Allowed, String> {
        Ok(self.write(&self.history, mask))
    }
    fn commit(&mut self, id: u32) -> Result<(), String> {
        match self.allowed_after(&self.history) {
            Some(ids) if ids.contains(&id) => {
                self.history.push(id);
                Ok(())
            }
            _ => Err(format!(
                "token {id} is not allowed at {}",
                self.history.len()
            )),
        }
    }
    fn lookahead(&self) -> bool {
        true
    }
    fn peek(&mut self, id: u32, mask: &mut [u32]) -> Result<Option<Allowed>, String> {
        match self.allowed_after(&self.history) {
            Some(ids) if ids.contains(&id) => {}
            _ => return Err(format!("peek: token {id} is not allowed")),
        }
        self.peeks += 1;
        let mut h = self.history.clone();
        h.push(id);
        Ok(Some(self.write(&h, mask)))
    }
}

fn plain(
    s: &mut Session,
    prompt: &[u32],
    in_context: usize,
    opts: &GenOptions,
    c: &mut dyn TokenConstraint,
) -> (Vec<u32>, Finish) {
    pollster::block_on(generate_constrained_in_context(
        s,
        prompt,
        in_context,
        opts,
        c,
        &mut |_| true,
    ))
    .unwrap()
}

fn speculative(
    s: &mut Session,
    prompt: &[u32],
    in_context: usize,
    opts: &GenOptions,
    c: &mut dyn TokenConstraint,
) -> (Vec<u32>, Finish, MtpStats) {
    let mut running = (0u64, 0u64);
    let (t, f, st) = pollster::block_on(generate_constrained_mtp_in_context(
        s,
        prompt,
        in_context,
        opts,
        &MtpOptions::always(),
        c,
        &mut |e| {
            if let Event::Mtp { drafted, accepted } = e {
                assert_eq!(drafted, running.0 + 1, "one report per verify");
                running = (drafted, accepted);
            }
            true
        },
    ))
    .unwrap();
    let st = st.expect("the session has an MTP head and the rule looks ahead: speculation");
    assert_eq!(
        running,
        (st.drafted, st.accepted),
        "the last report is the final count"
    );
    (t, f, st)
}

/// Replays the rule on `out`: each token allowed where it stands.
fn check_allowed(rule: &Rule, out: &[u32], what: &str) {
    for k in 0..out.len() {
        let ids = rule
            .allowed_after(&out[..k])
            .unwrap_or_else(|| panic!("{what}: token {k} after the output was complete"));
        assert!(
            ids.contains(&out[k]),
            "{what}: token {k} = {} not allowed",
            out[k]
        );
    }
}

/// Greedy: the speculative constrained loop gives the plain constrained loop's tokens and finish
/// on prompts of 1, 4 and 40 ids (the last longer than the 16-row prefill chunk), runs ending by
/// the rule's end, by max_tokens (inside a run of accepted drafts too) and by EOS; drafts are
/// accepted and rejected, and the mask after the draft was needed.
#[test]
fn greedy_constrained_mtp_equals_the_plain_constrained_loop() {
    let mut s = mtp_session("mtp-perm", 16);
    let vocab = s.model.config.vocab_size as u32;
    let eos = s.model.config.eos_token_ids[0];
    let long: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 120).collect();
    let prompts: [&[u32]; 3] = [&[17], &[5, 9, 12, 40], &long];
    let mut total = MtpStats::default();
    for (pi, prompt) in prompts.iter().enumerate() {
        // (rule length, max_tokens, EOS allowed from, modulus)
        for (len, max_tokens, eos_from, modulus) in [
            (150, 200, usize::MAX, 4),
            (150, 61, usize::MAX, 4),
            (150, 200, 30, 4),
            (90, 200, usize::MAX, 2),
            (1, 10, usize::MAX, 4),
        ] {
            let what = format!(
                "prompt {pi}, len {len}, max {max_tokens}, eos from {eos_from}, modulus {modulus}"
            );
            let mut rule = Rule::new(vocab, len, eos);
            rule.eos_from = eos_from;
            rule.modulus = modulus;
            let opts = GenOptions {
                max_tokens,
                eos: vec![eos],
                ignore_eos: false,
            };
            s.reset();
            let mut r0 = rule.clone();
            let (want, f_want) = plain(&mut s, prompt, 0, &opts, &mut r0);
            s.reset();
            let mut r1 = rule.clone();
            let (got, f_got, st) = speculative(&mut s, prompt, 0, &opts, &mut r1);
            // Settled (an iteration body submitted ahead was run and read): the state can be
            // saved, and it holds at least the prompt and the tokens returned but the last.
            pollster::block_on(s.save()).unwrap_or_else(|e| panic!("{what}: save: {e}"));
            assert!(
                s.pos() as usize + 1 >= prompt.len() + got.len(),
                "{what}: position"
            );
            assert_eq!(got, want, "{what}: tokens");
            assert_eq!(f_got, f_want, "{what}: finish");
            assert_eq!(r1.history, r0.history, "{what}: the constraint's commits");
            check_allowed(&rule, &got, &what);
            println!(
                "{what}: {} tokens ({f_got:?}), drafted {} accepted {}, {} peeks",
                got.len(),
                st.drafted,
                st.accepted,
                r1.peeks
            );
            total.drafted += st.drafted;
            total.accepted += st.accepted;
            if len > 1 {
                assert!(r1.peeks > 0, "{what}: the look-ahead was never used");
            }
        }
    }
    assert!(
        total.accepted > total.drafted / 4 && total.accepted < total.drafted,
        "need accepted and rejected drafts: {total:?}"
    );
    // The session is left as the plain loop's would be for the next request: an unconstrained
    // greedy request afterwards gives the same tokens as on a fresh session.
    let opts = GenOptions {
        max_tokens: 20,
        eos: vec![],
        ignore_eos: true,
    };
    s.set_sampling(None, false).unwrap();
    s.reset();
    let after = pollster::block_on(qwgpu_engine::decode::generate(
        &mut s,
        &long,
        &opts,
        &mut |_| true,
    ))
    .unwrap();
    let mut fresh = mtp_session("mtp-perm", 16);
    let want = pollster::block_on(qwgpu_engine::decode::generate(
        &mut fresh,
        &long,
        &opts,
        &mut |_| true,
    ))
    .unwrap();
    assert_eq!(after, want, "a plain request after the constrained ones");
}

/// Sampled: positions 1 and 2 of the output (the ones a verify's target rows and bonus give) are
/// distributed as in the plain constrained loop (two-sample chi-square at p = 0.001), with a rule
/// that forbids some of the model's likely tokens, and every sampled token is allowed. Each draw
/// starts from the same restored state (the prompt but its last id, MTP cache included).
#[test]
fn sampled_constrained_mtp_keeps_the_distribution() {
    let mut s = mtp_session("mtp-perm", 64);
    let vocab = s.model.config.vocab_size as u32;
    let eos = s.model.config.eos_token_ids[0];
    let prompt = [5u32, 9, 12, 40];
    pollster::block_on(s.prefill_with(&prompt[..3], Some(prompt[3]))).unwrap();
    let saved = pollster::block_on(s.save()).unwrap();
    let n = 400u64;
    let mut counts: Vec<[BTreeMap<u32, u32>; 2]> = vec![Default::default(), Default::default()];
    let mut total = MtpStats::default();
    let mut rule = Rule::new(vocab, 100, eos);
    rule.modulus = 3;
    rule.force_every = 1000;
    for (mode, use_mtp) in [false, true].into_iter().enumerate() {
        for seed in 0..n {
            let p = SamplingParams {
                temperature: 1.3,
                seed: 1000 * mode as u64 + seed,
                ..Default::default()
            };
            s.set_sampling(Some(&p), false).unwrap();
            s.restore(&saved).unwrap();
            let opts = GenOptions {
                max_tokens: 3,
                eos: vec![],
                ignore_eos: true,
            };
            let mut r = rule.clone();
            let toks = if use_mtp {
                let (t, _, st) = speculative(&mut s, &prompt, 3, &opts, &mut r);
                total.drafted += st.drafted;
                total.accepted += st.accepted;
                t
            } else {
                plain(&mut s, &prompt, 3, &opts, &mut r).0
            };
            assert_eq!(toks.len(), 3);
            check_allowed(&rule, &toks, &format!("mode {mode} seed {seed}"));
            for (j, pos) in [1usize, 2].into_iter().enumerate() {
                *counts[j][mode].entry(toks[pos]).or_default() += 1;
            }
        }
    }
    println!("sampled constrained MTP: {total:?}");
    assert!(
        total.accepted > total.drafted / 5 && total.accepted < total.drafted,
        "need both accepts and rejects: {total:?}"
    );
    for (j, c) in counts.iter().enumerate() {
        assert_same_law(
            &format!(
                "position {}, speculative against plain constrained sampling",
                j + 1
            ),
            &c[0],
            &c[1],
        );
    }
}

/// The embedded default model (it has an MTP head) with its real tokenizer and a JSON schema
/// compiled by llguidance: the speculative constrained loop gives the plain constrained loop's
/// reply token for token, and it parses; a regular expression too.
#[test]
fn default_model_json_schema_with_mtp_gives_the_plain_reply() {
    let dir = std::path::Path::new("../models/default");
    let model = Arc::new(Model::load(model_gpu(), dir, &mut |_, _| {}).unwrap());
    assert!(model.has_mtp(), "the default model has an MTP head");
    let tok = Arc::new(Tokenizer::from_model_dir(dir).unwrap());
    let env = GrammarEnv::new(
        tok.clone(),
        model.config.vocab_size,
        &model.config.eos_token_ids,
    )
    .unwrap();
    let mut s = pollster::block_on(Session::new(
        model.clone(),
        SessionOptions {
            max_ctx: 1024,
            ..Default::default()
        },
    ))
    .unwrap();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "year": {"type": "integer", "minimum": 1990, "maximum": 2030},
            "tags": {"type": "array", "items": {"enum": ["fast", "safe", "small"]}, "maxItems": 3}
        },
        "required": ["name", "year", "tags"],
        "additionalProperties": false
    });
    let opts = GenOptions {
        max_tokens: 120,
        eos: model.config.eos_token_ids.clone(),
        ignore_eos: false,
    };
    let mut total = MtpStats::default();
    for (text, spec) in [
        (
            "Describe the Rust programming language as JSON.",
            GrammarSpec::JsonSchema(schema.clone()),
        ),
        (
            "A JSON record for a Rust crate:",
            GrammarSpec::JsonSchema(schema),
        ),
        (
            "Is Rust fast? Answer:",
            GrammarSpec::Regex("(yes|no), because [a-z ]{1,40}\\.".into()),
        ),
    ] {
        let prompt = tok.encode(text, false).unwrap();
        let mut g = env.compile(&spec).unwrap();
        s.reset();
        let (want, f_want) = plain(&mut s, &prompt, 0, &opts, &mut g);
        let mut g = env.compile(&spec).unwrap();
        s.reset();
        let (got, f_got, st) = speculative(&mut s, &prompt, 0, &opts, &mut g);
        let reply = tok.decode(&got, true).unwrap();
        println!(
            "{text:?}: {reply:?} ({f_got:?}), drafted {} accepted {}",
            st.drafted, st.accepted
        );
        assert_eq!(got, want, "{text:?}: tokens");
        assert_eq!(f_got, f_want, "{text:?}: finish");
        total.drafted += st.drafted;
        total.accepted += st.accepted;
        if matches!(spec, GrammarSpec::JsonSchema(_)) && f_got == Finish::Stop {
            let v: serde_json::Value = serde_json::from_str(&reply)
                .unwrap_or_else(|e| panic!("{reply:?} does not parse: {e}"));
            assert!(
                v.get("name").is_some() && v.get("year").is_some(),
                "{reply}"
            );
        }
    }
    assert!(total.drafted > 0 && total.accepted > 0, "{total:?}");
}
