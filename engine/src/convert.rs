//! Hugging Face → MLX checkpoint conversion that keeps the MTP head (`qwgpu convert`).
//!
//! Does what `mlx_lm.convert --quantize` does for a Qwen3.5/3.6 dense model (spec §1.3, §2.2,
//! §3.1), with one difference: mlx-lm's sanitize drops every `mtp.*` tensor, this keeps them
//! (named `language_model.mtp.*`, their norms shifted like the backbone's), so speculative
//! decoding with the native MTP head works on the result.
//!
//! Steps, in mlx-lm's order: names mapped to the MLX layout (vision tensors skipped); in a raw HF
//! checkpoint the zero-centred norms get +1 in their stored type and conv1d weights move their
//! singleton axis ([C, 1, K] → [C, K, 1], the same bytes); every float tensor but `A_log` is cast
//! to the config's `torch_dtype` (or `--dtype`); every linear and embedding weight whose input
//! dimension is a multiple of the group size is quantized with MLX's affine quantizer, its codes
//! from the cast values in f32 and its scales and biases stored in the weight's type. Per-module
//! bit widths follow mlx-lm's `mixed_*` recipes when one is asked for. Output: `config.json`
//! (sorted keys, `quantization` and `quantization_config`, no `vision_config`), shards of at most
//! `shard_bytes` (`model.safetensors` or `model-XXXXX-of-YYYYY.safetensors` +
//! `model.safetensors.index.json`, metadata `{"format": "mlx"}`), and the tokenizer, template and
//! generation files copied. The source is memory-mapped and each tensor converted when it is
//! written (the rows of a matrix in parallel), so memory stays near one tensor's output; the
//! result is written to a temporary directory next to the destination and renamed into place
//! only when complete.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::LoadError;
use crate::model::config::ModelConfig;
use crate::quant::{affine_code, affine_group, encode_floats, pack_codes, FloatType};
use crate::weights::{is_shifted_norm, Checkpoint, Dtype, Layout};

/// An mlx-lm mixed-precision recipe (`--quant-predicate`): `v_proj` and `down_proj` of the first
/// and last eighth of the layers and of every third layer in between, and `lm_head`, get the high
/// bit width; every other quantized module the low one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    Mixed2_6,
    Mixed3_4,
    Mixed3_6,
    Mixed4_6,
}

impl Recipe {
    pub const NAMES: [&'static str; 4] = ["mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"];

    pub fn parse(s: &str) -> Option<Recipe> {
        Some(match s {
            "mixed_2_6" => Recipe::Mixed2_6,
            "mixed_3_4" => Recipe::Mixed3_4,
            "mixed_3_6" => Recipe::Mixed3_6,
            "mixed_4_6" => Recipe::Mixed4_6,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Recipe::Mixed2_6 => "mixed_2_6",
            Recipe::Mixed3_4 => "mixed_3_4",
            Recipe::Mixed3_6 => "mixed_3_6",
            Recipe::Mixed4_6 => "mixed_4_6",
        }
    }

    /// (low, high) bits.
    pub fn bits(self) -> (u32, u32) {
        match self {
            Recipe::Mixed2_6 => (2, 6),
            Recipe::Mixed3_4 => (3, 4),
            Recipe::Mixed3_6 => (3, 6),
            Recipe::Mixed4_6 => (4, 6),
        }
    }

    /// The bits of module `path` (MLX module path) in a model of `num_layers` layers, as
    /// mlx-lm's `mixed_quant_predicate` decides: the layer index is the path component at the
    /// position of the first numeric component of a backbone `down_proj` path (3 here:
    /// `language_model.model.layers.N…`, and `language_model.mtp.layers.0…` for the MTP layer),
    /// 0 for shorter paths.
    pub fn bits_for(self, path: &str, num_layers: usize) -> u32 {
        const LAYER_LOCATION: usize = 3;
        let (low, high) = self.bits();
        let index = path
            .split('.')
            .nth(LAYER_LOCATION)
            .map(|s| s.parse::<i64>().unwrap_or(-1))
            .unwrap_or(0);
        let n = num_layers as i64;
        // Python's % is a floor modulo.
        let more = index < n / 8 || index >= 7 * n / 8 || (index - n / 8).rem_euclid(3) == 2;
        if (path.contains("v_proj") || path.contains("v_a_proj") || path.contains("v_b_proj"))
            && more
        {
            return high;
        }
        if path.contains("down_proj") && more {
            return high;
        }
        if path.contains("lm_head") {
            return high;
        }
        low
    }
}

/// How to quantize.
#[derive(Clone, Copy, Debug)]
pub struct QuantChoice {
    /// 2, 3, 4, 5, 6 or 8 (qwgpu runs 4 and 8).
    pub bits: u32,
    /// 32, 64 or 128.
    pub group_size: u32,
    pub recipe: Option<Recipe>,
}

/// What `convert` does.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// None: keep the weights as floats (names, norms, conv layout and the cast only).
    pub quantize: Option<QuantChoice>,
    /// The float type of the output; None takes `torch_dtype` (or `text_config.dtype`) from
    /// config.json as mlx-lm does, and leaves the types alone when neither is there.
    pub dtype: Option<FloatType>,
    /// Keep the `mtp.*` tensors (the default, and the reason this converter exists).
    pub keep_mtp: bool,
    /// Largest shard size in bytes (mlx-lm: 5 GiB).
    pub shard_bytes: u64,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            quantize: Some(QuantChoice {
                bits: 4,
                group_size: 64,
                recipe: None,
            }),
            dtype: None,
            keep_mtp: true,
            shard_bytes: 5 << 30,
        }
    }
}

/// How one output tensor is made from its source tensor.
#[derive(Clone, Debug)]
enum Op {
    /// The stored bytes unchanged (only the shape may differ: conv1d's singleton axis).
    Copy,
    /// Float values decoded, +1 if `shift` (rounded to the stored type, as mlx-lm adds in that
    /// type), and encoded as `out`.
    Float {
        from: FloatType,
        shift: bool,
        out: FloatType,
    },
    /// One of the three tensors of a quantized matrix: values decoded, rounded to `cast` (the
    /// weight's type after the cast), quantized.
    Quant {
        part: QuantPart,
        from: FloatType,
        cast: FloatType,
        bits: u32,
        group: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QuantPart {
    Codes,
    Scales,
    Biases,
}

#[derive(Clone, Debug)]
struct OutTensor {
    name: String,
    /// The source tensor (normalized name).
    src: String,
    shape: Vec<usize>,
    dtype: safetensors::Dtype,
    op: Op,
}

impl OutTensor {
    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// What a conversion will write, worked out from the headers before any weight is read.
pub struct Plan {
    tensors: Vec<OutTensor>,
    config_json: String,
    /// Source files copied verbatim (tokenizer, template, generation config, license).
    copy_files: Vec<PathBuf>,
    pub layout: Layout,
    /// Tensors in the output, of which quantized matrices.
    pub tensor_count: usize,
    pub quantized_matrices: usize,
    /// Parameters (logical weights) and bytes written.
    pub parameters: u64,
    pub output_bytes: u64,
    pub source_bytes: u64,
    /// MTP tensors kept (0 when the source has none or `keep_mtp` is off).
    pub mtp_tensors: usize,
    /// Bit widths used and how many matrices took each.
    pub bits_used: Vec<(u32, usize)>,
    /// One-line remarks for the user (dropped tensors, formats qwgpu cannot run).
    pub notes: Vec<String>,
}

/// The files besides weights and config that a checkpoint directory carries and the output needs.
const COPIED: [&str; 10] = [
    "tokenizer.json",
    "tokenizer.json.gz",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];

fn cfg_err(file: &Path, message: String) -> LoadError {
    LoadError::Config {
        file: file.display().to_string(),
        message,
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn float_type(s: &str) -> Option<FloatType> {
    match s {
        "bfloat16" => Some(FloatType::BF16),
        "float16" => Some(FloatType::F16),
        "float32" => Some(FloatType::F32),
        _ => None,
    }
}

fn st_dtype(t: FloatType) -> safetensors::Dtype {
    match t {
        FloatType::F32 => safetensors::Dtype::F32,
        FloatType::F16 => safetensors::Dtype::F16,
        FloatType::BF16 => safetensors::Dtype::BF16,
    }
}

/// A file's text, or None when it does not exist.
fn read_optional(p: &Path) -> Result<Option<String>, LoadError> {
    match std::fs::read_to_string(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(p, e)),
    }
}

/// An error naming the first quantized tensor of `ck` (`what` in `src` is already quantized),
/// if it has one: conversion starts from float weights.
fn refuse_quantized(
    src: &Path,
    ck: &Checkpoint,
    what: &str,
    advice: &str,
) -> Result<(), LoadError> {
    match ck
        .tensors
        .iter()
        .find(|(n, m)| m.dtype == Dtype::U32 || n.ends_with(".scales"))
    {
        Some((_, m)) => Err(LoadError::Unsupported(format!(
            "{}: {what} is already quantized ('{}' in {}); {advice}",
            src.display(),
            m.stored_name,
            ck.files[m.file].0,
        ))),
        None => Ok(()),
    }
}

/// Works out what converting the checkpoint in `src` (already opened as `ck`) writes. Checks
/// the config and every tensor against the model first (a malformed or unsupported source fails
/// here, before anything is written), and refuses an already quantized source.
pub fn plan(src: &Path, ck: &mut Checkpoint, opts: &ConvertOptions) -> Result<Plan, LoadError> {
    let cpath = src.join("config.json");
    let ctext = std::fs::read_to_string(&cpath).map_err(|e| io_err(&cpath, e))?;
    let gtext = read_optional(&src.join("generation_config.json"))?;
    let cfg = ModelConfig::parse(&cpath.display().to_string(), &ctext, gtext.as_deref())?;
    let mut root: serde_json::Map<String, Value> = match serde_json::from_str(&ctext) {
        Ok(Value::Object(m)) => m,
        _ => return Err(cfg_err(&cpath, "the top level is not a JSON object".into())),
    };

    refuse_quantized(
        src,
        ck,
        "the checkpoint",
        "convert from the original Hugging Face (or unquantized MLX) checkpoint",
    )?;
    if root.contains_key("quantization") || root.contains_key("quantization_config") {
        return Err(cfg_err(
            &cpath,
            "has a `quantization` block although no tensor is quantized; remove it or convert from the original checkpoint".into(),
        ));
    }
    if let Some(q) = &opts.quantize {
        if !matches!(q.bits, 2 | 3 | 4 | 5 | 6 | 8) {
            return Err(LoadError::Unsupported(format!(
                "{} bits: MLX affine quantization takes 2, 3, 4, 5, 6 or 8",
                q.bits
            )));
        }
        if !matches!(q.group_size, 32 | 64 | 128) {
            return Err(LoadError::Unsupported(format!(
                "group size {}: MLX affine quantization takes 32, 64 or 128",
                q.group_size
            )));
        }
    }

    let mut notes = Vec::new();
    // Tensors mlx-lm's load would not keep.
    let mut leave_out = |ck: &mut Checkpoint, pred: &dyn Fn(&str) -> bool, why: &str| {
        let names: Vec<String> = ck.tensors.keys().filter(|n| pred(n)).cloned().collect();
        if !names.is_empty() {
            notes.push(format!("{} tensor(s) left out: {why}", names.len()));
        }
        for n in names {
            ck.tensors.remove(&n);
        }
    };
    if cfg.tie_word_embeddings {
        leave_out(
            ck,
            &|n| n.starts_with("language_model.lm_head."),
            "lm_head (tie_word_embeddings: the embedding is the output layer)",
        );
    }
    let source_mtp = ck
        .tensors
        .keys()
        .any(|n| n.starts_with("language_model.mtp."));
    if !opts.keep_mtp {
        leave_out(
            ck,
            &|n| n.starts_with("language_model.mtp."),
            "the MTP head (--no-mtp)",
        );
    } else if !source_mtp && cfg.mtp_num_hidden_layers > 0 {
        notes.push("config.json declares an MTP head but the source has no mtp.* tensors: the output has none either (plain decoding only)".into());
    }
    if !ck.skipped.is_empty() {
        notes.push(format!(
            "{} vision tensor(s) skipped (text model only)",
            ck.skipped.len()
        ));
    }
    // Every tensor must belong to the model, with the right shape and a float type.
    crate::model::tensors::collect(&cfg, ck)?;

    let dtype = match opts.dtype {
        Some(t) => Some(t),
        None => {
            let text = root.get("text_config").and_then(Value::as_object);
            let name = root
                .get("torch_dtype")
                .and_then(Value::as_str)
                .or_else(|| text.and_then(|t| t.get("dtype")).and_then(Value::as_str));
            name.and_then(float_type)
        }
    };
    let rules = Rules {
        hf: ck.layout == Layout::HuggingFace,
        dtype,
        quantize: opts.quantize,
        n_layers: cfg.num_hidden_layers,
    };
    let mut acc = Accum::default();
    for (name, m) in &ck.tensors {
        rules.add(ck, name, m, &mut acc)?;
    }
    let Accum {
        tensors,
        qentries,
        bits_used,
        parameters,
        quantized,
    } = acc;
    if let Some(q) = &opts.quantize {
        let widened: Vec<String> = bits_used
            .keys()
            .filter(|b| !matches!(b, 4 | 8))
            .map(|b| format!("{b}-bit"))
            .collect();
        if !widened.is_empty() {
            notes.push(format!(
                "{} matrices are loaded as 4- or 8-bit codes on the GPU (the same weights, more memory than their files)",
                widened.join(" and ")
            ));
        }
        let mut block = serde_json::Map::new();
        block.insert("group_size".into(), q.group_size.into());
        block.insert("bits".into(), q.bits.into());
        block.insert("mode".into(), "affine".into());
        block.extend(qentries);
        root.insert("quantization".into(), Value::Object(block.clone()));
        root.insert("quantization_config".into(), Value::Object(block));
    }
    // mlx-lm's load_config takes the EOS ids of generation_config.json into config.json.
    if let Some(g) = gtext.as_deref() {
        if let Ok(Value::Object(g)) = serde_json::from_str::<Value>(g) {
            if let Some(e) = g.get("eos_token_id") {
                let truthy = !(e.is_null()
                    || e.as_u64() == Some(0)
                    || e.as_array().is_some_and(|a| a.is_empty())
                    || e.as_bool() == Some(false));
                if truthy {
                    root.insert("eos_token_id".into(), e.clone());
                }
            }
        }
    }
    // mlx-lm's model arguments rename rope_parameters' `rope_type` to `type` in the config
    // they were read from, which is what it then saves.
    fn rename_rope_type(obj: &mut serde_json::Map<String, Value>) {
        if let Some(Value::Object(rp)) = obj.get_mut("rope_parameters") {
            if !rp.contains_key("type") {
                if let Some(t) = rp.remove("rope_type") {
                    rp.insert("type".into(), t);
                }
            }
        }
    }
    rename_rope_type(&mut root);
    if let Some(Value::Object(t)) = root.get_mut("text_config") {
        rename_rope_type(t);
    }
    root.remove("_name_or_path");
    root.remove("vision_config");
    let mut keys: Vec<String> = root.keys().cloned().collect();
    keys.sort();
    let mut sorted = serde_json::Map::new();
    for k in keys {
        if let Some(v) = root.remove(&k) {
            sorted.insert(k, v);
        }
    }
    let config_json = pretty4(&Value::Object(sorted))?;

    let mut copy_files = Vec::new();
    for f in COPIED {
        let p = src.join(f);
        if p.is_file() {
            copy_files.push(p);
        }
    }
    if let Ok(rd) = std::fs::read_dir(src) {
        let mut lic: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("LICENSE"))
            })
            .collect();
        lic.sort();
        copy_files.extend(lic);
    }
    let mtp_tensors = tensors
        .iter()
        .filter(|t| t.name.starts_with("language_model.mtp."))
        .count();
    let output_bytes = tensors.iter().map(|t| t.bytes() as u64).sum();
    Ok(Plan {
        tensor_count: tensors.len(),
        tensors,
        config_json,
        copy_files,
        layout: ck.layout,
        quantized_matrices: quantized,
        parameters,
        output_bytes,
        source_bytes: ck.data_bytes(),
        mtp_tensors,
        bits_used: bits_used.into_iter().collect(),
        notes,
    })
}

/// What the conversion does to each source tensor.
struct Rules {
    /// Raw HF layout: norms shifted, conv axis moved.
    hf: bool,
    /// The cast type (all floats but `A_log`), if any.
    dtype: Option<FloatType>,
    quantize: Option<QuantChoice>,
    n_layers: usize,
}

/// The output tensors so far and what the config and report need from them.
#[derive(Default)]
struct Accum {
    tensors: Vec<OutTensor>,
    /// Per-module quantization entries (recipes).
    qentries: serde_json::Map<String, Value>,
    bits_used: std::collections::BTreeMap<u32, usize>,
    parameters: u64,
    quantized: usize,
}

impl Rules {
    /// The output tensor(s) of source tensor `name`.
    fn add(
        &self,
        ck: &Checkpoint,
        name: &str,
        m: &crate::weights::TensorMeta,
        acc: &mut Accum,
    ) -> Result<(), LoadError> {
        let from = match m.dtype {
            Dtype::Float(t) => t,
            d => {
                return Err(LoadError::Dtype {
                    tensor: m.stored_name.clone(),
                    file: ck.files[m.file].0.clone(),
                    expected: "F32, F16 or BF16".into(),
                    found: d.to_string(),
                })
            }
        };
        acc.parameters += m.shape.iter().product::<usize>() as u64;
        let cast = match self.dtype {
            Some(t) if !name.ends_with("A_log") => t,
            _ => from,
        };
        // conv1d: [C, 1, K] in HF, [C, K, 1] in MLX (mlx-lm's moveaxis(2, 1)).
        let mut shape = m.shape.clone();
        if name.contains("conv1d.weight") && shape.len() == 3 && shape[2] != 1 {
            shape.swap(1, 2);
        }
        let module = name.strip_suffix(".weight");
        let q = match (&self.quantize, module) {
            (Some(q), Some(module))
                if shape.len() == 2 && shape[1] % q.group_size as usize == 0 =>
            {
                Some((module, q))
            }
            _ => None,
        };
        if let Some((module, q)) = q {
            let bits = match q.recipe {
                Some(r) => {
                    let b = r.bits_for(module, self.n_layers);
                    acc.qentries.insert(
                        module.to_string(),
                        serde_json::json!({"group_size": q.group_size, "bits": b, "mode": "affine"}),
                    );
                    b
                }
                None => q.bits,
            };
            *acc.bits_used.entry(bits).or_default() += 1;
            acc.quantized += 1;
            let (n, k) = (shape[0], shape[1]);
            let group = q.group_size as usize;
            let mk = |part, suffix: &str, shape: Vec<usize>, dt| OutTensor {
                name: format!("{module}.{suffix}"),
                src: name.to_string(),
                shape,
                dtype: dt,
                op: Op::Quant {
                    part,
                    from,
                    cast,
                    bits,
                    group,
                },
            };
            acc.tensors.push(mk(
                QuantPart::Codes,
                "weight",
                vec![n, k * bits as usize / 32],
                safetensors::Dtype::U32,
            ));
            acc.tensors.push(mk(
                QuantPart::Scales,
                "scales",
                vec![n, k / group],
                st_dtype(cast),
            ));
            acc.tensors.push(mk(
                QuantPart::Biases,
                "biases",
                vec![n, k / group],
                st_dtype(cast),
            ));
            return Ok(());
        }
        let shift = self.hf && m.shape.len() == 1 && is_shifted_norm(name);
        let op = if !shift && cast == from {
            Op::Copy
        } else {
            Op::Float {
                from,
                shift,
                out: cast,
            }
        };
        acc.tensors.push(OutTensor {
            name: name.to_string(),
            src: name.to_string(),
            shape,
            dtype: st_dtype(cast),
            op,
        });
        Ok(())
    }
}

/// JSON with 4-space indentation (mlx-lm's `json.dump(indent=4)`).
fn pretty4(v: &Value) -> Result<String, LoadError> {
    use serde::Serialize;
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser)
        .map_err(|e| LoadError::Unsupported(format!("config.json: {e}")))?;
    String::from_utf8(out).map_err(|e| LoadError::Unsupported(format!("config.json: {e}")))
}

/// The quantized form of `rows` rows of `k` values (already rounded to the weight's type): per
/// part, the bytes of codes (u32 words), scales or biases (as `cast`), row by row.
fn quantize_rows(
    values: &[f32],
    k: usize,
    bits: u32,
    group: usize,
    part: QuantPart,
    cast: FloatType,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut params = Vec::with_capacity(values.len() / group);
    let mut codes = Vec::with_capacity(if part == QuantPart::Codes { k } else { 0 });
    for row in values.chunks(k) {
        codes.clear();
        for g in row.chunks(group) {
            let (scale, bias) = affine_group(g, bits);
            match part {
                QuantPart::Codes => {
                    codes.extend(g.iter().map(|&v| affine_code(v, scale, bias, bits)))
                }
                QuantPart::Scales => params.push(scale),
                QuantPart::Biases => params.push(bias),
            }
        }
        if part == QuantPart::Codes {
            out.extend(
                pack_codes(&codes, bits)
                    .iter()
                    .flat_map(|w| w.to_le_bytes()),
            );
        }
    }
    if part == QuantPart::Codes {
        out
    } else {
        encode_floats(cast, &params)
    }
}

/// The bytes of output tensor `t`.
fn produce(ck: &Checkpoint, t: &OutTensor, threads: usize) -> Result<Vec<u8>, String> {
    let src = ck
        .get(&t.src)
        .ok_or_else(|| format!("tensor '{}' vanished from the source", t.src))?;
    match t.op {
        Op::Copy => Ok(src.bytes.to_vec()),
        Op::Float { from, shift, out } => {
            let mut v = crate::quant::decode_floats(from, src.bytes);
            if shift {
                for x in &mut v {
                    *x = from.round(*x + 1.0);
                }
            }
            Ok(encode_floats(out, &v))
        }
        Op::Quant {
            part,
            from,
            cast,
            bits,
            group,
        } => {
            let (n, k) = (src.shape[0], src.shape[1]);
            let es = from.size();
            let rows_per = n.div_ceil(threads.max(1)).max(1);
            let chunks: Vec<Vec<u8>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..n)
                    .step_by(rows_per)
                    .map(|r0| {
                        let r1 = (r0 + rows_per).min(n);
                        let bytes = &src.bytes[r0 * k * es..r1 * k * es];
                        s.spawn(move || {
                            // 64 rows at a time: the f32 copy stays small (1.3 MB for 5120
                            // features) whatever the matrix.
                            let mut out = Vec::new();
                            for block in bytes.chunks(64 * k * es) {
                                let mut v = crate::quant::decode_floats(from, block);
                                if cast != from {
                                    for x in &mut v {
                                        *x = cast.round(*x);
                                    }
                                }
                                out.extend(quantize_rows(&v, k, bits, group, part, cast));
                            }
                            out
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            let out: Vec<u8> = chunks.concat();
            if out.len() != t.bytes() {
                return Err(format!(
                    "'{}': produced {} bytes, expected {}",
                    t.name,
                    out.len(),
                    t.bytes()
                ));
            }
            Ok(out)
        }
    }
}

/// A tensor converted when the writer asks for its bytes.
struct Lazy<'a> {
    ck: &'a Checkpoint,
    t: &'a OutTensor,
    threads: usize,
    done: &'a (dyn Fn(u64) + Sync),
    failed: &'a std::sync::Mutex<Option<String>>,
}

impl safetensors::View for Lazy<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.t.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.t.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let out = match produce(self.ck, self.t, self.threads) {
            Ok(b) => b,
            Err(e) => {
                if let Ok(mut f) = self.failed.lock() {
                    f.get_or_insert(e);
                }
                vec![0u8; self.t.bytes()]
            }
        };
        (self.done)(out.len() as u64);
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.t.bytes()
    }
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    pub files: Vec<String>,
    pub bytes: u64,
}

/// Writes the plan's output into `dst` (which must not exist): into a temporary directory next
/// to it first, renamed into place when every file is complete; removed on failure. `progress`
/// gets the bytes of tensor data written so far.
pub fn write(
    ck: &Checkpoint,
    plan: &Plan,
    dst: &Path,
    shard_bytes: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Written, LoadError> {
    if dst.exists() {
        return Err(io_err(
            dst,
            "already exists; choose a new directory (nothing was written)",
        ));
    }
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = dst
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io_err(dst, "not a directory name"))?;
    std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;
    let tmp = partial_dir(dst).unwrap_or_else(|| parent.join(format!(".{base}.partial")));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
    let r = write_into(ck, plan, &tmp, shard_bytes, progress);
    match r {
        Ok(files) => {
            std::fs::rename(&tmp, dst).map_err(|e| {
                let _ = std::fs::remove_dir_all(&tmp);
                io_err(dst, e)
            })?;
            Ok(Written {
                files,
                bytes: plan.output_bytes,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// The temporary directory `write` fills before renaming it to `dst` (beside it, hidden, named
/// after this process), for a caller that must remove it when interrupted.
pub fn partial_dir(dst: &Path) -> Option<PathBuf> {
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = dst.file_name()?.to_string_lossy().into_owned();
    Some(parent.join(format!(".{base}.partial-{}", std::process::id())))
}

/// Shard order: the embedding, the layers in numeric order, the final norm and lm_head, the MTP
/// head (so a shard holds whole layers and the source is read roughly front to back).
fn order_key(name: &str) -> (u32, u64, String) {
    let layer = |rest: &str| -> u64 {
        rest.split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX)
    };
    if name.starts_with("language_model.model.embed_tokens") {
        (0, 0, name.into())
    } else if let Some(rest) = name.strip_prefix("language_model.model.layers.") {
        (1, layer(rest), name.into())
    } else if name.starts_with("language_model.mtp.") {
        (3, 0, name.into())
    } else {
        (2, 0, name.into())
    }
}

/// Writes `tensors` (converted from `ck` as the writer asks for them) to the safetensors file
/// `path` with MLX's metadata and `perms`; `done` gets each tensor's byte count.
fn write_shard(
    ck: &Checkpoint,
    tensors: &[&OutTensor],
    path: &Path,
    perms: &std::fs::Permissions,
    done: &(dyn Fn(u64) + Sync),
) -> Result<(), LoadError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let failed = std::sync::Mutex::new(None::<String>);
    let views: Vec<(String, Lazy<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                Lazy {
                    ck,
                    t,
                    threads,
                    done,
                    failed: &failed,
                },
            )
        })
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "mlx".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| io_err(path, e))?;
    std::fs::set_permissions(path, perms.clone()).map_err(|e| io_err(path, e))?;
    match failed.lock().ok().and_then(|mut f| f.take()) {
        Some(e) => Err(LoadError::Unsupported(e)),
        None => Ok(()),
    }
}

fn write_into(
    ck: &Checkpoint,
    plan: &Plan,
    dir: &Path,
    shard_bytes: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<String>, LoadError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // A quantized matrix's three tensors go to the same shard.
    let mut order: Vec<&OutTensor> = plan.tensors.iter().collect();
    order.sort_by_key(|t| order_key(&t.src));
    let mut shards: Vec<Vec<&OutTensor>> = vec![vec![]];
    let mut size = 0u64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && order[j].src == order[i].src {
            j += 1;
        }
        let group_bytes: u64 = order[i..j].iter().map(|t| t.bytes() as u64).sum();
        if size > 0 && size + group_bytes > shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += group_bytes;
        if let Some(s) = shards.last_mut() {
            s.extend_from_slice(&order[i..j]);
        }
        i = j;
    }
    let n = shards.len();
    let names: Vec<String> = if n == 1 {
        vec!["model.safetensors".into()]
    } else {
        (0..n)
            .map(|i| format!("model-{:05}-of-{:05}.safetensors", i + 1, n))
            .collect()
    };
    let written = AtomicU64::new(0);
    let done = |b: u64| progress(written.fetch_add(b, Ordering::Relaxed) + b);
    // config.json first: the shards (written through a private temporary file) then take its
    // permissions, which follow the user's umask.
    let cpath = dir.join("config.json");
    std::fs::write(&cpath, &plan.config_json).map_err(|e| io_err(&cpath, e))?;
    let perms = std::fs::metadata(&cpath)
        .map_err(|e| io_err(&cpath, e))?
        .permissions();
    for (sh, name) in shards.iter().zip(&names) {
        write_shard(ck, sh, &dir.join(name), &perms, &done)?;
    }
    let mut files = names.clone();
    {
        let mut map = std::collections::BTreeMap::new();
        for (sh, name) in shards.iter().zip(&names) {
            for t in sh {
                map.insert(t.name.clone(), name.clone());
            }
        }
        let index = serde_json::json!({
            "metadata": {"total_size": plan.output_bytes, "total_parameters": plan.parameters},
            "weight_map": map,
        });
        let p = dir.join("model.safetensors.index.json");
        std::fs::write(&p, pretty4(&index)?).map_err(|e| io_err(&p, e))?;
        files.push("model.safetensors.index.json".into());
    }
    files.push("config.json".into());
    for from in &plan.copy_files {
        let Some(fname) = from.file_name() else {
            continue;
        };
        let to = dir.join(fname);
        std::fs::copy(from, &to).map_err(|e| io_err(from, e))?;
        files.push(fname.to_string_lossy().into_owned());
    }
    Ok(files)
}

/// Opens `src`, plans and writes the conversion into `dst`, then opens the result and checks it
/// against the model as the loader does (tensor names, shapes, formats).
pub fn convert(
    src: &Path,
    dst: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Plan, Written), LoadError> {
    let mut ck = Checkpoint::open(src)?;
    let plan = plan(src, &mut ck, opts)?;
    let written = write(&ck, &plan, dst, opts.shard_bytes, progress)?;
    verify(dst)?;
    Ok((plan, written))
}

/// Checks a written checkpoint with the loader's rules: config, every tensor's name, shape and
/// format (without reading the weights).
pub fn verify(dir: &Path) -> Result<(), LoadError> {
    let ck = Checkpoint::open(dir)?;
    let cpath = dir.join("config.json");
    let ctext = std::fs::read_to_string(&cpath).map_err(|e| io_err(&cpath, e))?;
    let cfg = ModelConfig::parse(&cpath.display().to_string(), &ctext, None)?;
    check_model(&cfg, &ck)
}

/// The loader's validation of `ck` against `cfg`, where widths qwgpu does not run (valid MLX,
/// which mlx-lm runs) are not an error.
fn check_model(cfg: &ModelConfig, ck: &Checkpoint) -> Result<(), LoadError> {
    match crate::model::tensors::collect(cfg, ck) {
        Ok(_) => Ok(()),
        Err(LoadError::Quant { message, .. }) if message.contains("not supported yet") => Ok(()),
        Err(e) => Err(e),
    }
}

/// What [`graft_mtp`] added to a checkpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Grafted {
    /// The new shard (in the target directory).
    pub file: String,
    pub tensors: usize,
    pub bytes: u64,
    /// How the MTP matrices were quantized: the target's global bits and group, or the mlx-lm
    /// recipe its per-module entries follow (None: the target is unquantized).
    pub bits: Option<u32>,
    pub group_size: Option<u32>,
    pub recipe: Option<&'static str>,
    pub notes: Vec<String>,
}

/// The shard [`graft_mtp`] writes.
pub const MTP_SHARD: &str = "model-mtp.safetensors";

/// The recipe whose bits every per-module entry of `cfg` follows (the global bits being its low
/// width), if exactly one does.
fn detect_recipe(cfg: &ModelConfig) -> Option<Recipe> {
    let global = cfg.quantization.global?;
    if cfg.quantization.overrides.is_empty() {
        return None;
    }
    let fits = |r: Recipe| {
        r.bits().0 == global.bits
            && cfg.quantization.overrides.iter().all(|(path, spec)| {
                spec.is_some_and(|s| {
                    s.group_size == global.group_size
                        && s.bits == r.bits_for(path, cfg.num_hidden_layers)
                })
            })
    };
    let found: Vec<Recipe> = Recipe::NAMES
        .iter()
        .filter_map(|n| Recipe::parse(n))
        .filter(|r| fits(*r))
        .collect();
    match found.as_slice() {
        [r] => Some(*r),
        _ => None,
    }
}

/// Adds the MTP head of `src` (a Hugging Face checkpoint, or an unquantized MLX one; only the
/// shards holding `mtp.*` need to be present, with config.json) to the MLX checkpoint `target`
/// that lacks it (as mlx-lm's conversions do): the `mtp.*` tensors renamed, norm-shifted, cast to
/// the target's float type and quantized with the target's parameters — the bits mlx-lm's recipe
/// gives them when the target's per-module entries follow one — into one new shard,
/// [`MTP_SHARD`]; the index and the per-module quantization entries are updated to match. The
/// result equals a whole conversion of the source with the same options. Both checkpoints are
/// checked first (same model dimensions, a valid target without an MTP head, unquantized MTP
/// tensors), and the combined checkpoint is validated before anything in `target` changes.
pub fn graft_mtp(
    src: &Path,
    target: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Grafted, LoadError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| io_err(p, e));
    // The target: a valid checkpoint without an MTP head.
    let tck = Checkpoint::open(target)?;
    let tcpath = target.join("config.json");
    let tctext = read(&tcpath)?;
    let tgen = read_optional(&target.join("generation_config.json"))?;
    let tcfg = ModelConfig::parse(&tcpath.display().to_string(), &tctext, tgen.as_deref())?;
    check_model(&tcfg, &tck)?;
    if let Some(m) = tck
        .tensors
        .iter()
        .find(|(n, _)| n.starts_with("language_model.mtp."))
        .map(|(_, m)| m)
    {
        return Err(LoadError::Unsupported(format!(
            "{}: already has an MTP head ('{}' in {})",
            target.display(),
            m.stored_name,
            tck.files[m.file].0
        )));
    }
    if target.join(MTP_SHARD).exists() {
        return Err(io_err(&target.join(MTP_SHARD), "already exists"));
    }

    // The source: the same model, its mtp.* tensors present and unquantized.
    let mut sck = Checkpoint::open_present(src)?;
    let scpath = src.join("config.json");
    let sctext = read(&scpath)?;
    let scfg = ModelConfig::parse(&scpath.display().to_string(), &sctext, None)?;
    for (field, a, b) in [
        ("hidden_size", scfg.hidden_size, tcfg.hidden_size),
        (
            "intermediate_size",
            scfg.intermediate_size,
            tcfg.intermediate_size,
        ),
        ("vocab_size", scfg.vocab_size, tcfg.vocab_size),
        (
            "num_attention_heads",
            scfg.num_attention_heads,
            tcfg.num_attention_heads,
        ),
        (
            "num_key_value_heads",
            scfg.num_key_value_heads,
            tcfg.num_key_value_heads,
        ),
        ("head_dim", scfg.head_dim, tcfg.head_dim),
    ] {
        if a != b {
            return Err(cfg_err(
                &scpath,
                format!(
                    "{field} is {a} but {}'s is {b}: not the same model",
                    target.display()
                ),
            ));
        }
    }
    // HF stores the head at the top level (`mtp.*`), MLX under `language_model.mtp.*`.
    let hf = sck
        .tensors
        .values()
        .any(|m| m.stored_name.starts_with("mtp."));
    sck.tensors
        .retain(|n, _| n.starts_with("language_model.mtp."));
    if sck.tensors.is_empty() {
        // Which shards hold the head, per the source's index, if it has one.
        let shards: Vec<String> = read_optional(&src.join("model.safetensors.index.json"))?
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|v| {
                v.get("weight_map").and_then(Value::as_object).map(|m| {
                    let mut s: Vec<String> = m
                        .iter()
                        .filter(|(k, _)| {
                            k.starts_with("mtp.") || k.starts_with("language_model.mtp.")
                        })
                        .filter_map(|(_, f)| f.as_str().map(str::to_string))
                        .collect();
                    s.sort();
                    s.dedup();
                    s
                })
            })
            .unwrap_or_default();
        let hint = if shards.is_empty() {
            String::new()
        } else {
            format!(" (its index puts them in {})", shards.join(", "))
        };
        return Err(LoadError::Unsupported(format!(
            "{}: no mtp.* tensors in the shards present{hint}",
            src.display()
        )));
    }
    refuse_quantized(
        src,
        &sck,
        "the MTP head",
        "graft from the original Hugging Face checkpoint",
    )?;

    // The target's float type and quantization.
    let dtype = match tck
        .tensors
        .get("language_model.model.norm.weight")
        .map(|m| m.dtype)
    {
        Some(Dtype::Float(t)) => t,
        _ => FloatType::BF16,
    };
    let recipe = detect_recipe(&tcfg);
    let fine_grained = !tcfg.quantization.overrides.is_empty();
    let quantize = tcfg.quantization.global.map(|g| QuantChoice {
        bits: g.bits,
        group_size: g.group_size,
        recipe,
    });
    let mut notes = Vec::new();
    if fine_grained && recipe.is_none() && quantize.is_some() {
        notes.push("the target's per-module quantization follows no mlx-lm recipe: the MTP matrices take its global bits".into());
    }
    let rules = Rules {
        hf,
        dtype: Some(dtype),
        quantize,
        n_layers: tcfg.num_hidden_layers,
    };
    let mut acc = Accum::default();
    for (name, m) in &sck.tensors {
        rules.add(&sck, name, m, &mut acc)?;
    }
    let mut tensors = acc.tensors;
    tensors.sort_by_key(|t| order_key(&t.src));

    // The config gains entries for the MTP modules where the target has per-module entries.
    let mut root: serde_json::Map<String, Value> = match serde_json::from_str(&tctext) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Err(cfg_err(
                &tcpath,
                "the top level is not a JSON object".into(),
            ))
        }
    };
    let mut config_changed = false;
    if fine_grained {
        if let Some(q) = &quantize {
            for t in &tensors {
                if let (
                    Op::Quant {
                        part: QuantPart::Codes,
                        bits,
                        ..
                    },
                    Some(module),
                ) = (&t.op, t.name.strip_suffix(".weight"))
                {
                    let e = serde_json::json!({"group_size": q.group_size, "bits": bits, "mode": "affine"});
                    for key in ["quantization", "quantization_config"] {
                        if let Some(Value::Object(block)) = root.get_mut(key) {
                            block.insert(module.to_string(), e.clone());
                            config_changed = true;
                        }
                    }
                }
            }
        }
    }
    let new_config = pretty4(&Value::Object(root))?;

    // Write the shard beside the others under a name the loader does not read, then check the
    // whole checkpoint with it before anything is renamed.
    let tmp = target.join(format!(".{MTP_SHARD}.partial-{}", std::process::id()));
    let written = std::sync::atomic::AtomicU64::new(0);
    let done = |b: u64| {
        progress(written.fetch_add(b, std::sync::atomic::Ordering::Relaxed) + b);
    };
    let cleanup = |e: LoadError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    let perms = std::fs::metadata(&tcpath)
        .map_err(|e| io_err(&tcpath, e))?
        .permissions();
    let refs: Vec<&OutTensor> = tensors.iter().collect();
    write_shard(&sck, &refs, &tmp, &perms, &done).map_err(cleanup)?;
    {
        let f = std::fs::File::open(&tmp).map_err(|e| cleanup(io_err(&tmp, e)))?;
        // SAFETY: read-only map of the file just written, dropped before it is renamed.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| cleanup(io_err(&tmp, e)))?;
        let Checkpoint { mut files, .. } = tck;
        files.push((MTP_SHARD.to_string(), crate::weights::Blob::Mmap(map)));
        let check = Checkpoint::from_blobs(files, None).map_err(cleanup)?;
        let cfg = ModelConfig::parse(&tcpath.display().to_string(), &new_config, tgen.as_deref())
            .map_err(cleanup)?;
        check_model(&cfg, &check).map_err(cleanup)?;
    }

    // Commit: the config's new entries, the shard, the index (each replaced by a rename).
    let replace = |path: &Path, text: &str| -> Result<(), LoadError> {
        let t = path.with_extension(format!("json.partial-{}", std::process::id()));
        std::fs::write(&t, text).map_err(|e| io_err(&t, e))?;
        std::fs::rename(&t, path).map_err(|e| {
            let _ = std::fs::remove_file(&t);
            io_err(path, e)
        })
    };
    if config_changed {
        replace(&tcpath, &new_config).map_err(cleanup)?;
    }
    let shard = target.join(MTP_SHARD);
    std::fs::rename(&tmp, &shard).map_err(|e| cleanup(io_err(&shard, e)))?;
    let bytes: u64 = tensors.iter().map(|t| t.bytes() as u64).sum();
    let ipath = target.join("model.safetensors.index.json");
    if let Some(itext) = read_optional(&ipath)? {
        let mut idx: Value = serde_json::from_str(&itext).map_err(|e| LoadError::Index {
            file: ipath.display().to_string(),
            message: format!("not valid JSON: {e}"),
        })?;
        if let Some(Value::Object(map)) = idx.get_mut("weight_map") {
            for t in &tensors {
                map.insert(t.name.clone(), MTP_SHARD.into());
            }
            let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            map.extend(entries);
        }
        if let Some(total) = idx
            .get_mut("metadata")
            .and_then(|m| m.get_mut("total_size"))
        {
            if let Some(t) = total.as_u64() {
                *total = (t + bytes).into();
            }
        }
        replace(&ipath, &pretty4(&idx)?)?;
    }
    Ok(Grafted {
        file: MTP_SHARD.into(),
        tensors: tensors.len(),
        bytes,
        bits: quantize.map(|q| q.bits),
        group_size: quantize.map(|q| q.group_size),
        recipe: recipe.map(Recipe::name),
        notes,
    })
}
