//! Opening the GPU and a model (a directory or the embedded default), with a progress bar.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use qwgpu_engine::gpu::{Gpu, GpuOptions};
use qwgpu_engine::model::session::read_config;
use qwgpu_engine::model::{LoadOptions, Model, Session, SessionOptions};
use qwgpu_engine::text::{ChatTemplate, Tokenizer};

#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Adapter to use: a backend (vulkan, metal, dx12, gl) or part of the adapter name.
    /// Also QWGPU_ADAPTER.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Keep wgpu's shader bounds checks (slower; for debugging).
    #[arg(long)]
    pub shader_checks: bool,
}

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model directory (config.json + model*.safetensors [+ tokenizer.json]). Default: the
    /// embedded default model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Positions the context holds (prompt + generated tokens).
    #[arg(long, default_value_t = 4096)]
    pub max_context: u32,
    /// Prompt tokens per prefill call (larger chunks keep more of a large GPU busy: a 1024-token
    /// prompt of the 27B on an H200 in 0.70 s with 1024 against 0.84 s with 512, for 0.3 GB more
    /// workspace).
    #[arg(long, default_value_t = 1024)]
    pub prefill_chunk: u32,
    /// Keep every projection its own matrix and matmul dispatch instead of merging those that
    /// read the same input (q|k|v, gate|up, the GDN input projections) at load, and the SwiGLU
    /// its own kernel; same results, more dispatches (for A/B benchmarks).
    #[arg(long)]
    pub separate_projections: bool,
    /// What the attention KV caches hold: f32, or f16 (half the memory and the reads at long
    /// contexts; keys and values rounded to f16 as they are written).
    #[arg(long, value_enum, default_value_t = KvCacheType::F32)]
    pub kv_cache: KvCacheType,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Whether the session keeps the MTP head ready (`SessionOptions::speculative`): each command
    /// sets it from its `--mtp` before loading; not a flag of its own.
    #[arg(skip = true)]
    pub speculative: bool,
}

/// The value type of the KV caches (`--kv-cache`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCacheType {
    F32,
    F16,
}

pub struct Loaded {
    pub model: Arc<Model>,
    pub session: Session,
    pub tokenizer: Option<Tokenizer>,
    pub template: Option<ChatTemplate>,
    pub name: String,
    pub load_s: f64,
    /// The vocabulary's token trie for --json-schema / --json-object / --regex / --grammar,
    /// built on first use.
    pub grammar: Option<qwgpu_engine::text::grammar::GrammarEnv>,
}

pub fn open_gpu(d: &DeviceArgs) -> Result<Arc<Gpu>, String> {
    let opts = GpuOptions {
        adapter: d.adapter.clone(),
        shader_checks: Some(d.shader_checks),
        ..Default::default()
    };
    pollster::block_on(Gpu::new(&opts)).map_err(|e| e.to_string())
}

/// Loads weights (progress bar on a terminal), the tokenizer and chat template when present.
pub fn load(m: &ModelArgs) -> Result<Loaded, String> {
    let t0 = Instant::now();
    let gpu = open_gpu(&m.device)?;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "loading {msg} [{bar:30}] {bytes}/{total_bytes}",
        )
        .map_err(|e| e.to_string())?;
        b.set_style(style.progress_chars("=> "));
        b.set_message(
            m.model
                .as_ref()
                .map_or("the default model".into(), |p| p.display().to_string()),
        );
        Some(b)
    } else {
        None
    };
    let load_opts = LoadOptions {
        merge_projections: !m.separate_projections,
    };
    let mut progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let (model, tokenizer, template, name) = match &m.model {
        Some(dir) => {
            // The config first: a missing directory is named before anything else, and a tokenizer
            // of another model is refused before the weights are read.
            let config = read_config(dir).map_err(|e| e.to_string())?;
            let tokenizer = match Tokenizer::from_model_dir(dir) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!(
                        "note: no usable tokenizer in {} ({e}); only --prompt-ids prompts work",
                        dir.display()
                    );
                    None
                }
            };
            if let Some(t) = &tokenizer {
                t.check_model(config.vocab_size, &config.eos_token_ids)
                    .map_err(|e| e.to_string())?;
            }
            let model =
                Model::load_with(gpu, dir, &load_opts, &mut progress).map_err(|e| e.to_string())?;
            let template = if tokenizer.is_some() {
                ChatTemplate::from_model_dir(dir).ok()
            } else {
                None
            };
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string());
            (model, tokenizer, template, name)
        }
        #[cfg(feature = "default-model")]
        None => {
            use qwgpu_engine::default_model as dm;
            let model = dm::load_with(gpu, &load_opts, &mut progress).map_err(|e| e.to_string())?;
            let tokenizer = dm::tokenizer().map_err(|e| e.to_string())?;
            tokenizer
                .check_model(model.config.vocab_size, &model.config.eos_token_ids)
                .map_err(|e| e.to_string())?;
            (
                model,
                Some(tokenizer),
                Some(dm::template().map_err(|e| e.to_string())?),
                dm::NAME.to_string(),
            )
        }
        #[cfg(not(feature = "default-model"))]
        None => return Err("this build has no embedded default model: pass --model DIR".into()),
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for n in &model.notes {
        eprintln!("note: {n}");
    }
    let model = Arc::new(model);
    let session = pollster::block_on(Session::new(
        model.clone(),
        SessionOptions {
            max_ctx: m.max_context,
            prefill_chunk: m.prefill_chunk,
            speculative: m.speculative,
            kv_f16: m.kv_cache == KvCacheType::F16,
            ..Default::default()
        },
    ))
    .map_err(|e| e.to_string())?;
    Ok(Loaded {
        grammar: None,
        model,
        session,
        tokenizer,
        template,
        name,
        load_s: t0.elapsed().as_secs_f64(),
    })
}
