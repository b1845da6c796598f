//! The staged decode kernel with x as block fixed point (`XFIX`, `ops::matmul::set_xfix`) for
//! every 4-bit format:
//! - against a scalar CPU reference of the same arithmetic (x rounded to s · round(x / s) per
//!   block of 32 with s = 2^(E - 22) for the block's max |x| < 2^E, then the products and sums
//!   in f64): only the f32 accumulation may differ;
//! - against the exact product in f64, within the bound x's rounding allows (Σ |scale · q| · s / 2
//!   per block), on x with outliers, all-zero blocks and tiny blocks;
//! - row 0 of a 2-token call equal to a 1-token call bit for bit, with a residual add and a SwiGLU
//!   pair matrix (a verify's row 0 equals a decode).
//! One test: the switches are process-wide.

use qwgpu_engine::gpu::Gpu;
use qwgpu_engine::ops::matmul::{set_staged, set_xfix, set_xreg, MT_ONE, MT_SMALL};
use qwgpu_engine::ops::matrix::Matrix;
use qwgpu_engine::quant::{decode_floats, WeightFormat};
use qwgpu_tests::quant::{added, quantized_formats, run_matmul, MmCall, Q};
use qwgpu_tests::*;

/// x rounded as the XFIX kernel rounds it: per block of 32 values, s = 2^(E - 22) with the block's
/// max |x| in [2^(E-1), 2^E) (0 below 2^-105), x → s · round_half_even(x / s).
fn xfix_round(x: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for block in x.chunks(32) {
        let mx = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = (mx.to_bits() >> 23) & 0xFF;
        if e < 22 {
            out.extend(block.iter().map(|_| 0f32));
            continue;
        }
        let s = f32::from_bits((e - 21) << 23);
        let inv = f32::from_bits((275 - e) << 23);
        assert_eq!(s as f64 * inv as f64, 1.0);
        out.extend(block.iter().map(|&v| {
            let q = (v * inv).round_ties_even();
            assert!(q.abs() <= 4194304.0, "fixed-point code {q} out of range");
            q * s
        }));
    }
    out
}

/// The XFIX kernel's result in f64: Σ_j dense_j · x̃_j + Σ_groups bias · (Σ x − Σ x̃) over the
/// group's values (the kernel multiplies the bias by the exact f32 Σ x, the codes by x̃), and the
/// bound on its distance to the exact product: Σ_j |dense_j − bias| · s_j / 2.
fn cpu_xfix(q: &Q, x: &[f32], t: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, k) = (q.n, q.k);
    let WeightFormat::Affine { group, scale, .. } = q.format else {
        unreachable!()
    };
    let group = group as usize;
    let biases = decode_floats(scale, &q.biases);
    let (mut want, mut bound, mut mag) = (vec![0f32; t * n], vec![0f32; t * n], vec![0f32; t * n]);
    for ti in 0..t {
        let xr = &x[ti * k..(ti + 1) * k];
        let xt = xfix_round(xr);
        for r in 0..n {
            let (mut s, mut b, mut a) = (0f64, 0f64, 0f64);
            for j in 0..k {
                let w = q.dense[r * k + j] as f64;
                let bias = biases[r * (k / group) + j / group] as f64;
                s += w * xt[j] as f64 + bias * (xr[j] as f64 - xt[j] as f64);
                b += (w - bias).abs() * (xr[j] as f64 - xt[j] as f64).abs();
                a += (w * xr[j] as f64).abs();
            }
            want[ti * n + r] = s as f32;
            bound[ti * n + r] = b as f32;
            mag[ti * n + r] = a as f32;
        }
    }
    (want, bound, mag)
}

/// x with the shapes XFIX must survive: normal values, an outlier every 97 values (a block with
/// one value 300× the rest), an all-zero block and a block of tiny values.
fn hard_x(rng: &mut Rng, len: usize) -> Vec<f32> {
    let mut x = rng.vec(len, 1.0);
    for (j, v) in x.iter_mut().enumerate() {
        if j % 97 == 5 {
            *v *= 300.0;
        }
        if (64..96).contains(&(j % 1024)) {
            *v = 0.0;
        }
        if (160..192).contains(&(j % 1024)) {
            *v *= 1e-30;
        }
    }
    x
}

#[test]
fn xfix_decode_kernel_matches_cpu_and_is_batch_invariant() {
    set_xreg(false);
    set_staged(true);
    set_xfix(true);
    let formats: Vec<WeightFormat> = quantized_formats()
        .into_iter()
        .filter(|f| matches!(f, WeightFormat::Affine { bits: 4, .. }))
        .collect();
    for gpu in gpu_variants() {
        let mut rng = Rng(41);
        for &f in &formats {
            // k = 1536: a full chunk of 32 blocks and a partial one; 4224: five chunks; 16896:
            // rows past the long-row limit (the staged kernel takes them with XFIX). n not a
            // multiple of the tile.
            for (n, k) in [(70usize, 1536usize), (9, 256), (20, 4224), (6, 16896)] {
                let q = Q::random(&mut rng, n, k, f);
                let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
                let x = hard_x(&mut rng, 2 * k);
                let what = |t: usize, mt: u32, extra: &str| {
                    format!(
                        "{} n={n} k={k} T={t} tile {mt} {extra} ({})",
                        f.describe(),
                        gpu.describe()
                    )
                };
                for (t, mt) in [(1usize, MT_ONE), (2, MT_SMALL)] {
                    let (want, bound, mag) = cpu_xfix(&q, &x[..t * k], t);
                    let (exact, _) = q.cpu_matmul(&x[..t * k], t);
                    for add in [false, true] {
                        let c = MmCall {
                            add,
                            ..MmCall::new(&x[..t * k], t, k, mt)
                        };
                        let y = run_matmul(&gpu, &m, c);
                        let got = if add { added(&y) } else { y };
                        assert_close(
                            &format!("XFIX vs its CPU arithmetic, add={add}, {}", what(t, mt, "")),
                            &got,
                            &want,
                            &mag,
                            1e-5,
                            2e-6,
                        );
                        // Within x's rounding of the exact product.
                        let tol: Vec<f32> =
                            bound.iter().zip(&mag).map(|(b, m)| b + 2e-6 * m).collect();
                        assert_close(
                            &format!("XFIX vs the exact product, add={add}, {}", what(t, mt, "")),
                            &got,
                            &exact,
                            &tol,
                            1e-5,
                            1.0,
                        );
                    }
                }
                // Row 0 of a 2-token call is the 1-token call, bit for bit.
                let (g, u) = (Q::random(&mut rng, n, k, f), Q::random(&mut rng, n, k, f));
                let gu = Matrix::upload_interleaved(
                    &gpu,
                    "gate~up",
                    ("gate", &g.data()),
                    ("up", &u.data()),
                )
                .unwrap();
                for (add, swiglu) in [(false, false), (true, false), (false, true)] {
                    let mat: &Matrix = if swiglu { &gu } else { &m };
                    let call = |t: usize, mt: u32| MmCall {
                        add,
                        swiglu,
                        ..MmCall::new(&x[..t * k], t, k, mt)
                    };
                    let one = run_matmul(&gpu, mat, call(1, MT_ONE));
                    let two = run_matmul(&gpu, mat, call(2, MT_SMALL));
                    assert_bits_eq(
                        &format!(
                            "XFIX row 0 of 2 tokens vs 1 token, add={add} swiglu={swiglu}, {}",
                            what(2, MT_SMALL, "")
                        ),
                        &two[..one.len()],
                        &one,
                    );
                }
            }
        }
    }
    // The switch must change the kernel: on x with outliers XFIX's bits differ from the f32
    // path's (a switch that did nothing would give the f32 bits).
    let gpu: std::sync::Arc<Gpu> = gpu();
    let mut rng = Rng(43);
    let f = formats[0];
    let (n, k) = (32usize, 1024usize);
    let q = Q::random(&mut rng, n, k, f);
    let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
    let x = hard_x(&mut rng, k);
    set_xfix(false);
    let f32_path = run_matmul(&gpu, &m, MmCall::new(&x, 1, k, MT_ONE));
    set_xfix(true);
    let xfix_path = run_matmul(&gpu, &m, MmCall::new(&x, 1, k, MT_ONE));
    assert!(
        f32_path
            .iter()
            .zip(&xfix_path)
            .any(|(a, b)| a.to_bits() != b.to_bits()),
        "XFIX on and off gave the same bits"
    );
}
