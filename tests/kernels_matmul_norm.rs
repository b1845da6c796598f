//! The RMSNorm folded into the register and the staged decode matmuls (`ops::matmul::matmul_normed`): against a
//! scalar CPU reference (the norm and the matmul in f64, RMS-style tolerance on Σ|x·w|) for every
//! quantized format, with a residual add and a SwiGLU pair matrix, x at a column offset; and row
//! 0 of a 2-token call equal to a 1-token call bit for bit (a verify's row 0 equals a decode).

use qwgpu_engine::gpu::Gpu;
use qwgpu_engine::ops::matmul::{folds_norm, set_staged, set_xreg, MT_ONE, MT_SMALL};
use qwgpu_engine::ops::matrix::Matrix;
use qwgpu_tests::quant::{added, quantized_formats, run_matmul, MmCall, Q};
use qwgpu_tests::*;

const EPS: f32 = 1e-6;

/// y (+)= RMSNorm(x) · Wᵀ over `t` rows of x ([t, stride], the input at column `col`): y, or
/// with `add` what was added to it.
#[allow(clippy::too_many_arguments)]
fn run_normed(
    gpu: &Gpu,
    m: &Matrix,
    nw: &[f32],
    x: &[f32],
    stride: usize,
    col: usize,
    t: usize,
    mt: u32,
    add: bool,
    swiglu: bool,
) -> Vec<f32> {
    let c = MmCall {
        x,
        t,
        stride,
        col,
        mt,
        add,
        swiglu,
        norm: Some((nw, EPS)),
        planes: false,
    };
    let y = run_matmul(gpu, m, c);
    if add {
        added(&y)
    } else {
        y
    }
}

/// RMSNorm of each row in f64 (spec §4.3): w ∘ x / sqrt(mean(x²) + eps), rows of `k`.
fn cpu_norm(x: &[f32], stride: usize, col: usize, t: usize, k: usize, nw: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(t * k);
    for ti in 0..t {
        let row = &x[ti * stride + col..ti * stride + col + k];
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
        let inv = 1.0 / (ms + EPS as f64).sqrt();
        out.extend(
            row.iter()
                .zip(nw)
                .map(|(&v, &w)| (w as f64 * v as f64 * inv) as f32),
        );
    }
    out
}

#[test]
fn folded_rms_norm_matches_cpu_and_is_batch_invariant() {
    set_staged(true);
    let formats = quantized_formats();
    // The register kernel (where the device has subgroups) and the staged kernel.
    for (gpu, xr) in gpu_variants()
        .into_iter()
        .flat_map(|g| [(g.clone(), true), (g, false)])
    {
        set_xreg(xr);
        let mut rng = Rng(29);
        for f in formats {
            // k = 1536: one full chunk of 32 blocks and a partial one; n = 70: not a multiple of the tile.
            for (n, k) in [(70usize, 1536usize), (10, 256)] {
                let q = Q::random(&mut rng, n, k, f);
                let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
                let (g, u) = (Q::random(&mut rng, n, k, f), Q::random(&mut rng, n, k, f));
                let gu = Matrix::upload_interleaved(
                    &gpu,
                    "gate~up",
                    ("gate", &g.data()),
                    ("up", &u.data()),
                )
                .unwrap();
                assert!(
                    folds_norm(&gpu, &m, MT_ONE) && folds_norm(&gpu, &m, MT_SMALL),
                    "{} (register kernel {xr}): the decode kernels should take the norm",
                    gpu.describe()
                );
                // Norm weights around 1 (as trained RMSNorm weights are), x with a large mean square.
                let nw: Vec<f32> = (0..k).map(|_| 1.0 + 0.3 * rng.normal()).collect();
                let (stride, col) = (k + 8, 4);
                let x: Vec<f32> = rng.vec(2 * stride, 3.0);
                let xn = cpu_norm(&x, stride, col, 2, k, &nw);
                let what = |t: usize, mt: u32, extra: &str| {
                    format!(
                        "{} n={n} k={k} T={t} tile {mt} {extra} (register kernel {xr}; {})",
                        f.describe(),
                        gpu.describe()
                    )
                };
                for (t, mt) in [(1usize, MT_ONE), (2, MT_SMALL)] {
                    let (want, mag) = q.cpu_matmul(&xn[..t * k], t);
                    for add in [false, true] {
                        let got = run_normed(&gpu, &m, &nw, &x, stride, col, t, mt, add, false);
                        assert_close(
                            &format!("folded norm vs CPU, add={add}, {}", what(t, mt, "")),
                            &got,
                            &want,
                            &mag,
                            1e-5,
                            2e-5,
                        );
                    }
                    // SwiGLU pairs: silu(gate) * up of the CPU's normed rows.
                    let (gw, gm) = g.cpu_matmul(&xn[..t * k], t);
                    let (uw, um) = u.cpu_matmul(&xn[..t * k], t);
                    let got = run_normed(&gpu, &gu, &nw, &x, stride, col, t, mt, false, true);
                    let want: Vec<f32> = gw
                        .iter()
                        .zip(&uw)
                        .map(|(&a, &b)| (a as f64 / (1.0 + (-a as f64).exp()) * b as f64) as f32)
                        .collect();
                    let mag: Vec<f32> = gw
                        .iter()
                        .zip(&uw)
                        .zip(gm.iter().zip(&um))
                        .map(|((&a, &b), (&ma, &mb))| (ma * b.abs() + a.abs() * mb).max(1e-6))
                        .collect();
                    assert_close(
                        &format!("folded norm SwiGLU vs CPU, {}", what(t, mt, "")),
                        &got,
                        &want,
                        &mag,
                        1e-5,
                        2e-5,
                    );
                }
                // Row 0 of a 2-token call is the 1-token call, bit for bit.
                for (add, swiglu) in [(false, false), (true, false), (false, true)] {
                    let mat = if swiglu { &gu } else { &m };
                    let one = run_normed(
                        &gpu,
                        mat,
                        &nw,
                        &x[..stride],
                        stride,
                        col,
                        1,
                        MT_ONE,
                        add,
                        swiglu,
                    );
                    let two = run_normed(&gpu, mat, &nw, &x, stride, col, 2, MT_SMALL, add, swiglu);
                    assert_bits_eq(&format!("folded norm: row 0 of 2 tokens vs 1 token, add={add} swiglu={swiglu}, {}", what(2, MT_SMALL, "")), &two[..one.len()], &one);
                }
            }
        }
    }
}
