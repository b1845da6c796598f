//! MTP speculative decoding: greedy output identical to plain greedy decoding, and the MTP head's
//! logits against the mlx-lm reference built from mlx-lm's qwen3_5 blocks (make_fixtures.py).

use std::sync::Arc;

use qwgpu_engine::decode::mtp::generate_mtp;
use qwgpu_engine::decode::{generate, Finish, GenOptions};
use qwgpu_engine::model::{Model, Session, SessionOptions};
use qwgpu_tests::fixtures::*;
use qwgpu_tests::*;

/// MTP logits: same f32-vs-f32 argument as the backbone's LOGIT_TOL (model_vs_mlx.rs), one layer
/// deeper.
const MTP_LOGIT_TOL: f32 = 5e-3;

fn session(name: &str, chunk: u32) -> Session {
    let model = Model::load(gpu(), &fixtures_dir().join(name), &mut |_, _| {}).unwrap();
    pollster::block_on(Session::new(Arc::new(model), SessionOptions { max_ctx: 1024, prefill_chunk: chunk })).unwrap()
}

fn mtp_fixtures() -> Vec<String> {
    fixture_names().into_iter().filter(|n| load_reference(n).has_mtp).collect()
}

#[test]
fn mtp_greedy_equals_plain_greedy() {
    let names = mtp_fixtures();
    assert!(names.len() >= 3, "expected several MTP fixtures, found {names:?}");
    for name in names {
        let r = load_reference(&name);
        // Prompt chunk of 16 rows: the 40- and 301-token prompts span several chunks.
        let mut s = session(&name, 16);
        for (pi, prompt) in r.prompts.iter().enumerate() {
            for (max_tokens, ignore_eos) in [(160usize, true), (160, false)] {
                let opts = GenOptions { max_tokens, eos: r.eos.clone(), ignore_eos };
                s.reset();
                let (plain, f_plain) = pollster::block_on(generate(&mut s, prompt, &opts, &mut |_| true)).unwrap();
                s.reset();
                let (spec, f_spec, stats) = pollster::block_on(generate_mtp(&mut s, prompt, &opts, &mut |_| true)).unwrap();
                assert_eq!(spec, plain, "{name} prompt {pi} (len {}), ignore_eos {ignore_eos}: MTP output differs", prompt.len());
                assert_eq!(f_spec, f_plain, "{name} prompt {pi}: finish reason");
                if ignore_eos {
                    assert_eq!(spec.len(), max_tokens);
                }
                println!("{name} prompt {pi} (len {}): {} tokens ({f_spec:?}), drafted {} accepted {}", prompt.len(), spec.len(), stats.drafted, stats.accepted);
            }
        }
    }
}

#[test]
fn mtp_runs_that_stop_on_eos_and_max_tokens() {
    // EOS chosen from the plain output, so generation stops mid-stream; and every max_tokens from
    // 1 to 6 (the bonus token and the draft land on both sides of the limit).
    for name in mtp_fixtures() {
        let r = load_reference(&name);
        let mut s = session(&name, 64);
        let prompt = &r.prompts[1];
        let free = GenOptions { max_tokens: 60, eos: vec![], ignore_eos: true };
        let (plain, _) = pollster::block_on(generate(&mut s, prompt, &free, &mut |_| true)).unwrap();
        for stop_at in [0usize, 1, 2, 5, 17, 33] {
            let eos = plain[stop_at];
            let opts = GenOptions { max_tokens: 60, eos: vec![eos], ignore_eos: false };
            s.reset();
            let (spec, f, _) = pollster::block_on(generate_mtp(&mut s, prompt, &opts, &mut |_| true)).unwrap();
            let first = plain.iter().position(|t| *t == eos).unwrap();
            assert_eq!(spec, plain[..first].to_vec(), "{name}: EOS {eos}");
            assert_eq!(f, Finish::Stop);
        }
        for max_tokens in 1..=6 {
            let opts = GenOptions { max_tokens, eos: vec![], ignore_eos: true };
            s.reset();
            let (spec, f, _) = pollster::block_on(generate_mtp(&mut s, prompt, &opts, &mut |_| true)).unwrap();
            assert_eq!(spec, plain[..max_tokens].to_vec(), "{name}: max_tokens {max_tokens}");
            assert_eq!(f, Finish::Length);
        }
    }
}

#[test]
fn mtp_head_logits_match_mlx_reference() {
    for name in mtp_fixtures() {
        let r = load_reference(&name);
        let mut s = session(&name, 32);
        for (pi, prompt) in r.prompts.iter().enumerate() {
            let seq: Vec<u32> = prompt.iter().chain(&r.greedy[pi]).cloned().collect();
            let (ref_logits, rows) = &r.mtp_logits[pi];
            let p = prompt.len();
            let mut max_err = 0f32;
            // Row k pairs the hidden state at k with seq[k + 1]; from the last prompt position on,
            // seq[k + 1] is the backbone's own greedy choice, which is what the MTP step feeds it.
            for k in [p - 1, p + 3, p + 40].into_iter().filter(|k| k + 1 < seq.len() && *k < *rows) {
                s.reset();
                pollster::block_on(s.prefill_with(&seq[..k], Some(seq[k]))).unwrap();
                let (main, _) = pollster::block_on(s.mtp_first(seq[k])).unwrap();
                assert_eq!(main, seq[k + 1], "{name}: the backbone's choice at {k}");
                let got = pollster::block_on(s.mtp_logits()).unwrap();
                let want = &ref_logits[k * r.vocab..(k + 1) * r.vocab];
                for (a, b) in got.iter().zip(want) {
                    max_err = max_err.max((a - b).abs());
                }
            }
            println!("{name} prompt {pi}: MTP logits max |error| {max_err:.2e}");
            assert!(max_err <= MTP_LOGIT_TOL, "{name} prompt {pi}: MTP logits differ by {max_err}");
        }
    }
}
