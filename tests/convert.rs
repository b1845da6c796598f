//! `qwgpu convert` (engine::convert) against mlx-lm's own converter: for every reference in
//! `fixtures/models/convert/` (make_fixtures.py runs `mlx_lm.convert` on the `hf-bf16` and
//! `f32-dense` fixtures), the converted tensors must equal mlx-lm's byte for byte and the config
//! must say what mlx-lm's says, and the `mtp.*` tensors mlx-lm drops must be there, equal to
//! `mx.quantize` of the renamed, norm-shifted source tensors. Then the converted checkpoint runs:
//! unquantized it gives the same logits as the source loaded directly, quantized its kept MTP head
//! drives speculative decoding with output identical to plain decoding. Bad sources and
//! destinations fail with a clear error and write nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qwgpu_engine::convert::{self, ConvertOptions, QuantChoice, Recipe};
use qwgpu_engine::decode::mtp::{generate_mtp, MtpOptions};
use qwgpu_engine::decode::{generate, GenOptions};
use qwgpu_engine::model::{Model, Session, SessionOptions};
use qwgpu_engine::quant::FloatType;
use qwgpu_tests::fixtures::*;
use qwgpu_tests::{assert_bits_eq, model_gpu};
use serde_json::Value;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwgpu-convert-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The references: (name, source fixture, options), from each `convert.json`.
fn references() -> Vec<(String, String, ConvertOptions)> {
    let root = fixtures_dir().join("convert");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root).expect("fixtures/models/convert") {
        let dir = e.unwrap().path();
        let text = std::fs::read_to_string(dir.join("convert.json")).unwrap();
        let j: Value = serde_json::from_str(&text).unwrap();
        let o = &j["options"];
        let dtype = o["dtype"].as_str().map(|d| match d {
            "bfloat16" => FloatType::BF16,
            "float16" => FloatType::F16,
            "float32" => FloatType::F32,
            other => panic!("dtype {other}"),
        });
        let quantize = o["quantize"].as_bool().unwrap().then(|| QuantChoice {
            bits: o["q_bits"].as_u64().unwrap() as u32,
            group_size: o["q_group_size"].as_u64().unwrap() as u32,
            recipe: o["quant_predicate"]
                .as_str()
                .map(|r| Recipe::parse(r).unwrap()),
        });
        out.push((
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            j["source"].as_str().unwrap().to_string(),
            ConvertOptions {
                quantize,
                dtype,
                ..Default::default()
            },
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// name → (dtype, shape, bytes) of every tensor in the safetensors files of `dir` named `prefix*`.
fn tensors(dir: &Path, prefix: &str) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        if !(n.starts_with(prefix) && n.ends_with(".safetensors")) {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("mlx"),
            "{}: safetensors metadata format",
            p.display()
        );
        for (name, t) in st.tensors() {
            out.insert(
                name,
                (
                    format!("{:?}", t.dtype()),
                    t.shape().to_vec(),
                    t.data().to_vec(),
                ),
            );
        }
    }
    out
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn converts_like_mlx_lm_and_keeps_the_mtp_head() {
    let refs = references();
    assert!(
        refs.len() >= 4,
        "expected the convert references, found {refs:?}",
        refs = refs.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    let tmp = scratch("ref");
    for (name, source, opts) in refs {
        let rdir = fixtures_dir().join("convert").join(&name);
        let src = fixtures_dir().join(&source);
        let out = tmp.join(&name);
        let (plan, written) =
            convert::convert(&src, &out, &opts, &|_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));

        // Tensors: mlx-lm's (backbone) and the MTP reference, nothing else, byte for byte.
        let mut want = tensors(&rdir, "model");
        let mtp = tensors(&rdir, "mtp");
        let has_mtp = !mtp.is_empty();
        want.extend(mtp);
        let got = tensors(&out, "model");
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: missing {missing:?}, extra {extra:?}"
        );
        for (k, (dt, shape, bytes)) in &want {
            let (gdt, gshape, gbytes) = &got[k];
            assert_eq!((gdt, gshape), (dt, shape), "{name}: {k} dtype/shape");
            if gbytes != bytes {
                let first = gbytes.iter().zip(bytes).position(|(a, b)| a != b);
                panic!(
                    "{name}: {k} differs from mlx-lm's (first differing byte {first:?} of {})",
                    bytes.len()
                );
            }
        }
        assert_eq!(plan.tensor_count, want.len(), "{name}: planned tensors");
        assert_eq!(
            plan.mtp_tensors > 0,
            has_mtp,
            "{name}: MTP tensors kept iff the source has them"
        );
        let total: u64 = want.values().map(|t| t.2.len() as u64).sum();
        assert_eq!(written.bytes, total, "{name}: bytes written");

        // config.json: what mlx-lm's says, plus the MTP modules' entries in a per-module
        // quantization block (mlx-lm writes none there: it dropped the head).
        let rcfg = read_json(&rdir.join("config.json"));
        let mut gcfg = read_json(&out.join("config.json"));
        for q in ["quantization", "quantization_config"] {
            if let Some(Value::Object(block)) = gcfg.get_mut(q) {
                let mtp_entries: Vec<String> = block
                    .keys()
                    .filter(|k| k.starts_with("language_model.mtp."))
                    .cloned()
                    .collect();
                for k in mtp_entries {
                    let e = block.remove(&k).unwrap();
                    // Its bits are the MTP reference tensor's: 32 · packed cols / in features.
                    let (_, wshape, _) = &want[&format!("{k}.weight")];
                    let (_, sshape, _) = &want[&format!("{k}.scales")];
                    let gs = e["group_size"].as_u64().unwrap() as usize;
                    let k_in = sshape[1] * gs;
                    assert_eq!(
                        e["bits"].as_u64().unwrap() as usize,
                        32 * wshape[1] / k_in,
                        "{name}: {k} entry"
                    );
                }
            }
        }
        assert_eq!(gcfg, rcfg, "{name}: config.json differs from mlx-lm's");

        // The index lists every tensor; the source's generation config came along.
        let idx = read_json(&out.join("model.safetensors.index.json"));
        let map = idx["weight_map"].as_object().unwrap();
        assert_eq!(
            map.keys().cloned().collect::<Vec<_>>(),
            want.keys().cloned().collect::<Vec<_>>(),
            "{name}: index weight_map"
        );
        assert_eq!(idx["metadata"]["total_size"].as_u64(), Some(total));
        if src.join("generation_config.json").exists() {
            assert_eq!(
                std::fs::read(src.join("generation_config.json")).unwrap(),
                std::fs::read(out.join("generation_config.json")).unwrap(),
                "{name}: generation_config.json copied"
            );
        }
        println!(
            "{name}: {} tensors ({} quantized matrices, bits {:?}), {} MTP tensors, {} bytes: equal to mlx-lm",
            plan.tensor_count, plan.quantized_matrices, plan.bits_used, plan.mtp_tensors, written.bytes
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn small_shards_split_whole_matrices_and_load() {
    // A shard limit far below one layer: every matrix's weight, scales and biases stay together,
    // the shards are numbered, the index agrees, and the loader accepts the result.
    let tmp = scratch("shards");
    let out = tmp.join("out");
    let opts = ConvertOptions {
        shard_bytes: 20_000,
        ..Default::default()
    };
    let (plan, written) =
        convert::convert(&fixtures_dir().join("hf-bf16"), &out, &opts, &|_| {}).unwrap();
    let shards: Vec<&String> = written
        .files
        .iter()
        .filter(|f| f.ends_with(".safetensors"))
        .collect();
    assert!(shards.len() > 3, "expected several shards, got {shards:?}");
    let n = shards.len();
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(**s, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
    }
    let idx = read_json(&out.join("model.safetensors.index.json"));
    let map = idx["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), plan.tensor_count);
    for (k, f) in map {
        if let Some(m) = k.strip_suffix(".weight") {
            for part in ["scales", "biases"] {
                if let Some(g) = map.get(&format!("{m}.{part}")) {
                    assert_eq!(g, f, "{m}: weight and {part} in one shard");
                }
            }
        }
    }
    // Same tensors as one file.
    let one = tmp.join("one");
    convert::convert(
        &fixtures_dir().join("hf-bf16"),
        &one,
        &ConvertOptions::default(),
        &|_| {},
    )
    .unwrap();
    assert_eq!(tensors(&out, "model"), tensors(&one, "model"));
    let _ = std::fs::remove_dir_all(&tmp);
}

fn session_at(dir: &Path) -> Session {
    let model = Model::load(model_gpu(), dir, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    pollster::block_on(Session::new(
        Arc::new(model),
        SessionOptions {
            max_ctx: 512,
            prefill_chunk: 16,
            speculative: true,
            ..Default::default()
        },
    ))
    .unwrap()
}

/// Greedy MTP decoding of `prompt` in `s` gives plain greedy decoding's `max_tokens` tokens, and
/// the head drafts.
fn assert_mtp_matches_plain(s: &mut Session, r: &Reference, prompt: &[u32], max_tokens: usize) {
    let opts = GenOptions {
        max_tokens,
        eos: r.eos.clone(),
        ignore_eos: true,
    };
    s.reset();
    let (plain, _) = pollster::block_on(generate(s, prompt, &opts, &mut |_| true)).unwrap();
    s.reset();
    let (spec, _, stats) = pollster::block_on(generate_mtp(
        s,
        prompt,
        &opts,
        &MtpOptions::always(),
        &mut |_| true,
    ))
    .unwrap();
    assert_eq!(
        spec, plain,
        "MTP on the converted checkpoint changes the output"
    );
    assert!(stats.drafted > 0, "the MTP head drafted");
}

#[test]
fn unquantized_conversion_runs_like_its_source() {
    // Converting without quantization only renames, shifts the norms and moves conv1d's axis,
    // which the loader also does for a raw HF checkpoint: the same logits, bit for bit.
    let tmp = scratch("float");
    let out = tmp.join("out");
    let opts = ConvertOptions {
        quantize: None,
        ..Default::default()
    };
    convert::convert(&fixtures_dir().join("hf-bf16"), &out, &opts, &|_| {}).unwrap();
    let r = load_reference("hf-bf16");
    let mut a = load_session("hf-bf16", 16);
    let mut b = session_at(&out);
    for prompt in r.prompts.iter().take(2) {
        let la = pollster::block_on(a.forward_logits(prompt)).unwrap();
        let lb = pollster::block_on(b.forward_logits(prompt)).unwrap();
        assert_bits_eq("converted vs source logits", &lb, &la);
        a.reset();
        b.reset();
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn quantized_conversion_keeps_a_working_mtp_head() {
    let tmp = scratch("mtp");
    let out = tmp.join("out");
    convert::convert(
        &fixtures_dir().join("hf-bf16"),
        &out,
        &ConvertOptions::default(),
        &|_| {},
    )
    .unwrap();
    let r = load_reference("hf-bf16");
    let mut s = session_at(&out);
    assert!(
        s.mtp_available(),
        "the converted checkpoint has an MTP head"
    );
    for prompt in r.prompts.iter().take(2) {
        assert_mtp_matches_plain(&mut s, &r, prompt, 48);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn bad_sources_and_destinations_fail_and_write_nothing() {
    let tmp = scratch("errors");
    let hf = fixtures_dir().join("hf-bf16");
    let err = |src: &Path, dst: &Path, opts: &ConvertOptions| -> String {
        match convert::convert(src, dst, opts, &|_| {}) {
            Ok(_) => panic!(
                "converting {} into {} succeeded",
                src.display(),
                dst.display()
            ),
            Err(e) => e.to_string(),
        }
    };

    // An already quantized checkpoint: named, refused, nothing written.
    let dst = tmp.join("q");
    let e = err(
        &fixtures_dir().join("bf16-q4-g64"),
        &dst,
        &ConvertOptions::default(),
    );
    assert!(
        e.contains("already quantized") && e.contains("language_model."),
        "{e}"
    );
    assert!(!dst.exists());

    // An existing destination is left as it was.
    let dst = tmp.join("exists");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::write(dst.join("keep.txt"), "mine").unwrap();
    let e = err(&hf, &dst, &ConvertOptions::default());
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dst.join("keep.txt")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 1);

    // Widths and groups MLX does not have.
    for (bits, group, what) in [(7, 64, "7 bits"), (4, 48, "group size 48")] {
        let dst = tmp.join(format!("b{bits}g{group}"));
        let opts = ConvertOptions {
            quantize: Some(QuantChoice {
                bits,
                group_size: group,
                recipe: None,
            }),
            ..Default::default()
        };
        let e = err(&hf, &dst, &opts);
        assert!(e.contains(what), "{e}");
        assert!(!dst.exists());
    }

    // A config that does not match the tensors (one layer more than stored): the missing
    // tensor is named before anything is written.
    let src = tmp.join("src5");
    std::fs::create_dir_all(&src).unwrap();
    for e in std::fs::read_dir(&hf).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, src.join(p.file_name().unwrap())).unwrap();
    }
    let mut cfg = read_json(&hf.join("config.json"));
    let tc = cfg["text_config"].as_object_mut().unwrap();
    tc["num_hidden_layers"] = 5.into();
    if let Some(Value::Array(lt)) = tc.get_mut("layer_types") {
        lt.push("linear_attention".into());
    }
    std::fs::write(src.join("config.json"), cfg.to_string()).unwrap();
    let dst = tmp.join("five");
    let e = err(&src, &dst, &ConvertOptions::default());
    assert!(e.contains("layers.4"), "{e}");
    assert!(!dst.exists());
    // No partial directory left beside the destinations.
    let leftovers: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A copy of `src` with only config.json, the index and the shards that hold `mtp.*` (per the
/// index): what a user downloads to add the head to a conversion they already have.
fn mtp_shards_only(src: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let idx = read_json(&src.join("model.safetensors.index.json"));
    let mut shards: Vec<&str> = idx["weight_map"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("mtp."))
        .map(|(_, f)| f.as_str().unwrap())
        .collect();
    shards.sort();
    shards.dedup();
    let all = idx["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_str)
        .collect::<std::collections::BTreeSet<_>>();
    assert!(
        shards.len() < all.len(),
        "the head should not be in every shard: {shards:?}"
    );
    for f in shards
        .iter()
        .copied()
        .chain(["config.json", "model.safetensors.index.json"])
    {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn adding_the_mtp_head_to_a_conversion_without_it_equals_a_whole_conversion() {
    let tmp = scratch("graft");
    let hf = fixtures_dir().join("hf-bf16");
    let part = tmp.join("part");
    mtp_shards_only(&hf, &part);
    for recipe in [None, Some(Recipe::Mixed4_6)] {
        let tag = recipe.map_or("q4", |r| r.name());
        let q = ConvertOptions {
            quantize: Some(QuantChoice {
                bits: 4,
                group_size: 64,
                recipe,
            }),
            ..Default::default()
        };
        let whole = tmp.join(format!("whole-{tag}"));
        convert::convert(&hf, &whole, &q, &|_| {}).unwrap();
        // As mlx-lm converts: no head.
        let without = tmp.join(format!("without-{tag}"));
        let no_mtp = ConvertOptions {
            keep_mtp: false,
            ..q.clone()
        };
        convert::convert(&hf, &without, &no_mtp, &|_| {}).unwrap();
        assert!(!tensors(&without, "model")
            .keys()
            .any(|k| k.contains(".mtp.")));
        let g = convert::graft_mtp(&part, &without, &|_| {}).unwrap();
        assert_eq!(
            g.recipe,
            recipe.map(Recipe::name),
            "{tag}: recipe detected from the target's entries"
        );
        assert_eq!(g.file, convert::MTP_SHARD);
        // Every tensor, the config and the index as the whole conversion has them.
        assert_eq!(
            tensors(&without, "model"),
            tensors(&whole, "model"),
            "{tag}: tensors"
        );
        assert_eq!(
            read_json(&without.join("config.json")),
            read_json(&whole.join("config.json")),
            "{tag}: config.json"
        );
        let (iw, ig) = (
            read_json(&whole.join("model.safetensors.index.json")),
            read_json(&without.join("model.safetensors.index.json")),
        );
        let keys = |v: &Value| {
            v["weight_map"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&ig), keys(&iw), "{tag}: index");
        assert_eq!(ig["metadata"]["total_size"], iw["metadata"]["total_size"]);
        convert::verify(&without).unwrap();
    }

    // The grafted checkpoint speculates with plain decoding's output.
    let r = load_reference("hf-bf16");
    let mut s = session_at(&tmp.join("without-q4"));
    assert!(s.mtp_available());
    assert_mtp_matches_plain(&mut s, &r, &r.prompts[1], 32);
    drop(s);

    // Refusals, each before the target changes.
    let snapshot = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let err = |src: &Path, dst: &Path| match convert::graft_mtp(src, dst, &|_| {}) {
        Ok(_) => panic!(
            "grafting {} onto {} succeeded",
            src.display(),
            dst.display()
        ),
        Err(e) => e.to_string(),
    };
    // A target that has the head already.
    let whole = tmp.join("whole-q4");
    let before = snapshot(&whole);
    let e = err(&part, &whole);
    assert!(e.contains("already has an MTP head"), "{e}");
    assert_eq!(snapshot(&whole), before);
    // Shards without the head: the index says which one has it.
    let target = tmp.join("target");
    convert::convert(
        &hf,
        &target,
        &ConvertOptions {
            keep_mtp: false,
            ..Default::default()
        },
        &|_| {},
    )
    .unwrap();
    let before = snapshot(&target);
    let first = tmp.join("first");
    std::fs::create_dir_all(&first).unwrap();
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::copy(hf.join(f), first.join(f)).unwrap();
    }
    let e = err(&first, &target);
    assert!(
        e.contains("no mtp.* tensors") && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
    // Another model's head.
    let e = err(&fixtures_dir().join("f32-q4-g64"), &target);
    assert!(e.contains("not the same model"), "{e}");
    // An already quantized head (the whole 4-bit conversion as the source).
    let e = err(&whole, &target);
    assert!(e.contains("already quantized"), "{e}");
    assert_eq!(
        snapshot(&target),
        before,
        "a refused graft leaves the target as it was"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
