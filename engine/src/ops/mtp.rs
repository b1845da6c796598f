//! `mtp_accept.wgsl`: the greedy accept test and id bookkeeping of the MTP loop, on the GPU.

use crate::gpu::{Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, Step, StepSlot};

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

/// The defines of the advance stage for an MTP step slot at byte `slot1` of the step buffer.
pub fn advance_defines(slot1: u64) -> Defines {
    Defines::new()
        .flag("ADVANCE", true)
        .set("SLOT1", slot1 / 4)
        .set("POS", std::mem::offset_of!(Step, pos) / 4)
        .set("ROLLBACK", std::mem::offset_of!(Step, rollback) / 4)
}

pub fn variants(_base: &Defines) -> Vec<(&'static str, Defines)> {
    let mut v: Vec<_> = [Stage::First, Stage::Verify, Stage::Sampled, Stage::Select]
        .iter()
        .map(|s| ("mtp_accept.wgsl", defines(*s)))
        .collect();
    v.push(("mtp_accept.wgsl", advance_defines(256)));
    v
}

/// The last dispatch of a verify iteration: advances both step slots (backbone at byte 0 of
/// `steps`, MTP at byte `slot1`) by the iteration's decision in `result` and sets the backbone
/// slot's rollback flag, so the next iteration can be queued before the decision is read.
pub async fn advance(
    gpu: &Gpu,
    steps: &GpuBuffer,
    slot1: u64,
    result: &GpuBuffer,
) -> Result<Dispatch, GpuError> {
    let p = gpu
        .pipeline("mtp_accept.wgsl", &advance_defines(slot1))
        .await?;
    Ok(gpu.dispatch(
        "mtp advance".to_string(),
        &p,
        &[steps.whole(), result.whole()],
        Grid::fixed(1),
    ))
}

/// `src` is the backbone's `out_ids` (First/Verify), the sampler's accept output (Sampled) or
/// the MTP head's ids (Select); `mtp_ids` and `head_step` (the step of the MTP head on the
/// chosen row alone, written here: see `mtp_accept.wgsl`) are bound for all but Select.
#[allow(clippy::too_many_arguments)]
pub async fn accept(
    gpu: &Gpu,
    stage: Stage,
    ids: &GpuBuffer,
    result: &GpuBuffer,
    src: &GpuBuffer,
    mtp_ids: &GpuBuffer,
    head_step: StepSlot<'_>,
    step: StepSlot<'_>,
) -> Result<Dispatch, GpuError> {
    let p = gpu.pipeline("mtp_accept.wgsl", &defines(stage)).await?;
    let mut res = vec![step.binding(), ids.whole(), result.whole(), src.whole()];
    if stage != Stage::Select {
        res.push(mtp_ids.whole());
        res.push(head_step.binding());
    }
    Ok(gpu.dispatch(format!("mtp {stage:?}"), &p, &res, Grid::fixed(1)))
}

static HEAD_ONE_ROW: crate::gpu::Switch = crate::gpu::Switch::new("QWGPU_MTP_HEAD_ONE_ROW", true);

/// Whether new sessions run the MTP head's final norm, lm_head and draft choice on the one row
/// the next draft comes from (row `accept`, chosen on the GPU) rather than on both rows, choosing
/// after, where `SessionOptions::mtp_head_one_row` leaves it open: on unless
/// `QWGPU_MTP_HEAD_ONE_ROW=0`. The tiles give a row the same bits, so greedy drafts are the same
/// either way (tested).
pub fn mtp_head_one_row() -> bool {
    HEAD_ONE_ROW.get()
}
