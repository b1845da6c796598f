//! The model's weights on the GPU, uploaded from validated host views ([`HostModel`]).

use crate::error::LoadError;
use crate::gpu::{Gpu, GpuBuffer};
use crate::model::config::LayerKind;
use crate::model::tensors::{HostLayer, HostLinear, HostMixer, HostModel};
use crate::ops::matrix::{Matrix, MatrixData};

/// How [`Weights::upload`] lays the matrices out on the GPU (the results are the same bits).
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// Stack the projections that read the same input (GDN in_proj_qkv | z | b | a, attention
    /// q | k | v, MLP gate | up) into one matrix wherever their formats agree, so each group
    /// takes one matmul dispatch per chunk instead of one per projection ([`Projections`]).
    /// Gate and up are interleaved row by row instead, so their matmul also writes the SwiGLU
    /// (one dispatch instead of three).
    /// Off: one matrix and one dispatch per projection, and the SwiGLU kernel (for A/B
    /// comparisons and tests).
    pub merge_projections: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            merge_projections: true,
        }
    }
}

/// Linear maps of one input whose outputs lie side by side in one activation buffer, in order:
/// GDN's in_proj_qkv | z | b | a, attention's q | k | v, the MLP's gate | up. Consecutive parts
/// with the same in_features and weight format are stacked at load into one matrix
/// ([`Matrix::upload_stacked`]): one dispatch per chunk computes them all, each output row with
/// the same arithmetic as a separate matmul (bit-identical). A part stored in another format (a
/// mixed-precision checkpoint) keeps its own matrix, and merging can be turned off
/// ([`LoadOptions::merge_projections`]).
pub struct Projections {
    /// The matrices in output order; each one's columns start where the previous one's end.
    pub mats: Vec<Matrix>,
}

impl Projections {
    /// Output columns of all parts together.
    pub fn n(&self) -> u32 {
        self.mats.iter().map(|m| m.n).sum()
    }

    /// Bytes the matrices occupy on the GPU.
    pub fn bytes(&self) -> u64 {
        self.mats.iter().map(|m| m.bytes()).sum()
    }
}

pub enum Mixer {
    Gdn {
        /// in_proj_qkv | in_proj_z | in_proj_b | in_proj_a: [conv_dim + value_dim + 2·Hv, hidden].
        in_proj: Projections,
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
        /// q_proj (query | gate interleaved per head) | k_proj | v_proj.
        qkv_proj: Projections,
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
    /// gate_proj | up_proj: [2·intermediate, hidden]; or, when `swiglu_fused`, one matrix with
    /// their rows interleaved (gate 0, up 0, gate 1, ...) whose matmul writes the SwiGLU.
    pub gate_up: Projections,
    pub swiglu_fused: bool,
    pub down: Matrix,
}

impl Layer {
    /// Bytes of the layer's matrices (and GDN conv weights) on the GPU.
    pub fn bytes(&self) -> u64 {
        let m = match &self.mixer {
            Mixer::Gdn {
                in_proj,
                out_proj,
                conv1d,
                ..
            } => in_proj.bytes() + out_proj.bytes() + conv1d.size,
            Mixer::Attn {
                qkv_proj, o_proj, ..
            } => qkv_proj.bytes() + o_proj.bytes(),
        };
        m + self.gate_up.bytes() + self.down.bytes()
    }
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
        self.embed.bytes()
            + self.lm_head.as_ref().map_or(0, |m| m.bytes())
            + self.layers.iter().map(Layer::bytes).sum::<u64>()
            + self
                .mtp
                .as_ref()
                .map_or(0, |m| m.fc.bytes() + m.layer.bytes())
    }

    /// Uploads every tensor. `progress(done_bytes)` is called after each matrix.
    pub fn upload(
        gpu: &Gpu,
        host: &HostModel<'_>,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Weights, LoadError> {
        let mut up = Uploader {
            gpu,
            merge: opts.merge_projections,
            done: 0,
            progress,
        };
        let embed = up.matrix(&host.embed)?;
        let lm_head = match &host.lm_head {
            Some(l) => Some(up.matrix(l)?),
            None => None,
        };
        let mut layers = Vec::with_capacity(host.layers.len());
        for (i, l) in host.layers.iter().enumerate() {
            layers.push(up.layer(l, &format!("layers.{i}"))?);
        }
        let mtp = match &host.mtp {
            Some(m) => Some(Mtp {
                pre_fc_norm_embedding: up
                    .vector("mtp.pre_fc_norm_embedding", &m.pre_fc_norm_embedding)?,
                pre_fc_norm_hidden: up.vector("mtp.pre_fc_norm_hidden", &m.pre_fc_norm_hidden)?,
                fc: up.matrix(&m.fc)?,
                layer: up.layer(&m.layer, "mtp.layers.0")?,
                norm: up.vector("mtp.norm", &m.norm)?,
            }),
            None => None,
        };
        Ok(Weights {
            embed,
            lm_head,
            layers,
            final_norm: up.vector("model.norm", &host.final_norm)?,
            mtp,
        })
    }
}

/// Uploads matrices and vectors, counting the bytes done for the progress callback.
struct Uploader<'g, 'p> {
    gpu: &'g Gpu,
    merge: bool,
    done: u64,
    progress: &'p mut dyn FnMut(u64),
}

impl Uploader<'_, '_> {
    fn matrix(&mut self, l: &HostLinear<'_>) -> Result<Matrix, LoadError> {
        self.stack(&[l])
    }

    /// One matrix of `parts`' rows (which must share in_features and format), named after them:
    /// `….in_proj_qkv+in_proj_z+in_proj_b+in_proj_a`, or a lone part's own path.
    fn stack(&mut self, parts: &[&HostLinear<'_>]) -> Result<Matrix, LoadError> {
        let mut name = parts.first().map_or(String::new(), |p| p.path.clone());
        for p in parts.iter().skip(1) {
            name.push('+');
            name.push_str(p.path.rsplit('.').next().unwrap_or(&p.path));
        }
        let views: Vec<(&str, &MatrixData<'_>)> =
            parts.iter().map(|p| (p.path.as_str(), &p.data)).collect();
        let m = Matrix::upload_stacked(self.gpu, &name, &views)?;
        // Progress counts the checkpoint's bytes (widened codes take more on the GPU).
        self.done += parts.iter().map(|p| p.data.bytes()).sum::<u64>();
        (self.progress)(self.done);
        Ok(m)
    }

    /// `parts` in output order, consecutive runs of the same in_features and format stacked
    /// (each part alone when merging is off).
    fn projections(&mut self, parts: &[&HostLinear<'_>]) -> Result<Projections, LoadError> {
        let mut mats = Vec::new();
        let mut i = 0;
        while i < parts.len() {
            let mut j = i + 1;
            while self.merge && j < parts.len() && parts[i].data.stacks_with(&parts[j].data) {
                j += 1;
            }
            mats.push(self.stack(&parts[i..j])?);
            i = j;
        }
        Ok(Projections { mats })
    }

    fn vector(&self, name: &str, v: &[f32]) -> Result<GpuBuffer, LoadError> {
        Ok(self.gpu.storage_init(name, bytemuck::cast_slice(v))?)
    }

    fn layer(&mut self, l: &HostLayer<'_>, name: &str) -> Result<Layer, LoadError> {
        let mixer = match &l.mixer {
            HostMixer::Gdn {
                in_proj_qkv,
                in_proj_z,
                in_proj_b,
                in_proj_a,
                conv1d,
                dt_bias,
                a_log,
                norm,
                out_proj,
            } => Mixer::Gdn {
                in_proj: self.projections(&[in_proj_qkv, in_proj_z, in_proj_b, in_proj_a])?,
                conv1d: self.vector(&format!("{name}.conv1d"), conv1d)?,
                dt_bias: self.vector(&format!("{name}.dt_bias"), dt_bias)?,
                a_log: self.vector(&format!("{name}.A_log"), a_log)?,
                norm: self.vector(&format!("{name}.norm"), norm)?,
                out_proj: self.matrix(out_proj)?,
            },
            HostMixer::Attn {
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                q_norm,
                k_norm,
            } => Mixer::Attn {
                qkv_proj: self.projections(&[q_proj, k_proj, v_proj])?,
                o_proj: self.matrix(o_proj)?,
                q_norm: self.vector(&format!("{name}.q_norm"), q_norm)?,
                k_norm: self.vector(&format!("{name}.k_norm"), k_norm)?,
            },
        };
        let (gate, up) = (&l.mlp.gate, &l.mlp.up);
        let swiglu_fused =
            self.merge && gate.data.stacks_with(&up.data) && gate.data.n == up.data.n;
        let gate_up = if swiglu_fused {
            let name = format!("{}+up_proj (interleaved)", gate.path);
            let m = Matrix::upload_interleaved(
                self.gpu,
                &name,
                (gate.path.as_str(), &gate.data),
                (up.path.as_str(), &up.data),
            )?;
            self.done += gate.data.bytes() + up.data.bytes();
            (self.progress)(self.done);
            Projections { mats: vec![m] }
        } else {
            self.projections(&[gate, up])?
        };
        Ok(Layer {
            kind: l.kind,
            input_norm: self.vector(&format!("{name}.input_layernorm"), &l.input_norm)?,
            post_norm: self.vector(&format!("{name}.post_attention_layernorm"), &l.post_norm)?,
            mixer,
            gate_up,
            swiglu_fused,
            down: self.matrix(&l.mlp.down)?,
        })
    }
}
