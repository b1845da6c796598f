//! The embedded default model (`models/default`): a small trained checkpoint of this architecture
//! (with its MTP head, its own 8,192-id tokenizer and the Qwen3.6 chat template; model card in
//! `train/README.md`), built into the binary.

use std::sync::Arc;

use crate::error::LoadError;
use crate::gpu::Gpu;
use crate::model::config::ModelConfig;
use crate::model::{LoadOptions, Model};
use crate::text::{ChatTemplate, Tokenizer};
use crate::weights::{Blob, Checkpoint};

pub const CONFIG: &str = include_str!("../../models/default/config.json");
pub const GENERATION_CONFIG: &str = include_str!("../../models/default/generation_config.json");
pub const TOKENIZER_CONFIG: &str = include_str!("../../models/default/tokenizer_config.json");
pub const TOKENIZER: &[u8] = include_bytes!("../../models/default/tokenizer.json");
pub const WEIGHTS: &[u8] = include_bytes!("../../models/default/model.safetensors");

/// The name the default model goes by in messages and API responses.
pub const NAME: &str = "qwgpu-default";

pub fn config() -> Result<ModelConfig, LoadError> {
    ModelConfig::parse("default model config.json", CONFIG, Some(GENERATION_CONFIG))
}

pub fn load(gpu: Arc<Gpu>, progress: &mut dyn FnMut(u64, u64)) -> Result<Model, LoadError> {
    load_with(gpu, &LoadOptions::default(), progress)
}

/// [`load`] with explicit [`LoadOptions`].
pub fn load_with(
    gpu: Arc<Gpu>,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Model, LoadError> {
    let ck = Checkpoint::from_blobs(
        vec![("model.safetensors".into(), Blob::Owned(WEIGHTS.to_vec()))],
        None,
    )?;
    Model::from_checkpoint_with(gpu, config()?, &ck, opts, progress)
}

pub fn tokenizer() -> Result<Tokenizer, LoadError> {
    Tokenizer::from_bytes(TOKENIZER, "default model tokenizer.json")
        .map_err(|e| LoadError::Unsupported(e.to_string()))
}

pub fn template() -> Result<ChatTemplate, LoadError> {
    match ChatTemplate::from_tokenizer_config(
        TOKENIZER_CONFIG,
        "default model tokenizer_config.json",
    ) {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Ok(ChatTemplate::builtin_qwen3_6()),
        Err(e) => Err(LoadError::Unsupported(e.to_string())),
    }
}
