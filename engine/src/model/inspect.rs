//! A checkpoint summary for `qwgpu inspect`: validates every tensor (the same checks as loading)
//! and reports shapes, parameter counts, quantization, bytes read per decoded token and the
//! memory a context needs — without touching a GPU.

use std::collections::BTreeMap;

use crate::error::LoadError;
use crate::model::config::{LayerKind, ModelConfig};
use crate::model::tensors::{collect, HostLayer, HostLinear, HostMixer};
use crate::weights::{Checkpoint, Layout};

/// Parameters and stored bytes of one group of tensors.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Group {
    pub params: u64,
    pub bytes: u64,
    /// Bytes on the GPU: more than stored where narrow codes are widened
    /// ([`crate::quant::WeightFormat::on_gpu`]).
    pub gpu_bytes: u64,
    /// Weight format → number of matrices.
    pub formats: BTreeMap<String, usize>,
}

impl Group {
    fn add_linear(&mut self, l: &HostLinear<'_>) {
        self.params += (l.data.n * l.data.k) as u64;
        self.bytes += l.data.bytes();
        self.gpu_bytes += l.data.gpu_bytes();
        *self.formats.entry(l.data.format.describe()).or_default() += 1;
    }
    fn add_vector(&mut self, len: usize) {
        self.params += len as u64;
        self.bytes += 4 * len as u64;
        self.gpu_bytes += 4 * len as u64;
    }
    /// Bits per weight of the group's matrices (codes + scales + biases).
    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.params as f64
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub config: ModelConfig,
    pub layout: Layout,
    pub files: usize,
    pub tensors: usize,
    pub skipped_tensors: usize,
    pub groups: BTreeMap<String, Group>,
    pub total_params: u64,
    pub total_bytes: u64,
    /// Weight bytes on the GPU (more than stored where narrow codes are widened).
    pub total_gpu_bytes: u64,
    pub mtp: bool,
    /// Weight bytes read per decoded token (every layer, lm_head, one embedding row).
    pub weight_bytes_per_token: u64,
    /// Gated-DeltaNet state read + written per token (f32).
    pub state_bytes_per_token: u64,
    /// KV cache bytes read per token per token of context (f32 cache).
    pub kv_bytes_per_context_token: u64,
    /// The MTP head's bytes per draft (fc + its layer + the shared lm_head).
    pub mtp_bytes_per_draft: u64,
    pub notes: Vec<String>,
}

impl Summary {
    /// GPU memory a session of `ctx` positions needs: weights + KV + states (+ snapshots).
    pub fn memory_at(&self, ctx: u64) -> u64 {
        let c = &self.config;
        let kv_layers = c.n_full() as u64 + self.mtp as u64;
        let kv = kv_layers * ctx * 2 * (c.num_key_value_heads * c.head_dim * 4) as u64;
        let gdn = c.n_linear() as u64
            * 2
            * ((c.linear_num_value_heads * c.linear_value_head_dim * c.linear_key_head_dim * 4)
                + (c.linear_conv_kernel_dim - 1) * c.conv_dim() * 4) as u64;
        self.total_gpu_bytes + kv + gdn
    }

    /// Bytes read for one decoded token at `ctx` positions of context.
    pub fn bytes_per_token(&self, ctx: u64) -> u64 {
        self.weight_bytes_per_token
            + self.state_bytes_per_token
            + ctx * self.kv_bytes_per_context_token
    }
}

fn layer_group(g: &mut Group, mlp: &mut Group, l: &HostLayer<'_>) {
    match &l.mixer {
        HostMixer::Gdn {
            in_proj_qkv,
            in_proj_z,
            in_proj_b,
            in_proj_a,
            out_proj,
            conv1d,
            dt_bias,
            a_log,
            norm,
        } => {
            for m in [in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj] {
                g.add_linear(m);
            }
            g.add_vector(conv1d.len() + dt_bias.len() + a_log.len() + norm.len());
        }
        HostMixer::Attn {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
        } => {
            for m in [q_proj, k_proj, v_proj, o_proj] {
                g.add_linear(m);
            }
            g.add_vector(q_norm.len() + k_norm.len());
        }
    }
    g.add_vector(l.input_norm.len() + l.post_norm.len());
    for m in [&l.mlp.gate, &l.mlp.up, &l.mlp.down] {
        mlp.add_linear(m);
    }
}

pub fn summarize(cfg: &ModelConfig, ck: &Checkpoint) -> Result<Summary, LoadError> {
    let host = collect(cfg, ck)?;
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    groups
        .entry("embedding".into())
        .or_default()
        .add_linear(&host.embed);
    if let Some(h) = &host.lm_head {
        groups.entry("lm_head".into()).or_default().add_linear(h);
    }
    for l in &host.layers {
        let key = match l.kind {
            LayerKind::Linear => "gated-deltanet layers",
            LayerKind::Full => "attention layers",
        };
        let mut g = groups.remove(key).unwrap_or_default();
        let mut mlp = groups.remove("mlp").unwrap_or_default();
        layer_group(&mut g, &mut mlp, l);
        groups.insert(key.into(), g);
        groups.insert("mlp".into(), mlp);
    }
    groups
        .entry("final norm".into())
        .or_default()
        .add_vector(host.final_norm.len());
    if let Some(m) = &host.mtp {
        let mut g = Group::default();
        g.add_linear(&m.fc);
        let mut mlp = Group::default();
        layer_group(&mut g, &mut mlp, &m.layer);
        g.params += mlp.params;
        g.bytes += mlp.bytes;
        g.gpu_bytes += mlp.gpu_bytes;
        for (k, v) in mlp.formats {
            *g.formats.entry(k).or_default() += v;
        }
        g.add_vector(m.pre_fc_norm_embedding.len() + m.pre_fc_norm_hidden.len() + m.norm.len());
        groups.insert("mtp head".into(), g);
    }
    let total_params = groups.values().map(|g| g.params).sum();
    let total_bytes = groups.values().map(|g| g.bytes).sum();
    let total_gpu_bytes = groups.values().map(|g| g.gpu_bytes).sum();
    // What a token reads: the GPU's copies.
    let lm = groups
        .get("lm_head")
        .or_else(|| groups.get("embedding"))
        .map_or(0, |g| g.gpu_bytes);
    let embed_row = groups
        .get("embedding")
        .map_or(0, |g| g.gpu_bytes / cfg.vocab_size.max(1) as u64);
    let layer_bytes: u64 = ["gated-deltanet layers", "attention layers", "mlp"]
        .iter()
        .filter_map(|k| groups.get(*k))
        .map(|g| g.gpu_bytes)
        .sum();
    let mtp_layer = groups.get("mtp head").map_or(0, |g| g.gpu_bytes);
    let state = cfg.n_linear() as u64
        * 2
        * (cfg.linear_num_value_heads * cfg.linear_value_head_dim * cfg.linear_key_head_dim * 4)
            as u64;
    Ok(Summary {
        config: cfg.clone(),
        layout: ck.layout,
        files: ck.files.len(),
        tensors: ck.tensors.len(),
        skipped_tensors: ck.skipped.len(),
        groups,
        total_params,
        total_bytes,
        total_gpu_bytes,
        mtp: host.mtp.is_some(),
        weight_bytes_per_token: layer_bytes + lm + embed_row,
        state_bytes_per_token: state,
        kv_bytes_per_context_token: cfg.n_full() as u64
            * 2
            * (cfg.num_key_value_heads * cfg.head_dim * 4) as u64,
        mtp_bytes_per_draft: if host.mtp.is_some() {
            mtp_layer + lm
        } else {
            0
        },
        notes: host.notes.clone(),
    })
}
