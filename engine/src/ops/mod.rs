//! The Rust side of each kernel family: shape checks, the pipeline variant, the parameter struct
//! and the grid. One file per WGSL kernel, named alike.

pub mod argmax;
pub mod attention;
pub mod embed;
pub mod gdn;
pub mod matmul;
pub mod matrix;
pub mod mtp;
pub mod norm;
pub mod prefetch;
pub mod sample;
pub mod swiglu;
pub mod xquant;

use crate::gpu::GpuBuffer;

/// An f32 activation buffer viewed as rows of `stride` elements, starting at element `col`.
#[derive(Clone, Copy)]
pub struct Act<'a> {
    pub buf: &'a GpuBuffer,
    pub stride: u32,
    pub col: u32,
}

impl<'a> Act<'a> {
    pub fn new(buf: &'a GpuBuffer, stride: u32) -> Self {
        Act {
            buf,
            stride,
            col: 0,
        }
    }
    pub fn at(buf: &'a GpuBuffer, stride: u32, col: u32) -> Self {
        Act { buf, stride, col }
    }
}

/// Every weight format the matmul and embedding kernels handle.
pub fn all_formats() -> Vec<crate::quant::WeightFormat> {
    use crate::quant::{FloatType::*, WeightFormat};
    let mut v = Vec::new();
    for bits in [4, 8] {
        for scale in [F32, F16, BF16] {
            v.push(WeightFormat::Affine {
                bits,
                group: 64,
                scale,
            });
        }
    }
    for t in [F32, F16, BF16] {
        v.push(WeightFormat::Dense(t));
    }
    v
}

/// Every (shader, defines) variant the engine can build, for a device with or without subgroups:
/// the offline naga checks parse and translate each one to SPIR-V and MSL.
pub fn all_variants(subgroups: bool) -> Vec<(&'static str, crate::gpu::Defines)> {
    let base = crate::gpu::Defines::new().flag("SUBGROUPS", subgroups);
    let mut v = Vec::new();
    v.extend(matmul::variants(&base));
    v.extend(embed::variants(&base));
    v.extend(norm::variants(&base));
    v.extend(swiglu::variants(&base));
    v.extend(argmax::variants(&base));
    v.extend(attention::variants(&base));
    v.extend(gdn::variants(&base));
    v.extend(sample::variants(&base));
    v.extend(mtp::variants(&base));
    v.extend(prefetch::variants(&base));
    v.extend(xquant::variants(&base));
    // Every kernel that writes or reads integer planes also in the two-plane format
    // (`xquant::narrow`; `Gpu::pipeline` sets the flag, here it is explicit).
    let narrow: Vec<_> = v
        .iter()
        .filter(|(name, d)| *name == "xquant.wgsl" || d.is_true("XQ") || d.is_true("XOUT"))
        .map(|(name, d)| (*name, d.clone().flag("XQ_NARROW", true)))
        .collect();
    // and in the one-plane format (`xquant::byte`).
    let byte: Vec<_> = narrow
        .iter()
        .map(|(name, d)| (*name, d.clone().flag("XQ_BYTE", true)))
        .collect();
    v.extend(narrow);
    v.extend(byte);
    v
}
