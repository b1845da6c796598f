//! matmul.wgsl against a scalar CPU reference: every weight format, tiny / odd / real 27B shapes,
//! decode (1 row), verify (2 rows) and prefill (N rows), the residual epilogue, column offsets,
//! matrices split over several bindings, and bit-exact batch invariance.

use qwgpu_engine::gpu::{Gpu, GpuOptions, Rows, Step, StepShape, StepSlot};
use qwgpu_engine::ops::matmul::{matmul, MatmulOpts, MT_ONE, MT_PREFILL, MT_SMALL};
use qwgpu_engine::ops::matrix::{Matrix, MatrixData};
use qwgpu_engine::ops::Act;
use qwgpu_engine::quant::{decode_floats, dequantize_row, encode_floats, quantize_row, FloatType, WeightFormat};
use qwgpu_tests::*;

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
                dense.extend(dequantize_row(&codes[r * wpr..(r + 1) * wpr], &s2[r * gpr..(r + 1) * gpr], &b2[r * gpr..(r + 1) * gpr], bits, group as usize, k));
            }
            Case { n, k, format, weight: bytemuck::cast_slice(&codes).to_vec(), scales, biases, dense }
        }
        WeightFormat::Dense(t) => {
            let weight = encode_floats(t, &w);
            let dense = decode_floats(t, &weight);
            Case { n, k, format, weight, scales: vec![], biases: vec![], dense }
        }
    }
}

/// y[t, n] = Σ_k x[t, k] w[n, k] in f64, plus Σ|x·w| for the tolerance.
fn cpu_matmul(c: &Case, x: &[f32], t: usize, x_stride: usize, x_col: usize) -> (Vec<f32>, Vec<f32>) {
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
    Matrix::upload(gpu, "w", &MatrixData { n: c.n, k: c.k, format: c.format, weight: &c.weight, scales: &c.scales, biases: &c.biases }).unwrap()
}

/// Runs the matmul over `t` rows of `x` and returns y [t, n].
fn gpu_matmul(gpu: &Gpu, m: &Matrix, x: &[f32], t: usize, mt: u32) -> Vec<f32> {
    let n = m.n as usize;
    let xb = upload_f32(gpu, "x", x);
    let yb = gpu.storage("y", (t * n * 4) as u64).unwrap();
    let sb = step_buffer(gpu, Step { n_tokens: t as u32, pos: 0, n_confirmed: 0, n_out: 1, force: 0 });
    let slot = StepSlot { buf: &sb, offset: 0 };
    let d = pollster::block_on(matmul(gpu, m, Act::new(&xb, m.k), Act::new(&yb, m.n), slot, MatmulOpts { rows: Rows::Tokens, add: false, mt })).unwrap();
    run(gpu, &d, StepShape { n_tokens: t as u32, n_out: 1 });
    read_f32(gpu, &yb, t * n)
}

fn formats() -> Vec<WeightFormat> {
    use FloatType::*;
    vec![
        WeightFormat::Affine { bits: 4, group: 64, scale: BF16 },
        WeightFormat::Affine { bits: 4, group: 32, scale: F32 },
        WeightFormat::Affine { bits: 4, group: 128, scale: F16 },
        WeightFormat::Affine { bits: 8, group: 64, scale: BF16 },
        WeightFormat::Affine { bits: 8, group: 32, scale: F32 },
        WeightFormat::Dense(F32),
        WeightFormat::Dense(F16),
        WeightFormat::Dense(BF16),
    ]
}

fn check_case(gpu: &Gpu, c: &Case, rng: &mut Rng, tokens: &[usize]) {
    let m = upload(gpu, c);
    let what = format!("{} {}x{} ({})", c.format.describe(), c.n, c.k, gpu.describe());
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
    for gpu in gpu_variants() {
        let mut rng = Rng(1);
        for f in formats() {
            let group = match f {
                WeightFormat::Affine { group, .. } => group as usize,
                WeightFormat::Dense(t) => 16 / t.size(),
            };
            // tiny, then odd: row counts that are not a multiple of the rows per workgroup and
            // in_features that are an odd number of groups.
            for (n, k) in [(8, group.max(32) * 2), (37, group.max(16) * 5), (3, group.max(16) * 3)] {
                let c = make_case(&mut rng, n, k, f);
                check_case(&gpu, &c, &mut rng, &[1, 2, 11]);
            }
        }
    }
}

#[test]
fn matmul_real_27b_shapes() {
    // The MLP up/gate projection of the 27B (17408 x 5120, 4-bit, group 64, bf16 scales) and the
    // GDN in_proj_qkv (10240 x 5120); decode and verify row counts.
    let gpu = gpu();
    let mut rng = Rng(2);
    for (n, k) in [(17408, 5120), (5120, 6144)] {
        let c = make_case(&mut rng, n, k, WeightFormat::Affine { bits: 4, group: 64, scale: FloatType::BF16 });
        check_case(&gpu, &c, &mut rng, &[1, 2]);
    }
}

#[test]
fn matmul_split_over_bindings() {
    // A 64 KiB binding cap forces the matrix into several row chunks, as a browser's limit does
    // for the 248,320-row lm_head.
    let gpu = gpu_with(GpuOptions { shader_checks: Some(true), max_binding: Some(1 << 16), ..Default::default() });
    let mut rng = Rng(3);
    for f in [WeightFormat::Affine { bits: 4, group: 64, scale: FloatType::BF16 }, WeightFormat::Dense(FloatType::F32)] {
        let c = make_case(&mut rng, 1200, 512, f);
        let m = upload(&gpu, &c);
        assert!(m.chunks.len() > 2, "expected a split, got {} chunk(s)", m.chunks.len());
        check_case(&gpu, &c, &mut rng, &[1, 2, 9]);
    }
}

#[test]
fn matmul_residual_epilogue_and_offsets() {
    let gpu = gpu();
    let mut rng = Rng(4);
    let c = make_case(&mut rng, 37, 128, WeightFormat::Affine { bits: 4, group: 32, scale: FloatType::BF16 });
    let m = upload(&gpu, &c);
    let t = 3;
    // x rows are 136 wide with the input at column 4; y rows are 50 wide with the output at 5.
    let (xs, xc, ys, yc) = (136usize, 4usize, 50usize, 5usize);
    let x = rng.vec(t * xs, 1.0);
    let y0 = rng.vec(t * ys, 1.0);
    let xb = upload_f32(&gpu, "x", &x);
    let yb = upload_f32(&gpu, "y", &y0);
    let sb = step_buffer(&gpu, Step { n_tokens: t as u32, pos: 0, n_confirmed: 0, n_out: 1, force: 0 });
    let d = pollster::block_on(matmul(
        &gpu,
        &m,
        Act::at(&xb, xs as u32, xc as u32),
        Act::at(&yb, ys as u32, yc as u32),
        StepSlot { buf: &sb, offset: 0 },
        MatmulOpts { rows: Rows::Tokens, add: true, mt: MT_PREFILL },
    ))
    .unwrap();
    run(&gpu, &d, StepShape { n_tokens: t as u32, n_out: 1 });
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
    // Row 0 of a 2-row call equals a 1-row call bit for bit, and the prefill pipeline (wider
    // token tiles) gives the same bits as the decode pipeline for any row: MTP's greedy identity
    // and chunked-prefill invariance rest on this.
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
            assert_bits_eq("1-token tile vs row 0 of the 2-token tile", &single, &two[..c.n]);
            let pre = gpu_matmul(&gpu, &m, &x, 11, MT_PREFILL);
            assert_bits_eq("decode vs prefill pipeline, rows 0-1", &two, &pre[..2 * c.n]);
            let tail = gpu_matmul(&gpu, &m, &x[9 * c.k..11 * c.k], 2, MT_SMALL);
            assert_bits_eq("decode vs prefill pipeline, rows 9-10", &tail, &pre[9 * c.n..11 * c.n]);
        }
    }
}
