//! `argmax.wgsl`: greedy token choice on the GPU, so only ids are read back.

use crate::gpu::{Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, StepSlot};

crate::gpu_struct! {
    pub struct ArgmaxParams as "Params" {
        vocab: u32,
        block: u32,
        n_blocks: u32,
        id_offset: u32,
    }
}

/// Logits per phase-1 workgroup.
pub const BLOCK: u32 = 4096;

/// Bytes of scratch the two phases need for `rows` rows of `vocab` logits.
pub fn scratch_bytes(vocab: u32, rows: u32) -> u64 {
    (vocab.div_ceil(BLOCK) * rows * 8) as u64
}

/// ids[id_offset + r] = argmax(logits[r, :]) for the step's `n_out` rows.
pub async fn argmax(
    gpu: &Gpu,
    vocab: u32,
    logits: &GpuBuffer,
    scratch: &GpuBuffer,
    ids: &GpuBuffer,
    id_offset: u32,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    let n_blocks = vocab.div_ceil(BLOCK);
    let params = ArgmaxParams {
        vocab,
        block: BLOCK,
        n_blocks,
        id_offset,
    };
    let p1 = gpu
        .pipeline("argmax.wgsl", &defines(&gpu.base_defines(), true))
        .await?;
    let p2 = gpu
        .pipeline("argmax.wgsl", &defines(&gpu.base_defines(), false))
        .await?;
    let u = gpu.uniform("argmax.params", &params);
    Ok(vec![
        gpu.dispatch(
            "argmax.blocks",
            &p1,
            &[u.whole(), step.binding(), logits.whole(), scratch.whole()],
            Grid {
                groups: n_blocks,
                rows: crate::gpu::Rows::Out,
                tile: 1,
                out_rows: crate::gpu::plan::ALL_OUT,
                keys: crate::gpu::plan::ALL_KEYS,
                tokens: crate::gpu::plan::ALL_TOKENS,
            },
        ),
        gpu.dispatch(
            "argmax.rows",
            &p2,
            &[u.whole(), step.binding(), scratch.whole(), ids.whole()],
            Grid::per_out(1, 1),
        ),
    ])
}

pub fn defines(base: &Defines, phase1: bool) -> Defines {
    base.clone()
        .set("PARAMS", <ArgmaxParams as crate::gpu::ParamStruct>::WGSL)
        .flag("PHASE1", phase1)
}

pub fn variants(base: &Defines) -> Vec<(&'static str, Defines)> {
    vec![
        ("argmax.wgsl", defines(base, true)),
        ("argmax.wgsl", defines(base, false)),
    ]
}
