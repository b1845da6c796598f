//! Batched streams: sequences decoded together in one [`Batch`] give, row for row, the bits of
//! the same sequences decoded alone in plain sessions (whose logits `model_vs_mlx` checks against
//! mlx-lm), whatever their positions, whichever slot they take and whether the other slot is
//! free, taken, released or refilled. On the fixtures that together hold every weight format.

use std::sync::Arc;

use qwgpu_engine::model::{Batch, BatchOptions, Model, RunError, Session, SessionOptions};
use qwgpu_engine::ops::attention::set_attention_fold;
use qwgpu_engine::ops::gdn::set_gated_recurrence;
use qwgpu_tests::fixtures::*;
use qwgpu_tests::*;

const CTX: u32 = 256;
const STEPS: usize = 10;

/// The fixture model `name` on the test GPU.
fn load(name: &str) -> Arc<Model> {
    Arc::new(
        Model::load(model_gpu(), &fixtures_dir().join(name), &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{name}: {e}")),
    )
}

fn solo(model: &Arc<Model>) -> Session {
    pollster::block_on(Session::new(
        model.clone(),
        SessionOptions {
            max_ctx: CTX,
            prefill_chunk: 64,
            speculative: false,
            ..Default::default()
        },
    ))
    .unwrap()
}

/// A session holding `prompt` but its last id (the state a batch admits).
fn prefilled(model: &Arc<Model>, prompt: &[u32]) -> Session {
    let mut s = solo(model);
    if prompt.len() > 1 {
        pollster::block_on(s.prefill(&prompt[..prompt.len() - 1])).unwrap();
    }
    s
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The sequence alone: `steps` logits rows, each after feeding the previous row's argmax (the
/// prompt's last id first), and the ids fed.
fn alone(model: &Arc<Model>, prompt: &[u32], steps: usize) -> (Vec<Vec<f32>>, Vec<u32>) {
    let mut s = prefilled(model, prompt);
    let mut id = *prompt.last().unwrap();
    let (mut rows, mut fed) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        fed.push(id);
        let l = pollster::block_on(s.forward_logits(&[id])).unwrap();
        id = argmax(&l);
        rows.push(l);
    }
    (rows, fed)
}

/// The sequence alone, greedy on the GPU: the ids chosen after the prompt.
fn alone_greedy(model: &Arc<Model>, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut s = prefilled(model, prompt);
    let mut id = *prompt.last().unwrap();
    let mut out = Vec::new();
    for _ in 0..steps {
        id = pollster::block_on(s.forward_greedy(&[id])).unwrap();
        out.push(id);
    }
    out
}

fn batch(model: &Arc<Model>, slots: u32) -> Batch {
    batch_with(model, slots, None)
}

fn batch_with(model: &Arc<Model>, slots: u32, attn_split: Option<bool>) -> Batch {
    pollster::block_on(Batch::new(
        model.clone(),
        BatchOptions {
            slots,
            max_ctx: CTX,
            attn_split,
            ..Default::default()
        },
    ))
    .unwrap()
}

/// Prompts of different lengths (so the rows sit at different positions): a fixture prompt, a
/// one-token prompt, and one longer than a prefill chunk.
fn prompts(r: &Reference) -> Vec<Vec<u32>> {
    let long = r.prompts.iter().max_by_key(|p| p.len()).unwrap();
    vec![
        r.prompts[0].clone(),
        vec![r.prompts[1][0]],
        long[..long.len().min(150)].to_vec(),
    ]
}

#[test]
fn batched_rows_give_the_bits_of_sequences_alone() {
    let mut ran = 0;
    for name in format_cover() {
        let r = load_reference(&name);
        let model = load(&name);
        let ps = prompts(&r);
        let refs: Vec<_> = ps.iter().map(|p| alone(&model, p, STEPS)).collect();

        // Two streams side by side, fed the ids their lone runs chose; attention's split pass
        // and its one-pass form, the Gated-DeltaNet recurrence with and without the gated
        // norm in it (what devices pick; plans follow the switch when built, and both settings
        // give the same bits, so tests running meanwhile are unaffected).
        // (And attention's prep and final pass folded into the split pass: fold levels 2, 1.)
        for (a, b, split, gated, fold) in [
            (0, 2, Some(true), true, 2),
            (2, 1, Some(false), true, 1),
            (0, 1, Some(true), false, 1),
        ] {
            set_gated_recurrence(gated);
            set_attention_fold(Some(fold));
            let bt = batch_with(&model, 2, split);
            set_gated_recurrence(true);
            set_attention_fold(None);
            let mut bt = bt;
            bt.admit(0, &mut prefilled(&model, &ps[a])).unwrap();
            bt.admit(1, &mut prefilled(&model, &ps[b])).unwrap();
            assert_eq!(bt.pos(0), Some(ps[a].len() as u32 - 1));
            for i in 0..STEPS {
                let rows =
                    pollster::block_on(bt.step_logits(&[Some(refs[a].1[i]), Some(refs[b].1[i])]))
                        .unwrap();
                for (slot, p) in [(0usize, a), (1, b)] {
                    assert_bits_eq(
                        &format!("{name}: prompt {p} in slot {slot}, step {i}"),
                        rows[slot].as_ref().unwrap(),
                        &refs[p].0[i],
                    );
                }
            }
            ran += 1;
        }

        // One stream with the other slot free (its row runs and is ignored); then a second
        // stream joins, the first leaves, and a third takes its slot while the second goes on.
        let mut bt = batch(&model, 2);
        bt.admit(1, &mut prefilled(&model, &ps[0])).unwrap();
        assert_eq!(bt.free_slot(), Some(0));
        for i in 0..4 {
            let rows = pollster::block_on(bt.step_logits(&[None, Some(refs[0].1[i])])).unwrap();
            assert!(rows[0].is_none());
            assert_bits_eq(
                &format!("{name}: slot 1 beside a free slot, step {i}"),
                rows[1].as_ref().unwrap(),
                &refs[0].0[i],
            );
        }
        bt.admit(0, &mut prefilled(&model, &ps[2])).unwrap();
        for i in 4..7 {
            let rows =
                pollster::block_on(bt.step_logits(&[Some(refs[2].1[i - 4]), Some(refs[0].1[i])]))
                    .unwrap();
            assert_bits_eq(
                &format!("{name}: joined stream, step {}", i - 4),
                rows[0].as_ref().unwrap(),
                &refs[2].0[i - 4],
            );
            assert_bits_eq(
                &format!("{name}: first stream after the join, step {i}"),
                rows[1].as_ref().unwrap(),
                &refs[0].0[i],
            );
        }
        bt.release(1);
        bt.admit(1, &mut prefilled(&model, &ps[1])).unwrap();
        for i in 0..3 {
            let rows =
                pollster::block_on(bt.step_logits(&[Some(refs[2].1[i + 3]), Some(refs[1].1[i])]))
                    .unwrap();
            assert_bits_eq(
                &format!("{name}: stream in a refilled slot, step {i}"),
                rows[1].as_ref().unwrap(),
                &refs[1].0[i],
            );
            assert_bits_eq(
                &format!("{name}: stream beside a refilled slot, step {}", i + 3),
                rows[0].as_ref().unwrap(),
                &refs[2].0[i + 3],
            );
        }

        // Slot 0 alone runs one row with the 1-token tiles; a stream joining in slot 1 makes
        // the steps two rows again.
        let mut bt = batch(&model, 2);
        bt.admit(0, &mut prefilled(&model, &ps[2])).unwrap();
        for i in 0..STEPS {
            if i == 3 {
                bt.admit(1, &mut prefilled(&model, &ps[0])).unwrap();
            }
            let ids = [Some(refs[2].1[i]), (i >= 3).then(|| refs[0].1[i - 3])];
            let rows = pollster::block_on(bt.step_logits(&ids)).unwrap();
            assert_bits_eq(
                &format!("{name}: slot 0 (alone before step 3), step {i}"),
                rows[0].as_ref().unwrap(),
                &refs[2].0[i],
            );
            if i >= 3 {
                assert_bits_eq(
                    &format!("{name}: slot 1 joining a lone slot 0, step {}", i - 3),
                    rows[1].as_ref().unwrap(),
                    &refs[0].0[i - 3],
                );
            }
        }

        // Greedy on the GPU: the batch's choices are the lone sessions' choices.
        let mut bt = batch(&model, 2);
        bt.admit(0, &mut prefilled(&model, &ps[1])).unwrap();
        bt.admit(1, &mut prefilled(&model, &ps[2])).unwrap();
        let (ga, gb) = (
            alone_greedy(&model, &ps[1], STEPS),
            alone_greedy(&model, &ps[2], STEPS),
        );
        let mut next = [*ps[1].last().unwrap(), *ps[2].last().unwrap()];
        for i in 0..STEPS {
            let ids = pollster::block_on(bt.step(&[Some(next[0]), Some(next[1])])).unwrap();
            next = [ids[0].unwrap(), ids[1].unwrap()];
            assert_eq!(next, [ga[i], gb[i]], "{name}: greedy step {i}");
        }
        assert_eq!(bt.pos(1), Some(ps[2].len() as u32 - 1 + STEPS as u32));

        // Two steps in flight, each slot's choice feeding its next step on the GPU; a stream
        // joins while a step is in flight (its first id from the host, the other's from the GPU).
        let mut bt = batch(&model, 2);
        bt.admit(1, &mut prefilled(&model, &ps[2])).unwrap();
        bt.submit(&[None, Some(*ps[2].last().unwrap())]).unwrap();
        bt.submit(&[None, None]).unwrap();
        assert!(bt.submit(&[None, None]).is_err(), "a third step in flight");
        let mut got = [Vec::new(), Vec::new()];
        for _ in 0..2 {
            let ids = pollster::block_on(bt.read()).unwrap();
            assert_eq!(ids[0], None);
            got[1].push(ids[1].unwrap());
        }
        bt.submit(&[None, None]).unwrap();
        bt.admit(0, &mut prefilled(&model, &ps[1])).unwrap();
        bt.submit(&[Some(*ps[1].last().unwrap()), None]).unwrap();
        while got[1].len() < STEPS {
            let ids = pollster::block_on(bt.read()).unwrap();
            if let Some(id) = ids[0] {
                got[0].push(id);
            }
            got[1].push(ids[1].unwrap());
            if got[1].len() + bt.pending() < STEPS {
                bt.submit(&[None, None]).unwrap();
            }
        }
        while bt.pending() > 0 {
            pollster::block_on(bt.read()).unwrap();
        }
        assert_eq!(got[1], gb, "{name}: chained steps");
        assert_eq!(
            got[0],
            ga[..got[0].len()],
            "{name}: stream joined in flight"
        );
        assert!(got[0].len() >= STEPS - 4);
        println!(
            "{name}: {} dispatches per batched step of 2 streams",
            bt.dispatches_per_step()
        );
    }
    assert!(ran > 0);
}

/// The first three of [`prompts`] and a fourth of yet another length (a fixture prompt's
/// first ids in reverse).
fn four_prompts(r: &Reference) -> Vec<Vec<u32>> {
    let mut ps = prompts(r);
    let p = &r.prompts[0];
    ps.push(p[..p.len().min(7)].iter().rev().copied().collect());
    ps
}

#[test]
fn three_and_four_streams_give_the_bits_of_sequences_alone() {
    // Steps of three or four rows run the 3- or 4-token decode tiles (a step runs the rows up to
    // the last occupied slot): each row keeps the bits of its sequence alone, as streams join, leave
    // and the step's row count moves between 1, 2, 3 and 4.
    const LONG: usize = 12;
    let mut ran = 0;
    for name in format_cover() {
        let r = load_reference(&name);
        let model = load(&name);
        let ps = four_prompts(&r);
        let refs: Vec<_> = ps.iter().map(|p| alone(&model, p, LONG)).collect();
        for split in [Some(true), Some(false)] {
            let mut bt = batch_with(&model, 4, split);
            // (prompt, steps taken) of the stream in each slot.
            let mut slots: [Option<(usize, usize)>; 4] = [None; 4];
            let admit =
                |bt: &mut Batch, slots: &mut [Option<(usize, usize)>; 4], s: usize, p: usize| {
                    bt.admit(s as u32, &mut prefilled(&model, &ps[p])).unwrap();
                    slots[s] = Some((p, 0));
                };
            admit(&mut bt, &mut slots, 0, 0);
            admit(&mut bt, &mut slots, 1, 1);
            admit(&mut bt, &mut slots, 2, 2);
            for step in 0..LONG {
                match step {
                    // Four rows.
                    3 => admit(&mut bt, &mut slots, 3, 3),
                    // Slot 0 free among four rows.
                    6 => {
                        bt.release(0);
                        slots[0] = None;
                    }
                    // Three rows, row 0 free; then two, then one (slot 0 refilled alone).
                    8 => {
                        bt.release(3);
                        slots[3] = None;
                    }
                    10 => {
                        bt.release(1);
                        bt.release(2);
                        slots[1] = None;
                        slots[2] = None;
                        admit(&mut bt, &mut slots, 1, 2);
                    }
                    11 => {
                        bt.release(1);
                        slots[1] = None;
                        admit(&mut bt, &mut slots, 0, 3);
                    }
                    _ => {}
                }
                let ids: Vec<Option<u32>> =
                    slots.iter().map(|s| s.map(|(p, i)| refs[p].1[i])).collect();
                let rows = pollster::block_on(bt.step_logits(&ids)).unwrap();
                for (slot, s) in slots.iter_mut().enumerate() {
                    match s {
                        Some((p, i)) => {
                            assert_bits_eq(
                                &format!(
                                    "{name}: prompt {p} in slot {slot} of 4, its step {i} (batch step {step}, split {split:?})"
                                ),
                                rows[slot].as_ref().unwrap(),
                                &refs[*p].0[*i],
                            );
                            *i += 1;
                        }
                        None => assert!(rows[slot].is_none()),
                    }
                }
            }
            ran += 1;
        }

        // A batch of three slots, greedy on the GPU with two steps in flight (each slot's
        // choice feeding its next step): every stream's choices are its lone session's.
        let want: Vec<Vec<u32>> = (0..3)
            .map(|p| alone_greedy(&model, &ps[p], STEPS))
            .collect();
        let mut bt = batch(&model, 3);
        for p in 0..3 {
            bt.admit(p as u32, &mut prefilled(&model, &ps[p])).unwrap();
        }
        let first: Vec<Option<u32>> = (0..3).map(|p| ps[p].last().copied()).collect();
        bt.submit(&first).unwrap();
        let mut got = vec![Vec::new(); 3];
        while got[0].len() < STEPS {
            if got[0].len() + bt.pending() < STEPS {
                bt.submit(&[None, None, None]).unwrap();
            }
            let ids = pollster::block_on(bt.read()).unwrap();
            for (g, id) in got.iter_mut().zip(ids) {
                g.push(id.unwrap());
            }
        }
        assert_eq!(got, want, "{name}: three greedy streams chained on the GPU");
        println!(
            "{name}: {} dispatches per batched step of 3 streams",
            bt.dispatches_per_step()
        );
    }
    assert!(ran > 0);
}

#[test]
fn batch_refuses_bad_input_and_keeps_its_streams() {
    let name = &format_cover()[0];
    let r = load_reference(name);
    let model = load(name);
    let vocab = model.config.vocab_size as u32;
    assert!(pollster::block_on(Batch::new(
        model.clone(),
        BatchOptions {
            slots: qwgpu_engine::model::MAX_BATCH + 1,
            ..Default::default()
        }
    ))
    .is_err());
    let prompt = &r.prompts[0];
    let (refs, fed) = alone(&model, prompt, 3);
    let mut bt = batch(&model, 2);
    let err = pollster::block_on(bt.step(&[None, None])).unwrap_err();
    assert!(matches!(err, RunError::Batch(_)), "{err}");
    bt.admit(0, &mut prefilled(&model, prompt)).unwrap();
    // A taken slot, a slot that does not exist, a session of another context size that does
    // not fit the batch's.
    let err = bt.admit(0, &mut prefilled(&model, prompt)).unwrap_err();
    assert!(matches!(err, RunError::Busy(_)), "{err}");
    let err = bt.admit(5, &mut prefilled(&model, prompt)).unwrap_err();
    assert!(err.to_string().contains("slot 5"), "{err}");
    // Wrong id count, an id outside the vocabulary, no id for a taken slot: refused, and the
    // stream is unharmed.
    for ids in [
        vec![Some(fed[0])],
        vec![Some(vocab), None],
        vec![None, Some(fed[0])],
    ] {
        assert!(pollster::block_on(bt.step(&ids)).is_err(), "{ids:?}");
        assert_eq!(bt.pos(0), Some(prompt.len() as u32 - 1));
    }
    for i in 0..3 {
        let rows = pollster::block_on(bt.step_logits(&[Some(fed[i]), None])).unwrap();
        assert_bits_eq(
            &format!("{name}: after refusals, step {i}"),
            rows[0].as_ref().unwrap(),
            &refs[i],
        );
    }
    // A session whose KV caches hold f32 does not enter a batch of f16 caches.
    let mut f16 = pollster::block_on(Batch::new(
        model.clone(),
        BatchOptions {
            slots: 2,
            max_ctx: CTX,
            kv_f16: true,
            ..Default::default()
        },
    ))
    .unwrap();
    let err = f16.admit(0, &mut prefilled(&model, prompt)).unwrap_err();
    assert!(
        matches!(err, RunError::State(_)) && err.to_string().contains("f16"),
        "{err}"
    );
    assert_eq!(f16.pos(0), None);
    // A full context is refused before anything runs.
    let mut small = pollster::block_on(Batch::new(
        model.clone(),
        BatchOptions {
            slots: 2,
            max_ctx: prompt.len() as u32,
            ..Default::default()
        },
    ))
    .unwrap();
    small.admit(1, &mut prefilled(&model, prompt)).unwrap();
    pollster::block_on(small.step(&[None, Some(fed[0])])).unwrap();
    let err = pollster::block_on(small.step(&[None, Some(fed[1])])).unwrap_err();
    assert!(matches!(err, RunError::ContextFull { .. }), "{err}");
    let err = small
        .admit(
            0,
            &mut prefilled(&model, &[prompt.clone(), prompt.clone()].concat()),
        )
        .unwrap_err();
    assert!(matches!(err, RunError::ContextFull { .. }), "{err}");
}

/// Two sampling settings that use every part of the sampler: top-p with repetition and presence
/// penalties; top-k with a frequency penalty and a logit bias.
fn two_samplings() -> (
    qwgpu_engine::decode::sampler::SamplingParams,
    qwgpu_engine::decode::sampler::SamplingParams,
) {
    use qwgpu_engine::decode::sampler::SamplingParams;
    let a = SamplingParams {
        temperature: 0.9,
        top_p: 0.9,
        repetition_penalty: 1.2,
        presence_penalty: 0.4,
        seed: 5,
        ..Default::default()
    };
    let b = SamplingParams {
        temperature: 1.3,
        top_k: 12,
        frequency_penalty: 0.3,
        logit_bias: vec![(3, 2.0)],
        seed: 9,
        ..Default::default()
    };
    (a, b)
}

/// `n` tokens after `prompt` in a lone session, greedy (`None`) or sampled with `params`.
fn alone_sampled(
    model: &Arc<Model>,
    prompt: &[u32],
    params: Option<&qwgpu_engine::decode::sampler::SamplingParams>,
    n: usize,
) -> Vec<u32> {
    use qwgpu_engine::decode::{generate, GenOptions};
    let mut s = solo(model);
    s.set_sampling(params, false).unwrap();
    let opts = GenOptions {
        max_tokens: n,
        eos: vec![],
        ignore_eos: true,
    };
    pollster::block_on(generate(&mut s, prompt, &opts, &mut |_| true))
        .unwrap()
        .0
}

/// A batch of one slot per prompt, each admitted with its sampling settings (None: greedy) and
/// its first step submitted.
fn started(
    model: &Arc<Model>,
    ps: &[Vec<u32>],
    sets: &[Option<&qwgpu_engine::decode::sampler::SamplingParams>],
) -> Batch {
    let mut bt = batch(model, ps.len() as u32);
    for (i, (p, sp)) in ps.iter().zip(sets).enumerate() {
        bt.admit(i as u32, &mut prefilled(model, p)).unwrap();
        bt.set_sampling(i as u32, *sp, p).unwrap();
    }
    let first: Vec<Option<u32>> = ps.iter().map(|p| p.last().copied()).collect();
    bt.submit(&first).unwrap();
    bt
}

#[test]
fn sampled_streams_draw_what_they_draw_alone() {
    // Each slot has its own sampler (parameters, penalty history, draws): a seeded stream in a
    // batch samples, token for token, what the same request samples alone in a session, beside
    // a greedy stream or another sampled one.
    use qwgpu_engine::decode::sampler::SamplingParams;
    let name = &format_cover()[0];
    let r = load_reference(name);
    let model = load(name);
    let (a, b) = two_samplings();
    let ps = prompts(&r);
    let steps = 16;
    let alone =
        |p: &[u32], params: Option<&SamplingParams>| alone_sampled(&model, p, params, steps);
    let cases: [(
        usize,
        Option<&SamplingParams>,
        usize,
        Option<&SamplingParams>,
    ); 3] = [
        (0, Some(&a), 2, Some(&b)),
        (2, None, 0, Some(&b)),
        (1, Some(&a), 0, None),
    ];
    for (pa, sa, pb, sb) in cases {
        let want = [alone(&ps[pa], sa), alone(&ps[pb], sb)];
        // The draws must depend on the settings (else the test shows nothing).
        if let Some(sa) = sa {
            let other = SamplingParams {
                seed: sa.seed + 1,
                ..sa.clone()
            };
            assert_ne!(
                alone(&ps[pa], Some(&other)),
                want[0],
                "{name}: the seed changes nothing"
            );
        }
        let mut bt = started(&model, &[ps[pa].clone(), ps[pb].clone()], &[sa, sb]);
        let mut got = [Vec::new(), Vec::new()];
        while got[0].len() < steps {
            if got[0].len() + bt.pending() < steps {
                bt.submit(&[None, None]).unwrap();
            }
            let ids = pollster::block_on(bt.read()).unwrap();
            got[0].push(ids[0].unwrap());
            got[1].push(ids[1].unwrap());
        }
        assert_eq!(got, want, "{name}: prompts {pa} / {pb}");
    }
    // Four slots (the 4-token tile): two sampled streams and two greedy ones.
    let ps = four_prompts(&r);
    let sets = [Some(&a), None, Some(&b), None];
    let want: Vec<Vec<u32>> = (0..4).map(|i| alone(&ps[i], sets[i])).collect();
    let mut bt = started(&model, &ps, &sets);
    let mut got = vec![Vec::new(); 4];
    while got[0].len() < steps {
        if got[0].len() + bt.pending() < steps {
            bt.submit(&[None; 4]).unwrap();
        }
        let ids = pollster::block_on(bt.read()).unwrap();
        for (g, id) in got.iter_mut().zip(ids) {
            g.push(id.unwrap());
        }
    }
    assert_eq!(got, want, "{name}: four streams, two sampled");
}

/// A test constraint over the committed tokens: any token at positions 0 mod 4, one forced id at
/// 1 mod 4, at the others the ids i with (5i + n) % 3 == 0 (n the position); complete after
/// `end` tokens.
struct Hops {
    vocab: u32,
    n: usize,
    end: usize,
}

impl Hops {
    fn set(&self, mask: &mut [u32]) -> qwgpu_engine::decode::constrain::Allowed {
        use qwgpu_engine::decode::constrain::Allowed;
        let n = self.n;
        if n >= self.end {
            return Allowed::End;
        }
        match n % 4 {
            0 => Allowed::Any,
            1 => {
                let id = (7 * n as u32 + 3) % self.vocab;
                mask[id as usize / 32] |= 1 << (id % 32);
                Allowed::Mask
            }
            _ => {
                for i in 0..self.vocab {
                    if (5 * i as usize + n) % 3 == 0 {
                        mask[i as usize / 32] |= 1 << (i % 32);
                    }
                }
                Allowed::Mask
            }
        }
    }

    fn allows(&self, id: u32) -> bool {
        let mut m = vec![0u32; self.vocab.div_ceil(32) as usize];
        match self.set(&mut m) {
            qwgpu_engine::decode::constrain::Allowed::Any => true,
            qwgpu_engine::decode::constrain::Allowed::End => false,
            qwgpu_engine::decode::constrain::Allowed::Mask => {
                m[id as usize / 32] >> (id % 32) & 1 == 1
            }
        }
    }
}

impl qwgpu_engine::decode::constrain::TokenConstraint for Hops {
    fn allowed(
        &mut self,
        mask: &mut [u32],
    ) -> Result<qwgpu_engine::decode::constrain::Allowed, String> {
        Ok(self.set(mask))
    }
    fn commit(&mut self, id: u32) -> Result<(), String> {
        if !self.allows(id) {
            return Err(format!("token {id} was not allowed at position {}", self.n));
        }
        self.n += 1;
        Ok(())
    }
}

#[test]
fn constrained_streams_choose_what_they_choose_alone() {
    // A slot's token mask (`set_token_mask`, set between a step's body and its head from the
    // tokens read meanwhile) limits its choices as a lone session's constrained decoding does:
    // greedy and sampled constrained streams beside an unconstrained one give, token for token,
    // what `generate_constrained_in_context` gives each alone.
    use qwgpu_engine::decode::constrain::{
        generate_constrained_in_context, Allowed, TokenConstraint,
    };
    use qwgpu_engine::decode::sampler::SamplingParams;
    use qwgpu_engine::decode::GenOptions;
    let name = &format_cover()[0];
    let r = load_reference(name);
    let model = load(name);
    let vocab = model.config.vocab_size as u32;
    let words = vocab.div_ceil(32) as usize;
    let end = 14;
    let hops = || Hops { vocab, n: 0, end };
    let a = SamplingParams {
        temperature: 0.9,
        top_p: 0.9,
        repetition_penalty: 1.2,
        seed: 5,
        ..Default::default()
    };
    let ps = prompts(&r);
    let alone = |p: &[u32], c: bool, sp: Option<&SamplingParams>| -> Vec<u32> {
        let mut s = solo(&model);
        s.set_sampling(sp, false).unwrap();
        let opts = GenOptions {
            max_tokens: end + 4,
            eos: vec![],
            ignore_eos: true,
        };
        let out = if c {
            let mut h = hops();
            pollster::block_on(generate_constrained_in_context(
                &mut s,
                p,
                0,
                &opts,
                &mut h,
                &mut |_| true,
            ))
        } else {
            pollster::block_on(qwgpu_engine::decode::generate(
                &mut s,
                p,
                &opts,
                &mut |_| true,
            ))
        };
        out.unwrap().0
    };
    // (constrained, sampling) per slot: beside a sampled stream (every head samples), and all
    // greedy (a masked slot alone sends the head through the samplers).
    let cases: [&[(bool, Option<&SamplingParams>)]; 2] = [
        &[(true, None), (false, None), (true, Some(&a))],
        &[(false, None), (true, None)],
    ];
    for sets in cases {
        let n = sets.len();
        let want: Vec<Vec<u32>> = (0..n)
            .map(|i| alone(&ps[i], sets[i].0, sets[i].1))
            .collect();
        // The constraint shows in the tokens: every one allowed, and not what the prompt gives
        // free.
        for (i, w) in want.iter().enumerate() {
            if sets[i].0 {
                assert_eq!(w.len(), end, "{name}: slot {i} ends with its constraint");
                let mut h = hops();
                for &id in w {
                    h.commit(id).unwrap();
                }
                if sets[i].1.is_none() {
                    assert_ne!(
                        w[..],
                        alone(&ps[i], false, None)[..end],
                        "{name}: the mask changes nothing"
                    );
                }
            }
        }

        let mut bt = batch(&model, n as u32);
        let mut cons: Vec<Option<Hops>> = sets.iter().map(|s| s.0.then(hops)).collect();
        let mut mask = vec![0u32; words];
        // Sets slot i's mask for its next choice; false when its constraint is complete.
        let mut next_mask = |bt: &mut Batch, i: usize, c: &mut Hops| -> bool {
            mask.fill(0);
            match c.allowed(&mut mask).unwrap() {
                Allowed::End => false,
                Allowed::Any => {
                    bt.set_token_mask(i as u32, None).unwrap();
                    true
                }
                Allowed::Mask => {
                    bt.set_token_mask(i as u32, Some(&mask)).unwrap();
                    true
                }
            }
        };
        for (i, (_, sp)) in sets.iter().enumerate() {
            bt.admit(i as u32, &mut prefilled(&model, &ps[i])).unwrap();
            bt.set_sampling(i as u32, *sp, &ps[i]).unwrap();
            if let Some(c) = cons[i].as_mut() {
                assert!(next_mask(&mut bt, i, c));
            }
        }
        let limit = end + 4;
        let mut got: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut live = vec![true; n];
        let first: Vec<Option<u32>> = ps.iter().take(n).map(|p| p.last().copied()).collect();
        bt.submit(&first).unwrap();
        while bt.pending() > 0 {
            // The next step's body goes ahead of reading this one (its ids chained on the GPU).
            let ahead = live.iter().any(|&l| l);
            if ahead {
                bt.submit_body(&vec![None; n]).unwrap();
                // One step at a time while a body waits for its head.
                assert!(bt.submit(&vec![None; n]).is_err());
            }
            let ids = pollster::block_on(bt.read()).unwrap();
            for i in 0..n {
                let Some(id) = ids[i].filter(|_| live[i]) else {
                    continue;
                };
                got[i].push(id);
                let more = match cons[i].as_mut() {
                    Some(c) => {
                        c.commit(id).unwrap();
                        next_mask(&mut bt, i, c)
                    }
                    None => true,
                };
                if !more || got[i].len() >= limit {
                    live[i] = false;
                    bt.release(i as u32);
                }
            }
            if ahead {
                bt.submit_head().unwrap();
            }
        }
        assert_eq!(
            got, want,
            "{name}: constrained streams in a batch ({n} slots)"
        );
        // A head without a body is refused.
        assert!(bt.submit_head().is_err());
    }
}

#[test]
fn logprobs_in_a_batch_are_those_alone() {
    // A slot with logprobs (`set_logprobs`) reads, with each step, the chosen token's logprob
    // and its top alternatives: bit for bit what the same request reads alone, greedy and
    // sampled, with two steps in flight.
    use qwgpu_engine::decode::sampler::SamplingParams;
    use qwgpu_engine::decode::{generate, Event, GenOptions};
    let name = &format_cover()[0];
    let r = load_reference(name);
    let model = load(name);
    let greedy = SamplingParams {
        top_logprobs: 3,
        ..Default::default()
    };
    let sampled = SamplingParams {
        temperature: 0.8,
        top_k: 20,
        top_logprobs: 2,
        seed: 3,
        ..Default::default()
    };
    let steps = 9;
    type Lp = (u32, u32, Vec<(u32, u32)>);
    let key = |r: &qwgpu_engine::ops::sample::RowResult| -> Lp {
        (
            r.token,
            r.logprob.to_bits(),
            r.top.iter().map(|(i, l)| (*i, l.to_bits())).collect(),
        )
    };
    let ps = prompts(&r);
    // (sampling, logprobs) per slot.
    let sets: [(Option<&SamplingParams>, bool); 3] =
        [(Some(&greedy), true), (None, false), (Some(&sampled), true)];
    let alone = |p: &[u32], sp: Option<&SamplingParams>, lp: bool| -> (Vec<u32>, Vec<Lp>) {
        let mut s = solo(&model);
        s.set_sampling(sp, lp).unwrap();
        let opts = GenOptions {
            max_tokens: steps,
            eos: vec![],
            ignore_eos: true,
        };
        let mut lps = Vec::new();
        let out = pollster::block_on(generate(&mut s, p, &opts, &mut |e| {
            if let Event::Token(_, Some(r)) = e {
                lps.push(key(&r));
            }
            true
        }))
        .unwrap();
        (out.0, lps)
    };
    let want: Vec<(Vec<u32>, Vec<Lp>)> = (0..3)
        .map(|i| alone(&ps[i], sets[i].0, sets[i].1))
        .collect();
    assert_eq!(want[0].1.len(), steps, "{name}: logprobs alone");
    assert_eq!(want[0].1[0].2.len(), 3, "{name}: top logprobs alone");
    let mut bt = batch(&model, 3);
    for (i, (sp, lp)) in sets.iter().enumerate() {
        bt.admit(i as u32, &mut prefilled(&model, &ps[i])).unwrap();
        bt.set_sampling(i as u32, *sp, &ps[i]).unwrap();
        bt.set_logprobs(i as u32, *lp).unwrap();
    }
    let first: Vec<Option<u32>> = ps.iter().take(3).map(|p| p.last().copied()).collect();
    bt.submit(&first).unwrap();
    let mut got: Vec<(Vec<u32>, Vec<Lp>)> = vec![(Vec::new(), Vec::new()); 3];
    while got[0].0.len() < steps {
        if got[0].0.len() + bt.pending() < steps {
            bt.submit(&[None; 3]).unwrap();
        }
        let ids = pollster::block_on(bt.read()).unwrap();
        for i in 0..3 {
            got[i].0.push(ids[i].unwrap());
            match bt.last_logprobs(i as u32) {
                Some(r) => got[i].1.push(key(r)),
                None => assert!(!sets[i].1, "{name}: slot {i} read no logprobs"),
            }
        }
    }
    assert_eq!(got, want, "{name}: logprobs in a batch");
}

#[test]
fn a_relocated_stream_goes_on_as_in_its_old_slot() {
    // `Batch::relocate`: four streams (two sampled with penalties, bias and top-k/top-p, two
    // greedy); after some steps the first two leave and the last two move into slots 0 and 1
    // (state, position, sampler with its history and draws), so steps run two rows instead of
    // four; every stream's tokens are those of its sequence alone.
    use qwgpu_engine::decode::sampler::SamplingParams;
    let name = &format_cover()[0];
    let r = load_reference(name);
    let model = load(name);
    let (a, b) = two_samplings();
    let (before, steps) = (6, 16);
    let alone =
        |p: &[u32], params: Option<&SamplingParams>, n: usize| alone_sampled(&model, p, params, n);
    let ps = four_prompts(&r);
    let sets = [None, Some(&a), Some(&b), None];
    let want: Vec<Vec<u32>> = (0..4)
        .map(|i| alone(&ps[i], sets[i], if i < 2 { before } else { steps }))
        .collect();
    let mut bt = started(&model, &ps, &sets);
    let mut got = vec![Vec::new(); 4];
    while got[0].len() < before {
        if got[0].len() + bt.pending() < before {
            bt.submit(&[None; 4]).unwrap();
        } else {
            // A move with a step in flight is refused and changes nothing.
            bt.release(0);
            assert!(matches!(bt.relocate(2, 0), Err(RunError::Busy(_))));
        }
        let ids = pollster::block_on(bt.read()).unwrap();
        for (g, id) in got.iter_mut().zip(ids) {
            if let Some(id) = id {
                g.push(id);
            }
        }
    }
    assert_eq!(bt.pending(), 0);
    bt.release(0);
    bt.release(1);
    // Into a taken slot: refused.
    assert!(matches!(bt.relocate(2, 3), Err(RunError::Busy(_))));
    bt.relocate(2, 0).unwrap();
    bt.relocate(3, 1).unwrap();
    assert_eq!(
        (bt.pos(0), bt.pos(1), bt.pos(2), bt.pos(3)),
        (
            Some((ps[2].len() - 1 + before) as u32),
            Some((ps[3].len() - 1 + before) as u32),
            None,
            None
        )
    );
    // The moved streams' next ids come from the host: their last choices.
    let next = [got[2].last().copied(), got[3].last().copied(), None, None];
    bt.submit(&next).unwrap();
    while got[2].len() < steps {
        if got[2].len() + bt.pending() < steps {
            bt.submit(&[None; 4]).unwrap();
        }
        let ids = pollster::block_on(bt.read()).unwrap();
        assert_eq!((ids[2], ids[3]), (None, None));
        got[2].push(ids[0].unwrap());
        got[3].push(ids[1].unwrap());
    }
    assert_eq!(
        got, want,
        "{name}: streams moved from slots 2 and 3 into 0 and 1"
    );
}
