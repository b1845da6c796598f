//! Load errors. Every variant names what was wrong: the file, the tensor, what was expected and
//! what was found. Nothing is ignored silently.

use crate::gpu::GpuError;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    #[error("{file}: not a valid safetensors file: {message}")]
    Safetensors { file: String, message: String },
    #[error("{file}: {message}")]
    Index { file: String, message: String },
    #[error("tensor '{tensor}' is missing from the checkpoint (expected {expected})")]
    MissingTensor { tensor: String, expected: String },
    #[error("tensor '{tensor}' in {file} has shape {found:?}, expected {expected:?} ({why})")]
    Shape {
        tensor: String,
        file: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        why: String,
    },
    #[error("tensor '{tensor}' in {file} has dtype {found}, expected {expected}")]
    Dtype {
        tensor: String,
        file: String,
        expected: String,
        found: String,
    },
    #[error("tensor '{tensor}' in {file}: {message}")]
    Quant {
        tensor: String,
        file: String,
        message: String,
    },
    #[error("{count} tensor(s) in the checkpoint are not used by a {model} model, e.g. '{first}' in {file}")]
    Unexpected {
        count: usize,
        first: String,
        file: String,
        model: String,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Gpu(#[from] GpuError),
}
