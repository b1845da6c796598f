//! Asynchronous reads of small GPU buffers. Never blocks on the web; natively it polls the device.

use super::{Gpu, GpuError};

/// A MAP_READ staging buffer reused for every read of up to `size` bytes (created at load).
pub struct Readback {
    pub staging: wgpu::Buffer,
    pub size: u64,
}

impl Readback {
    pub fn new(gpu: &Gpu, label: &str, size: u64) -> Self {
        let size = (size.max(4) + 3) & !3;
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Readback { staging, size }
    }

    /// Records a copy of `len` bytes at `offset` of `src` into the staging buffer.
    pub fn copy_from(
        &self,
        enc: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        offset: u64,
        len: u64,
    ) {
        enc.copy_buffer_to_buffer(src, offset, &self.staging, 0, len.min(self.size));
    }

    /// Maps the staging buffer after the submitted work that writes it completes (natively:
    /// waits for submission `after`, or for everything submitted when `None`) and returns its
    /// first `len` bytes.
    pub async fn read(
        &self,
        gpu: &Gpu,
        len: u64,
        after: Option<wgpu::SubmissionIndex>,
    ) -> Result<Vec<u8>, GpuError> {
        let len = len.min(self.size);
        let slice = self.staging.slice(0..((len + 3) & !3));
        let (tx, rx) = futures_channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        gpu.wait_for(after);
        let r = rx
            .await
            .map_err(|_| GpuError::Readback("the map callback was dropped".into()))?;
        r.map_err(|e| GpuError::Readback(e.to_string()))?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| GpuError::Readback(e.to_string()))?[..len as usize]
            .to_vec();
        self.staging.unmap();
        gpu.take_error()?;
        Ok(out)
    }

    /// [`Readback::read`] without an executor, natively (benchmarks): blocks this thread until
    /// the map resolves. Its callback runs in whichever thread's poll sees the work complete:
    /// ours, or another thread polling the same device, which may run it only after our poll has
    /// returned; so this parks until woken (re-polling the device now and then) rather than
    /// assuming the map is done when our poll returns.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&self, gpu: &Gpu, len: u64) -> Result<Vec<u8>, GpuError> {
        use std::task::{Context, Poll, Wake, Waker};
        use std::time::{Duration, Instant};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark()
            }
        }
        let waker = Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(self.read(gpu, len, None));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Poll::Ready(r) = std::future::Future::poll(fut.as_mut(), &mut cx) {
                return r;
            }
            if Instant::now() > deadline {
                return Err(GpuError::Readback(
                    "the staging buffer was not mapped within 60 s of the device going idle".into(),
                ));
            }
            std::thread::park_timeout(Duration::from_millis(5));
            gpu.wait();
        }
    }
}

impl Gpu {
    /// Natively, drive the device until queued work completes (map callbacks fire from here).
    /// On the web this is a no-op: the browser resolves map futures from its event loop.
    pub fn wait(&self) {
        self.wait_for(None)
    }

    /// Natively, drive the device until submission `index` (everything queued when `None`)
    /// completes. A no-op on the web.
    pub fn wait_for(&self, index: Option<wgpu::SubmissionIndex>) {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = self.device.poll(wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            });
        }
        #[cfg(target_arch = "wasm32")]
        let _ = index;
    }

    /// Reads `len` bytes of `src` at `offset` through a temporary staging buffer. For tests and
    /// for callers that ask for logits; the token loop uses a [`Readback`] made at load.
    pub async fn read_buffer(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let rb = Readback::new(self, "read_buffer", len);
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("read_buffer"),
            });
        rb.copy_from(&mut enc, src, offset, (len + 3) & !3);
        self.queue.submit([enc.finish()]);
        rb.read(self, len, None).await
    }

    /// Reads a buffer of f32 values.
    pub async fn read_f32(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        count: usize,
    ) -> Result<Vec<f32>, GpuError> {
        let b = self.read_buffer(src, offset, (count * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&b))
    }

    /// Reads a buffer of u32 values.
    pub async fn read_u32(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        count: usize,
    ) -> Result<Vec<u32>, GpuError> {
        let b = self.read_buffer(src, offset, (count * 4) as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&b))
    }
}
