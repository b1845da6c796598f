//! RMSNorm, embedding gather, SwiGLU and argmax against scalar CPU references.

use qwgpu_engine::gpu::{GpuOptions, Step, StepShape, StepSlot};
use qwgpu_engine::ops::argmax::{argmax, scratch_bytes};
use qwgpu_engine::ops::embed::embed;
use qwgpu_engine::ops::matrix::{Matrix, MatrixData};
use qwgpu_engine::ops::norm::{rms_norm, rms_norm_pair};
use qwgpu_engine::ops::swiglu::swiglu;
use qwgpu_engine::ops::Act;
use qwgpu_engine::quant::{
    decode_floats, dequantize_row, encode_floats, quantize_row, FloatType, WeightFormat,
};
use qwgpu_tests::*;

/// RMSNorm: a sum of `dim` squares in f32 then one rsqrt and two products: a few ulps.
const NORM_RTOL: f32 = 1e-5;

fn cpu_rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (ms + eps as f64).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, w)| (*w as f64 * (*v as f64 * inv)) as f32)
        .collect()
}

#[test]
fn rms_norm_pair_gives_the_bits_of_two_norms() {
    // The MTP head's two pre-fc norms in one dispatch: x1 (stride dim) into columns 0..dim and x2
    // (a column range of a wider buffer) into dim..2dim of one [T, 2 dim] output, against two
    // rms_norm dispatches bit for bit and against the CPU.
    let gpu = gpu();
    let mut rng = Rng(12);
    for (dim, t) in [(64u32, 1usize), (100, 3), (5120, 2)] {
        let d = dim as usize;
        let x1 = rng.vec(t * d, 2.0);
        let x2 = rng.vec(t * 3 * d, 3.0);
        let (w1, w2) = (rng.vec(d, 1.5), rng.vec(d, 0.5));
        let (x1b, x2b) = (upload_f32(&gpu, "x1", &x1), upload_f32(&gpu, "x2", &x2));
        let (w1b, w2b) = (upload_f32(&gpu, "w1", &w1), upload_f32(&gpu, "w2", &w2));
        let sb = step_buffer(
            &gpu,
            Step {
                n_tokens: t as u32,
                n_out: 1,
                ..Default::default()
            },
        );
        let slot = StepSlot {
            buf: &sb,
            offset: 0,
        };
        let shape = StepShape {
            n_tokens: t as u32,
            n_out: 1,
            keys: 0,
        };
        let x2a = Act {
            buf: &x2b,
            stride: 3 * dim,
            col: dim,
        };
        let yp = gpu.storage("pair", (t * 2 * d * 4) as u64).unwrap();
        let pair = pollster::block_on(rms_norm_pair(
            &gpu,
            dim,
            1e-6,
            (Act::new(&x1b, dim), &w1b, Act::at(&yp, 2 * dim, 0)),
            (x2a, &w2b, Act::at(&yp, 2 * dim, dim)),
            slot,
        ))
        .unwrap();
        run(&gpu, &[pair], shape);
        let ys = gpu.storage("single", (t * 2 * d * 4) as u64).unwrap();
        let one = pollster::block_on(rms_norm(
            &gpu,
            dim,
            1e-6,
            Act::new(&x1b, dim),
            &w1b,
            Act::at(&ys, 2 * dim, 0),
            slot,
            false,
        ))
        .unwrap();
        let two = pollster::block_on(rms_norm(
            &gpu,
            dim,
            1e-6,
            x2a,
            &w2b,
            Act::at(&ys, 2 * dim, dim),
            slot,
            false,
        ))
        .unwrap();
        run(&gpu, &[one, two], shape);
        let (got, want) = (
            read_f32(&gpu, &yp, t * 2 * d),
            read_f32(&gpu, &ys, t * 2 * d),
        );
        assert_bits_eq(&format!("rms_norm_pair dim {dim} T {t}"), &got, &want);
        let mut cpu = Vec::new();
        for r in 0..t {
            cpu.extend(cpu_rms_norm(&x1[r * d..(r + 1) * d], &w1, 1e-6));
            cpu.extend(cpu_rms_norm(
                &x2[r * 3 * d + d..r * 3 * d + 2 * d],
                &w2,
                1e-6,
            ));
        }
        let scale: Vec<f32> = cpu.iter().map(|v| v.abs()).collect();
        assert_close(
            &format!("rms_norm_pair dim {dim} T {t} vs CPU"),
            &got,
            &cpu,
            &scale,
            1e-6,
            NORM_RTOL,
        );
    }
    // Outputs in two buffers are refused with an error.
    let a = gpu.storage("a", 256).unwrap();
    let b = gpu.storage("b", 256).unwrap();
    let w = gpu.storage("w", 256).unwrap();
    let sb = step_buffer(&gpu, Step::default());
    let e = pollster::block_on(rms_norm_pair(
        &gpu,
        16,
        1e-6,
        (Act::new(&a, 16), &w, Act::new(&a, 16)),
        (Act::new(&b, 16), &w, Act::new(&b, 16)),
        StepSlot {
            buf: &sb,
            offset: 0,
        },
    ));
    assert!(
        matches!(&e, Err(err) if err.to_string().contains("one buffer")),
        "expected an error for outputs in two buffers"
    );
}

#[test]
fn rms_norm_matches_cpu() {
    let gpu = gpu();
    let mut rng = Rng(10);
    for (dim, t) in [(64u32, 1usize), (100, 3), (5120, 2), (5120, 7)] {
        let x = rng.vec(t * dim as usize, 2.0);
        let w = rng.vec(dim as usize, 1.5);
        let xb = upload_f32(&gpu, "x", &x);
        let wb = upload_f32(&gpu, "w", &w);
        let yb = gpu.storage("y", (t * dim as usize * 4) as u64).unwrap();
        let sb = step_buffer(
            &gpu,
            Step {
                n_tokens: t as u32,
                pos: 0,
                n_confirmed: 0,
                n_out: 1,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let slot = StepSlot {
            buf: &sb,
            offset: 0,
        };
        let d = pollster::block_on(rms_norm(
            &gpu,
            dim,
            1e-6,
            Act::new(&xb, dim),
            &wb,
            Act::new(&yb, dim),
            slot,
            false,
        ))
        .unwrap();
        run(
            &gpu,
            &[d],
            StepShape {
                n_tokens: t as u32,
                n_out: 1,
                keys: 0,
            },
        );
        let got = read_f32(&gpu, &yb, t * dim as usize);
        let mut want = Vec::new();
        for r in 0..t {
            want.extend(cpu_rms_norm(
                &x[r * dim as usize..(r + 1) * dim as usize],
                &w,
                1e-6,
            ));
        }
        let scale: Vec<f32> = want.iter().map(|v| v.abs()).collect();
        assert_close(
            &format!("rms_norm dim {dim} T {t}"),
            &got,
            &want,
            &scale,
            1e-6,
            NORM_RTOL,
        );

        // Out-rows mode: only the last 2 rows (or 1), written compactly.
        let n_out = t.min(2);
        let sb2 = step_buffer(
            &gpu,
            Step {
                n_tokens: t as u32,
                pos: 0,
                n_confirmed: 0,
                n_out: n_out as u32,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let yo = gpu
            .storage("yo", (n_out * dim as usize * 4) as u64)
            .unwrap();
        let d = pollster::block_on(rms_norm(
            &gpu,
            dim,
            1e-6,
            Act::new(&xb, dim),
            &wb,
            Act::new(&yo, dim),
            StepSlot {
                buf: &sb2,
                offset: 0,
            },
            true,
        ))
        .unwrap();
        run(
            &gpu,
            &[d],
            StepShape {
                n_tokens: t as u32,
                n_out: n_out as u32,
                keys: 0,
            },
        );
        let got_o = read_f32(&gpu, &yo, n_out * dim as usize);
        assert_bits_eq(
            "out rows = last rows of the full norm",
            &got_o,
            &got[(t - n_out) * dim as usize..],
        );
    }
}

#[test]
fn embed_gathers_every_format_across_chunks() {
    // A 64 KiB binding cap splits the table into several chunks; ids land in different ones.
    let gpu = gpu_with(GpuOptions {
        shader_checks: Some(true),
        max_binding: Some(1 << 16),
        ..Default::default()
    });
    let mut rng = Rng(11);
    let (n, k) = (1000usize, 256usize);
    for format in [
        WeightFormat::Affine {
            bits: 4,
            group: 64,
            scale: FloatType::BF16,
        },
        WeightFormat::Affine {
            bits: 8,
            group: 32,
            scale: FloatType::F32,
        },
        WeightFormat::Affine {
            bits: 4,
            group: 128,
            scale: FloatType::F16,
        },
        WeightFormat::Dense(FloatType::BF16),
        WeightFormat::Dense(FloatType::F32),
        WeightFormat::Dense(FloatType::F16),
    ] {
        let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.1).collect();
        let (weight, scales, biases, table) = match format {
            WeightFormat::Affine { bits, group, scale } => {
                let (mut c, mut s, mut b) = (vec![], vec![], vec![]);
                for r in 0..n {
                    let (c1, s1, b1) = quantize_row(&w[r * k..(r + 1) * k], bits, group as usize);
                    c.extend(c1);
                    s.extend(s1);
                    b.extend(b1);
                }
                let (sb, bb) = (encode_floats(scale, &s), encode_floats(scale, &b));
                let (s2, b2) = (decode_floats(scale, &sb), decode_floats(scale, &bb));
                let (wpr, gpr) = (k * bits as usize / 32, k / group as usize);
                let table: Vec<f32> = (0..n)
                    .flat_map(|r| {
                        dequantize_row(
                            &c[r * wpr..(r + 1) * wpr],
                            &s2[r * gpr..(r + 1) * gpr],
                            &b2[r * gpr..(r + 1) * gpr],
                            bits,
                            group as usize,
                            k,
                        )
                    })
                    .collect();
                (bytemuck::cast_slice(&c).to_vec(), sb, bb, table)
            }
            WeightFormat::Dense(t) => {
                let b = encode_floats(t, &w);
                let table = decode_floats(t, &b);
                (b, vec![], vec![], table)
            }
        };
        let m = Matrix::upload(
            &gpu,
            "embed",
            &MatrixData {
                n,
                k,
                format,
                weight: &weight,
                scales: &scales,
                biases: &biases,
            },
        )
        .unwrap();
        assert!(
            m.chunks.len() > 1,
            "{}: expected a split table",
            format.describe()
        );
        let ids: Vec<u32> = vec![7, 0, 999, 513, 7, 260];
        let idb = gpu
            .storage_init(
                "ids",
                bytemuck::cast_slice(&[[1234u32].as_slice(), &ids].concat()),
            )
            .unwrap();
        let t = ids.len();
        let yb = gpu.storage("y", (t * k * 4) as u64).unwrap();
        let sb = step_buffer(
            &gpu,
            Step {
                n_tokens: t as u32,
                pos: 0,
                n_confirmed: 0,
                n_out: 1,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let d = pollster::block_on(embed(
            &gpu,
            &m,
            &idb,
            1,
            Act::new(&yb, k as u32),
            StepSlot {
                buf: &sb,
                offset: 0,
            },
        ))
        .unwrap();
        run(
            &gpu,
            &d,
            StepShape {
                n_tokens: t as u32,
                n_out: 1,
                keys: 0,
            },
        );
        let got = read_f32(&gpu, &yb, t * k);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| table[id as usize * k..(id as usize + 1) * k].to_vec())
            .collect();
        let scale: Vec<f32> = want.iter().map(|v| v.abs()).collect();
        // Dequantization is one multiply-add per element: exact up to f32 rounding.
        assert_close(
            &format!("embed {}", format.describe()),
            &got,
            &want,
            &scale,
            1e-7,
            1e-6,
        );
    }
}

#[test]
fn swiglu_matches_cpu() {
    let gpu = gpu();
    let mut rng = Rng(12);
    for (dim, t) in [(64u32, 1usize), (300, 3), (17408, 2)] {
        let gu = rng.vec(t * 2 * dim as usize, 6.0);
        let gb = upload_f32(&gpu, "gu", &gu);
        let ab = gpu.storage("a", (t * dim as usize * 4) as u64).unwrap();
        let sb = step_buffer(
            &gpu,
            Step {
                n_tokens: t as u32,
                pos: 0,
                n_confirmed: 0,
                n_out: 1,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let d = pollster::block_on(swiglu(
            &gpu,
            dim,
            &gb,
            &ab,
            StepSlot {
                buf: &sb,
                offset: 0,
            },
        ))
        .unwrap();
        run(
            &gpu,
            &[d],
            StepShape {
                n_tokens: t as u32,
                n_out: 1,
                keys: 0,
            },
        );
        let got = read_f32(&gpu, &ab, t * dim as usize);
        let d = dim as usize;
        let want: Vec<f32> = (0..t * d)
            .map(|i| {
                let (r, j) = (i / d, i % d);
                let g = gu[r * 2 * d + j] as f64;
                (g / (1.0 + (-g).exp()) * gu[r * 2 * d + d + j] as f64) as f32
            })
            .collect();
        let scale: Vec<f32> = want.iter().map(|v| v.abs()).collect();
        // exp in WGSL is accurate to a few ulps (lavapipe) / 2^-21 relative on GPUs.
        assert_close(&format!("swiglu {dim}"), &got, &want, &scale, 1e-6, 2e-6);
    }
}

#[test]
fn argmax_picks_lowest_index_on_ties_and_ignores_nan() {
    let gpu = gpu();
    let mut rng = Rng(13);
    for vocab in [5u32, 512, 4097, 248320] {
        let rows = 2usize;
        let mut logits = rng.vec(rows * vocab as usize, 10.0);
        let v = vocab as usize;
        // Row 0: a tie for the maximum at two places (the lower index must win), plus a NaN.
        let (a, b) = (v / 3, v - 1);
        logits[a] = 50.0;
        logits[b] = 50.0;
        logits[(v / 2).min(v - 2)] = f32::NAN;
        // Row 1: maximum at the last index.
        logits[v + v - 1] = 60.0;
        let lb = upload_f32(&gpu, "logits", &logits);
        let scratch = gpu
            .storage("scratch", scratch_bytes(vocab, rows as u32))
            .unwrap();
        let ids = gpu.storage("ids", 16).unwrap();
        let sb = step_buffer(
            &gpu,
            Step {
                n_tokens: 5,
                pos: 0,
                n_confirmed: 0,
                n_out: rows as u32,
                force: 0,
                rollback: 0,
                ..Default::default()
            },
        );
        let d = pollster::block_on(argmax(
            &gpu,
            vocab,
            &lb,
            &scratch,
            &ids,
            1,
            StepSlot {
                buf: &sb,
                offset: 0,
            },
        ))
        .unwrap();
        run(
            &gpu,
            &d,
            StepShape {
                n_tokens: 5,
                n_out: rows as u32,
                keys: 0,
            },
        );
        let got = read_u32(&gpu, &ids, 3);
        let cpu = |row: &[f32]| {
            let mut best = 0usize;
            for (i, x) in row.iter().enumerate() {
                if *x > row[best] || row[best].is_nan() && !x.is_nan() {
                    best = i;
                }
            }
            best as u32
        };
        assert_eq!(got[1], cpu(&logits[..v]), "vocab {vocab} row 0");
        assert_eq!(
            got[1], a as u32,
            "vocab {vocab}: tie must pick the lower index"
        );
        assert_eq!(got[2], cpu(&logits[v..]), "vocab {vocab} row 1");
    }
}

#[test]
fn timestamps_read_back_while_another_thread_polls_the_same_device() {
    // Benchmarks read GPU timestamps without an executor (`Timestamps::seconds`) while other
    // work (other tests, a server's streams) may poll the same device from another thread: the
    // thread whose poll completes the map then runs its callback, possibly after our own poll
    // has returned. Every read must still arrive, with increasing times.
    use qwgpu_engine::gpu::timer::Timestamps;
    use std::sync::atomic::{AtomicBool, Ordering};
    let gpu = model_gpu();
    let Some(stamps) = Timestamps::new(&gpu, "two-thread timestamps", 2) else {
        eprintln!("no timestamp queries on this adapter: nothing to check");
        return;
    };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let poller = {
        let (gpu, stop) = (gpu.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let enc = gpu
                    .device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
                gpu.queue.submit([enc.finish()]);
                gpu.wait();
            }
        })
    };
    let mut result = Ok(());
    for i in 0..400 {
        let mut enc = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        drop(enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &stamps.set,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            }),
        }));
        stamps.resolve(&mut enc, 2);
        gpu.queue.submit([enc.finish()]);
        match stamps.seconds(&gpu, 2) {
            Ok(t) if t.len() == 2 && t[1] >= t[0] => {}
            other => {
                result = Err(format!("read {i}: {other:?}"));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    poller.join().expect("the polling thread");
    result.unwrap();
}
