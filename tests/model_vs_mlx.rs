//! The whole model against mlx-lm: greedy continuations and logits from the fixture references
//! (tests/fixtures, built by make_fixtures.py with mlx 0.32.4 / mlx-lm 0.32.2 on the CPU).
//!
//! Tolerances:
//! * `LOGIT_TOL_NARROW` (f32 compute, every fixture): mlx-lm with f32 activations vs the engine's
//!   default native decode path (4-bit matmuls on x as word fixed point rounded to 2^-15 of its
//!   word's max, `xq_planes.wgsl`'s two-plane format; f32 elsewhere). That rounding dominates:
//!   ~6 matmuls per layer each move their outputs by up to ~2^-15 of the words' max |x| times
//!   Σ|w|, growing through 4–8 layers and the lm_head; measured ≤ 0.09 on logits of magnitude
//!   ≤ 15 (bf16-q4-g64; f32-q4-g64 ≤ 0.05). 0.2 leaves room for other adapters' rounding; mlx-lm's
//!   own bf16 run is 0.4–4.9 logits from its f32 run on the same fixtures (below).
//! * `LOGIT_TOL` (the three-plane format, `QWGPU_XQ_NARROW=0`: x rounded to 2^-22): summation
//!   order and that rounding, each matmul ~1e-6 relative on O(10) values; measured ≤ 1.8e-3.
//!   5e-3 leaves room for other adapters' rounding. The f32 decode path (integer planes off, what
//!   WebGPU runs) is held to the same tolerance in model_vs_mlx_f32.rs.
//! * `NATIVE_TOL_*` (bf16 fixtures, mlx-lm's plain bf16 CPU run): activations rounded to bf16
//!   after every op (relative step 2^-8) put that run itself far from exact math. Its quantized
//!   matmuls also round every dequantized weight, product and partial sum to bf16, which costs
//!   several logits (measured up to 4.9 against the engine); its dense bf16 matmuls accumulate in
//!   f32 (measured up to 1.2). The tolerances are those maxima rounded up.
//! Greedy tokens: on f32 fixtures at least 64 of the 80 reference tokens must be equal (72–80 are
//! in the two-plane format, 80 in the three-plane one); on bf16 fixtures they must be equal up to
//! the first reference step whose top-2 gap is below twice the prompt's measured logit error, at
//! least 5e-3 (after a near-tie the two paths may legitimately diverge).
//! The planes' format is process-wide (`ops::xquant::set_narrow`), so the tests here take turns.

use qwgpu_engine::decode::{generate, GenOptions};
use qwgpu_engine::model::weights::Mixer;
use qwgpu_engine::ops::xquant::{narrow, set_narrow};
use qwgpu_tests::fixtures::*;

const LOGIT_TOL_NARROW: f32 = 0.2;
const LOGIT_TOL: f32 = 5e-3;

/// Sessions are built under one planes format at a time.
static FORMAT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The f32-compute logit tolerance of the planes format that plans built now take.
fn logit_tol() -> f32 {
    if narrow() {
        LOGIT_TOL_NARROW
    } else {
        LOGIT_TOL
    }
}
/// f16 KV caches, three-plane format: keys and values rounded to f16 once (2^-11 relative) move
/// each score by about |s| · 2^-12 and each attention output by about as much relative, through
/// every attention layer to the logits; measured ≤ 3.7e-3 (mtp-perm, 40-token prompt; f32 caches
/// ≤ 1.8e-3). 1.5e-2 leaves room for other adapters, as the MTP head's tolerance does.
const F16_KV_TOL: f32 = 1.5e-2;
const NATIVE_TOL_QUANTIZED: f32 = 6.0;
const NATIVE_TOL_DENSE: f32 = 1.5;

/// Engine greedy tokens must equal `want` up to the first step whose gap is below `tol`.
fn check_tokens(what: &str, got: &[u32], want: &[u32], gaps: &[f32], tol: f32) -> usize {
    let limit = gaps.iter().position(|g| *g < tol).unwrap_or(want.len());
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len());
    assert!(
        first_diff >= limit,
        "{what}: token {first_diff} differs ({} vs {}) before the first near-tie at step {limit}",
        got[first_diff],
        want[first_diff]
    );
    limit
}

#[test]
fn greedy_tokens_and_logits_match_mlx_lm() {
    let _turn = FORMAT.lock().unwrap_or_else(|e| e.into_inner());
    // The default two-plane format, greedy generation and teacher-forced logits, on the 1-, 40-
    // and 301-token prompts (a lone id, one prompt chunk, several); then the three-plane one on
    // the 301-token prompt, teacher-forced logits (the greedy tokens compared as the
    // logits' argmax along mlx-lm's path: generation is the same kernels in either format).
    for narrow in [true, false] {
        set_narrow(narrow);
        check_greedy_and_logits(if narrow { &[0, 2, 3] } else { &[3] }, narrow);
    }
    set_narrow(true);
}

/// The argmax of each row of `logits` ([steps, vocab]).
fn argmax_rows(logits: &[f32], vocab: usize) -> Vec<u32> {
    logits
        .chunks(vocab)
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

fn check_greedy_and_logits(prompts: &[usize], generate_too: bool) {
    let tol = logit_tol();
    for name in fixture_names() {
        let r = load_reference(&name);
        let mut s = load_session(&name, 64);
        assert_eq!(s.model.config.eos_token_ids, r.eos, "{name}: EOS ids");
        for &pi in prompts.iter().filter(|&&pi| pi < r.prompts.len()) {
            let prompt = &r.prompts[pi];
            s.reset();
            let want = &r.greedy[pi];
            let opts = GenOptions {
                max_tokens: want.len(),
                eos: vec![],
                ignore_eos: true,
            };
            let mut forced = Vec::new();
            let err =
                teacher_forced_logits(&mut s, prompt, want, &r.logits[pi].0, r.vocab, &mut forced);
            let got = if generate_too {
                s.reset();
                pollster::block_on(generate(&mut s, prompt, &opts, &mut |_| true))
                    .unwrap()
                    .0
            } else {
                // Along mlx-lm's path the engine's own choices, up to the first that differs,
                // are what greedy generation produces.
                let choice = argmax_rows(&forced, r.vocab);
                let same = choice.iter().zip(want).take_while(|(a, b)| a == b).count();
                choice[..(same + 1).min(choice.len())].to_vec()
            };
            // f32 fixtures: at least 64 tokens equal, whatever the gaps. bf16 fixtures: equal up to
            // the first near-tie: a reference step whose top-2 gap is below twice the measured
            // logit error (at least 5e-3), where the two may legitimately choose differently.
            let checked = if r.dtype == "float32" {
                let same = got.iter().zip(want).take_while(|(a, b)| a == b).count();
                assert!(
                    same >= 64,
                    "{name} prompt {pi}: only {same} tokens equal mlx-lm's (64 required)"
                );
                same
            } else {
                check_tokens(
                    &format!("{name} prompt {pi}"),
                    &got,
                    want,
                    &r.top2_gap[pi],
                    (2.0 * err).max(5e-3),
                )
            };
            println!(
                "{name} prompt {pi} (len {}, narrow planes {}): {checked} tokens checked, max |logit error| {err:.2e}",
                prompt.len(),
                narrow()
            );
            assert!(
                err <= tol,
                "{name} prompt {pi} (narrow planes {}): logits differ by {err} > {tol}",
                narrow()
            );
        }
    }
}

#[test]
fn f16_kv_cache_matches_mlx_lm() {
    // f16 KV caches (`SessionOptions::kv_f16`) against mlx-lm's f32 run, in the three-plane
    // format so that the caches' rounding is what shows: teacher-forced logits on the 40- and
    // 301-token prompts within F16_KV_TOL, and the greedy choices along mlx-lm's path as the
    // f32-cache test requires them.
    let _turn = FORMAT.lock().unwrap_or_else(|e| e.into_inner());
    set_narrow(false);
    for name in fixture_names() {
        let r = load_reference(&name);
        let mut s = load_session_kv(&name, 64, true);
        assert!(s.state.kv_f16, "{name}: the session keeps f32 caches");
        for pi in [2usize, 3].into_iter().filter(|&pi| pi < r.prompts.len()) {
            let prompt = &r.prompts[pi];
            let want = &r.greedy[pi];
            s.reset();
            let mut forced = Vec::new();
            let err =
                teacher_forced_logits(&mut s, prompt, want, &r.logits[pi].0, r.vocab, &mut forced);
            let choice = argmax_rows(&forced, r.vocab);
            let same = choice.iter().zip(want).take_while(|(a, b)| a == b).count();
            println!(
                "{name} prompt {pi} (len {}), f16 KV cache: max |logit error| {err:.2e}, {same} leading choices equal",
                prompt.len()
            );
            if r.dtype == "float32" {
                assert!(
                    same >= 64,
                    "{name} prompt {pi}, f16 KV cache: only {same} choices equal mlx-lm's (64 required)"
                );
            } else {
                let got = &choice[..(same + 1).min(choice.len())];
                check_tokens(
                    &format!("{name} prompt {pi} (f16 KV cache)"),
                    got,
                    want,
                    &r.top2_gap[pi],
                    (2.0 * err).max(5e-3),
                );
            }
            assert!(
                err <= F16_KV_TOL,
                "{name} prompt {pi}: logits with an f16 KV cache differ by {err} > {F16_KV_TOL}"
            );
        }
    }
    set_narrow(true);
}

#[test]
fn bf16_fixtures_against_mlx_native_bf16() {
    let _turn = FORMAT.lock().unwrap_or_else(|e| e.into_inner());
    for name in fixture_names() {
        let r = load_reference(&name);
        let Some(native) = &r.native else { continue };
        let mut s = load_session(&name, 64);
        let tol = if s.model.config.quantization.global.is_some() {
            NATIVE_TOL_QUANTIZED
        } else {
            NATIVE_TOL_DENSE
        };
        for (pi, prompt) in r.prompts.iter().enumerate() {
            let want = &native.greedy[pi];
            let err = teacher_forced_error(&mut s, prompt, want, &native.logits[pi].0, r.vocab);
            s.reset();
            let opts = GenOptions {
                max_tokens: want.len(),
                eos: vec![],
                ignore_eos: true,
            };
            let (got, _) =
                pollster::block_on(generate(&mut s, prompt, &opts, &mut |_| true)).unwrap();
            let same = got.iter().zip(want).take_while(|(a, b)| a == b).count();
            let checked = check_tokens(
                &format!("{name} prompt {pi} (native bf16)"),
                &got,
                want,
                &native.top2_gap[pi],
                tol,
            );
            println!("{name} prompt {pi}: vs native bf16 max |logit error| {err:.2}, {same} leading tokens equal, {checked} required");
            assert!(
                err <= tol,
                "{name} prompt {pi}: logits differ from mlx's bf16 run by {err} > {tol}"
            );
        }
    }
}

#[test]
fn projections_of_mixed_formats_load_apart_and_match_mlx_lm() {
    // bf16-mixed-g128 stores layer 2's in_proj_b (GDN) and layer 3's v_proj (attention) in 8-bit
    // g64, their siblings in 4-bit g128: the loader stacks only the runs that share a format
    // (qkv|z, then b and a alone; q|k, then v alone), and the model still matches mlx-lm.
    let _turn = FORMAT.lock().unwrap_or_else(|e| e.into_inner());
    let name = "bf16-mixed-g128";
    let r = load_reference(name);
    let mut s = load_session(name, 64);
    let names = |l: usize| -> Vec<String> {
        let mats = match &s.model.weights.layers[l].mixer {
            Mixer::Gdn { in_proj, .. } => &in_proj.mats,
            Mixer::Attn { qkv_proj, .. } => &qkv_proj.mats,
        };
        mats.iter()
            .map(|m| m.name.rsplit('.').next().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(
        names(1),
        ["in_proj_qkv+in_proj_z+in_proj_b+in_proj_a"],
        "{name}: layer 1 (one format)"
    );
    assert_eq!(
        names(2),
        ["in_proj_qkv+in_proj_z", "in_proj_b", "in_proj_a"],
        "{name}: layer 2"
    );
    assert_eq!(names(3), ["q_proj+k_proj", "v_proj"], "{name}: layer 3");
    for pi in [1, 2] {
        let err = teacher_forced_error(
            &mut s,
            &r.prompts[pi],
            &r.greedy[pi],
            &r.logits[pi].0,
            r.vocab,
        );
        println!("{name} prompt {pi}: max |logit error| {err:.2e} with split projections");
        let tol = logit_tol();
        assert!(
            err <= tol,
            "{name} prompt {pi}: logits differ by {err} > {tol}"
        );
    }
}

#[test]
fn narrow_codes_run_as_wider_codes_with_a_note() {
    // Matrices of 2, 3, 5 or 6 bits (mlx-lm's mixed recipes, low-bit conversions) run on the 4-
    // and 8-bit kernels: the loader widens their codes (scales and biases unchanged, so every
    // weight keeps its value; the logits of these fixtures are held to mlx-lm's by
    // greedy_tokens_and_logits_match_mlx_lm). Here, against the checkpoint's own tensors: every
    // GPU matrix holds 4- or 8-bit codes in k · bits / 8 bytes per row, a 3-bit q|k stacks
    // apart from a 6-bit v, the load note counts the narrow matrices per width, and `inspect`
    // counts the widening in its GPU sizes.
    use std::collections::BTreeMap;
    let mut seen = 0;
    for name in fixture_names() {
        let dir = fixtures_dir().join(&name);
        let cfg = qwgpu_engine::model::session::read_config(&dir).unwrap();
        let mut narrow: BTreeMap<u32, usize> = BTreeMap::new();
        let mut extra = 0u64;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().and_then(|x| x.to_str()) != Some("safetensors")
                || path.file_name().and_then(|x| x.to_str()) == Some("reference.safetensors")
            {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            for (t, scales) in st.tensors() {
                let Some(module) = t.strip_suffix(".scales") else {
                    continue;
                };
                let w = st.tensor(&format!("{module}.weight")).unwrap();
                let spec = cfg.quantization.for_module(module).unwrap();
                let k = scales.shape()[1] * spec.group_size as usize;
                let bits = (w.shape()[1] * 32 / k) as u32;
                assert_eq!(bits, spec.bits, "{name}: {module}");
                if bits != 4 && bits != 8 {
                    *narrow.entry(bits).or_default() += 1;
                    let to = if bits < 4 { 4 } else { 8 };
                    extra += (w.shape()[0] * k) as u64 * (to - bits) as u64 / 8;
                }
            }
        }
        if narrow.is_empty() {
            continue;
        }
        seen += 1;
        // `qwgpu inspect`'s sizes: what the GPU holds is the stored bytes plus the widening.
        let ck = qwgpu_engine::weights::Checkpoint::open(&dir).unwrap();
        let sum = qwgpu_engine::model::inspect::summarize(&cfg, &ck).unwrap();
        assert_eq!(
            sum.total_gpu_bytes - sum.total_bytes,
            extra,
            "{name}: inspect"
        );
        let s = load_session(&name, 64);
        for (bits, count) in &narrow {
            let to = if *bits < 4 { 4 } else { 8 };
            let says =
                format!("{count} matrices stored with {bits}-bit codes run as {to}-bit codes");
            assert!(
                s.model.notes.iter().any(|n| n.contains(&says)),
                "{name}: no note '{says}' in {:?}",
                s.model.notes
            );
        }
        let w = &s.model.weights;
        let mut mats = vec![&w.embed];
        mats.extend(w.lm_head.as_ref());
        for l in &w.layers {
            let (mixer, out) = match &l.mixer {
                Mixer::Gdn {
                    in_proj, out_proj, ..
                } => (in_proj, out_proj),
                Mixer::Attn {
                    qkv_proj, o_proj, ..
                } => (qkv_proj, o_proj),
            };
            mats.extend(mixer.mats.iter().chain(&l.gate_up.mats));
            mats.push(out);
            mats.push(&l.down);
        }
        for m in mats {
            let qwgpu_engine::quant::WeightFormat::Affine { bits, .. } = m.format else {
                continue;
            };
            assert!(
                bits == 4 || bits == 8,
                "{name}: {} holds {bits}-bit codes",
                m.name
            );
            let rows: u64 = m.chunks.iter().map(|c| c.rows as u64).sum();
            let bytes: u64 = m.chunks.iter().map(|c| c.weight.size).sum();
            assert_eq!(rows, m.n as u64, "{name}: {}", m.name);
            assert!(
                bytes >= rows * m.k as u64 * bits as u64 / 8
                    && bytes < rows * m.k as u64 * bits as u64 / 8 + 64,
                "{name}: {} has {bytes} bytes of codes for {rows} rows of {} {bits}-bit codes",
                m.name,
                m.k
            );
        }
        if name == "bf16-mixed-3-6" {
            // Layer 3 (attention, a recipe layer): v_proj in 6 bits, q and k in 3.
            let Mixer::Attn { qkv_proj, .. } = &w.layers[3].mixer else {
                panic!("{name}: layer 3 is not attention");
            };
            let names: Vec<&str> = qkv_proj
                .mats
                .iter()
                .map(|m| m.name.rsplit('.').next().unwrap_or_default())
                .collect();
            assert_eq!(names, ["q_proj+k_proj", "v_proj"], "{name}: layer 3");
        }
    }
    assert!(seen >= 2, "fixtures with narrow codes: {seen}");
}
