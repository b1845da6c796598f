//! The tensors a Qwen3.5/3.6 model needs (spec §2), found in a checkpoint and validated against
//! the config before any GPU work. Every check names the tensor, its file, what was expected and
//! what was found; a tensor the model does not use is an error too.

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::error::LoadError;
use crate::model::config::{LayerKind, ModelConfig, QuantSpec};
use crate::ops::matrix::MatrixData;
use crate::quant::{FloatType, WeightFormat};
use crate::weights::{is_shifted_norm, Checkpoint, Dtype, Layout};

/// A linear (or embedding) module: [n, k] in some format, borrowed from the checkpoint.
pub struct HostLinear<'a> {
    /// MLX module path, e.g. `language_model.model.layers.0.mlp.down_proj`.
    pub path: String,
    pub data: MatrixData<'a>,
}

pub enum HostMixer<'a> {
    Gdn {
        in_proj_qkv: HostLinear<'a>,
        in_proj_z: HostLinear<'a>,
        in_proj_b: HostLinear<'a>,
        in_proj_a: HostLinear<'a>,
        /// [conv_dim, K], tap K-1 = current token.
        conv1d: Vec<f32>,
        dt_bias: Vec<f32>,
        a_log: Vec<f32>,
        /// Gated-norm weight [Dv] (not shifted).
        norm: Vec<f32>,
        out_proj: HostLinear<'a>,
    },
    Attn {
        q_proj: HostLinear<'a>,
        k_proj: HostLinear<'a>,
        v_proj: HostLinear<'a>,
        o_proj: HostLinear<'a>,
        q_norm: Vec<f32>,
        k_norm: Vec<f32>,
    },
}

pub struct HostMlp<'a> {
    pub gate: HostLinear<'a>,
    pub up: HostLinear<'a>,
    pub down: HostLinear<'a>,
}

pub struct HostLayer<'a> {
    pub kind: LayerKind,
    pub input_norm: Vec<f32>,
    pub post_norm: Vec<f32>,
    pub mixer: HostMixer<'a>,
    pub mlp: HostMlp<'a>,
}

/// The MTP head (spec §6).
pub struct HostMtp<'a> {
    pub pre_fc_norm_embedding: Vec<f32>,
    pub pre_fc_norm_hidden: Vec<f32>,
    /// [hidden, 2·hidden]: columns 0..hidden see the embedding, the rest the hidden state.
    pub fc: HostLinear<'a>,
    pub layer: HostLayer<'a>,
    pub norm: Vec<f32>,
}

pub struct HostModel<'a> {
    pub embed: HostLinear<'a>,
    /// None when tied to the embedding.
    pub lm_head: Option<HostLinear<'a>>,
    pub layers: Vec<HostLayer<'a>>,
    pub final_norm: Vec<f32>,
    pub mtp: Option<HostMtp<'a>>,
    /// Notes for the user (e.g. "config declares MTP but the checkpoint has no mtp.* tensors").
    pub notes: Vec<String>,
}

struct Finder<'a> {
    ck: &'a Checkpoint,
    cfg: &'a ModelConfig,
    used: RefCell<BTreeSet<String>>,
    /// Per (stored width, GPU width) of the widened matrices: how many, and the bytes widening
    /// them adds on the GPU.
    widened: RefCell<std::collections::BTreeMap<(u32, u32), (usize, u64)>>,
}

impl<'a> Finder<'a> {
    fn tensor(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<crate::weights::TensorRef<'a>, LoadError> {
        let t = self.ck.get(name).ok_or_else(|| LoadError::MissingTensor {
            tensor: name.into(),
            expected: expected.into(),
        })?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    fn float(&self, t: &crate::weights::TensorRef<'_>) -> Result<FloatType, LoadError> {
        match t.dtype {
            Dtype::Float(f) => Ok(f),
            d => Err(LoadError::Dtype {
                tensor: t.name.into(),
                file: t.file.into(),
                expected: "F32, F16 or BF16".into(),
                found: d.to_string(),
            }),
        }
    }

    /// A 1-D float vector of `len` values (a norm weight, A_log, dt_bias), +1 for the shifted norms
    /// of a raw HF checkpoint (done in the tensor's own precision, like mlx-lm's sanitize).
    fn vector(&self, name: &str, len: usize, why: &str) -> Result<Vec<f32>, LoadError> {
        let t = self.tensor(name, &format!("a float vector of {len} values ({why})"))?;
        let ft = self.float(&t)?;
        if t.shape != [len] {
            return Err(LoadError::Shape {
                tensor: name.into(),
                file: t.file.into(),
                expected: vec![len],
                found: t.shape.to_vec(),
                why: why.into(),
            });
        }
        let mut v = t.to_f32()?;
        if self.ck.layout == Layout::HuggingFace && is_shifted_norm(name) {
            for x in &mut v {
                *x = ft.round(*x + 1.0);
            }
        }
        Ok(v)
    }

    /// A linear module `path` of logical shape [n, k], quantized iff `path.scales` exists
    /// (mlx-lm's loader rule), cross-checked with the config's quantization block.
    fn linear(
        &self,
        path: &str,
        n: usize,
        k: usize,
        why: &str,
    ) -> Result<HostLinear<'a>, LoadError> {
        let wname = format!("{path}.weight");
        let sname = format!("{path}.scales");
        let bname = format!("{path}.biases");
        let shape_err =
            |t: &crate::weights::TensorRef<'_>, expected: Vec<usize>, w: String| LoadError::Shape {
                tensor: t.name.into(),
                file: t.file.into(),
                expected,
                found: t.shape.to_vec(),
                why: w,
            };
        let cfg_q = self.cfg.quantization.for_module(path);
        if self.ck.contains(&sname) {
            let w = self.tensor(&wname, &format!("U32 packed codes for [{n}, {k}] ({why})"))?;
            let s = self.tensor(&sname, "scales")?;
            let b = self.ck.get(&bname).ok_or_else(|| LoadError::Quant {
                tensor: wname.clone(),
                file: w.file.into(),
                message: format!("has scales but no '{bname}': only MLX affine quantization (with biases) is supported"),
            })?;
            self.used.borrow_mut().insert(bname.clone());
            if w.dtype != Dtype::U32 {
                return Err(LoadError::Dtype {
                    tensor: wname,
                    file: w.file.into(),
                    expected: "U32 (packed quantized codes)".into(),
                    found: w.dtype.to_string(),
                });
            }
            if w.shape.len() != 2 || w.shape[0] != n || (w.shape[1] * 32) % k != 0 {
                return Err(shape_err(
                    &w,
                    vec![n, k / 8],
                    format!("{why}: [out, in·bits/32] for a [{n}, {k}] linear; 4-bit shown"),
                ));
            }
            let bits = (w.shape[1] * 32 / k) as u32;
            let st = self.float(&s)?;
            if s.shape.len() != 2 || s.shape[0] != n || s.shape[1] == 0 || k % s.shape[1] != 0 {
                return Err(shape_err(
                    &s,
                    vec![n, k / 64],
                    format!("{why}: [out, in/group_size]; group 64 shown"),
                ));
            }
            let group = (k / s.shape[1]) as u32;
            if b.shape != s.shape || b.dtype != s.dtype {
                return Err(LoadError::Quant {
                    tensor: bname,
                    file: b.file.into(),
                    message: format!(
                        "biases {:?} {} do not match scales {:?} {}",
                        b.shape, b.dtype, s.shape, s.dtype
                    ),
                });
            }
            match cfg_q {
                Some(QuantSpec { bits: cb, group_size: cg }) if cb == bits && cg == group => {}
                Some(QuantSpec { bits: cb, group_size: cg }) => {
                    return Err(LoadError::Quant {
                        tensor: wname,
                        file: w.file.into(),
                        message: format!(
                            "stored with {bits} bits and group size {group}, but config.json's quantization block says {cb} bits, group size {cg} for '{path}'"
                        ),
                    })
                }
                None => {
                    let what = if self.cfg.quantization.has_override(path) { "marks it unquantized (false)" } else { "has no quantization block" };
                    return Err(LoadError::Quant { tensor: wname, file: w.file.into(), message: format!("is quantized but config.json {what}") });
                }
            }
            if !matches!(bits, 2 | 3 | 4 | 5 | 6 | 8) || k * bits as usize != w.shape[1] * 32 {
                return Err(LoadError::Quant {
                    tensor: wname,
                    file: w.file.into(),
                    message: format!(
                        "{bits}-bit codes are not an MLX affine format (2, 3, 4, 5, 6 or 8 bits)"
                    ),
                });
            }
            let data = MatrixData {
                n,
                k,
                format: WeightFormat::Affine {
                    bits,
                    group,
                    scale: st,
                },
                weight: w.bytes,
                scales: s.bytes,
                biases: b.bytes,
            };
            if let WeightFormat::Affine { bits: to, .. } = data.format.on_gpu() {
                if to != bits {
                    let mut widened = self.widened.borrow_mut();
                    let e = widened.entry((bits, to)).or_default();
                    e.0 += 1;
                    e.1 += data.gpu_bytes() - data.bytes();
                }
            }
            Ok(HostLinear {
                path: path.to_string(),
                data,
            })
        } else {
            let w = self.tensor(&wname, &format!("a [{n}, {k}] weight ({why})"))?;
            if w.dtype == Dtype::U32 {
                return Err(LoadError::Quant {
                    tensor: wname,
                    file: w.file.into(),
                    message: format!("is packed (U32) but '{sname}' is missing"),
                });
            }
            let ft = self.float(&w)?;
            if w.shape != [n, k] {
                return Err(shape_err(&w, vec![n, k], why.to_string()));
            }
            if self.cfg.quantization.has_override(path) && cfg_q.is_some() {
                return Err(LoadError::Quant {
                    tensor: wname,
                    file: w.file.into(),
                    message: format!("config.json's quantization block lists '{path}' as quantized, but the checkpoint has no '{sname}'"),
                });
            }
            Ok(HostLinear {
                path: path.to_string(),
                data: MatrixData {
                    n,
                    k,
                    format: WeightFormat::Dense(ft),
                    weight: w.bytes,
                    scales: &[],
                    biases: &[],
                },
            })
        }
    }

    fn attn(&self, p: &str) -> Result<HostMixer<'a>, LoadError> {
        let c = self.cfg;
        let (hq, hkv, d, h) = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.hidden_size,
        );
        Ok(HostMixer::Attn {
            q_proj: self.linear(
                &format!("{p}.q_proj"),
                hq * d * 2,
                h,
                "num_attention_heads × head_dim × 2 (query and gate) by hidden_size",
            )?,
            k_proj: self.linear(
                &format!("{p}.k_proj"),
                hkv * d,
                h,
                "num_key_value_heads × head_dim by hidden_size",
            )?,
            v_proj: self.linear(
                &format!("{p}.v_proj"),
                hkv * d,
                h,
                "num_key_value_heads × head_dim by hidden_size",
            )?,
            o_proj: self.linear(
                &format!("{p}.o_proj"),
                h,
                hq * d,
                "hidden_size by num_attention_heads × head_dim",
            )?,
            q_norm: self.vector(&format!("{p}.q_norm.weight"), d, "head_dim")?,
            k_norm: self.vector(&format!("{p}.k_norm.weight"), d, "head_dim")?,
        })
    }

    fn gdn(&self, p: &str) -> Result<HostMixer<'a>, LoadError> {
        let c = self.cfg;
        let (h, hv, kk) = (
            c.hidden_size,
            c.linear_num_value_heads,
            c.linear_conv_kernel_dim,
        );
        let conv_dim = c.conv_dim();
        let cname = format!("{p}.conv1d.weight");
        let ct = self.tensor(
            &cname,
            &format!("[{conv_dim}, {kk}, 1] depthwise conv weights"),
        )?;
        self.float(&ct)?;
        // MLX stores [C, K, 1]; raw HF [C, 1, K]. The singleton axis does not change memory order.
        let ok = ct.shape == [conv_dim, kk, 1] || ct.shape == [conv_dim, 1, kk];
        if !ok {
            return Err(LoadError::Shape {
                tensor: cname,
                file: ct.file.into(),
                expected: vec![conv_dim, kk, 1],
                found: ct.shape.to_vec(),
                why: "2·linear_num_key_heads·linear_key_head_dim + linear_num_value_heads·linear_value_head_dim channels by linear_conv_kernel_dim".into(),
            });
        }
        let conv1d = ct.to_f32()?;
        Ok(HostMixer::Gdn {
            in_proj_qkv: self.linear(
                &format!("{p}.in_proj_qkv"),
                conv_dim,
                h,
                "conv_dim (q | k | v) by hidden_size",
            )?,
            in_proj_z: self.linear(
                &format!("{p}.in_proj_z"),
                c.value_dim(),
                h,
                "linear_num_value_heads × linear_value_head_dim by hidden_size",
            )?,
            in_proj_b: self.linear(
                &format!("{p}.in_proj_b"),
                hv,
                h,
                "linear_num_value_heads by hidden_size",
            )?,
            in_proj_a: self.linear(
                &format!("{p}.in_proj_a"),
                hv,
                h,
                "linear_num_value_heads by hidden_size",
            )?,
            conv1d,
            dt_bias: self.vector(&format!("{p}.dt_bias"), hv, "linear_num_value_heads")?,
            a_log: self.vector(&format!("{p}.A_log"), hv, "linear_num_value_heads")?,
            norm: self.vector(
                &format!("{p}.norm.weight"),
                c.linear_value_head_dim,
                "linear_value_head_dim",
            )?,
            out_proj: self.linear(
                &format!("{p}.out_proj"),
                h,
                c.value_dim(),
                "hidden_size by linear_num_value_heads × linear_value_head_dim",
            )?,
        })
    }

    fn layer(&self, p: &str, kind: LayerKind) -> Result<HostLayer<'a>, LoadError> {
        let c = self.cfg;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let mixer = match kind {
            LayerKind::Full => self.attn(&format!("{p}.self_attn"))?,
            LayerKind::Linear => self.gdn(&format!("{p}.linear_attn"))?,
        };
        Ok(HostLayer {
            kind,
            input_norm: self.vector(&format!("{p}.input_layernorm.weight"), h, "hidden_size")?,
            post_norm: self.vector(
                &format!("{p}.post_attention_layernorm.weight"),
                h,
                "hidden_size",
            )?,
            mixer,
            mlp: HostMlp {
                gate: self.linear(
                    &format!("{p}.mlp.gate_proj"),
                    i,
                    h,
                    "intermediate_size by hidden_size",
                )?,
                up: self.linear(
                    &format!("{p}.mlp.up_proj"),
                    i,
                    h,
                    "intermediate_size by hidden_size",
                )?,
                down: self.linear(
                    &format!("{p}.mlp.down_proj"),
                    h,
                    i,
                    "hidden_size by intermediate_size",
                )?,
            },
        })
    }
}

/// Finds and validates every tensor of the model described by `cfg` in `ck`.
pub fn collect<'a>(cfg: &'a ModelConfig, ck: &'a Checkpoint) -> Result<HostModel<'a>, LoadError> {
    let f = Finder {
        ck,
        cfg,
        used: RefCell::new(BTreeSet::new()),
        widened: RefCell::new(std::collections::BTreeMap::new()),
    };
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let embed = f.linear(
        "language_model.model.embed_tokens",
        v,
        h,
        "vocab_size by hidden_size",
    )?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(f.linear("language_model.lm_head", v, h, "vocab_size by hidden_size")?)
    };
    let mut layers = Vec::with_capacity(cfg.layers.len());
    for (i, kind) in cfg.layers.iter().enumerate() {
        layers.push(f.layer(&format!("language_model.model.layers.{i}"), *kind)?);
    }
    let final_norm = f.vector("language_model.model.norm.weight", h, "hidden_size")?;
    let mut notes = Vec::new();
    let has_mtp = ck
        .tensors
        .keys()
        .any(|k| k.starts_with("language_model.mtp."));
    let mtp = if has_mtp {
        if cfg.mtp_num_hidden_layers == 0 {
            notes.push("the checkpoint has mtp.* tensors although config.json sets mtp_num_hidden_layers = 0; the MTP head is loaded".into());
        }
        let p = "language_model.mtp";
        Some(HostMtp {
            pre_fc_norm_embedding: f.vector(
                &format!("{p}.pre_fc_norm_embedding.weight"),
                h,
                "hidden_size",
            )?,
            pre_fc_norm_hidden: f.vector(
                &format!("{p}.pre_fc_norm_hidden.weight"),
                h,
                "hidden_size",
            )?,
            fc: f.linear(
                &format!("{p}.fc"),
                h,
                2 * h,
                "hidden_size by 2·hidden_size (embedding first, then hidden state)",
            )?,
            layer: f.layer(&format!("{p}.layers.0"), LayerKind::Full)?,
            norm: f.vector(&format!("{p}.norm.weight"), h, "hidden_size")?,
        })
    } else {
        if cfg.mtp_num_hidden_layers > 0 {
            notes.push("config.json declares an MTP head but the checkpoint has no mtp.* tensors (its converter dropped them); MTP is unavailable. `qwgpu convert` on the Hugging Face checkpoint keeps them".into());
        }
        None
    };
    let used = f.used.borrow();
    let unused: Vec<&String> = ck.tensors.keys().filter(|k| !used.contains(*k)).collect();
    if let Some(first) = unused.first() {
        return Err(LoadError::Unexpected {
            count: unused.len(),
            first: ck.tensors[*first].stored_name.clone(),
            file: ck.file_of(first).to_string(),
            model: format!("{}-layer Qwen3.5/3.6", cfg.num_hidden_layers),
        });
    }
    for ((bits, to), (count, extra)) in f.widened.borrow().iter() {
        notes.push(format!(
            "{count} matrices stored with {bits}-bit codes run as {to}-bit codes on the GPU (the same weights; {} more than stored)",
            if *extra >= 1_000_000_000 {
                format!("{:.2} GB", *extra as f64 / 1e9)
            } else {
                format!("{:.1} MB", *extra as f64 / 1e6)
            }
        ));
    }
    Ok(HostModel {
        embed,
        lm_head,
        layers,
        final_norm,
        mtp,
        notes,
    })
}
