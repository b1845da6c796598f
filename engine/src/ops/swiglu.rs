//! `swiglu.wgsl`: a = silu(gate) ⊙ up (spec §4.4).

use crate::gpu::{Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, StepSlot};

crate::gpu_struct! {
    pub struct SwigluParams as "Params" {
        dim: u32,
        gu_stride: u32,
        gate_col: u32,
        up_col: u32,
    }
}

const WG: u32 = 256;

/// `gu` holds [T, 2·dim] rows: gate at column 0, up at column `dim`; a is [T, dim].
pub async fn swiglu(
    gpu: &Gpu,
    dim: u32,
    gu: &GpuBuffer,
    a: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Dispatch, GpuError> {
    let pipeline = gpu
        .pipeline("swiglu.wgsl", &defines(&gpu.base_defines()))
        .await?;
    let u = gpu.uniform(
        "swiglu.params",
        &SwigluParams {
            dim,
            gu_stride: 2 * dim,
            gate_col: 0,
            up_col: dim,
        },
    );
    Ok(gpu.dispatch(
        "swiglu",
        &pipeline,
        &[u.whole(), step.binding(), gu.whole(), a.whole()],
        Grid::per_token(dim.div_ceil(WG)),
    ))
}

pub fn defines(base: &Defines) -> Defines {
    base.clone()
        .set("PARAMS", <SwigluParams as crate::gpu::ParamStruct>::WGSL)
}

pub fn variants(base: &Defines) -> Vec<(&'static str, Defines)> {
    vec![("swiglu.wgsl", defines(base))]
}
