//! Prepared dispatch lists. Everything here is built at load; a step only records.

use std::sync::Arc;

use super::{Gpu, GpuBuffer};

crate::gpu_struct! {
    /// Per-call parameters every kernel reads (binding 1): the host writes one slot per forward
    /// call before submitting; GPU-side decisions (MTP) may update them in place later.
    pub struct Step as "Step" {
        /// Rows (tokens) in this call.
        n_tokens: u32,
        /// Cache position of row 0 (= tokens already in the KV / recurrent state).
        pos: u32,
        /// Gated-DeltaNet snapshot point: the state after this many rows is also written to the
        /// snapshot buffers (0 = no snapshot).
        n_confirmed: u32,
        /// The last `n_out` rows need logits (1 in prefill and decode, 2 in verify).
        n_out: u32,
        /// Benchmarks only: force the MTP accept decision (0 = off, 1 = reject, 2 = accept).
        force: u32,
        /// 1: the Gated-DeltaNet states start this call from their snapshots (the previous
        /// verify, run ahead on the GPU, rejected its draft); set by the GPU's MTP bookkeeping.
        rollback: u32,
        /// Calls of independent streams (the `STREAMS` pipelines of a [`crate::model::Batch`]):
        /// the cache positions of rows 1, 2 and 3 (row 0's is `pos`). Unused otherwise.
        pos1: u32,
        pos2: u32,
        pos3: u32,
    }
}

/// Rows of a call of independent streams ([`Step`] holds their positions: `pos`, `pos1`..`pos3`).
pub const MAX_STREAMS: u32 = 4;

/// A slot of the step buffer (one per kind of forward call recorded in the same submission).
#[derive(Clone, Copy)]
pub struct StepSlot<'a> {
    pub buf: &'a GpuBuffer,
    pub offset: u64,
}

impl StepSlot<'_> {
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        self.buf
            .slice(self.offset, std::mem::size_of::<Step>() as u64)
    }
}

/// Which row count of the current step a grid's z dimension follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// One z-slice in total.
    One,
    /// `ceil(n_tokens / tile)` slices: every row of the step.
    Tokens,
    /// `ceil(n_out / tile)` slices: only the rows that need logits.
    Out,
}

/// Workgroup grid of a dispatch: `groups` workgroups in x (split over x and y when it exceeds the
/// per-dimension limit; kernels rebuild the linear id with `wg_linear()` in common.wgsl) and a z
/// dimension that follows the step's row count.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub groups: u32,
    pub rows: Rows,
    pub tile: u32,
    /// The dispatch runs only for steps whose out-row count lies in this range (inclusive;
    /// `ALL_OUT` by default): a plan can hold a 1-row and a 2-row variant of one kernel and
    /// record the one the step needs.
    pub out_rows: (u32, u32),
    /// The dispatch runs only for steps whose [`StepShape::keys`] lies in this range (inclusive;
    /// `ALL_KEYS` by default): a plan can hold a short- and a long-context form of one kernel
    /// with the same bits and record the one that is faster for the step.
    pub keys: (u32, u32),
    /// The dispatch runs only for steps whose token count lies in this range (inclusive;
    /// `ALL_TOKENS` by default): a plan can hold a short-prompt and a long-prompt form of one
    /// kernel with the same bits and record the one that is faster for the chunk.
    pub tokens: (u32, u32),
}

/// [`Grid::tokens`] of a dispatch that runs for every step.
pub const ALL_TOKENS: (u32, u32) = (0, u32::MAX);

/// [`Grid::out_rows`] of a dispatch that runs for every step.
pub const ALL_OUT: (u32, u32) = (0, u32::MAX);
/// [`Grid::keys`] of a dispatch that runs for every step.
pub const ALL_KEYS: (u32, u32) = (0, u32::MAX);

impl Grid {
    pub fn fixed(groups: u32) -> Self {
        Grid {
            groups,
            rows: Rows::One,
            tile: 1,
            out_rows: ALL_OUT,
            keys: ALL_KEYS,
            tokens: ALL_TOKENS,
        }
    }
    pub fn per_token(groups: u32) -> Self {
        Grid {
            groups,
            rows: Rows::Tokens,
            tile: 1,
            out_rows: ALL_OUT,
            keys: ALL_KEYS,
            tokens: ALL_TOKENS,
        }
    }
    pub fn per_tile(groups: u32, tile: u32) -> Self {
        Grid {
            groups,
            rows: Rows::Tokens,
            tile,
            out_rows: ALL_OUT,
            keys: ALL_KEYS,
            tokens: ALL_TOKENS,
        }
    }
    pub fn per_out(groups: u32, tile: u32) -> Self {
        Grid {
            groups,
            rows: Rows::Out,
            tile,
            out_rows: ALL_OUT,
            keys: ALL_KEYS,
            tokens: ALL_TOKENS,
        }
    }

    /// This grid, recorded only for steps of `lo..=hi` tokens.
    pub fn for_tokens(mut self, lo: u32, hi: u32) -> Self {
        self.tokens = (lo, hi);
        self
    }

    /// This grid, recorded only for steps whose key estimate lies in `lo..=hi`.
    pub fn for_keys(mut self, lo: u32, hi: u32) -> Self {
        self.keys = (lo, hi);
        self
    }

    /// The `[x, y, z]` workgroup counts for a step with `t` rows of which `n_out` need logits.
    pub fn counts(&self, shape: StepShape, max_dim: u32) -> [u32; 3] {
        if shape.n_out < self.out_rows.0
            || shape.n_out > self.out_rows.1
            || shape.keys < self.keys.0
            || shape.keys > self.keys.1
            || shape.n_tokens < self.tokens.0
            || shape.n_tokens > self.tokens.1
        {
            return [0, 0, 0];
        }
        let n = match self.rows {
            Rows::One => 1,
            Rows::Tokens => shape.n_tokens.div_ceil(self.tile.max(1)),
            Rows::Out => shape.n_out.div_ceil(self.tile.max(1)),
        };
        let g = self.groups.max(1);
        let x = g.min(max_dim);
        let y = g.div_ceil(x);
        [x, y, n]
    }
}

/// The host-known shape of one forward call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    pub n_tokens: u32,
    pub n_out: u32,
    /// The host's estimate of the key count of the step's first row (its position + 1; 0 when
    /// unknown). It only chooses between dispatches that give the same bits ([`Grid::keys`]),
    /// so an estimate that lags (MTP iterations queued ahead of their outcomes) is still exact.
    pub keys: u32,
}

/// One prepared dispatch: pipeline, bind group and grid, all created at load.
pub struct Dispatch {
    pub label: String,
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub bind_group: wgpu::BindGroup,
    pub grid: Grid,
}

impl Dispatch {
    /// This dispatch recorded only for steps whose key estimate is in `lo..=hi` as well as in
    /// its grid's own range; `None` where no such step remains.
    pub fn within_keys(mut self, lo: u32, hi: u32) -> Option<Dispatch> {
        let (a, b) = (self.grid.keys.0.max(lo), self.grid.keys.1.min(hi));
        if a > b {
            return None;
        }
        self.grid.keys = (a, b);
        Some(self)
    }
}

/// Benchmarks only (timing ablation): `QWGPU_LAB_SKIP=a,b,...` leaves out of every recorded step
/// the dispatches whose label contains one of the comma-separated strings, so that a benchmark
/// shows what those kernels cost inside a real step. The results are then wrong by design; it is
/// read once, is never set by anything in this project but the benchmark scripts, and the
/// dispatch counts still report the full plan.
fn lab_skip(label: &str) -> bool {
    static SKIP: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let skip = SKIP.get_or_init(|| {
        std::env::var("QWGPU_LAB_SKIP")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    });
    skip.iter().any(|s| label.contains(s.as_str()))
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, shape: StepShape, max_dim: u32) {
        let [x, y, z] = self.grid.counts(shape, max_dim);
        if z == 0 || lab_skip(&self.label) {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

/// An ordered list of dispatches (one forward pass, or one piece of it).
#[derive(Default)]
pub struct Plan {
    pub dispatches: Vec<Dispatch>,
}

impl Plan {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, d: Dispatch) {
        self.dispatches.push(d);
    }
    pub fn extend(&mut self, other: Plan) {
        self.dispatches.extend(other.dispatches);
    }
    pub fn extend_vec(&mut self, ds: Vec<Dispatch>) {
        self.dispatches.extend(ds);
    }
    pub fn len(&self) -> usize {
        self.dispatches.len()
    }
    /// Dispatches recorded for a step of `shape` (those whose grid is not empty for it).
    pub fn recorded(&self, shape: StepShape) -> usize {
        self.dispatches
            .iter()
            .filter(|d| d.grid.counts(shape, u32::MAX)[2] > 0)
            .count()
    }
    /// The dispatches recorded for a step of `shape`, counted per kind (the first word of the
    /// label: `matmul`, `gdn_recurrence`, ...), in order of first appearance.
    pub fn recorded_kinds(&self, shape: StepShape) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for d in &self.dispatches {
            if d.grid.counts(shape, u32::MAX)[2] == 0 {
                continue;
            }
            let kind = d.label.split_whitespace().next().unwrap_or("").to_string();
            match out.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, n)) => *n += 1,
                None => out.push((kind, 1)),
            }
        }
        out
    }
    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }
    /// Records every dispatch into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>, shape: StepShape, max_dim: u32) {
        for d in &self.dispatches {
            d.record(pass, shape, max_dim);
        }
    }
}

impl Gpu {
    /// Builds a dispatch whose bind group 0 holds `resources` at bindings 0, 1, 2, ...
    /// Validation errors are caught by the error scope the plan builder holds around the whole
    /// plan (one await per plan, not per dispatch; see `Gpu::scope`).
    pub fn dispatch(
        &self,
        label: impl Into<String>,
        pipeline: &Arc<wgpu::ComputePipeline>,
        resources: &[wgpu::BindingResource<'_>],
        grid: Grid,
    ) -> Dispatch {
        let label = label.into();
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&label),
            layout: &layout,
            entries: &entries,
        });
        Dispatch {
            label,
            pipeline: pipeline.clone(),
            bind_group,
            grid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_rows_select_the_steps_a_dispatch_runs_for() {
        let shape = |n_tokens, n_out| StepShape {
            n_tokens,
            n_out,
            keys: 0,
        };
        let mut one = Grid::per_out(10, 1);
        one.out_rows = (1, 1);
        let mut two = Grid::per_out(10, 2);
        two.out_rows = (2, u32::MAX);
        // A decode (one out row) runs the 1-row grid only, a verify (two) the 2-row grid only.
        assert_eq!(one.counts(shape(1, 1), 65535), [10, 1, 1]);
        assert_eq!(two.counts(shape(1, 1), 65535)[2], 0);
        assert_eq!(one.counts(shape(2, 2), 65535)[2], 0);
        assert_eq!(two.counts(shape(2, 2), 65535), [10, 1, 1]);
        // Three out rows: two 2-row slices.
        assert_eq!(two.counts(shape(3, 3), 65535)[2], 2);
        // No out rows (a prompt chunk without logits): neither.
        assert_eq!(one.counts(shape(8, 0), 65535)[2], 0);
        assert_eq!(two.counts(shape(8, 0), 65535)[2], 0);
        // The default runs for every step; x splits over y past the per-dimension limit.
        let all = Grid::per_token(70000);
        assert_eq!(all.counts(shape(2, 0), 65535), [65535, 2, 2]);
    }

    #[test]
    fn key_ranges_pick_exactly_one_form_per_step() {
        let at = |keys| StepShape {
            n_tokens: 1,
            n_out: 1,
            keys,
        };
        let short = Grid::fixed(7).for_keys(0, 4095);
        let long = Grid::fixed(3).for_keys(4096, u32::MAX);
        for (keys, want_short) in [
            (0, true),
            (1, true),
            (4095, true),
            (4096, false),
            (u32::MAX, false),
        ] {
            let s = short.counts(at(keys), 65535)[2] > 0;
            let l = long.counts(at(keys), 65535)[2] > 0;
            assert_eq!((s, l), (want_short, !want_short), "keys {keys}");
        }
        // Grids without a range run at every key count.
        assert_eq!(Grid::fixed(5).counts(at(123_456), 65535), [5, 1, 1]);
    }
}
