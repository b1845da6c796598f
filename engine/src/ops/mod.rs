//! The Rust side of each kernel family: shape checks, the pipeline variant, the parameter struct
//! and the grid. One file per WGSL kernel, named alike.

pub mod argmax;
pub mod attention;
pub mod embed;
pub mod gdn;
pub mod matmul;
pub mod matrix;
pub mod norm;
pub mod swiglu;

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
        Act { buf, stride, col: 0 }
    }
    pub fn at(buf: &'a GpuBuffer, stride: u32, col: u32) -> Self {
        Act { buf, stride, col }
    }
}
