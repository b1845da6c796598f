//! The decode matmuls on x as integer planes (`xquant.wgsl` once per input, then `XQ` in
//! `matmul_staged.wgsl`: `ops::xquant::xquant` + `ops::matmul::matmul_xq`) for every 4-bit format:
//! - against a scalar CPU reference of the same arithmetic (x rounded to s · round(x / s) per
//!   block of 32 with s = 2^(E - 22) for the block's max |x| < 2^E, then the products and sums
//!   in f64): only the f32 accumulation may differ;
//! - against the exact product in f64, within the bound x's rounding allows (Σ |scale · q| · s / 2
//!   per block), on x with outliers, all-zero blocks and tiny blocks, from a column inside wider
//!   rows;
//! - with the RMSNorm in the xquant dispatch, against a CPU norm and the exact product;
//! - row 0 of a 2-token call equal to a 1-token call bit for bit, with a residual add, a SwiGLU
//!   pair matrix and a norm (a verify's row 0 equals a decode).

use qwgpu_engine::gpu::Gpu;
use qwgpu_engine::ops::matmul::{set_staged, set_xq, set_xreg, takes_xq, MT_ONE, MT_SMALL};
use qwgpu_engine::ops::matrix::Matrix;
use qwgpu_engine::quant::{decode_floats, WeightFormat};
use qwgpu_tests::quant::{added, quantized_formats, run_matmul, MmCall, Q};
use qwgpu_tests::*;

/// x rounded as xquant rounds it: per block of 32 values, s = 2^(E - 22) with the block's max |x|
/// in [2^(E-1), 2^E) (0 below 2^-105), x → s · round_half_even(x / s).
fn plane_round(x: &[f32]) -> Vec<f32> {
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

/// The plane kernel's result in f64: Σ_j dense_j · x̃_j + Σ_groups bias · (Σ x − Σ x̃) over the
/// group's values (the kernel multiplies the bias by the f32 Σ x, the codes by x̃), the bound on
/// its distance to the exact product, Σ_j |dense_j − bias| · |x_j − x̃_j|, and Σ |w x|.
fn cpu_planes(q: &Q, x: &[f32], t: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, k) = (q.n, q.k);
    let WeightFormat::Affine { group, scale, .. } = q.format else {
        unreachable!()
    };
    let group = group as usize;
    let biases = decode_floats(scale, &q.biases);
    let (mut want, mut bound, mut mag) = (vec![0f32; t * n], vec![0f32; t * n], vec![0f32; t * n]);
    for ti in 0..t {
        let xr = &x[ti * k..(ti + 1) * k];
        let xt = plane_round(xr);
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

/// x with the shapes the planes must survive: normal values, an outlier every 97 values (a block
/// with one value 300× the rest), an all-zero block and a block of tiny values.
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

/// RMSNorm of `t` rows of `k` values (f64, rounded to f32).
fn cpu_norm(x: &[f32], t: usize, k: usize, w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(t * k);
    for row in x.chunks(k).take(t) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        out.extend(
            row.iter()
                .zip(w)
                .map(|(&v, &w)| (w as f64 * v as f64 * inv) as f32),
        );
    }
    out
}

#[test]
fn integer_plane_matmul_matches_cpu_and_is_batch_invariant() {
    set_xreg(false);
    set_staged(true);
    set_xq(true);
    let formats: Vec<WeightFormat> = quantized_formats()
        .into_iter()
        .filter(|f| matches!(f, WeightFormat::Affine { bits: 4, .. }))
        .collect();
    for gpu in gpu_variants() {
        let mut rng = Rng(41);
        for &f in &formats {
            // k = 1536: a full chunk of 32 blocks and a partial one; 4224: five chunks and three
            // xquant workgroups; 16896: rows past the long-row limit. n not a multiple of the tile.
            for (n, k) in [(70usize, 1536usize), (9, 256), (20, 4224), (6, 16896)] {
                let q = Q::random(&mut rng, n, k, f);
                let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
                assert!(
                    takes_xq(&gpu, &m, MT_ONE) && takes_xq(&gpu, &m, MT_SMALL),
                    "{} k={k} ({}): the decode tiles should take integer planes",
                    f.describe(),
                    gpu.describe()
                );
                let x = hard_x(&mut rng, 2 * k);
                // The same rows inside wider ones, from column 4.
                let stride = k + 8;
                let mut wide = vec![7.0f32; 2 * stride];
                for t in 0..2 {
                    wide[t * stride + 4..t * stride + 4 + k]
                        .copy_from_slice(&x[t * k..(t + 1) * k]);
                }
                let what = |t: usize, mt: u32| {
                    format!(
                        "{} n={n} k={k} T={t} tile {mt} ({})",
                        f.describe(),
                        gpu.describe()
                    )
                };
                for (t, mt) in [(1usize, MT_ONE), (2, MT_SMALL)] {
                    let (want, bound, mag) = cpu_planes(&q, &x[..t * k], t);
                    let (exact, _) = q.cpu_matmul(&x[..t * k], t);
                    for add in [false, true] {
                        let c = MmCall {
                            add,
                            planes: true,
                            stride,
                            col: 4,
                            ..MmCall::new(&wide[..t * stride], t, k, mt)
                        };
                        let y = run_matmul(&gpu, &m, c);
                        let got = if add { added(&y) } else { y };
                        assert_close(
                            &format!("planes vs their CPU arithmetic, add={add}, {}", what(t, mt)),
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
                            &format!("planes vs the exact product, add={add}, {}", what(t, mt)),
                            &got,
                            &exact,
                            &tol,
                            1e-5,
                            1.0,
                        );
                    }
                    // The RMSNorm in the xquant dispatch: against the CPU norm's exact product,
                    // within x's rounding (2^-22 of a block's max per value) and the norm's f32.
                    let nw: Vec<f32> = (0..k).map(|_| 1.0 + 0.3 * rng.normal()).collect();
                    let xn = cpu_norm(&x, t, k, &nw, 1e-6);
                    let (exact_n, mag_n) = q.cpu_matmul(&xn, t);
                    let got = run_matmul(
                        &gpu,
                        &m,
                        MmCall {
                            planes: true,
                            norm: Some((&nw, 1e-6)),
                            ..MmCall::new(&x[..t * k], t, k, mt)
                        },
                    );
                    assert_close(
                        &format!("planes with the norm vs the exact product, {}", what(t, mt)),
                        &got,
                        &exact_n,
                        &mag_n,
                        1e-5,
                        2e-5,
                    );
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
                let nw: Vec<f32> = (0..k).map(|_| 1.0 + 0.3 * rng.normal()).collect();
                for (add, swiglu, norm) in [
                    (false, false, false),
                    (true, false, false),
                    (false, true, false),
                    (false, false, true),
                ] {
                    let mat: &Matrix = if swiglu { &gu } else { &m };
                    let call = |t: usize, mt: u32| MmCall {
                        add,
                        swiglu,
                        planes: true,
                        norm: norm.then_some((nw.as_slice(), 1e-6)),
                        ..MmCall::new(&x[..t * k], t, k, mt)
                    };
                    let one = run_matmul(&gpu, mat, call(1, MT_ONE));
                    let two = run_matmul(&gpu, mat, call(2, MT_SMALL));
                    assert_bits_eq(
                        &format!(
                            "planes row 0 of 2 tokens vs 1 token, add={add} swiglu={swiglu} norm={norm}, {}",
                            what(2, MT_SMALL)
                        ),
                        &two[..one.len()],
                        &one,
                    );
                }
            }
        }
    }
    // The switch must decide: with it off no matrix takes planes.
    let gpu: std::sync::Arc<Gpu> = gpu();
    let mut rng = Rng(43);
    let q = Q::random(&mut rng, 32, 1024, formats[0]);
    let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
    set_xq(false);
    assert!(!takes_xq(&gpu, &m, MT_ONE));
    set_xq(true);
    assert!(takes_xq(&gpu, &m, MT_ONE));
}
