//! `config.json` (+ `generation_config.json`) for Qwen3.5 / Qwen3.6 dense checkpoints (spec §1).
//!
//! Both shapes load: the `Qwen3_5ForConditionalGeneration` wrapper (`text_config` holds the LM
//! fields) and a flat text-only config. Defaults follow mlx-lm's `TextModelArgs`; the values whose
//! defaults are wrong for this family (vocab, head_dim, linear dims) are read from the file and
//! any disagreement with the tensors is reported against the field name at load.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::LoadError;

/// The two mixers of the hybrid stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LayerKind {
    /// Gated-DeltaNet ("linear_attention").
    Linear,
    /// Gated full attention ("full_attention").
    Full,
}

/// Quantization parameters of one module (MLX `quantization` block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QuantSpec {
    pub bits: u32,
    pub group_size: u32,
}

/// The MLX `quantization` block: global parameters plus per-module overrides (`None` = the
/// module is explicitly left unquantized).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct QuantConfig {
    pub global: Option<QuantSpec>,
    pub overrides: BTreeMap<String, Option<QuantSpec>>,
}

impl QuantConfig {
    /// What the config says about module `path` (MLX module path, no `.weight`): `Some(spec)` if
    /// quantized per the config, `None` if it says nothing or says "unquantized".
    pub fn for_module(&self, path: &str) -> Option<QuantSpec> {
        match self.overrides.get(path) {
            Some(v) => *v,
            None => self.global,
        }
    }
    pub fn has_override(&self, path: &str) -> bool {
        self.overrides.contains_key(path)
    }
}

/// Everything the engine reads from the config files.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub linear_num_key_heads: usize,
    pub linear_key_head_dim: usize,
    pub linear_num_value_heads: usize,
    pub linear_value_head_dim: usize,
    pub linear_conv_kernel_dim: usize,
    /// Mixer of each layer, from `layer_types` or `full_attention_interval`.
    pub layers: Vec<LayerKind>,
    pub tie_word_embeddings: bool,
    /// Always true for this family (mlx-lm builds the gated q_proj regardless).
    pub attn_output_gate: bool,
    pub rope_theta: f64,
    pub partial_rotary_factor: f64,
    pub max_position_embeddings: usize,
    pub mtp_num_hidden_layers: usize,
    /// Stop ids: generation_config.json, else the top-level, else text_config `eos_token_id`.
    pub eos_token_ids: Vec<u32>,
    /// Storage dtype the checkpoint declares (informational).
    pub dtype: Option<String>,
    pub quantization: QuantConfig,
}

impl ModelConfig {
    /// RoPE dims per head: int(head_dim × partial_rotary_factor).
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }
    pub fn key_dim(&self) -> usize {
        self.linear_num_key_heads * self.linear_key_head_dim
    }
    pub fn value_dim(&self) -> usize {
        self.linear_num_value_heads * self.linear_value_head_dim
    }
    /// Channels of the GDN causal conv: q | k | v.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
    pub fn n_full(&self) -> usize {
        self.layers
            .iter()
            .filter(|k| **k == LayerKind::Full)
            .count()
    }
    pub fn n_linear(&self) -> usize {
        self.layers.len() - self.n_full()
    }

    /// Parses `config.json` text and the optional `generation_config.json` text.
    /// `file` names the config in error messages.
    pub fn parse(
        file: &str,
        config_json: &str,
        generation_json: Option<&str>,
    ) -> Result<Self, LoadError> {
        let bad = |msg: String| LoadError::Config {
            file: file.to_string(),
            message: msg,
        };
        let root: Value =
            serde_json::from_str(config_json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let root_obj = root
            .as_object()
            .ok_or_else(|| bad("the top level is not a JSON object".into()))?;
        let text = match root_obj.get("text_config") {
            Some(Value::Object(t)) => t,
            Some(_) => return Err(bad("`text_config` is not an object".into())),
            None => root_obj,
        };
        let model_type = root_obj
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if !model_type.is_empty()
            && !model_type.starts_with("qwen3_5")
            && !model_type.starts_with("qwen3_6")
        {
            return Err(bad(format!(
                "model_type '{model_type}' is not a Qwen3.5/3.6 dense model (expected qwen3_5)"
            )));
        }
        if text.get("num_experts").and_then(Value::as_u64).unwrap_or(0) > 0 {
            return Err(bad(
                "mixture-of-experts checkpoints (num_experts > 0) are not supported".into(),
            ));
        }
        let uint = |key: &str, default: Option<usize>| -> Result<usize, LoadError> {
            match text.get(key) {
                Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    bad(format!("`{key}` must be a non-negative integer, found {v}"))
                }),
                None => default.ok_or_else(|| bad(format!("`{key}` is missing"))),
            }
        };
        let hidden_size = uint("hidden_size", None)?;
        let num_hidden_layers = uint("num_hidden_layers", None)?;
        let num_attention_heads = uint("num_attention_heads", None)?;
        let head_dim = match text.get("head_dim") {
            Some(Value::Null) | None => hidden_size / num_attention_heads.max(1),
            Some(_) => uint("head_dim", None)?,
        };
        let rms_norm_eps = match text.get("rms_norm_eps") {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad(format!("`rms_norm_eps` must be a number, found {v}")))?
                as f32,
            None => 1e-6,
        };
        let interval = uint("full_attention_interval", Some(4))?;
        let layers = match text.get("layer_types") {
            Some(Value::Array(list)) => {
                if list.len() != num_hidden_layers {
                    return Err(bad(format!(
                        "`layer_types` has {} entries but num_hidden_layers is {num_hidden_layers}",
                        list.len()
                    )));
                }
                let mut out = Vec::with_capacity(list.len());
                for (i, v) in list.iter().enumerate() {
                    out.push(match v.as_str() {
                        Some("linear_attention") => LayerKind::Linear,
                        Some("full_attention") => LayerKind::Full,
                        _ => return Err(bad(format!("`layer_types[{i}]` is {v}; expected \"linear_attention\" or \"full_attention\""))),
                    });
                }
                if text.contains_key("full_attention_interval") {
                    for (i, k) in out.iter().enumerate() {
                        let by_interval = if (i + 1) % interval.max(1) == 0 {
                            LayerKind::Full
                        } else {
                            LayerKind::Linear
                        };
                        if *k != by_interval {
                            return Err(bad(format!(
                                "`layer_types[{i}]` ({k:?}) disagrees with full_attention_interval {interval} ({by_interval:?})"
                            )));
                        }
                    }
                }
                out
            }
            Some(v) => return Err(bad(format!("`layer_types` must be a list, found {v}"))),
            None => {
                if interval == 0 {
                    return Err(bad("`full_attention_interval` must be at least 1".into()));
                }
                (0..num_hidden_layers)
                    .map(|i| {
                        if (i + 1) % interval == 0 {
                            LayerKind::Full
                        } else {
                            LayerKind::Linear
                        }
                    })
                    .collect()
            }
        };
        // RoPE (mlx-lm TextModelArgs.__post_init__): theta and the partial factor come from
        // `rope_parameters`; a top-level `rope_theta` is used only when that dict is absent.
        let (rope_theta, partial_rotary_factor) = match text
            .get("rope_parameters")
            .or_else(|| text.get("rope_scaling"))
        {
            Some(Value::Object(rp)) => {
                if let Some(t) = rp
                    .get("type")
                    .or_else(|| rp.get("rope_type"))
                    .and_then(Value::as_str)
                {
                    if !matches!(t, "default" | "mrope") {
                        return Err(bad(format!(
                            "rope type '{t}' is not supported (expected default or mrope)"
                        )));
                    }
                }
                (
                    rp.get("rope_theta")
                        .and_then(Value::as_f64)
                        .unwrap_or(100000.0),
                    rp.get("partial_rotary_factor")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.25),
                )
            }
            _ => (
                text.get("rope_theta")
                    .and_then(Value::as_f64)
                    .unwrap_or(100000.0),
                text.get("partial_rotary_factor")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.25),
            ),
        };
        let bool_field = |key: &str, default: bool| -> bool {
            text.get(key)
                .and_then(Value::as_bool)
                .or_else(|| root_obj.get(key).and_then(Value::as_bool))
                .unwrap_or(default)
        };
        let eos_of = |v: &Value| -> Vec<u32> {
            match v {
                Value::Number(n) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x as u32)
                    .collect(),
                _ => vec![],
            }
        };
        let mut eos_token_ids = Vec::new();
        if let Some(g) = generation_json {
            let gv: Value = serde_json::from_str(g).map_err(|e| LoadError::Config {
                file: "generation_config.json".into(),
                message: format!("not valid JSON: {e}"),
            })?;
            if let Some(e) = gv.get("eos_token_id") {
                eos_token_ids = eos_of(e);
            }
        }
        if eos_token_ids.is_empty() {
            if let Some(e) = root_obj.get("eos_token_id") {
                eos_token_ids = eos_of(e);
            }
        }
        if eos_token_ids.is_empty() {
            if let Some(e) = text.get("eos_token_id") {
                eos_token_ids = eos_of(e);
            }
        }
        let quantization = match root_obj
            .get("quantization")
            .or_else(|| root_obj.get("quantization_config"))
        {
            None | Some(Value::Null) => QuantConfig::default(),
            Some(Value::Object(q)) => parse_quant(q).map_err(bad)?,
            Some(v) => return Err(bad(format!("`quantization` must be an object, found {v}"))),
        };
        let cfg = ModelConfig {
            model_type,
            hidden_size,
            num_hidden_layers,
            intermediate_size: uint("intermediate_size", Some(14336))?,
            vocab_size: uint("vocab_size", Some(151936))?,
            num_attention_heads,
            num_key_value_heads: uint("num_key_value_heads", Some(8))?,
            head_dim,
            rms_norm_eps,
            linear_num_key_heads: uint("linear_num_key_heads", Some(16))?,
            linear_key_head_dim: uint("linear_key_head_dim", Some(192))?,
            linear_num_value_heads: uint("linear_num_value_heads", Some(64))?,
            linear_value_head_dim: uint("linear_value_head_dim", Some(128))?,
            linear_conv_kernel_dim: uint("linear_conv_kernel_dim", Some(4))?,
            layers,
            tie_word_embeddings: bool_field("tie_word_embeddings", false),
            attn_output_gate: bool_field("attn_output_gate", true),
            rope_theta,
            partial_rotary_factor,
            max_position_embeddings: uint("max_position_embeddings", Some(131072))?,
            mtp_num_hidden_layers: uint("mtp_num_hidden_layers", Some(0))?,
            eos_token_ids,
            dtype: text
                .get("dtype")
                .or_else(|| text.get("torch_dtype"))
                .and_then(Value::as_str)
                .map(str::to_string),
            quantization,
        };
        cfg.check().map_err(bad)?;
        Ok(cfg)
    }

    /// Internal consistency of the numbers (the tensors are checked against them later).
    fn check(&self) -> Result<(), String> {
        let nz = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("linear_num_key_heads", self.linear_num_key_heads),
            ("linear_key_head_dim", self.linear_key_head_dim),
            ("linear_num_value_heads", self.linear_num_value_heads),
            ("linear_value_head_dim", self.linear_value_head_dim),
            ("linear_conv_kernel_dim", self.linear_conv_kernel_dim),
        ];
        for (k, v) in nz {
            if v == 0 {
                return Err(format!("`{k}` must be positive"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.linear_num_value_heads % self.linear_num_key_heads != 0 {
            return Err(format!(
                "linear_num_value_heads {} is not a multiple of linear_num_key_heads {}",
                self.linear_num_value_heads, self.linear_num_key_heads
            ));
        }
        let rd = self.rotary_dim();
        if rd % 2 != 0 || rd > self.head_dim {
            return Err(format!("rotary dims {rd} (head_dim × partial_rotary_factor) must be even and at most head_dim"));
        }
        if self.linear_conv_kernel_dim < 2 {
            return Err("`linear_conv_kernel_dim` must be at least 2".into());
        }
        if self.mtp_num_hidden_layers > 1 {
            return Err(format!(
                "mtp_num_hidden_layers {} is not supported (1 is)",
                self.mtp_num_hidden_layers
            ));
        }
        Ok(())
    }
}

fn parse_quant(q: &serde_json::Map<String, Value>) -> Result<QuantConfig, String> {
    fn spec(path: &str, v: &serde_json::Map<String, Value>) -> Result<QuantSpec, String> {
        if let Some(mode) = v.get("mode") {
            match mode.as_str() {
                Some("affine") => {}
                Some(m) => {
                    return Err(format!(
                        "quantization mode '{m}' at {path} is not supported (only MLX affine is)"
                    ))
                }
                None => return Err(format!("quantization `mode` at {path} must be a string")),
            }
        }
        let bits = v
            .get("bits")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("quantization at {path} has no integer `bits`"))?
            as u32;
        let group_size = v
            .get("group_size")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("quantization at {path} has no integer `group_size`"))?
            as u32;
        if !matches!(bits, 2..=8) {
            return Err(format!(
                "quantization at {path}: bits {bits} is not supported"
            ));
        }
        if !matches!(group_size, 32 | 64 | 128) {
            return Err(format!(
                "quantization at {path}: group_size {group_size} is not supported (32, 64 or 128)"
            ));
        }
        Ok(QuantSpec { bits, group_size })
    }
    if q.contains_key("quant_method") {
        return Err(format!(
            "quantization method '{}' is not supported (only MLX affine)",
            q.get("quant_method").and_then(Value::as_str).unwrap_or("?")
        ));
    }
    let global = if q.contains_key("bits") || q.contains_key("group_size") {
        Some(spec("the top level", q)?)
    } else {
        None
    };
    let mut overrides = BTreeMap::new();
    for (k, v) in q {
        if matches!(k.as_str(), "bits" | "group_size" | "mode") {
            continue;
        }
        match v {
            Value::Bool(false) => {
                overrides.insert(k.clone(), None);
            }
            Value::Bool(true) => {
                overrides.insert(k.clone(), global);
            }
            Value::Object(o) => {
                overrides.insert(k.clone(), Some(spec(k, o)?));
            }
            other => {
                return Err(format!(
                    "quantization entry `{k}` must be an object or false, found {other}"
                ))
            }
        }
    }
    Ok(QuantConfig { global, overrides })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRAPPED: &str = r#"{"model_type": "qwen3_5", "quantization": {"group_size": 64, "bits": 4, "mode": "affine",
        "language_model.lm_head": {"group_size": 64, "bits": 8}},
        "text_config": {"hidden_size": 5120, "num_hidden_layers": 8, "intermediate_size": 17408, "vocab_size": 248320,
        "num_attention_heads": 24, "num_key_value_heads": 4, "head_dim": 256, "linear_num_key_heads": 16,
        "linear_key_head_dim": 128, "linear_num_value_heads": 48, "linear_value_head_dim": 128,
        "eos_token_id": 248044, "mtp_num_hidden_layers": 1,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25}}}"#;

    #[test]
    fn wrapper_config_with_interval_and_overrides() {
        let c = ModelConfig::parse(
            "config.json",
            WRAPPED,
            Some(r#"{"eos_token_id": [248046, 248044]}"#),
        )
        .unwrap();
        assert_eq!(
            c.layers.iter().filter(|k| **k == LayerKind::Full).count(),
            2
        );
        assert_eq!(c.layers[3], LayerKind::Full);
        assert_eq!(c.rotary_dim(), 64);
        assert_eq!(c.rope_theta, 1e7);
        assert_eq!(c.eos_token_ids, vec![248046, 248044]);
        assert_eq!(c.conv_dim(), 10240);
        assert_eq!(
            c.quantization.for_module("language_model.lm_head"),
            Some(QuantSpec {
                bits: 8,
                group_size: 64
            })
        );
        assert_eq!(
            c.quantization.for_module("x"),
            Some(QuantSpec {
                bits: 4,
                group_size: 64
            })
        );
    }

    #[test]
    fn rope_theta_from_rope_parameters_not_top_level() {
        let j = WRAPPED.replace(
            "\"eos_token_id\": 248044,",
            "\"eos_token_id\": 248044, \"rope_theta\": 5,",
        );
        assert_eq!(ModelConfig::parse("c", &j, None).unwrap().rope_theta, 1e7);
    }

    #[test]
    fn errors_name_the_field() {
        let e = ModelConfig::parse(
            "config.json",
            &WRAPPED.replace("\"num_key_value_heads\": 4", "\"num_key_value_heads\": 5"),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads 5"), "{e}");
        let e = ModelConfig::parse(
            "config.json",
            &WRAPPED.replace("\"mode\": \"affine\"", "\"mode\": \"mxfp4\""),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("mxfp4"), "{e}");
        let e = ModelConfig::parse("config.json", "{", None).unwrap_err();
        assert!(
            e.to_string().contains("config.json") && e.to_string().contains("JSON"),
            "{e}"
        );
        let e = ModelConfig::parse(
            "config.json",
            &WRAPPED.replace("\"hidden_size\": 5120,", ""),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("`hidden_size` is missing"), "{e}");
    }

    #[test]
    fn layer_types_must_agree_with_interval() {
        let j = WRAPPED.replace(
            "\"mtp_num_hidden_layers\": 1,",
            "\"mtp_num_hidden_layers\": 1, \"full_attention_interval\": 4, \"layer_types\": [\"linear_attention\",\"linear_attention\",\"full_attention\",\"linear_attention\",\"linear_attention\",\"linear_attention\",\"linear_attention\",\"full_attention\"],",
        );
        let e = ModelConfig::parse("config.json", &j, None).unwrap_err();
        assert!(e.to_string().contains("layer_types[2]"), "{e}");
    }
}
