//! The model: config, the tensors it needs (validated before any GPU work), and the forward pass.

pub mod config;
pub mod tensors;
