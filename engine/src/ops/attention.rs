//! `attn_prep.wgsl` and `attention.wgsl`: the gated full-attention mixer between the projections
//! (spec §4.5 steps 1-7, KV cache §5.1). f32 activations; an f32 KV cache, or an f16 one
//! ([`AttnDims::kv_f16`]).
//!
//! Per layer and forward call: `attn_prep` (q/k RMSNorm + partial RoPE, K/V appended to the cache
//! at rows `step.pos ..`), then `attention` (causal GQA over cache rows `0 ..= step.pos + t`, times
//! the sigmoid output gate). Every (row, head) is computed in a fixed order that depends only on
//! its own query, its key count and the cache, so results are bit-identical whatever the row
//! count of the call or the prefill chunking (spec §7.5). attention cuts the keys into chunks
//! (length a function of the key count alone); the first rows of a call (decode, verify) spread
//! their chunks over many workgroups, later rows compute the same chunks in one workgroup, with
//! the same arithmetic (see attention.wgsl).
//!
//! Limits: D a multiple of 4 and <= 256; each KV cache buffer must fit one storage binding
//! (`max_ctx * Hkv * D * 4` bytes <= `caps.max_binding`: 1 GiB at 262,144 positions for the 27B).

use crate::gpu::{
    Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, ParamStruct, StepSlot, MAX_STREAMS,
};
use crate::ops::Act;

/// Shapes of one full-attention layer (27B: Hq 24, Hkv 4, D 256, rotary 64, theta 1e7, eps 1e-6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDims {
    /// Query heads Hq (a multiple of `n_kv_heads`).
    pub n_heads: u32,
    /// Key/value heads Hkv.
    pub n_kv_heads: u32,
    /// Head dim D: a multiple of 4, at most [`MAX_HEAD_DIM`].
    pub head_dim: u32,
    /// Leading dims of each head that RoPE rotates (even, at most D).
    pub rotary_dim: u32,
    pub rope_theta: f32,
    /// RMSNorm eps of q_norm / k_norm.
    pub eps: f32,
    /// Rows of the KV cache (positions it can hold).
    pub max_ctx: u32,
    /// The KV caches hold f16 values (in pairs, `pack2x16float`: no shader-f16 needed) instead
    /// of f32: half the memory and the reads; keys and values rounded to f16 once, when written.
    pub kv_f16: bool,
    /// 0: the rows of a call are successive tokens of one sequence. n > 0: the call's rows are
    /// independent streams (a [`crate::model::Batch`], n slots): row t is stream t at its own
    /// position ([`crate::gpu::Step`]'s `pos`, `pos1`..), and the caches hold n slots of
    /// `max_ctx` rows each, slot t for row t (the `STREAMS` pipelines).
    pub streams: u32,
}

impl AttnDims {
    /// Bytes of one KV cache buffer (K or V): [max_ctx, Hkv*D] f32 or f16 (per stream slot).
    pub fn cache_bytes(&self) -> u64 {
        self.streams.max(1) as u64
            * self.max_ctx as u64
            * self.n_kv_heads as u64
            * self.head_dim as u64
            * kv_elem_bytes(self.kv_f16)
    }
}

/// Bytes of one cached key or value: 2 in an f16 cache, else 4.
pub fn kv_elem_bytes(f16: bool) -> u64 {
    if f16 {
        2
    } else {
        4
    }
}

/// Largest supported head dim (workgroup memory holds one head).
pub const MAX_HEAD_DIM: u32 = 256;
/// attn_prep: threads per workgroup.
pub const PREP_WG: u32 = 64;
/// attention: threads per workgroup and keys per block.
pub const ATTN_WG: u32 = 256;
pub const ATTN_BK: u32 = 32;
/// attention: at most this many key chunks per row, each at least `ATTN_CK_MIN` keys (a multiple
/// of `ATTN_BK`); the chunk length is a function of the row's key count alone.
pub const ATTN_NS: u32 = 32;
pub const ATTN_CK_MIN: u32 = 64;
/// Rows whose chunks [`attention`] spreads over workgroups (decode: 1, MTP verify: 2).
pub const SPLIT_ROWS: u32 = 2;

crate::gpu_struct! {
    pub struct AttnPrepParams as "Params" {
        n_heads: u32,
        n_kv_heads: u32,
        head_dim: u32,
        rotary_dim: u32,
        max_ctx: u32,
        /// Rows every bound activation buffer can hold (a guard against a too-large n_tokens).
        max_rows: u32,
        qg_stride: u32,
        qg_col: u32,
        k_stride: u32,
        k_col: u32,
        v_stride: u32,
        v_col: u32,
        eps: f32,
        log2_theta: f32,
    }
}

crate::gpu_struct! {
    pub struct AttentionParams as "Params" {
        n_heads: u32,
        n_kv_heads: u32,
        head_dim: u32,
        max_ctx: u32,
        max_rows: u32,
        /// Rows whose chunk partials come from the split pass (the rows the scratch holds).
        split_rows: u32,
        gate_stride: u32,
        gate_col: u32,
        /// head_dim^-0.5, rounded once from f64 (as MLX's Python-side scale)
        scale: f32,
        /// XQ: vec4<u32> per row of the output planes (`xquant::q_stride(Hq·D)`), and the rows
        /// the plane buffer holds (rows past it are not written as planes).
        q_stride: u32,
        xq_rows: u32,
        /// PREP (the prep folded into the split pass): k's and v's columns in the projections'
        /// rows (q|gate at gate_col, the same stride), and attn_prep's rotary dims, norm eps and
        /// log2(theta). Unused otherwise.
        k_col: u32,
        v_col: u32,
        rotary_dim: u32,
        eps: f32,
        log2_theta: f32,
    }
}

fn bad(what: &str, msg: String) -> GpuError {
    GpuError::Shader {
        name: what.to_string(),
        message: msg,
    }
}

fn check_dims(what: &str, d: &AttnDims) -> Result<(), GpuError> {
    if d.n_heads == 0 || d.n_kv_heads == 0 || d.n_heads % d.n_kv_heads != 0 {
        return Err(bad(
            what,
            format!(
                "n_heads {} must be a non-zero multiple of n_kv_heads {}",
                d.n_heads, d.n_kv_heads
            ),
        ));
    }
    if d.head_dim == 0 || d.head_dim % 4 != 0 || d.head_dim > MAX_HEAD_DIM {
        return Err(bad(
            what,
            format!(
                "head_dim {} must be a multiple of 4 and at most {MAX_HEAD_DIM}",
                d.head_dim
            ),
        ));
    }
    if d.streams > MAX_STREAMS {
        return Err(bad(
            what,
            format!("{} streams in one call, at most {MAX_STREAMS}", d.streams),
        ));
    }
    if d.rotary_dim % 2 != 0 || d.rotary_dim > d.head_dim {
        return Err(bad(
            what,
            format!(
                "rotary_dim {} must be even and at most head_dim {}",
                d.rotary_dim, d.head_dim
            ),
        ));
    }
    if d.max_ctx == 0 {
        return Err(bad(what, "max_ctx must be positive".into()));
    }
    Ok(())
}

/// Rows of `a` that hold `width` elements from its start column (0 if even row 0 does not).
fn rows_of(a: &Act<'_>, width: u64) -> u64 {
    let len = a.buf.size / 4;
    let need = a.col as u64 + width;
    if len < need {
        0
    } else if a.stride == 0 {
        u32::MAX as u64
    } else {
        (len - need) / a.stride as u64 + 1
    }
}

fn check_bytes(what: &str, name: &str, b: &GpuBuffer, need: u64) -> Result<(), GpuError> {
    if b.size < need {
        return Err(bad(
            what,
            format!("{name} has {} bytes, needs {need}", b.size),
        ));
    }
    Ok(())
}

fn check_caches(
    gpu: &Gpu,
    what: &str,
    d: &AttnDims,
    k_cache: &GpuBuffer,
    v_cache: &GpuBuffer,
) -> Result<(), GpuError> {
    let need = d.cache_bytes();
    if need > gpu.caps.max_binding {
        return Err(GpuError::TooLarge {
            what: format!("{what}: a KV cache of {} positions", d.max_ctx),
            needed: need,
            limit: gpu.caps.max_binding,
        });
    }
    check_bytes(what, "k_cache", k_cache, need)?;
    check_bytes(what, "v_cache", v_cache, need)
}

/// Per-head q/k RMSNorm + partial RoPE, and the K/V cache append, for every row `t` of the step
/// (position `step.pos + t`). One dispatch.
///
/// * `qg`: q_proj output, [T, Hq, 2, D] from `qg.col` = per head `[q_h | gate_h]` (only q is read).
/// * `k`, `v`: k_proj / v_proj outputs, [T, Hkv*D] from their column (may share one buffer with `qg`).
/// * `q_norm`, `k_norm`: [D] f32 weights (applied as `w * x / rms`).
/// * `q_out`: [T, Hq*D] normed and rotated queries (the input of [`attention`]).
/// * `k_cache`, `v_cache`: [max_ctx, Hkv*D] f32; rows `step.pos .. step.pos + T` are written,
///   others untouched. Rows past `max_ctx` are skipped: the caller must keep `pos + T <= max_ctx`.
#[allow(clippy::too_many_arguments)]
pub async fn attn_prep(
    gpu: &Gpu,
    d: &AttnDims,
    qg: Act<'_>,
    k: Act<'_>,
    v: Act<'_>,
    q_norm: &GpuBuffer,
    k_norm: &GpuBuffer,
    q_out: &GpuBuffer,
    k_cache: &GpuBuffer,
    v_cache: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    let what = "attn_prep";
    check_dims(what, d)?;
    let hd = d.head_dim as u64;
    let (hq, hkv) = (d.n_heads as u64, d.n_kv_heads as u64);
    check_bytes(what, "q_norm", q_norm, hd * 4)?;
    check_bytes(what, "k_norm", k_norm, hd * 4)?;
    check_caches(gpu, what, d, k_cache, v_cache)?;
    let max_rows = rows_of(&qg, 2 * hq * hd)
        .min(rows_of(&k, hkv * hd))
        .min(rows_of(&v, hkv * hd))
        .min(q_out.size / 4 / (hq * hd))
        .min(u32::MAX as u64) as u32;
    if max_rows == 0 {
        return Err(bad(what, "an activation buffer cannot hold one row".into()));
    }
    let pipeline = gpu
        .pipeline(
            "attn_prep.wgsl",
            &prep_defines()
                .flag("KV_F16", d.kv_f16)
                .flag("STREAMS", d.streams > 0),
        )
        .await?;
    let params = AttnPrepParams {
        n_heads: d.n_heads,
        n_kv_heads: d.n_kv_heads,
        head_dim: d.head_dim,
        rotary_dim: d.rotary_dim,
        max_ctx: d.max_ctx,
        max_rows,
        qg_stride: qg.stride,
        qg_col: qg.col,
        k_stride: k.stride,
        k_col: k.col,
        v_stride: v.stride,
        v_col: v.col,
        eps: d.eps,
        log2_theta: d.rope_theta.log2(),
    };
    let u = gpu.uniform("attn_prep.params", &params);
    let res = [
        u.whole(),
        step.binding(),
        qg.buf.whole(),
        k.buf.whole(),
        v.buf.whole(),
        q_norm.whole(),
        k_norm.whole(),
        q_out.whole(),
        k_cache.whole(),
        v_cache.whole(),
    ];
    Ok(vec![gpu.dispatch(
        what,
        &pipeline,
        &res,
        Grid::per_token(d.n_heads + 2 * d.n_kv_heads),
    )])
}

/// Bytes of an attention scratch (split partials) for `rows` rows (see [`attention_with_scratch`]).
pub fn attention_scratch_bytes(d: &AttnDims, rows: u32) -> u64 {
    rows as u64 * d.n_heads as u64 * attention_chunks() as u64 * (1 + d.head_dim as u64 / 4) * 16
}

/// Causal GQA attention with the output gate, for every row `t` of the step: query head `h` of
/// row `t` attends to cache rows `0 ..= step.pos + t` of kv head `h / (Hq/Hkv)`, scale D^-0.5,
/// and `out[t, h*D + j] = o[j] * sigmoid(gate[t, h*2D + D + j])`.
///
/// * `q`: [T, Hq*D] ([`attn_prep`]'s `q_out`).
/// * `gate`: the q_proj output as passed to [`attn_prep`] (`[T, Hq, 2, D]` from `gate.col`; only
///   the gate halves are read).
/// * `k_cache`, `v_cache`: [max_ctx, Hkv*D], rows `0 ..= step.pos + T - 1` valid.
/// * `out`: [T, Hq*D] (the input of o_proj).
///
/// Allocates its own scratch for the first [`SPLIT_ROWS`] rows (≈ 1.6 MB at the 27B shapes); use
/// [`attention_with_scratch`] to share one scratch between layers. Two dispatches.
#[allow(clippy::too_many_arguments)]
pub async fn attention(
    gpu: &Gpu,
    d: &AttnDims,
    q: &GpuBuffer,
    gate: Act<'_>,
    k_cache: &GpuBuffer,
    v_cache: &GpuBuffer,
    out: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    check_dims("attention", d)?;
    let rows = SPLIT_ROWS.min(max_rows_attention(d, q, gate, out));
    let scratch = gpu.storage("attention.scratch", attention_scratch_bytes(d, rows.max(1)))?;
    attention_with_scratch(gpu, d, q, gate, k_cache, v_cache, Some(&scratch), out, step).await
}

fn max_rows_attention(d: &AttnDims, q: &GpuBuffer, gate: Act<'_>, out: &GpuBuffer) -> u32 {
    let w = d.n_heads as u64 * d.head_dim as u64;
    rows_of(&gate, 2 * w)
        .min(q.size / 4 / w.max(1))
        .min(out.size / 4 / w.max(1))
        .min(u32::MAX as u64) as u32
}

/// [`attention`] with a caller-owned scratch. Rows `t < split_rows` of a call, where
/// `split_rows` = the rows `scratch` holds ([`attention_scratch_bytes`]), split their keys over
/// up to [`ATTN_NS`] workgroups per head (the decode/verify path: the whole GPU reads the cache);
/// later rows compute the same chunks in one workgroup per head. Both give identical bits, so
/// the scratch size only changes speed. `None`: every row on the one-workgroup path (one dispatch).
/// A scratch is only used within the call's dispatches: one can serve every layer.
#[allow(clippy::too_many_arguments)]
pub async fn attention_with_scratch(
    gpu: &Gpu,
    d: &AttnDims,
    q: &GpuBuffer,
    gate: Act<'_>,
    k_cache: &GpuBuffer,
    v_cache: &GpuBuffer,
    scratch: Option<&GpuBuffer>,
    out: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    attention_xq(gpu, d, q, gate, k_cache, v_cache, scratch, out, None, step).await
}

/// A speed knob of the attention plans: what a setter stored (non-zero), else `var` from the
/// environment within `range` (read once, at the first call), else `default`.
fn knob(
    set: &std::sync::atomic::AtomicU32,
    env: &std::sync::OnceLock<u32>,
    var: &str,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> u32 {
    let v = set.load(std::sync::atomic::Ordering::Relaxed);
    if v != 0 {
        return v;
    }
    *env.get_or_init(|| match std::env::var(var) {
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                eprintln!(
                    "qwgpu: ignoring {var}={v:?}: expected {} to {}",
                    range.start(),
                    range.end()
                );
                default
            }
        },
        Err(_) => default,
    })
}

static CHUNKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static CHUNKS_ENV: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The most key chunks per row ([`ATTN_NS`] unless `QWGPU_ATTN_NS=N`, 1 to 1024, read once at
/// start-up: a benchmark knob; the chunks of a row, and so its bits, follow it. There is no
/// setter: every plan of a process must agree on it).
pub fn attention_chunks() -> u32 {
    knob(&CHUNKS, &CHUNKS_ENV, "QWGPU_ATTN_NS", 1..=1024, ATTN_NS)
}

/// Query rows per workgroup of a prompt chunk's attention ([`attention_rows`]): 4 by default.
pub const ATTN_QR: u32 = 4;

static ATTN_ROWS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static ATTN_ROWS_ENV: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Query rows [`attention_rows`] gives prompt chunks: each workgroup of the final pass takes that
/// many consecutive rows of a head and reads each block of keys once for all of them (the bits of
/// one row per workgroup; tested). [`ATTN_QR`] unless `QWGPU_ATTN_ROWS=N` (1 to 8, read at
/// start-up; 1 is one row per workgroup) or [`set_attention_rows`] says otherwise.
pub fn attention_rows() -> u32 {
    knob(
        &ATTN_ROWS,
        &ATTN_ROWS_ENV,
        "QWGPU_ATTN_ROWS",
        1..=8,
        ATTN_QR,
    )
}

/// Sets [`attention_rows`] for plans built afterwards (taken into 1..=8; `None`: the start-up
/// choice).
pub fn set_attention_rows(n: Option<u32>) {
    ATTN_ROWS.store(
        n.map_or(0, |n| n.clamp(1, 8)),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Query heads per workgroup of the split pass by default ([`attention_split_heads`]): a whole
/// GQA group where the device's workgroup memory holds it.
pub const ATTN_SPLIT_HEADS: u32 = 8;

/// Keys from which a decode or verify step's split pass takes a GQA group per workgroup
/// ([`attention_group_keys`]); below, one workgroup per head.
pub const ATTN_GROUP_KEYS: u32 = 4096;

static GROUP_KEYS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static GROUP_KEYS_ENV: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The key count of a step's first row from which the split pass takes the heads of a GQA group
/// together ([`ATTN_GROUP_KEYS`] unless `QWGPU_ATTN_GROUP_KEYS=N`, read at start-up, or
/// [`set_attention_group_keys`] says otherwise). A plan holds both forms of the split pass and
/// each step records the one for its key estimate ([`crate::gpu::StepShape::keys`]; 0, unknown,
/// takes the one-head form); the same bits either way.
pub fn attention_group_keys() -> u32 {
    knob(
        &GROUP_KEYS,
        &GROUP_KEYS_ENV,
        "QWGPU_ATTN_GROUP_KEYS",
        1..=u32::MAX,
        ATTN_GROUP_KEYS,
    )
}

/// Sets [`attention_group_keys`] for plans built afterwards (`None`: the start-up choice).
pub fn set_attention_group_keys(n: Option<u32>) {
    GROUP_KEYS.store(
        n.map_or(0, |n| n.max(1)),
        std::sync::atomic::Ordering::Relaxed,
    );
}

static FOLD_KEYS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static FOLD_KEYS_ENV: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The key count of a step's first row from which decode and verify plans leave attention's
/// prep and final pass unfolded ([`attention_fold_level`] 0) whatever the level: each chunk's
/// workgroup of a folded split pass recomputes its query heads' norm and RoPE, which costs more
/// the more chunks a row has, while at short contexts the folds gain (H100: fold levels 1 and 2
/// +0.5 % and +1.2 % plain at 64–320 keys, −0.25 % and −0.5 % at ≈ 1.1k keys). A plan holds
/// both forms and each step records the one for its key estimate (0, unknown, takes the folded
/// form); the same bits either way. `u32::MAX` (the default until the crossover is measured)
/// folds at every length; `QWGPU_ATTN_FOLD_KEYS=N` at start-up, [`set_attention_fold_keys`]
/// for plans built afterwards.
pub fn attention_fold_keys() -> u32 {
    knob(
        &FOLD_KEYS,
        &FOLD_KEYS_ENV,
        "QWGPU_ATTN_FOLD_KEYS",
        1..=u32::MAX,
        u32::MAX,
    )
}

/// Sets [`attention_fold_keys`] for plans built afterwards (`None`: the start-up choice).
pub fn set_attention_fold_keys(n: Option<u32>) {
    FOLD_KEYS.store(
        n.map_or(0, |n| n.max(1)),
        std::sync::atomic::Ordering::Relaxed,
    );
}

static SPLIT_HEADS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static SPLIT_HEADS_ENV: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// The most query heads one workgroup of the split pass takes ([`ATTN_SPLIT_HEADS`] unless
/// `QWGPU_ATTN_SPLIT_HEADS=N`, 1 to 8, read at start-up, or [`set_attention_split_heads`] says
/// otherwise). Heads that share a kv head then read each key and value vector of a chunk once
/// between them; each head's partial has the bits of one workgroup per head (tested), so this
/// only changes speed. The count used is the largest divisor of the GQA group size within it
/// whose workgroup memory the device allows.
pub fn attention_split_heads() -> u32 {
    knob(
        &SPLIT_HEADS,
        &SPLIT_HEADS_ENV,
        "QWGPU_ATTN_SPLIT_HEADS",
        1..=8,
        ATTN_SPLIT_HEADS,
    )
}

/// Sets [`attention_split_heads`] for plans built afterwards (taken into 1..=8; `None`: the
/// start-up choice).
pub fn set_attention_split_heads(n: Option<u32>) {
    SPLIT_HEADS.store(
        n.map_or(0, |n| n.clamp(1, 8)),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Workgroup memory of the split pass with `hg` heads per workgroup (see `attention.wgsl`): the
/// final pass's arrays without its output row, with the grouped form's block maxima.
fn split_pass_shared_bytes(head_dim: u32, hg: u32) -> u32 {
    final_pass_shared_bytes(head_dim, hg) - (head_dim / 4) * 16 + hg * 4
}

/// Query heads per split-pass workgroup for these dims on this device: the largest divisor of
/// the GQA group size (n_heads / n_kv_heads) up to `most` whose workgroup memory fits.
pub fn split_heads_for(gpu: &Gpu, d: &AttnDims, most: u32) -> u32 {
    split_heads_with(gpu, d, most, 0)
}

/// [`split_heads_for`] with `extra` bytes of workgroup memory besides (the prep's fold).
fn split_heads_with(gpu: &Gpu, d: &AttnDims, most: u32, extra: u32) -> u32 {
    let group = (d.n_heads / d.n_kv_heads.max(1)).max(1);
    (1..=most.min(group).min(8))
        .rev()
        .find(|&hg| {
            group % hg == 0
                && split_pass_shared_bytes(d.head_dim, hg) + extra
                    <= gpu.limits.max_compute_workgroup_storage_size
        })
        .unwrap_or(1)
}

/// Workgroup memory of the final pass with `qr` rows per workgroup (see `attention.wgsl`).
fn final_pass_shared_bytes(head_dim: u32, qr: u32) -> u32 {
    let d4 = head_dim / 4;
    qr * d4 * 16 + qr * ATTN_WG * 4 + 2 * qr * ATTN_BK * 4 + ATTN_WG * 16 + ATTN_WG * 4 + d4 * 16
}

/// Whether decode and verify rows should take the split pass on this device by default: GPUs
/// yes; CPU adapters (lavapipe, SwiftShader) pay per launched workgroup and gain nothing from
/// spreading the keys, so they run the one-pass path (identical bits either way).
pub fn split_by_default(gpu: &Gpu) -> bool {
    gpu.info.device_type != wgpu::DeviceType::Cpu
}

/// Whether [`attention_xq`] can also write its output as integer planes: whole words per head
/// (head_dim a multiple of 8), whole blocks per row, and the device binds 8 storage buffers.
pub fn attention_writes_planes(gpu: &Gpu, d: &AttnDims) -> bool {
    d.head_dim % 8 == 0
        && (d.n_heads * d.head_dim) % crate::ops::xquant::BLOCK == 0
        && gpu.limits.max_storage_buffers_per_shader_stage >= 8
}

/// [`attention_with_scratch`], and with `planes` the output also as the integer planes
/// (`xq_planes.wgsl`) of the o_proj matmul on it ([`crate::ops::matmul::matmul_xq`]): the bits
/// an xquant dispatch on `out` would write, without the dispatch. Only where
/// [`attention_writes_planes`] holds; `planes` holds rows of `xquant::q_stride(Hq·D)` vec4 (rows
/// of the step past those it holds get none).
#[allow(clippy::too_many_arguments)]
pub async fn attention_xq(
    gpu: &Gpu,
    d: &AttnDims,
    q: &GpuBuffer,
    gate: Act<'_>,
    k_cache: &GpuBuffer,
    v_cache: &GpuBuffer,
    scratch: Option<&GpuBuffer>,
    out: &GpuBuffer,
    planes: Option<&GpuBuffer>,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    attention_xq_rows(
        gpu, d, q, gate, k_cache, v_cache, scratch, out, planes, 1, step,
    )
    .await
}

/// [`attention_xq`] with up to `rows` query rows per workgroup of the final pass
/// ([`attention_rows`]; the same bits for any count, fewer reads of the cache for prompt chunks;
/// 1 where the device's workgroup memory does not hold the larger tile).
#[allow(clippy::too_many_arguments)]
pub async fn attention_xq_rows(
    gpu: &Gpu,
    d: &AttnDims,
    q: &GpuBuffer,
    gate: Act<'_>,
    k_cache: &GpuBuffer,
    v_cache: &GpuBuffer,
    scratch: Option<&GpuBuffer>,
    out: &GpuBuffer,
    planes: Option<&GpuBuffer>,
    rows: u32,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    attention_fold(
        gpu, d, q, gate, k_cache, v_cache, scratch, out, planes, rows, None, step,
    )
    .await
}

/// The attention prep ([`attn_prep`]) folded into the split pass of [`attention_fold`]: the
/// projections' outputs are `gate`'s rows (q|gate at its column, k at `k_col`, v at `v_col`), and
/// every call on the plan has at most `rows` rows, all of them split rows ([`attention_folds`]).
#[derive(Clone, Copy)]
pub struct PrepFold<'a> {
    pub k_col: u32,
    pub v_col: u32,
    pub q_norm: &'a GpuBuffer,
    pub k_norm: &'a GpuBuffer,
    pub rows: u32,
    /// The final pass folded into the split pass too ([`attention_combines`]): zeroed counters
    /// (at least [`combine_counter_bytes`]; the pass leaves them zero), and its last workgroup
    /// for each row and head merges the partials and writes the output.
    pub combine: Option<&'a GpuBuffer>,
}

/// Bytes of the counters of [`PrepFold::combine`] for calls of up to `rows` rows.
pub fn combine_counter_bytes(d: &AttnDims, rows: u32) -> u64 {
    rows.max(1) as u64 * d.n_heads as u64 * 4
}

/// Whether the split pass can also do the final pass's work ([`PrepFold::combine`]): the last
/// workgroup of each (row, head) merges the partials the others wrote, which needs
/// storageBarrier's device-scope release and acquire around an atomic count (Vulkan's; WGSL
/// promises it nowhere else), and ten storage buffers.
pub fn attention_combines(gpu: &Gpu) -> bool {
    gpu.info.backend == wgpu::Backend::Vulkan
        && gpu.limits.max_storage_buffers_per_shader_stage >= 10
}

/// Rows whose partials `scratch` holds (0 without one).
fn scratch_rows(gpu: &Gpu, d: &AttnDims, scratch: Option<&GpuBuffer>) -> u64 {
    scratch.map_or(0, |b| {
        b.size.min(gpu.caps.max_binding) / attention_scratch_bytes(d, 1).max(1)
    })
}

/// Workgroup memory the fold adds to the split pass (`attn_rope.wgsl`'s arrays).
fn fold_shared_bytes(head_dim: u32) -> u32 {
    let slots = ATTN_WG / 64;
    slots * 64 * 4 + slots * head_dim.div_ceil(64) * 64 * 4
}

/// Whether [`attention_fold`] can fold the prep into the split pass for calls of up to `rows`
/// rows with this scratch: every row a split row (the scratch holds them), both forms of the
/// split pass within the device's workgroup memory with the fold's arrays, and the folded pass's
/// seven storage buffers.
pub fn attention_folds(gpu: &Gpu, d: &AttnDims, scratch: Option<&GpuBuffer>, rows: u32) -> bool {
    let split_rows = scratch_rows(gpu, d, scratch);
    let fold = fold_shared_bytes(d.head_dim);
    // (The grouped form takes fewer heads where the fold's arrays leave less room.)
    let hg = split_heads_with(gpu, d, attention_split_heads(), fold);
    let limit = gpu.limits.max_compute_workgroup_storage_size;
    rows >= 1
        && split_rows >= rows as u64
        && d.head_dim <= MAX_HEAD_DIM
        && split_pass_shared_bytes(d.head_dim, 1) + fold <= limit
        && split_pass_shared_bytes(d.head_dim, hg) + fold <= limit
        && gpu.limits.max_storage_buffers_per_shader_stage >= 7
}

static FOLD: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static FOLD_ENV: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// How much of attention decode and verify plans fold into the split pass where
/// [`attention_folds`] (and for 2, [`attention_combines`]) allows it, each the same bits
/// (tested): 0 nothing, 1 the prep (one dispatch fewer per attention layer), 2 the prep and the
/// final pass (two fewer). 1 unless `QWGPU_ATTN_FOLD=N` (read at start-up) or
/// [`set_attention_fold`] says otherwise. 2 rests on storageBarrier's device-scope ordering
/// between workgroups (its tests pass on lavapipe and an H100). On an H100 the folds gain at
/// short contexts (64–320 keys: plain decode +0.5 % / +1.2 % for 1 / 2 over 0) and lose a little
/// at ≈ 1.1k keys (−0.25 % / −0.5 %): 1 is the compromise (`bench/results/2026-12-07-f/`).
pub fn attention_fold_level() -> u32 {
    // (A setter stores 10 + level, so that level 0 is not "unset".)
    let v = knob(&FOLD, &FOLD_ENV, "QWGPU_ATTN_FOLD", 0..=2, 1);
    v.checked_sub(10).unwrap_or(v)
}

/// Sets [`attention_fold_level`] for plans built afterwards (taken into 0..=2; `None`: the
/// start-up choice).
pub fn set_attention_fold(level: Option<u32>) {
    FOLD.store(
        level.map_or(0, |n| 10 + n.min(2)),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// [`attention_xq_rows`], and with `fold` the attention prep done by the split pass instead of
/// an [`attn_prep`] dispatch (`q` is then never read): row t's workgroups normalize and rotate
/// their query heads themselves, and those whose chunk holds a new row's position write its key
/// and value into the caches before reading them, with attn_prep's bits.
#[allow(clippy::too_many_arguments)]
pub async fn attention_fold(
    gpu: &Gpu,
    d: &AttnDims,
    q: &GpuBuffer,
    gate: Act<'_>,
    k_cache: &GpuBuffer,
    v_cache: &GpuBuffer,
    scratch: Option<&GpuBuffer>,
    out: &GpuBuffer,
    planes: Option<&GpuBuffer>,
    rows: u32,
    fold: Option<PrepFold<'_>>,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    let what = "attention";
    let fold = fold.as_ref();
    let qr = if rows > 1
        && final_pass_shared_bytes(d.head_dim, rows)
            <= gpu.limits.max_compute_workgroup_storage_size
    {
        rows.min(8)
    } else {
        1
    };
    if planes.is_some() && !attention_writes_planes(gpu, d) {
        return Err(bad(
            what,
            format!(
                "head dim {} x {} heads cannot be written as integer planes here",
                d.head_dim, d.n_heads
            ),
        ));
    }
    check_dims(what, d)?;
    check_caches(gpu, what, d, k_cache, v_cache)?;
    let max_rows = max_rows_attention(d, q, gate, out);
    if max_rows == 0 {
        return Err(bad(what, "an activation buffer cannot hold one row".into()));
    }
    let per_row = attention_scratch_bytes(d, 1);
    let split_rows = scratch_rows(gpu, d, scratch).min(max_rows as u64) as u32;
    if d.streams > 0 && qr > 1 {
        return Err(bad(
            what,
            "independent streams take one query row per workgroup".into(),
        ));
    }
    let base = attention_defines(d.head_dim)
        .flag("KV_F16", d.kv_f16)
        .flag("STREAMS", d.streams > 0);
    let params = AttentionParams {
        n_heads: d.n_heads,
        n_kv_heads: d.n_kv_heads,
        head_dim: d.head_dim,
        max_ctx: d.max_ctx,
        max_rows,
        split_rows,
        gate_stride: gate.stride,
        gate_col: gate.col,
        scale: (d.head_dim as f64).powf(-0.5) as f32,
        q_stride: crate::ops::xquant::q_stride(d.n_heads * d.head_dim),
        xq_rows: planes.map_or(0, |b| {
            (b.size / crate::ops::xquant::row_bytes(d.n_heads * d.head_dim)).min(u32::MAX as u64)
                as u32
        }),
        k_col: fold.map_or(0, |f| f.k_col),
        v_col: fold.map_or(0, |f| f.v_col),
        rotary_dim: d.rotary_dim,
        eps: d.eps,
        log2_theta: d.rope_theta.log2(),
    };
    let u = gpu.uniform("attention.params", &params);
    // Without a scratch the final pass binds `q` in its place (never read: split_rows = 0).
    let part = match scratch {
        Some(b) if split_rows > 0 => b.slice(0, split_rows as u64 * per_row),
        _ => q.whole(),
    };
    let mut out_d = Vec::new();
    if let Some(f) = fold {
        let (hd, hkv) = (d.head_dim as u64, d.n_kv_heads as u64);
        check_bytes(what, "q_norm", f.q_norm, hd * 4)?;
        check_bytes(what, "k_norm", f.k_norm, hd * 4)?;
        let kv_rows = rows_of(&Act::at(gate.buf, gate.stride, f.k_col), hkv * hd)
            .min(rows_of(&Act::at(gate.buf, gate.stride, f.v_col), hkv * hd));
        if !attention_folds(gpu, d, scratch, f.rows)
            || kv_rows < f.rows as u64
            || (split_rows as u64) < f.rows as u64
        {
            return Err(bad(
                what,
                format!(
                    "the prep cannot be folded into the split pass for {} rows here",
                    f.rows
                ),
            ));
        }
        if let Some(c) = f.combine {
            if !attention_combines(gpu) {
                return Err(bad(
                    what,
                    "the final pass cannot be folded into the split pass on this device".into(),
                ));
            }
            check_bytes(
                what,
                "combine counters",
                c,
                combine_counter_bytes(d, f.rows),
            )?;
        }
    }
    let combine = fold.and_then(|f| f.combine);
    if let (Some(pb), true) = (planes, combine.is_some()) {
        if params.xq_rows == 0 {
            return Err(bad(
                what,
                format!(
                    "the plane buffer holds {} bytes, less than one row",
                    pb.size
                ),
            ));
        }
    }
    let split_flags = |b: Defines| {
        b.flag("SPLIT", true)
            .flag("PREP", fold.is_some())
            .flag("COMBINE", combine.is_some())
            .flag("XQ", combine.is_some() && planes.is_some())
    };
    if split_rows > 0 {
        let mut res = vec![
            u.whole(),
            step.binding(),
            if fold.is_some() {
                gate.buf.whole()
            } else {
                q.whole()
            },
            k_cache.whole(),
            v_cache.whole(),
            part.clone(),
        ];
        if let Some(f) = fold {
            res.push(f.q_norm.whole());
            res.push(f.k_norm.whole());
        }
        if let Some(c) = combine {
            res.push(c.whole());
            res.push(out.whole());
            if let Some(pb) = planes {
                res.push(pb.whole());
            }
        }
        // One workgroup per head below `attention_group_keys` keys, the heads of a GQA group
        // together from there (the same bits; the step's key estimate picks one).
        let hg = split_heads_with(
            gpu,
            d,
            attention_split_heads(),
            if fold.is_some() {
                fold_shared_bytes(d.head_dim)
            } else {
                0
            },
        );
        let gk = attention_group_keys();
        let pipeline = gpu
            .pipeline("attention.wgsl", &split_flags(base.clone()))
            .await?;
        let mut grid = Grid::fixed(split_rows * d.n_heads * attention_chunks());
        if hg > 1 {
            grid = grid.for_keys(0, gk - 1);
        }
        out_d.push(gpu.dispatch("attention.split", &pipeline, &res, grid));
        if hg > 1 {
            let pipeline = gpu
                .pipeline(
                    "attention.wgsl",
                    &split_flags(base.clone()).flag("SPLITG", true).set("QR", hg),
                )
                .await?;
            out_d.push(
                gpu.dispatch(
                    "attention.split",
                    &pipeline,
                    &res,
                    Grid::fixed(split_rows * (d.n_heads / hg) * attention_chunks())
                        .for_keys(gk, u32::MAX),
                ),
            );
        }
        if combine.is_some() {
            return Ok(out_d);
        }
    }
    let pipeline = gpu
        .pipeline(
            "attention.wgsl",
            &base
                .flag("SPLIT", false)
                .flag("XQ", planes.is_some())
                .set("QR", qr)
                .flag("QROWS", qr > 1),
        )
        .await?;
    let mut res = vec![
        u.whole(),
        step.binding(),
        q.whole(),
        k_cache.whole(),
        v_cache.whole(),
        part,
        gate.buf.whole(),
        out.whole(),
    ];
    if let Some(pb) = planes {
        if params.xq_rows == 0 {
            return Err(bad(
                what,
                format!(
                    "the plane buffer holds {} bytes, less than one row",
                    pb.size
                ),
            ));
        }
        res.push(pb.whole());
    }
    let grid = if qr > 1 {
        Grid::per_tile(d.n_heads, qr)
    } else {
        Grid::per_token(d.n_heads)
    };
    out_d.push(gpu.dispatch(what, &pipeline, &res, grid));
    Ok(out_d)
}

fn prep_defines() -> Defines {
    Defines::new()
        .set("PARAMS", AttnPrepParams::WGSL)
        .set("WG", PREP_WG)
        .set("MAX_D", MAX_HEAD_DIM)
}

/// The attention kernel's defines for a head dim (without the SPLIT flag).
fn attention_defines(head_dim: u32) -> Defines {
    // The loop counts of the kernel's phases (its consts; defines so that `#for` can write the
    // loops out): threads per key, score vec4s per thread, key slices, keys per slice.
    let d4 = head_dim / 4;
    let lpk = ATTN_WG / ATTN_BK;
    let ks = (ATTN_WG / d4.max(1)).max(1);
    Defines::new()
        .set("PARAMS", AttentionParams::WGSL)
        .set("WG", ATTN_WG)
        .set("BK", ATTN_BK)
        .set("ATT_LPK", lpk)
        .set("ATT_NI", d4.div_ceil(lpk))
        .set("ATT_KS", ks)
        .set("ATT_KPS", ATTN_BK.div_ceil(ks))
        .set("HEAD_DIM", head_dim)
        .set("NS", attention_chunks())
        .set("CK_MIN", ATTN_CK_MIN)
        .set("QR", 1)
}

/// Every variant (for the offline naga checks): the head dims of the family and the fixtures.
pub fn variants(_base: &Defines) -> Vec<(&'static str, Defines)> {
    let mut v = vec![
        ("attn_prep.wgsl", prep_defines()),
        ("attn_prep.wgsl", prep_defines().flag("KV_F16", true)),
        ("attn_prep.wgsl", prep_defines().flag("STREAMS", true)),
        (
            "attn_prep.wgsl",
            prep_defines().flag("KV_F16", true).flag("STREAMS", true),
        ),
    ];
    for (hd, f16) in [32, 64, 128, 256]
        .into_iter()
        .flat_map(|hd| [(hd, false), (hd, true)])
    {
        let attention_defines = |hd| attention_defines(hd).flag("KV_F16", f16);
        v.push(("attention.wgsl", attention_defines(hd).flag("SPLIT", true)));
        for hg in [2, 3, 4, 6, 8] {
            v.push((
                "attention.wgsl",
                attention_defines(hd)
                    .flag("SPLIT", true)
                    .flag("SPLITG", true)
                    .set("QR", hg),
            ));
        }
        v.push(("attention.wgsl", attention_defines(hd).flag("SPLIT", false)));
        v.push((
            "attention.wgsl",
            attention_defines(hd).flag("SPLIT", false).flag("XQ", true),
        ));
        // The prep folded into the split pass (decode tiles), both forms, one sequence or streams.
        for streams in [false, true] {
            let folded = |d: Defines| {
                d.flag("SPLIT", true)
                    .flag("PREP", true)
                    .flag("STREAMS", streams)
            };
            v.push(("attention.wgsl", folded(attention_defines(hd))));
            // And the final pass folded in too (with and without o_proj's planes).
            for xq in [false, true] {
                let combined = |d: Defines| folded(d).flag("COMBINE", true).flag("XQ", xq);
                v.push(("attention.wgsl", combined(attention_defines(hd))));
                for hg in [2, 6] {
                    v.push((
                        "attention.wgsl",
                        combined(attention_defines(hd))
                            .flag("SPLITG", true)
                            .set("QR", hg),
                    ));
                }
            }
            for hg in [2, 6, 8] {
                v.push((
                    "attention.wgsl",
                    folded(attention_defines(hd))
                        .flag("SPLITG", true)
                        .set("QR", hg),
                ));
            }
        }
        // Independent streams (a batch): the split pass in both forms and the final pass.
        let streams = |d: Defines| d.flag("STREAMS", true);
        v.push((
            "attention.wgsl",
            streams(attention_defines(hd).flag("SPLIT", true)),
        ));
        v.push((
            "attention.wgsl",
            streams(
                attention_defines(hd)
                    .flag("SPLIT", true)
                    .flag("SPLITG", true)
                    .set("QR", 8),
            ),
        ));
        for xq in [false, true] {
            v.push((
                "attention.wgsl",
                streams(attention_defines(hd).flag("SPLIT", false).flag("XQ", xq)),
            ));
        }
        for qr in [2, ATTN_QR] {
            for xq in [false, true] {
                v.push((
                    "attention.wgsl",
                    attention_defines(hd)
                        .flag("SPLIT", false)
                        .flag("XQ", xq)
                        .set("QR", qr)
                        .flag("QROWS", true),
                ));
            }
        }
    }
    v.dedup();
    v
}
