//! Reading the mlx-lm reference fixtures (tests/fixtures/models/<name>/).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use qwgpu_engine::model::{Model, Session, SessionOptions};

pub struct Reference {
    pub name: String,
    pub dir: PathBuf,
    pub prompts: Vec<Vec<u32>>,
    pub greedy: Vec<Vec<u32>>,
    pub top2_gap: Vec<Vec<f32>>,
    pub eos: Vec<u32>,
    pub has_mtp: bool,
    pub dtype: String,
    /// logits.{i}: [steps, vocab] per prompt.
    pub logits: Vec<(Vec<f32>, usize)>,
    /// mtp_logits.{i}: [rows, vocab] per prompt (fixtures with an MTP head).
    pub mtp_logits: Vec<(Vec<f32>, usize)>,
    pub vocab: usize,
    /// bf16 fixtures: mlx-lm's plain bf16 CPU run (greedy ids, top-2 gaps, logits per prompt).
    pub native: Option<Native>,
}

pub struct Native {
    pub greedy: Vec<Vec<u32>>,
    pub top2_gap: Vec<Vec<f32>>,
    pub logits: Vec<(Vec<f32>, usize)>,
}

/// Where fixtures live: `QWGPU_FIXTURES` (a regenerated set) or the committed ones.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("QWGPU_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models"),
    }
}

pub fn fixture_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("reference.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What a fixture's checkpoint exercises in the kernels: its activation dtype, every weight
/// format it stores (bits and group of each quantized matrix, or dense), tied embeddings and an
/// MTP head.
pub fn fixture_features(name: &str) -> std::collections::BTreeSet<String> {
    let dir = fixtures_dir().join(name);
    let cfg =
        qwgpu_engine::model::session::read_config(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut f = std::collections::BTreeSet::new();
    f.insert(format!("dtype {}", cfg.dtype.as_deref().unwrap_or("?")));
    let q = &cfg.quantization;
    // Dense where the config leaves any module unquantized (or quantizes nothing).
    if q.global.is_none() || q.overrides.values().any(|v| v.is_none()) {
        f.insert("dense".to_string());
    }
    for spec in q.global.iter().chain(q.overrides.values().flatten()) {
        f.insert(format!("q{} g{}", spec.bits, spec.group_size));
    }
    if cfg.tie_word_embeddings {
        f.insert("tied".to_string());
    }
    if load_reference(name).has_mtp {
        f.insert("mtp".to_string());
    }
    f
}

/// A few fixtures that together exercise every feature of the whole set ([`fixture_features`]):
/// for the bit-identity checks of whole models, which depend on the kernels a checkpoint's
/// formats select, not on the weights' values (mlx-lm's references are checked on every
/// fixture). Greedy: the fixture adding the most features not yet covered, by name on ties.
pub fn format_cover() -> Vec<String> {
    let all: Vec<(String, std::collections::BTreeSet<String>)> = fixture_names()
        .into_iter()
        .map(|n| {
            let f = fixture_features(&n);
            (n, f)
        })
        .collect();
    let mut covered = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    loop {
        let best = all
            .iter()
            .filter(|(n, _)| !out.contains(n))
            .map(|(n, f)| (f.difference(&covered).count(), n, f))
            .filter(|(k, _, _)| *k > 0)
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)));
        let Some((_, n, f)) = best else { break };
        covered.extend(f.iter().cloned());
        out.push(n.clone());
    }
    out.sort();
    out
}

fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

pub fn load_reference(name: &str) -> Reference {
    let dir = fixtures_dir().join(name);
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read = |key: &str| -> Option<(Vec<f32>, usize)> {
        let t = st.tensor(key).ok()?;
        let rows = t.shape()[0];
        Some((bytemuck::pod_collect_to_vec(t.data()), rows))
    };
    let prompts = ids(&j["prompts"]);
    let logits: Vec<_> = (0..prompts.len())
        .map(|i| read(&format!("logits.{i}")).unwrap())
        .collect();
    let mtp_logits: Vec<_> = (0..prompts.len())
        .filter_map(|i| read(&format!("mtp_logits.{i}")))
        .collect();
    let vocab = logits[0].0.len() / logits[0].1;
    let native = j.get("native_greedy").map(|g| Native {
        greedy: ids(g),
        top2_gap: j["native_top2_gap"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect(),
        logits: (0..prompts.len())
            .map(|i| read(&format!("native_logits.{i}")).expect("native_logits"))
            .collect(),
    });
    Reference {
        name: name.to_string(),
        prompts,
        greedy: ids(&j["greedy"]),
        top2_gap: j["top2_gap"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect(),
        eos: j["eos_token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect(),
        has_mtp: j["mtp"].as_bool().unwrap_or(false),
        dtype: j["dtype"].as_str().unwrap_or("").to_string(),
        logits,
        mtp_logits,
        vocab,
        native,
        dir,
    }
}

/// The fixture `name` in a session of 512 positions with prefill chunks of `chunk` rows.
pub fn load_session(name: &str, chunk: u32) -> Session {
    load_session_kv(name, chunk, false)
}

/// [`load_session`] with f16 KV caches when `kv_f16` (`SessionOptions::kv_f16`).
pub fn load_session_kv(name: &str, chunk: u32, kv_f16: bool) -> Session {
    let dir = fixtures_dir().join(name);
    let model = Model::load(crate::model_gpu(), &dir, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    pollster::block_on(Session::new(
        Arc::new(model),
        SessionOptions {
            max_ctx: 512,
            prefill_chunk: chunk,
            speculative: true,
            kv_f16,
            ..Default::default()
        },
    ))
    .unwrap()
}

/// Max |engine − reference| over teacher-forced logits along `path` (the prompt, then the
/// reference's own tokens).
pub fn teacher_forced_error(
    s: &mut Session,
    prompt: &[u32],
    path: &[u32],
    reference: &[f32],
    vocab: usize,
) -> f32 {
    teacher_forced_run(s, prompt, path, reference, vocab, None)
}

/// As [`teacher_forced_error`], also appending the engine's logits of every step to `out`.
pub fn teacher_forced_logits(
    s: &mut Session,
    prompt: &[u32],
    path: &[u32],
    reference: &[f32],
    vocab: usize,
    out: &mut Vec<f32>,
) -> f32 {
    teacher_forced_run(s, prompt, path, reference, vocab, Some(out))
}

fn teacher_forced_run(
    s: &mut Session,
    prompt: &[u32],
    path: &[u32],
    reference: &[f32],
    vocab: usize,
    mut out: Option<&mut Vec<f32>>,
) -> f32 {
    s.reset();
    let mut max_err = 0f32;
    for step in 0..reference.len() / vocab {
        let input: Vec<u32> = if step == 0 {
            prompt.to_vec()
        } else {
            vec![path[step - 1]]
        };
        let l = pollster::block_on(s.forward_logits(&input)).unwrap();
        for (a, b) in l.iter().zip(&reference[step * vocab..(step + 1) * vocab]) {
            max_err = max_err.max((a - b).abs());
        }
        if let Some(o) = out.as_deref_mut() {
            o.extend_from_slice(&l);
        }
    }
    max_err
}

/// The fixtures with an MTP head.
pub fn mtp_fixtures() -> Vec<String> {
    fixture_names()
        .into_iter()
        .filter(|n| load_reference(n).has_mtp)
        .collect()
}

/// The fixture `name` in a speculative session of 1024 positions with prefill chunks of `chunk`.
pub fn mtp_session(name: &str, chunk: u32) -> Session {
    mtp_session_kv(name, chunk, false)
}

/// [`mtp_session`] with f16 KV caches when `kv_f16` (`SessionOptions::kv_f16`).
pub fn mtp_session_kv(name: &str, chunk: u32, kv_f16: bool) -> Session {
    mtp_session_with(
        name,
        SessionOptions {
            prefill_chunk: chunk,
            kv_f16,
            ..Default::default()
        },
    )
}

/// [`mtp_session`] with `opts` (its context fixed at 1024 positions, speculative).
pub fn mtp_session_with(name: &str, opts: SessionOptions) -> Session {
    let model = Model::load(
        crate::model_gpu(),
        &fixtures_dir().join(name),
        &mut |_, _| {},
    )
    .unwrap();
    pollster::block_on(Session::new(
        Arc::new(model),
        SessionOptions {
            max_ctx: 1024,
            speculative: true,
            ..opts
        },
    ))
    .unwrap()
}

/// Per prompt of fixture `name`, the max |engine − reference| of the MTP head's logits (the
/// reference built from mlx-lm's qwen3_5 blocks by make_fixtures.py) at a few positions: the last
/// prompt position and one 40 tokens into the greedy continuation.
pub fn mtp_logit_errors(s: &mut Session, name: &str) -> Vec<(usize, f32)> {
    let r = load_reference(name);
    let mut out = Vec::new();
    for (pi, prompt) in r.prompts.iter().enumerate() {
        let seq: Vec<u32> = prompt.iter().chain(&r.greedy[pi]).cloned().collect();
        let (ref_logits, rows) = &r.mtp_logits[pi];
        let p = prompt.len();
        let mut max_err = 0f32;
        // Row k pairs the hidden state at k with seq[k + 1]; from the last prompt position on,
        // seq[k + 1] is the backbone's own greedy choice, which is what the MTP step feeds it.
        // The context grows from one k to the next: each MTP step runs on a saved state, which
        // is restored before the next ids are fed (the state after seq[..k] is the same bits
        // however it is chunked: model_invariance.rs).
        s.reset();
        let mut fed = 0;
        for k in [p - 1, p + 40]
            .into_iter()
            .filter(|k| k + 1 < seq.len() && *k < *rows)
        {
            pollster::block_on(s.prefill_with(&seq[fed..k], Some(seq[k]))).unwrap();
            fed = k;
            let saved = pollster::block_on(s.save()).unwrap();
            let (main, _) = pollster::block_on(s.mtp_first(seq[k])).unwrap();
            assert_eq!(main, seq[k + 1], "{name}: the backbone's choice at {k}");
            let got = pollster::block_on(s.mtp_logits()).unwrap();
            s.restore(&saved).unwrap();
            let want = &ref_logits[k * r.vocab..(k + 1) * r.vocab];
            for (a, b) in got.iter().zip(want) {
                max_err = max_err.max((a - b).abs());
            }
        }
        out.push((pi, max_err));
    }
    out
}
