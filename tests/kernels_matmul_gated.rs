//! The gated RMSNorm of a Gated-DeltaNet output folded into the staged decode matmul
//! (`ops::matmul::matmul_gated`, out_proj in plain sessions with `QWGPU_GATED_FOLD=1`): against a scalar CPU reference (the
//! gated norm of spec §4.6 step 7 and the matmul in f64) for every quantized format and several
//! head sizes, z at a column offset of a wider buffer, heads across two staged chunks, the
//! residual add; row t of a 2-token call equals a 1-token call on that row bit for bit.

use qwgpu_engine::gpu::{Gpu, Rows, StepShape, StepSlot};
use qwgpu_engine::ops::matmul::{
    folds_gated, matmul_gated, set_gated_fold, set_staged, set_xreg, MatmulOpts, MT_ONE, MT_SMALL,
};
use qwgpu_engine::ops::matrix::Matrix;
use qwgpu_engine::ops::Act;
use qwgpu_engine::quant::WeightFormat;
use qwgpu_tests::quant::{added, quantized_formats, start_y, Q};
use qwgpu_tests::*;

const EPS: f32 = 1e-6;

/// y + (silu(z) ∘ gated norm(x)) · Wᵀ for `t` rows; returns what was added to y.
#[allow(clippy::too_many_arguments)]
fn run_gated(
    gpu: &Gpu,
    m: &Matrix,
    x: &[f32],
    z: &[f32],
    zs: usize,
    zc: usize,
    gw: &[f32],
    dv: u32,
    t: usize,
    mt: u32,
) -> Vec<f32> {
    let (k, n) = (m.k as usize, m.n as usize);
    let xb = upload_f32(gpu, "x", &x[..t * k]);
    let zb = upload_f32(gpu, "z", &z[..t * zs]);
    let wb = upload_f32(gpu, "gate_w", gw);
    let yb = upload_f32(gpu, "y", &start_y(t * n));
    let sb = tokens_step(gpu, t);
    let slot = StepSlot {
        buf: &sb,
        offset: 0,
    };
    let d = pollster::block_on(matmul_gated(
        gpu,
        m,
        Act::new(&xb, k as u32),
        Act::at(&zb, zs as u32, zc as u32),
        &wb,
        dv,
        EPS,
        Act::new(&yb, n as u32),
        slot,
        MatmulOpts {
            rows: Rows::Tokens,
            add: true,
            mt,
            swiglu: false,
        },
    ))
    .unwrap_or_else(|e| panic!("matmul_gated: {e}"));
    run(
        gpu,
        &d,
        StepShape {
            n_tokens: t as u32,
            n_out: 1,
            keys: 0,
        },
    );
    added(&read_f32(gpu, &yb, t * n))
}

/// The gated norm in f64: per (row, head of dv), silu(z) * (w * (x / sqrt(mean(x²) + eps))).
fn cpu_gated(
    x: &[f32],
    z: &[f32],
    zs: usize,
    zc: usize,
    gw: &[f32],
    dv: usize,
    t: usize,
    k: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; t * k];
    for ti in 0..t {
        for h in 0..k / dv {
            let row = &x[ti * k + h * dv..ti * k + (h + 1) * dv];
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dv as f64;
            let inv = 1.0 / (ms + EPS as f64).sqrt();
            for i in 0..dv {
                let zv = z[ti * zs + zc + h * dv + i] as f64;
                let silu = zv / (1.0 + (-zv).exp());
                out[ti * k + h * dv + i] = (silu * gw[i] as f64 * row[i] as f64 * inv) as f32;
            }
        }
    }
    out
}

#[test]
fn folded_gated_norm_matches_cpu_and_is_batch_invariant() {
    set_staged(true);
    set_xreg(false);
    set_gated_fold(true);
    let formats = quantized_formats();
    let mut ran = 0;
    for gpu in gpu_variants() {
        let mut rng = Rng(53);
        for f in formats {
            let WeightFormat::Affine { group, .. } = f else {
                unreachable!()
            };
            // (heads, dv): 12 x 128 = 1536 features (two staged chunks, the second partial);
            // small heads; n = 70 rows, not a multiple of the tile.
            for (heads, dv) in [(12usize, 128usize), (8, 32), (12, 16)] {
                let k = heads * dv;
                if k % group as usize != 0 {
                    continue;
                }
                let n = 70;
                let q = Q::random(&mut rng, n, k, f);
                let m = Matrix::upload(&gpu, "out_proj", &q.data()).unwrap();
                let what = format!("{} heads {heads} x {dv} ({})", f.describe(), gpu.describe());
                assert!(
                    folds_gated(&gpu, &m, MT_ONE, dv as u32)
                        && folds_gated(&gpu, &m, MT_SMALL, dv as u32),
                    "{what}: the staged kernel should take the gated norm"
                );
                let x = rng.vec(2 * k, 2.0);
                let (zs, zc) = (k + 12, 8);
                let z = rng.vec(2 * zs, 1.5);
                let gw: Vec<f32> = (0..dv).map(|_| 1.0 + 0.3 * rng.normal()).collect();
                let xn = cpu_gated(&x, &z, zs, zc, &gw, dv, 2, k);
                let (want, mag) = q.cpu_matmul(&xn, 2);
                let two = run_gated(&gpu, &m, &x, &z, zs, zc, &gw, dv as u32, 2, MT_SMALL);
                assert_close(&format!("{what}: vs CPU"), &two, &want, &mag, 1e-5, 2e-5);
                for t in 0..2 {
                    let one = run_gated(
                        &gpu,
                        &m,
                        &x[t * k..],
                        &z[t * zs..],
                        zs,
                        zc,
                        &gw,
                        dv as u32,
                        1,
                        MT_ONE,
                    );
                    // y starts from the same pattern for both calls only in row 0.
                    if t == 0 {
                        assert_bits_eq(
                            &format!("{what}: row 0 of 2 tokens vs 1 token"),
                            &two[..n],
                            &one,
                        );
                    } else {
                        assert_close(
                            &format!("{what}: row 1 alone vs CPU"),
                            &one,
                            &want[n..],
                            &mag[n..],
                            1e-5,
                            2e-5,
                        );
                    }
                }
                ran += 1;
            }
        }
    }
    assert!(ran > 0);
}
