//! The only module that talks to wgpu.
//!
//! * [`Gpu`]: adapter choice, the limits and features we ask for, and the capabilities kernels key on.
//! * [`shader`]: the WGSL preprocessor and the shader/pipeline caches (created at load, never per token).
//! * [`buffer`]: buffer creation helpers and the per-dispatch parameter structs shared with WGSL.
//! * [`plan`]: a prepared list of dispatches recorded into one command buffer per step.
//! * [`readback`]: asynchronous reads of small buffers (token ids, or logits a caller asks for).

pub mod buffer;
pub mod plan;
pub mod readback;
pub mod shader;
pub mod timer;

use std::sync::Arc;

pub use buffer::{GpuBuffer, ParamStruct};
pub use plan::{Dispatch, Grid, Plan, Rows, Step, StepShape, StepSlot, MAX_STREAMS};
pub use shader::{Defines, ShaderCache};

/// Errors from device set-up and GPU work.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no wgpu adapter found{0}")]
    NoAdapter(String),
    #[error("could not open a device on adapter '{adapter}': {source}")]
    RequestDevice {
        adapter: String,
        source: wgpu::RequestDeviceError,
    },
    #[error("shader '{name}' failed to build: {message}")]
    Shader { name: String, message: String },
    #[error("reading back a GPU buffer failed: {0}")]
    Readback(String),
    #[error("GPU error in {context}: {message}")]
    Validation { context: String, message: String },
    #[error(
        "{what} needs {needed} bytes in one buffer, but the adapter allows at most {limit} bytes"
    )]
    TooLarge {
        what: String,
        needed: u64,
        limit: u64,
    },
}

/// How to pick and configure the adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Adapter selector: a backend name (`vulkan`, `metal`, `dx12`, `gl`, `webgpu`) or a
    /// case-insensitive substring of the adapter name. Falls back to the `QWGPU_ADAPTER` env var.
    pub adapter: Option<String>,
    /// Keep wgpu's shader runtime checks (bounds checks, loop bounding). `None` = the default:
    /// checks on, unless `QWGPU_SHADER_CHECKS=0`. Browsers always keep their own checks.
    pub shader_checks: Option<bool>,
    /// Disable subgroup kernels even where the adapter has them (`QWGPU_NO_SUBGROUPS=1` too).
    pub no_subgroups: bool,
    /// Disable f16 kernels even where the adapter has them (`QWGPU_NO_F16=1` too).
    pub no_f16: bool,
    /// Cap on the size of one storage binding (bytes), below what the adapter allows. Lets native
    /// runs exercise the split-binding paths a browser needs (`QWGPU_MAX_BINDING` too).
    pub max_binding: Option<u64>,
    /// Leave cooperative matrices (tensor cores) off even where the adapter has them
    /// (`QWGPU_NO_COOP=1` too).
    pub no_coop: bool,
}

/// What kernels may rely on, decided once per device.
#[derive(Clone, Debug)]
pub struct Caps {
    /// SUBGROUP is enabled on the device and kernels may use subgroup operations.
    pub subgroups: bool,
    /// Smallest subgroup size the adapter reports (kernels never assume 32).
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    /// SHADER_F16 is enabled on the device.
    pub f16: bool,
    /// Largest storage binding in bytes (the split point for big matrices).
    pub max_binding: u64,
    /// Largest buffer in bytes.
    pub max_buffer: u64,
    /// Largest workgroup count in one grid dimension.
    pub max_workgroups_per_dim: u32,
    /// Required alignment of storage-buffer binding offsets.
    pub storage_align: u64,
    /// Whether shaders keep wgpu's runtime bounds checks.
    pub shader_checks: bool,
    /// True when compiled for the browser (WGSL needs `enable subgroups;` there).
    pub web: bool,
    /// Cooperative matrices (tensor cores) of 16×16×16 f16 × f16 + f32 are enabled (wgpu's
    /// experimental cooperative-matrix feature, native only, with f16 and 32-lane subgroups): the
    /// prefill GEMM can run `matmul_coop.wgsl` ([`crate::ops::matmul::use_coop`]).
    pub coop: bool,
}

/// A wgpu device plus everything the engine decided about it.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub caps: Caps,
    pub shaders: ShaderCache,
    /// The first error wgpu reported outside an error scope (device lost, out of memory,
    /// validation at submit); surfaced by [`Gpu::take_error`] instead of aborting the process.
    pub(crate) uncaptured: Arc<std::sync::Mutex<Option<String>>>,
    /// Scratch shared by every plan ([`Gpu::shared_scratch`]).
    scratch: std::sync::Mutex<Vec<(&'static str, Arc<GpuBuffer>)>>,
}

/// A short description of one adapter, for `qwgpu devices` and error messages.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub subgroup_sizes: (u32, u32),
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamp_query: bool,
    pub max_buffer_size: u64,
    pub max_storage_buffer_binding_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    /// Cooperative-matrix (tensor core) configurations wgpu reports, as `MxNxK A->C`
    /// (e.g. `16x16x16 F16->F32`, what the prompt GEMM uses); empty without the feature.
    pub cooperative_matrices: Vec<String>,
}

impl AdapterSummary {
    fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let f = adapter.features();
        let l = adapter.limits();
        AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend).to_lowercase(),
            device_type: format!("{:?}", info.device_type),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            subgroup_sizes: (info.subgroup_min_size, info.subgroup_max_size),
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            timestamp_query: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_buffer_size: l.max_buffer_size,
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
            cooperative_matrices: if f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
                adapter
                    .cooperative_matrix_properties()
                    .iter()
                    .map(|p| {
                        format!(
                            "{}x{}x{} {:?}->{:?}",
                            p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// A process-wide choice read by kernels and loops: a setter's override (`Some`), else the
/// environment variable `env` read once (`0` / `false` off, `1` / `true` on, anything else or
/// unset the default; never read on wasm32), else `default`.
pub(crate) struct Switch {
    code: std::sync::atomic::AtomicU8,
    env: &'static str,
    default: bool,
    from_env: std::sync::OnceLock<bool>,
}

impl Switch {
    pub(crate) const fn new(env: &'static str, default: bool) -> Switch {
        Switch {
            code: std::sync::atomic::AtomicU8::new(0),
            env,
            default,
            from_env: std::sync::OnceLock::new(),
        }
    }

    /// `None` returns to the start-up choice.
    pub(crate) fn set(&self, on: Option<bool>) {
        let code = match on {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        self.code.store(code, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> bool {
        match self.code.load(std::sync::atomic::Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => *self.from_env.get_or_init(|| {
                #[cfg(not(target_arch = "wasm32"))]
                {
                    switch_value(std::env::var(self.env).ok().as_deref(), self.default)
                }
                #[cfg(target_arch = "wasm32")]
                {
                    let _ = self.env;
                    self.default
                }
            }),
        }
    }
}

/// A [`Switch`]'s value for its variable's text `v` (None: unset).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
fn switch_value(v: Option<&str>, default: bool) -> bool {
    match v {
        Some(v) if v == "0" || v.eq_ignore_ascii_case("false") => false,
        Some(v) if v == "1" || v.eq_ignore_ascii_case("true") => true,
        _ => default,
    }
}

fn env_flag(name: &str) -> Option<bool> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::env::var(name)
            .ok()
            .map(|v| !(v == "0" || v.eq_ignore_ascii_case("false") || v.is_empty()))
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = name;
        None
    }
}

fn env_string(name: &str) -> Option<String> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::env::var(name).ok().filter(|s| !s.is_empty())
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = name;
        None
    }
}

/// The instance: native GPU APIs by default; GL only when asked for by name (`--adapter gl`),
/// since probing EGL on headless machines is slow and noisy.
fn instance_for(selector: Option<&str>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = if selector.is_some_and(|s| s.eq_ignore_ascii_case("gl")) {
            wgpu::Backends::all()
        } else {
            wgpu::Backends::PRIMARY
        };
    }
    wgpu::Instance::new(desc)
}

fn instance() -> wgpu::Instance {
    instance_for(None)
}

/// Every adapter wgpu can see (native only; the browser exposes one adapter on request).
pub async fn list_adapters() -> Vec<AdapterSummary> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        instance()
            .enumerate_adapters(wgpu::Backends::all())
            .await
            .iter()
            .map(AdapterSummary::of)
            .collect()
    }
    #[cfg(target_arch = "wasm32")]
    {
        let inst = instance();
        match inst
            .request_adapter(&wgpu::RequestAdapterOptions::default())
            .await
        {
            Ok(a) => vec![AdapterSummary::of(&a)],
            Err(_) => vec![],
        }
    }
}

/// Rank used to pick a default adapter: real GPUs first, then software; native APIs before GL.
#[cfg(not(target_arch = "wasm32"))]
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u32, u32) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let be = match info.backend {
        wgpu::Backend::Vulkan
        | wgpu::Backend::Metal
        | wgpu::Backend::Dx12
        | wgpu::Backend::BrowserWebGpu => 0,
        _ => 1,
    };
    (be, ty)
}

#[cfg(not(target_arch = "wasm32"))]
fn matches_selector(info: &wgpu::AdapterInfo, sel: &str) -> bool {
    let sel = sel.to_lowercase();
    let backend = format!("{:?}", info.backend).to_lowercase();
    backend == sel || info.name.to_lowercase().contains(&sel)
}

impl Gpu {
    /// Opens a device. Never blocks: on the web the futures resolve from the event loop.
    pub async fn new(opts: &GpuOptions) -> Result<Arc<Gpu>, GpuError> {
        let selector = opts.adapter.clone().or_else(|| env_string("QWGPU_ADAPTER"));
        let inst = instance_for(selector.as_deref());
        #[cfg(not(target_arch = "wasm32"))]
        let adapter = {
            let mut all = inst.enumerate_adapters(wgpu::Backends::all()).await;
            if let Some(sel) = &selector {
                all.retain(|a| matches_selector(&a.get_info(), sel));
            }
            all.sort_by_key(|a| adapter_rank(&a.get_info()));
            match all.into_iter().next() {
                Some(a) => a,
                None => {
                    let names: Vec<String> = inst
                        .enumerate_adapters(wgpu::Backends::all())
                        .await
                        .iter()
                        .map(|a| {
                            let i = a.get_info();
                            format!("'{}' ({:?})", i.name, i.backend)
                        })
                        .collect();
                    let what = match &selector {
                        Some(s) => format!(
                            " matching '{s}'; available: {}",
                            if names.is_empty() {
                                "none".into()
                            } else {
                                names.join(", ")
                            }
                        ),
                        None => " (is a Vulkan, Metal or DX12 driver installed?)".into(),
                    };
                    return Err(GpuError::NoAdapter(what));
                }
            }
        };
        #[cfg(target_arch = "wasm32")]
        let adapter = {
            let _ = &selector;
            inst.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                GpuError::NoAdapter(format!(": WebGPU is not available in this browser ({e})"))
            })?
        };

        let info = adapter.get_info();
        let afeat = adapter.features();
        let no_sub = opts.no_subgroups || env_flag("QWGPU_NO_SUBGROUPS").unwrap_or(false);
        let no_f16 = opts.no_f16 || env_flag("QWGPU_NO_F16").unwrap_or(false);
        let mut features = wgpu::Features::empty();
        let subgroups = afeat.contains(wgpu::Features::SUBGROUP) && !no_sub;
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        let f16 = afeat.contains(wgpu::Features::SHADER_F16) && !no_f16;
        if f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        if afeat.contains(wgpu::Features::TIMESTAMP_QUERY) {
            features |= wgpu::Features::TIMESTAMP_QUERY;
            // Benchmarks time single dispatches inside a step's pass (`timer::Timestamps`).
            if !cfg!(target_arch = "wasm32")
                && afeat.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
            {
                features |= wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
            }
        }
        // Tensor cores through wgpu's (experimental) cooperative matrices: only the 16×16×16
        // f16 × f16 + f32 configuration the prefill GEMM uses, with f16 and subgroups of exactly
        // 32 lanes (the kernel gives each 32 consecutive invocations one subgroup's tiles).
        let no_coop = opts.no_coop || env_flag("QWGPU_NO_COOP").unwrap_or(false);
        let coop = !cfg!(target_arch = "wasm32")
            && !no_coop
            && f16
            && subgroups
            && info.subgroup_min_size == 32
            && info.subgroup_max_size == 32
            && afeat.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && adapter.cooperative_matrix_properties().iter().any(|p| {
                p.m_size == 16
                    && p.n_size == 16
                    && p.k_size == 16
                    && p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
            });
        if coop {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        // Ask for what the adapter has: big models need big buffers and many storage bindings.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("qwgpu"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: if coop {
                    // SAFETY: wgpu's experimental features are only reached through
                    // `matmul_coop.wgsl`, whose cooperative-matrix loads stay inside their
                    // buffers by construction (tested on devices that have the feature).
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|source| GpuError::RequestDevice {
                adapter: info.name.clone(),
                source,
            })?;

        let web = cfg!(target_arch = "wasm32");
        let shader_checks = if web {
            true
        } else {
            opts.shader_checks
                .or_else(|| env_flag("QWGPU_SHADER_CHECKS"))
                .unwrap_or(true)
        };
        let mut max_binding = limits.max_storage_buffer_binding_size as u64;
        if let Some(cap) = opts
            .max_binding
            .or_else(|| env_string("QWGPU_MAX_BINDING").and_then(|s| s.parse().ok()))
        {
            max_binding = max_binding.min(cap.max(1 << 16));
        }
        // Bindings must be multiples of 4 bytes; keep the split point 256-aligned.
        max_binding &= !255;
        let caps = Caps {
            subgroups,
            subgroup_min_size: info.subgroup_min_size.max(1),
            subgroup_max_size: info.subgroup_max_size.max(1),
            f16,
            max_binding,
            max_buffer: limits.max_buffer_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            storage_align: limits.min_storage_buffer_offset_alignment as u64,
            shader_checks,
            web,
            coop,
        };
        let uncaptured = Arc::new(std::sync::Mutex::new(None::<String>));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                if slot.is_none() {
                    *slot = Some(e.to_string());
                }
            }
        }));
        Ok(Arc::new(Gpu {
            shaders: ShaderCache::new(),
            device,
            queue,
            info,
            limits,
            caps,
            uncaptured,
            scratch: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// One line describing the device, for logs and `--json` output.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}; subgroups {}, f16 {}, shader checks {}{})",
            self.info.name,
            self.info.backend,
            if self.caps.subgroups { "on" } else { "off" },
            if self.caps.f16 { "on" } else { "off" },
            if self.caps.shader_checks { "on" } else { "off" },
            if self.caps.coop {
                ", tensor cores on"
            } else {
                ""
            }
        )
    }

    /// A scratch buffer of at least `bytes` shared by every plan on this device under `name`:
    /// for data a dispatch writes and the next one in the same pass reads (submissions run one
    /// at a time, and a dispatch sees the writes of those before it). A request beyond the
    /// current buffer replaces it with a larger one (plans built before keep theirs).
    pub fn shared_scratch(
        &self,
        name: &'static str,
        bytes: u64,
    ) -> Result<Arc<GpuBuffer>, GpuError> {
        let mut all = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = all.iter().find(|(n, b)| *n == name && b.size >= bytes) {
            return Ok(b.clone());
        }
        let b = Arc::new(self.storage(name, bytes.max(16))?);
        all.retain(|(n, _)| *n != name);
        all.push((name, b.clone()));
        Ok(b)
    }

    /// Returns (and clears) an error wgpu reported outside any error scope.
    pub fn take_error(&self) -> Result<(), GpuError> {
        match self.uncaptured.lock().ok().and_then(|mut s| s.take()) {
            Some(message) => Err(GpuError::Validation {
                context: "device".into(),
                message,
            }),
            None => Ok(()),
        }
    }

    /// Opens an error scope catching validation errors of everything created until
    /// [`ErrorScope::finish`] (used around building a whole plan: one await per plan).
    pub fn scope(&self, context: &str) -> ErrorScope {
        ErrorScope {
            guard: self.device.push_error_scope(wgpu::ErrorFilter::Validation),
            context: context.to_string(),
        }
    }
}

/// See [`Gpu::scope`].
pub struct ErrorScope {
    guard: wgpu::ErrorScopeGuard,
    context: String,
}

impl ErrorScope {
    pub async fn finish(self) -> Result<(), GpuError> {
        match self.guard.pop().await {
            None => Ok(()),
            Some(e) => Err(GpuError::Validation {
                context: self.context,
                message: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod switch_tests {
    use super::{switch_value, Switch};

    #[test]
    fn switch_values_and_overrides() {
        // The variable's text (no environment is changed: tests run in parallel in one process).
        for (v, default, want) in [
            (None, true, true),
            (None, false, false),
            (Some("0"), true, false),
            (Some("FALSE"), true, false),
            (Some("1"), false, true),
            (Some("true"), false, true),
            (Some("maybe"), false, false),
            (Some(""), true, true),
        ] {
            assert_eq!(switch_value(v, default), want, "{v:?}, default {default}");
        }
        // A variable nobody sets: the default, an override, and back.
        for default in [false, true] {
            let s = Switch::new("QWGPU_TEST_SWITCH_NEVER_SET", default);
            assert_eq!(s.get(), default);
            s.set(Some(!default));
            assert_eq!(s.get(), !default, "override");
            s.set(None);
            assert_eq!(s.get(), default, "back to the start-up choice");
        }
    }
}
