//! The experimental tiled prefill GEMM (`matmul_gemm.wgsl`, `ops::matmul::set_prefill_gemm`)
//! against a scalar CPU reference (RMS-style tolerance on Σ|x·w|) for every quantized format,
//! with a residual add, odd row counts and several token tiles; a prompt row's bits do not depend
//! on the chunk it is computed in; and the SwiGLU epilogue gives the bits of the stacked GEMM
//! followed by the SwiGLU kernel. One test: the switch is process-wide.

use qwgpu_engine::gpu::{Gpu, Rows, Step, StepShape, StepSlot};
use qwgpu_engine::ops::matmul::{matmul, set_prefill_gemm, MatmulOpts, MT_PREFILL};
use qwgpu_engine::ops::matrix::{Matrix, MatrixData};
use qwgpu_engine::ops::Act;
use qwgpu_engine::quant::{
    decode_floats, dequantize_row, encode_floats, quantize_row, FloatType, WeightFormat,
};
use qwgpu_tests::*;

struct Q {
    n: usize,
    k: usize,
    format: WeightFormat,
    weight: Vec<u8>,
    scales: Vec<u8>,
    biases: Vec<u8>,
    /// The weights the GPU sees, as f32.
    dense: Vec<f32>,
}

fn make(rng: &mut Rng, n: usize, k: usize, format: WeightFormat) -> Q {
    let WeightFormat::Affine { bits, group, scale } = format else {
        unreachable!("quantized formats only")
    };
    let (mut codes, mut s, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let row: Vec<f32> = (0..k).map(|_| rng.normal() * 0.05).collect();
        let (c, sc, bi) = quantize_row(&row, bits, group as usize);
        codes.extend(c);
        s.extend(sc);
        b.extend(bi);
    }
    let (scales, biases) = (encode_floats(scale, &s), encode_floats(scale, &b));
    let (s2, b2) = (decode_floats(scale, &scales), decode_floats(scale, &biases));
    let (gpr, wpr) = (k / group as usize, k * bits as usize / 32);
    let mut dense = Vec::with_capacity(n * k);
    for r in 0..n {
        dense.extend(dequantize_row(
            &codes[r * wpr..(r + 1) * wpr],
            &s2[r * gpr..(r + 1) * gpr],
            &b2[r * gpr..(r + 1) * gpr],
            bits,
            group as usize,
            k,
        ));
    }
    Q {
        n,
        k,
        format,
        weight: bytemuck::cast_slice(&codes).to_vec(),
        scales,
        biases,
        dense,
    }
}

fn data(q: &Q) -> MatrixData<'_> {
    MatrixData {
        n: q.n,
        k: q.k,
        format: q.format,
        weight: &q.weight,
        scales: &q.scales,
        biases: &q.biases,
    }
}

/// Prefill-tile matmul over `t` rows of x into y [t, ny] (starting from `y0` with `add`).
fn run_mm(
    gpu: &Gpu,
    m: &Matrix,
    x: &[f32],
    t: usize,
    ny: usize,
    add: bool,
    swiglu: bool,
) -> Vec<f32> {
    let xb = upload_f32(gpu, "x", x);
    let y0: Vec<f32> = (0..t * ny).map(|i| (i % 5) as f32 * 0.5).collect();
    let yb = upload_f32(gpu, "y", &y0);
    let sb = step_buffer(
        gpu,
        Step {
            n_tokens: t as u32,
            pos: 0,
            n_confirmed: 0,
            n_out: 1,
            force: 0,
        },
    );
    let slot = StepSlot {
        buf: &sb,
        offset: 0,
    };
    let opts = MatmulOpts {
        rows: Rows::Tokens,
        add,
        mt: MT_PREFILL,
        swiglu,
    };
    let d = pollster::block_on(matmul(
        gpu,
        m,
        Act::new(&xb, m.k),
        Act::new(&yb, ny as u32),
        slot,
        opts,
    ))
    .unwrap();
    run(
        gpu,
        &d,
        StepShape {
            n_tokens: t as u32,
            n_out: 1,
        },
    );
    let mut y = read_f32(gpu, &yb, t * ny);
    if add {
        for (v, a) in y.iter_mut().zip(&y0) {
            *v -= a;
        }
    }
    y
}

#[test]
fn tiled_prefill_gemm_matches_cpu_and_is_chunk_invariant() {
    use FloatType::*;
    set_prefill_gemm(true);
    let formats = [
        WeightFormat::Affine {
            bits: 4,
            group: 64,
            scale: BF16,
        },
        WeightFormat::Affine {
            bits: 4,
            group: 32,
            scale: F32,
        },
        WeightFormat::Affine {
            bits: 4,
            group: 128,
            scale: F16,
        },
        WeightFormat::Affine {
            bits: 8,
            group: 64,
            scale: BF16,
        },
    ];
    for gpu in gpu_variants() {
        let mut rng = Rng(12);
        for f in formats {
            for (n, k) in [(70usize, 256usize), (130, 1024)] {
                let q = make(&mut rng, n, k, f);
                let m = Matrix::upload(&gpu, "w", &data(&q)).unwrap();
                let t = 70; // two token tiles
                let x = rng.vec(t * k, 1.0);
                let (mut want, mut mag) = (vec![0f32; t * n], vec![0f32; t * n]);
                for ti in 0..t {
                    for r in 0..n {
                        let (mut s, mut a) = (0f64, 0f64);
                        for j in 0..k {
                            let v = x[ti * k + j] as f64 * q.dense[r * k + j] as f64;
                            s += v;
                            a += v.abs();
                        }
                        want[ti * n + r] = s as f32;
                        mag[ti * n + r] = a as f32;
                    }
                }
                let what = format!("{} n={n} k={k} ({})", f.describe(), gpu.describe());
                for add in [false, true] {
                    let got = run_mm(&gpu, &m, &x, t, n, add, false);
                    assert_close(
                        &format!("GEMM vs CPU, add={add}, {what}"),
                        &got,
                        &want,
                        &mag,
                        1e-5,
                        2e-5,
                    );
                }
                // Chunk invariance: rows of a 70-row call equal the same rows computed alone.
                let all = run_mm(&gpu, &m, &x, t, n, false, false);
                for (a, b) in [(64usize, 70usize), (9, 11), (0, 1)] {
                    let part = run_mm(&gpu, &m, &x[a * k..b * k], b - a, n, false, false);
                    assert_bits_eq(
                        &format!("GEMM rows {a}..{b} alone vs in a 70-row call, {what}"),
                        &part,
                        &all[a * n..b * n],
                    );
                }
                // SwiGLU epilogue: interleaved gate/up vs stacked GEMM then the SwiGLU kernel.
                let (g, u) = (make(&mut rng, n, k, f), make(&mut rng, n, k, f));
                let inter = Matrix::upload_interleaved(
                    &gpu,
                    "gate~up",
                    ("gate", &data(&g)),
                    ("up", &data(&u)),
                )
                .unwrap();
                let stacked = Matrix::upload_stacked(
                    &gpu,
                    "gate+up",
                    &[("gate", &data(&g)), ("up", &data(&u))],
                )
                .unwrap();
                let fused = run_mm(&gpu, &inter, &x, t, n, false, true);
                let gu = run_mm(&gpu, &stacked, &x, t, 2 * n, false, false);
                let gub = upload_f32(&gpu, "gu", &gu);
                let act = gpu.storage("act", (t * n * 4) as u64).unwrap();
                let sb = step_buffer(
                    &gpu,
                    Step {
                        n_tokens: t as u32,
                        pos: 0,
                        n_confirmed: 0,
                        n_out: 1,
                        force: 0,
                    },
                );
                let d = pollster::block_on(qwgpu_engine::ops::swiglu::swiglu(
                    &gpu,
                    n as u32,
                    &gub,
                    &act,
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
                    },
                );
                assert_bits_eq(
                    &format!("GEMM SwiGLU epilogue vs GEMM + swiglu kernel, {what}"),
                    &fused,
                    &read_f32(&gpu, &act, t * n),
                );
            }
        }
    }
    set_prefill_gemm(false);
}
