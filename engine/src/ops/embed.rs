//! `embed.wgsl`: gather (and dequantize) embedding rows for token ids (spec §3.2).

use crate::gpu::{Defines, Dispatch, Gpu, GpuBuffer, GpuError, Grid, StepSlot};
use crate::ops::matrix::Matrix;
use crate::ops::Act;
use crate::quant::{FloatType, WeightFormat};

crate::gpu_struct! {
    pub struct EmbedParams as "Params" {
        dim: u32,
        row0: u32,
        rows: u32,
        group_size: u32,
        id_offset: u32,
        y_stride: u32,
        y_col: u32,
    }
}

const WG: u32 = 256;

/// y[t, :] = table[ids[id_offset + t], :] for every row of the step (one dispatch per chunk).
pub fn defines(base: &Defines, format: &WeightFormat) -> Defines {
    let d = base
        .clone()
        .set("PARAMS", <EmbedParams as crate::gpu::ParamStruct>::WGSL);
    match *format {
        WeightFormat::Affine { bits, scale, .. } => d
            .flag("QUANT", true)
            .flag(if bits == 4 { "Q4" } else { "Q8" }, true)
            .flag(scale_define(scale), true),
        WeightFormat::Dense(t) => d.flag(dense_define(t), true),
    }
}

pub fn variants(base: &Defines) -> Vec<(&'static str, Defines)> {
    crate::ops::all_formats()
        .iter()
        .map(|f| ("embed.wgsl", defines(base, f)))
        .collect()
}

pub async fn embed(
    gpu: &Gpu,
    table: &Matrix,
    ids: &GpuBuffer,
    id_offset: u32,
    y: Act<'_>,
    step: StepSlot<'_>,
) -> Result<Vec<Dispatch>, GpuError> {
    let group_size = match table.format {
        WeightFormat::Affine { bits, group, .. } => {
            if bits != 4 && bits != 8 {
                return Err(GpuError::Shader {
                    name: format!("embed {}", table.name),
                    message: format!("{bits}-bit embeddings are not supported"),
                });
            }
            group
        }
        WeightFormat::Dense(_) => 1,
    };
    let pipeline = gpu
        .pipeline("embed.wgsl", &defines(&gpu.base_defines(), &table.format))
        .await?;
    let mut out = Vec::new();
    for c in &table.chunks {
        let params = EmbedParams {
            dim: table.k,
            row0: c.row0,
            rows: c.rows,
            group_size,
            id_offset,
            y_stride: y.stride,
            y_col: y.col,
        };
        let u = gpu.uniform("embed.params", &params);
        let mut res = vec![u.whole(), step.binding(), ids.whole(), c.weight.whole()];
        if let (Some(s), Some(b)) = (&c.scales, &c.biases) {
            res.push(s.whole());
            res.push(b.whole());
        }
        res.push(y.buf.whole());
        out.push(gpu.dispatch(
            format!("embed {}", table.name),
            &pipeline,
            &res,
            Grid::per_token(table.k.div_ceil(WG)),
        ));
    }
    Ok(out)
}

pub(crate) fn scale_define(t: FloatType) -> &'static str {
    match t {
        FloatType::F32 => "SCALE_F32",
        FloatType::F16 => "SCALE_F16",
        FloatType::BF16 => "SCALE_BF16",
    }
}

pub(crate) fn dense_define(t: FloatType) -> &'static str {
    match t {
        FloatType::F32 => "F32",
        FloatType::F16 => "F16",
        FloatType::BF16 => "BF16",
    }
}
