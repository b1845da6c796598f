//! Synthetic checkpoints in the exact MLX format and shapes (random 4/8-bit codes, realistic
//! scales and biases, all layers, lm_head and `mtp.*`), so full-size speed can be measured
//! without the real weights: decode speed does not depend on weight values.
//!
//! Weights are scaled so a linear layer maps unit-variance inputs to O(1) outputs (codes uniform,
//! bias = −s·(2^bits − 1)/2), which keeps a random 64-layer stack finite.

use std::borrow::Cow;

use crate::model::config::{LayerKind, ModelConfig, QuantSpec};
use crate::weights::{Blob, Checkpoint};

/// The Qwen3.6-27B text config (spec §1.2) in the wrapper shape mlx-lm writes.
pub const QWEN36_27B: &str = r#"{
  "model_type": "qwen3_5",
  "architectures": ["Qwen3_5ForConditionalGeneration"],
  "tie_word_embeddings": false,
  "text_config": {
    "model_type": "qwen3_5_text", "hidden_size": 5120, "num_hidden_layers": 64, "intermediate_size": 17408,
    "vocab_size": 248320, "num_attention_heads": 24, "num_key_value_heads": 4, "head_dim": 256,
    "rms_norm_eps": 1e-06, "linear_num_key_heads": 16, "linear_key_head_dim": 128,
    "linear_num_value_heads": 48, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
    "full_attention_interval": 4, "attention_bias": false, "attn_output_gate": true,
    "tie_word_embeddings": false, "max_position_embeddings": 262144, "mtp_num_hidden_layers": 1,
    "eos_token_id": 248044, "hidden_act": "silu", "dtype": "bfloat16",
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                        "mrope_section": [11, 11, 10], "mrope_interleaved": true}
  }
}"#;

/// A small model of the same family, for quick runs.
pub const SMALL: &str = r#"{
  "model_type": "qwen3_5",
  "text_config": {
    "hidden_size": 1024, "num_hidden_layers": 8, "intermediate_size": 3072, "vocab_size": 32768,
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128, "rms_norm_eps": 1e-06,
    "linear_num_key_heads": 4, "linear_key_head_dim": 128, "linear_num_value_heads": 8,
    "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "full_attention_interval": 4,
    "tie_word_embeddings": false, "mtp_num_hidden_layers": 1, "eos_token_id": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25}
  }
}"#;

/// Named presets for `qwgpu synth --preset`.
pub fn preset(name: &str) -> Option<&'static str> {
    match name {
        "qwen3.6-27b" | "qwen3.5-27b" | "27b" => Some(QWEN36_27B),
        "small" => Some(SMALL),
        _ => None,
    }
}

/// What one synthetic tensor holds.
#[derive(Clone, Debug)]
enum Kind {
    /// Packed codes / scales / biases of a quantized [n, k] linear, or a dense bf16 one.
    Codes {
        n: usize,
        k: usize,
        bits: u32,
    },
    Scales {
        n: usize,
        groups: usize,
        bits: u32,
        k: usize,
        bias: bool,
    },
    Dense {
        n: usize,
        k: usize,
    },
    /// A bf16 vector filled with `value` (norm weights) or small noise around it.
    Vector {
        len: usize,
        value: f32,
        noise: f32,
    },
    /// A_log: f32 log(uniform(1, 16)).
    ALog {
        len: usize,
    },
    /// Depthwise conv weights [c, taps, 1] bf16.
    Conv {
        c: usize,
        taps: usize,
    },
}

#[derive(Clone, Debug)]
pub struct SynthTensor {
    pub name: String,
    kind: Kind,
}

impl SynthTensor {
    pub fn dtype(&self) -> safetensors::Dtype {
        match self.kind {
            Kind::Codes { .. } => safetensors::Dtype::U32,
            Kind::ALog { .. } => safetensors::Dtype::F32,
            _ => safetensors::Dtype::BF16,
        }
    }
    pub fn shape(&self) -> Vec<usize> {
        match self.kind {
            Kind::Codes { n, k, bits } => vec![n, k * bits as usize / 32],
            Kind::Scales { n, groups, .. } => vec![n, groups],
            Kind::Dense { n, k } => vec![n, k],
            Kind::Vector { len, .. } | Kind::ALog { len } => vec![len],
            Kind::Conv { c, taps } => vec![c, taps, 1],
        }
    }
    pub fn bytes(&self) -> usize {
        let elems: usize = self.shape().iter().product();
        elems * self.dtype().bitsize() / 8
    }

    /// Generates the tensor's bytes (deterministic per name and seed).
    pub fn data(&self, seed: u64) -> Vec<u8> {
        let mut rng = Rng::new(seed ^ fnv(&self.name));
        match self.kind {
            Kind::Codes { .. } => {
                let words = self.bytes() / 4;
                let mut v = Vec::with_capacity(words * 4);
                for _ in 0..words / 2 {
                    v.extend_from_slice(&rng.next().to_le_bytes());
                }
                if words % 2 == 1 {
                    v.extend_from_slice(&(rng.next() as u32).to_le_bytes());
                }
                v
            }
            Kind::Scales {
                n,
                groups,
                bits,
                k,
                bias,
            } => {
                // w = s·q + b with q uniform over 2^bits codes: std(w) = s·std(q) = 1/sqrt(k).
                let levels = ((1u32 << bits) - 1) as f32;
                let std_q = levels / 12f32.sqrt();
                let s = 1.0 / ((k as f32).sqrt() * std_q);
                let mut v = Vec::with_capacity(n * groups * 2);
                for _ in 0..n * groups {
                    let jitter = 1.0 + 0.2 * rng.uniform();
                    // MLX's quantizer gives negative scales for about half the groups.
                    let sign = if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
                    let sv = sign * s * jitter;
                    let x = if bias { -sv * levels / 2.0 } else { sv };
                    v.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes());
                }
                v
            }
            Kind::Dense { n, k } => {
                let s = 3f32.sqrt() / (k as f32).sqrt();
                (0..n * k)
                    .flat_map(|_| half::bf16::from_f32(s * rng.uniform()).to_le_bytes())
                    .collect()
            }
            Kind::Vector { len, value, noise } => (0..len)
                .flat_map(|_| half::bf16::from_f32(value + noise * rng.uniform()).to_le_bytes())
                .collect(),
            Kind::ALog { len } => (0..len)
                .flat_map(|_| ((1.0 + 15.0 * (rng.uniform() * 0.5 + 0.5)).ln()).to_le_bytes())
                .collect(),
            Kind::Conv { c, taps } => (0..c * taps)
                .flat_map(|_| half::bf16::from_f32(0.3 * rng.uniform()).to_le_bytes())
                .collect(),
        }
    }
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    /// xorshift64*: fast enough to fill 15 GB in seconds on a few cores.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The tensors of `cfg` with every linear/embedding quantized per `q` (or dense bf16 when None).
pub fn tensor_list(cfg: &ModelConfig, q: Option<QuantSpec>, with_mtp: bool) -> Vec<SynthTensor> {
    let mut out = Vec::new();
    let t = |name: String, kind: Kind| SynthTensor { name, kind };
    let linear = |out: &mut Vec<SynthTensor>, path: String, n: usize, k: usize| match q {
        Some(QuantSpec { bits, group_size }) => {
            let groups = k / group_size as usize;
            out.push(t(format!("{path}.weight"), Kind::Codes { n, k, bits }));
            out.push(t(
                format!("{path}.scales"),
                Kind::Scales {
                    n,
                    groups,
                    bits,
                    k,
                    bias: false,
                },
            ));
            out.push(t(
                format!("{path}.biases"),
                Kind::Scales {
                    n,
                    groups,
                    bits,
                    k,
                    bias: true,
                },
            ));
        }
        None => out.push(t(format!("{path}.weight"), Kind::Dense { n, k })),
    };
    let norm = |out: &mut Vec<SynthTensor>, name: String, len: usize| {
        out.push(t(
            name,
            Kind::Vector {
                len,
                value: 1.0,
                noise: 0.05,
            },
        ))
    };
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let attn = |out: &mut Vec<SynthTensor>, p: &str| {
        let (hq, hkv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        linear(out, format!("{p}.self_attn.q_proj"), 2 * hq * d, h);
        linear(out, format!("{p}.self_attn.k_proj"), hkv * d, h);
        linear(out, format!("{p}.self_attn.v_proj"), hkv * d, h);
        linear(out, format!("{p}.self_attn.o_proj"), h, hq * d);
        norm(out, format!("{p}.self_attn.q_norm.weight"), d);
        norm(out, format!("{p}.self_attn.k_norm.weight"), d);
    };
    let common = |out: &mut Vec<SynthTensor>, p: &str| {
        norm(out, format!("{p}.input_layernorm.weight"), h);
        norm(out, format!("{p}.post_attention_layernorm.weight"), h);
        linear(out, format!("{p}.mlp.gate_proj"), i, h);
        linear(out, format!("{p}.mlp.up_proj"), i, h);
        linear(out, format!("{p}.mlp.down_proj"), h, i);
    };
    linear(&mut out, "language_model.model.embed_tokens".into(), v, h);
    if !cfg.tie_word_embeddings {
        linear(&mut out, "language_model.lm_head".into(), v, h);
    }
    norm(&mut out, "language_model.model.norm.weight".into(), h);
    for (li, kind) in cfg.layers.iter().enumerate() {
        let p = format!("language_model.model.layers.{li}");
        common(&mut out, &p);
        match kind {
            LayerKind::Full => attn(&mut out, &p),
            LayerKind::Linear => {
                let a = format!("{p}.linear_attn");
                let hv = cfg.linear_num_value_heads;
                linear(&mut out, format!("{a}.in_proj_qkv"), cfg.conv_dim(), h);
                linear(&mut out, format!("{a}.in_proj_z"), cfg.value_dim(), h);
                linear(&mut out, format!("{a}.in_proj_b"), hv, h);
                linear(&mut out, format!("{a}.in_proj_a"), hv, h);
                linear(&mut out, format!("{a}.out_proj"), h, cfg.value_dim());
                out.push(t(
                    format!("{a}.conv1d.weight"),
                    Kind::Conv {
                        c: cfg.conv_dim(),
                        taps: cfg.linear_conv_kernel_dim,
                    },
                ));
                out.push(t(
                    format!("{a}.dt_bias"),
                    Kind::Vector {
                        len: hv,
                        value: 1.0,
                        noise: 0.5,
                    },
                ));
                out.push(t(format!("{a}.A_log"), Kind::ALog { len: hv }));
                out.push(t(
                    format!("{a}.norm.weight"),
                    Kind::Vector {
                        len: cfg.linear_value_head_dim,
                        value: 1.0,
                        noise: 0.05,
                    },
                ));
            }
        }
    }
    if with_mtp {
        let p = "language_model.mtp";
        norm(&mut out, format!("{p}.pre_fc_norm_embedding.weight"), h);
        norm(&mut out, format!("{p}.pre_fc_norm_hidden.weight"), h);
        linear(&mut out, format!("{p}.fc"), h, 2 * h);
        common(&mut out, &format!("{p}.layers.0"));
        attn(&mut out, &format!("{p}.layers.0"));
        norm(&mut out, format!("{p}.norm.weight"), h);
    }
    out
}

/// The config JSON text with the quantization block (and an optional layer-count override).
pub fn config_json(
    base: &str,
    q: Option<QuantSpec>,
    layers: Option<usize>,
) -> Result<String, String> {
    let mut v: serde_json::Value =
        serde_json::from_str(base).map_err(|e| format!("config: {e}"))?;
    let obj = v.as_object_mut().ok_or("config: not an object")?;
    if let Some(n) = layers {
        let text = if obj.contains_key("text_config") {
            obj.get_mut("text_config")
                .and_then(|t| t.as_object_mut())
                .ok_or("text_config")?
        } else {
            obj
        };
        text.insert("num_hidden_layers".into(), n.into());
        text.remove("layer_types");
    }
    let obj = v.as_object_mut().ok_or("config: not an object")?;
    if let Some(QuantSpec { bits, group_size }) = q {
        let block = serde_json::json!({"group_size": group_size, "bits": bits, "mode": "affine"});
        obj.insert("quantization".into(), block.clone());
        obj.insert("quantization_config".into(), block);
    }
    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
}

/// A tensor view with its shape stored alongside, generated on demand when serialized.
struct LazyShaped<'a> {
    t: &'a SynthTensor,
    shape: Vec<usize>,
    seed: u64,
}

impl safetensors::View for LazyShaped<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.t.dtype()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.t.data(self.seed))
    }
    fn data_len(&self) -> usize {
        self.t.bytes()
    }
}

fn views(ts: &[SynthTensor], seed: u64) -> Vec<(String, LazyShaped<'_>)> {
    ts.iter()
        .map(|t| {
            (
                t.name.clone(),
                LazyShaped {
                    t,
                    shape: t.shape(),
                    seed,
                },
            )
        })
        .collect()
}

/// Builds the checkpoint in memory (tests and benches; the browser too).
pub fn in_memory(
    config_json: &str,
    seed: u64,
    with_mtp: bool,
) -> Result<(ModelConfig, Checkpoint), String> {
    let cfg =
        ModelConfig::parse("synthetic config", config_json, None).map_err(|e| e.to_string())?;
    let q = cfg.quantization.global;
    let ts = tensor_list(&cfg, q, with_mtp);
    let meta = std::collections::HashMap::from([("format".to_string(), "mlx".to_string())]);
    let bytes = safetensors::serialize(views(&ts, seed), Some(meta)).map_err(|e| e.to_string())?;
    let ck = Checkpoint::from_blobs(vec![("model.safetensors".into(), Blob::Owned(bytes))], None)
        .map_err(|e| e.to_string())?;
    Ok((cfg, ck))
}

/// Writes `config.json`, sharded `model-XXXXX-of-YYYYY.safetensors` files of about `shard_bytes`
/// each (generated in parallel) and `model.safetensors.index.json` into `dir`.
#[cfg(not(target_arch = "wasm32"))]
pub fn write(
    dir: &std::path::Path,
    config_json: &str,
    seed: u64,
    with_mtp: bool,
    shard_bytes: usize,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let cfg =
        ModelConfig::parse("synthetic config", config_json, None).map_err(|e| e.to_string())?;
    let ts = tensor_list(&cfg, cfg.quantization.global, with_mtp);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("config.json"), config_json).map_err(|e| e.to_string())?;
    let mut shards: Vec<Vec<SynthTensor>> = vec![vec![]];
    let mut size = 0;
    for t in ts {
        if size > 0 && size + t.bytes() > shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += t.bytes();
        if let Some(s) = shards.last_mut() {
            s.push(t);
        }
    }
    let n = shards.len();
    let names: Vec<String> = (0..n)
        .map(|i| format!("model-{:05}-of-{:05}.safetensors", i + 1, n))
        .collect();
    let done = AtomicU64::new(0);
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = shards
            .iter()
            .zip(&names)
            .map(|(sh, name)| {
                let (done, dir) = (&done, dir);
                s.spawn(move || {
                    let meta = std::collections::HashMap::from([(
                        "format".to_string(),
                        "mlx".to_string(),
                    )]);
                    let path = dir.join(name);
                    safetensors::serialize_to_file(views(sh, seed), Some(meta), &path)
                        .map_err(|e| format!("{name}: {e}"))?;
                    // The writer's temporary file is private; take config.json's permissions.
                    if let Ok(m) = std::fs::metadata(dir.join("config.json")) {
                        std::fs::set_permissions(&path, m.permissions())
                            .map_err(|e| format!("{name}: {e}"))?;
                    }
                    let b: u64 = sh.iter().map(|t| t.bytes() as u64).sum();
                    progress(done.fetch_add(b, Ordering::Relaxed) + b);
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a writer thread panicked".into()))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    let mut map = serde_json::Map::new();
    for (sh, name) in shards.iter().zip(&names) {
        for t in sh {
            map.insert(t.name.clone(), name.clone().into());
        }
    }
    let total: u64 = shards.iter().flatten().map(|t| t.bytes() as u64).sum();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string())
        .map_err(|e| e.to_string())?;
    Ok(total)
}
