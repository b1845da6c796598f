//! Buffers and the parameter structs shared between Rust and WGSL.

use wgpu::util::DeviceExt;

use super::{Gpu, GpuError};

/// A storage/uniform buffer with its byte size.
pub struct GpuBuffer {
    pub buf: wgpu::Buffer,
    pub size: u64,
}

impl GpuBuffer {
    pub fn whole(&self) -> wgpu::BindingResource<'_> {
        self.buf.as_entire_binding()
    }
    /// A binding of `size` bytes at `offset` (both multiples of 4; offset aligned by the caller).
    pub fn slice(&self, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buf,
            offset,
            size: std::num::NonZeroU64::new(size),
        })
    }
}

/// A `#[repr(C)]` struct of 4-byte scalars whose WGSL declaration is generated from the same field
/// list (see [`gpu_struct!`](crate::gpu_struct)), so Rust and WGSL cannot drift.
pub trait ParamStruct: bytemuck::Pod {
    /// `struct <Name> { field: type, ... }` in WGSL.
    const WGSL: &'static str;
    /// The bytes, padded to 16 (uniform buffers are bound in 16-byte units).
    fn padded_bytes(&self) -> Vec<u8> {
        let mut v = bytemuck::bytes_of(self).to_vec();
        while v.len() % 16 != 0 || v.is_empty() {
            v.push(0);
        }
        v
    }
}

/// Declares a parameter struct once for Rust and WGSL. Fields must be `u32`, `i32` or `f32`.
#[macro_export]
macro_rules! gpu_struct {
    ($(#[$m:meta])* pub struct $name:ident as $wgsl:literal { $($(#[$fm:meta])* $field:ident : $ty:ident),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name { $($(#[$fm])* pub $field: $ty,)* }
        impl $crate::gpu::ParamStruct for $name {
            const WGSL: &'static str = concat!("struct ", $wgsl, " {\n", $("  ", stringify!($field), ": ", stringify!($ty), ",\n",)* "}\n");
        }
    };
}

fn pad4(n: u64) -> u64 {
    (n + 3) & !3
}

impl Gpu {
    fn check_size(&self, label: &str, size: u64) -> Result<(), GpuError> {
        if size > self.caps.max_buffer {
            return Err(GpuError::TooLarge {
                what: label.to_string(),
                needed: size,
                limit: self.caps.max_buffer,
            });
        }
        Ok(())
    }

    /// A zero-filled storage buffer (activations, caches, states).
    pub fn storage(&self, label: &str, size: u64) -> Result<GpuBuffer, GpuError> {
        let size = pad4(size.max(16));
        self.check_size(label, size)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuBuffer { buf, size })
    }

    /// A storage buffer filled from `bytes` at creation (weights): no staging copy, works on wasm.
    pub fn storage_init(&self, label: &str, bytes: &[u8]) -> Result<GpuBuffer, GpuError> {
        let size = pad4((bytes.len() as u64).max(16));
        self.check_size(label, size)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        {
            let mut view = buf
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            view.slice(..bytes.len()).copy_from_slice(bytes);
        }
        buf.unmap();
        Ok(GpuBuffer { buf, size })
    }

    /// A storage buffer filled piecewise while mapped: `fill` gets a writer `(offset, bytes)`, so
    /// callers can convert or copy from several sources without a host copy of the whole tensor.
    pub fn storage_with(
        &self,
        label: &str,
        size: u64,
        fill: impl FnOnce(&mut dyn FnMut(usize, &[u8])),
    ) -> Result<GpuBuffer, GpuError> {
        let size = pad4(size.max(16));
        self.check_size(label, size)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        {
            let mut view = buf
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            let mut write = |off: usize, bytes: &[u8]| {
                view.slice(off..off + bytes.len()).copy_from_slice(bytes)
            };
            fill(&mut write);
        }
        buf.unmap();
        Ok(GpuBuffer { buf, size })
    }

    /// A small uniform buffer holding one parameter struct (created at load, one per dispatch).
    pub fn uniform<P: super::ParamStruct>(&self, label: &str, params: &P) -> GpuBuffer {
        let bytes = params.padded_bytes();
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: &bytes,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });
        GpuBuffer {
            buf,
            size: bytes.len() as u64,
        }
    }
}
