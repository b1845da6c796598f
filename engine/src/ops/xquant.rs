//! `xquant.wgsl`: activation rows to the integer planes the XQ decode matmuls read
//! ([`crate::ops::matmul::matmul_xq`]), optionally RMSNorm'ed first (spec §4.3).

use crate::gpu::{Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, StepSlot};
use crate::ops::Act;

crate::gpu_struct! {
    pub struct XquantParams as "Params" {
        dim: u32,
        x_stride: u32,
        x_col: u32,
        /// vec4<u32> per output row ([`q_stride`]).
        q_stride: u32,
        eps: f32,
    }
}

/// Values per fixed-point block (one 16-byte block of 4-bit codes).
pub const BLOCK: u32 = 32;

/// Words of 8 values per workgroup of `xquant.wgsl` (256 threads, one word each).
const WORDS_PER_WG: u32 = 256;

/// u32 (one per word) per block of 32 values in each of `xq_planes.wgsl`'s nine planes: six
/// code planes, s, Σx and Σ of squares.
pub const PLANES: u32 = 9;

static NARROW: crate::gpu::Switch = crate::gpu::Switch::new("QWGPU_XQ_NARROW", true);

/// Whether the planes hold x in two byte planes (`XQ_NARROW` in `xq_planes.wgsl`: x rounded to
/// at most 2^-15 of its word's max |x|, two packed dot products per code word and plane pair in
/// the matmuls) rather than three (2^-22, three products). On by default: H200, plain decode
/// 135.8 → 143.0 tok/s, MTP at forced 0.8 acceptance 153.8 → 177.9 tok/s; the logits of the
/// test fixtures stay within 0.1 of mlx-lm's f32 run, where mlx-lm's own bf16 run is several
/// logits away. One format per process: every pipeline gets the flag from
/// [`crate::gpu::Gpu::pipeline`], so the kernels that write planes and those that read them agree.
/// `QWGPU_XQ_NARROW=0|1` at start-up, [`set_narrow`] for plans built afterwards (a plan must not
/// mix pipelines built before and after a change).
pub fn narrow() -> bool {
    NARROW.get()
}

/// See [`narrow`].
pub fn set_narrow(on: bool) {
    NARROW.set(Some(on))
}

static BYTE: crate::gpu::Switch = crate::gpu::Switch::new("QWGPU_XQ_BYTE", false);

/// Whether the planes hold x in ONE signed byte plane (`XQ_BYTE` in `xq_planes.wgsl`: x rounded
/// to at most 2^-7 of its word's max |x|, two packed dot products per code word and token in the
/// matmuls instead of four), overriding [`narrow`]. Off by default. H200
/// (bench/results/2026-12-03-h200-e/): the 2-token verify tile, bound by its instruction count,
/// gains (verify iteration 9.08 → 8.48 ms, MTP at forced 0.8 acceptance 194.7 → 208.6 tok/s)
/// but plain decode loses (146.4 → 142.9 tok/s, with or without a capped grid), and on the four
/// test fixtures with 4-bit matrices the logits move 1.6–7.3 from mlx-lm's f32 run (the
/// two-plane default: ≤ 0.09; mlx-lm's own bf16 run: 0.4–4.9), the greedy choices along
/// mlx-lm's path leaving its tokens after 2–11 steps on 7 of their 8 prompts checked. An
/// int8-activation mode for users who trade that precision for MTP speed. `QWGPU_XQ_BYTE=0|1`
/// at start-up, [`set_byte`] for plans built afterwards.
pub fn byte() -> bool {
    BYTE.get()
}

/// See [`byte`].
pub fn set_byte(on: bool) {
    BYTE.set(Some(on))
}

/// Fraction bits of the planes' fixed point ([`narrow`], [`byte`]): x = s · xi with s =
/// 2^(E - F) for a word whose max |x| is in [2^(E-1), 2^E); |xi| <= 2^F (below 2^F in the two-
/// and one-plane formats).
pub fn frac_bits() -> u32 {
    if byte() {
        7
    } else if narrow() {
        15
    } else {
        22
    }
}

/// vec4<u32> per row of planes for `dim` values (`xq_planes.wgsl`'s layout).
pub fn q_stride(dim: u32) -> u32 {
    PLANES * (dim / BLOCK)
}

/// Bytes of one row of planes for `dim` values.
pub fn row_bytes(dim: u32) -> u64 {
    q_stride(dim) as u64 * 16
}

/// The step's rows of `x` (`dim` values each) as planes in `xq` (rows of [`q_stride`] vec4),
/// RMSNorm'ed with `norm` = (weight [dim], epsilon) first when given (the bits of `rms_norm`'s
/// output). With `out_rows`, only the step's last `n_out` rows, written compactly (lm_head's
/// input). `xq` must hold `rows` rows: the most the plan's steps can have.
#[allow(clippy::too_many_arguments)]
pub async fn xquant(
    gpu: &Gpu,
    dim: u32,
    x: Act<'_>,
    norm: Option<(&GpuBuffer, f32)>,
    xq: &GpuBuffer,
    rows: u32,
    step: StepSlot<'_>,
    out_rows: bool,
) -> Result<Dispatch, GpuError> {
    let bad = |message: String| GpuError::Shader {
        name: "xquant".into(),
        message,
    };
    if dim == 0 || dim % BLOCK != 0 {
        return Err(bad(format!(
            "{dim} values per row is not a multiple of {BLOCK}"
        )));
    }
    if x.stride % 4 != 0 || x.col % 4 != 0 {
        return Err(bad(format!(
            "x stride {} and column {} must be multiples of 4",
            x.stride, x.col
        )));
    }
    if xq.size < rows as u64 * row_bytes(dim) {
        return Err(bad(format!(
            "the plane buffer holds {} bytes, {rows} rows of {dim} values need {}",
            xq.size,
            rows as u64 * row_bytes(dim)
        )));
    }
    if let Some((w, _)) = norm {
        if w.size < dim as u64 * 4 {
            return Err(bad(format!(
                "the norm weight holds {} values, the rows have {dim}",
                w.size / 4
            )));
        }
    }
    let pipeline = gpu
        .pipeline(
            "xquant.wgsl",
            &defines(&gpu.base_defines(), norm.is_some(), out_rows),
        )
        .await?;
    let params = XquantParams {
        dim,
        x_stride: x.stride,
        x_col: x.col,
        q_stride: q_stride(dim),
        eps: norm.map_or(0.0, |n| n.1),
    };
    let u = gpu.uniform("xquant.params", &params);
    let mut res = vec![u.whole(), step.binding(), x.buf.whole(), xq.whole()];
    if let Some((w, _)) = norm {
        res.push(w.whole());
    }
    let groups = (dim / 8).div_ceil(WORDS_PER_WG);
    let grid = if out_rows {
        Grid::per_out(groups, 1)
    } else {
        Grid::per_token(groups)
    };
    Ok(gpu.dispatch("xquant", &pipeline, &res, grid))
}

pub fn defines(base: &Defines, norm: bool, out_rows: bool) -> Defines {
    base.clone()
        .set("PARAMS", <XquantParams as crate::gpu::ParamStruct>::WGSL)
        .flag("NORM", norm)
        .flag("OUT_ROWS", out_rows)
}

pub fn variants(base: &Defines) -> Vec<(&'static str, Defines)> {
    let mut v = Vec::new();
    for norm in [false, true] {
        for out_rows in [false, true] {
            v.push(("xquant.wgsl", defines(base, norm, out_rows)));
        }
    }
    v
}
