//! GPU timestamps for benchmarks (`qwgpu bench --profile`): a query set, the buffer it resolves
//! into and a staging buffer to read it. Natively only, and only where the adapter has
//! `TIMESTAMP_QUERY` (pass boundaries) or also `TIMESTAMP_QUERY_INSIDE_PASSES` (between the
//! dispatches of one pass). Never used in the token loop.

use super::readback::Readback;
use super::Gpu;
#[cfg(not(target_arch = "wasm32"))]
use super::GpuError;

pub struct Timestamps {
    pub set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: Readback,
    cap: u32,
}

impl Timestamps {
    /// Room for `cap` timestamps (at most wgpu's 4096 per query set), or `None` where the device
    /// has no timestamp queries.
    pub fn new(gpu: &Gpu, label: &str, cap: u32) -> Option<Timestamps> {
        if !gpu
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return None;
        }
        let cap = cap.clamp(2, wgpu::QUERY_SET_MAX_QUERIES);
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some(label),
            ty: wgpu::QueryType::Timestamp,
            count: cap,
        });
        let bytes = cap as u64 * 8;
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(Timestamps {
            set,
            resolve,
            read: Readback::new(gpu, label, bytes),
            cap,
        })
    }

    /// Whether timestamps can be written between the dispatches of one pass.
    pub fn inside_passes(gpu: &Gpu) -> bool {
        gpu.device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    }

    /// How many timestamps the set holds.
    pub fn capacity(&self) -> u32 {
        self.cap
    }

    /// Records the resolution of the first `n` timestamps and their copy to the staging buffer.
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder, n: u32) {
        let n = n.min(self.cap);
        enc.resolve_query_set(&self.set, 0..n, &self.resolve, 0);
        self.read.copy_from(enc, &self.resolve, 0, n as u64 * 8);
    }

    /// The first `n` timestamps of the last resolution, in seconds from an arbitrary origin;
    /// waits for the submitted work (natively only: benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn seconds(&self, gpu: &Gpu, n: u32) -> Result<Vec<f64>, GpuError> {
        let n = n.min(self.cap);
        let bytes = self.read.read_blocking(gpu, n as u64 * 8)?;
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w) as f64 * period
            })
            .collect())
    }
}
