//! `mtp_accept.wgsl`: the greedy accept test and id bookkeeping of the MTP loop, on the GPU.

use crate::gpu::{Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, StepSlot};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// After the first 1-row forward: result = [main, 0, 0, _], mtp_ids[0] = main.
    First,
    /// After a 2-row verify: result = [v, b, accept, _], mtp_ids = [v, b].
    Verify,
    /// After the sampler's accept test of a 2-row verify (`src` = its accept output).
    Sampled,
    /// After the MTP head: result[3] = draft; ids = [last emitted, draft].
    Select,
}

pub fn defines(stage: Stage) -> Defines {
    Defines::new()
        .flag("FIRST", stage == Stage::First)
        .flag("SELECT", stage == Stage::Select)
        .flag("SAMPLED", stage == Stage::Sampled)
}

pub fn variants(_base: &Defines) -> Vec<(&'static str, Defines)> {
    [Stage::First, Stage::Verify, Stage::Sampled, Stage::Select]
        .iter()
        .map(|s| ("mtp_accept.wgsl", defines(*s)))
        .collect()
}

/// `src` is the backbone's `out_ids` (First/Verify) or the MTP head's ids (Select); `mtp_ids`
/// is only bound for First/Verify.
pub async fn accept(
    gpu: &Gpu,
    stage: Stage,
    ids: &GpuBuffer,
    result: &GpuBuffer,
    src: &GpuBuffer,
    mtp_ids: &GpuBuffer,
    step: StepSlot<'_>,
) -> Result<Dispatch, GpuError> {
    let p = gpu.pipeline("mtp_accept.wgsl", &defines(stage)).await?;
    let mut res = vec![step.binding(), ids.whole(), result.whole(), src.whole()];
    if stage != Stage::Select {
        res.push(mtp_ids.whole());
    }
    Ok(gpu.dispatch(format!("mtp {stage:?}"), &p, &res, Grid::fixed(1)))
}
