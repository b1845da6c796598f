//! Gated-DeltaNet kernels (spec §4.6, mlx-lm `GatedDeltaNet`), all f32:
//!
//! 1. [`gdn_conv`] (`gdn_conv.wgsl`): causal depthwise conv over time + silu, conv-state update and
//!    snapshot;
//! 2. [`gdn_prep`] (`gdn_prep.wgsl`): q/k normalization (mlx-lm `normalize_qk`) in place, and the
//!    gates beta = sigmoid(b), g = exp(-exp(A_log) · softplus(a + dt_bias));
//! 3. [`gdn_recurrence`] (`gdn_recurrence.wgsl`): the gated delta rule over the step's rows, state
//!    kept on the GPU, snapshot after `n_confirmed` rows (spec §7.4);
//! 4. [`gated_norm`] (`gated_norm.wgsl`): silu(z) · rms_norm(y, weight, eps) per (row, value head).
//!
//! Buffer layouts (row-major, f32 unless noted; T = the step's `n_tokens`):
//! * qkv projection: [T, conv_dim] columns of a row, conv_dim = 2·Hk·Dk + Hv·Dv (q | k | v);
//! * `conv_w`: [conv_dim, K] (tap K-1 multiplies the current token); `conv_state`, `conv_snap`:
//!   [K-1, conv_dim], the previous K-1 raw qkv rows, oldest first;
//! * `conv_out`: [T, conv_dim] = q [Hk, Dk] | k [Hk, Dk] | v [Hv, Dv] (after silu; q, k normalized
//!   in place by `gdn_prep`);
//! * `gates`: [T, 2·Hv] = beta [Hv] | g [Hv];
//! * `state`, `snap`: [Hv, Dv, Dk] (row = value dim, mlx-lm's layout);
//! * `y`, gated-norm `out`: [T, Hv·Dv] head-major; z: [T, Hv·Dv] columns of a row.
//!
//! Every kernel computes a row in a fixed order that does not depend on T (batch invariant), and
//! clamps T to the rows its buffers hold, so no index leaves a binding.

use crate::gpu::{Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, ParamStruct, StepSlot};
use crate::ops::Act;

/// Shapes of one Gated-DeltaNet layer (27B: Hk 16, Hv 48, Dk = Dv = 128, K = 4, eps 1e-6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GdnDims {
    pub n_k_heads: u32,
    pub n_v_heads: u32,
    pub k_head_dim: u32,
    pub v_head_dim: u32,
    /// Conv taps K (`linear_conv_kernel_dim`).
    pub conv_kernel: u32,
    /// The gated norm's eps (`rms_norm_eps`).
    pub eps: f32,
    /// 0: the rows of a call are successive tokens of one sequence. n > 0: independent streams
    /// (a [`crate::model::Batch`]): row t reads and updates slot t of the conv and recurrent
    /// states ([n, ...] each), with no snapshot (the `STREAMS` pipelines).
    pub streams: u32,
}

impl GdnDims {
    /// Hk·Dk.
    pub fn key_dim(&self) -> u32 {
        self.n_k_heads * self.k_head_dim
    }
    /// Hv·Dv.
    pub fn value_dim(&self) -> u32 {
        self.n_v_heads * self.v_head_dim
    }
    /// 2·key_dim + value_dim: the channels of the conv (and the width of a qkv row).
    pub fn conv_dim(&self) -> u32 {
        2 * self.key_dim() + self.value_dim()
    }
    /// Elements of the conv state (and of its snapshot): [K-1, conv_dim].
    pub fn conv_state_len(&self) -> u64 {
        (self.conv_kernel.saturating_sub(1)) as u64 * self.conv_dim() as u64
    }
    /// Elements of the recurrent state (and of its snapshot): [Hv, Dv, Dk].
    pub fn state_len(&self) -> u64 {
        self.n_v_heads as u64 * self.v_head_dim as u64 * self.k_head_dim as u64
    }

    fn check(&self) -> Result<(), GpuError> {
        let ok = self.n_k_heads > 0
            && self.n_v_heads > 0
            && self.n_v_heads % self.n_k_heads == 0
            && self.k_head_dim > 0
            && self.v_head_dim > 0
            && self.conv_kernel >= 1
            && self.conv_kernel <= CONV_KMAX
            && self.conv_kernel - 1 <= CONV_TILE;
        if ok {
            Ok(())
        } else {
            Err(bad("gdn", format!("unsupported dims {self:?} (Hv must be a multiple of Hk; 1 <= K <= {CONV_KMAX})")))
        }
    }
}

/// The l2-norm eps mlx-lm passes to `normalize_qk` (a constant, not `rms_norm_eps`).
pub const QK_L2_EPS: f64 = 1e-6;

/// mlx-lm `normalize_qk` with inv_scale = Dk^-0.5: returns (q_scale, k_scale, rms eps), i.e.
/// q = q_scale · rms_norm(q, eps) and k = k_scale · rms_norm(k, eps), with q_scale = inv_scale²,
/// k_scale = inv_scale and eps = QK_L2_EPS · inv_scale² (computed in f64 as Python does).
pub fn qk_norm_constants(k_head_dim: u32) -> (f32, f32, f32) {
    let inv = (k_head_dim as f64).powf(-0.5);
    (
        (inv * inv) as f32,
        inv as f32,
        (QK_L2_EPS * inv * inv) as f32,
    )
}

/// Channels (threads) per conv workgroup, tokens per conv workgroup, most conv taps.
pub const CONV_WG: u32 = 64;
pub const CONV_TILE: u32 = 8;
pub const CONV_KMAX: u32 = 8;
/// Threads per workgroup of the prep and gated-norm kernels, and of the recurrence.
pub const NORM_WG: u32 = 64;
pub const REC_WG: u32 = 64;

crate::gpu_struct! {
    /// `gdn_conv.wgsl` parameters.
    pub struct GdnConvParams as "Params" {
        conv_dim: u32,
        /// K
        taps: u32,
        /// qkv row stride and the column of channel 0 (elements)
        x_stride: u32,
        x_col: u32,
        /// rows the qkv and out bindings hold (T is clamped to it)
        rows_cap: u32,
    }
}

crate::gpu_struct! {
    /// `gdn_prep.wgsl` parameters.
    pub struct GdnPrepParams as "Params" {
        n_k_heads: u32,
        n_v_heads: u32,
        dk: u32,
        conv_dim: u32,
        b_stride: u32,
        b_col: u32,
        a_stride: u32,
        a_col: u32,
        rows_cap: u32,
        q_scale: f32,
        k_scale: f32,
        qk_eps: f32,
    }
}

crate::gpu_struct! {
    /// `gdn_conv_prep.wgsl` parameters (gdn_conv's, then gdn_prep's).
    pub struct GdnConvPrepParams as "Params" {
        conv_dim: u32,
        taps: u32,
        x_stride: u32,
        x_col: u32,
        rows_cap: u32,
        n_k_heads: u32,
        n_v_heads: u32,
        dk: u32,
        b_stride: u32,
        b_col: u32,
        a_stride: u32,
        a_col: u32,
        q_scale: f32,
        k_scale: f32,
        qk_eps: f32,
    }
}

crate::gpu_struct! {
    /// `gdn_recurrence.wgsl` parameters.
    pub struct GdnRecurrenceParams as "Params" {
        n_k_heads: u32,
        n_v_heads: u32,
        dk: u32,
        dv: u32,
        conv_dim: u32,
        /// workgroups per value head: ceil(Dv / rows per workgroup)
        blocks: u32,
        rows_cap: u32,
        /// GATED only: z's row stride and column, the gated norm's epsilon
        z_stride: u32,
        z_col: u32,
        eps: f32,
        /// PREP only: the b and a columns of the projection rows (stride z_stride), and the q/k
        /// normalization constants ([`qk_norm_constants`])
        b_col: u32,
        a_col: u32,
        q_scale: f32,
        k_scale: f32,
        qk_eps: f32,
        /// XQ only: vec4<u32> per row of the output planes (`xquant::q_stride(Hv·Dv)`)
        q_stride: u32,
    }
}

crate::gpu_struct! {
    /// `gated_norm.wgsl` parameters.
    pub struct GatedNormParams as "Params" {
        n_v_heads: u32,
        dv: u32,
        z_stride: u32,
        z_col: u32,
        rows_cap: u32,
        eps: f32,
    }
}

/// The defines of each kernel (only the recurrence has a subgroup variant).
pub fn conv_defines() -> Defines {
    Defines::new()
        .set("PARAMS", <GdnConvParams as ParamStruct>::WGSL)
        .set("WG", CONV_WG)
        .set("TILE", CONV_TILE)
        .set("KMAX", CONV_KMAX)
}

/// Threads of the fused conv + prep workgroup for key heads of `dk`: one per head channel, and
/// at least the prep's NORM_WG (None when a head does not fit one workgroup: 256 channels).
pub fn conv_prep_wg(dk: u32) -> Option<u32> {
    (dk <= 256).then(|| dk.max(NORM_WG).next_power_of_two())
}

/// Storage buffers `gdn_conv_prep.wgsl` binds (more than WebGPU's default limit of 8: devices
/// below it run the two kernels).
pub const CONV_PREP_STORAGE_BUFFERS: u32 = 11;

pub fn conv_prep_defines(wg: u32) -> Defines {
    Defines::new()
        .set("PARAMS", <GdnConvPrepParams as ParamStruct>::WGSL)
        .set("WG", wg)
        .set("NORM_WG", NORM_WG)
        .set("TILE", CONV_TILE)
        .set("KMAX", CONV_KMAX)
}

pub fn prep_defines() -> Defines {
    Defines::new()
        .set("PARAMS", <GdnPrepParams as ParamStruct>::WGSL)
        .set("WG", NORM_WG)
}

pub fn recurrence_defines(lay: &RecurrenceLayout) -> Defines {
    let d = Defines::new()
        .set("PARAMS", <GdnRecurrenceParams as ParamStruct>::WGSL)
        .set("WG", lay.wg)
        .set("NV4", lay.nv4)
        .set("KQ", lay.kq)
        .set("KQS", lay.kqs)
        .flag("SUBGROUPS", lay.subgroups)
        .flag("GATED", lay.gated)
        .flag("PREP", lay.prep)
        .flag("XQ", lay.xq)
        .flag("HSPLIT", lay.hsplit > 0);
    let d = if lay.hsplit > 0 {
        d.set("DV", lay.hsplit)
    } else {
        d
    };
    if lay.gated {
        d.set("GN_WG", NORM_WG)
    } else {
        d
    }
}

pub fn gated_norm_defines() -> Defines {
    Defines::new()
        .set("PARAMS", <GatedNormParams as ParamStruct>::WGSL)
        .set("WG", NORM_WG)
}

/// Every variant these kernels build for a device with or without subgroups (`base`'s SUBGROUPS
/// flag), for the head sizes of the Qwen3.5/3.6 family (Dk 128) and of the tests (32, 64).
pub fn variants(base: &Defines) -> Vec<(&'static str, Defines)> {
    let mut v = vec![
        ("gdn_conv.wgsl", conv_defines()),
        ("gdn_prep.wgsl", prep_defines()),
        ("gated_norm.wgsl", gated_norm_defines()),
    ];
    for dk in [32, 64, 128, 256] {
        if let Some(wg) = conv_prep_wg(dk) {
            v.push(("gdn_conv_prep.wgsl", conv_prep_defines(wg)));
            v.push((
                "gdn_conv_prep.wgsl",
                conv_prep_defines(wg).flag("STREAMS", true),
            ));
        }
    }
    for dk in [32u32, 64, 128] {
        for subgroups in [false, base.is_true("SUBGROUPS")] {
            let kq = (dk / 2).div_ceil(REC_WG).max(1);
            let lay = RecurrenceLayout {
                subgroups,
                wg: REC_WG,
                nv4: dk / 16,
                kq,
                kqs: kq * REC_WG,
                gated: false,
                prep: false,
                xq: false,
                hsplit: 0,
            };
            v.push(("gdn_recurrence.wgsl", recurrence_defines(&lay)));
            v.push((
                "gdn_recurrence.wgsl",
                recurrence_defines(&lay).flag("STREAMS", true),
            ));
            for dv in [32, 64, 128] {
                for (prep, xq) in [(false, false), (true, false), (true, true)] {
                    let lay = RecurrenceLayout {
                        prep,
                        xq,
                        ..gated_layout(dk, dv, subgroups)
                    };
                    v.push(("gdn_recurrence.wgsl", recurrence_defines(&lay)));
                }
                // A head over several workgroups (the fused decode form).
                if let Some(lay) = split_layout(dk, dv, subgroups) {
                    for xq in [false, true] {
                        let lay = RecurrenceLayout { xq, ..lay };
                        v.push(("gdn_recurrence.wgsl", recurrence_defines(&lay)));
                    }
                }
                let lay = gated_layout(dk, dv, subgroups);
                v.push((
                    "gdn_recurrence.wgsl",
                    recurrence_defines(&lay).flag("STREAMS", true),
                ));
            }
        }
    }
    v.dedup();
    v
}

fn bad(what: &str, message: impl Into<String>) -> GpuError {
    GpuError::Shader {
        name: what.to_string(),
        message: message.into(),
    }
}

/// Fails unless `buf` holds at least `elems` f32 values.
fn need(what: &str, name: &str, buf: &GpuBuffer, elems: u64) -> Result<(), GpuError> {
    if buf.size / 4 < elems {
        return Err(bad(
            what,
            format!("{name} holds {} f32 values, needs {elems}", buf.size / 4),
        ));
    }
    Ok(())
}

/// Rows of `width` elements an activation view holds (the kernels clamp T to it).
fn act_rows(what: &str, name: &str, a: &Act<'_>, width: u32) -> Result<u32, GpuError> {
    if a.col as u64 + width as u64 > a.stride as u64 {
        return Err(bad(
            what,
            format!(
                "{name}: columns {}..{} do not fit rows of {}",
                a.col,
                a.col as u64 + width as u64,
                a.stride
            ),
        ));
    }
    let elems = a.buf.size / 4;
    let first = a.col as u64 + width as u64;
    let rows = if elems < first {
        0
    } else {
        (elems - first) / a.stride.max(1) as u64 + 1
    };
    Ok(rows.min(u32::MAX as u64) as u32)
}

fn buf_rows(buf: &GpuBuffer, width: u32) -> u32 {
    ((buf.size / 4) / width.max(1) as u64).min(u32::MAX as u64) as u32
}

/// Causal depthwise conv over time, then silu (spec §4.6 step 2), for every row of the step.
///
/// * `qkv`: [T, conv_dim] at `qkv.col` of rows of `qkv.stride` (e.g. the fused projection output
///   [T, qkv | z | b | a]);
/// * `conv_w`: [conv_dim, K]; tap k = K-1 multiplies the current token;
/// * `conv_state`: [K-1, conv_dim], the previous K-1 raw qkv rows, oldest first (zeros at the
///   start of a sequence); afterwards the last K-1 rows of concat(conv_state, qkv rows);
/// * `conv_snap`: [K-1, conv_dim]; when 0 < n_confirmed < n_tokens it receives the conv state as it
///   would be after the first n_confirmed rows (untouched otherwise);
/// * `out`: [T, conv_dim] = silu(conv), must not alias `qkv`.
///
/// Grid: ceil(conv_dim / 64) workgroups of 64 channels × ceil(T / 8) token tiles.
#[allow(clippy::too_many_arguments)]
pub async fn gdn_conv(
    gpu: &Gpu,
    d: &GdnDims,
    qkv: Act<'_>,
    conv_w: &GpuBuffer,
    conv_state: &GpuBuffer,
    conv_snap: &GpuBuffer,
    out: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    const WHAT: &str = "gdn_conv";
    d.check()?;
    let cd = d.conv_dim();
    need(WHAT, "conv_w", conv_w, cd as u64 * d.conv_kernel as u64)?;
    need(WHAT, "conv_state", conv_state, d.conv_state_len())?;
    need(WHAT, "conv_snap", conv_snap, d.conv_state_len())?;
    let rows_cap = act_rows(WHAT, "qkv", &qkv, cd)?.min(buf_rows(out, cd));
    let pipeline = gpu.pipeline("gdn_conv.wgsl", &conv_defines()).await?;
    let params = GdnConvParams {
        conv_dim: cd,
        taps: d.conv_kernel,
        x_stride: qkv.stride,
        x_col: qkv.col,
        rows_cap,
    };
    let u = gpu.uniform("gdn_conv.params", &params);
    let res = [
        u.whole(),
        step.binding(),
        qkv.buf.whole(),
        conv_w.whole(),
        conv_state.whole(),
        conv_snap.whole(),
        out.whole(),
    ];
    Ok(vec![gpu.dispatch(
        WHAT,
        &pipeline,
        &res,
        Grid::per_tile(cd.div_ceil(CONV_WG), CONV_TILE),
    )])
}

/// q/k normalization in place and the gates (spec §4.6 steps 4-5, exactly mlx-lm's
/// `normalize_qk` and `gated_delta_update`), for every row of the step:
/// q ← (1/Dk)·rms_norm(q, 1e-6/Dk), k ← Dk^-0.5·rms_norm(k, 1e-6/Dk) per key head (no weight);
/// beta = sigmoid(b), g = exp(-exp(A_log) · softplus(a + dt_bias)).
///
/// * `conv_out`: [T, conv_dim] (q | k | v); q and k are rewritten, v is left alone;
/// * `b`, `a`: [T, Hv] at their columns (may be views of one buffer);
/// * `a_log`, `dt_bias`: [Hv];
/// * `gates`: [T, 2·Hv] = beta [Hv] | g [Hv].
///
/// Grid: 2·Hk + 1 workgroups of 64 threads per row (one per q or k head, one for the gates).
#[allow(clippy::too_many_arguments)]
pub async fn gdn_prep(
    gpu: &Gpu,
    d: &GdnDims,
    conv_out: &GpuBuffer,
    b: Act<'_>,
    a: Act<'_>,
    a_log: &GpuBuffer,
    dt_bias: &GpuBuffer,
    gates: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    const WHAT: &str = "gdn_prep";
    d.check()?;
    let hv = d.n_v_heads;
    need(WHAT, "a_log", a_log, hv as u64)?;
    need(WHAT, "dt_bias", dt_bias, hv as u64)?;
    let rows_cap = buf_rows(conv_out, d.conv_dim())
        .min(act_rows(WHAT, "b", &b, hv)?)
        .min(act_rows(WHAT, "a", &a, hv)?)
        .min(buf_rows(gates, 2 * hv));
    let pipeline = gpu.pipeline("gdn_prep.wgsl", &prep_defines()).await?;
    let (q_scale, k_scale, qk_eps) = qk_norm_constants(d.k_head_dim);
    let params = GdnPrepParams {
        n_k_heads: d.n_k_heads,
        n_v_heads: hv,
        dk: d.k_head_dim,
        conv_dim: d.conv_dim(),
        b_stride: b.stride,
        b_col: b.col,
        a_stride: a.stride,
        a_col: a.col,
        rows_cap,
        q_scale,
        k_scale,
        qk_eps,
    };
    let u = gpu.uniform("gdn_prep.params", &params);
    let res = [
        u.whole(),
        step.binding(),
        conv_out.whole(),
        b.buf.whole(),
        a.buf.whole(),
        a_log.whole(),
        dt_bias.whole(),
        gates.whole(),
    ];
    Ok(vec![gpu.dispatch(
        WHAT,
        &pipeline,
        &res,
        Grid::per_token(2 * d.n_k_heads + 1),
    )])
}

/// [`gdn_conv`] then [`gdn_prep`] in one dispatch (`gdn_conv_prep.wgsl`), with the same results
/// bit for bit; the same arguments as the two. Needs key heads of at most 256 channels
/// ([`conv_prep_wg`]); callers fall back to the two kernels otherwise.
#[allow(clippy::too_many_arguments)]
pub async fn gdn_conv_prep(
    gpu: &Gpu,
    d: &GdnDims,
    qkv: Act<'_>,
    conv_w: &GpuBuffer,
    conv_state: &GpuBuffer,
    conv_snap: &GpuBuffer,
    out: &GpuBuffer,
    b: Act<'_>,
    a: Act<'_>,
    a_log: &GpuBuffer,
    dt_bias: &GpuBuffer,
    gates: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    const WHAT: &str = "gdn_conv_prep";
    d.check()?;
    let wg = conv_prep_wg(d.k_head_dim).ok_or_else(|| {
        bad(
            WHAT,
            format!(
                "key heads of {} channels do not fit one workgroup (at most 256)",
                d.k_head_dim
            ),
        )
    })?;
    let (cd, hv) = (d.conv_dim(), d.n_v_heads);
    need(WHAT, "conv_w", conv_w, cd as u64 * d.conv_kernel as u64)?;
    need(
        WHAT,
        "conv_state",
        conv_state,
        d.conv_state_len() * d.streams.max(1) as u64,
    )?;
    need(WHAT, "conv_snap", conv_snap, d.conv_state_len())?;
    need(WHAT, "a_log", a_log, hv as u64)?;
    need(WHAT, "dt_bias", dt_bias, hv as u64)?;
    let mut rows_cap = act_rows(WHAT, "qkv", &qkv, cd)?
        .min(buf_rows(out, cd))
        .min(act_rows(WHAT, "b", &b, hv)?)
        .min(act_rows(WHAT, "a", &a, hv)?)
        .min(buf_rows(gates, 2 * hv));
    if d.streams > 0 {
        // One row per stream slot: rows past the slots are not computed.
        rows_cap = rows_cap.min(d.streams);
    }
    let pipeline = gpu
        .pipeline(
            "gdn_conv_prep.wgsl",
            &conv_prep_defines(wg).flag("STREAMS", d.streams > 0),
        )
        .await?;
    let (q_scale, k_scale, qk_eps) = qk_norm_constants(d.k_head_dim);
    let params = GdnConvPrepParams {
        conv_dim: cd,
        taps: d.conv_kernel,
        x_stride: qkv.stride,
        x_col: qkv.col,
        rows_cap,
        n_k_heads: d.n_k_heads,
        n_v_heads: hv,
        dk: d.k_head_dim,
        b_stride: b.stride,
        b_col: b.col,
        a_stride: a.stride,
        a_col: a.col,
        q_scale,
        k_scale,
        qk_eps,
    };
    let u = gpu.uniform("gdn_conv_prep.params", &params);
    let res = [
        u.whole(),
        step.binding(),
        qkv.buf.whole(),
        conv_w.whole(),
        conv_state.whole(),
        conv_snap.whole(),
        out.whole(),
        b.buf.whole(),
        a.buf.whole(),
        a_log.whole(),
        dt_bias.whole(),
        gates.whole(),
    ];
    let blocks = 2 * d.n_k_heads + (cd - 2 * d.key_dim()).div_ceil(wg) + 1;
    Ok(vec![gpu.dispatch(
        WHAT,
        &pipeline,
        &res,
        Grid::per_tile(blocks, CONV_TILE),
    )])
}

/// How the recurrence maps state rows onto threads on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecurrenceLayout {
    /// Lane partials combined with subgroup shuffles instead of through workgroup memory (both
    /// variants add in the same order).
    pub subgroups: bool,
    /// Threads per workgroup; each state row is held by [`REC_LANES`] of them, so a workgroup
    /// covers `wg / REC_LANES` value rows.
    pub wg: u32,
    /// vec4 state chunks per thread (Dk / 16).
    pub nv4: u32,
    /// vec4 slots of k|q each thread stages per step (ceil(Dk / 2 / wg)).
    pub kq: u32,
    /// vec4 slots of one k|q staging buffer (at least Dk / 2, at most kq · wg).
    pub kqs: u32,
    /// The gated RMSNorm is applied before y is written (a workgroup holds a whole head, or with
    /// `hsplit` the head's last workgroup out normalizes it).
    pub gated: bool,
    /// (With `gated`) the q/k normalization and the gates are done here too.
    pub prep: bool,
    /// (With `prep`) the output also goes out as `xquant.wgsl`'s integer planes.
    pub xq: bool,
    /// With prep and gated: a head's rows over Dv / (wg / 4) workgroups, the last one out
    /// applying the gated norm (`HSPLIT`); the value is the head's Dv (0: a whole head per
    /// workgroup).
    pub hsplit: u32,
}

/// Threads per state row in the recurrence.
pub const REC_LANES: u32 = 4;

/// The layout of the gated variant for heads of `dk` × `dv`: one workgroup of 4·Dv threads per head.
fn gated_layout(dk: u32, dv: u32, subgroups: bool) -> RecurrenceLayout {
    let wg = REC_LANES * dv;
    RecurrenceLayout {
        subgroups,
        wg,
        nv4: dk / 16,
        kq: (dk / 2).div_ceil(wg).max(1),
        kqs: dk / 2,
        gated: true,
        prep: false,
        xq: false,
        hsplit: 0,
    }
}

/// Value rows per workgroup of the split form ([`RecurrenceLayout::hsplit`]).
pub const SPLIT_ROWS: u32 = 32;

/// The fused form ([`gdn_recurrence_fused`]) with a head's rows over Dv / 32 workgroups of 128
/// threads, or None for heads that are not whole multiples of 32 rows.
fn split_layout(dk: u32, dv: u32, subgroups: bool) -> Option<RecurrenceLayout> {
    let wg = REC_LANES * SPLIT_ROWS;
    if dv % SPLIT_ROWS != 0 || dk % 16 != 0 || dk / 2 > wg * 4 || wg < 2 * NORM_WG {
        return None;
    }
    Some(RecurrenceLayout {
        subgroups,
        wg,
        nv4: dk / 16,
        kq: (dk / 2).div_ceil(wg).max(1),
        kqs: dk / 2,
        gated: true,
        prep: true,
        xq: false,
        hsplit: dv,
    })
}

static SPLIT_RECURRENCE: crate::gpu::Switch =
    crate::gpu::Switch::new("QWGPU_SPLIT_RECURRENCE", false);

/// Whether [`gdn_recurrence_fused`] spreads a head's rows over several workgroups (Dv / 32 of
/// them, the last one out applying the gated norm and the planes) where the device allows it,
/// instead of one workgroup of 4·Dv threads per head: the state moves through four times as many
/// SMs for the 27B. The same bits (tested). Off by default until it is timed on a GPU;
/// `QWGPU_SPLIT_RECURRENCE=1` turns it on at start-up; plans built after
/// [`set_split_recurrence`] follow the new setting.
pub fn split_recurrence() -> bool {
    SPLIT_RECURRENCE.get()
}

/// See [`split_recurrence`].
pub fn set_split_recurrence(on: bool) {
    SPLIT_RECURRENCE.set(Some(on))
}

static GATED_RECURRENCE: crate::gpu::Switch =
    crate::gpu::Switch::new("QWGPU_GATED_RECURRENCE", true);

/// Whether the decode tiles (1 and 2 tokens) run [`gdn_recurrence_gated`] (recurrence and gated
/// norm in one dispatch: 48 fewer per 27B token) where [`gated_recurrence_layout`] allows it. On
/// by default; `QWGPU_GATED_RECURRENCE=0` turns it off at start-up. Plans built after
/// [`set_gated_recurrence`] follow the new setting. Prompt chunks keep the two kernels (many rows
/// per call: the narrow workgroups of the plain recurrence keep more of the GPU busy).
pub fn gated_recurrence() -> bool {
    GATED_RECURRENCE.get()
}

/// See [`gated_recurrence`].
pub fn set_gated_recurrence(on: bool) {
    GATED_RECURRENCE.set(Some(on))
}

static FUSED_GDN: crate::gpu::Switch = crate::gpu::Switch::new("QWGPU_FUSED_GDN", true);

/// Whether the decode tiles run a Gated-DeltaNet layer's steps 1-7 in two dispatches where the
/// device allows it: the input projection with the conv in its epilogue
/// ([`crate::ops::matmul::matmul_normed_conv`]) and [`gdn_recurrence_fused`] (48 fewer dispatches
/// per 27B token than [`gated_recurrence`] alone, the same bits). Needs the folded input norm. On
/// by default; `QWGPU_FUSED_GDN=0` turns it off at start-up; plans built after
/// [`set_fused_gdn`] follow the new setting.
pub fn fused_gdn() -> bool {
    FUSED_GDN.get()
}

/// See [`fused_gdn`].
pub fn set_fused_gdn(on: bool) {
    FUSED_GDN.set(Some(on))
}

/// The layout of [`gdn_recurrence_gated`] for `d` on `gpu`, or None where it does not fit: a
/// workgroup of 4·Dv threads (at most the device's limit and 1024, at least gated_norm's 64), and
/// its workgroup memory within the device's limit. The 27B (Dv 128): 48 workgroups of 512.
pub fn gated_recurrence_layout(gpu: &Gpu, d: &GdnDims) -> Option<RecurrenceLayout> {
    let (dk, dv) = (d.k_head_dim, d.v_head_dim);
    let wg = REC_LANES * dv;
    let max = gpu.limits.max_compute_invocations_per_workgroup.min(1024);
    if dk % 16 != 0 || wg < NORM_WG || wg > max || dk / 2 > wg * 4 {
        return None;
    }
    let base = recurrence_layout(gpu, d);
    let (smax, smin) = (gpu.caps.subgroup_max_size, gpu.caps.subgroup_min_size);
    let subgroups = base.subgroups && smax <= wg && smin > 0 && wg % smax == 0;
    let lay = gated_layout(dk, dv, subgroups);
    // (kq, red_m / red_o, gy, gred, qkred, sg_count)
    let shared = 2 * lay.kqs * 16 + 2 * wg * 4 + dv * 4 + 3 * NORM_WG * 4 + 4;
    (shared <= gpu.limits.max_compute_workgroup_storage_size).then_some(lay)
}

impl RecurrenceLayout {
    /// Value rows per workgroup.
    pub fn rows(&self) -> u32 {
        self.wg / REC_LANES
    }
}

static LANE_SHUFFLES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Overrides [`recurrence_layout`]'s choice between subgroup shuffles and workgroup memory for
/// combining a state row's lane partials, for plans built afterwards (`None`: the device-type
/// rule; shuffles still need usable subgroups). The two give the same bits; tests take each
/// path on one device with it (a CPU adapter picks shuffles, a GPU workgroup memory).
pub fn set_recurrence_lane_shuffles(v: Option<bool>) {
    let code = match v {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    };
    LANE_SHUFFLES.store(code, std::sync::atomic::Ordering::Relaxed);
}

/// The recurrence layout for `d` on `gpu`. For the 27B (Dk 128): 4 threads × 32 columns per row,
/// 16 rows per workgroup of 64, Hv·Dv/16 = 384 workgroups.
///
/// The two reductions give the same bits, so the choice is speed alone: subgroup shuffles where
/// the adapter is a CPU (lavapipe: 25 % faster, its barriers are expensive), workgroup memory on
/// GPUs (H200 through Vulkan: 0.57 against 0.75 µs per step, 4.3 against 4.6 µs per decode call).
/// Subgroups need power-of-two sizes between 4 and the workgroup size.
pub fn recurrence_layout(gpu: &Gpu, d: &GdnDims) -> RecurrenceLayout {
    let dk = d.k_head_dim;
    let (smin, smax) = (gpu.caps.subgroup_min_size, gpu.caps.subgroup_max_size);
    let usable = gpu.caps.subgroups
        && smin.is_power_of_two()
        && smax.is_power_of_two()
        && smin >= REC_LANES
        && smin <= smax
        && smax <= REC_WG;
    let subgroups = usable
        && match LANE_SHUFFLES.load(std::sync::atomic::Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => gpu.info.device_type == wgpu::DeviceType::Cpu,
        };
    let kq = (dk / 2).div_ceil(REC_WG).max(1);
    RecurrenceLayout {
        subgroups,
        wg: REC_WG,
        nv4: dk / 16,
        kq,
        kqs: kq * REC_WG,
        gated: false,
        prep: false,
        xq: false,
        hsplit: 0,
    }
}

/// The gated delta rule over the step's rows (spec §4.6 step 6), per value head h with key head
/// h / (Hv/Hk): S ← g·S; m = S·k; δ = β(v − m); S ← S + δ⊗k; y = S·q.
///
/// * `conv_out`: [T, conv_dim] = q | k (normalized by [`gdn_prep`]) | v;
/// * `gates`: [T, 2·Hv] = beta | g;
/// * `state`: [Hv, Dv, Dk], read at the start and written at the end of the call (stays on the
///   GPU between calls; zeros at the start of a sequence);
/// * `snap`: [Hv, Dv, Dk]; when 0 < n_confirmed < n_tokens it receives the state after row
///   n_confirmed-1 (untouched otherwise);
/// * `y`: [T, Hv·Dv].
///
/// Needs Dk % 16 == 0 and conv_dim % 4 == 0 (vec4 loads). Grid: Hv · ceil(Dv / 16) workgroups of 64
/// threads (see [`recurrence_layout`]); the T steps run sequentially inside, the state held in
/// registers, so the state is read and written once per call. On the H200: 4.3 µs per decode call
/// (6 MiB of state moved, 1.45 TB/s), 5.0 µs for T = 2, 0.57 µs per row in prefill.
#[allow(clippy::too_many_arguments)]
pub async fn gdn_recurrence(
    gpu: &Gpu,
    d: &GdnDims,
    conv_out: &GpuBuffer,
    gates: &GpuBuffer,
    state: &GpuBuffer,
    snap: &GpuBuffer,
    y: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    recurrence_impl(
        gpu,
        d,
        conv_out,
        Some(gates),
        state,
        snap,
        y,
        RecOut::Plain,
        step,
    )
    .await
}

/// What the recurrence does around the delta rule: nothing, the gated norm of its rows
/// ([`gdn_recurrence_gated`]), or also the q/k normalization and the gates
/// ([`gdn_recurrence_fused`]).
#[derive(Clone, Copy)]
enum RecOut<'a> {
    Plain,
    Gated {
        z: Act<'a>,
        weight: &'a GpuBuffer,
    },
    Fused {
        z: Act<'a>,
        b_col: u32,
        a_col: u32,
        a_log: &'a GpuBuffer,
        dt_bias: &'a GpuBuffer,
        weight: &'a GpuBuffer,
        xq: Option<&'a GpuBuffer>,
    },
}

/// The whole Gated-DeltaNet step after the conv in one dispatch (spec §4.6 steps 4-7): the q/k
/// normalization and the gates (`gdn_prep`), the delta rule and the gated norm, from the raw
/// silu'd conv rows (`conv_out`, as the in_proj matmul's conv epilogue writes them) and the
/// projection rows `z` (z at `z.col`, b at `b_col`, a at `a_col`, one stride). `out` receives the
/// normalized, gated rows: the bits of `gdn_conv_prep` + [`gdn_recurrence`] + [`gated_norm`]
/// (tested). Only where [`gated_recurrence_layout`] holds and the device binds 9 storage buffers.
/// With `xq`, the rows also go out as `xquant.wgsl`'s integer planes of out_proj's input (the
/// bits of xquant on `out`; where [`fused_recurrence_takes_planes`] holds).
#[allow(clippy::too_many_arguments)]
pub async fn gdn_recurrence_fused(
    gpu: &Gpu,
    d: &GdnDims,
    conv_out: &GpuBuffer,
    state: &GpuBuffer,
    snap: &GpuBuffer,
    z: Act<'_>,
    b_col: u32,
    a_col: u32,
    a_log: &GpuBuffer,
    dt_bias: &GpuBuffer,
    weight: &GpuBuffer,
    out: &GpuBuffer,
    xq: Option<&GpuBuffer>,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    recurrence_impl(
        gpu,
        d,
        conv_out,
        None,
        state,
        snap,
        out,
        RecOut::Fused {
            z,
            b_col,
            a_col,
            a_log,
            dt_bias,
            weight,
            xq,
        },
        step,
    )
    .await
}

/// Storage buffers [`gdn_recurrence_fused`] binds (one more with planes).
pub const FUSED_RECURRENCE_STORAGE_BUFFERS: u32 = 9;

/// Whether [`gdn_recurrence_fused`] can also write its output as integer planes on this device
/// (heads of a multiple of 32 values, one more storage buffer).
pub fn fused_recurrence_takes_planes(gpu: &Gpu, d: &GdnDims) -> bool {
    d.v_head_dim % crate::ops::xquant::BLOCK == 0
        && gpu.limits.max_storage_buffers_per_shader_stage > FUSED_RECURRENCE_STORAGE_BUFFERS
}

/// [`gdn_recurrence`] followed by [`gated_norm`] in one dispatch: `out` receives
/// silu(z) · (weight ⊙ y / sqrt(mean(y²) + eps)) per (row, head), with the bits of the two kernels
/// (tested). Only where [`gated_recurrence_layout`] holds (an error otherwise); `out` must not
/// alias `z`.
#[allow(clippy::too_many_arguments)]
pub async fn gdn_recurrence_gated(
    gpu: &Gpu,
    d: &GdnDims,
    conv_out: &GpuBuffer,
    gates: &GpuBuffer,
    state: &GpuBuffer,
    snap: &GpuBuffer,
    z: Act<'_>,
    weight: &GpuBuffer,
    out: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    recurrence_impl(
        gpu,
        d,
        conv_out,
        Some(gates),
        state,
        snap,
        out,
        RecOut::Gated { z, weight },
        step,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn recurrence_impl(
    gpu: &Gpu,
    d: &GdnDims,
    conv_out: &GpuBuffer,
    gates: Option<&GpuBuffer>,
    state: &GpuBuffer,
    snap: &GpuBuffer,
    y: &GpuBuffer,
    mode: RecOut<'_>,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    let what = match mode {
        RecOut::Plain => "gdn_recurrence",
        RecOut::Gated { .. } => "gdn_recurrence_gated",
        RecOut::Fused { .. } => "gdn_recurrence_fused",
    };
    d.check()?;
    if d.streams > 0 && matches!(mode, RecOut::Fused { .. }) {
        return Err(bad(
            what,
            "independent streams take the conv and gates from gdn_conv_prep",
        ));
    }
    need(
        what,
        "state",
        state,
        d.state_len() * d.streams.max(1) as u64,
    )?;
    need(what, "snap", snap, d.state_len())?;
    let hv = d.n_v_heads;
    let rows_cap = buf_rows(conv_out, d.conv_dim())
        .min(gates.map_or(u32::MAX, |g| buf_rows(g, 2 * hv)))
        .min(buf_rows(y, d.value_dim()));
    if d.k_head_dim % 16 != 0 || d.conv_dim() % 4 != 0 {
        return Err(bad(
            what,
            format!(
                "needs Dk % 16 == 0 and conv_dim % 4 == 0, got Dk {} and conv_dim {}",
                d.k_head_dim,
                d.conv_dim()
            ),
        ));
    }
    let gated_lay = || {
        gated_recurrence_layout(gpu, d).ok_or_else(|| {
            bad(
                what,
                format!(
                    "a workgroup of {} threads for heads of Dv {} does not fit this device",
                    REC_LANES * d.v_head_dim,
                    d.v_head_dim
                ),
            )
        })
    };
    let (q_scale, k_scale, qk_eps) = qk_norm_constants(d.k_head_dim);
    let mut params = GdnRecurrenceParams {
        n_k_heads: d.n_k_heads,
        n_v_heads: hv,
        dk: d.k_head_dim,
        dv: d.v_head_dim,
        conv_dim: d.conv_dim(),
        blocks: 1,
        rows_cap,
        z_stride: 0,
        z_col: 0,
        eps: d.eps,
        b_col: 0,
        a_col: 0,
        q_scale,
        k_scale,
        qk_eps,
        q_stride: 0,
    };
    let mut res = vec![step.binding(), conv_out.whole()];
    // The split fused form's per-head counts (zeros; every call leaves them at zero).
    let counts;
    let lay = match mode {
        RecOut::Plain => {
            let g = gates.ok_or_else(|| bad(what, "no gates buffer"))?;
            res.extend([g.whole(), state.whole(), snap.whole(), y.whole()]);
            recurrence_layout(gpu, d)
        }
        RecOut::Gated { z, weight } => {
            need(what, "weight", weight, d.v_head_dim as u64)?;
            let g = gates.ok_or_else(|| bad(what, "no gates buffer"))?;
            params.rows_cap = params.rows_cap.min(act_rows(what, "z", &z, d.value_dim())?);
            params.z_stride = z.stride;
            params.z_col = z.col;
            res.extend([
                g.whole(),
                state.whole(),
                snap.whole(),
                y.whole(),
                z.buf.whole(),
                weight.whole(),
            ]);
            gated_lay()?
        }
        RecOut::Fused {
            z,
            b_col,
            a_col,
            a_log,
            dt_bias,
            weight,
            xq,
        } => {
            need(what, "weight", weight, d.v_head_dim as u64)?;
            need(what, "a_log", a_log, hv as u64)?;
            need(what, "dt_bias", dt_bias, hv as u64)?;
            if gpu.limits.max_storage_buffers_per_shader_stage < FUSED_RECURRENCE_STORAGE_BUFFERS {
                return Err(bad(what, "the device binds too few storage buffers"));
            }
            let rows = act_rows(what, "z", &z, d.value_dim())?
                .min(act_rows(what, "b", &Act::at(z.buf, z.stride, b_col), hv)?)
                .min(act_rows(what, "a", &Act::at(z.buf, z.stride, a_col), hv)?);
            params.rows_cap = params.rows_cap.min(rows);
            params.z_stride = z.stride;
            params.z_col = z.col;
            params.b_col = b_col;
            params.a_col = a_col;
            res.extend([
                state.whole(),
                snap.whole(),
                y.whole(),
                z.buf.whole(),
                weight.whole(),
                a_log.whole(),
                dt_bias.whole(),
            ]);
            if let Some(q) = xq {
                if !fused_recurrence_takes_planes(gpu, d) {
                    return Err(bad(
                        what,
                        format!(
                            "integer planes need heads of a multiple of 32 values (Dv {}) and {} storage buffers",
                            d.v_head_dim,
                            FUSED_RECURRENCE_STORAGE_BUFFERS + 1
                        ),
                    ));
                }
                let row = crate::ops::xquant::row_bytes(d.value_dim());
                params.rows_cap = params
                    .rows_cap
                    .min((q.size / row).min(u32::MAX as u64) as u32);
                params.q_stride = crate::ops::xquant::q_stride(d.value_dim());
                res.push(q.whole());
            }
            let whole = RecurrenceLayout {
                prep: true,
                xq: xq.is_some(),
                ..gated_lay()?
            };
            // A head over several workgroups where the device binds one more buffer (the
            // per-head counts) and holds the workgroup; its workgroup memory is less than the
            // whole head's (the same head-sized arrays, a quarter of the reduction slots).
            let bound = FUSED_RECURRENCE_STORAGE_BUFFERS + u32::from(xq.is_some()) + 1;
            let split = split_layout(d.k_head_dim, d.v_head_dim, whole.subgroups).filter(|l| {
                split_recurrence()
                    && gpu.limits.max_storage_buffers_per_shader_stage >= bound
                    && l.wg <= gpu.limits.max_compute_invocations_per_workgroup
                    && (!l.subgroups || l.wg % gpu.caps.subgroup_max_size == 0)
            });
            match split {
                Some(l) => {
                    counts = gpu.storage("gdn_recurrence.head_counts", 4 * hv as u64)?;
                    res.push(counts.whole());
                    RecurrenceLayout {
                        xq: xq.is_some(),
                        ..l
                    }
                }
                None => whole,
            }
        }
    };
    let pipeline = gpu
        .pipeline(
            "gdn_recurrence.wgsl",
            &recurrence_defines(&lay).flag("STREAMS", d.streams > 0),
        )
        .await?;
    let blocks = d.v_head_dim.div_ceil(lay.rows());
    params.blocks = blocks;
    let grid = if d.streams > 0 {
        // A z-slice per stream (row), each from and to its own state slot.
        params.rows_cap = params.rows_cap.min(d.streams);
        Grid::per_token(hv * blocks)
    } else {
        Grid::fixed(hv * blocks)
    };
    let u = gpu.uniform("gdn_recurrence.params", &params);
    res.insert(0, u.whole());
    Ok(vec![gpu.dispatch(what, &pipeline, &res, grid)])
}

/// Gated RMSNorm (spec §4.6 step 7; mlx-lm `Qwen3NextRMSNormGated` + `precise_swiglu`), f32:
/// out[t, h, :] = silu(z[t, h, :]) · (weight ⊙ y[t, h, :] / sqrt(mean(y[t, h, :]²) + eps)).
///
/// * `y`: [T, Hv·Dv]; `z`: [T, Hv·Dv] at `z.col` of rows of `z.stride`; `weight`: [Dv];
/// * `out`: [T, Hv·Dv], must not alias `y` or `z`.
///
/// Grid: Hv workgroups of 64 threads per row.
pub async fn gated_norm(
    gpu: &Gpu,
    d: &GdnDims,
    y: &GpuBuffer,
    z: Act<'_>,
    weight: &GpuBuffer,
    out: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    const WHAT: &str = "gated_norm";
    d.check()?;
    let vd = d.value_dim();
    need(WHAT, "weight", weight, d.v_head_dim as u64)?;
    let rows_cap = buf_rows(y, vd)
        .min(act_rows(WHAT, "z", &z, vd)?)
        .min(buf_rows(out, vd));
    let pipeline = gpu
        .pipeline("gated_norm.wgsl", &gated_norm_defines())
        .await?;
    let params = GatedNormParams {
        n_v_heads: d.n_v_heads,
        dv: d.v_head_dim,
        z_stride: z.stride,
        z_col: z.col,
        rows_cap,
        eps: d.eps,
    };
    let u = gpu.uniform("gated_norm.params", &params);
    let res = [
        u.whole(),
        step.binding(),
        y.whole(),
        z.buf.whole(),
        weight.whole(),
        out.whole(),
    ];
    Ok(vec![gpu.dispatch(
        WHAT,
        &pipeline,
        &res,
        Grid::per_token(d.n_v_heads),
    )])
}
