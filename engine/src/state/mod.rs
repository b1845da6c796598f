//! Per-sequence state on the GPU (spec §5): the attention KV caches, the Gated-DeltaNet conv and
//! recurrent states with their rollback snapshots, and the MTP head's KV cache.
//!
//! A [`State`] can be forked (GPU-side copy), reset, and saved to / restored from host bytes, so
//! prompt caching across turns and several streams per GPU can build on it.

use crate::gpu::{Gpu, GpuBuffer, GpuError};
use crate::model::config::{LayerKind, ModelConfig};

/// KV cache of one attention layer: [max_ctx, n_kv_heads · head_dim] f32 each.
pub struct KvCache {
    pub k: GpuBuffer,
    pub v: GpuBuffer,
}

/// Recurrent state of one Gated-DeltaNet layer, with the snapshot written after the confirmed
/// rows of an MTP verify call.
pub struct GdnState {
    /// [K-1, conv_dim] f32: the last K-1 raw qkv rows.
    pub conv: GpuBuffer,
    pub conv_snap: GpuBuffer,
    /// [Hv, Dv, Dk] f32.
    pub ssm: GpuBuffer,
    pub ssm_snap: GpuBuffer,
}

pub enum LayerState {
    Attn(KvCache),
    Gdn(GdnState),
}

pub struct State {
    pub layers: Vec<LayerState>,
    /// The MTP layer's KV cache (when the model has an MTP head).
    pub mtp: Option<KvCache>,
    /// Positions held in the backbone caches (= RoPE position of the next token).
    pub pos: u32,
    /// Entries in the MTP cache.
    pub mtp_pos: u32,
    pub max_ctx: u32,
}

impl State {
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        max_ctx: u32,
        with_mtp: bool,
    ) -> Result<State, GpuError> {
        let kv_row = (cfg.num_key_value_heads * cfg.head_dim * 4) as u64;
        let kv = |name: &str| -> Result<KvCache, GpuError> {
            Ok(KvCache {
                k: gpu.storage(&format!("{name}.k"), kv_row * max_ctx as u64)?,
                v: gpu.storage(&format!("{name}.v"), kv_row * max_ctx as u64)?,
            })
        };
        let conv_bytes = ((cfg.linear_conv_kernel_dim - 1) * cfg.conv_dim() * 4) as u64;
        let ssm_bytes =
            (cfg.linear_num_value_heads * cfg.linear_value_head_dim * cfg.linear_key_head_dim * 4)
                as u64;
        let mut layers = Vec::with_capacity(cfg.layers.len());
        for (i, k) in cfg.layers.iter().enumerate() {
            layers.push(match k {
                LayerKind::Full => LayerState::Attn(kv(&format!("layers.{i}.kv"))?),
                LayerKind::Linear => LayerState::Gdn(GdnState {
                    conv: gpu.storage(&format!("layers.{i}.conv"), conv_bytes)?,
                    conv_snap: gpu.storage(&format!("layers.{i}.conv_snap"), conv_bytes)?,
                    ssm: gpu.storage(&format!("layers.{i}.ssm"), ssm_bytes)?,
                    ssm_snap: gpu.storage(&format!("layers.{i}.ssm_snap"), ssm_bytes)?,
                }),
            });
        }
        let mtp = if with_mtp { Some(kv("mtp.kv")?) } else { None };
        Ok(State {
            layers,
            mtp,
            pos: 0,
            mtp_pos: 0,
            max_ctx,
        })
    }

    /// Every buffer that carries sequence state (snapshots excluded), in a fixed order.
    pub fn buffers(&self) -> Vec<&GpuBuffer> {
        let mut v = Vec::new();
        for l in &self.layers {
            match l {
                LayerState::Attn(kv) => {
                    v.push(&kv.k);
                    v.push(&kv.v);
                }
                LayerState::Gdn(g) => {
                    v.push(&g.conv);
                    v.push(&g.ssm);
                }
            }
        }
        if let Some(kv) = &self.mtp {
            v.push(&kv.k);
            v.push(&kv.v);
        }
        v
    }

    /// Bytes of GPU memory the state holds (snapshots included).
    pub fn bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Attn(kv) => kv.k.size + kv.v.size,
                LayerState::Gdn(g) => g.conv.size + g.conv_snap.size + g.ssm.size + g.ssm_snap.size,
            })
            .sum::<u64>()
            + self.mtp.as_ref().map_or(0, |kv| kv.k.size + kv.v.size)
    }

    /// Records clearing the recurrent states (the KV caches need no clearing: `pos` bounds them).
    pub fn record_reset(&mut self, enc: &mut wgpu::CommandEncoder) {
        for l in &self.layers {
            if let LayerState::Gdn(g) = l {
                enc.clear_buffer(&g.conv.buf, 0, None);
                enc.clear_buffer(&g.ssm.buf, 0, None);
            }
        }
        self.pos = 0;
        self.mtp_pos = 0;
    }

    /// Records a copy of `other`'s contents into this state (same model and max_ctx): a fork.
    pub fn record_copy_from(&mut self, other: &State, enc: &mut wgpu::CommandEncoder) {
        for (dst, src) in self.buffers().into_iter().zip(other.buffers()) {
            enc.copy_buffer_to_buffer(&src.buf, 0, &dst.buf, 0, src.size.min(dst.size));
        }
        self.pos = other.pos;
        self.mtp_pos = other.mtp_pos;
    }

    /// Records the GDN rollback of an MTP verify: every recurrent state takes its snapshot.
    pub fn record_rollback(&self, enc: &mut wgpu::CommandEncoder) {
        for l in &self.layers {
            if let LayerState::Gdn(g) = l {
                enc.copy_buffer_to_buffer(&g.conv_snap.buf, 0, &g.conv.buf, 0, g.conv.size);
                enc.copy_buffer_to_buffer(&g.ssm_snap.buf, 0, &g.ssm.buf, 0, g.ssm.size);
            }
        }
    }
}
