//! The whole model against mlx-lm: greedy continuations and logits from the fixture references
//! (tests/fixtures, built by make_fixtures.py with mlx 0.32.4 / mlx-lm 0.32.2).

use std::sync::Arc;

use qwgpu_engine::decode::{generate_greedy, GreedyOptions};
use qwgpu_engine::model::session::read_config;
use qwgpu_engine::model::{Model, Session, SessionOptions};
use qwgpu_tests::fixtures::*;
use qwgpu_tests::*;

fn load(name: &str, chunk: u32) -> Session {
    let gpu = gpu();
    let dir = fixtures_dir().join(name);
    let model = Model::load(gpu, &dir, &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    let _ = read_config(&dir).unwrap();
    pollster::block_on(Session::new(Arc::new(model), SessionOptions { max_ctx: 512, prefill_chunk: chunk })).unwrap()
}

#[test]
fn greedy_tokens_and_logits_match_mlx_lm() {
    for name in fixture_names() {
        let r = load_reference(&name);
        let mut s = load(&name, 64);
        assert_eq!(s.model.config.eos_token_ids, r.eos, "{name}: EOS ids");
        for (pi, prompt) in r.prompts.iter().enumerate() {
            s.reset();
            let want = &r.greedy[pi];
            let opts = GreedyOptions { max_tokens: want.len(), eos: vec![], ignore_eos: true };
            let (got, _) = pollster::block_on(generate_greedy(&mut s, prompt, &opts, &mut |_| true)).unwrap();
            let first_diff = got.iter().zip(want).position(|(a, b)| a != b);
            // Teacher-forced logits along the reference path.
            s.reset();
            let mut max_err = 0f32;
            let mut max_mag = 0f32;
            let (ref_logits, steps) = &r.logits[pi];
            for step in 0..*steps {
                let input: Vec<u32> = if step == 0 { prompt.clone() } else { vec![want[step - 1]] };
                let l = pollster::block_on(s.forward_logits(&input)).unwrap();
                let rl = &ref_logits[step * r.vocab..(step + 1) * r.vocab];
                for (a, b) in l.iter().zip(rl) {
                    max_err = max_err.max((a - b).abs());
                    max_mag = max_mag.max(b.abs());
                }
            }
            println!("{name} prompt {pi} (len {}): first token diff {first_diff:?}, max |logit err| {max_err:.3e} (max |logit| {max_mag:.2})", prompt.len());
            assert_eq!(first_diff, None, "{name} prompt {pi}: greedy tokens differ");
        }
    }
}
