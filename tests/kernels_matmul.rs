//! matmul.wgsl against a scalar CPU reference: every weight format, tiny / odd / real 27B shapes,
//! decode (1 row), verify (2 rows) and prefill (N rows), the residual epilogue, column offsets,
//! matrices split over several bindings, and bit-exact batch invariance.

use qwgpu_engine::gpu::{Gpu, GpuOptions, Rows, Step, StepShape, StepSlot};
use qwgpu_engine::ops::matmul::{
    matmul, set_prefill_gemm, set_staged, set_xreg, MatmulOpts, MT_FOUR, MT_ONE, MT_PREFILL,
    MT_SMALL, MT_THREE,
};
use qwgpu_engine::ops::matrix::{Matrix, MatrixData};
use qwgpu_engine::ops::Act;
use qwgpu_engine::quant::{
    decode_floats, dequantize_row, encode_floats, quantize_row, FloatType, WeightFormat,
};
use qwgpu_tests::*;

/// This file checks the portable kernels (block reads for decode tiles, word reads for prompt
/// tiles) that every device can run; the register and staged decode kernels and the tiled GEMM, on by default
/// where the limits allow, have their own files. Every test here sets the same process-wide
/// switches, so they never race.
fn portable_kernels() {
    set_staged(false);
    set_xreg(false);
    set_prefill_gemm(false);
}

/// f32 accumulation over K terms: error grows like K·eps relative to Σ|x·w|.
const RTOL: f32 = 2e-6;
const ATOL: f32 = 1e-6;

struct Case {
    n: usize,
    k: usize,
    format: WeightFormat,
    /// Host bytes in checkpoint layout.
    weight: Vec<u8>,
    scales: Vec<u8>,
    biases: Vec<u8>,
    /// The exact weights the GPU sees, as f32 (after rounding scales / dense values to their type).
    dense: Vec<f32>,
}

fn make_case(rng: &mut Rng, n: usize, k: usize, format: WeightFormat) -> Case {
    let w: Vec<f32> = (0..n * k).map(|_| rng.normal() * 0.05).collect();
    match format {
        WeightFormat::Affine { bits, group, scale } => {
            let (mut codes, mut s, mut b) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..n {
                let (c, sc, bi) = quantize_row(&w[r * k..(r + 1) * k], bits, group as usize);
                codes.extend(c);
                s.extend(sc);
                b.extend(bi);
            }
            let scales = encode_floats(scale, &s);
            let biases = encode_floats(scale, &b);
            let (s2, b2) = (decode_floats(scale, &scales), decode_floats(scale, &biases));
            let gpr = k / group as usize;
            let wpr = k * bits as usize / 32;
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
            Case {
                n,
                k,
                format,
                weight: bytemuck::cast_slice(&codes).to_vec(),
                scales,
                biases,
                dense,
            }
        }
        WeightFormat::Dense(t) => {
            let weight = encode_floats(t, &w);
            let dense = decode_floats(t, &weight);
            Case {
                n,
                k,
                format,
                weight,
                scales: vec![],
                biases: vec![],
                dense,
            }
        }
    }
}

/// y[t, n] = Σ_k x[t, k] w[n, k] in f64, plus Σ|x·w| for the tolerance.
fn cpu_matmul(
    c: &Case,
    x: &[f32],
    t: usize,
    x_stride: usize,
    x_col: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0f32; t * c.n];
    let mut mag = vec![0f32; t * c.n];
    for ti in 0..t {
        let xr = &x[ti * x_stride + x_col..ti * x_stride + x_col + c.k];
        for r in 0..c.n {
            let wr = &c.dense[r * c.k..(r + 1) * c.k];
            let (mut s, mut m) = (0f64, 0f64);
            for j in 0..c.k {
                let p = xr[j] as f64 * wr[j] as f64;
                s += p;
                m += p.abs();
            }
            y[ti * c.n + r] = s as f32;
            mag[ti * c.n + r] = m as f32;
        }
    }
    (y, mag)
}

fn upload(gpu: &Gpu, c: &Case) -> Matrix {
    Matrix::upload(
        gpu,
        "w",
        &MatrixData {
            n: c.n,
            k: c.k,
            format: c.format,
            weight: &c.weight,
            scales: &c.scales,
            biases: &c.biases,
        },
    )
    .unwrap()
}

/// Runs the matmul over `t` rows of `x` and returns y [t, n].
fn gpu_matmul(gpu: &Gpu, m: &Matrix, x: &[f32], t: usize, mt: u32) -> Vec<f32> {
    let n = m.n as usize;
    let xb = upload_f32(gpu, "x", x);
    let yb = gpu.storage("y", (t * n * 4) as u64).unwrap();
    let sb = step_buffer(
        gpu,
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
    let d = pollster::block_on(matmul(
        gpu,
        m,
        Act::new(&xb, m.k),
        Act::new(&yb, m.n),
        slot,
        MatmulOpts {
            rows: Rows::Tokens,
            add: false,
            mt,
            swiglu: false,
        },
    ))
    .unwrap();
    run(
        gpu,
        &d,
        StepShape {
            n_tokens: t as u32,
            n_out: 1,
            keys: 0,
        },
    );
    read_f32(gpu, &yb, t * n)
}

fn formats() -> Vec<WeightFormat> {
    use FloatType::*;
    vec![
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
        WeightFormat::Affine {
            bits: 8,
            group: 32,
            scale: F32,
        },
        WeightFormat::Dense(F32),
        WeightFormat::Dense(F16),
        WeightFormat::Dense(BF16),
    ]
}

fn check_case(gpu: &Gpu, c: &Case, rng: &mut Rng, tokens: &[usize]) {
    let m = upload(gpu, c);
    let what = format!(
        "{} {}x{} ({})",
        c.format.describe(),
        c.n,
        c.k,
        gpu.describe()
    );
    for &t in tokens {
        let x = rng.vec(t * c.k, 1.0);
        let (want, mag) = cpu_matmul(c, &x, t, c.k, 0);
        let mt = match t {
            1 => MT_ONE,
            2 => MT_SMALL,
            _ => MT_PREFILL,
        };
        let got = gpu_matmul(gpu, &m, &x, t, mt);
        assert_close(&format!("{what} T={t}"), &got, &want, &mag, ATOL, RTOL);
    }
}

#[test]
fn matmul_tiny_and_odd_shapes_every_format() {
    portable_kernels();
    for gpu in gpu_variants() {
        let mut rng = Rng(1);
        for f in formats() {
            let group = match f {
                WeightFormat::Affine { group, .. } => group as usize,
                WeightFormat::Dense(t) => 16 / t.size(),
            };
            // tiny, then odd: row counts that are not a multiple of the rows per workgroup and
            // in_features that are an odd number of groups.
            for (n, k) in [
                (8, group.max(32) * 2),
                (37, group.max(16) * 5),
                (3, group.max(16) * 3),
            ] {
                let c = make_case(&mut rng, n, k, f);
                check_case(&gpu, &c, &mut rng, &[1, 2, 11]);
            }
        }
    }
}

#[test]
fn matmul_real_27b_shapes() {
    portable_kernels();
    // The MLP up/gate projection of the 27B (17408 x 5120, 4-bit, group 64, bf16 scales) and the
    // GDN in_proj_qkv (10240 x 5120); decode and verify row counts.
    let gpu = gpu();
    let mut rng = Rng(2);
    for (n, k) in [(17408, 5120), (5120, 6144)] {
        let c = make_case(
            &mut rng,
            n,
            k,
            WeightFormat::Affine {
                bits: 4,
                group: 64,
                scale: FloatType::BF16,
            },
        );
        check_case(&gpu, &c, &mut rng, &[1, 2]);
    }
}

#[test]
fn matmul_split_over_bindings() {
    portable_kernels();
    // A 64 KiB binding cap forces the matrix into several row chunks, as a browser's limit does
    // for the 248,320-row lm_head.
    let gpu = gpu_with(GpuOptions {
        shader_checks: Some(true),
        max_binding: Some(1 << 16),
        ..Default::default()
    });
    let mut rng = Rng(3);
    for f in [
        WeightFormat::Affine {
            bits: 4,
            group: 64,
            scale: FloatType::BF16,
        },
        WeightFormat::Dense(FloatType::F32),
    ] {
        let c = make_case(&mut rng, 1200, 512, f);
        let m = upload(&gpu, &c);
        assert!(
            m.chunks.len() > 2,
            "expected a split, got {} chunk(s)",
            m.chunks.len()
        );
        check_case(&gpu, &c, &mut rng, &[1, 2, 9]);
    }
}

#[test]
fn matmul_residual_epilogue_and_offsets() {
    portable_kernels();
    let gpu = gpu();
    let mut rng = Rng(4);
    let c = make_case(
        &mut rng,
        37,
        128,
        WeightFormat::Affine {
            bits: 4,
            group: 32,
            scale: FloatType::BF16,
        },
    );
    let m = upload(&gpu, &c);
    let t = 3;
    // x rows are 136 wide with the input at column 4; y rows are 50 wide with the output at 5.
    let (xs, xc, ys, yc) = (136usize, 4usize, 50usize, 5usize);
    let x = rng.vec(t * xs, 1.0);
    let y0 = rng.vec(t * ys, 1.0);
    let xb = upload_f32(&gpu, "x", &x);
    let yb = upload_f32(&gpu, "y", &y0);
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
    let d = pollster::block_on(matmul(
        &gpu,
        &m,
        Act::at(&xb, xs as u32, xc as u32),
        Act::at(&yb, ys as u32, yc as u32),
        StepSlot {
            buf: &sb,
            offset: 0,
        },
        MatmulOpts {
            rows: Rows::Tokens,
            add: true,
            mt: MT_PREFILL,
            swiglu: false,
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
    let got = read_f32(&gpu, &yb, t * ys);
    let (prod, mag) = cpu_matmul(&c, &x, t, xs, xc);
    let mut want = y0.clone();
    let mut scale = vec![0f32; t * ys];
    for ti in 0..t {
        for r in 0..c.n {
            want[ti * ys + yc + r] += prod[ti * c.n + r];
            scale[ti * ys + yc + r] = mag[ti * c.n + r] + y0[ti * ys + yc + r].abs();
        }
    }
    assert_close("residual epilogue", &got, &want, &scale, ATOL, RTOL);
}

#[test]
fn matmul_batch_invariance_is_bit_exact() {
    portable_kernels();
    // Row 0 of a 2-row call equals a 1-row call bit for bit (MTP's greedy identity rests on
    // this), and the prefill pipeline gives a row the same bits whatever the call's row count and
    // wherever the row lands in a token tile (chunked-prefill invariance). The two pipelines read
    // the weights in different orders (blocks vs words), so they are not compared with each other.
    for gpu in gpu_variants() {
        let mut rng = Rng(5);
        for f in formats() {
            let c = make_case(&mut rng, 45, 256, f);
            let m = upload(&gpu, &c);
            let x = rng.vec(11 * c.k, 1.0);
            let one = gpu_matmul(&gpu, &m, &x[..c.k], 1, MT_SMALL);
            let two = gpu_matmul(&gpu, &m, &x[..2 * c.k], 2, MT_SMALL);
            assert_bits_eq("T=1 vs row 0 of T=2", &one, &two[..c.n]);
            // The 1-token decode tile gives the verify tile's bits.
            let single = gpu_matmul(&gpu, &m, &x[..c.k], 1, MT_ONE);
            assert_bits_eq(
                "1-token tile vs row 0 of the 2-token tile",
                &single,
                &two[..c.n],
            );
            // Every row of the 3- and 4-token tiles (a batch of streams; four rows, or three in
            // either) is that row's 1-token call.
            for (t, mt) in [(3usize, MT_THREE), (3, MT_FOUR), (4, MT_FOUR)] {
                let four = gpu_matmul(&gpu, &m, &x[..t * c.k], t, mt);
                for r in 0..t {
                    let alone = gpu_matmul(&gpu, &m, &x[r * c.k..(r + 1) * c.k], 1, MT_ONE);
                    assert_bits_eq(
                        &format!("row {r} of the {mt}-token tile with {t} rows vs 1 token"),
                        &four[r * c.n..(r + 1) * c.n],
                        &alone,
                    );
                }
            }
            let pre = gpu_matmul(&gpu, &m, &x, 11, MT_PREFILL);
            let head = gpu_matmul(&gpu, &m, &x[..3 * c.k], 3, MT_PREFILL);
            assert_bits_eq(
                "prefill of rows 0-2 vs rows 0-2 of an 11-row prefill",
                &head,
                &pre[..3 * c.n],
            );
            let tail = gpu_matmul(&gpu, &m, &x[9 * c.k..11 * c.k], 2, MT_PREFILL);
            assert_bits_eq(
                "prefill of rows 9-10 vs rows 9-10 of an 11-row prefill",
                &tail,
                &pre[9 * c.n..11 * c.n],
            );
            let lone = gpu_matmul(&gpu, &m, &x[5 * c.k..6 * c.k], 1, MT_PREFILL);
            assert_bits_eq(
                "prefill of row 5 alone vs row 5 of an 11-row prefill",
                &lone,
                &pre[5 * c.n..6 * c.n],
            );
        }
    }
}

/// Runs the matrices `mats` over `t` rows of `x`, written side by side (each from the column where
/// the previous one ends) into one y [t, Σn], all dispatches in one pass.
fn gpu_matmul_side_by_side(gpu: &Gpu, mats: &[&Matrix], x: &[f32], t: usize, mt: u32) -> Vec<f32> {
    let (n, k) = (mats.iter().map(|m| m.n).sum::<u32>(), mats[0].k);
    let xb = upload_f32(gpu, "x", x);
    let yb = gpu.storage("y", t as u64 * n as u64 * 4).unwrap();
    let sb = step_buffer(
        gpu,
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
    let mut d = Vec::new();
    let mut col = 0;
    for m in mats {
        d.extend(
            pollster::block_on(matmul(
                gpu,
                m,
                Act::new(&xb, k),
                Act::at(&yb, n, col),
                slot,
                MatmulOpts {
                    rows: Rows::Tokens,
                    add: false,
                    mt,
                    swiglu: false,
                },
            ))
            .unwrap(),
        );
        col += m.n;
    }
    run(
        gpu,
        &d,
        StepShape {
            n_tokens: t as u32,
            n_out: 1,
            keys: 0,
        },
    );
    read_f32(gpu, &yb, t * n as usize)
}

#[test]
fn matmul_stacked_parts_equal_separate_matrices_bit_for_bit() {
    portable_kernels();
    // The loader stacks projections of one input (q|k|v, gate|up, GDN in_proj qkv|z|b|a) into one
    // matrix (`Matrix::upload_stacked`): each output column must get the bits the part's own
    // matmul writes there, in every tile, with part sizes that are not multiples of the rows per
    // workgroup, and when a binding cap splits the stack into chunks at rows inside the parts.
    let capped = gpu_with(GpuOptions {
        shader_checks: Some(true),
        max_binding: Some(1 << 16),
        ..Default::default()
    });
    let mut gpus = gpu_variants();
    gpus.push(capped);
    for (gi, gpu) in gpus.iter().enumerate() {
        let mut rng = Rng(6);
        for f in formats() {
            let k = 512;
            let parts: Vec<Case> = [300, 37, 301, 5]
                .into_iter()
                .map(|n| make_case(&mut rng, n, k, f))
                .collect();
            let data: Vec<MatrixData<'_>> = parts
                .iter()
                .map(|c| MatrixData {
                    n: c.n,
                    k: c.k,
                    format: c.format,
                    weight: &c.weight,
                    scales: &c.scales,
                    biases: &c.biases,
                })
                .collect();
            let views: Vec<(&str, &MatrixData<'_>)> = data.iter().map(|d| ("part", d)).collect();
            let stacked = Matrix::upload_stacked(gpu, "stack", &views).unwrap();
            assert_eq!(stacked.n, 643);
            if gi == gpus.len() - 1 {
                assert!(
                    stacked.chunks.len() > 2,
                    "{}: expected a split, got {} chunk(s)",
                    f.describe(),
                    stacked.chunks.len()
                );
            }
            let separate: Vec<Matrix> = parts.iter().map(|c| upload(gpu, c)).collect();
            let separate: Vec<&Matrix> = separate.iter().collect();
            for (t, mt) in [(1, MT_ONE), (2, MT_SMALL), (9, MT_PREFILL)] {
                let x = rng.vec(t * k, 1.0);
                let want = gpu_matmul_side_by_side(gpu, &separate, &x, t, mt);
                let got = gpu_matmul_side_by_side(gpu, &[&stacked], &x, t, mt);
                assert_bits_eq(
                    &format!(
                        "{} stacked vs separate, T={t} ({})",
                        f.describe(),
                        gpu.describe()
                    ),
                    &got,
                    &want,
                );
            }
        }
    }
}

#[test]
fn matmul_stack_of_mixed_formats_is_refused() {
    portable_kernels();
    // Parts stored in different formats (a mixed-precision checkpoint) cannot share a matrix; the
    // loader keeps them apart, and a direct request names both parts.
    let gpu = gpu();
    let mut rng = Rng(7);
    let a = make_case(
        &mut rng,
        8,
        128,
        WeightFormat::Affine {
            bits: 4,
            group: 64,
            scale: FloatType::BF16,
        },
    );
    let b = make_case(
        &mut rng,
        8,
        128,
        WeightFormat::Affine {
            bits: 8,
            group: 64,
            scale: FloatType::BF16,
        },
    );
    let (da, db) = (
        MatrixData {
            n: a.n,
            k: a.k,
            format: a.format,
            weight: &a.weight,
            scales: &a.scales,
            biases: &a.biases,
        },
        MatrixData {
            n: b.n,
            k: b.k,
            format: b.format,
            weight: &b.weight,
            scales: &b.scales,
            biases: &b.biases,
        },
    );
    assert!(!da.stacks_with(&db));
    let err = Matrix::upload_stacked(&gpu, "a+b", &[("a", &da), ("b", &db)])
        .err()
        .expect("a mixed stack must be refused")
        .to_string();
    assert!(
        err.contains("'b'") && err.contains("'a'") && err.contains("8-bit"),
        "{err}"
    );
}

#[test]
fn matmul_swiglu_epilogue_equals_stack_then_swiglu_kernel() {
    portable_kernels();
    // The loader interleaves gate and up rows (`Matrix::upload_interleaved`) so one matmul writes
    // silu(gate) * up (`MatmulOpts::swiglu`): it must give the bits of the gate|up matmul followed
    // by the SwiGLU kernel, in every tile, with an intermediate size that is not a multiple of the
    // rows per workgroup, and when a binding cap splits the interleaved matrix into chunks.
    let capped = gpu_with(GpuOptions {
        shader_checks: Some(true),
        max_binding: Some(1 << 16),
        ..Default::default()
    });
    let mut gpus = gpu_variants();
    gpus.push(capped);
    for (gi, gpu) in gpus.iter().enumerate() {
        let mut rng = Rng(8);
        for f in formats() {
            let (i, k) = (150usize, 1024usize);
            let (gc, uc) = (make_case(&mut rng, i, k, f), make_case(&mut rng, i, k, f));
            let gd = MatrixData {
                n: gc.n,
                k: gc.k,
                format: gc.format,
                weight: &gc.weight,
                scales: &gc.scales,
                biases: &gc.biases,
            };
            let ud = MatrixData {
                n: uc.n,
                k: uc.k,
                format: uc.format,
                weight: &uc.weight,
                scales: &uc.scales,
                biases: &uc.biases,
            };
            let stacked =
                Matrix::upload_stacked(gpu, "gate+up", &[("gate", &gd), ("up", &ud)]).unwrap();
            let inter =
                Matrix::upload_interleaved(gpu, "gate~up", ("gate", &gd), ("up", &ud)).unwrap();
            if gi == gpus.len() - 1 {
                assert!(
                    inter.chunks.len() >= 2,
                    "{}: expected a split, got {} chunk(s)",
                    f.describe(),
                    inter.chunks.len()
                );
            }
            for (t, mt) in [(1, MT_ONE), (2, MT_SMALL), (9, MT_PREFILL)] {
                let x = rng.vec(t * k, 1.0);
                let xb = upload_f32(gpu, "x", &x);
                let gu = gpu.storage("gu", (t * 2 * i * 4) as u64).unwrap();
                let (want, got) = (
                    gpu.storage("want", (t * i * 4) as u64).unwrap(),
                    gpu.storage("got", (t * i * 4) as u64).unwrap(),
                );
                let sb = step_buffer(
                    gpu,
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
                let opts = |swiglu| MatmulOpts {
                    rows: Rows::Tokens,
                    add: false,
                    mt,
                    swiglu,
                };
                let mut d = pollster::block_on(matmul(
                    gpu,
                    &stacked,
                    Act::new(&xb, k as u32),
                    Act::new(&gu, 2 * i as u32),
                    slot,
                    opts(false),
                ))
                .unwrap();
                d.push(
                    pollster::block_on(qwgpu_engine::ops::swiglu::swiglu(
                        gpu, i as u32, &gu, &want, slot,
                    ))
                    .unwrap(),
                );
                d.extend(
                    pollster::block_on(matmul(
                        gpu,
                        &inter,
                        Act::new(&xb, k as u32),
                        Act::new(&got, i as u32),
                        slot,
                        opts(true),
                    ))
                    .unwrap(),
                );
                run(
                    gpu,
                    &d,
                    StepShape {
                        n_tokens: t as u32,
                        n_out: 1,
                        keys: 0,
                    },
                );
                let (want, got) = (read_f32(gpu, &want, t * i), read_f32(gpu, &got, t * i));
                assert_bits_eq(
                    &format!(
                        "{} fused SwiGLU vs matmul + swiglu, T={t} ({})",
                        f.describe(),
                        gpu.describe()
                    ),
                    &got,
                    &want,
                );
                // And against the CPU: silu(gate) * up from the f64 matmuls.
                let (yg, _) = cpu_matmul(&gc, &x, t, k, 0);
                let (yu, _) = cpu_matmul(&uc, &x, t, k, 0);
                for j in 0..t * i {
                    let g = yg[j] as f64;
                    let r = (g / (1.0 + (-g).exp()) * yu[j] as f64) as f32;
                    assert!(
                        (got[j] - r).abs() <= 1e-4 + 1e-3 * r.abs(),
                        "{}: T={t} [{j}] {} vs CPU {r}",
                        f.describe(),
                        got[j]
                    );
                }
            }
        }
    }
}
