//! Corrupt and mismatched checkpoints fail before any GPU work with an error naming the file,
//! the tensor, what was expected and what was found.

use std::path::{Path, PathBuf};

use qwgpu_engine::model::session::read_config;
use qwgpu_engine::model::tensors::collect;
use qwgpu_engine::weights::Checkpoint;
use qwgpu_tests::fixtures::fixtures_dir;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A scratch copy of a fixture.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let src = fixtures_dir().join(name);
    let dst = std::env::temp_dir().join(format!(
        "qwgpu-load-errors-{}-{name}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

/// Validates the checkpoint in `dir` the way `Model::load` does, without a GPU.
fn validate(dir: &Path) -> Result<(), String> {
    let cfg = read_config(dir).map_err(|e| e.to_string())?;
    let ck = Checkpoint::open(dir).map_err(|e| e.to_string())?;
    collect(&cfg, &ck).map(|_| ()).map_err(|e| e.to_string())
}

type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn read_st(path: &Path) -> Vec<Tensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<Tensor> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write_st(path: &Path, tensors: &[Tensor]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "mlx".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// Edits `model.safetensors` of a single-file fixture and drops the index (so only the file speaks).
fn edit(name: &str, tag: &str, f: impl FnOnce(&mut Vec<Tensor>)) -> PathBuf {
    let dir = copy_fixture(name, tag);
    let p = dir.join("model.safetensors");
    let mut t = read_st(&p);
    f(&mut t);
    write_st(&p, &t);
    std::fs::remove_file(dir.join("model.safetensors.index.json")).ok();
    dir
}

fn expect_err(dir: &Path, parts: &[&str]) {
    let e = validate(dir).expect_err("the checkpoint should be rejected");
    for p in parts {
        assert!(e.contains(p), "error should mention '{p}': {e}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn committed_fixtures_validate() {
    for name in qwgpu_tests::fixtures::fixture_names() {
        validate(&fixtures_dir().join(name.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn truncated_file() {
    let dir = copy_fixture("f32-q4-g64", "trunc");
    let p = dir.join("model.safetensors");
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 1000).unwrap();
    expect_err(&dir, &["model.safetensors", "truncated"]);
}

#[test]
fn empty_and_garbage_files() {
    let dir = copy_fixture("f32-q4-g64", "empty");
    std::fs::write(dir.join("model.safetensors"), b"").unwrap();
    expect_err(&dir, &["model.safetensors", "too short"]);
    let dir = copy_fixture("f32-q4-g64", "garbage");
    std::fs::write(
        dir.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    expect_err(&dir, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn missing_tensor() {
    let dir = edit("f32-q4-g64", "missing", |t| {
        t.retain(|x| x.0 != "language_model.model.layers.2.post_attention_layernorm.weight")
    });
    expect_err(
        &dir,
        &[
            "language_model.model.layers.2.post_attention_layernorm.weight",
            "missing",
            "128",
        ],
    );
}

#[test]
fn index_names_a_tensor_no_file_has() {
    let dir = copy_fixture("bf16-q4-g64", "index");
    let shard = dir.join("model-00002-of-00004.safetensors");
    let mut t = read_st(&shard);
    let victim = t[0].0.clone();
    t.remove(0);
    write_st(&shard, &t);
    expect_err(
        &dir,
        &[
            "model.safetensors.index.json",
            &victim,
            "model-00002-of-00004.safetensors",
        ],
    );
}

#[test]
fn wrong_shape() {
    let dir = edit("f32-q4-g64", "shape", |t| {
        let n = t
            .iter_mut()
            .find(|x| x.0 == "language_model.model.norm.weight")
            .unwrap();
        n.2 = vec![127];
        n.3.truncate(127 * 4);
    });
    expect_err(
        &dir,
        &[
            "language_model.model.norm.weight",
            "[127]",
            "[128]",
            "model.safetensors",
        ],
    );
    // A projection whose packed width disagrees with hidden_size.
    let dir = edit("f32-q4-g64", "shape2", |t| {
        let n = t
            .iter_mut()
            .find(|x| x.0 == "language_model.model.layers.0.mlp.up_proj.weight")
            .unwrap();
        n.2 = vec![255, 16];
        n.3.truncate(255 * 16 * 4);
    });
    expect_err(
        &dir,
        &[
            "language_model.model.layers.0.mlp.up_proj.weight",
            "[255, 16]",
        ],
    );
}

#[test]
fn wrong_dtype() {
    let dir = edit("f32-q4-g64", "dtype", |t| {
        let n = t
            .iter_mut()
            .find(|x| x.0 == "language_model.model.norm.weight")
            .unwrap();
        n.1 = Dtype::I32;
    });
    expect_err(
        &dir,
        &[
            "language_model.model.norm.weight",
            "I32",
            "F32, F16 or BF16",
        ],
    );
}

#[test]
fn unexpected_tensor() {
    let dir = edit("f32-q4-g64", "extra", |t| {
        t.push((
            "language_model.model.layers.0.mystery.weight".into(),
            Dtype::F32,
            vec![4],
            vec![0; 16],
        ))
    });
    expect_err(&dir, &["mystery", "not used"]);
}

#[test]
fn quantization_block_disagrees_with_tensors() {
    let dir = copy_fixture("f32-q4-g64", "qbits");
    let p = dir.join("config.json");
    let c = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"bits\": 4", "\"bits\": 8");
    std::fs::write(&p, c).unwrap();
    expect_err(
        &dir,
        &[
            "language_model.model.embed_tokens.weight",
            "4 bits",
            "8 bits",
        ],
    );

    let dir = copy_fixture("f32-q4-g64", "qmode");
    let p = dir.join("config.json");
    let c = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"mode\": \"affine\"", "\"mode\": \"mxfp4\"");
    std::fs::write(&p, c).unwrap();
    expect_err(&dir, &["config.json", "mxfp4"]);

    let dir = copy_fixture("f32-q4-g64", "qnone");
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("quantization");
    v.as_object_mut().unwrap().remove("quantization_config");
    std::fs::write(&p, v.to_string()).unwrap();
    expect_err(
        &dir,
        &[
            "language_model.model.embed_tokens.weight",
            "no quantization block",
        ],
    );
}

#[test]
fn quantized_weight_without_scales() {
    let dir = edit("f32-q4-g64", "noscales", |t| {
        t.retain(|x| x.0 != "language_model.lm_head.scales")
    });
    expect_err(&dir, &["language_model.lm_head.weight", "U32", "scales"]);
}

#[test]
fn config_errors() {
    let dir = copy_fixture("f32-q4-g64", "cfg");
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"llama\"}").unwrap();
    expect_err(&dir, &["config.json", "llama"]);
    let e = validate(Path::new("/nonexistent/model/dir")).unwrap_err();
    assert!(e.contains("/nonexistent/model/dir"), "{e}");
}

#[test]
fn vision_tensors_are_skipped_and_counted() {
    let ck = Checkpoint::open(&fixtures_dir().join("hf-bf16")).unwrap();
    assert!(
        !ck.skipped.is_empty() && ck.skipped.iter().all(|n| n.starts_with("model.visual")),
        "{:?}",
        ck.skipped
    );
}
