//! The register decode kernel (`matmul_xreg.wgsl`, on by default where the device has
//! subgroups): against a scalar CPU reference for every quantized format and several block
//! splits (blocks per thread, rows per workgroup and per step), rows that are not a multiple of
//! the tile and rows whose blocks do not fill the workgroup; the residual add and the fused
//! SwiGLU equal the plain result plus y, and the stacked matmul followed by the SwiGLU kernel,
//! bit for bit; row t of a 2-token call equals a 1-token call on that row bit for bit (a verify
//! equals a decode). One test: the switches are process-wide.

use qwgpu_engine::gpu::{Gpu, Rows, StepShape, StepSlot};
use qwgpu_engine::ops::matmul::{
    matmul, set_staged, set_xreg, set_xreg_shape, xreg_tile, MatmulOpts, MT_ONE, MT_SMALL,
};
use qwgpu_engine::ops::matrix::Matrix;
use qwgpu_engine::ops::Act;
use qwgpu_tests::quant::{quantized_formats, run_matmul, start_y, MmCall, Q};
use qwgpu_tests::*;

const RTOL: f32 = 2e-6;
const ATOL: f32 = 1e-6;

fn run_mm(
    gpu: &Gpu,
    m: &Matrix,
    x: &[f32],
    t: usize,
    mt: u32,
    add: bool,
    swiglu: bool,
) -> Vec<f32> {
    run_matmul(
        gpu,
        m,
        MmCall {
            add,
            swiglu,
            ..MmCall::new(x, t, m.k as usize, mt)
        },
    )
}

/// The stacked gate|up matmul followed by the SwiGLU kernel, `t` tokens in tile `mt`.
fn stacked_then_swiglu(gpu: &Gpu, stacked: &Matrix, x: &[f32], t: usize, mt: u32) -> Vec<f32> {
    let (k, i) = (stacked.k as usize, stacked.n as usize / 2);
    let xb = upload_f32(gpu, "x", x);
    let gu = gpu.storage("gu", (t * 2 * i * 4) as u64).unwrap();
    let out = gpu.storage("out", (t * i * 4) as u64).unwrap();
    let sb = tokens_step(gpu, t);
    let slot = StepSlot {
        buf: &sb,
        offset: 0,
    };
    let opts = MatmulOpts {
        rows: Rows::Tokens,
        add: false,
        mt,
        swiglu: false,
    };
    let mut d = pollster::block_on(matmul(
        gpu,
        stacked,
        Act::new(&xb, k as u32),
        Act::new(&gu, 2 * i as u32),
        slot,
        opts,
    ))
    .unwrap();
    d.push(
        pollster::block_on(qwgpu_engine::ops::swiglu::swiglu(
            gpu, i as u32, &gu, &out, slot,
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
    read_f32(gpu, &out, t * i)
}

#[test]
fn register_kernel_matches_cpu_and_is_batch_invariant() {
    set_staged(true);
    set_xreg(true);
    let formats = quantized_formats();
    // (blocks per thread, rows per workgroup, rows per step); None: the defaults.
    let shapes = [None, Some((2, 8, 2)), Some((3, 6, 3)), Some((1, 32, 8))];
    let mut ran = 0;
    for gpu in gpu_variants() {
        if !gpu.caps.subgroups {
            continue;
        }
        let mut rng = Rng(41);
        for (fi, &f) in formats.iter().enumerate() {
            // Every shape on the first format; the others (which differ only in how a group's
            // scale and bias are read) on the default shape.
            let shapes = if fi == 0 { &shapes[..] } else { &shapes[..1] };
            // k = 1536: 48 blocks of 4-bit codes, so a 64-thread workgroup has idle threads;
            // n = 70 and 9: not a multiple of any tile's rows.
            for (n, k) in [(70usize, 1536usize), (9, 256), (34, 4096)] {
                let q = Q::random(&mut rng, n, k, f);
                let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
                let (g, u) = (Q::random(&mut rng, n, k, f), Q::random(&mut rng, n, k, f));
                let gd = g.data();
                let ud = u.data();
                let gu = Matrix::upload_interleaved(&gpu, "gate~up", ("gate", &gd), ("up", &ud))
                    .unwrap();
                let stacked =
                    Matrix::upload_stacked(&gpu, "gate+up", &[("gate", &gd), ("up", &ud)]).unwrap();
                let x = rng.vec(2 * k, 1.0);
                let (want, mag) = q.cpu_matmul(&x, 2);
                let (yg, mg) = g.cpu_matmul(&x, 2);
                let (yu, mu) = u.cpu_matmul(&x, 2);
                for &shape in shapes {
                    set_xreg_shape(shape);
                    let what = format!(
                        "{} n={n} k={k} shape {shape:?} ({})",
                        f.describe(),
                        gpu.describe()
                    );
                    assert!(
                        xreg_tile(&gpu, &m, MT_ONE).is_some()
                            && xreg_tile(&gpu, &m, MT_SMALL).is_some(),
                        "{what}: the register kernel should run"
                    );
                    // Against the CPU.
                    let y2 = run_mm(&gpu, &m, &x, 2, MT_SMALL, false, false);
                    assert_close(&format!("{what}: vs CPU"), &y2, &want, &mag, ATOL, RTOL);
                    // Each row of a 2-token call equals a 1-token call on that row.
                    for t in 0..2 {
                        let y1 = run_mm(&gpu, &m, &x[t * k..(t + 1) * k], 1, MT_ONE, false, false);
                        assert_bits_eq(
                            &format!("{what}: token {t} of 2 vs 1 token"),
                            &y2[t * n..(t + 1) * n],
                            &y1,
                        );
                        let y1s =
                            run_mm(&gpu, &m, &x[t * k..(t + 1) * k], 1, MT_SMALL, false, false);
                        assert_bits_eq(&format!("{what}: 1 token in the 2-token tile"), &y1s, &y1);
                    }
                    // The residual add: y + the plain result, in f32.
                    let ya = run_mm(&gpu, &m, &x, 2, MT_SMALL, true, false);
                    let sum: Vec<f32> =
                        start_y(2 * n).iter().zip(&y2).map(|(a, b)| a + b).collect();
                    assert_bits_eq(&format!("{what}: add"), &ya, &sum);
                    // SwiGLU: the stacked matmul + the SwiGLU kernel, and the CPU.
                    for (t, mt) in [(1, MT_ONE), (2, MT_SMALL)] {
                        let fused = run_mm(&gpu, &gu, &x[..t * k], t, mt, false, true);
                        let two = stacked_then_swiglu(&gpu, &stacked, &x[..t * k], t, mt);
                        assert_bits_eq(
                            &format!("{what}: fused SwiGLU vs stacked + kernel, T={t}"),
                            &fused,
                            &two,
                        );
                        for j in 0..t * n {
                            let gv = yg[j] as f64;
                            let r = gv / (1.0 + (-gv).exp()) * yu[j] as f64;
                            let tol = 1e-5
                                + 1e-5
                                    * (mg[j] as f64 * (yu[j] as f64).abs()
                                        + mu[j] as f64 * (gv.abs() + 1.0));
                            assert!(
                                (fused[j] as f64 - r).abs() <= tol,
                                "{what}: SwiGLU T={t} [{j}] {} vs CPU {r}",
                                fused[j]
                            );
                        }
                    }
                    ran += 1;
                }
            }
        }
    }
    set_xreg_shape(None);
    if ran == 0 {
        eprintln!("register kernel: no adapter with subgroups here; nothing ran");
    }
}
