//! Shared helpers for the integration tests: one device per test binary, deterministic random
//! data, a runner for prepared dispatches, and comparisons that print index and both values.

pub mod fixtures;
pub mod quant;
pub mod ref_attention;
pub mod ref_gdn;
pub mod stats;

use std::sync::{Arc, Mutex, OnceLock};

use qwgpu_engine::gpu::{Dispatch, Gpu, GpuBuffer, GpuOptions, Step, StepShape};

/// The adapter tests run on (lavapipe in CI), with wgpu's shader runtime checks ON so an
/// out-of-bounds index shows up as a wrong value here rather than silently on a real GPU.
pub fn gpu() -> Arc<Gpu> {
    gpu_with(GpuOptions {
        shader_checks: Some(true),
        ..Default::default()
    })
}

static GPUS: OnceLock<Mutex<Vec<(String, Arc<Gpu>)>>> = OnceLock::new();

/// The device whole-model tests run on: shaders without wgpu's bounds checks, as the CLI, the
/// server and the browser run them (the kernel tests keep the checks, at odd sizes, through
/// [`gpu`] and [`gpu_variants`]); on the CPU adapter they cost a fifth of a model's time.
pub fn model_gpu() -> Arc<Gpu> {
    gpu_with(GpuOptions {
        shader_checks: Some(false),
        ..Default::default()
    })
}

/// A device opened with `opts`, cached per distinct option set for the test binary.
pub fn gpu_with(opts: GpuOptions) -> Arc<Gpu> {
    let key = format!("{opts:?}");
    let cache = GPUS.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache.lock().unwrap();
    if let Some((_, g)) = cache.iter().find(|(k, _)| *k == key) {
        return g.clone();
    }
    let g = pollster::block_on(Gpu::new(&opts))
        .expect("open a wgpu device (is mesa-vulkan-drivers installed?)");
    cache.push((key, g.clone()));
    g
}

/// Both variants of every kernel: shared-memory reductions, and subgroups where the adapter has them.
pub fn gpu_variants() -> Vec<Arc<Gpu>> {
    let mut v = vec![gpu_with(GpuOptions {
        shader_checks: Some(true),
        no_subgroups: true,
        ..Default::default()
    })];
    let g = gpu();
    if g.caps.subgroups {
        v.push(g);
    }
    v
}

/// Runs `f` on each of `items` (index, item) in a thread of its own and waits for all. For a
/// test's device variants: they are separate devices, so on a CPU device (lavapipe compiles a
/// pipeline when it first runs) each compiles its shaders on a core of its own. A failed
/// assertion in any of them fails the caller.
pub fn each_in_parallel<T: Send>(items: Vec<T>, f: impl Fn(usize, T) + Sync) {
    std::thread::scope(|s| {
        let f = &f;
        for (i, item) in items.into_iter().enumerate() {
            s.spawn(move || f(i, item));
        }
    });
}

/// splitmix64: small, seeded, reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn normal(&mut self) -> f32 {
        // Irwin–Hall approximation: plenty for test data.
        (0..12).map(|_| (self.uniform() + 1.0) * 0.5).sum::<f32>() - 6.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % n as u64) as u32
    }
}

/// A step buffer with one slot, written with `step`.
/// The step of a call over `t` tokens at position 0 with one output row (kernel tests).
pub fn tokens_step(gpu: &Gpu, t: usize) -> GpuBuffer {
    step_buffer(
        gpu,
        Step {
            n_tokens: t as u32,
            pos: 0,
            n_confirmed: 0,
            n_out: 1,
            force: 0,
            rollback: 0,
            ..Default::default()
        },
    )
}

pub fn step_buffer(gpu: &Gpu, step: Step) -> GpuBuffer {
    let b = gpu.storage("step", 256).unwrap();
    gpu.queue.write_buffer(&b.buf, 0, bytemuck::bytes_of(&step));
    b
}

/// Records `dispatches` in one compute pass and submits.
pub fn run(gpu: &Gpu, dispatches: &[Dispatch], shape: StepShape) {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for d in dispatches {
            d.record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
        }
    }
    gpu.queue.submit([enc.finish()]);
    gpu.take_error().expect("GPU error");
}

/// The SwiGLU kernel (`swiglu.wgsl`) over `t` rows of `gu` (gate | up, `n` columns each): what a
/// matmul's fused SwiGLU epilogue must equal bit for bit.
pub fn swiglu_kernel(gpu: &Gpu, gu: &[f32], t: usize, n: usize) -> Vec<f32> {
    let gub = upload_f32(gpu, "gu", gu);
    let act = gpu.storage("act", (t * n * 4) as u64).unwrap();
    let sb = tokens_step(gpu, t);
    let d = pollster::block_on(qwgpu_engine::ops::swiglu::swiglu(
        gpu,
        n as u32,
        &gub,
        &act,
        qwgpu_engine::gpu::StepSlot {
            buf: &sb,
            offset: 0,
        },
    ))
    .unwrap();
    run(
        gpu,
        &[d],
        StepShape {
            n_tokens: t as u32,
            n_out: 1,
            keys: 0,
        },
    );
    read_f32(gpu, &act, t * n)
}

pub fn read_f32(gpu: &Gpu, b: &GpuBuffer, count: usize) -> Vec<f32> {
    pollster::block_on(gpu.read_f32(&b.buf, 0, count)).unwrap()
}

pub fn read_u32(gpu: &Gpu, b: &GpuBuffer, count: usize) -> Vec<u32> {
    pollster::block_on(gpu.read_u32(&b.buf, 0, count)).unwrap()
}

pub fn upload_f32(gpu: &Gpu, label: &str, v: &[f32]) -> GpuBuffer {
    gpu.storage_init(label, bytemuck::cast_slice(v)).unwrap()
}

/// Asserts |got - want| <= atol + rtol * scale[i] for every element; prints the worst offender.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], scale: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f32)> = None;
    for i in 0..got.len() {
        let tol = atol + rtol * scale[i];
        let err = (got[i] - want[i]).abs();
        if !(err <= tol) {
            let excess = err / tol;
            if worst.is_none_or(|(_, e)| excess > e) {
                worst = Some((i, excess));
            }
        }
    }
    if let Some((i, ex)) = worst {
        panic!(
            "{what}: element {i}: got {} want {} (error {:.3e} = {ex:.1}x tolerance)",
            got[i],
            want[i],
            (got[i] - want[i]).abs()
        );
    }
}

/// Asserts bitwise equality, printing the first difference.
pub fn assert_bits_eq(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    for i in 0..a.len() {
        assert!(
            a[i].to_bits() == b[i].to_bits(),
            "{what}: element {i}: {} vs {} (not bit-identical)",
            a[i],
            b[i]
        );
    }
}
