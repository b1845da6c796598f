//! `qwgpu`: the command-line front end. Argument parsing and terminal output only; the work is in
//! the engine crate.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use qwgpu_engine::decode::{generate_greedy, Event, GreedyOptions};
use qwgpu_engine::gpu::{self, Gpu, GpuOptions};
use qwgpu_engine::model::{Model, Session, SessionOptions};

#[derive(Parser)]
#[command(name = "qwgpu", version, about = "Run Qwen3.5 / Qwen3.6 models on any GPU through wgpu")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate tokens from a prompt.
    Generate(GenerateArgs),
    /// Write a synthetic checkpoint in the exact MLX format and shapes (random weights), to
    /// measure full-size speed without downloading real weights.
    Synth(SynthArgs),
    /// List the wgpu adapters with backend, features and limits.
    Devices {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct DeviceArgs {
    /// Adapter to use: a backend (vulkan, metal, dx12, gl) or part of the adapter name.
    /// Also QWGPU_ADAPTER.
    #[arg(long)]
    adapter: Option<String>,
    /// Keep wgpu's shader bounds checks (slower; for debugging).
    #[arg(long)]
    shader_checks: bool,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model directory (config.json + model*.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Positions the context holds (prompt + generated tokens).
    #[arg(long, default_value_t = 4096)]
    max_context: u32,
    /// Prompt tokens per prefill call.
    #[arg(long, default_value_t = 512)]
    prefill_chunk: u32,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct SynthArgs {
    /// Model shape: qwen3.6-27b or small.
    #[arg(long, default_value = "qwen3.6-27b", conflicts_with = "config")]
    preset: String,
    /// A config.json to use instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Override the number of layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Bits per weight (4 or 8).
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Quantization group size (32, 64 or 128).
    #[arg(long, default_value_t = 64)]
    group: u32,
    /// Leave out the mtp.* tensors.
    #[arg(long)]
    no_mtp: bool,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt as comma-separated token ids.
    #[arg(long, value_delimiter = ',', required = true)]
    prompt_ids: Vec<u32>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep going past the checkpoint's EOS ids.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (tokens, finish reason, timings) instead of the ids.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Synth(a) => synth(a),
        Command::Devices { json } => devices(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open_gpu(d: &DeviceArgs) -> Result<Arc<Gpu>, String> {
    let opts = GpuOptions { adapter: d.adapter.clone(), shader_checks: if d.shader_checks { Some(true) } else { Some(false) }, ..Default::default() };
    pollster::block_on(Gpu::new(&opts)).map_err(|e| e.to_string())
}

/// Loads the model with a progress bar on a terminal.
fn load(m: &ModelArgs) -> Result<(Arc<Model>, Session, f64), String> {
    let t0 = Instant::now();
    let gpu = open_gpu(&m.device)?;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {bytes}/{total_bytes}")
                .map_err(|e| e.to_string())?
                .progress_chars("=> "),
        );
        b.set_message(m.model.display().to_string());
        Some(b)
    } else {
        None
    };
    let model = Model::load(gpu, &m.model, &mut |done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for n in &model.notes {
        eprintln!("note: {n}");
    }
    let model = Arc::new(model);
    let session = pollster::block_on(Session::new(model.clone(), SessionOptions { max_ctx: m.max_context, prefill_chunk: m.prefill_chunk })).map_err(|e| e.to_string())?;
    Ok((model, session, t0.elapsed().as_secs_f64()))
}

fn generate(a: GenerateArgs) -> Result<(), String> {
    if a.temperature != 0.0 {
        return Err("only greedy decoding (--temperature 0) is available in this build".into());
    }
    let (model, mut session, load_s) = load(&a.model)?;
    let opts = GreedyOptions { max_tokens: a.max_tokens, eos: model.config.eos_token_ids.clone(), ignore_eos: a.ignore_eos };
    let t0 = Instant::now();
    let mut t_first = None;
    let mut stream = (!a.json).then(std::io::stdout);
    let (tokens, finish) = pollster::block_on(generate_greedy(&mut session, &a.prompt_ids, &opts, &mut |e| {
        match e {
            Event::PromptDone => t_first = Some(t0.elapsed().as_secs_f64()),
            Event::Token(id) => {
                if let Some(out) = stream.as_mut() {
                    use std::io::Write;
                    let _ = write!(out, "{id} ");
                    let _ = out.flush();
                }
            }
        }
        true
    }))
    .map_err(|e| e.to_string())?;
    let total = t0.elapsed().as_secs_f64();
    let ttft = t_first.unwrap_or(total);
    let n_prompt = a.prompt_ids.len();
    let decode_steps = tokens.len().saturating_sub(1);
    let decode_s = (total - ttft).max(1e-9);
    if a.json {
        let j = serde_json::json!({
            "tokens": tokens,
            "finish_reason": finish,
            "prompt_tokens": n_prompt,
            "generated_tokens": tokens.len(),
            "timings": {
                "load_s": load_s,
                "ttft_s": ttft,
                "prefill_tokens_per_s": n_prompt as f64 / ttft.max(1e-9),
                "decode_tokens_per_s": if decode_steps > 0 { decode_steps as f64 / decode_s } else { 0.0 },
                "total_s": total,
            },
            "device": model.gpu.describe(),
            "dispatches_per_token": session.dispatches_per_token(),
        });
        println!("{j}");
    } else {
        println!();
        eprintln!(
            "{} prompt tokens, {} generated ({:?}); TTFT {:.3}s, decode {:.1} tok/s",
            n_prompt,
            tokens.len(),
            finish,
            ttft,
            if decode_steps > 0 { decode_steps as f64 / decode_s } else { 0.0 }
        );
    }
    Ok(())
}

fn synth(a: SynthArgs) -> Result<(), String> {
    use qwgpu_engine::model::config::QuantSpec;
    use qwgpu_engine::synth;
    let base = match &a.config {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => synth::preset(&a.preset).ok_or_else(|| format!("unknown preset '{}' (qwen3.6-27b, small)", a.preset))?.to_string(),
    };
    if !matches!(a.bits, 4 | 8) || !matches!(a.group, 32 | 64 | 128) {
        return Err("--bits must be 4 or 8 and --group 32, 64 or 128".into());
    }
    let text = synth::config_json(&base, Some(QuantSpec { bits: a.bits, group_size: a.group }), a.layers)?;
    let t0 = Instant::now();
    let total = synth::write(&a.out, &text, a.seed, !a.no_mtp, 4 << 30, &|_| {})?;
    eprintln!("wrote {:.2} GB to {} in {:.1}s", total as f64 / 1e9, a.out.display(), t0.elapsed().as_secs_f64());
    Ok(())
}

fn devices(json: bool) -> Result<(), String> {
    let list = pollster::block_on(gpu::list_adapters());
    if json {
        println!("{}", serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?);
        return Ok(());
    }
    if list.is_empty() {
        return Err("no wgpu adapters found (is a Vulkan, Metal or DX12 driver installed?)".into());
    }
    for a in list {
        println!("{} [{} / {}]", a.name, a.backend, a.device_type);
        println!("  driver: {} {}", a.driver, a.driver_info);
        println!("  subgroups: {} (sizes {}..{}), shader-f16: {}, timestamps: {}", a.subgroups, a.subgroup_sizes.0, a.subgroup_sizes.1, a.shader_f16, a.timestamp_query);
        println!(
            "  max buffer {} MiB, max storage binding {} MiB, workgroup memory {} KiB, {} storage buffers per stage",
            a.max_buffer_size >> 20,
            a.max_storage_buffer_binding_size >> 20,
            a.max_compute_workgroup_storage_size >> 10,
            a.max_storage_buffers_per_shader_stage
        );
    }
    Ok(())
}
