//! qwgpu engine: Qwen3.5 / Qwen3.6 hybrid models (Gated-DeltaNet + gated attention, native MTP
//! head) from MLX checkpoints, on any wgpu adapter — native (Vulkan, Metal, DX12) and the browser.
//!
//! Layers: [`gpu`] (the only wgpu user) → [`ops`] (one Rust constructor per WGSL kernel) →
//! [`model`] (the forward pass as an op list) with [`state`] (caches) and [`decode`] (the loops).
//! [`quant`] and [`weights`] know formats and files, not GPUs.

#[cfg(not(target_arch = "wasm32"))]
pub mod convert;
pub mod decode;
#[cfg(feature = "default-model")]
pub mod default_model;
pub mod error;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod quant;
pub mod state;
pub mod synth;
pub mod text;
pub mod weights;
