//! Per-sequence state on the GPU (spec §5): the attention KV caches, the Gated-DeltaNet conv and
//! recurrent states with their rollback snapshots, and the MTP head's KV cache.
//!
//! A [`State`] can be reset, forked (GPU-side copy of the rows in use into another state) and
//! saved to / restored from host memory as a [`SavedState`], which serializes to a checked byte
//! format ([`SavedState::to_bytes`], [`SavedState::from_bytes`]). Prompt caching across turns
//! and several streams per GPU build on these.

use crate::gpu::{Gpu, GpuBuffer, GpuError};
use crate::model::config::{LayerKind, ModelConfig};

/// KV cache of one attention layer: [max_ctx, n_kv_heads · head_dim] f32 each, or f16 (in
/// pairs) with `f16`.
pub struct KvCache {
    pub k: GpuBuffer,
    pub v: GpuBuffer,
    /// Bytes of one position (one row of `k` or `v`).
    pub row_bytes: u64,
    /// The values are f16 ([`crate::ops::attention::AttnDims::kv_f16`]).
    pub f16: bool,
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
    /// The KV caches hold f16 values.
    pub kv_f16: bool,
    /// Sequences side by side ([`State::with_slots`]; 1 for a session).
    pub slots: u32,
    /// Bytes of one slot's conv and recurrent state of a Gated-DeltaNet layer.
    conv_slot_bytes: u64,
    ssm_slot_bytes: u64,
}

impl State {
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        max_ctx: u32,
        with_mtp: bool,
        kv_f16: bool,
    ) -> Result<State, GpuError> {
        Self::with_slots(gpu, cfg, max_ctx, with_mtp, kv_f16, 1)
    }

    /// The state of `slots` independent sequences side by side (a [`crate::model::Batch`]): each
    /// KV cache holds `slots` blocks of `max_ctx` rows, each conv and recurrent state `slots`
    /// states, slot t for row t of the `STREAMS` kernels. The snapshots stay one state (the
    /// streams' calls take none). `slots` = 1 is [`State::new`].
    pub fn with_slots(
        gpu: &Gpu,
        cfg: &ModelConfig,
        max_ctx: u32,
        with_mtp: bool,
        kv_f16: bool,
        slots: u32,
    ) -> Result<State, GpuError> {
        let n = slots.max(1) as u64;
        let kv_row = (cfg.num_key_value_heads * cfg.head_dim) as u64
            * crate::ops::attention::kv_elem_bytes(kv_f16);
        let kv = |name: &str| -> Result<KvCache, GpuError> {
            Ok(KvCache {
                k: gpu.storage(&format!("{name}.k"), n * kv_row * max_ctx as u64)?,
                v: gpu.storage(&format!("{name}.v"), n * kv_row * max_ctx as u64)?,
                row_bytes: kv_row,
                f16: kv_f16,
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
                    conv: gpu.storage(&format!("layers.{i}.conv"), n * conv_bytes)?,
                    conv_snap: gpu.storage(&format!("layers.{i}.conv_snap"), conv_bytes)?,
                    ssm: gpu.storage(&format!("layers.{i}.ssm"), n * ssm_bytes)?,
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
            kv_f16,
            slots: n as u32,
            conv_slot_bytes: conv_bytes,
            ssm_slot_bytes: ssm_bytes,
        })
    }

    /// Records copying `src`'s sequence (a one-slot state of the same model and KV type: its KV
    /// rows in use, conv and recurrent states) into slot `slot` of this state.
    pub fn record_copy_to_slot(
        &self,
        slot: u32,
        src: &State,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<(), StateError> {
        if slot >= self.slots || src.slots != 1 {
            return Err(StateError::Mismatch(format!(
                "slot {slot} of a state of {} slots, from a state of {}",
                self.slots, src.slots
            )));
        }
        if src.kv_f16 != self.kv_f16 {
            let kind = |f16: bool| if f16 { "f16" } else { "f32" };
            return Err(StateError::Mismatch(format!(
                "KV caches of {} into {}",
                kind(src.kv_f16),
                kind(self.kv_f16)
            )));
        }
        if src.pos > self.max_ctx || src.layers.len() != self.layers.len() {
            return Err(StateError::Mismatch(format!(
                "{} positions of {} layers into slots of {} positions of {} layers",
                src.pos,
                src.layers.len(),
                self.max_ctx,
                self.layers.len()
            )));
        }
        let s = slot as u64;
        for (d, c) in self.layers.iter().zip(&src.layers) {
            match (d, c) {
                (LayerState::Attn(d), LayerState::Attn(c)) => {
                    let used = c.row_bytes * src.pos as u64;
                    let at = s * d.row_bytes * self.max_ctx as u64;
                    if used > 0 {
                        enc.copy_buffer_to_buffer(&c.k.buf, 0, &d.k.buf, at, used);
                        enc.copy_buffer_to_buffer(&c.v.buf, 0, &d.v.buf, at, used);
                    }
                }
                (LayerState::Gdn(d), LayerState::Gdn(c)) => {
                    let (cb, sb) = (self.conv_slot_bytes, self.ssm_slot_bytes);
                    if cb > 0 {
                        enc.copy_buffer_to_buffer(&c.conv.buf, 0, &d.conv.buf, s * cb, cb);
                    }
                    enc.copy_buffer_to_buffer(&c.ssm.buf, 0, &d.ssm.buf, s * sb, sb);
                }
                _ => return Err(StateError::Mismatch("the layers' kinds differ".into())),
            }
        }
        Ok(())
    }

    /// Records copies that move slot `from`'s sequence (its first `pos` KV rows, its conv and
    /// recurrent states) into slot `to` of the same state, through `scratch` (a buffer may not be
    /// copied onto itself; the pieces are as large as `scratch`). Slot `from` is left as it was.
    pub fn record_move_slot(
        &self,
        from: u32,
        to: u32,
        pos: u32,
        scratch: &GpuBuffer,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<(), StateError> {
        if from >= self.slots || to >= self.slots || pos > self.max_ctx {
            return Err(StateError::Mismatch(format!(
                "{pos} positions from slot {from} to slot {to} of a state of {} slots of {} positions",
                self.slots, self.max_ctx
            )));
        }
        let piece = scratch.size & !3;
        if piece == 0 {
            return Err(StateError::Mismatch("an empty scratch buffer".into()));
        }
        let mut copy = |buf: &wgpu::Buffer, slot_bytes: u64, used: u64| {
            let (a, b) = (from as u64 * slot_bytes, to as u64 * slot_bytes);
            let mut done = 0;
            while done < used {
                let n = piece.min(used - done);
                enc.copy_buffer_to_buffer(buf, a + done, &scratch.buf, 0, n);
                enc.copy_buffer_to_buffer(&scratch.buf, 0, buf, b + done, n);
                done += n;
            }
        };
        for l in &self.layers {
            match l {
                LayerState::Attn(kv) => {
                    let slot_bytes = kv.row_bytes * self.max_ctx as u64;
                    let used = kv.row_bytes * pos as u64;
                    copy(&kv.k.buf, slot_bytes, used);
                    copy(&kv.v.buf, slot_bytes, used);
                }
                LayerState::Gdn(g) => {
                    let (cb, sb) = (self.conv_slot_bytes, self.ssm_slot_bytes);
                    copy(&g.conv.buf, cb, cb);
                    copy(&g.ssm.buf, sb, sb);
                }
            }
        }
        Ok(())
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

    /// Bytes of the attention KV caches (the MTP head's included); the rest of [`Self::bytes`]
    /// is the Gated-DeltaNet states and their snapshots.
    pub fn kv_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Attn(kv) => kv.k.size + kv.v.size,
                LayerState::Gdn(_) => 0,
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

    /// Every buffer that carries sequence state with its name and the bytes in use: the first
    /// `pos` rows of a KV cache (`mtp_pos` for the MTP cache), all of a recurrent state.
    /// Snapshots are not part of it: they only matter inside an MTP iteration. The names of
    /// f16 KV caches end in [`F16_SUFFIX`], so a saved state says which kind it holds.
    pub fn entries(&self) -> Vec<StateEntry<'_>> {
        let sfx = if self.kv_f16 { F16_SUFFIX } else { "" };
        let mut v = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            match l {
                LayerState::Attn(c) => {
                    let used = c.row_bytes * self.pos as u64;
                    v.push(StateEntry::rows(format!("layers.{i}.k{sfx}"), &c.k, used));
                    v.push(StateEntry::rows(format!("layers.{i}.v{sfx}"), &c.v, used));
                }
                LayerState::Gdn(g) => {
                    v.push(StateEntry::whole(format!("layers.{i}.conv"), &g.conv));
                    v.push(StateEntry::whole(format!("layers.{i}.ssm"), &g.ssm));
                }
            }
        }
        if let Some(c) = &self.mtp {
            let used = c.row_bytes * self.mtp_pos as u64;
            v.push(StateEntry::rows(format!("mtp.k{sfx}"), &c.k, used));
            v.push(StateEntry::rows(format!("mtp.v{sfx}"), &c.v, used));
        }
        v
    }

    /// Checks that `other`'s rows in use fit this state's buffers, buffer by buffer (same model
    /// layout; this state's context may be larger or smaller than the positions held).
    pub fn check_fits(&self, names: &[(String, u64)]) -> Result<(), StateError> {
        let mine = self.entries();
        if mine.len() != names.len() {
            return Err(StateError::Mismatch(format!(
                "{} state buffers saved, this session has {} (another model, or MTP head present in one and not the other)",
                names.len(),
                mine.len()
            )));
        }
        for (m, (name, used)) in mine.iter().zip(names) {
            if name.strip_suffix(F16_SUFFIX) == Some(m.name.as_str())
                || m.name.strip_suffix(F16_SUFFIX) == Some(name.as_str())
            {
                let kind = |f16: bool| if f16 { "f16" } else { "f32" };
                return Err(StateError::Mismatch(format!(
                    "state buffer {name} holds an {} KV cache, this session's is {} (the KV cache type must match)",
                    kind(name.ends_with(F16_SUFFIX)),
                    kind(self.kv_f16)
                )));
            }
            if &m.name != name {
                return Err(StateError::Mismatch(format!(
                    "state buffer {name} where this session has {} (another model layout)",
                    m.name
                )));
            }
            if *used > m.buf.size {
                return Err(StateError::Mismatch(format!(
                    "state buffer {name}: {used} bytes do not fit this session's {} (context too small, or another model)",
                    m.buf.size
                )));
            }
            if !m.per_position && *used != m.buf.size {
                return Err(StateError::Mismatch(format!(
                    "state buffer {name}: {used} bytes saved, this session's holds {} (another model)",
                    m.buf.size
                )));
            }
        }
        Ok(())
    }

    /// Records a copy of `other`'s state (same model) into this one: a fork. Only the rows in use
    /// are copied; positions follow.
    pub fn record_copy_from(
        &mut self,
        other: &State,
        enc: &mut wgpu::CommandEncoder,
    ) -> Result<(), StateError> {
        let names: Vec<(String, u64)> = other
            .entries()
            .iter()
            .map(|e| (e.name.clone(), e.used))
            .collect();
        self.check_fits(&names)?;
        for (dst, src) in self.entries().into_iter().zip(other.entries()) {
            if src.used > 0 {
                enc.copy_buffer_to_buffer(&src.buf.buf, 0, &dst.buf.buf, 0, src.used);
            }
        }
        self.pos = other.pos;
        self.mtp_pos = other.mtp_pos;
        Ok(())
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

/// The end of the state entry names of f16 KV caches ([`State::entries`]).
pub const F16_SUFFIX: &str = ".f16";

/// One state buffer with the bytes of it that are in use (see [`State::entries`]).
pub struct StateEntry<'a> {
    pub name: String,
    pub buf: &'a GpuBuffer,
    pub used: u64,
    /// Rows per position (a KV cache: `used` follows the positions held); else the whole buffer.
    pub per_position: bool,
}

impl<'a> StateEntry<'a> {
    fn rows(name: String, buf: &'a GpuBuffer, used: u64) -> Self {
        StateEntry {
            name,
            buf,
            used: used.min(buf.size),
            per_position: true,
        }
    }

    fn whole(name: String, buf: &'a GpuBuffer) -> Self {
        StateEntry {
            name,
            buf,
            used: buf.size,
            per_position: false,
        }
    }
}

/// Why a saved state cannot be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("not a saved qwgpu state: {0}")]
    Format(String),
    #[error("the saved state is damaged: {0}")]
    Corrupt(String),
    #[error("the saved state does not fit this session: {0}")]
    Mismatch(String),
}

/// One saved state buffer: its name and the bytes in use.
#[derive(Clone, PartialEq, Eq)]
pub struct SavedBuffer {
    pub name: String,
    pub data: Vec<u8>,
}

impl std::fmt::Debug for SavedBuffer {
    /// Name, size and checksum (the contents would fill a screen).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} bytes, crc {:08x}",
            self.name,
            self.data.len(),
            crc32(&self.data)
        )
    }
}

/// A session's sequence state in host memory: the KV rows in use, the recurrent states, the MTP
/// cache and the positions. Made by `Session::save`, applied by `Session::restore`; it does not
/// hold the sampler's settings or token history (those belong to a request) nor the id of the
/// next token (the caller feeds it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedState {
    /// CRC-32 of the model's configuration (JSON): a state only restores into the same model.
    pub config_crc: u32,
    pub model_type: String,
    /// Positions held by the backbone caches.
    pub pos: u32,
    /// Entries in the MTP cache.
    pub mtp_pos: u32,
    /// The MTP cache holds an entry for every position (MTP speculation can continue from here).
    pub mtp_synced: bool,
    /// The ids the state holds, when the caller recorded them (`pos` of them; empty otherwise):
    /// prompt caching matches new prompts against them.
    pub tokens: Vec<u32>,
    /// The id the MTP cache's last entry was paired with (the one after `tokens`), when recorded.
    pub mtp_next: Option<u32>,
    pub buffers: Vec<SavedBuffer>,
}

const MAGIC: &[u8; 8] = b"QWGPUST\x01";

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: u32,
    config_crc: u32,
    model_type: String,
    pos: u32,
    mtp_pos: u32,
    mtp_synced: bool,
    #[serde(default)]
    tokens: Vec<u32>,
    #[serde(default)]
    mtp_next: Option<u32>,
    /// (name, bytes) of every buffer, in payload order.
    buffers: Vec<(String, u64)>,
}

/// CRC-32 (IEEE) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(bytes);
    c.sum()
}

/// The fingerprint a saved state carries of its model.
pub fn config_crc(cfg: &ModelConfig) -> u32 {
    crc32(serde_json::to_string(cfg).unwrap_or_default().as_bytes())
}

impl SavedState {
    /// Bytes of state held.
    pub fn bytes(&self) -> u64 {
        self.buffers.iter().map(|b| b.data.len() as u64).sum()
    }

    /// The state as bytes: magic, a JSON header (model fingerprint, positions, buffer names and
    /// sizes), the buffers, and a CRC-32 of everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = Header {
            format: 1,
            config_crc: self.config_crc,
            model_type: self.model_type.clone(),
            pos: self.pos,
            mtp_pos: self.mtp_pos,
            mtp_synced: self.mtp_synced,
            tokens: self.tokens.clone(),
            mtp_next: self.mtp_next,
            buffers: self
                .buffers
                .iter()
                .map(|b| (b.name.clone(), b.data.len() as u64))
                .collect(),
        };
        let h = serde_json::to_vec(&header).unwrap_or_default();
        let mut out = Vec::with_capacity(16 + h.len() + self.bytes() as usize + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(h.len() as u64).to_le_bytes());
        out.extend_from_slice(&h);
        for b in &self.buffers {
            out.extend_from_slice(&b.data);
        }
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads bytes written by [`SavedState::to_bytes`], checking the format, every length and
    /// the checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<SavedState, StateError> {
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(StateError::Format(
                "the file does not start with the qwgpu state magic".into(),
            ));
        }
        let total = bytes.len();
        let short = |what: &str| {
            StateError::Corrupt(format!("{what} runs past the end ({total} bytes in all)"))
        };
        if total < 8 + 8 + 4 {
            return Err(short("the header length"));
        }
        let body = &bytes[..total - 4];
        let want = u32::from_le_bytes([
            bytes[total - 4],
            bytes[total - 3],
            bytes[total - 2],
            bytes[total - 1],
        ]);
        let hlen = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or([0; 8]));
        let hend = 16u64
            .checked_add(hlen)
            .filter(|e| *e <= body.len() as u64)
            .ok_or_else(|| short("the header"))? as usize;
        let header: Header = serde_json::from_slice(&body[16..hend])
            .map_err(|e| StateError::Corrupt(format!("header: {e}")))?;
        if header.format != 1 {
            return Err(StateError::Format(format!(
                "format version {} (this build reads version 1)",
                header.format
            )));
        }
        if !header.tokens.is_empty() && header.tokens.len() != header.pos as usize {
            return Err(StateError::Corrupt(format!(
                "{} token ids recorded for {} positions",
                header.tokens.len(),
                header.pos
            )));
        }
        let mut at = hend as u64;
        let mut buffers = Vec::with_capacity(header.buffers.len());
        for (name, len) in header.buffers {
            let end = at
                .checked_add(len)
                .filter(|e| *e <= body.len() as u64)
                .ok_or_else(|| short(&format!("buffer {name}")))?;
            buffers.push(SavedBuffer {
                name,
                data: body[at as usize..end as usize].to_vec(),
            });
            at = end;
        }
        if at != body.len() as u64 {
            return Err(StateError::Corrupt(format!(
                "{} bytes after the last buffer",
                body.len() as u64 - at
            )));
        }
        let got = crc32(body);
        if got != want {
            return Err(StateError::Corrupt(format!(
                "checksum {got:08x}, the file says {want:08x}"
            )));
        }
        Ok(SavedState {
            config_crc: header.config_crc,
            model_type: header.model_type,
            pos: header.pos,
            mtp_pos: header.mtp_pos,
            mtp_synced: header.mtp_synced,
            tokens: header.tokens,
            mtp_next: header.mtp_next,
            buffers,
        })
    }
}
