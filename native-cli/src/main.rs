//! `qwgpu`: the command-line front end. Argument parsing and terminal output only; the work is in
//! the engine crate.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qwgpu_engine::gpu;

#[derive(Parser)]
#[command(name = "qwgpu", version, about = "Run Qwen3.5 / Qwen3.6 models on any GPU through wgpu")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the wgpu adapters with backend, features and limits.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
