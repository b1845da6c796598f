//! Whole-model numerics that MTP and prompt caching rely on, checked bit for bit on every fixture:
//! row 0 of a 2-row call equals a 1-row call, and a prompt fed in chunks of any size leaves the
//! same state and gives the same logits as one chunk.

use std::sync::Arc;

use qwgpu_engine::model::{Model, Session, SessionOptions};
use qwgpu_tests::fixtures::*;
use qwgpu_tests::*;

fn session(name: &str, chunk: u32) -> Session {
    let model = Model::load(gpu(), &fixtures_dir().join(name), &mut |_, _| {}).unwrap();
    pollster::block_on(Session::new(Arc::new(model), SessionOptions { max_ctx: 256, prefill_chunk: chunk })).unwrap()
}

#[test]
fn row0_of_two_row_call_equals_one_row_call() {
    for name in fixture_names() {
        let r = load_reference(&name);
        let mut s = session(&name, 64);
        let prompt = &r.prompts[2];
        let (a, b) = (r.greedy[2][0], r.greedy[2][1]);
        pollster::block_on(s.prefill(prompt)).unwrap();
        let one = pollster::block_on(s.forward_rows_logits(&[a])).unwrap();
        s.reset();
        pollster::block_on(s.prefill(prompt)).unwrap();
        let two = pollster::block_on(s.forward_rows_logits(&[a, b])).unwrap();
        assert_bits_eq(&format!("{name}: logits of row 0 (T=2) vs T=1"), &two[..r.vocab], &one);
        // Row 1 of the 2-row call equals feeding b after a.
        s.reset();
        pollster::block_on(s.prefill(prompt)).unwrap();
        let _ = pollster::block_on(s.forward_rows_logits(&[a])).unwrap();
        let next = pollster::block_on(s.forward_rows_logits(&[b])).unwrap();
        assert_bits_eq(&format!("{name}: logits of row 1 (T=2) vs a following T=1"), &two[r.vocab..], &next);
    }
}

#[test]
fn chunked_prefill_gives_identical_state_and_logits() {
    for name in fixture_names() {
        let r = load_reference(&name);
        let prompt = &r.prompts[3]; // 301 tokens
        let next = r.greedy[3][0];
        let mut whole = session(&name, 256);
        pollster::block_on(whole.prefill(&prompt[..200])).unwrap();
        let want_state = pollster::block_on(whole.read_state()).unwrap();
        let want = pollster::block_on(whole.forward_logits(&[next])).unwrap();
        for chunk in [1u32, 2, 7, 64] {
            let mut s = session(&name, chunk);
            pollster::block_on(s.prefill(&prompt[..200])).unwrap();
            let st = pollster::block_on(s.read_state()).unwrap();
            for (i, (a, b)) in st.iter().zip(&want_state).enumerate() {
                assert_bits_eq(&format!("{name}: state buffer {i} after chunks of {chunk}"), a, b);
            }
            let got = pollster::block_on(s.forward_logits(&[next])).unwrap();
            assert_bits_eq(&format!("{name}: logits after chunks of {chunk}"), &got, &want);
        }
    }
}
