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
    }
}

/// y[r, :] = weight ⊙ x[r, :] / rms(x[r, :]) for every row of the step; with `out_rows`, only the
/// last `step.n_out` rows, written compactly to rows 0.. of y (the input of lm_head).
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
        .pipeline("rms_norm.wgsl", &defines(&gpu.base_defines(), out_rows))
        .await?;
    let params = RmsNormParams {
        dim,
        x_stride: x.stride,
        x_col: x.col,
        y_stride: y.stride,
        y_col: y.col,
        eps,
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

pub fn defines(base: &Defines, out_rows: bool) -> Defines {
    base.clone()
        .set("PARAMS", <RmsNormParams as crate::gpu::ParamStruct>::WGSL)
        .flag("OUT_ROWS", out_rows)
}

pub fn variants(base: &Defines) -> Vec<(&'static str, Defines)> {
    vec![
        ("rms_norm.wgsl", defines(base, false)),
        ("rms_norm.wgsl", defines(base, true)),
    ]
}
