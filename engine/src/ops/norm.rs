//! `rms_norm.wgsl`: RMSNorm with a weight over rows (spec §4.3).

use crate::gpu::{Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, StepSlot};
use crate::ops::Act;

crate::gpu_struct! {
    pub struct RmsNormParams as "Params" {
        dim: u32,
        x_stride: u32,
        x_col: u32,
        y_stride: u32,
        y_col: u32,
        eps: f32,
        /// PAIR: the second norm's input and output column.
        x2_stride: u32,
        x2_col: u32,
        y2_col: u32,
    }
}

/// y[r, :] = weight ⊙ x[r, :] / rms(x[r, :]) for every row of the step; with `out_rows`, only the
/// last `step.n_out` rows, written compactly to rows 0.. of y (the input of lm_head).
#[allow(clippy::too_many_arguments)]
pub async fn rms_norm(
    gpu: &Gpu,
    dim: u32,
    eps: f32,
    x: Act<'_>,
    weight: &GpuBuffer,
    y: Act<'_>,
    step: StepSlot<'_>,
    out_rows: bool,
) -> Result<Dispatch, GpuError> {
    let pipeline = gpu
        .pipeline(
            "rms_norm.wgsl",
            &defines(&gpu.base_defines(), out_rows, false),
        )
        .await?;
    let params = RmsNormParams {
        dim,
        x_stride: x.stride,
        x_col: x.col,
        y_stride: y.stride,
        y_col: y.col,
        eps,
        x2_stride: 0,
        x2_col: 0,
        y2_col: 0,
    };
    let u = gpu.uniform("rms_norm.params", &params);
    let grid = if out_rows {
        Grid::per_out(1, 1)
    } else {
        Grid::per_token(1)
    };
    Ok(gpu.dispatch(
        "rms_norm",
        &pipeline,
        &[
            u.whole(),
            step.binding(),
            x.buf.whole(),
            weight.whole(),
            y.buf.whole(),
        ],
        grid,
    ))
}

/// Two norms of every row of the step in one dispatch: `y1[r] = w1 ⊙ x1[r] / rms(x1[r])` and
/// `y2[r]` likewise from `x2`, `w2`, with the bits of two [`rms_norm`] dispatches. `y1` and `y2`
/// are columns of one buffer with one stride (the MTP head's `[e | h]` input).
pub async fn rms_norm_pair(
    gpu: &Gpu,
    dim: u32,
    eps: f32,
    (x1, w1, y1): (Act<'_>, &GpuBuffer, Act<'_>),
    (x2, w2, y2): (Act<'_>, &GpuBuffer, Act<'_>),
    step: StepSlot<'_>,
) -> Result<Dispatch, GpuError> {
    if !std::ptr::eq(y1.buf, y2.buf) || y1.stride != y2.stride {
        return Err(GpuError::Validation {
            context: "rms_norm_pair".into(),
            message: "both outputs must be columns of one buffer with one stride".into(),
        });
    }
    let pipeline = gpu
        .pipeline("rms_norm.wgsl", &defines(&gpu.base_defines(), false, true))
        .await?;
    let params = RmsNormParams {
        dim,
        x_stride: x1.stride,
        x_col: x1.col,
        y_stride: y1.stride,
        y_col: y1.col,
        eps,
        x2_stride: x2.stride,
        x2_col: x2.col,
        y2_col: y2.col,
    };
    let u = gpu.uniform("rms_norm.params", &params);
    Ok(gpu.dispatch(
        "rms_norm pair",
        &pipeline,
        &[
            u.whole(),
            step.binding(),
            x1.buf.whole(),
            w1.whole(),
            y1.buf.whole(),
            x2.buf.whole(),
            w2.whole(),
        ],
        Grid::per_token(2),
    ))
}

pub fn defines(base: &Defines, out_rows: bool, pair: bool) -> Defines {
    base.clone()
        .set("PARAMS", <RmsNormParams as crate::gpu::ParamStruct>::WGSL)
        .flag("OUT_ROWS", out_rows)
        .flag("PAIR", pair)
}

pub fn variants(base: &Defines) -> Vec<(&'static str, Defines)> {
    vec![
        ("rms_norm.wgsl", defines(base, false, false)),
        ("rms_norm.wgsl", defines(base, true, false)),
        ("rms_norm.wgsl", defines(base, false, true)),
    ]
}
