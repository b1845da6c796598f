//! Reading the mlx-lm reference fixtures (tests/fixtures/models/<name>/).

use std::path::{Path, PathBuf};

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
