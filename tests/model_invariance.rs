//! Whole-model numerics that MTP and prompt caching rely on, checked bit for bit on fixtures that
//! together hold every weight format (`format_cover`): row 0 of a 2-row call equals a 1-row
//! call, a prompt fed in chunks of any size leaves the same state and gives the same logits as
//! one chunk, and projections merged at load give the bits of separate ones.

use std::sync::Arc;

use qwgpu_engine::model::weights::{Mixer, Projections};
use qwgpu_engine::model::{LoadOptions, Model, Session, SessionOptions};
use qwgpu_tests::fixtures::*;
use qwgpu_tests::*;

fn session(name: &str, chunk: u32) -> Session {
    session_split(name, chunk, None)
}

fn session_split(name: &str, chunk: u32, attn_split: Option<bool>) -> Session {
    let model = Model::load(model_gpu(), &fixtures_dir().join(name), &mut |_, _| {}).unwrap();
    pollster::block_on(Session::new(
        Arc::new(model),
        SessionOptions {
            max_ctx: 256,
            prefill_chunk: chunk,
            speculative: true,
            attn_split,
            ..Default::default()
        },
    ))
    .unwrap()
}

#[test]
fn split_attention_gives_the_bits_of_one_pass() {
    use qwgpu_engine::ops::attention::{set_attention_fold, set_attention_fold_keys};
    // Decode and verify rows spread their keys over many workgroups (split pass + combine) on
    // GPUs and run one workgroup per head on CPU adapters: the logits of 1- and 2-row calls
    // after a 200-token prompt (4 key chunks) must be identical both ways, and row 0 of the
    // split 2-row call must equal the split 1-row call.
    for name in format_cover() {
        let r = load_reference(&name);
        let prompt: Vec<u32> = r.prompts[3].iter().take(200).cloned().collect();
        assert_eq!(
            prompt.len(),
            200,
            "{name}: prompt 3 is shorter than 200 tokens"
        );
        let (a, b) = (r.greedy[3][0], r.greedy[3][1]);
        let mut out = Vec::new();
        // The split pass with attention's prep, then its final pass too, folded into it (fold
        // levels 1 and 2), and neither (0); level 2 below a key count and 0 from it on (the plan
        // holds both: from 1 key on, every step unfolded; from 203 on, the MTP loop's steps cross
        // over); then the one-pass form.
        for (split, fold, keys) in [
            (true, 2, None),
            (true, 1, None),
            (true, 0, None),
            (true, 2, Some(1)),
            (true, 2, Some(203)),
            (false, 1, None),
        ] {
            set_attention_fold(Some(fold));
            set_attention_fold_keys(keys);
            let s = session_split(&name, 64, Some(split));
            set_attention_fold(None);
            set_attention_fold_keys(None);
            let mut s = s;
            // The forms by key count: a folded form records fewer dispatches (a session of
            // level 0 below any fold threshold, the same count with level 2 from it on).
            if split && keys.is_some() {
                set_attention_fold(Some(0));
                let plain = session_split(&name, 64, Some(true));
                set_attention_fold(None);
                let unfolded = plain.dispatches_per_token_at(250);
                assert_eq!(
                    s.dispatches_per_token_at(250),
                    unfolded,
                    "{name}: {keys:?}: 250 keys"
                );
                assert!(
                    s.dispatches_per_token_at(0) < unfolded,
                    "{name}: {keys:?}: folded below"
                );
                if keys == Some(203) {
                    assert!(
                        s.dispatches_per_token_at(202) < unfolded,
                        "{name}: 202 keys"
                    );
                }
            }
            let split = format!("{split} (fold level {fold} below {keys:?} keys)");
            pollster::block_on(s.prefill(&prompt)).unwrap();
            let one = pollster::block_on(s.forward_rows_logits(&[a])).unwrap();
            s.reset();
            pollster::block_on(s.prefill(&prompt)).unwrap();
            let two = pollster::block_on(s.forward_rows_logits(&[a, b])).unwrap();
            assert_bits_eq(
                &format!("{name}, split {split}: logits of row 0 (T=2) vs T=1"),
                &two[..r.vocab],
                &one,
            );
            // The MTP loop too (its head's attention layer takes the same path): a few verify
            // steps (with the fixture's rejections and rollbacks) and the head's logits.
            let mut mtp = Vec::new();
            let mut heads = Vec::new();
            if s.has_mtp_head() {
                s.reset();
                pollster::block_on(s.prefill_with(&prompt[..199], Some(prompt[199]))).unwrap();
                let first = pollster::block_on(s.mtp_first(prompt[199])).unwrap();
                mtp.push(format!("{first:?}"));
                for _ in 0..4 {
                    let step = pollster::block_on(s.mtp_verify()).unwrap();
                    mtp.push(format!("{step:?}"));
                    heads.push(pollster::block_on(s.mtp_logits()).unwrap());
                }
            }
            out.push((one, two, mtp, heads));
        }
        let one_pass = out.last().unwrap();
        for (i, o) in out.iter().enumerate() {
            assert_bits_eq(
                &format!("{name}: 1-row logits, split form {i} vs one pass"),
                &o.0,
                &one_pass.0,
            );
            assert_bits_eq(
                &format!("{name}: 2-row logits, split form {i} vs one pass"),
                &o.1,
                &one_pass.1,
            );
            assert_eq!(
                o.2, one_pass.2,
                "{name}: MTP steps, split form {i} vs one pass"
            );
        }
    }
}

#[test]
fn row0_of_two_row_call_equals_one_row_call() {
    for name in format_cover() {
        let r = load_reference(&name);
        let mut s = session(&name, 64);
        let prompt = &r.prompts[2];
        let (a, b) = (r.greedy[2][0], r.greedy[2][1]);
        pollster::block_on(s.prefill(prompt)).unwrap();
        let one = pollster::block_on(s.forward_rows_logits(&[a])).unwrap();
        s.reset();
        pollster::block_on(s.prefill(prompt)).unwrap();
        let two = pollster::block_on(s.forward_rows_logits(&[a, b])).unwrap();
        assert_bits_eq(
            &format!("{name}: logits of row 0 (T=2) vs T=1"),
            &two[..r.vocab],
            &one,
        );
        // Row 1 of the 2-row call equals feeding b after a.
        s.reset();
        pollster::block_on(s.prefill(prompt)).unwrap();
        let _ = pollster::block_on(s.forward_rows_logits(&[a])).unwrap();
        let next = pollster::block_on(s.forward_rows_logits(&[b])).unwrap();
        assert_bits_eq(
            &format!("{name}: logits of row 1 (T=2) vs a following T=1"),
            &two[r.vocab..],
            &next,
        );
    }
}

#[test]
fn chunked_prefill_gives_identical_state_and_logits() {
    for name in format_cover() {
        let r = load_reference(&name);
        // 130 of the 301-token prompt: chunks of 64 end in a partial one, 7 in a partial one.
        let prompt = &r.prompts[3][..130];
        let next = r.prompts[3][130];
        let mut whole = session(&name, 256);
        pollster::block_on(whole.prefill(prompt)).unwrap();
        let want_state = pollster::block_on(whole.read_state()).unwrap();
        let want = pollster::block_on(whole.forward_logits(&[next])).unwrap();
        for chunk in [1u32, 2, 7, 64] {
            let mut s = session(&name, chunk);
            pollster::block_on(s.prefill(prompt)).unwrap();
            let st = pollster::block_on(s.read_state()).unwrap();
            for (i, (a, b)) in st.iter().zip(&want_state).enumerate() {
                assert_bits_eq(
                    &format!("{name}: state buffer {i} after chunks of {chunk}"),
                    a,
                    b,
                );
            }
            let got = pollster::block_on(s.forward_logits(&[next])).unwrap();
            assert_bits_eq(
                &format!("{name}: logits after chunks of {chunk}"),
                &got,
                &want,
            );
        }
    }
}

/// Every matrix of a loaded model's projection groups, by layer: (GDN in_proj or attention
/// q|k|v, MLP gate|up), then the MTP layer's, as matrix names.
fn projection_layout(m: &Model) -> Vec<(Vec<String>, Vec<String>)> {
    let w = &m.weights;
    let names = |p: &Projections| p.mats.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
    w.layers
        .iter()
        .chain(w.mtp.as_ref().map(|m| &m.layer))
        .map(|l| {
            let mixer = match &l.mixer {
                Mixer::Gdn { in_proj, .. } => names(in_proj),
                Mixer::Attn { qkv_proj, .. } => names(qkv_proj),
            };
            (mixer, names(&l.gate_up))
        })
        .collect()
}

#[test]
fn merged_projections_give_the_bits_of_separate_ones() {
    // The loader stacks the projections that read one input (GDN in_proj_qkv|z|b|a, attention
    // q|k|v, MLP gate|up) into one matrix: one dispatch per group instead of one per projection.
    // A row's arithmetic does not depend on the rows sharing its dispatch, so state, logits and
    // MTP logits must equal those of the model loaded with every projection separate, bit for
    // bit, in the prefill, decode and verify tiles.
    let mut merged_somewhere = false;
    for name in format_cover() {
        let r = load_reference(&name);
        let dir = fixtures_dir().join(&name);
        let load = |merge: bool| -> Arc<Model> {
            let opts = LoadOptions {
                merge_projections: merge,
            };
            Arc::new(
                Model::load_with(model_gpu(), &dir, &opts, &mut |_, _| {})
                    .unwrap_or_else(|e| panic!("{name}: {e}")),
            )
        };
        let (merged, separate) = (load(true), load(false));
        for (i, (mixer, mlp)) in projection_layout(&separate).into_iter().enumerate() {
            assert!(
                [3, 4].contains(&mixer.len()) && mlp.len() == 2,
                "{name} layer {i}: separate projections {mixer:?} {mlp:?}"
            );
        }
        let merged_layout = projection_layout(&merged);
        merged_somewhere |= merged_layout
            .iter()
            .any(|(mixer, mlp)| mixer.len() < 3 || mlp.len() < 2);
        // Same tensors, one copy (merging only saves the padding of tiny buffers).
        let (mb, sb) = (merged.weights.bytes(), separate.weights.bytes());
        assert!(
            mb <= sb && sb - mb < 1024,
            "{name}: GPU bytes of the weights {mb} merged, {sb} separate"
        );
        let run = |model: &Arc<Model>| {
            let mut s = pollster::block_on(Session::new(
                model.clone(),
                SessionOptions {
                    max_ctx: 256,
                    prefill_chunk: 64,
                    speculative: true,
                    ..Default::default()
                },
            ))
            .unwrap();
            let (prompt, next) = (&r.prompts[3][..150], r.greedy[3][0]);
            // Prefill tile (chunks of 64), then a 2-row verify and a 1-row decode.
            pollster::block_on(s.prefill(&prompt[..148])).unwrap();
            let two = pollster::block_on(s.forward_rows_logits(&prompt[148..])).unwrap();
            let one = pollster::block_on(s.forward_logits(&[next])).unwrap();
            let state = pollster::block_on(s.read_state()).unwrap();
            // MTP head (its own attention layer and MLP): prefill, first step, one verify.
            let mtp = if model.has_mtp() {
                s.reset();
                pollster::block_on(s.prefill_with(&prompt[..149], Some(prompt[149]))).unwrap();
                let first = pollster::block_on(s.mtp_first(prompt[149])).unwrap();
                let l1 = pollster::block_on(s.mtp_logits()).unwrap();
                let step = pollster::block_on(s.mtp_verify()).unwrap();
                let l2 = pollster::block_on(s.mtp_logits()).unwrap();
                Some((
                    first,
                    step,
                    l1,
                    l2,
                    pollster::block_on(s.read_state()).unwrap(),
                ))
            } else {
                None
            };
            (two, one, state, mtp)
        };
        let (a, b) = (run(&merged), run(&separate));
        assert_bits_eq(
            &format!("{name}: 2-row logits, merged vs separate"),
            &a.0,
            &b.0,
        );
        assert_bits_eq(
            &format!("{name}: 1-row logits, merged vs separate"),
            &a.1,
            &b.1,
        );
        assert_eq!(a.2.len(), b.2.len());
        for (i, (x, y)) in a.2.iter().zip(&b.2).enumerate() {
            assert_bits_eq(
                &format!("{name}: state buffer {i}, merged vs separate"),
                x,
                y,
            );
        }
        assert_eq!(a.3.is_some(), r.has_mtp, "{name}: MTP head");
        if let (Some(x), Some(y)) = (&a.3, &b.3) {
            assert_eq!(
                (x.0, x.1),
                (y.0, y.1),
                "{name}: MTP first step and verify, merged vs separate"
            );
            assert_bits_eq(
                &format!("{name}: MTP logits (first), merged vs separate"),
                &x.2,
                &y.2,
            );
            assert_bits_eq(
                &format!("{name}: MTP logits (verify), merged vs separate"),
                &x.3,
                &y.3,
            );
            for (i, (p, q)) in x.4.iter().zip(&y.4).enumerate() {
                assert_bits_eq(
                    &format!("{name}: state buffer {i} after MTP, merged vs separate"),
                    p,
                    q,
                );
            }
        }
        println!(
            "{name}: merged {:?}",
            merged_layout
                .iter()
                .map(|(m, g)| (m.len(), g.len()))
                .collect::<Vec<_>>()
        );
    }
    assert!(merged_somewhere, "no fixture had projections to merge");
}

#[test]
fn fused_gdn_decode_gives_the_bits_of_separate_kernels() {
    // The decode tiles run a Gated-DeltaNet layer's steps 1-7 in two dispatches (the conv in the
    // input projection's epilogue, then q/k normalization, gates, delta rule and gated norm in
    // one recurrence dispatch) where the device allows it. That must give the bits of the
    // separate kernels (gdn_conv_prep, gdn_recurrence, gated_norm): logits of a 2-row verify
    // and a 1-row decode, every state buffer, and the MTP loop's steps (with a rejected draft
    // rolled back), on every fixture. Plans follow the switches when built, and both settings
    // give the same bits, so other tests running meanwhile are unaffected.
    use qwgpu_engine::ops::gdn::{
        set_fused_gdn, set_gated_recurrence, set_recurrence_lane_shuffles, set_split_recurrence,
        split_recurrence,
    };
    use qwgpu_engine::ops::prefetch::{
        set_tail_prefetch, set_tail_prefetch_setting, set_tail_sites, tail_prefetch_setting, Site,
        TailPrefetch,
    };
    let split_default = split_recurrence();
    let tail_default = tail_prefetch_setting();
    let mut fused_somewhere = false;
    for name in format_cover() {
        let r = load_reference(&name);
        let dir = fixtures_dir().join(&name);
        let model = Arc::new(
            Model::load(model_gpu(), &dir, &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        );
        let run = |fused: bool| {
            set_fused_gdn(fused);
            set_gated_recurrence(fused);
            let s = pollster::block_on(Session::new(
                model.clone(),
                SessionOptions {
                    max_ctx: 256,
                    prefill_chunk: 64,
                    speculative: true,
                    ..Default::default()
                },
            ));
            set_fused_gdn(true);
            set_gated_recurrence(true);
            let mut s = s.unwrap();
            let dispatches = s.dispatches_per_token() + s.prefetch_dispatches_per_token();
            let (prompt, next) = (&r.prompts[3][..150], r.greedy[3][0]);
            pollster::block_on(s.prefill(&prompt[..148])).unwrap();
            let two = pollster::block_on(s.forward_rows_logits(&prompt[148..])).unwrap();
            let one = pollster::block_on(s.forward_logits(&[next])).unwrap();
            let mut states = pollster::block_on(s.read_state()).unwrap();
            let mut mtp = Vec::new();
            if model.has_mtp() {
                s.reset();
                pollster::block_on(s.prefill_with(&prompt[..149], Some(prompt[149]))).unwrap();
                let first = pollster::block_on(s.mtp_first(prompt[149])).unwrap();
                mtp.push(format!("{first:?}"));
                for _ in 0..6 {
                    let step = pollster::block_on(s.mtp_verify()).unwrap();
                    mtp.push(format!("{step:?}"));
                    let l = pollster::block_on(s.mtp_logits()).unwrap();
                    states.push(l);
                }
                states.extend(pollster::block_on(s.read_state()).unwrap());
            }
            (dispatches, two, one, states, mtp)
        };
        set_tail_prefetch(None);
        let b = run(false);
        set_tail_prefetch_setting(tail_default);
        // The fused form as this device picks it, then with the rows' lane partials combined
        // through workgroup memory (what a GPU picks; a CPU adapter picks shuffles), then with
        // one workgroup per head instead of a head's rows split over workgroups, then that with
        // the tail prefetch (a cache prefetch dispatch after each decode matmul: more dispatches).
        let mut plain_fused = 0;
        for (lanes, split, prefetch) in [
            (None, true, false),
            (Some(false), true, false),
            (None, false, false),
            (None, false, true),
        ] {
            set_recurrence_lane_shuffles(lanes);
            set_split_recurrence(split);
            // (Off explicitly otherwise: some devices take the tail prefetch by default.)
            // (At every site: after the recurrence, attention's passes, the last layer and the
            // MTP head's matmuls too, one of them with a byte count of its own.)
            set_tail_prefetch(prefetch.then_some(TailPrefetch {
                bytes: 1 << 16,
                workgroups: 5,
            }));
            let sites_before = prefetch.then(|| {
                set_tail_sites(
                    Site::ALL
                        .iter()
                        .map(|&(n, s)| (s, (n == "out").then_some(4096)))
                        .collect(),
                )
            });
            let a = run(true);
            if let Some(before) = sites_before {
                set_tail_sites(before);
            }
            set_recurrence_lane_shuffles(None);
            set_split_recurrence(split_default);
            set_tail_prefetch_setting(tail_default);
            let form = format!(
                "fused ({lanes:?} lane shuffles, split {split}, prefetch {prefetch}) vs not"
            );
            if prefetch {
                assert!(
                    a.0 > plain_fused,
                    "{name}: {} dispatches with prefetches, {plain_fused} without",
                    a.0
                );
            } else {
                assert!(a.0 <= b.0, "{name}: {} dispatches fused, {} not", a.0, b.0);
                plain_fused = a.0;
            }
            fused_somewhere |= a.0 < b.0;
            assert_bits_eq(&format!("{name}: 2-row logits, {form}"), &a.1, &b.1);
            assert_bits_eq(&format!("{name}: 1-row logits, {form}"), &a.2, &b.2);
            assert_eq!(a.3.len(), b.3.len());
            for (i, (x, y)) in a.3.iter().zip(&b.3).enumerate() {
                assert_bits_eq(&format!("{name}: state / MTP logits {i}, {form}"), x, y);
            }
            assert_eq!(a.4, b.4, "{name}: MTP steps, {form}");
            println!("{name}: {} dispatches per token fused, {} not", a.0, b.0);
        }
    }
    assert!(
        fused_somewhere,
        "no fixture ran the fused Gated-DeltaNet path"
    );
}
