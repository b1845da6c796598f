//! WGSL sources, a small typed preprocessor, and the pipeline cache.
//!
//! Kernels live in `shaders/*.wgsl`. Structural knobs (workgroup size, bits per weight, weight
//! format, tokens per tile, subgroup or shared-memory reductions) are preprocessor defines, so every
//! variant is plain WGSL that naga can validate offline (see `tests/shaders.rs`). Shapes are runtime
//! parameters in a per-dispatch uniform.
//!
//! Directives (a line whose first non-blank character is `#`):
//! `#include "name.wgsl"`, `#if NAME`, `#if !NAME`, `#elif NAME`, `#else`, `#endif`.
//! `{{NAME}}` anywhere is replaced by the define's value; an unknown name is an error.
//! A define is true unless absent, `0` or `false`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{Gpu, GpuError};

/// Every WGSL file, embedded so native and browser builds carry the same kernels.
pub const SOURCES: &[(&str, &str)] = &[
    ("common.wgsl", include_str!("../../../shaders/common.wgsl")),
    ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl")),
];

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

pub fn source(name: &str) -> Option<&'static str> {
    SOURCES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Preprocessor defines; ordered so that the cache key is canonical.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Defines(pub BTreeMap<String, String>);

impl Defines {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn set(mut self, name: &str, value: impl ToString) -> Self {
        self.0.insert(name.to_string(), value.to_string());
        self
    }
    pub fn flag(self, name: &str, on: bool) -> Self {
        self.set(name, if on { "1" } else { "0" })
    }
    pub fn is_true(&self, name: &str) -> bool {
        matches!(self.0.get(name), Some(v) if v != "0" && v != "false")
    }
    /// Canonical cache key (the generated struct texts are long, so they enter as a hash).
    pub fn key(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| if v.contains('\n') { format!("{k}=#{:016x}", fnv(v)) } else { format!("{k}={v}") })
            .collect::<Vec<_>>()
            .join(",")
    }
    /// Short label for pipelines: the defines without generated struct texts.
    pub fn label(&self) -> String {
        self.0.iter().filter(|(_, v)| !v.contains('\n')).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// Expands directives and `{{NAME}}` placeholders. `web` adds the `enable subgroups;` directive
/// Dawn requires (naga rejects it, and exposes the builtins once the device has SUBGROUP).
pub fn preprocess(name: &str, defines: &Defines, web: bool) -> Result<String, GpuError> {
    let mut out = String::new();
    if defines.is_true("F16") {
        out.push_str("enable f16;\n");
    }
    if web && defines.is_true("SUBGROUPS") {
        out.push_str("enable subgroups;\n");
    }
    let mut included = Vec::new();
    let mut defines = defines.clone();
    defines.0.entry("STEP".into()).or_insert_with(|| <super::plan::Step as super::ParamStruct>::WGSL.to_string());
    expand(name, &defines, &mut out, &mut included)?;
    Ok(out)
}

fn err(name: &str, line: usize, msg: impl Into<String>) -> GpuError {
    GpuError::Shader { name: format!("{name}:{}", line + 1), message: msg.into() }
}

fn expand(name: &str, defines: &Defines, out: &mut String, included: &mut Vec<String>) -> Result<(), GpuError> {
    let text = source(name).ok_or_else(|| GpuError::Shader { name: name.into(), message: "no such shader source".into() })?;
    included.push(name.to_string());
    // Stack of (this branch active, some branch already taken, parent active).
    let mut stack: Vec<(bool, bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool, bool)>| stack.last().map(|s| s.0).unwrap_or(true);
    for (ln, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(d) = t.strip_prefix('#') {
            let mut parts = d.trim().splitn(2, char::is_whitespace);
            let dir = parts.next().unwrap_or("");
            let arg = parts.next().unwrap_or("").trim();
            let cond = |arg: &str| -> Result<bool, GpuError> {
                let (neg, nm) = match arg.strip_prefix('!') {
                    Some(n) => (true, n.trim()),
                    None => (false, arg),
                };
                if nm.is_empty() || !nm.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(err(name, ln, format!("bad condition '{arg}'")));
                }
                Ok(defines.is_true(nm) != neg)
            };
            match dir {
                "if" => {
                    let parent = active(&stack);
                    let c = parent && cond(arg)?;
                    stack.push((c, c, parent));
                }
                "elif" => {
                    let top = stack.last_mut().ok_or_else(|| err(name, ln, "#elif without #if"))?;
                    let c = top.2 && !top.1 && cond(arg)?;
                    top.0 = c;
                    top.1 |= c;
                }
                "else" => {
                    let top = stack.last_mut().ok_or_else(|| err(name, ln, "#else without #if"))?;
                    top.0 = top.2 && !top.1;
                    top.1 = true;
                }
                "endif" => {
                    stack.pop().ok_or_else(|| err(name, ln, "#endif without #if"))?;
                }
                "include" => {
                    if active(&stack) {
                        let inc = arg.trim_matches('"');
                        if !included.iter().any(|n| n == inc) {
                            expand(inc, defines, out, included)?;
                        }
                    }
                }
                other => return Err(err(name, ln, format!("unknown directive #{other}"))),
            }
            continue;
        }
        if !active(&stack) {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| err(name, ln, "unclosed {{"))?;
            let key = after[..end].trim();
            let val = defines.0.get(key).ok_or_else(|| err(name, ln, format!("undefined placeholder {{{{{key}}}}}")))?;
            out.push_str(val);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    if !stack.is_empty() {
        return Err(err(name, text.lines().count(), "missing #endif"));
    }
    Ok(())
}

/// Compute pipelines by (shader, defines, entry point). Filled at load; never touched per token.
pub struct ShaderCache {
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
}

impl Default for ShaderCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ShaderCache {
    pub fn new() -> Self {
        ShaderCache { pipelines: Mutex::new(HashMap::new()) }
    }

    pub fn len(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gpu {
    /// The pipeline for `shader` with `defines` (the device's SUBGROUPS/F16 capability flags are
    /// the caller's choice, so tests can build every variant). Validation errors come back as
    /// [`GpuError::Shader`] naming the kernel instead of aborting the process.
    pub async fn pipeline(&self, shader: &str, defines: &Defines) -> Result<Arc<wgpu::ComputePipeline>, GpuError> {
        let key = format!("{shader}|{}", defines.key());
        if let Some(p) = self.shaders.pipelines.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(p);
        }
        let code = preprocess(shader, defines, self.caps.web)?;
        let label = format!("{}[{}]", shader.trim_end_matches(".wgsl"), defines.label());
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor { label: Some(&label), source: wgpu::ShaderSource::Wgsl(code.into()) };
        let module = if self.caps.shader_checks {
            self.device.create_shader_module(desc)
        } else {
            // SAFETY: every kernel is tested at odd sizes with the checks on (lavapipe) and guards
            // its own indices; unchecked modules only drop wgpu's redundant bounds/loop guards.
            unsafe { self.device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
        };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        });
        if let Some(e) = scope.pop().await {
            return Err(GpuError::Shader { name: label, message: e.to_string() });
        }
        let p = Arc::new(pipeline);
        if let Ok(mut m) = self.shaders.pipelines.lock() {
            m.insert(key, p.clone());
        }
        Ok(p)
    }

    /// The standard defines every kernel gets from the device.
    pub fn base_defines(&self) -> Defines {
        Defines::new().flag("SUBGROUPS", self.caps.subgroups)
    }
}
