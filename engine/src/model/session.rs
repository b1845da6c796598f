//! A loaded model and the sessions that run it.
//!
//! [`Model`] owns the weights. A [`Session`] owns one sequence's state, the activation workspace
//! and the prepared plans that bind them; building a session creates every bind group, so the
//! token loop only writes the step parameters, records the plan and submits once.

use std::sync::Arc;

use crate::error::LoadError;
use crate::gpu::readback::Readback;
use crate::gpu::{Gpu, GpuBuffer, GpuError, Plan, Step, StepShape, StepSlot};
use crate::model::config::ModelConfig;
use crate::model::forward::{Builder, Workspace};
use crate::model::tensors;
use crate::model::weights::Weights;
use crate::ops::matmul::{MT_PREFILL, MT_SMALL};
use crate::state::State;
use crate::weights::{Checkpoint, Layout};

/// Errors while running a model.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the context is full: {needed} positions needed, the session holds {max} (use a larger --max-context)")]
    ContextFull { needed: u32, max: u32 },
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    BadToken { id: u32, vocab: u32 },
    #[error("empty input: at least one token id is needed")]
    Empty,
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

pub struct Model {
    pub gpu: Arc<Gpu>,
    pub config: ModelConfig,
    pub weights: Weights,
    pub layout: Layout,
    /// Things the user should know about this checkpoint (e.g. MTP unavailable).
    pub notes: Vec<String>,
}

impl Model {
    /// Validates every tensor against `config`, then uploads. `progress(bytes_done, bytes_total)`.
    pub fn from_checkpoint(gpu: Arc<Gpu>, config: ModelConfig, ck: &Checkpoint, progress: &mut dyn FnMut(u64, u64)) -> Result<Model, LoadError> {
        let host = tensors::collect(&config, ck)?;
        let total = ck.data_bytes();
        let weights = Weights::upload(&gpu, &host, &mut |done| progress(done, total))?;
        gpu.take_error()?;
        let notes = host.notes.clone();
        drop(host);
        Ok(Model { gpu, config, weights, layout: ck.layout, notes })
    }

    /// Reads `config.json` (+ `generation_config.json`) and the safetensors files of `dir`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(gpu: Arc<Gpu>, dir: &std::path::Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Model, LoadError> {
        let config = read_config(dir)?;
        let ck = Checkpoint::open(dir)?;
        Model::from_checkpoint(gpu, config, &ck, progress)
    }

    pub fn has_mtp(&self) -> bool {
        self.weights.mtp.is_some()
    }
}

/// Parses `dir/config.json` and, if present, `dir/generation_config.json`.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_config(dir: &std::path::Path) -> Result<ModelConfig, LoadError> {
    let p = dir.join("config.json");
    if !dir.is_dir() {
        return Err(LoadError::Io { path: dir.display().to_string(), message: "no such model directory".into() });
    }
    let text = std::fs::read_to_string(&p).map_err(|e| LoadError::Io { path: p.display().to_string(), message: e.to_string() })?;
    let gen = std::fs::read_to_string(dir.join("generation_config.json")).ok();
    ModelConfig::parse(&p.display().to_string(), &text, gen.as_deref())
}

/// Sizes of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionOptions {
    /// Positions the KV caches hold (prompt + generated tokens).
    pub max_ctx: u32,
    /// Rows per prefill call.
    pub prefill_chunk: u32,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { max_ctx: 4096, prefill_chunk: 512 }
    }
}

/// One sequence: its state, a workspace and the plans bound to them.
pub struct Session {
    pub model: Arc<Model>,
    pub opts: SessionOptions,
    pub ws: Workspace,
    pub state: State,
    step_buf: GpuBuffer,
    /// Body (embedding + layers) with the decode tile, used for calls of ≤ 2 rows.
    small: Plan,
    /// Body with the prefill tile.
    prefill: Plan,
    /// Final norm, lm_head and argmax of the out rows.
    head: Plan,
    ids_readback: Readback,
}

impl Session {
    pub async fn new(model: Arc<Model>, opts: SessionOptions) -> Result<Session, LoadError> {
        let gpu = model.gpu.clone();
        let cfg = &model.config;
        let max_ctx = opts.max_ctx.max(1);
        let chunk = opts.prefill_chunk.clamp(1, max_ctx);
        let ws = Workspace::new(&gpu, cfg, chunk.max(2), 2)?;
        let state = State::new(&gpu, cfg, max_ctx, model.has_mtp())?;
        let step_buf = gpu.storage("step", gpu.caps.storage_align.max(256) * 2)?;
        let scope = gpu.scope("building the session's plans");
        let (small, prefill, head) = {
            let slot = StepSlot { buf: &step_buf, offset: 0 };
            let b = |mt| Builder { gpu: &gpu, cfg, w: &model.weights, ws: &ws, step: slot, mt, max_ctx };
            (b(MT_SMALL).body(&state).await?, b(MT_PREFILL).body(&state).await?, b(MT_SMALL).head().await?)
        };
        scope.finish().await?;
        let ids_readback = Readback::new(&gpu, "ids readback", 16);
        Ok(Session { model, opts: SessionOptions { max_ctx, prefill_chunk: chunk }, ws, state, step_buf, small, prefill, head, ids_readback })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.model.gpu
    }

    /// Tokens in the context so far.
    pub fn pos(&self) -> u32 {
        self.state.pos
    }

    /// Dispatches recorded for one decode step (body + head).
    pub fn dispatches_per_token(&self) -> usize {
        self.small.len() + self.head.len()
    }

    /// Forgets the sequence.
    pub fn reset(&mut self) {
        let gpu = self.model.gpu.clone();
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("reset") });
        self.state.record_reset(&mut enc);
        gpu.queue.submit([enc.finish()]);
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), RunError> {
        let vocab = self.model.config.vocab_size as u32;
        match ids.iter().find(|&&id| id >= vocab) {
            Some(&id) => Err(RunError::BadToken { id, vocab }),
            None => Ok(()),
        }
    }

    /// Records and submits one forward call of `t` rows at the current position. `ids` are
    /// written first when given (else the ids already on the GPU are used). With `logits`, the
    /// head runs on the last row and its argmax is copied to the readback buffer and to ids[0].
    fn submit(&mut self, ids: Option<&[u32]>, t: u32, logits: bool) -> Result<(), RunError> {
        self.submit_rows(ids, t, if logits { 1 } else { 0 })
    }

    /// As [`Session::submit`], with logits for the last `n_out` rows (0 = none; at most 2).
    fn submit_rows(&mut self, ids: Option<&[u32]>, t: u32, n_out: u32) -> Result<(), RunError> {
        let logits = n_out > 0;
        let n_out = n_out.clamp(1, self.ws.max_out.min(t));
        let needed = self.state.pos + t;
        if needed > self.state.max_ctx {
            return Err(RunError::ContextFull { needed, max: self.state.max_ctx });
        }
        let gpu = self.model.gpu.clone();
        let step = Step { n_tokens: t, pos: self.state.pos, n_confirmed: 0, n_out };
        gpu.queue.write_buffer(&self.step_buf.buf, 0, bytemuck::bytes_of(&step));
        if let Some(ids) = ids {
            gpu.queue.write_buffer(&self.ws.ids.buf, 0, bytemuck::cast_slice(ids));
        }
        let shape = StepShape { n_tokens: t, n_out };
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
            let body = if t <= 2 { &self.small } else { &self.prefill };
            body.record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
            if logits {
                self.head.record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
            }
        }
        if logits {
            // The chosen id feeds the next step's embedding without leaving the GPU.
            enc.copy_buffer_to_buffer(&self.ws.out_ids.buf, 0, &self.ws.ids.buf, 0, 4);
            self.ids_readback.copy_from(&mut enc, &self.ws.out_ids.buf, 0, 4);
        }
        gpu.queue.submit([enc.finish()]);
        self.state.pos += t;
        Ok(())
    }

    /// Feeds `ids` (any length) without computing logits.
    pub async fn prefill(&mut self, ids: &[u32]) -> Result<(), RunError> {
        self.check_ids(ids)?;
        if self.state.pos as usize + ids.len() > self.state.max_ctx as usize {
            return Err(RunError::ContextFull { needed: self.state.pos + ids.len() as u32, max: self.state.max_ctx });
        }
        for chunk in ids.chunks(self.opts.prefill_chunk as usize) {
            self.submit(Some(chunk), chunk.len() as u32, false)?;
        }
        self.model.gpu.take_error()?;
        Ok(())
    }

    /// Feeds `ids` (≤ one chunk) and returns the greedy choice after the last one.
    pub async fn forward_greedy(&mut self, ids: &[u32]) -> Result<u32, RunError> {
        if ids.is_empty() {
            return Err(RunError::Empty);
        }
        self.check_ids(ids)?;
        let (head, last) = ids.split_at(ids.len() - 1);
        if !head.is_empty() {
            self.prefill(head).await?;
        }
        self.submit(Some(last), 1, true)?;
        self.read_id().await
    }

    /// Feeds the id chosen by the previous step (already on the GPU) and returns the next choice.
    pub async fn decode_greedy(&mut self) -> Result<u32, RunError> {
        self.submit(None, 1, true)?;
        self.read_id().await
    }

    async fn read_id(&mut self) -> Result<u32, RunError> {
        let b = self.ids_readback.read(&self.model.gpu, 4).await?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Feeds `ids` (at most 2 rows, as an MTP verify) in one call and returns the logits of
    /// every row, [ids.len(), vocab].
    pub async fn forward_rows_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>, RunError> {
        if ids.is_empty() {
            return Err(RunError::Empty);
        }
        self.check_ids(ids)?;
        let n = ids.len().min(self.ws.max_out as usize) as u32;
        let (head, tail) = ids.split_at(ids.len() - n as usize);
        if !head.is_empty() {
            self.prefill(head).await?;
        }
        self.submit_rows(Some(tail), n, n)?;
        let v = self.model.config.vocab_size;
        Ok(self.model.gpu.read_f32(&self.ws.logits.buf, 0, n as usize * v).await?)
    }

    /// Reads every state buffer back (KV rows beyond `pos` included), for tests and debugging.
    pub async fn read_state(&self) -> Result<Vec<Vec<f32>>, RunError> {
        let mut out = Vec::new();
        for b in self.state.buffers() {
            out.push(self.model.gpu.read_f32(&b.buf, 0, (b.size / 4) as usize).await?);
        }
        Ok(out)
    }

    /// Feeds `ids` and returns the logits after the last one (a caller that asks for logits;
    /// the token loop never reads them back).
    pub async fn forward_logits(&mut self, ids: &[u32]) -> Result<Vec<f32>, RunError> {
        if ids.is_empty() {
            return Err(RunError::Empty);
        }
        self.check_ids(ids)?;
        let (head, last) = ids.split_at(ids.len() - 1);
        if !head.is_empty() {
            self.prefill(head).await?;
        }
        self.submit(Some(last), 1, true)?;
        let v = self.model.config.vocab_size;
        Ok(self.model.gpu.read_f32(&self.ws.logits.buf, 0, v).await?)
    }
}
