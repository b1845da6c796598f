//! Kernel lab: times the hot kernels and whole layers at the real 27B shapes on the current
//! adapter and prints GB/s against a read-bandwidth roofline.
//!
//!   cargo bench -p engine --bench lab -- [matmul] [layer] [read] [--reps N] [--roofline GBPS] [--prefill T] [--breakdown] [--shapes gate_up,lm_head]
//!
//! `read`: the floor under the matmuls: a streaming read (`engine/benches/lab_read.wgsl`) of each
//! matrix's bytes in one dispatch, for several thread/blocks-per-thread/grid shapes.
//!
//! Timing: R repetitions recorded into one compute pass and one submission, after a warm-up;
//! time = wall clock / R. Bytes = weights (+ states / KV) each repetition must read.

use std::sync::Arc;
use std::time::Instant;

use qwgpu_engine::gpu::{Gpu, GpuOptions, Plan, Rows, Step, StepShape, StepSlot};
use qwgpu_engine::model::config::QuantSpec;
use qwgpu_engine::model::forward::{Builder, Workspace};
use qwgpu_engine::model::Model;
use qwgpu_engine::ops::matmul::{matmul, MatmulOpts, MT_ONE, MT_PREFILL, MT_SMALL};
use qwgpu_engine::ops::matrix::{Matrix, MatrixData};
use qwgpu_engine::ops::Act;
use qwgpu_engine::quant::{FloatType, WeightFormat};
use qwgpu_engine::state::{LayerState, State};
use qwgpu_engine::synth;

fn time_plan(gpu: &Gpu, plan: &Plan, shape: StepShape, reps: u32) -> f64 {
    time_recorded(gpu, reps, |pass| {
        plan.record(pass, shape, gpu.caps.max_workgroups_per_dim)
    })
}

/// Times one dispatch alone (R repetitions in one pass), as [`time_plan`].
fn time_dispatch(gpu: &Gpu, d: &qwgpu_engine::gpu::Dispatch, shape: StepShape, reps: u32) -> f64 {
    time_recorded(gpu, reps, |pass| {
        d.record(pass, shape, gpu.caps.max_workgroups_per_dim)
    })
}

/// Seconds per repetition of `record` (3 warm-up repetitions, then `reps` in one pass).
fn time_recorded(gpu: &Gpu, reps: u32, record: impl Fn(&mut wgpu::ComputePass<'_>)) -> f64 {
    let run = |n: u32| {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for _ in 0..n {
                record(&mut pass);
            }
        }
        gpu.queue.submit([enc.finish()]);
        gpu.wait();
    };
    run(3);
    let t0 = Instant::now();
    run(reps);
    t0.elapsed().as_secs_f64() / reps as f64
}

fn report(what: &str, secs: f64, bytes: u64, dispatches: usize, roofline: f64) {
    let gbps = bytes as f64 / secs / 1e9;
    println!(
        "{{\"bench\": \"{what}\", \"us\": {:.1}, \"bytes\": {bytes}, \"GBps\": {gbps:.1}, \"roofline_pct\": {:.1}, \"dispatches\": {dispatches}}}",
        secs * 1e6,
        100.0 * gbps / roofline
    );
}

/// The token tile a plan of `t` tokens uses (as the session picks it).
fn tile_of(t: u32) -> u32 {
    match t {
        1 => MT_ONE,
        2 => MT_SMALL,
        _ => MT_PREFILL,
    }
}

fn matmuls(gpu: &Arc<Gpu>, reps: u32, roofline: f64, tokens: &[u32], only: Option<&str>) {
    // The matrices the model runs (projections of one input are stacked at load): gate|up,
    // down, GDN out_proj (attention o_proj has the same shape), GDN in_proj_qkv|z|b|a, attention
    // q|k|v, lm_head.
    let shapes = [
        (34816usize, 5120usize, "mlp.gate_up"),
        (5120, 17408, "mlp.down"),
        (5120, 6144, "gdn.out_proj"),
        (16480, 5120, "gdn.in_proj_qkvzba"),
        (14336, 5120, "attn.qkv_proj"),
        (248320, 5120, "lm_head"),
    ];
    for (n, k, label) in shapes {
        if only.is_some_and(|o| !o.split(',').any(|w| label.contains(w))) {
            continue;
        }
        let format = WeightFormat::Affine {
            bits: 4,
            group: 64,
            scale: FloatType::BF16,
        };
        let codes: Vec<u8> = (0..n * k / 2)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3])
            .collect();
        let sb: Vec<u8> = (0..n * k / 64)
            .flat_map(|_| half::bf16::from_f32(0.01).to_le_bytes())
            .collect();
        let m = Matrix::upload(
            gpu,
            label,
            &MatrixData {
                n,
                k,
                format,
                weight: &codes,
                scales: &sb,
                biases: &sb,
            },
        )
        .unwrap();
        let tmax = *tokens.iter().max().unwrap_or(&2) as usize;
        let x = gpu.storage("x", (tmax * k * 4) as u64).unwrap();
        let y = gpu.storage("y", (tmax * n * 4) as u64).unwrap();
        let step = gpu.storage("step", 256).unwrap();
        for &t in tokens {
            gpu.queue.write_buffer(
                &step.buf,
                0,
                bytemuck::bytes_of(&Step {
                    n_tokens: t,
                    pos: 0,
                    n_confirmed: 0,
                    n_out: 1,
                    force: 0,
                    rollback: 0,
                }),
            );
            let slot = StepSlot {
                buf: &step,
                offset: 0,
            };
            let ds = pollster::block_on(matmul(
                gpu,
                &m,
                Act::new(&x, k as u32),
                Act::new(&y, n as u32),
                slot,
                MatmulOpts {
                    rows: Rows::Tokens,
                    add: false,
                    mt: tile_of(t),
                    swiglu: false,
                },
            ))
            .unwrap();
            let mut plan = Plan::new();
            plan.extend_vec(ds);
            let s = time_plan(
                gpu,
                &plan,
                StepShape {
                    n_tokens: t,
                    n_out: 1,
                },
                if t > 2 { reps.div_ceil(10) } else { reps },
            );
            report(
                &format!("matmul q4 {label} {n}x{k} T={t}"),
                s,
                m.bytes(),
                plan.len(),
                roofline,
            );
            if t <= 2 && qwgpu_engine::ops::matmul::takes_xq(gpu, &m, tile_of(t)) {
                // x as integer planes: the matmul alone, and with its xquant dispatch.
                let xq = gpu
                    .storage("xq", 2 * qwgpu_engine::ops::xquant::row_bytes(k as u32))
                    .unwrap();
                let conv = pollster::block_on(qwgpu_engine::ops::xquant::xquant(
                    gpu,
                    k as u32,
                    Act::new(&x, k as u32),
                    None,
                    &xq,
                    2,
                    slot,
                    false,
                ))
                .unwrap();
                let ds = pollster::block_on(qwgpu_engine::ops::matmul::matmul_xq(
                    gpu,
                    &m,
                    &xq,
                    Act::new(&y, n as u32),
                    slot,
                    MatmulOpts {
                        rows: Rows::Tokens,
                        add: false,
                        mt: tile_of(t),
                        swiglu: false,
                    },
                    None,
                ))
                .unwrap();
                let shape = StepShape {
                    n_tokens: t,
                    n_out: 1,
                };
                let mut plan = Plan::new();
                plan.extend_vec(ds);
                let s = time_plan(gpu, &plan, shape, reps);
                report(
                    &format!("matmul q4 xq {label} {n}x{k} T={t}"),
                    s,
                    m.bytes(),
                    plan.len(),
                    roofline,
                );
                plan.dispatches.insert(0, conv);
                let s = time_plan(gpu, &plan, shape, reps);
                report(
                    &format!("xquant + matmul q4 xq {label} {n}x{k} T={t}"),
                    s,
                    m.bytes(),
                    plan.len(),
                    roofline,
                );
                // The fused epilogues: the deferred norm of its input and its outputs as planes
                // (scaled by a norm weight), where the tile allows.
                let opts = MatmulOpts {
                    rows: Rows::Tokens,
                    add: false,
                    mt: tile_of(t),
                    swiglu: false,
                };
                if qwgpu_engine::ops::matmul::writes_xq(gpu, &m, &opts) {
                    let yq = gpu
                        .storage("yq", 2 * qwgpu_engine::ops::xquant::row_bytes(n as u32))
                        .unwrap();
                    let nw = gpu.storage("nw", n as u64 * 4).unwrap();
                    let ds = pollster::block_on(qwgpu_engine::ops::matmul::matmul_xq_ext(
                        gpu,
                        &m,
                        &xq,
                        Act::new(&y, n as u32),
                        slot,
                        opts,
                        None,
                        Some(1e-6),
                        Some(qwgpu_engine::ops::matmul::XqOut {
                            planes: &yq,
                            norm_w: Some(&nw),
                        }),
                    ))
                    .unwrap();
                    let mut plan = Plan::new();
                    plan.extend_vec(ds);
                    let s = time_plan(gpu, &plan, shape, reps);
                    report(
                        &format!("matmul q4 xq fused {label} {n}x{k} T={t}"),
                        s,
                        m.bytes(),
                        plan.len(),
                        roofline,
                    );
                }
            }
            if t > 2 {
                println!(
                    "{{\"bench\": \"matmul q4 {label} T={t}\", \"TFLOPs\": {:.2}}}",
                    2.0 * (n * k) as f64 * t as f64 / s / 1e12
                );
            }
        }
    }
}

fn layers(gpu: &Arc<Gpu>, reps: u32, roofline: f64, pos: u32, tokens: &[u32], breakdown: bool) {
    for kind in ["linear_attention", "full_attention"] {
        // One 27B-shaped layer (small vocab: the layer is what is timed).
        let mut cfg: serde_json::Value = serde_json::from_str(synth::QWEN36_27B).unwrap();
        let tc = cfg["text_config"].as_object_mut().unwrap();
        tc.insert("num_hidden_layers".into(), 1.into());
        tc.insert("vocab_size".into(), 1024.into());
        tc.insert("layer_types".into(), serde_json::json!([kind]));
        tc.remove("full_attention_interval");
        let text = synth::config_json(
            &cfg.to_string(),
            Some(QuantSpec {
                bits: 4,
                group_size: 64,
            }),
            None,
        )
        .unwrap();
        let (config, ck) = synth::in_memory(&text, 7, false).unwrap();
        let model = Model::from_checkpoint(gpu.clone(), config, &ck, &mut |_, _| {}).unwrap();
        let tmax = *tokens.iter().max().unwrap_or(&2);
        let max_ctx = pos + tmax.max(64);
        let ws = Workspace::new(gpu, &model.config, tmax.max(64), 2, false).unwrap();
        let state = State::new(gpu, &model.config, max_ctx, false).unwrap();
        let step = gpu.storage("step", 256).unwrap();
        for &t in tokens {
            gpu.queue.write_buffer(
                &step.buf,
                0,
                bytemuck::bytes_of(&Step {
                    n_tokens: t,
                    pos,
                    n_confirmed: 0,
                    n_out: 1,
                    force: 0,
                    rollback: 0,
                }),
            );
            let b = Builder {
                gpu,
                cfg: &model.config,
                w: &model.weights,
                ws: &ws,
                step: StepSlot {
                    buf: &step,
                    offset: 0,
                },
                mt: tile_of(t),
                max_ctx,
                x: &ws.x,
                fold_norms: true,
                attn_split: qwgpu_engine::ops::attention::split_by_default(gpu),
            };
            let mut plan = Plan::new();
            pollster::block_on(b.layer(
                &mut plan,
                &model.weights.layers[0],
                &state.layers[0],
                false,
                None,
            ))
            .unwrap();
            let s = time_plan(
                gpu,
                &plan,
                StepShape {
                    n_tokens: t,
                    n_out: 1,
                },
                if t > 2 { reps.div_ceil(10) } else { reps },
            );
            let w = model.weights.bytes()
                - model.weights.embed.bytes()
                - model.weights.lm_head.as_ref().map_or(0, |m| m.bytes());
            let st = match &state.layers[0] {
                LayerState::Gdn(g) => 2 * g.ssm.size,
                LayerState::Attn(kv) => 2 * (pos as u64 + t as u64) * kv.k.size / max_ctx as u64,
            };
            report(
                &format!("layer {kind} (27B shapes) T={t} pos={pos}"),
                s,
                w + st,
                plan.len(),
                roofline,
            );
            if breakdown {
                // Each dispatch of the layer alone: the sum against the layer shows what the
                // barriers between dispatches cost.
                let mut sum = 0.0;
                for d in &plan.dispatches {
                    let ds = time_dispatch(
                        gpu,
                        d,
                        StepShape {
                            n_tokens: t,
                            n_out: 1,
                        },
                        if t > 2 { reps.div_ceil(10) } else { reps },
                    );
                    sum += ds;
                    println!(
                        "{{\"part\": \"{kind} T={t} {}\", \"us\": {:.1}}}",
                        d.label,
                        ds * 1e6
                    );
                }
                println!(
                    "{{\"part\": \"{kind} T={t} sum of parts\", \"us\": {:.1}}}",
                    sum * 1e6
                );
            }
        }
    }
}

/// Times a plain read of each matrix's bytes (weights, scales and biases) in one dispatch.
/// The read kernel (`lab_read.wgsl`) with its loads, threads, blocks per round and grid.
fn read_pipeline(gpu: &Gpu, loads: &str, wg: u32, u: u32, grid: u32) -> Arc<wgpu::ComputePipeline> {
    let code = include_str!("lab_read.wgsl")
        .replace("{{LOADS}}", loads)
        .replace("{{WG}}", &wg.to_string())
        .replace("{{U}}", &u.to_string())
        .replace("{{GRID}}", &grid.to_string());
    let module = unsafe {
        // SAFETY: every index is clamped to the array (min(.., n - 1)).
        gpu.device.create_shader_module_trusted(
            wgpu::ShaderModuleDescriptor {
                label: Some("lab_read"),
                source: wgpu::ShaderSource::Wgsl(code.into()),
            },
            wgpu::ShaderRuntimeChecks::unchecked(),
        )
    };
    Arc::new(
        gpu.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some("lab_read"),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            }),
    )
}

fn reads(gpu: &Arc<Gpu>, reps: u32, roofline: f64) {
    use qwgpu_engine::gpu::Grid;
    let sizes: [(u64, &str); 6] = [
        (100_270_080, "mlp.gate_up"),
        (50_135_040, "mlp.down"),
        (17_694_720, "gdn.out_proj"),
        (47_462_400, "gdn.in_proj_qkvzba"),
        (715_161_600, "lm_head"),
        (1_500_000_000, "1.5 GB"),
    ];
    let out = gpu.storage("out", 1 << 22).unwrap();
    for (bytes, label) in sizes {
        let w = gpu.storage("w", bytes).unwrap();
        let blocks = (bytes / 16) as u32;
        for (wg, u, grid) in [
            (256u32, 1u32, 0u32),
            (256, 4, 0),
            (128, 4, 0),
            (256, 8, 0),
            (512, 4, 0),
            (256, 4, 132 * 8),
            (256, 4, 132 * 16),
            (1024, 4, 132 * 2),
        ] {
            let loads: String = (0..u)
                .map(|j| format!("        let v{j} = w[min(base + {j}u * WG, n - 1u)];\n"))
                .chain((0..u).map(|j| format!("        acc ^= v{j};\n")))
                .collect();
            let pipeline = read_pipeline(gpu, &loads, wg, u, grid);
            let groups = if grid == 0 {
                blocks.div_ceil(wg * u)
            } else {
                grid
            };
            let disp = gpu.dispatch(
                "read",
                &pipeline,
                &[w.whole(), out.whole()],
                Grid::fixed(groups),
            );
            let s = time_dispatch(
                gpu,
                &disp,
                StepShape {
                    n_tokens: 1,
                    n_out: 1,
                },
                reps,
            );
            report(
                &format!("read {label} wg={wg} u={u} grid={grid}"),
                s,
                bytes,
                1,
                roofline,
            );
        }
    }
}

/// Cost of a dispatch boundary (`lab chain`): the read kernel over 4 KB, 1 MB and 16 MB,
/// repeated 64 times in one pass; each dispatch writes the same read-write `out` binding, so wgpu
/// orders every two of them with a barrier, as between the dependent dispatches of a token.
fn chain(gpu: &Arc<Gpu>, reps: u32, roofline: f64) {
    use qwgpu_engine::gpu::Grid;
    let pipeline = read_pipeline(
        gpu,
        "        let v0 = w[min(base, n - 1u)];\n        acc ^= v0;\n",
        256,
        1,
        0,
    );
    const N: usize = 64;
    let out = gpu.storage("out", 1 << 16).unwrap();
    let shape = StepShape {
        n_tokens: 1,
        n_out: 1,
    };
    for bytes in [4096u64, 1 << 20, 16 << 20] {
        let w = gpu.storage("w", bytes).unwrap();
        let groups = ((bytes / 16) as u32 / 256).max(1);
        let d = gpu.dispatch(
            "chain",
            &pipeline,
            &[w.whole(), out.whole()],
            Grid::fixed(groups),
        );
        let s = time_recorded(gpu, reps, |pass| {
            for _ in 0..N {
                d.record(pass, shape, gpu.caps.max_workgroups_per_dim)
            }
        }) / N as f64;
        report(
            &format!("chain {bytes} B, {groups} wg"),
            s,
            bytes,
            1,
            roofline,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let reps = flag("--reps").unwrap_or(50.0) as u32;
    let roofline = flag("--roofline").unwrap_or(4500.0);
    let pos = flag("--pos").unwrap_or(1024.0) as u32;
    let all = !args
        .iter()
        .any(|a| a == "matmul" || a == "layer" || a == "read" || a == "chain");
    let checks = args.iter().any(|a| a == "--checks");
    // `--prefill N`: also time an N-token prompt chunk (prefill tile).
    let mut tokens = vec![1u32, 2];
    if let Some(n) = flag("--prefill") {
        tokens.push(n as u32);
    }
    let gpu = pollster::block_on(Gpu::new(&GpuOptions {
        shader_checks: Some(checks),
        ..Default::default()
    }))
    .expect("a GPU");
    println!("{{\"device\": \"{}\"}}", gpu.describe());
    if args.iter().any(|a| a == "read") {
        reads(&gpu, reps, roofline);
    }
    if args.iter().any(|a| a == "chain") {
        chain(&gpu, reps, roofline);
    }
    if all || args.iter().any(|a| a == "matmul") {
        // `--shapes a,b`: only the matrices whose label contains one of them.
        let only = args
            .iter()
            .position(|a| a == "--shapes")
            .and_then(|i| args.get(i + 1))
            .map(|s| s.as_str());
        matmuls(&gpu, reps, roofline, &tokens, only);
    }
    if all || args.iter().any(|a| a == "layer") {
        layers(
            &gpu,
            reps,
            roofline,
            pos,
            &tokens,
            args.iter().any(|a| a == "--breakdown"),
        );
    }
}
