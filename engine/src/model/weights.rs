//! The model's weights on the GPU, uploaded from validated host views ([`HostModel`]).

use crate::gpu::{Gpu, GpuBuffer};
use crate::error::LoadError;
use crate::model::config::LayerKind;
use crate::model::tensors::{HostLayer, HostLinear, HostMixer, HostModel};
use crate::ops::matrix::Matrix;

pub enum Mixer {
    Gdn {
        in_proj_qkv: Matrix,
        in_proj_z: Matrix,
        in_proj_b: Matrix,
        in_proj_a: Matrix,
        /// [conv_dim, K] f32
        conv1d: GpuBuffer,
        /// [Hv] f32
        dt_bias: GpuBuffer,
        a_log: GpuBuffer,
        /// [Dv] f32
        norm: GpuBuffer,
        out_proj: Matrix,
    },
    Attn {
        q_proj: Matrix,
        k_proj: Matrix,
        v_proj: Matrix,
        o_proj: Matrix,
        /// [head_dim] f32
        q_norm: GpuBuffer,
        k_norm: GpuBuffer,
    },
}

pub struct Layer {
    pub kind: LayerKind,
    /// [hidden] f32
    pub input_norm: GpuBuffer,
    pub post_norm: GpuBuffer,
    pub mixer: Mixer,
    pub gate: Matrix,
    pub up: Matrix,
    pub down: Matrix,
}

pub struct Mtp {
    pub pre_fc_norm_embedding: GpuBuffer,
    pub pre_fc_norm_hidden: GpuBuffer,
    pub fc: Matrix,
    pub layer: Layer,
    pub norm: GpuBuffer,
}

pub struct Weights {
    pub embed: Matrix,
    /// None when tied: the embedding table doubles as lm_head.
    pub lm_head: Option<Matrix>,
    pub layers: Vec<Layer>,
    pub final_norm: GpuBuffer,
    pub mtp: Option<Mtp>,
}

impl Weights {
    pub fn lm_head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of weights on the GPU.
    pub fn bytes(&self) -> u64 {
        let mats = |l: &Layer| -> u64 {
            let m = match &l.mixer {
                Mixer::Gdn { in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, out_proj, conv1d, .. } => {
                    in_proj_qkv.bytes() + in_proj_z.bytes() + in_proj_b.bytes() + in_proj_a.bytes() + out_proj.bytes() + conv1d.size
                }
                Mixer::Attn { q_proj, k_proj, v_proj, o_proj, .. } => q_proj.bytes() + k_proj.bytes() + v_proj.bytes() + o_proj.bytes(),
            };
            m + l.gate.bytes() + l.up.bytes() + l.down.bytes()
        };
        self.embed.bytes()
            + self.lm_head.as_ref().map_or(0, |m| m.bytes())
            + self.layers.iter().map(mats).sum::<u64>()
            + self.mtp.as_ref().map_or(0, |m| m.fc.bytes() + mats(&m.layer))
    }

    /// Uploads every tensor. `progress(done_bytes)` is called after each matrix.
    pub fn upload(gpu: &Gpu, host: &HostModel<'_>, progress: &mut dyn FnMut(u64)) -> Result<Weights, LoadError> {
        let mut done = 0u64;
        let mut mat = |l: &HostLinear<'_>| -> Result<Matrix, LoadError> {
            let m = Matrix::upload(gpu, &l.path, &l.data)?;
            done += m.bytes();
            progress(done);
            Ok(m)
        };
        let embed = mat(&host.embed)?;
        let lm_head = match &host.lm_head {
            Some(l) => Some(mat(l)?),
            None => None,
        };
        let vec = |name: &str, v: &[f32]| -> Result<GpuBuffer, LoadError> { Ok(gpu.storage_init(name, bytemuck::cast_slice(v))?) };
        let mut layer = |l: &HostLayer<'_>, name: &str| -> Result<Layer, LoadError> {
            let mixer = match &l.mixer {
                HostMixer::Gdn { in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, conv1d, dt_bias, a_log, norm, out_proj } => Mixer::Gdn {
                    in_proj_qkv: mat(in_proj_qkv)?,
                    in_proj_z: mat(in_proj_z)?,
                    in_proj_b: mat(in_proj_b)?,
                    in_proj_a: mat(in_proj_a)?,
                    conv1d: vec(&format!("{name}.conv1d"), conv1d)?,
                    dt_bias: vec(&format!("{name}.dt_bias"), dt_bias)?,
                    a_log: vec(&format!("{name}.A_log"), a_log)?,
                    norm: vec(&format!("{name}.norm"), norm)?,
                    out_proj: mat(out_proj)?,
                },
                HostMixer::Attn { q_proj, k_proj, v_proj, o_proj, q_norm, k_norm } => Mixer::Attn {
                    q_proj: mat(q_proj)?,
                    k_proj: mat(k_proj)?,
                    v_proj: mat(v_proj)?,
                    o_proj: mat(o_proj)?,
                    q_norm: vec(&format!("{name}.q_norm"), q_norm)?,
                    k_norm: vec(&format!("{name}.k_norm"), k_norm)?,
                },
            };
            Ok(Layer {
                kind: l.kind,
                input_norm: vec(&format!("{name}.input_layernorm"), &l.input_norm)?,
                post_norm: vec(&format!("{name}.post_attention_layernorm"), &l.post_norm)?,
                mixer,
                gate: mat(&l.mlp.gate)?,
                up: mat(&l.mlp.up)?,
                down: mat(&l.mlp.down)?,
            })
        };
        let mut layers = Vec::with_capacity(host.layers.len());
        for (i, l) in host.layers.iter().enumerate() {
            layers.push(layer(l, &format!("layers.{i}"))?);
        }
        let mtp = match &host.mtp {
            Some(m) => Some(Mtp {
                pre_fc_norm_embedding: vec("mtp.pre_fc_norm_embedding", &m.pre_fc_norm_embedding)?,
                pre_fc_norm_hidden: vec("mtp.pre_fc_norm_hidden", &m.pre_fc_norm_hidden)?,
                fc: Matrix::upload(gpu, &m.fc.path, &m.fc.data)?,
                layer: layer(&m.layer, "mtp.layers.0")?,
                norm: vec("mtp.norm", &m.norm)?,
            }),
            None => None,
        };
        Ok(Weights {
            embed,
            lm_head,
            layers,
            final_norm: vec("model.norm", &host.final_norm)?,
            mtp,
        })
    }
}
