//! A session's sequence state saved, restored and forked (engine/src/state): a state saved after
//! a prompt prefix, written to bytes and restored (into the same session or another one with
//! other sizes) continues exactly as the whole prompt fed from scratch, whose greedy tokens are
//! mlx-lm's; MTP speculation continues from a restored state with its exact output; forks evolve
//! independently; damaged or foreign states are refused with the reason and change nothing.

use std::sync::Arc;

use qwgpu_engine::decode::generate_in_context;
use qwgpu_engine::decode::mtp::{generate_mtp, generate_mtp_in_context, MtpOptions};
use qwgpu_engine::decode::{generate, GenOptions};
use qwgpu_engine::model::session::read_config;
use qwgpu_engine::model::{Model, RunError, Session, SessionOptions};
use qwgpu_engine::state::{config_crc, SavedState, StateError};
use qwgpu_tests::fixtures::*;
use qwgpu_tests::*;

/// As model_vs_mlx.rs: greedy tokens equal mlx-lm's up to its first near-tie (top-2 gap below
/// the f32 logit tolerance of the default native path, integer planes in the two-plane format;
/// 5e-3 would do for the three-plane one).
const LOGIT_TOL: f32 = 0.2;

fn model(name: &str) -> Arc<Model> {
    Arc::new(
        Model::load(model_gpu(), &fixtures_dir().join(name), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{name}: {e}")),
    )
}

fn session(m: &Arc<Model>, max_ctx: u32, chunk: u32) -> Session {
    session_kv(m, max_ctx, chunk, false)
}

/// [`session`] with f16 KV caches when `kv_f16`.
fn session_kv(m: &Arc<Model>, max_ctx: u32, chunk: u32, kv_f16: bool) -> Session {
    pollster::block_on(Session::new(
        m.clone(),
        SessionOptions {
            max_ctx,
            prefill_chunk: chunk,
            speculative: true,
            kv_f16,
            ..Default::default()
        },
    ))
    .unwrap()
}

fn greedy(n: usize) -> GenOptions {
    GenOptions {
        max_tokens: n,
        eos: vec![],
        ignore_eos: true,
    }
}

fn gen(s: &mut Session, ids: &[u32], n: usize) -> Vec<u32> {
    pollster::block_on(generate(s, ids, &greedy(n), &mut |_| true))
        .unwrap()
        .0
}

fn save(s: &mut Session) -> SavedState {
    pollster::block_on(s.save()).unwrap()
}

/// The first fixture of each distinct configuration, MTP fixtures included.
fn some_fixtures() -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    fixture_names()
        .into_iter()
        .filter(|n| {
            let cfg = read_config(&fixtures_dir().join(n)).unwrap();
            seen.insert(config_crc(&cfg))
        })
        .collect()
}

/// `n` greedy tokens after `prompt`, whose first `k` ids the session's state already holds;
/// speculating with the MTP head when `mtp` and the session has one.
fn greedy_from(s: &mut Session, prompt: &[u32], k: usize, n: usize, mtp: bool) -> Vec<u32> {
    if mtp && s.mtp_available() {
        pollster::block_on(generate_mtp_in_context(
            s,
            prompt,
            k,
            &greedy(n),
            &MtpOptions::always(),
            &mut |_| true,
        ))
        .unwrap()
        .0
    } else {
        pollster::block_on(generate_in_context(s, prompt, k, &greedy(n), &mut |_| true))
            .unwrap()
            .0
    }
}

#[test]
fn restored_prefix_continues_like_the_whole_prompt() {
    for name in format_cover() {
        let r = load_reference(&name);
        let m = model(&name);
        let prompt = &r.prompts[3];
        assert!(
            prompt.len() > 200,
            "{name}: prompt 3 has {} ids",
            prompt.len()
        );
        let n = r.greedy[3].len().min(32);
        let mut a = session(&m, 512, 64);

        // The whole prompt from scratch: mlx-lm's tokens up to the first near-tie, and the logits
        // after it.
        let whole = gen(&mut a, prompt, n);
        let limit = r.top2_gap[3]
            .iter()
            .position(|g| *g < LOGIT_TOL)
            .unwrap_or(n)
            .min(n);
        assert_eq!(
            whole[..limit],
            r.greedy[3][..limit],
            "{name}: from scratch vs mlx-lm"
        );
        a.reset();
        let want_logits = pollster::block_on(a.forward_logits(prompt)).unwrap();

        // The first 200 ids, saved and written to bytes; the session then runs something else.
        a.reset();
        pollster::block_on(a.prefill(&prompt[..200])).unwrap();
        let saved = save(&mut a);
        assert_eq!((saved.pos, saved.buffers.is_empty()), (200, false));
        let bytes = saved.to_bytes();
        let back = SavedState::from_bytes(&bytes).unwrap();
        assert_eq!(back, saved, "{name}: bytes round trip");
        a.reset();
        gen(&mut a, &r.prompts[2], 8);

        // Restored: the same state bytes, the same logits bit for bit, the same tokens.
        a.restore(&back).unwrap();
        assert_eq!(a.pos(), 200);
        assert_eq!(save(&mut a), saved, "{name}: state after restore");
        let got = pollster::block_on(a.forward_logits(&prompt[200..])).unwrap();
        assert_bits_eq(
            &format!("{name}: logits after the restored prefix"),
            &got,
            &want_logits,
        );
        a.restore(&back).unwrap();
        assert_eq!(
            gen(&mut a, &prompt[200..], n),
            whole,
            "{name}: tokens after restore"
        );

        // Into another session of the same model with another context and prefill chunk.
        let mut b = session(&m, 1024, 16);
        b.restore(&back).unwrap();
        assert_eq!(
            gen(&mut b, &prompt[200..], n),
            whole,
            "{name}: tokens in another session"
        );
        println!(
            "{name}: {} state bytes at 200 positions ({} on disk); {limit} tokens checked against mlx-lm, {n} against the whole prompt",
            saved.bytes(),
            bytes.len()
        );
    }
}

#[test]
fn mtp_speculation_continues_exactly_from_a_restored_state() {
    let names: Vec<String> = format_cover()
        .into_iter()
        .filter(|n| load_reference(n).has_mtp)
        .collect();
    assert!(!names.is_empty(), "no MTP fixture");
    for name in names {
        let r = load_reference(&name);
        let m = model(&name);
        let prompt = &r.prompts[3];
        let mut a = session(&m, 512, 32);
        let plain = gen(&mut a, prompt, 48);

        // The prefix with the MTP cache filled (the id after it is known): MTP can go on.
        a.reset();
        pollster::block_on(a.prefill_with(&prompt[..200], Some(prompt[200]))).unwrap();
        let saved = save(&mut a);
        assert!(
            saved.mtp_synced,
            "{name}: prefill_with keeps the MTP cache in step"
        );
        assert_eq!((saved.pos, saved.mtp_pos), (200, 200));
        let mut b = session(&m, 768, 64);
        b.restore(&SavedState::from_bytes(&saved.to_bytes()).unwrap())
            .unwrap();
        assert!(b.mtp_available(), "{name}: MTP after restore");
        let (spec, _, stats) = pollster::block_on(generate_mtp(
            &mut b,
            &prompt[200..],
            &greedy(48),
            &MtpOptions::always(),
            &mut |_| true,
        ))
        .unwrap();
        assert_eq!(spec, plain, "{name}: MTP from a restored state");
        assert!(stats.drafted > 0, "{name}: no verify ran");

        // A plain prefill leaves the MTP cache behind: the restored session knows it.
        a.reset();
        pollster::block_on(a.prefill(&prompt[..200])).unwrap();
        let unsynced = save(&mut a);
        b.restore(&unsynced).unwrap();
        assert!(
            !b.mtp_available(),
            "{name}: MTP claimed after a plain prefill"
        );
        println!(
            "{name}: MTP after restore drafted {} accepted {}",
            stats.drafted, stats.accepted
        );
    }
}

#[test]
fn forks_continue_independently() {
    for name in some_fixtures() {
        let r = load_reference(&name);
        let m = model(&name);
        let mut s = session(&m, 512, 64);
        let out = gen(&mut s, &r.prompts[2], 20);
        // The state holds the prompt and the tokens fed so far (the last token read is not fed
        // when generation stops at max_tokens).
        let seq: Vec<u32> = r.prompts[2].iter().chain(&out).cloned().collect();
        let held = s.pos() as usize;
        assert!(held <= seq.len(), "{name}: {held} held of {}", seq.len());
        let mut f = pollster::block_on(s.fork()).unwrap();
        assert_eq!(f.pos(), s.pos());
        let ext_a: Vec<u32> = seq[held..].iter().chain(&r.prompts[1]).cloned().collect();
        let ext_b: Vec<u32> = seq[held..].iter().chain(&r.prompts[0]).cloned().collect();
        // The fork runs first: the original must not see it.
        let fa = gen(&mut f, &ext_a, 16);
        let sb = gen(&mut s, &ext_b, 16);
        let mut fresh = session(&m, 512, 64);
        let whole_a: Vec<u32> = seq[..held].iter().chain(&ext_a).cloned().collect();
        let whole_b: Vec<u32> = seq[..held].iter().chain(&ext_b).cloned().collect();
        assert_eq!(fa, gen(&mut fresh, &whole_a, 16), "{name}: fork");
        fresh.reset();
        assert_eq!(
            sb,
            gen(&mut fresh, &whole_b, 16),
            "{name}: original after fork"
        );
        // copy_state_from into an existing session with a larger context.
        let mut big = session(&m, 1024, 8);
        gen(&mut big, &r.prompts[3], 4);
        big.copy_state_from(&mut f).unwrap();
        assert_eq!(save(&mut big), save(&mut f), "{name}: copied state");
    }
}

#[test]
fn f16_cache_states_restore_and_fork_and_refuse_the_other_kind() {
    // A session with f16 KV caches: half the KV bytes; a saved prefix restored (through bytes)
    // and a fork continue exactly like the whole prompt; a state of the other cache type is
    // refused either way, naming the KV cache type, and changes nothing.
    let name = fixture_names()
        .into_iter()
        .find(|n| load_reference(n).has_mtp)
        .unwrap_or_else(|| fixture_names()[0].clone());
    let r = load_reference(&name);
    let m = model(&name);
    let prompt = &r.prompts[3];
    let n = r.greedy[3].len().min(24);
    let mut a = session_kv(&m, 512, 64, true);
    let mut f32s = session(&m, 512, 64);
    assert_eq!(
        2 * a.state.kv_bytes(),
        f32s.state.kv_bytes(),
        "{name}: f16 KV bytes"
    );
    let whole = gen(&mut a, prompt, n);
    a.reset();
    pollster::block_on(a.prefill(&prompt[..200])).unwrap();
    let saved = save(&mut a);
    assert!(saved.buffers.iter().any(|b| b.name.ends_with(".k.f16")));
    let back = SavedState::from_bytes(&saved.to_bytes()).unwrap();
    let mut fork = pollster::block_on(a.fork()).unwrap();
    assert_eq!(gen(&mut fork, &prompt[200..], n), whole, "{name}: f16 fork");
    let mut b = session_kv(&m, 1024, 16, true);
    b.restore(&back).unwrap();
    assert_eq!(gen(&mut b, &prompt[200..], n), whole, "{name}: f16 restore");

    pollster::block_on(f32s.prefill(&r.prompts[1])).unwrap();
    let before = save(&mut f32s);
    for (t, st) in [(&mut f32s, &back), (&mut b, &before)] {
        let e = t.restore(st).unwrap_err().to_string();
        assert!(e.contains("KV cache type"), "{name}: {e}");
    }
    assert!(matches!(
        f32s.copy_state_from(&mut a),
        Err(RunError::State(StateError::Mismatch(_)))
    ));
    assert_eq!(
        save(&mut f32s),
        before,
        "a refused restore changed the state"
    );
}

#[test]
fn bad_states_are_refused_with_the_reason_and_change_nothing() {
    let names = some_fixtures();
    assert!(names.len() >= 2, "need two model configurations: {names:?}");
    let r = load_reference(&names[0]);
    let m = model(&names[0]);
    let mut s = session(&m, 512, 64);
    pollster::block_on(s.prefill(&r.prompts[2])).unwrap();
    let saved = save(&mut s);
    let bytes = saved.to_bytes();

    let err = |b: &[u8]| SavedState::from_bytes(b).unwrap_err().to_string();
    assert!(err(b"").contains("magic"));
    assert!(err(b"GGUF\x03\0\0\0 something else").contains("magic"));
    assert!(err(&bytes[..bytes.len() - 1]).contains("damaged"));
    assert!(err(&bytes[..40]).contains("runs past the end"));
    let mut flipped = bytes.clone();
    let at = bytes.len() - 10;
    flipped[at] ^= 0x40;
    assert!(err(&flipped).contains("checksum"), "{}", err(&flipped));
    let mut long = bytes.clone();
    long.insert(bytes.len() - 4, 0);
    assert!(SavedState::from_bytes(&long).is_err());

    // A session with state of its own, which a refused restore must leave as it is.
    let mut t = session(&m, 512, 64);
    pollster::block_on(t.prefill(&r.prompts[1])).unwrap();
    let before = save(&mut t);
    let refuse = |t: &mut Session, st: &SavedState, want: &str| {
        let e = t.restore(st).unwrap_err().to_string();
        assert!(e.contains(want), "wanted '{want}' in: {e}");
    };
    let mut other = saved.clone();
    other.buffers.pop();
    refuse(&mut t, &other, "state buffers saved");
    let mut other = saved.clone();
    other.buffers[0].name = "layers.0.something".into();
    refuse(&mut t, &other, "layers.0.something");
    let mut other = saved.clone();
    let last = other.buffers.iter().rposition(|b| b.name.ends_with("ssm"));
    if let Some(i) = last {
        other.buffers[i].data.truncate(16);
        refuse(&mut t, &other, "another model");
    }
    let m2 = model(&names[1]);
    let mut foreign = session(&m2, 512, 64);
    pollster::block_on(foreign.prefill(&load_reference(&names[1]).prompts[2])).unwrap();
    let foreign_state = save(&mut foreign);
    refuse(&mut t, &foreign_state, "another model");
    assert!(matches!(
        foreign.copy_state_from(&mut s),
        Err(RunError::State(StateError::Mismatch(_)))
    ));
    let mut small = session(&m, 16, 8);
    assert!(matches!(
        small.restore(&saved),
        Err(RunError::ContextFull { needed, max: 16 }) if needed == saved.pos
    ));
    assert_eq!(save(&mut t), before, "a refused restore changed the state");

    // Unread MTP verifies: saving waits for settle.
    if let Some(name) = names.iter().find(|n| load_reference(n).has_mtp) {
        let r = load_reference(name);
        let m = model(name);
        let mut s = session(&m, 512, 64);
        let p = &r.prompts[2];
        pollster::block_on(s.prefill_with(&p[..p.len() - 1], Some(p[p.len() - 1]))).unwrap();
        pollster::block_on(s.mtp_first(p[p.len() - 1])).unwrap();
        s.mtp_submit_verify().unwrap();
        assert!(matches!(
            pollster::block_on(s.save()),
            Err(RunError::Busy(_))
        ));
        pollster::block_on(s.settle()).unwrap();
        let st = save(&mut s);
        assert_eq!(st.pos, s.pos());
    }
}

#[test]
fn prompt_cache_checkpoint_serves_prompts_that_share_the_start() {
    use qwgpu_engine::decode::cache::{prefill_prompt, reusable};
    for name in ["mtp-perm", "bf16-q4-g64"] {
        let r = load_reference(name);
        let m = model(name);
        let p = &r.prompts[3];
        // A second prompt that shares p's first 151 ids, then goes elsewhere.
        let q: Vec<u32> = p[..151].iter().chain(&r.prompts[2]).cloned().collect();
        for mtp in [false, true] {
            let mut s = session(&m, 512, 64);
            let run =
                |s: &mut Session, prompt: &[u32], k: usize| greedy_from(s, prompt, k, 24, mtp);
            // Uncached outputs.
            let want_p = gen(&mut s, p, 24);
            s.reset();
            let want_q = gen(&mut s, &q, 24);
            // p with a checkpoint at 150: nothing reused, the entry holds p[..150].
            let (reused, entry) =
                pollster::block_on(prefill_prompt(&mut s, p, None, mtp, 150)).unwrap();
            let entry = entry.unwrap();
            assert_eq!((reused, entry.tokens.len(), entry.pos), (0, 150, 150));
            assert_eq!(entry.tokens[..], p[..150]);
            assert_eq!(s.pos() as usize, p.len() - 1);
            assert_eq!(run(&mut s, p, p.len() - 1), want_p, "{name} mtp {mtp}: p");
            // q starts with p[..151]: 150 ids come from the entry (MTP: paired with p[150]).
            assert_eq!(reusable(&entry, &q, mtp && m.has_mtp()), 150);
            let (reused, next) =
                pollster::block_on(prefill_prompt(&mut s, &q, Some(&entry), mtp, q.len())).unwrap();
            assert_eq!(reused, 150);
            let next = next.unwrap();
            assert_eq!(next.tokens[..], q[..q.len() - 1]);
            assert_eq!(run(&mut s, &q, q.len() - 1), want_q, "{name} mtp {mtp}: q");
            // A prompt that differs right after the entry's ids: for MTP the entry's last MTP pair
            // does not fit it, for plain decoding it does.
            let mut r2: Vec<u32> = p[..150].to_vec();
            r2.push((p[150] + 1) % m.config.vocab_size as u32);
            r2.extend_from_slice(&r.prompts[1]);
            let k = reusable(&entry, &r2, mtp && m.has_mtp());
            assert_eq!(k, if mtp && m.has_mtp() { 0 } else { 150 });
            let (reused, _) =
                pollster::block_on(prefill_prompt(&mut s, &r2, Some(&entry), mtp, 0)).unwrap();
            assert_eq!(reused, k);
            let got = run(&mut s, &r2, r2.len() - 1);
            s.reset();
            assert_eq!(got, gen(&mut s, &r2, 24), "{name} mtp {mtp}: r2");
        }
    }
}

#[test]
fn prompt_cache_records_several_points_of_one_prompt() {
    // `prefill_prompt_at`: the states after a prompt's shared start (a system prompt) and after
    // more of it, recorded on the way in one prefill (points unsorted and repeated): each entry
    // holds its ids, the prompt's own output is the uncached one, the shorter entry serves a
    // prompt that shares only its ids (again the uncached output), and points at or below the
    // ids reused record nothing.
    use qwgpu_engine::decode::cache::{prefill_prompt_at, reusable};
    let name = "mtp-perm";
    let r = load_reference(name);
    let m = model(name);
    let p = &r.prompts[3];
    let q: Vec<u32> = p[..41].iter().chain(&r.prompts[2]).cloned().collect();
    for mtp in [false, true] {
        let mut s = session(&m, 512, 64);
        let run =
            |s: &mut Session, prompt: &[u32]| greedy_from(s, prompt, prompt.len() - 1, 16, mtp);
        let want_p = gen(&mut s, p, 16);
        s.reset();
        let want_q = gen(&mut s, &q, 16);
        let (reused, entries) =
            pollster::block_on(prefill_prompt_at(&mut s, p, None, mtp, &[150, 40, 150])).unwrap();
        assert_eq!(reused, 0);
        let got: Vec<(usize, u32)> = entries.iter().map(|e| (e.tokens.len(), e.pos)).collect();
        assert_eq!(got, [(40, 40), (150, 150)], "mtp {mtp}");
        assert_eq!(entries[0].tokens[..], p[..40]);
        assert_eq!(entries[1].tokens[..], p[..150]);
        assert_eq!(run(&mut s, p), want_p, "mtp {mtp}: p fed in three pieces");
        // q shares p's first 41 ids: the shorter entry serves it, the longer does not.
        let spec = mtp && m.has_mtp();
        assert_eq!(reusable(&entries[0], &q, spec), 40);
        assert_eq!(reusable(&entries[1], &q, spec), 0);
        let (reused, more) = pollster::block_on(prefill_prompt_at(
            &mut s,
            &q,
            Some(&entries[0]),
            mtp,
            &[30, 40],
        ))
        .unwrap();
        assert_eq!(reused, 40);
        assert!(
            more.is_empty(),
            "mtp {mtp}: points at or below the ids reused"
        );
        assert_eq!(
            run(&mut s, &q),
            want_q,
            "mtp {mtp}: q from the shorter entry"
        );
    }
}

#[test]
fn a_prompt_fed_a_slice_at_a_time_leaves_the_state_of_one_fed_whole() {
    // `PromptFeed` (how a request's prompt joins a server's batch: a slice between two of the
    // batch's steps): fed 7 ids per call with points on the way and another session's work on
    // the GPU between the calls, it records the entries and leaves the state (KV rows,
    // Gated-DeltaNet states, MTP cache) of the prompt fed whole, byte for byte, and the output
    // of the prompt alone.
    use qwgpu_engine::decode::cache::PromptFeed;
    let name = "mtp-perm";
    let r = load_reference(name);
    let m = model(name);
    let p = &r.prompts[3];
    let head = p.len() - 1;
    assert!(head > 150, "prompt 3 has {} ids", p.len());
    let same = |what: &str, got: &SavedState, want: &SavedState| {
        assert_eq!(
            (got.pos, got.mtp_pos, got.mtp_synced),
            (want.pos, want.mtp_pos, want.mtp_synced),
            "{what}"
        );
        assert_eq!(got.buffers.len(), want.buffers.len(), "{what}");
        for (g, w) in got.buffers.iter().zip(&want.buffers) {
            assert_eq!(g.name, w.name, "{what}");
            assert!(g.data == w.data, "{what}: {} differs", g.name);
        }
    };
    for mtp in [false, true] {
        let spec = mtp && m.has_mtp();
        // Whole: the prompt's first n ids in one prefill (with the MTP cache paired with the id
        // after them when speculating).
        let mut whole = session(&m, 512, 64);
        let mut fed_whole = |n: usize| {
            whole.reset();
            let ids = &p[..n];
            if spec {
                pollster::block_on(whole.prefill_with(ids, Some(p[n]))).unwrap();
            } else {
                pollster::block_on(whole.prefill(ids)).unwrap();
            }
            save(&mut whole)
        };
        let want: Vec<SavedState> = [40, 150, head].into_iter().map(&mut fed_whole).collect();
        let mut s = session(&m, 512, 64);
        let mut other = session(&m, 512, 64);
        let mut feed = PromptFeed::start(&mut s, p, None, mtp, &[150, 40]).unwrap();
        assert_eq!(feed.remaining(), head);
        let mut calls = 1;
        while !pollster::block_on(feed.advance(&mut s, 7)).unwrap() {
            calls += 1;
            // Other work on the GPU between two slices.
            gen(&mut other, &r.prompts[1], 2);
        }
        assert_eq!(calls, head.div_ceil(7), "mtp {mtp}: 7 ids per call");
        assert_eq!(feed.remaining(), 0);
        let (reused, entries) = feed.finish();
        assert_eq!(reused, 0);
        assert_eq!(entries.len(), 2, "mtp {mtp}");
        assert_eq!(entries[0].tokens[..], p[..40]);
        assert_eq!(entries[1].tokens[..], p[..150]);
        same(&format!("mtp {mtp}: entry at 40"), &entries[0], &want[0]);
        same(&format!("mtp {mtp}: entry at 150"), &entries[1], &want[1]);
        let state = save(&mut s);
        same(&format!("mtp {mtp}: the whole prompt"), &state, &want[2]);
        let mut fresh = session(&m, 512, 64);
        assert_eq!(
            greedy_from(&mut s, p, head, 16, mtp),
            gen(&mut fresh, p, 16),
            "mtp {mtp}: output"
        );
    }
}

#[test]
fn plain_sessions_of_an_mtp_checkpoint_fold_norms_and_share_states() {
    // `SessionOptions::speculative = false` on a checkpoint with an MTP head: no MTP, the
    // RMSNorms folded into the decode matmuls (as in speculative sessions), mlx-lm's greedy
    // tokens, and states that move to and from speculative sessions (prefill tiles never fold,
    // so a prompt leaves the same state in both).
    let names: Vec<String> = format_cover()
        .into_iter()
        .filter(|n| load_reference(n).has_mtp)
        .collect();
    assert!(!names.is_empty(), "no MTP fixture");
    for name in names {
        let r = load_reference(&name);
        let m = model(&name);
        let prompt = &r.prompts[3];
        let mut spec = session(&m, 512, 32);
        let mut plain = pollster::block_on(Session::new(
            m.clone(),
            SessionOptions {
                max_ctx: 512,
                prefill_chunk: 32,
                speculative: false,
                ..Default::default()
            },
        ))
        .unwrap();
        assert!(!plain.mtp_available(), "{name}: MTP in a plain session");
        // Both kinds of session fold the RMSNorms into the decode matmuls where they can
        // (`fold_norms_with_mtp`), so a plain step is the same plan in either.
        assert_eq!(
            plain.dispatches_per_token(),
            spec.dispatches_per_token(),
            "{name}: plain session vs speculative session, dispatches per token"
        );
        let n = r.greedy[3].len().min(48);
        let limit = r.top2_gap[3]
            .iter()
            .position(|g| *g < LOGIT_TOL)
            .unwrap_or(n)
            .min(n);
        let whole = gen(&mut plain, prompt, n);
        assert_eq!(
            whole[..limit],
            r.greedy[3][..limit],
            "{name}: plain session vs mlx-lm"
        );

        // A plain session's prefix state in a speculative session: the MTP cache is known not
        // to be in step, and decoding goes on as the speculative session's own.
        plain.reset();
        pollster::block_on(plain.prefill(&prompt[..200])).unwrap();
        let from_plain = save(&mut plain);
        assert!(
            !from_plain.mtp_synced,
            "{name}: plain session claims an MTP cache in step"
        );
        spec.reset();
        let own = gen(&mut spec, prompt, 16);
        spec.restore(&from_plain).unwrap();
        assert!(
            !spec.mtp_available(),
            "{name}: MTP after a plain session's state"
        );
        assert_eq!(
            gen(&mut spec, &prompt[200..], 16),
            own,
            "{name}: plain state in a speculative session"
        );

        // And a speculative session's state (MTP cache in step) in the plain session.
        spec.reset();
        pollster::block_on(spec.prefill_with(&prompt[..200], Some(prompt[200]))).unwrap();
        let from_spec = save(&mut spec);
        assert!(from_spec.mtp_synced);
        plain.restore(&from_spec).unwrap();
        assert!(!plain.mtp_available());
        assert_eq!(
            gen(&mut plain, &prompt[200..], n),
            whole,
            "{name}: speculative state in a plain session"
        );
        println!(
            "{name}: plain session {} dispatches per token vs {}; {limit} tokens checked against mlx-lm",
            plain.dispatches_per_token(),
            spec.dispatches_per_token()
        );
    }
}
