//! Kernel lab: times the hot kernels and whole layers at the real 27B shapes on the current
//! adapter and prints GB/s against a read-bandwidth roofline.
//!
//!   cargo bench -p engine --bench lab -- [matmul] [layer] [read] [chain] [alu] [rows] [prefetch] [persist] [--reps N] [--roofline GBPS] [--prefill T] [--breakdown] [--shapes gate_up,lm_head]
//!
//! `alu`: instruction throughput of the operations the decode matmuls spend their time on
//! (`engine/benches/lab_alu.wgsl`; `--sms N` for the per-SM figure, 132 by default).
//!
//! `prefetch`: a chain of dependent reads, each also reading the start of the next one's buffer
//! (`engine/benches/lab_prefetch.wgsl`).
//!
//! `rows`: the integer-plane matmul's read pattern alone (`engine/benches/lab_rows.wgsl`).
//!
//! `mmchain`: a chain of `--phases P` (8) dependent integer-plane matmuls of one shape, as P
//! dispatches (a barrier between each) against ONE dispatch of `--grid G` workgroups taking the
//! tiles from an atomic queue, each phase's tiles waiting for the previous phase's
//! (`ops::matmul::set_xq_chain`, `PERSIST_Q` in `matmul_staged.wgsl`), and against the same
//! phases over a resident grid of G workgroups with a grid barrier between phases
//! (`set_xq_chain_barrier`, `PERSIST_B`); G = 0 tries several.
//! Both forms' outputs are compared bit for bit.
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
use qwgpu_engine::ops::matmul::{decode_tile, matmul, MatmulOpts, MT_ONE, MT_PREFILL, MT_SMALL};
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
/// The step shape of the lab's single-dispatch kernels.
const ONE_TOKEN: StepShape = StepShape {
    n_tokens: 1,
    n_out: 1,
    keys: 0,
};

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
    // Errors wgpu reports outside a scope (an invalid bind group, e.g. a lab shader variant
    // whose layout lost a binding) would otherwise leave a fast, meaningless time: such a
    // measurement is reported as NaN, with the error on stderr.
    let _ = gpu.take_error();
    run(3);
    let t0 = Instant::now();
    run(reps);
    let t = t0.elapsed().as_secs_f64() / reps as f64;
    match gpu.take_error() {
        Ok(()) => t,
        Err(e) => {
            eprintln!("lab: the timed work was invalid: {e}");
            f64::NAN
        }
    }
}

fn report(what: &str, secs: f64, bytes: u64, dispatches: usize, roofline: f64) {
    let gbps = bytes as f64 / secs / 1e9;
    println!(
        "{{\"bench\": \"{what}\", \"us\": {:.1}, \"bytes\": {bytes}, \"GBps\": {gbps:.1}, \"roofline_pct\": {:.1}, \"dispatches\": {dispatches}}}",
        secs * 1e6,
        100.0 * gbps / roofline
    );
}

/// Writes a step of `t` tokens at position `pos` (nothing confirmed, one out row) into `step`.
fn write_step(gpu: &Gpu, step: &qwgpu_engine::gpu::GpuBuffer, t: u32, pos: u32) {
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
            ..Default::default()
        }),
    );
}

/// A planes buffer for 4 rows of `k` values and the xquant dispatch that fills it from `x`.
fn planes_of(
    gpu: &Arc<Gpu>,
    x: &qwgpu_engine::gpu::GpuBuffer,
    k: usize,
    slot: StepSlot<'_>,
) -> (qwgpu_engine::gpu::GpuBuffer, qwgpu_engine::gpu::Dispatch) {
    let xq = gpu
        .storage("xq", 4 * qwgpu_engine::ops::xquant::row_bytes(k as u32))
        .unwrap();
    let conv = pollster::block_on(qwgpu_engine::ops::xquant::xquant(
        gpu,
        k as u32,
        Act::new(x, k as u32),
        None,
        &xq,
        4,
        slot,
        false,
    ))
    .unwrap();
    (xq, conv)
}

/// The token tile a plan of `t` tokens uses (as the session picks it).
fn tile_of(t: u32) -> u32 {
    match t {
        1 => MT_ONE,
        2 => MT_SMALL,
        // A batch of four streams (`--four`).
        4 => qwgpu_engine::ops::matmul::MT_FOUR,
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
            write_step(gpu, &step, t, 0);
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
                    keys: 0,
                },
                if decode_tile(tile_of(t)) {
                    reps
                } else {
                    reps.div_ceil(10)
                },
            );
            report(
                &format!("matmul q4 {label} {n}x{k} T={t}"),
                s,
                m.bytes(),
                plan.len(),
                roofline,
            );
            if decode_tile(tile_of(t)) && qwgpu_engine::ops::matmul::takes_xq(gpu, &m, tile_of(t)) {
                // x as integer planes: the matmul alone, and with its xquant dispatch.
                let (xq, conv) = planes_of(gpu, &x, k, slot);
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
                    keys: 0,
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
                        .storage("yq", 4 * qwgpu_engine::ops::xquant::row_bytes(n as u32))
                        .unwrap();
                    let nw = gpu.storage("nw", n as u64 * 4).unwrap();
                    // Both epilogues ("fused"), then each alone: the deferred norm of the input
                    // ("xnorm") and the output planes ("xout").
                    for (what, norm, out) in [
                        ("fused", true, true),
                        ("xnorm", true, false),
                        ("xout", false, true),
                    ] {
                        let ds = pollster::block_on(qwgpu_engine::ops::matmul::matmul_xq_ext(
                            gpu,
                            &m,
                            &xq,
                            Act::new(&y, n as u32),
                            slot,
                            opts,
                            None,
                            norm.then_some(1e-6),
                            out.then_some(qwgpu_engine::ops::matmul::XqOut {
                                planes: &yq,
                                norm_w: Some(&nw),
                            }),
                        ))
                        .unwrap();
                        let mut plan = Plan::new();
                        plan.extend_vec(ds);
                        let s = time_plan(gpu, &plan, shape, reps);
                        report(
                            &format!("matmul q4 xq {what} {label} {n}x{k} T={t}"),
                            s,
                            m.bytes(),
                            plan.len(),
                            roofline,
                        );
                    }
                }
            }
            if !decode_tile(tile_of(t)) {
                println!(
                    "{{\"bench\": \"matmul q4 {label} T={t}\", \"TFLOPs\": {:.2}}}",
                    2.0 * (n * k) as f64 * t as f64 / s / 1e12
                );
            }
        }
    }
}

/// `mmchain`: P dependent 1-token integer-plane matmuls of one shape, one dispatch each, against
/// the same chain in one dispatch with a tile queue (see the module docs).
fn mmchain(gpu: &Arc<Gpu>, reps: u32, roofline: f64, phases: u32, grid: u32, only: Option<&str>) {
    use qwgpu_engine::ops::matmul::{matmul_xq, set_xq_chain, set_xq_chain_barrier};
    let shapes = [
        (5120usize, 6144usize, "gdn.out_proj"),
        (5120, 17408, "mlp.down"),
        (16480, 5120, "gdn.in_proj_qkvzba"),
        (34816, 5120, "mlp.gate_up (no SwiGLU)"),
    ];
    let format = WeightFormat::Affine {
        bits: 4,
        group: 64,
        scale: FloatType::BF16,
    };
    let p = phases.max(1) as usize;
    for (n, k, label) in shapes {
        if only.is_some_and(|o| !o.split(',').any(|w| label.contains(w))) {
            continue;
        }
        let codes = |ph: usize| -> Vec<u8> {
            (0..n * k / 2)
                .map(|i| {
                    ((i + ph * 7919) as u32)
                        .wrapping_mul(2654435761)
                        .to_le_bytes()[3]
                })
                .collect()
        };
        let sb: Vec<u8> = (0..n * k / 64)
            .flat_map(|i| half::bf16::from_f32(0.01 + (i % 7) as f32 * 1e-3).to_le_bytes())
            .collect();
        let mut all_codes = Vec::with_capacity(p * n * k / 2);
        let mut all_sb = Vec::with_capacity(p * sb.len());
        let mut mats = Vec::new();
        for ph in 0..p {
            let c = codes(ph);
            let data = MatrixData {
                n,
                k,
                format,
                weight: &c,
                scales: &sb,
                biases: &sb,
            };
            mats.push(Matrix::upload(gpu, label, &data).unwrap());
            all_codes.extend_from_slice(&c);
            all_sb.extend_from_slice(&sb);
        }
        let stacked = MatrixData {
            n: p * n,
            k,
            format,
            weight: &all_codes,
            scales: &all_sb,
            biases: &all_sb,
        };
        let step = gpu.storage("step", 256).unwrap();
        write_step(gpu, &step, 1, 0);
        let slot = StepSlot {
            buf: &step,
            offset: 0,
        };
        let x: Vec<f32> = (0..k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let xb = gpu.storage_init("x", bytemuck::cast_slice(&x)).unwrap();
        let (xq, conv) = planes_of(gpu, &xb, k, slot);
        let opts = MatmulOpts {
            rows: Rows::Tokens,
            add: false,
            mt: MT_ONE,
            swiglu: false,
        };
        let shape = ONE_TOKEN;
        let run_once = |plan: &Plan| {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                plan.record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
            }
            gpu.queue.submit([enc.finish()]);
            gpu.wait();
        };
        // The planes once; then P dispatches, each phase's outputs in its own buffer.
        let mut pre = Plan::new();
        pre.dispatches.push(conv);
        run_once(&pre);
        let ys: Vec<_> = (0..p)
            .map(|_| gpu.storage("y", n as u64 * 4).unwrap())
            .collect();
        set_xq_chain(None);
        let mut plan = Plan::new();
        for (m, y) in mats.iter().zip(&ys) {
            let ds = pollster::block_on(matmul_xq(
                gpu,
                m,
                &xq,
                Act::new(y, n as u32),
                slot,
                opts,
                None,
            ))
            .unwrap();
            plan.extend_vec(ds);
        }
        let bytes: u64 = mats.iter().map(|m| m.bytes()).sum();
        let s = time_plan(gpu, &plan, shape, reps);
        report(
            &format!("mmchain {label} {n}x{k} T=1: {p} dispatches"),
            s,
            bytes,
            plan.len(),
            roofline,
        );
        let want: Vec<f32> = ys
            .iter()
            .flat_map(|y| pollster::block_on(gpu.read_f32(&y.buf, 0, n)).unwrap())
            .collect();
        drop(mats);
        let big = Matrix::upload(gpu, label, &stacked).unwrap();
        let yc = gpu.storage("y chain", (p * n) as u64 * 4).unwrap();
        let grids: Vec<u32> = if grid > 0 {
            vec![grid]
        } else {
            vec![264, 528, 792, 1056, 1584, 2112]
        };
        // The queue form, then the barrier form (a resident grid, `set_xq_chain_barrier`).
        let forms = grids
            .iter()
            .map(|&g| (g, false))
            // (A grid past what the device holds at once would spin out its bounded polls.)
            .chain(grids.iter().filter(|&&g| g <= 1056).map(|&g| (g, true)));
        for (g, barrier) in forms {
            set_xq_chain_barrier(barrier);
            set_xq_chain(Some((p as u32, g)));
            let ds = pollster::block_on(matmul_xq(
                gpu,
                &big,
                &xq,
                Act::new(&yc, (p * n) as u32),
                slot,
                opts,
                None,
            ));
            set_xq_chain(None);
            set_xq_chain_barrier(false);
            let ds = match ds {
                Ok(ds) => ds,
                Err(e) => {
                    eprintln!("mmchain {label}: {e}");
                    break;
                }
            };
            let mut plan = Plan::new();
            plan.extend_vec(ds);
            let s = time_plan(gpu, &plan, shape, reps);
            let got = pollster::block_on(gpu.read_f32(&yc.buf, 0, p * n)).unwrap();
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            report(
                &format!(
                    "mmchain {label} {n}x{k} T=1: 1 dispatch, {}, grid {g}, same bits {same}",
                    if barrier { "grid barrier" } else { "queue" }
                ),
                s,
                bytes,
                plan.len(),
                roofline,
            );
        }
    }
}

fn layers(gpu: &Arc<Gpu>, reps: u32, roofline: f64, pos: u32, tokens: &[u32], breakdown: bool) {
    for kind in ["linear_attention", "full_attention"] {
        // One 27B-shaped layer (small vocab: the layer is what is timed).
        // `QWGPU_LAB_CONFIG=path/config.json`: another model's shapes (e.g. a small model on a
        // CPU adapter) instead of the 27B's.
        let base = std::env::var("QWGPU_LAB_CONFIG")
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_else(|| synth::QWEN36_27B.to_string());
        let mut cfg: serde_json::Value = serde_json::from_str(&base).unwrap();
        if cfg.get("text_config").is_none() {
            cfg = serde_json::json!({ "text_config": cfg });
        }
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
        let state = State::new(gpu, &model.config, max_ctx, false, false).unwrap();
        let step = gpu.storage("step", 256).unwrap();
        for &t in tokens {
            write_step(gpu, &step, t, pos);
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
                streams: 0,
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
                    keys: pos + 1,
                },
                if decode_tile(tile_of(t)) {
                    reps
                } else {
                    reps.div_ceil(10)
                },
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
                            keys: pos + 1,
                        },
                        if decode_tile(tile_of(t)) {
                            reps
                        } else {
                            reps.div_ceil(10)
                        },
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
    // SAFETY: every index is clamped to the array (min(.., n - 1)).
    unsafe { lab_pipeline(gpu, "lab_read", code) }
}

/// A pipeline of one of the lab's own kernels, without wgpu's runtime checks.
///
/// # Safety
/// Every memory index of `code` must be in bounds.
unsafe fn lab_pipeline(gpu: &Gpu, label: &str, code: String) -> Arc<wgpu::ComputePipeline> {
    let module = unsafe {
        gpu.device.create_shader_module_trusted(
            wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(code.into()),
            },
            wgpu::ShaderRuntimeChecks::unchecked(),
        )
    };
    Arc::new(
        gpu.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            }),
    )
}

/// The integer-plane matmul's read pattern without its arithmetic (`lab rows`,
/// `lab_rows.wgsl`): the gate+up, in_proj and down matrices' bytes read as the matmul reads them,
/// with and without the scale and bias loads (the checkpoint's two arrays, or one array of
/// (scale, bias) pairs), rows one after another or a workgroup's rows interleaved per chunk.
fn rows(gpu: &Arc<Gpu>, reps: u32, roofline: f64) {
    use qwgpu_engine::gpu::Grid;
    let out = gpu.storage("out", 1 << 22).unwrap();
    for (n, k, label) in [
        (34816u32, 5120u32, "mlp.gate_up"),
        (16480, 5120, "gdn.in_proj_qkvzba"),
        (5120, 17408, "mlp.down"),
    ] {
        let bpr = k / 32;
        let wbytes = n as u64 * bpr as u64 * 16;
        let sbytes = n as u64 * (bpr / 4) as u64 * 4;
        let w = gpu.storage("w", wbytes).unwrap();
        // Big enough for the pairs too (one u32 per group: twice one of the bf16-pair arrays).
        let sc = gpu.storage("sc", 2 * sbytes).unwrap();
        let bi = gpu.storage("bi", sbytes).unwrap();
        for (g, rg, layout, scales) in [
            (4u32, 4u32, 0u32, 0u32),
            (4, 4, 0, 1),
            (4, 4, 0, 2),
            (4, 4, 1, 3),
            (4, 4, 1, 0),
            (4, 1, 0, 0),
            (4, 8, 0, 0),
            (4, 8, 0, 2),
        ] {
            let code = include_str!("lab_rows.wgsl")
                .replace("{{G}}", &g.to_string())
                .replace("{{RG}}", &rg.to_string())
                .replace("{{BPR}}", &bpr.to_string())
                .replace("{{LAYOUT}}", &layout.to_string())
                .replace("{{SCALES}}", &scales.to_string());
            // SAFETY: every index is clamped to its array (min(.., n - 1)).
            let pipeline = unsafe { lab_pipeline(gpu, "lab_rows", code) };
            let groups = n / (g * rg);
            let d = gpu.dispatch(
                "rows",
                &pipeline,
                &[w.whole(), out.whole(), sc.whole(), bi.whole()],
                Grid::fixed(groups),
            );
            let s = time_dispatch(gpu, &d, ONE_TOKEN, reps);
            let bytes = wbytes + if scales > 0 { 2 * sbytes } else { 0 };
            report(
                &format!(
                    "rows {label} {g}x{rg} {}{}",
                    if layout == 1 {
                        "interleaved"
                    } else {
                        "row-major"
                    },
                    [
                        "",
                        " +scales, biases",
                        " +scale-bias pairs",
                        " +scale-bias pairs interleaved"
                    ][scales as usize]
                ),
                s,
                bytes,
                1,
                roofline,
            );
        }
    }
}

/// Warming L2 for the next dispatch (`lab prefetch`, `lab_prefetch.wgsl`): a chain of 64
/// dependent streaming reads over 8 distinct buffers the sizes of a Gated-DeltaNet layer's
/// matrices (in_proj, out_proj, gate+up, down, twice), each dispatch with extra workgroups that
/// read the first MB of the next dispatch's buffer; mean time per dispatch against none.
fn prefetch(gpu: &Arc<Gpu>, reps: u32, roofline: f64) {
    use qwgpu_engine::gpu::Grid;
    const N: usize = 64;
    // A Gated-DeltaNet layer's matrices in order: in_proj, out_proj, gate+up, down.
    let sizes = [47_462_400u64, 17_694_720, 100_270_080, 50_135_040];
    let bufs: Vec<_> = (0..8)
        .map(|i| gpu.storage("w", sizes[i % 4]).unwrap())
        .collect();
    let out = gpu.storage("out", 1 << 20).unwrap();

    let per_wg = 256u64 * 4 * 16;
    for pf_mb in [0u64, 1, 2, 4, 8, 16, 32] {
        let pfg = ((pf_mb << 20) / per_wg) as u32;
        let ds: Vec<_> = (0..8)
            .map(|i| {
                let main = (sizes[i % 4] / 16).div_ceil(256 * 4) as u32;
                let code = include_str!("lab_prefetch.wgsl").replace("{{MAIN}}", &main.to_string());
                // SAFETY: every index is clamped to its array (min(.., n - 1)).
                let pipeline = unsafe { lab_pipeline(gpu, "lab_prefetch", code) };
                gpu.dispatch(
                    "prefetch",
                    &pipeline,
                    &[bufs[i].whole(), out.whole(), bufs[(i + 1) % 8].whole()],
                    Grid::fixed(main + pfg),
                )
            })
            .collect();
        let s = time_recorded(gpu, reps, |pass| {
            for i in 0..N {
                ds[i % 8].record(pass, ONE_TOKEN, gpu.caps.max_workgroups_per_dim)
            }
        }) / N as f64;
        report(
            &format!("prefetch chain of a GDN layer's matrices, {pf_mb} MB of the next"),
            s,
            sizes.iter().sum::<u64>() / 4,
            1,
            roofline,
        );
    }
}

/// Persistent phases (`lab persist`, `lab_persist.wgsl`): 64 streaming reads the sizes of a
/// Gated-DeltaNet layer's matrices (in_proj, out_proj, gate+up, down, eight distinct regions of
/// one buffer), first as one dispatch each (the barrier between dependent dispatches), then as
/// phases of ONE dispatch of a resident grid separated by a grid-wide atomic barrier, with and
/// without the next phase's first loads issued before the wait; and the barrier alone (empty
/// phases). Mean time per phase.
fn persist(gpu: &Arc<Gpu>, reps: u32, roofline: f64) {
    use qwgpu_engine::gpu::Grid;
    const N: u32 = 64;
    const WG: u32 = 256;
    let sizes = [47_462_400u64, 17_694_720, 100_270_080, 50_135_040];
    // Smaller regions where one binding cannot hold the eight (CPU adapters: a check only).
    let limit = gpu.device.limits().max_storage_buffer_binding_size;
    let shrink = if limit < 2 * sizes.iter().sum::<u64>() {
        16
    } else {
        1
    };
    let lens: Vec<u32> = (0..8)
        .map(|i| (sizes[i % 4] / 16 / shrink) as u32)
        .collect();
    let offs: Vec<u32> = (0..8).map(|i| lens[..i].iter().sum()).collect();
    let total: u64 = lens.iter().map(|&l| l as u64 * 16).sum();
    let w = gpu.storage("w", total).unwrap();
    let out = gpu.storage("out", 1 << 20).unwrap();
    let slots = reps as u64 + 8;
    let ctr = gpu.storage("ctr", slots * 256).unwrap();
    let list = |v: &[u32]| {
        v.iter()
            .map(|x| format!("{x}u"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let make = |phases: u32, prefetch: bool, offs: &[u32], lens: &[u32]| {
        let code = include_str!("lab_persist.wgsl")
            .replace("{{WG}}", &WG.to_string())
            .replace("{{PHASES}}", &phases.to_string())
            .replace("{{PREFETCH}}", if prefetch { "true" } else { "false" })
            .replace("{{OFFS}}", &list(offs))
            .replace("{{LENS}}", &list(lens))
            .replace(
                "{{LIMIT}}",
                &std::env::var("LAB_PERSIST_LIMIT").unwrap_or("4000000".into()),
            );
        // SAFETY: every index is clamped to its region (min(.., len - 1)), the counter to slot 0.
        unsafe { lab_pipeline(gpu, "lab_persist", code) }
    };
    // Runs `n` dispatches (warm-up 3 + reps) with a fresh counter slot each; returns s / rep.
    let timed =
        |pipeline: &Arc<wgpu::ComputePipeline>,
         groups: u32,
         per_rep: &dyn Fn(&mut wgpu::ComputePass<'_>, &qwgpu_engine::gpu::Dispatch)| {
            gpu.queue
                .write_buffer(&ctr.buf, 0, &vec![0u8; (slots * 256) as usize]);
            gpu.queue.write_buffer(&out.buf, 0, &[0u8; 4]);
            let ds: Vec<_> = (0..slots)
                .map(|i| {
                    gpu.dispatch(
                        "persist",
                        pipeline,
                        &[w.whole(), out.whole(), ctr.slice(i * 256, 256)],
                        Grid::fixed(groups),
                    )
                })
                .collect();
            let run = |from: usize, n: usize| {
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    for d in &ds[from..from + n] {
                        per_rep(&mut pass, d);
                    }
                }
                gpu.queue.submit([enc.finish()]);
                gpu.wait();
            };
            run(0, 3);
            let t0 = Instant::now();
            run(3, reps as usize);
            let s = t0.elapsed().as_secs_f64() / reps as f64;
            let flag = pollster::block_on(gpu.read_u32(&out.buf, 0, 1)).unwrap()[0];
            (s, flag == 0xDEAD)
        };
    let bytes = total / 8; // per phase: the mean of the eight regions
                           // One dispatch per read: pipelines for each region, each a single phase without a barrier.
    let singles: Vec<_> = (0..8)
        .map(|i| {
            let groups = lens[i].div_ceil(WG * 4);
            let loads = "        let v0 = w[min(base, n - 1u)];\n        let v1 = w[min(base + WG, n - 1u)];\n        let v2 = w[min(base + 2u * WG, n - 1u)];\n        let v3 = w[min(base + 3u * WG, n - 1u)];\n        acc ^= v0 ^ v1 ^ v2 ^ v3;\n";
            let p = read_pipeline(gpu, loads, WG, 4, 0);
            gpu.dispatch(
                "read",
                &p,
                &[w.slice(offs[i] as u64 * 16, lens[i] as u64 * 16), out.whole()],
                Grid::fixed(groups),
            )
        })
        .collect();
    let s = time_recorded(gpu, reps, |pass| {
        for i in 0..N as usize {
            singles[i % 8].record(pass, ONE_TOKEN, gpu.caps.max_workgroups_per_dim)
        }
    }) / N as f64;
    report(
        "persist baseline: one dispatch per phase",
        s,
        bytes,
        1,
        roofline,
    );
    // Chained phases: every phase its own workgroups, waiting only on the previous phase.
    let nwgs: Vec<u32> = lens.iter().map(|l| l.div_ceil(WG * 4)).collect();
    let groups: u32 = (0..N as usize).map(|i| nwgs[i % 8]).sum();
    let code = include_str!("lab_chained.wgsl")
        .replace("{{WG}}", &WG.to_string())
        .replace("{{PHASES}}", &N.to_string())
        .replace("{{OFFS}}", &list(&offs))
        .replace("{{LENS}}", &list(&lens))
        .replace("{{NWGS}}", &list(&nwgs))
        .replace(
            "{{LIMIT}}",
            &std::env::var("LAB_PERSIST_LIMIT").unwrap_or("4000000".into()),
        );
    // SAFETY: every index is clamped to its region, the counters to the slot's 64.
    let p = unsafe { lab_pipeline(gpu, "lab_chained", code) };
    let (s, failed) = timed(&p, groups, &|pass, d| {
        d.record(pass, ONE_TOKEN, gpu.caps.max_workgroups_per_dim)
    });
    report(
        &format!(
            "persist {N} chained phases, {groups} workgroups{}",
            if failed { " WAIT TIMED OUT" } else { "" }
        ),
        s / N as f64,
        bytes,
        1,
        roofline,
    );
    for grid_per_sm in [1u32, 2, 4] {
        let groups = 132 * grid_per_sm;
        for prefetch in [false, true] {
            let p = make(N, prefetch, &offs, &lens);
            let (s, failed) = timed(&p, groups, &|pass, d| {
                d.record(pass, ONE_TOKEN, gpu.caps.max_workgroups_per_dim)
            });
            report(
                &format!(
                    "persist {N} phases, grid {groups}, prefetch {prefetch}{}",
                    if failed { " BARRIER TIMED OUT" } else { "" }
                ),
                s / N as f64,
                bytes,
                1,
                roofline,
            );
        }
        let p = make(N, false, &offs, &[0; 8]);
        let (s, failed) = timed(&p, groups, &|pass, d| {
            d.record(pass, ONE_TOKEN, gpu.caps.max_workgroups_per_dim)
        });
        report(
            &format!(
                "persist barrier alone, grid {groups}{}",
                if failed { " BARRIER TIMED OUT" } else { "" }
            ),
            s / N as f64,
            0,
            1,
            roofline,
        );
    }
}

/// Instruction throughput (`lab alu`): each thread runs `K` rounds of 8 independent chains of
/// one operation (`lab_alu.wgsl`); reported as lane operations per ns per SM-sized share
/// (`--sms`, 132 for an H200), the figure to compare with the decode matmuls' work per weight
/// byte (a packed 8-bit dot product against an f32 fma, an integer multiply-add, logic).
fn alu(gpu: &Arc<Gpu>, reps: u32, sms: f64) {
    use qwgpu_engine::gpu::Grid;
    const K: u32 = 1024;
    const WG: u32 = 256;
    let groups = (sms as u32).max(1) * 16;
    let seeds = gpu.storage("seeds", 256).unwrap();
    let out = gpu.storage("out", 1 << 16).unwrap();
    // (label, chains 0-3, chains 4-7, lane operations per chain step)
    let dp4a = "a{j} = dot4U8Packed(a{j}, b) + a{j};";
    let fma = "f{j} = fma(f{j}, fb, fc);";
    let kinds: [(&str, &str, &str, u32); 6] = [
        ("dot4U8Packed + u32", dp4a, dp4a, 1),
        (
            "dot4I8Packed + i32",
            "a{j} = bitcast<u32>(dot4I8Packed(a{j}, b) + bitcast<i32>(a{j}));",
            "a{j} = bitcast<u32>(dot4I8Packed(a{j}, b) + bitcast<i32>(a{j}));",
            1,
        ),
        (
            "u32 multiply-add",
            "a{j} = a{j} * b + c;",
            "a{j} = a{j} * b + c;",
            1,
        ),
        (
            "u32 shift + and/xor",
            "a{j} = (a{j} & b) ^ (a{j} >> 3u);",
            "a{j} = (a{j} & b) ^ (a{j} >> 3u);",
            2,
        ),
        ("f32 fma", fma, fma, 1),
        ("dot4U8Packed (4 chains) + f32 fma (4)", dp4a, fma, 1),
    ];
    for (label, op_a, op_b, ops) in kinds {
        let body: String = (0..8)
            .map(|j| {
                let op = if j < 4 { op_a } else { op_b };
                format!("        {}\n", op.replace("{j}", &j.to_string()))
            })
            .collect();
        let code = include_str!("lab_alu.wgsl")
            .replace("{{BODY}}", &body)
            .replace("{{K}}", &K.to_string())
            .replace("{{WG}}", &WG.to_string());
        // SAFETY: the seeds are read at lid % 16 (16 vec4 in 256 bytes), out at g % 16384.
        let pipeline = unsafe { lab_pipeline(gpu, "lab_alu", code) };
        let d = gpu.dispatch(
            "alu",
            &pipeline,
            &[seeds.whole(), out.whole()],
            Grid::fixed(groups),
        );
        let s = time_dispatch(gpu, &d, ONE_TOKEN, reps);
        let lane_ops = (groups * WG) as f64 * K as f64 * 8.0 * ops as f64;
        println!(
            "{{\"bench\": \"alu {label}\", \"us\": {:.1}, \"lane_ops_per_ns_per_sm\": {:.1}}}",
            s * 1e6,
            lane_ops / s / 1e9 / sms
        );
    }
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
            let s = time_dispatch(gpu, &disp, ONE_TOKEN, reps);
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
                d.record(pass, ONE_TOKEN, gpu.caps.max_workgroups_per_dim)
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
    let all = !args.iter().any(|a| {
        a == "matmul"
            || a == "layer"
            || a == "read"
            || a == "chain"
            || a == "alu"
            || a == "rows"
            || a == "prefetch"
            || a == "persist"
            || a == "mmchain"
    });
    let checks = args.iter().any(|a| a == "--checks");
    // `--prefill N`: also time an N-token prompt chunk (prefill tile).
    let mut tokens = vec![1u32, 2];
    // `--four`: also the 4-token decode tile of a batch of four streams.
    if args.iter().any(|a| a == "--four") {
        tokens.push(4);
    }
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
    if args.iter().any(|a| a == "prefetch") {
        prefetch(&gpu, reps, roofline);
    }
    if args.iter().any(|a| a == "persist") {
        persist(&gpu, reps, roofline);
    }
    if args.iter().any(|a| a == "rows") {
        rows(&gpu, reps, roofline);
    }
    if args.iter().any(|a| a == "mmchain") {
        let only = args
            .iter()
            .position(|a| a == "--shapes")
            .and_then(|i| args.get(i + 1))
            .map(|s| s.as_str());
        mmchain(
            &gpu,
            reps,
            roofline,
            flag("--phases").unwrap_or(8.0) as u32,
            flag("--grid").unwrap_or(0.0) as u32,
            only,
        );
    }
    if args.iter().any(|a| a == "alu") {
        alu(&gpu, reps, flag("--sms").unwrap_or(132.0));
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
