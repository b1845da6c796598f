//! The engine's f32 decode arithmetic (integer planes off: what WebGPU builds run, and the native
//! fallback) against mlx-lm's f32 logits at the tight tolerance (tests/fixtures, made by
//! make_fixtures.py with mlx 0.32.4 / mlx-lm 0.32.2 on the CPU): teacher-forced along the
//! reference path of each fixture's first and last prompt.
//!
//! `LOGIT_TOL`: mlx-lm with f32 activations vs the engine's f32 kernels differ only by summation
//! order: each of ~6 matmuls per layer contributes ~1e-6 relative error on O(10) values, growing
//! through 4–8 layers and the lm_head; measured ≤ 1.4e-3 on logits of magnitude ≤ 15. 5e-3 leaves
//! room for other adapters' rounding. (The default native path, on integer planes, is checked in
//! model_vs_mlx.rs to the same tolerance.) The MTP head's logits likewise, one layer deeper. Its own binary: the switch
//! below is process-wide.

use qwgpu_engine::ops::matmul::{set_xq, takes_xq, MT_ONE};
use qwgpu_tests::fixtures::*;

const LOGIT_TOL: f32 = 5e-3;

#[test]
fn f32_decode_path_matches_mlx_lm_tightly() {
    set_xq(false);
    for name in fixture_names() {
        let r = load_reference(&name);
        let mut s = load_session(&name, 64);
        assert!(
            s.model
                .weights
                .layers
                .iter()
                .all(|l| l
                    .gate_up
                    .mats
                    .iter()
                    .all(|m| !takes_xq(&s.model.gpu, m, MT_ONE))),
            "{name}: the decode matmuls must not take integer planes here"
        );
        for pi in [0, r.prompts.len() - 1] {
            let err = teacher_forced_error(
                &mut s,
                &r.prompts[pi],
                &r.greedy[pi],
                &r.logits[pi].0,
                r.vocab,
            );
            println!("{name} prompt {pi}: f32 decode path, max |logit error| {err:.2e}");
            assert!(
                err <= LOGIT_TOL,
                "{name} prompt {pi}: f32-path logits differ by {err} > {LOGIT_TOL}"
            );
        }
    }
}

#[test]
fn f32_decode_path_mtp_head_logits_match_mlx_reference() {
    set_xq(false);
    for name in mtp_fixtures() {
        let mut s = mtp_session(&name, 32);
        for (pi, err) in mtp_logit_errors(&mut s, &name) {
            println!("{name} prompt {pi}: f32 decode path, MTP logits max |error| {err:.2e}");
            assert!(
                err <= LOGIT_TOL,
                "{name} prompt {pi}: f32-path MTP logits differ by {err} > {LOGIT_TOL}"
            );
        }
    }
}
