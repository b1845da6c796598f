//! The tiled prefill GEMM (`matmul_gemm.wgsl`, `ops::matmul::set_prefill_gemm`) against a scalar
//! CPU reference (RMS-style tolerance on Σ|x·w|) for every quantized format, with a residual add,
//! odd row counts and several token tiles; a prompt row's bits do not depend on the chunk it is
//! computed in; every tile shape gives the same bits; and the SwiGLU epilogue gives the bits of
//! the stacked GEMM followed by the SwiGLU kernel. One test: the switches are process-wide.

use qwgpu_engine::gpu::Gpu;
use qwgpu_engine::ops::matmul::{
    gemm_forms, gemm_tile, parse_gemm_forms, set_gemm_forms, set_gemm_half, set_gemm_tile,
    set_prefill_coop, set_prefill_gemm, GemmTile, MT_PREFILL,
};
use qwgpu_engine::ops::matrix::Matrix;
use qwgpu_tests::quant::{added, prompt_forms, quantized_formats, run_matmul, MmCall, Q};
use qwgpu_tests::*;

/// Prefill-tile matmul over `t` rows of x: y, or with `add` what was added to it.
fn run_mm(gpu: &Gpu, m: &Matrix, x: &[f32], t: usize, add: bool, swiglu: bool) -> Vec<f32> {
    let y = run_matmul(
        gpu,
        m,
        MmCall {
            add,
            swiglu,
            ..MmCall::new(x, t, m.k as usize, MT_PREFILL)
        },
    );
    if add {
        added(&y)
    } else {
        y
    }
}

#[test]
fn tiled_prefill_gemm_matches_cpu_and_is_chunk_invariant() {
    set_prefill_gemm(true);
    // (Devices with cooperative matrices would run the tensor-core GEMM instead:
    // tests/kernels_matmul_coop.rs.)
    set_prefill_coop(false);
    let formats = quantized_formats();
    // The built-in tiles and an odd one (32 threads, 4 × 8 per thread, 16 features a step).
    let tiles = [
        GemmTile::SMALL,
        GemmTile::WIDE,
        GemmTile::TINY,
        GemmTile {
            bn: 32,
            bt: 32,
            bk: 16,
            tm: 4,
            tn: 8,
        },
    ];
    for gpu in gpu_variants() {
        let mut rng = Rng(12);
        for f in formats {
            for (n, k) in [(70usize, 256usize), (130, 1024)] {
                let q = Q::random(&mut rng, n, k, f);
                let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
                let t = 70; // two or three token tiles
                let x = rng.vec(t * k, 1.0);
                let (want, mag) = q.cpu_matmul(&x, t);
                let (g, u) = (Q::random(&mut rng, n, k, f), Q::random(&mut rng, n, k, f));
                let inter = Matrix::upload_interleaved(
                    &gpu,
                    "gate~up",
                    ("gate", &g.data()),
                    ("up", &u.data()),
                )
                .unwrap();
                let stacked = Matrix::upload_stacked(
                    &gpu,
                    "gate+up",
                    &[("gate", &g.data()), ("up", &u.data())],
                )
                .unwrap();
                let mut first: Option<(GemmTile, Vec<f32>)> = None;
                for tile in tiles {
                    set_gemm_tile(Some(tile));
                    if gemm_tile(&gpu.limits) != Some(tile) {
                        eprintln!("skipping GEMM tile {tile:?}: beyond this device's limits");
                        continue;
                    }
                    let what = format!(
                        "{} n={n} k={k}, tile {tile:?} ({})",
                        f.describe(),
                        gpu.describe()
                    );
                    for add in [false, true] {
                        let got = run_mm(&gpu, &m, &x, t, add, false);
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
                    let all = run_mm(&gpu, &m, &x, t, false, false);
                    for (a, b) in [(64usize, 70usize), (9, 11), (0, 1)] {
                        let part = run_mm(&gpu, &m, &x[a * k..b * k], b - a, false, false);
                        assert_bits_eq(
                            &format!("GEMM rows {a}..{b} alone vs in a 70-row call, {what}"),
                            &part,
                            &all[a * n..b * n],
                        );
                    }
                    // Every tile gives the same bits.
                    match &first {
                        Some((t0, y0)) => assert_bits_eq(
                            &format!("GEMM tile {tile:?} vs tile {t0:?}, {what}"),
                            &all,
                            y0,
                        ),
                        None => first = Some((tile, all.clone())),
                    }
                    // SwiGLU epilogue: interleaved gate/up vs stacked GEMM then the SwiGLU kernel.
                    let fused = run_mm(&gpu, &inter, &x, t, false, true);
                    let gu = run_mm(&gpu, &stacked, &x, t, false, false);
                    assert_bits_eq(
                        &format!("GEMM SwiGLU epilogue vs GEMM + swiglu kernel, {what}"),
                        &fused,
                        &swiglu_kernel(&gpu, &gu, t, n),
                    );
                }
                let Some((_, y0)) = &first else {
                    panic!("no GEMM tile fits {}", gpu.describe());
                };
                // Unforced, chunks of at most 4 / 8 tokens run the tiny / small tile, longer
                // ones the device's (the plan holds every form, each step records the one for
                // its token count): every row has the forced tiles' bits.
                set_gemm_tile(None);
                let short = [(4, GemmTile::TINY), (8, GemmTile::SMALL)];
                set_gemm_forms(Some(short.to_vec()));
                let full = gemm_tile(&gpu.limits).unwrap();
                if short.iter().all(|(_, g)| g.fits(&gpu.limits)) && full != GemmTile::SMALL {
                    assert_eq!(
                        gemm_forms(&gpu.limits, &m, full),
                        [(4, GemmTile::TINY), (8, GemmTile::SMALL), (u32::MAX, full)]
                    );
                    // The plan records each form for its token range.
                    assert_eq!(
                        prompt_forms(&gpu, &m, t),
                        [
                            ((0, 4), GemmTile::TINY.bt),
                            ((5, 8), GemmTile::SMALL.bt),
                            ((9, u32::MAX), full.bt)
                        ]
                    );
                }
                for (a, b) in [
                    (0usize, 70usize),
                    (0, 4),
                    (3, 8),
                    (10, 14),
                    (20, 29),
                    (61, 70),
                    (5, 6),
                ] {
                    let part = run_mm(&gpu, &m, &x[a * k..b * k], b - a, false, false);
                    assert_bits_eq(
                        &format!(
                            "unforced GEMM forms, rows {a}..{b} alone, {} n={n} k={k} ({})",
                            f.describe(),
                            gpu.describe()
                        ),
                        &part,
                        &y0[a * n..b * n],
                    );
                }
                set_gemm_forms(None);
            }
        }
    }
    set_gemm_tile(None);
    // The default forms where every tile fits, a forced tile without them, the environment's
    // form.
    {
        let gpu = gpu();
        let mut limits = gpu.limits.clone();
        limits.max_compute_workgroup_storage_size = 64 << 10;
        limits.max_compute_invocations_per_workgroup = 1024;
        let q = Q::random(&mut Rng(5), 130, 1024, formats[0]);
        let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
        let w = GemmTile::WIDE;
        assert_eq!(
            gemm_forms(&limits, &m, w),
            [(16, GemmTile::TINY), (64, GemmTile::SMALL), (u32::MAX, w)]
        );
        assert_eq!(
            gemm_forms(&limits, &m, GemmTile::SMALL),
            [(16, GemmTile::TINY), (u32::MAX, GemmTile::SMALL)]
        );
        set_gemm_tile(Some(w));
        assert_eq!(gemm_forms(&limits, &m, w), [(u32::MAX, w)]);
        set_gemm_tile(None);
        assert_eq!(
            parse_gemm_forms("16:64x16x32x4x4,64:64x64x32x4x4"),
            Some(vec![(16, GemmTile::TINY), (64, GemmTile::SMALL)])
        );
        assert_eq!(parse_gemm_forms("none"), Some(Vec::new()));
        assert_eq!(parse_gemm_forms("16:64x16x32x4x3"), None);
    }

    // The f16 variant (`QWGPU_GEMM_HALF=1`, a measurement switch) where the device has f16:
    // within f16's rounding of the CPU result (w, x and each product rounded to f16, then runs of
    // 8 products summed in f16: at most (3 + 7) * 2^-11 of Σ|x·w|), a prompt row's bits
    // independent of its chunk and of the tile, and not the f32 path's bits.
    let gpu = gpu();
    if gpu.caps.f16 {
        let mut rng = Rng(13);
        for f in &formats[..2] {
            let (n, k, t) = (70usize, 1024usize, 70usize);
            let q = Q::random(&mut rng, n, k, *f);
            let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
            let x = rng.vec(t * k, 1.0);
            let (want, mag) = q.cpu_matmul(&x, t);
            set_gemm_tile(Some(GemmTile::WIDE));
            set_gemm_half(false);
            let full = run_mm(&gpu, &m, &x, t, false, false);
            set_gemm_half(true);
            let mut first: Option<Vec<f32>> = None;
            for tile in [GemmTile::WIDE, tiles[3]] {
                set_gemm_tile(Some(tile));
                if gemm_tile(&gpu.limits) != Some(tile) {
                    continue;
                }
                let what = format!("{} f16 GEMM, tile {tile:?}", f.describe());
                let got = run_mm(&gpu, &m, &x, t, false, false);
                assert_close(
                    &format!("{what} vs CPU"),
                    &got,
                    &want,
                    &mag,
                    1e-4,
                    10.0 / 2048.0,
                );
                assert!(
                    got.iter()
                        .zip(&full)
                        .any(|(a, b)| a.to_bits() != b.to_bits()),
                    "{what}: the f16 variant gave the f32 path's bits (did it run?)"
                );
                let part = run_mm(&gpu, &m, &x[9 * k..11 * k], 2, false, false);
                assert_bits_eq(
                    &format!("{what}: rows 9..11 alone"),
                    &part,
                    &got[9 * n..11 * n],
                );
                match &first {
                    Some(y0) => assert_bits_eq(&format!("{what} vs the wide tile"), &got, y0),
                    None => first = Some(got),
                }
            }
        }
        set_gemm_half(false);
        set_gemm_tile(None);
    }
    set_prefill_gemm(false);
}
