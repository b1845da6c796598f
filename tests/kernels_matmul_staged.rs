//! The staged decode kernel's f32 path (`matmul_staged.wgsl`, `ops::matmul::set_staged`; not the integer planes) gives
//! the block kernel's bits for every quantized format, for 1- and 2-token tiles, with a residual
//! add, a SwiGLU pair matrix, rows that are not a multiple of the tile and a last chunk of x that
//! is partly past the row; and the block kernel's results agree with a scalar CPU reference in
//! `kernels_matmul`. One test: the switch is process-wide.

use qwgpu_engine::gpu::Gpu;
use qwgpu_engine::ops::matmul::{set_staged, set_xreg, MT_FOUR, MT_ONE, MT_SMALL, MT_THREE};
use qwgpu_engine::ops::matrix::Matrix;
use qwgpu_tests::quant::{quantized_formats, run_matmul, MmCall, Q};
use qwgpu_tests::*;

/// y (+)= x · Wᵀ over `t` rows, as written (y starts from a known pattern).
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

#[test]
fn staged_decode_kernel_gives_the_block_kernels_bits() {
    set_xreg(false);
    // (Integer planes have their own bits: kernels_matmul_xq.)
    let formats = quantized_formats();
    for gpu in gpu_variants() {
        let mut rng = Rng(11);
        for f in formats {
            // k = 1536: 48 blocks of 4-bit codes (one full chunk of 32 and a partial one); n = 70
            // rows: not a multiple of the 16- or 32-row staged tiles.
            for (n, k) in [(70usize, 1536usize), (9, 256)] {
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
                let x = rng.vec(4 * k, 1.0);
                for (t, mt) in [
                    (1, MT_ONE),
                    (1, MT_SMALL),
                    (2, MT_SMALL),
                    (3, MT_THREE),
                    (3, MT_FOUR),
                    (4, MT_FOUR),
                ] {
                    for (add, swiglu) in [(false, false), (true, false), (false, true)] {
                        let mat = if swiglu { &gu } else { &m };
                        set_staged(false);
                        let block = run_mm(&gpu, mat, &x[..t * k], t, mt, add, swiglu);
                        set_staged(true);
                        let staged = run_mm(&gpu, mat, &x[..t * k], t, mt, add, swiglu);
                        set_staged(false);
                        let what = format!(
                            "{} n={n} k={k} T={t} tile {mt} add={add} swiglu={swiglu} ({})",
                            f.describe(),
                            gpu.describe()
                        );
                        assert_bits_eq(&format!("staged vs block kernel, {what}"), &staged, &block);
                    }
                }
            }
        }
    }
}
