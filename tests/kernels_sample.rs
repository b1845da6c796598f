//! GPU sampling (`ops::sample`) against the scalar CPU reference in `decode::sampler`.
//!
//! Deterministic parts (processed logits, kept masks, final probabilities, logsumexp, top-N,
//! greedy) are compared per token; the random parts are checked three ways: token-for-token
//! against the reference draw (same Philox numbers), with chi-square goodness-of-fit tests, and
//! for seed determinism.
//!
//! Tolerances: the GPU computes exp/log in f32 (a few ulp) and sums in f32 trees, the reference in
//! f64 from the same f32 processed logits. Final probabilities: |Δ| ≤ 1e-7 + 5e-5·p (exp of
//! (x − max)/T in f32 carries a relative error of ~|x − max|/T · 2⁻²⁴). Logprobs and logsumexp:
//! |Δ| ≤ 1e-5 + 1e-6·|value|. Kept masks must be identical, except where the reference's top-p
//! decision is within 1e-5 of the total mass of flipping (the GPU sums fixed-point masses; none
//! of the cases below needs that allowance, and it is reported when used).

use qwgpu_engine::decode::sampler::{
    filter_row, gumbel, process_logits, reference_accept, reference_draw, reference_row, uniform,
    SamplingParams, STREAM_ACCEPT, STREAM_SAMPLE,
};
use qwgpu_engine::gpu::{Gpu, GpuBuffer, Step, StepShape, StepSlot};
use qwgpu_engine::ops::sample::{AcceptIo, RowResult, SampleIo, Sampler, SamplerOptions};
use qwgpu_tests::*;

const BIG_V: u32 = 248_320;

fn params(temperature: f32, top_p: f32, top_k: u32, min_p: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        top_p,
        top_k,
        min_p,
        seed: 1234,
        top_logprobs: 5,
        ..Default::default()
    }
}

/// One sampling call's outputs.
struct Out {
    res: Vec<RowResult>,
    /// Raw bits of the probs buffer rows (weights) and the row normalizers.
    w: Vec<u32>,
    z: Vec<f32>,
    ids: Vec<u32>,
    /// Processed logits.
    x: Vec<f32>,
}

struct Call<'a> {
    logits: &'a [f32],
    rows: u32,
    params: &'a SamplingParams,
    /// History to load first (None: keep the sampler's history).
    reset: Option<&'a [u32]>,
    probs: bool,
    /// The step's input ids (row r > 0 sees ids[1..=r] as history).
    ctx: Option<&'a [u32]>,
    commit: bool,
}

impl<'a> Call<'a> {
    fn new(logits: &'a [f32], rows: u32, params: &'a SamplingParams) -> Self {
        Call {
            logits,
            rows,
            params,
            reset: Some(&[]),
            probs: true,
            ctx: None,
            commit: false,
        }
    }
}

fn run_call(gpu: &Gpu, s: &Sampler, c: &Call) -> Out {
    run_call_masked(gpu, s, c, None, false)
}

/// [`run_call`] with token masks per row (`Sampler::set_params_masked_rows`) and the call's
/// `SampleIo::unmasked`.
fn run_call_masked(
    gpu: &Gpu,
    s: &Sampler,
    c: &Call,
    masks: Option<[Option<&[u32]>; 2]>,
    unmasked: bool,
) -> Out {
    let v = s.vocab as usize;
    assert_eq!(c.logits.len(), c.rows as usize * v);
    match masks {
        Some(m) => s.set_params_masked_rows(gpu, c.params, m).unwrap(),
        None => s.set_params(gpu, c.params).unwrap(),
    }
    if let Some(h) = c.reset {
        s.reset_history(gpu, h).unwrap();
    }
    let lb = upload_f32(gpu, "logits", c.logits);
    let ids = gpu.storage("ids", (c.rows as u64 + 1) * 4).unwrap();
    let pb = s.probs_buffer(gpu, "probs").unwrap();
    let ctx_buf: Option<GpuBuffer> = c
        .ctx
        .map(|ids| gpu.storage_init("ctx", bytemuck::cast_slice(ids)).unwrap());
    let n_tokens = c.ctx.map(|i| i.len() as u32).unwrap_or(c.rows);
    let sb = step_buffer(
        gpu,
        Step {
            n_tokens,
            pos: 0,
            n_confirmed: 0,
            n_out: c.rows,
            force: 0,
            rollback: 0,
            ..Default::default()
        },
    );
    let io = SampleIo {
        id_offset: 1,
        logit_row: 0,
        ctx_ids: ctx_buf.as_ref().map(|b| (b, 0)),
        probs: c.probs.then_some(&pb),
        results: None,
        commit: c.commit,
        unmasked,
    };
    let d = pollster::block_on(s.dispatches_with(
        gpu,
        &lb,
        &ids,
        StepSlot {
            buf: &sb,
            offset: 0,
        },
        &io,
    ))
    .unwrap();
    run(
        gpu,
        &d,
        StepShape {
            n_tokens,
            n_out: c.rows,
            keys: 0,
        },
    );
    let res = pollster::block_on(s.read_results(gpu, c.rows)).unwrap();
    let (w, z) = if c.probs {
        let all = read_u32(gpu, &pb, s.max_rows as usize * v + s.max_rows as usize);
        let z = (0..c.rows as usize)
            .map(|r| f32::from_bits(all[s.max_rows as usize * v + r]))
            .collect();
        (all[..c.rows as usize * v].to_vec(), z)
    } else {
        (vec![], vec![])
    };
    let ids = read_u32(gpu, &ids, c.rows as usize + 1)[1..].to_vec();
    let x = read_f32(gpu, &s.work, c.rows as usize * v);
    Out { res, w, z, ids, x }
}

fn sampler(gpu: &Gpu, vocab: u32, rows: u32, opts: SamplerOptions) -> Sampler {
    pollster::block_on(Sampler::with_options(gpu, vocab, rows, opts)).unwrap()
}

/// Compares one GPU row with the reference (deterministic parts and the draw).
fn check_row(
    what: &str,
    o: &Out,
    r: usize,
    rf: &qwgpu_engine::decode::sampler::RowReference,
    p: &SamplingParams,
) -> usize {
    let v = rf.x.len();
    let res = &o.res[r];
    // Processed logits.
    for (i, (&a, &b)) in o.x[r * v..(r + 1) * v].iter().zip(&rf.x).enumerate() {
        assert!(
            a == b || (a - b).abs() <= 1e-6 * b.abs(),
            "{what}: processed logit {i}: gpu {a} cpu {b}"
        );
    }
    // logsumexp and the token's logprob.
    let lse_tol = 1e-5 + 1e-6 * rf.lse.abs();
    if rf.lse.is_finite() {
        assert!(
            (res.lse as f64 - rf.lse).abs() <= lse_tol,
            "{what}: lse gpu {} cpu {}",
            res.lse,
            rf.lse
        );
        let want = rf.x[res.token as usize] as f64 - rf.lse;
        assert!(
            (res.logprob as f64 - want).abs() <= lse_tol + 1e-6 * want.abs(),
            "{what}: token logprob gpu {} cpu {want}",
            res.logprob
        );
    }
    // Top-N: same ids, close logprobs.
    assert_eq!(res.top.len(), rf.top.len(), "{what}: top-N length");
    for (n, (g, c)) in res.top.iter().zip(&rf.top).enumerate() {
        assert_eq!(
            g.0, c.0,
            "{what}: top-{n} id (gpu {:?} cpu {:?})",
            res.top, rf.top
        );
        if c.1.is_finite() {
            assert!(
                (g.1 as f64 - c.1).abs() <= lse_tol + 1e-6 * c.1.abs(),
                "{what}: top-{n} logprob gpu {} cpu {}",
                g.1,
                c.1
            );
        }
    }
    // Kept mask and final probabilities.
    let mut flips = 0;
    if !o.w.is_empty() {
        let z = o.z[r] as f64;
        for (i, &wi) in o.w[r * v..(r + 1) * v].iter().enumerate() {
            let kept = wi & 0x8000_0000 == 0;
            if kept != rf.kept[i] {
                assert!(
                    rf.top_p_margin[i] < 1e-5,
                    "{what}: token {i} (x {}): gpu kept {kept}, cpu kept {} (top-p margin {:e})",
                    rf.x[i],
                    rf.kept[i],
                    rf.top_p_margin[i]
                );
                flips += 1;
                continue;
            }
            let pg = f32::from_bits(wi).max(0.0) as f64 / z;
            let pc = rf.probs[i];
            assert!(
                (pg - pc).abs() <= 1e-7 + 5e-5 * pc,
                "{what}: prob of token {i}: gpu {pg:e} cpu {pc:e}"
            );
        }
    }
    // The token: a kept one, the reference's draw.
    assert!(
        rf.kept[res.token as usize] || flips > 0,
        "{what}: token {} is masked",
        res.token
    );
    assert_eq!(res.token, o.ids[r], "{what}: ids and results disagree");
    let want = reference_draw(rf, p, res.draw);
    assert_eq!(res.token, want, "{what}: drawn token (draw {})", res.draw);
    if !p.is_greedy() && rf.probs[res.token as usize] > 0.0 {
        let lp = rf.probs[res.token as usize].ln();
        assert!(
            (res.final_logprob as f64 - lp).abs() <= 1e-4 + 1e-5 * lp.abs(),
            "{what}: final logprob gpu {} cpu {lp}",
            res.final_logprob
        );
    }
    flips
}

/// Test logits of one row: `kind` picks the shape.
fn make_row(rng: &mut Rng, v: usize, kind: u32) -> Vec<f32> {
    let mut x: Vec<f32> = (0..v).map(|_| rng.normal() * 3.0).collect();
    match kind {
        // Normal logits.
        0 => {}
        // Coarse grid: many exact ties, also at any cut.
        1 => x.iter_mut().for_each(|e| *e = (*e * 1.0).round() * 0.5),
        // All equal.
        2 => x.iter_mut().for_each(|e| *e = 1.25),
        // −inf, NaN and very negative logits among normal ones.
        3 => {
            for i in (0..v).step_by(3) {
                x[i] = f32::NEG_INFINITY;
            }
            x[v / 2] = f32::NAN;
            if v > 4 {
                x[1] = -1e30;
                x[v - 1] = -1e38;
            }
        }
        // One huge logit.
        4 => x[v / 3] = 1e30,
        // Peaked: one token dominates, a long flat tail (top-p cut deep in the tail).
        _ => {
            x.iter_mut().for_each(|e| *e *= 0.1);
            x[v - 2] = 12.0;
        }
    }
    x
}

fn param_grid(v: u32) -> Vec<SamplingParams> {
    let mut g = vec![
        params(0.0, 1.0, 0, 0.0),
        params(1.0, 1.0, 0, 0.0),
        params(0.7, 0.9, 0, 0.0),
        params(1.3, 1.0, 5, 0.0),
        params(0.5, 1.0, 0, 0.05),
        params(0.8, 0.95, 20, 0.02),
        params(1.0, 1.0, v, 0.0),
        params(1.0, 1.0, v + 1000, 0.0),
        params(0.6, 0.3, 0, 0.0),
        params(2.0, 0.01, 0, 0.0),
        params(1.0, 1.0, 0, 1.0),
        params(0.9, 0.5, 1, 0.0),
        params(1.1, 1.0, v.saturating_sub(1).max(1), 0.0),
        params(0.25, 0.999, 3, 0.1),
    ];
    for (i, p) in g.iter_mut().enumerate() {
        p.top_logprobs = [0, 1, 5, 20][i % 4];
        p.seed = 77 + i as u64;
    }
    g
}

fn check_filters(gpu: &Gpu, v: u32, opts: SamplerOptions, grid: &[SamplingParams], kinds: &[u32]) {
    let s = sampler(gpu, v, 2, opts);
    let mut rng = Rng(v as u64 * 31 + opts.block.unwrap_or(0) as u64);
    let mut flips = 0;
    let mut calls = 0;
    for (pi, p) in grid.iter().enumerate() {
        for pair in kinds.chunks(2) {
            let (k0, k1) = (pair[0], *pair.get(1).unwrap_or(&pair[0]));
            let mut logits = make_row(&mut rng, v as usize, k0);
            logits.extend(make_row(&mut rng, v as usize, k1));
            let o = run_call(gpu, &s, &Call::new(&logits, 2, p));
            calls += 1;
            for (r, k) in [(0, k0), (1, k1)] {
                let rf = reference_row(&logits[r * v as usize..(r + 1) * v as usize], p, &[], 0);
                let what = format!(
                    "V {v} bits {} params #{pi} {p:?} row kind {k}",
                    s.radix_bits
                );
                flips += check_row(&what, &o, r, &rf, p);
            }
        }
    }
    println!(
        "V {v}, radix {} bits: {calls} calls, {flips} top-p decisions within rounding of the cut",
        s.radix_bits
    );
}

#[test]
fn filters_probs_and_logprobs_match_cpu_small_vocab() {
    // The sampling kernels have no subgroup path, so one device covers them. Small blocks split
    // V = 300 over 3–5 workgroups per row (odd last blocks); both radix widths.
    let gpu = gpu();
    for v in [7u32, 300] {
        for opts in [
            SamplerOptions::default(),
            SamplerOptions {
                block: Some(64),
                radix_bits: Some(8),
            },
            SamplerOptions {
                block: Some(100),
                radix_bits: Some(11),
            },
        ] {
            check_filters(&gpu, v, opts, &param_grid(v), &[0, 1, 2, 3, 4, 5]);
        }
    }
}

#[test]
fn filters_probs_and_logprobs_match_cpu_full_vocab() {
    let gpu = gpu();
    let grid = param_grid(BIG_V);
    // Every parameter set on normal and tied logits; the special shapes on a few.
    check_filters(&gpu, BIG_V, SamplerOptions::default(), &grid, &[0, 1]);
    let few: Vec<SamplingParams> = [2usize, 5, 8, 11]
        .iter()
        .map(|&i| grid[i].clone())
        .collect();
    check_filters(&gpu, BIG_V, SamplerOptions::default(), &few, &[2, 3, 4, 5]);
    check_filters(
        &gpu,
        BIG_V,
        SamplerOptions {
            radix_bits: Some(8),
            ..Default::default()
        },
        &few[..2],
        &[0, 5],
    );
}

#[test]
fn greedy_is_argmax_with_ties_nan_and_inf() {
    let gpu = gpu();
    let mut rng = Rng(5);
    for v in [7u32, 300, 4097, BIG_V] {
        let s = sampler(&gpu, v, 2, SamplerOptions::default());
        let vu = v as usize;
        let mut logits = rng.vec(2 * vu, 10.0);
        let (a, b) = (vu / 3, vu - 1);
        logits[a] = 50.0;
        logits[b] = 50.0;
        logits[(vu / 2).min(vu - 2)] = f32::NAN;
        logits[vu + vu - 1] = 60.0;
        logits[vu] = f32::NEG_INFINITY;
        let p = SamplingParams::greedy();
        let o = run_call(&gpu, &s, &Call::new(&logits, 2, &p));
        assert_eq!(o.ids[0], a as u32, "V {v}: tie must pick the lower index");
        assert_eq!(o.ids[1], v - 1, "V {v} row 1");
        for r in 0..2 {
            let rf = reference_row(&logits[r * vu..(r + 1) * vu], &p, &[], 0);
            check_row(&format!("greedy V {v} row {r}"), &o, r, &rf, &p);
            assert_eq!(o.res[r].final_logprob, 0.0);
            assert_eq!(o.z[r], 1.0);
        }
        // A row with no finite logit falls back to token 0 (as the argmax kernel).
        let bad = vec![f32::NAN; vu]
            .into_iter()
            .chain(std::iter::repeat_n(f32::NEG_INFINITY, vu))
            .collect::<Vec<_>>();
        let o = run_call(&gpu, &s, &Call::new(&bad, 2, &p));
        assert_eq!(o.ids, vec![0, 0], "V {v}: rows without a finite logit");
        let hot = SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            top_k: 3,
            ..Default::default()
        };
        let o = run_call(&gpu, &s, &Call::new(&bad, 2, &hot));
        assert_eq!(
            o.ids,
            vec![0, 0],
            "V {v}: sampled rows without a finite logit"
        );
    }
}

#[test]
fn penalties_bias_and_history_match_cpu() {
    let gpu = gpu();
    let v = 300u32;
    let vu = v as usize;
    let s = sampler(
        &gpu,
        v,
        2,
        SamplerOptions {
            block: Some(64),
            ..Default::default()
        },
    );
    let mut rng = Rng(9);
    let prompt: Vec<u32> = (0..40)
        .map(|i| if i % 5 == 0 { 7 } else { rng.below(v) })
        .collect();
    for (rp, ctx_len, presence, frequency) in [
        (1.3f32, 20u32, 0.5f32, 0.25f32),
        (0.7, 3, -0.4, 0.0),
        (1.0, 20, 0.0, 1.5),
        (2.0, 4096, 0.0, 0.0),
    ] {
        let p = SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            repetition_penalty: rp,
            repetition_context: ctx_len,
            presence_penalty: presence,
            frequency_penalty: frequency,
            logit_bias: vec![(7, 2.0), (11, -3.0), (7, 0.5), (299, 1e3)],
            seed: 3,
            top_logprobs: 3,
            ..Default::default()
        };
        let what = format!("rp {rp} ctx {ctx_len} presence {presence} frequency {frequency}");
        s.set_params(&gpu, &p).unwrap();
        s.reset_history(&gpu, &prompt).unwrap();
        let mut context = prompt.clone();
        // Decode steps with commit: each sees the tokens the previous ones appended.
        for step in 0..30 {
            let mut logits = make_row(&mut rng, vu, step % 2);
            // Push the sampled tokens towards a few ids so that tokens repeat.
            for t in [3usize, 7, 11, 42] {
                logits[t] += 6.0;
            }
            let o = run_call(
                &gpu,
                &s,
                &Call {
                    logits: &logits,
                    rows: 1,
                    params: &p,
                    reset: None,
                    probs: true,
                    ctx: None,
                    commit: true,
                },
            );
            let rf = reference_row(&logits, &p, &context, prompt.len());
            check_row(&format!("{what} step {step}"), &o, 0, &rf, &p);
            assert_eq!(o.res[0].draw, step, "{what}: draw counter");
            context.push(o.ids[0]);
        }
        let (len, gen, draws) = pollster::block_on(s.read_history_header(&gpu)).unwrap();
        assert_eq!(
            (len, gen, draws),
            (context.len() as u32, 30, 30),
            "{what}: history header"
        );
        // A verify-like call: row 1 also sees the drafted token (the step's input row 1).
        let d = context[context.len() - 3];
        let logits: Vec<f32> = (0..2 * vu).map(|_| rng.normal() * 2.0).collect();
        let step_ids = [context[context.len() - 1], d];
        let o = run_call(
            &gpu,
            &s,
            &Call {
                logits: &logits,
                rows: 2,
                params: &p,
                reset: None,
                probs: true,
                ctx: Some(&step_ids),
                commit: false,
            },
        );
        let rf0 = reference_row(&logits[..vu], &p, &context, prompt.len());
        let mut ctx1 = context.clone();
        ctx1.push(d);
        let rf1 = reference_row(&logits[vu..], &p, &ctx1, prompt.len());
        check_row(&format!("{what} verify row 0"), &o, 0, &rf0, &p);
        check_row(
            &format!("{what} verify row 1 (draft in history)"),
            &o,
            1,
            &rf1,
            &p,
        );
        let (len2, _, draws2) = pollster::block_on(s.read_history_header(&gpu)).unwrap();
        assert_eq!(
            (len2, draws2),
            (len, draws + 2),
            "{what}: no commit, two draws"
        );
    }
    // Processed logits only (no filters): penalties with an all-negative row and huge bias.
    let p = SamplingParams {
        temperature: 1.0,
        repetition_penalty: 1.5,
        frequency_penalty: 0.5,
        logit_bias: vec![(0, -1e30)],
        ..Default::default()
    };
    let logits: Vec<f32> = (0..vu).map(|i| -(i as f32) * 0.01 - 0.5).collect();
    s.set_params(&gpu, &p).unwrap();
    s.reset_history(&gpu, &[0, 1, 2, 1]).unwrap();
    let o = run_call(
        &gpu,
        &s,
        &Call {
            logits: &logits,
            rows: 1,
            params: &p,
            reset: None,
            probs: true,
            ctx: None,
            commit: false,
        },
    );
    let want = process_logits(&logits, &p, &[0, 1, 2, 1], 4);
    assert_bits_eq("processed logits", &o.x[..vu], &want);
    check_row("negative row", &o, 0, &filter_row(want, &p), &p);
}

/// Token masks per out row (an MTP verify under a constraint: row 0 limited by the mask at the
/// draft's position, row 1 by the mask after the draft): each row's processed logits, filters,
/// probabilities and draw equal the CPU reference with MASKED_LOGIT added to the logit bias of
/// the ids its own mask leaves out, on top of the request's logit bias, penalties and the draft
/// in row 1's history; a row without a mask and a call marked unmasked (the draft) see only the
/// request's bias; and the request's bias is rewritten when it changes.
#[test]
fn per_row_token_masks_match_cpu() {
    use qwgpu_engine::ops::sample::MASKED_LOGIT;
    let gpu = gpu();
    let v = 300u32;
    let vu = v as usize;
    let s = sampler(
        &gpu,
        v,
        2,
        SamplerOptions {
            block: Some(64),
            ..Default::default()
        },
    );
    let mut rng = Rng(21);
    let prompt: Vec<u32> = (0..30).map(|_| rng.below(v)).collect();
    let words = vu.div_ceil(32);
    let mut mask = |keep_one_in: u32| {
        let mut m = vec![0u32; words];
        for i in 0..vu {
            if rng.below(keep_one_in) == 0 {
                m[i / 32] |= 1 << (i % 32);
            }
        }
        m
    };
    let (m0, m1) = (mask(2), mask(5));
    let with_mask = |p: &SamplingParams, m: Option<&[u32]>| {
        let mut q = p.clone();
        if let Some(m) = m {
            for i in 0..vu {
                if m[i / 32] >> (i % 32) & 1 == 0 {
                    q.logit_bias.push((i as u32, MASKED_LOGIT));
                }
            }
        }
        q
    };
    for (case, bias) in [vec![(7u32, 2.0f32), (11, -3.0)], vec![(5, 1.5)], vec![]]
        .into_iter()
        .enumerate()
    {
        for greedy in [false, true] {
            let p = SamplingParams {
                temperature: if greedy { 0.0 } else { 0.8 },
                top_p: 0.9,
                repetition_penalty: 1.2,
                presence_penalty: 0.3,
                logit_bias: bias.clone(),
                seed: 17 + case as u64,
                top_logprobs: 2,
                ..Default::default()
            };
            for (mi, masks) in [
                [Some(&m0[..]), Some(&m1[..])],
                [None, Some(&m1[..])],
                [Some(&m0[..]), None],
                [None, None],
            ]
            .into_iter()
            .enumerate()
            {
                for unmasked in [false, true] {
                    let what = format!(
                        "bias case {case} greedy {greedy} masks {mi} unmasked call {unmasked}"
                    );
                    s.set_params(&gpu, &p).unwrap();
                    s.reset_history(&gpu, &prompt).unwrap();
                    let d = prompt[4];
                    let logits: Vec<f32> = (0..2 * vu).map(|_| rng.normal() * 2.0).collect();
                    let step_ids = [prompt[prompt.len() - 1], d];
                    let o = run_call_masked(
                        &gpu,
                        &s,
                        &Call {
                            logits: &logits,
                            rows: 2,
                            params: &p,
                            reset: None,
                            probs: true,
                            ctx: Some(&step_ids),
                            commit: false,
                        },
                        Some(masks),
                        unmasked,
                    );
                    let eff = |r: usize| {
                        if unmasked {
                            p.clone()
                        } else {
                            with_mask(&p, masks[r])
                        }
                    };
                    let (p0, p1) = (eff(0), eff(1));
                    let rf0 = reference_row(&logits[..vu], &p0, &prompt, prompt.len());
                    let mut ctx1 = prompt.clone();
                    ctx1.push(d);
                    let rf1 = reference_row(&logits[vu..], &p1, &ctx1, prompt.len());
                    check_row(&format!("{what}: row 0"), &o, 0, &rf0, &p0);
                    check_row(&format!("{what}: row 1"), &o, 1, &rf1, &p1);
                    for (r, m) in masks.iter().enumerate() {
                        if let (Some(m), false) = (m, unmasked) {
                            let t = o.ids[r] as usize;
                            assert!(m[t / 32] >> (t % 32) & 1 == 1, "{what}: row {r} chose {t}");
                        }
                    }
                }
            }
        }
    }
}

/// Upper critical value of chi-square with `df` degrees of freedom (Wilson–Hilferty), `z` the
/// standard normal quantile of the level (3.0902 for p = 0.001).
fn chi2_critical(df: f64, z: f64) -> f64 {
    let h = 2.0 / (9.0 * df);
    df * (1.0 - h + z * h.sqrt()).powi(3)
}

/// Pearson's statistic of `counts` against `probs` (n draws); cells with expected count < 5 are
/// pooled. Returns (statistic, degrees of freedom). Tokens with probability 0 must never occur.
fn chi_square(what: &str, counts: &[u64], probs: &[f64]) -> (f64, usize) {
    let n: u64 = counts.iter().sum();
    let mut stat = 0.0;
    let mut cells = 0;
    let (mut pool_o, mut pool_e) = (0.0, 0.0);
    for (i, (&c, &p)) in counts.iter().zip(probs).enumerate() {
        if p == 0.0 {
            assert_eq!(
                c, 0,
                "{what}: token {i} has probability 0 but was drawn {c} times"
            );
            continue;
        }
        let e = p * n as f64;
        if e < 5.0 {
            pool_o += c as f64;
            pool_e += e;
        } else {
            stat += (c as f64 - e).powi(2) / e;
            cells += 1;
        }
    }
    if pool_e > 0.0 {
        stat += (pool_o - pool_e).powi(2) / pool_e;
        cells += 1;
    }
    (stat, cells - 1)
}

#[test]
fn sampled_frequencies_match_the_distribution_chi_square() {
    // Fixed logits over 48, 16 and 64 tokens, 2 × 2048 draws each (every row of a call is one
    // draw with its own draw index), fixed seeds: the test is deterministic. Pearson's chi-square
    // against the reference distribution, cells with expected count < 5 pooled, df = cells − 1,
    // rejected above the p = 0.001 critical value. Every draw must also equal the reference draw.
    let gpu = gpu();
    let rows = 2048u32;
    let mut rng = Rng(21);
    for (v, p) in [
        (
            48u32,
            SamplingParams {
                temperature: 0.8,
                top_p: 0.9,
                top_k: 30,
                min_p: 0.01,
                seed: 99,
                ..Default::default()
            },
        ),
        (
            16,
            SamplingParams {
                temperature: 1.5,
                seed: 5,
                ..Default::default()
            },
        ),
        (
            64,
            SamplingParams {
                temperature: 0.6,
                min_p: 0.05,
                seed: 6,
                ..Default::default()
            },
        ),
    ] {
        // 8-bit radix rounds keep the per-row scratch of thousands of rows small.
        let s = sampler(
            &gpu,
            v,
            rows,
            SamplerOptions {
                radix_bits: Some(8),
                ..Default::default()
            },
        );
        let row: Vec<f32> = (0..v).map(|_| rng.normal() * 1.5).collect();
        let logits: Vec<f32> = (0..rows).flat_map(|_| row.clone()).collect();
        let rf = reference_row(&row, &p, &[], 0);
        let mut counts = vec![0u64; v as usize];
        for call in 0..2 {
            let o = run_call(
                &gpu,
                &s,
                &Call {
                    probs: false,
                    reset: if call == 0 { Some(&[]) } else { None },
                    ..Call::new(&logits, rows, &p)
                },
            );
            for (r, res) in o.res.iter().enumerate() {
                assert_eq!(res.draw, call * rows + r as u32);
                assert_eq!(
                    res.token,
                    reference_draw(&rf, &p, res.draw),
                    "V {v}: draw {}",
                    res.draw
                );
                counts[res.token as usize] += 1;
            }
        }
        let (stat, df) = chi_square(&format!("V {v}"), &counts, &rf.probs);
        let crit = chi2_critical(df as f64, 3.0902);
        println!(
            "V {v} {p:?}: chi-square {stat:.2} with {df} df (critical {crit:.2} at p = 0.001)"
        );
        assert!(df >= 5, "V {v}: too few cells ({df} df)");
        assert!(stat < crit, "V {v}: chi-square {stat:.2} ≥ {crit:.2} ({df} df): frequencies do not match the distribution");
    }
}

#[test]
fn same_seed_same_tokens_different_seed_different_tokens() {
    let gpu = gpu();
    let v = 300u32;
    let s = sampler(
        &gpu,
        v,
        1,
        SamplerOptions {
            block: Some(128),
            ..Default::default()
        },
    );
    let mut rng = Rng(4);
    let logits: Vec<f32> = (0..v).map(|_| rng.normal()).collect();
    let seq = |seed: u64| -> Vec<u32> {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 50,
            seed,
            ..Default::default()
        };
        s.set_params(&gpu, &p).unwrap();
        s.reset_history(&gpu, &[1, 2, 3]).unwrap();
        let rf = reference_row(&logits, &p, &[], 0);
        (0..48)
            .map(|i| {
                let o = run_call(
                    &gpu,
                    &s,
                    &Call {
                        reset: None,
                        probs: false,
                        commit: true,
                        ..Call::new(&logits, 1, &p)
                    },
                );
                assert_eq!(
                    o.res[0].token,
                    reference_draw(&rf, &p, i),
                    "seed {seed} draw {i}"
                );
                o.res[0].token
            })
            .collect()
    };
    let a = seq(11);
    assert_eq!(a, seq(11), "same seed, same tokens");
    let b = seq(12);
    assert_ne!(a, b, "different seeds, different sequences");
    let c = seq(11 | (1 << 40));
    assert_ne!(a, c, "the high half of the seed matters");
    // The random numbers themselves: Philox, identical on any adapter.
    assert_ne!(
        uniform(11, 0, STREAM_SAMPLE, 0),
        uniform(12, 0, STREAM_SAMPLE, 0)
    );
    assert!(gumbel(11, 3, STREAM_SAMPLE, 5).is_finite());
}

#[test]
fn speculative_accept_and_residual_match_cpu_chi_square() {
    // Draft q and target p over V = 40 (different logits, top-k 30 and min-p so both have zeros).
    // 2 × 2048 independent trials: d ~ q (sampled on the GPU), p from the target rows, then the
    // accept kernel. Checks: accept ratios and u against the reference, the decision, the residual
    // draw token for token, and chi-square (p = 0.001, cells with expected < 5 pooled) that the
    // emitted token is distributed as p.
    let gpu = gpu();
    let (v, rows) = (40u32, 2048u32);
    let vu = v as usize;
    let s = sampler(
        &gpu,
        v,
        rows,
        SamplerOptions {
            radix_bits: Some(8),
            ..Default::default()
        },
    );
    let mut rng = Rng(8);
    let p_row: Vec<f32> = (0..v).map(|_| rng.normal() * 1.2).collect();
    let q_row: Vec<f32> = p_row.iter().map(|x| x + rng.normal() * 0.8).collect();
    for (pi, params) in [
        SamplingParams {
            temperature: 0.9,
            top_k: 30,
            min_p: 0.02,
            seed: 17,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.0,
            seed: 17,
            ..Default::default()
        },
    ]
    .iter()
    .enumerate()
    {
        let rp = reference_row(&p_row, params, &[], 0);
        let rq = reference_row(&q_row, params, &[], 0);
        let mut counts = vec![0u64; vu];
        let mut accepted = 0;
        s.set_params(&gpu, params).unwrap();
        s.reset_history(&gpu, &[]).unwrap();
        for _ in 0..2 {
            let qb = s.probs_buffer(&gpu, "q").unwrap();
            let pb = s.probs_buffer(&gpu, "p").unwrap();
            let draft_ids = gpu.storage("draft ids", rows as u64 * 4).unwrap();
            let bonus_ids = gpu.storage("bonus ids", rows as u64 * 4).unwrap();
            let sb = step_buffer(
                &gpu,
                Step {
                    n_tokens: rows,
                    pos: 0,
                    n_confirmed: 0,
                    n_out: rows,
                    force: 0,
                    rollback: 0,
                    ..Default::default()
                },
            );
            let slot = StepSlot {
                buf: &sb,
                offset: 0,
            };
            let ql = upload_f32(
                &gpu,
                "q logits",
                &(0..rows).flat_map(|_| q_row.clone()).collect::<Vec<_>>(),
            );
            let pl = upload_f32(
                &gpu,
                "p logits",
                &(0..rows).flat_map(|_| p_row.clone()).collect::<Vec<_>>(),
            );
            let mut d = pollster::block_on(s.dispatches_with(
                &gpu,
                &ql,
                &draft_ids,
                slot,
                &SampleIo {
                    probs: Some(&qb),
                    ..Default::default()
                },
            ))
            .unwrap();
            d.extend(
                pollster::block_on(s.dispatches_with(
                    &gpu,
                    &pl,
                    &bonus_ids,
                    slot,
                    &SampleIo {
                        probs: Some(&pb),
                        ..Default::default()
                    },
                ))
                .unwrap(),
            );
            let io = AcceptIo {
                target: &pb,
                target_row: 0,
                draft: &qb,
                draft_row: 0,
                draft_id: (&draft_ids, 0),
                bonus_id: (&bonus_ids, 0),
                rows,
                commit: false,
            };
            d.extend(pollster::block_on(s.accept_dispatches(&gpu, &io)).unwrap());
            run(
                &gpu,
                &d,
                StepShape {
                    n_tokens: rows,
                    n_out: rows,
                    keys: 0,
                },
            );
            let acc = pollster::block_on(s.read_accept(&gpu, rows)).unwrap();
            let drafts = read_u32(&gpu, &draft_ids, rows as usize);
            let bonus = read_u32(&gpu, &bonus_ids, rows as usize);
            for (r, a) in acc.iter().enumerate() {
                let dr = drafts[r];
                let want = reference_accept(&rp.probs, &rq.probs, dr, params.seed, a.draw);
                assert!(
                    (a.ratio as f64 - want.ratio).abs() <= 1e-5 * want.ratio.max(1e-30) + 1e-7,
                    "#{pi} row {r}: ratio gpu {} cpu {}",
                    a.ratio,
                    want.ratio
                );
                assert_eq!(a.u, want.u, "#{pi} row {r}: u");
                assert_eq!(a.u, uniform(params.seed, a.draw, STREAM_ACCEPT, 0));
                assert_eq!(
                    a.accepted, want.accepted,
                    "#{pi} row {r}: decision (ratio {} u {})",
                    want.ratio, want.u
                );
                assert_eq!(a.tokens[0], want.token, "#{pi} row {r}: emitted token");
                if a.accepted {
                    accepted += 1;
                    assert_eq!((a.n_emit, a.tokens[1], a.next), (2, bonus[r], bonus[r]));
                } else {
                    assert_eq!((a.n_emit, a.tokens[1], a.next), (1, u32::MAX, a.tokens[0]));
                }
                counts[a.tokens[0] as usize] += 1;
            }
        }
        let n = 2 * rows as usize;
        if params.is_greedy() {
            // One-hot distributions: accept iff the draft is the target's argmax; the emitted token
            // is always the target's argmax.
            assert_eq!(
                counts[rp.argmax as usize], n as u64,
                "greedy: emitted = target argmax"
            );
            assert_eq!(accepted, if rp.argmax == rq.argmax { n } else { 0 });
            continue;
        }
        let expected_accept: f64 = (0..vu)
            .map(|i| rq.probs[i] * (rp.probs[i] / rq.probs[i]).min(1.0))
            .filter(|x| x.is_finite())
            .sum();
        let (stat, df) = chi_square("emitted tokens", &counts, &rp.probs);
        let crit = chi2_critical(df as f64, 3.0902);
        println!("accept rate {:.3} (expected {expected_accept:.3}); emitted-token chi-square {stat:.2} with {df} df (critical {crit:.2} at p = 0.001)", accepted as f64 / n as f64);
        assert!(accepted > 0 && accepted < n, "both outcomes must occur");
        assert!(
            stat < crit,
            "emitted tokens are not distributed as p: chi-square {stat:.2} ≥ {crit:.2} ({df} df)"
        );
    }
}

#[test]
fn accept_commits_the_emitted_tokens() {
    // The decode-loop form (rows = 1, commit): the history grows by the emitted tokens.
    let gpu = gpu();
    let v = 64u32;
    let s = sampler(&gpu, v, 2, SamplerOptions::default());
    let p = SamplingParams {
        temperature: 1.0,
        repetition_penalty: 1.2,
        seed: 2,
        ..Default::default()
    };
    s.set_params(&gpu, &p).unwrap();
    s.reset_history(&gpu, &[5, 6, 7]).unwrap();
    let mut rng = Rng(3);
    let mut expect_len = 3;
    for _ in 0..6 {
        let q: Vec<f32> = (0..v).map(|_| rng.normal()).collect();
        let t: Vec<f32> = (0..2 * v).map(|_| rng.normal()).collect();
        let (qb, pb) = (
            s.probs_buffer(&gpu, "q").unwrap(),
            s.probs_buffer(&gpu, "p").unwrap(),
        );
        let ids = gpu.storage("ids", 16).unwrap();
        let s1 = step_buffer(
            &gpu,
            Step {
                n_tokens: 1,
                pos: 0,
                n_confirmed: 0,
                n_out: 1,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let s2 = step_buffer(
            &gpu,
            Step {
                n_tokens: 2,
                pos: 0,
                n_confirmed: 0,
                n_out: 2,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let (ql, tl) = (upload_f32(&gpu, "q", &q), upload_f32(&gpu, "t", &t));
        // Draft into ids[1] (the verify's input row 1), verify rows into ids[2..4].
        let mut d = pollster::block_on(s.dispatches_with(
            &gpu,
            &ql,
            &ids,
            StepSlot {
                buf: &s1,
                offset: 0,
            },
            &SampleIo {
                id_offset: 1,
                probs: Some(&qb),
                ..Default::default()
            },
        ))
        .unwrap();
        run(
            &gpu,
            &d,
            StepShape {
                n_tokens: 1,
                n_out: 1,
                keys: 0,
            },
        );
        d = pollster::block_on(s.dispatches_with(
            &gpu,
            &tl,
            &ids,
            StepSlot {
                buf: &s2,
                offset: 0,
            },
            &SampleIo {
                id_offset: 2,
                ctx_ids: Some((&ids, 0)),
                probs: Some(&pb),
                ..Default::default()
            },
        ))
        .unwrap();
        let io = AcceptIo {
            target: &pb,
            target_row: 0,
            draft: &qb,
            draft_row: 0,
            draft_id: (&ids, 1),
            bonus_id: (&ids, 3),
            rows: 1,
            commit: true,
        };
        d.extend(pollster::block_on(s.accept_dispatches(&gpu, &io)).unwrap());
        run(
            &gpu,
            &d,
            StepShape {
                n_tokens: 2,
                n_out: 2,
                keys: 0,
            },
        );
        let a = pollster::block_on(s.read_accept(&gpu, 1)).unwrap()[0];
        expect_len += a.n_emit;
        let (len, gen, _) = pollster::block_on(s.read_history_header(&gpu)).unwrap();
        assert_eq!((len, gen), (expect_len, expect_len - 3));
        let ring = read_u32(&gpu, &s.state, 4 + len as usize);
        assert_eq!(
            ring[4 + len as usize - 1],
            a.next,
            "the last emitted token ends the history"
        );
    }
}

#[test]
fn parameter_errors_name_the_field() {
    let gpu = gpu();
    let s = sampler(&gpu, 100, 1, SamplerOptions::default());
    let e = s
        .set_params(
            &gpu,
            &SamplingParams {
                logit_bias: vec![(100, 1.0)],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.field, "logit_bias");
    let e = s
        .set_params(
            &gpu,
            &SamplingParams {
                top_p: 2.0,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.field, "top_p");
    assert!(s.reset_history(&gpu, &[1, 100]).is_err());
    assert!(pollster::block_on(Sampler::with_options(
        &gpu,
        100,
        1,
        SamplerOptions {
            radix_bits: Some(9),
            ..Default::default()
        }
    ))
    .is_err());
    // Dispatches needed: greedy 2, temperature only 3, with filters all.
    let r = s.rounds() as usize;
    assert_eq!(
        s.needed_dispatches(&SamplingParams::greedy(), false),
        vec![0, r + 2]
    );
    assert_eq!(
        s.needed_dispatches(
            &SamplingParams {
                temperature: 1.0,
                ..Default::default()
            },
            false
        ),
        vec![0, r + 1, r + 2]
    );
    assert_eq!(
        s.needed_dispatches(
            &SamplingParams {
                temperature: 1.0,
                top_p: 0.9,
                ..Default::default()
            },
            true
        )
        .len(),
        r + 3
    );
}
