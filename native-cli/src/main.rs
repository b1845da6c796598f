//! `qwgpu`: the command-line front end. Argument parsing and terminal output only; the work is in
//! the engine crate.

mod load;
mod run;
mod tools;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "qwgpu",
    version,
    about = "Run Qwen3.5 / Qwen3.6 models on any GPU through wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text (or token ids) from a prompt.
    Generate(run::GenerateArgs),
    /// Chat interactively (/reset, /system, /think on|off, /stats, /exit).
    Chat(run::ChatArgs),
    /// Measure prefill and decode speed (single stream, fixed prompt, EOS ignored).
    Bench(tools::BenchArgs),
    /// Validate a checkpoint and summarize it: shapes, parameters, quantization, bytes per token.
    Inspect(tools::InspectArgs),
    /// Print the token ids of a text as JSON.
    Tokenize(tools::TokenizeArgs),
    /// Convert a Hugging Face checkpoint to MLX (quantized, mtp.* kept for speculative decoding).
    Convert(tools::ConvertArgs),
    /// Convert a tiktoken vocabulary (Qwen3.5/3.6) into a tokenizer.json.
    ConvertTokenizer(tools::ConvertTokenizerArgs),
    /// Write a synthetic checkpoint in the exact MLX format and shapes (random weights), to
    /// measure full-size speed without downloading real weights.
    Synth(tools::SynthArgs),
    /// List the wgpu adapters with backend, features and limits.
    Devices {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => run::generate(a),
        Command::Chat(a) => run::chat(a),
        Command::Bench(a) => tools::bench(a),
        Command::Inspect(a) => tools::inspect(a),
        Command::Tokenize(a) => tools::tokenize(a),
        Command::Convert(a) => tools::convert(a),
        Command::ConvertTokenizer(a) => tools::convert_tokenizer(a),
        Command::Synth(a) => tools::synth(a),
        Command::Devices { json } => tools::devices(json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
