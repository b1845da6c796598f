//! The tensor-core prefill GEMM (`xsplit.wgsl` + `matmul_coop.wgsl`, `ops::matmul::use_coop`)
//! against a scalar CPU reference for every quantized format, with a residual add, odd row
//! counts, partial token tiles, rows far beyond f16's range and far below it; a prompt row's
//! bits do not depend on the chunk it is computed in nor on the tile; the SwiGLU epilogue gives
//! the bits of the stacked GEMM followed by the SwiGLU kernel; and with f16 weights (no pairs)
//! the result is within f16's rounding and not the pairs' bits. 4-bit weights with bf16 scales
//! run the exact-weights form by default (one f16 per weight, the groups' offsets through x's
//! pseudo-features: groups of 32, 64 and 128 here), checked the same way and against the weight
//! pairs.
//!
//! Runs where the device has 16 × 16 cooperative matrices of f16 with f32 accumulators (NVIDIA
//! through Vulkan); elsewhere (lavapipe, SwiftShader, Metal) it says so and checks only that the
//! engine keeps the f32 GEMM there. One test for the GEMM (the switches are process-wide); one
//! for `xsplit.wgsl` alone, on every device.

use qwgpu_engine::gpu::GpuOptions;
use qwgpu_engine::ops::matmul::{coop_exact, parse_coop_forms, set_coop_exact, set_coop_forms};
use qwgpu_engine::ops::matmul::{
    coop_forms, coop_tile, set_coop_tile, set_prefill_coop, set_prefill_gemm, use_coop, CoopTile,
    MatmulOpts, FEW_ROWS, MT_PREFILL,
};
use qwgpu_engine::ops::matrix::Matrix;
use qwgpu_engine::quant::{FloatType, WeightFormat};
use qwgpu_tests::quant::{added, prompt_forms, quantized_formats, run_matmul, MmCall, Q};
use qwgpu_tests::*;

fn run_mm(
    gpu: &qwgpu_engine::gpu::Gpu,
    m: &Matrix,
    x: &[f32],
    t: usize,
    add: bool,
    swiglu: bool,
) -> Vec<f32> {
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

fn opts() -> MatmulOpts {
    MatmulOpts {
        rows: qwgpu_engine::gpu::Rows::Tokens,
        add: false,
        mt: MT_PREFILL,
        swiglu: false,
    }
}

fn rtol(k: usize) -> f32 {
    (3 * k / 16) as f32 * 2f32.powi(-22) + 1e-6
}

#[test]
fn tensor_core_prefill_gemm_matches_cpu_and_is_chunk_invariant() {
    set_prefill_gemm(true);
    set_prefill_coop(true);
    let probe = gpu();
    // The forms a plan holds by token count (the choice alone, on any device: limits that take
    // every tile).
    {
        let mut limits = probe.limits.clone();
        limits.max_compute_workgroup_storage_size = 64 << 10;
        limits.max_compute_invocations_per_workgroup = 1024;
        let f = quantized_formats()[0];
        let m = Matrix::upload(&probe, "w", &Q::random(&mut Rng(2), 130, 1024, f).data()).unwrap();
        let (d, s, s32, tiny) = (
            CoopTile::DEFAULT,
            CoopTile::SHORT,
            CoopTile::SHORT32,
            CoopTile::TINY,
        );
        let max = u32::MAX;
        set_coop_forms(None);
        assert_eq!(
            coop_forms(&limits, &m, d),
            [(16, tiny), (32, s32), (64, s), (max, d)]
        );
        // A long-chunk tile equal to the last short one takes its tokens.
        assert_eq!(
            coop_forms(&limits, &m, s),
            [(16, tiny), (32, s32), (max, s)]
        );
        // Tiles that do not fit the device, or whose step does not divide k, are left out.
        let mut small = limits.clone();
        small.max_compute_workgroup_storage_size = s.shared_bytes();
        assert!(!tiny.fits(&small) && s.fits(&small) && s32.fits(&small));
        assert_eq!(coop_forms(&small, &m, d), [(32, s32), (64, s), (max, d)]);
        let m192 =
            Matrix::upload(&probe, "w", &Q::random(&mut Rng(3), 130, 192, f).data()).unwrap();
        assert_eq!(
            coop_forms(&limits, &m192, d),
            [(32, s32), (64, s), (max, d)]
        );
        // Forced lists: equal neighbours merge; an empty list keeps one form.
        set_coop_forms(Some(vec![(4, tiny), (8, tiny), (16, s)]));
        assert_eq!(coop_forms(&limits, &m, d), [(8, tiny), (16, s), (max, d)]);
        set_coop_forms(Some(Vec::new()));
        assert_eq!(coop_forms(&limits, &m, d), [(max, d)]);
        // A forced tile runs every chunk.
        set_coop_forms(None);
        set_coop_tile(Some(d));
        assert_eq!(coop_forms(&limits, &m, d), [(max, d)]);
        set_coop_tile(None);
        // The environment's form.
        assert_eq!(
            parse_coop_forms("16:64x16x128x4x1x3, 64:64x64x64x2x2x3"),
            Some(vec![(16, tiny), (64, s)])
        );
        assert_eq!(parse_coop_forms("none"), Some(Vec::new()));
        for bad in [
            "64:64x64x64x2x2x3,16:64x16x128x4x1x3",
            "16:64x16",
            "x:64x16x128x4x1x3",
            "0:64x16x128x4x1x3",
        ] {
            assert_eq!(parse_coop_forms(bad), None, "{bad:?}");
        }
    }
    if !probe.caps.coop {
        eprintln!(
            "skipping the tensor-core GEMM checks: {} has no 16x16 f16/f32 cooperative matrices",
            probe.describe()
        );
        let mut rng = Rng(1);
        let q = Q::random(&mut rng, 8, 64, quantized_formats()[0]);
        let m = Matrix::upload(&probe, "w", &q.data()).unwrap();
        assert!(use_coop(&probe, &m, &opts()).is_none());
        return;
    }
    let tiles = [
        CoopTile::DEFAULT,
        CoopTile::MEDIUM,
        CoopTile::WIDE,
        CoopTile::SHORT,
        CoopTile::SHORT32,
        CoopTile::TINY,
        CoopTile {
            bn: 64,
            bt: 32,
            bk: 32,
            sgr: 2,
            sgc: 2,
            ..CoopTile::DEFAULT
        },
        CoopTile {
            bn: 64,
            bt: 128,
            bk: 16,
            sgr: 1,
            sgc: 4,
            ..CoopTile::DEFAULT
        },
    ];
    // Unchecked shaders (what native sessions run) and wgpu's checked ones.
    let devices = [
        gpu_with(GpuOptions {
            shader_checks: Some(false),
            ..Default::default()
        }),
        probe,
    ];
    for gpu in devices {
        let mut rng = Rng(21);
        // The exact-weights form's group sizes beside the shared formats.
        let extra = [32, 128].map(|group| WeightFormat::Affine {
            bits: 4,
            group,
            scale: FloatType::BF16,
        });
        for f in quantized_formats().into_iter().chain(extra) {
            // Formats the exact-weights form takes run in both forms.
            set_coop_exact(true);
            let exact_forms: &[bool] = match coop_exact(&f, &[CoopTile::DEFAULT]) {
                Some(_) => &[false, true],
                None => &[false],
            };
            for (&exact, (n, k)) in exact_forms
                .iter()
                .flat_map(|e| [(e, (130usize, 1024usize)), (e, (70, 256))])
            {
                set_coop_exact(exact);
                let q = Q::random(&mut rng, n, k, f);
                let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
                let t = 70; // partial token tiles
                let mut x = rng.vec(t * k, 1.0);
                // Rows far beyond f16's range and far below its normal numbers.
                for v in &mut x[5 * k..6 * k] {
                    *v *= 3.0e6;
                }
                for v in &mut x[6 * k..7 * k] {
                    *v *= 1.0e-9;
                }
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
                let mut first: Option<(CoopTile, Vec<f32>)> = None;
                for tile in tiles {
                    set_coop_tile(Some(tile));
                    assert_eq!(
                        use_coop(&gpu, &m, &opts()),
                        Some(tile),
                        "tile {tile:?} on {}",
                        gpu.describe()
                    );
                    let what = format!(
                        "{} n={n} k={k}, exact weights {exact}, tile {tile:?} ({})",
                        f.describe(),
                        gpu.describe()
                    );
                    // f16 pairs hold w and x to about 2^-22; the tensor cores add each block of
                    // 16 features' products to the running sum with truncation (about 2^-22 of it
                    // per block and pair term: 3k/16 blocks).
                    let rtol = rtol(k);
                    for add in [false, true] {
                        let got = run_mm(&gpu, &m, &x, t, add, false);
                        assert_close(
                            &format!("coop GEMM vs CPU, add={add}, {what}"),
                            &got,
                            &want,
                            &mag,
                            // (with add, what the f32 addition to y's start loses)
                            if add { 1e-5 } else { 0.0 },
                            rtol,
                        );
                    }
                    // Chunk invariance: rows of a 70-row call equal the same rows computed alone.
                    let all = run_mm(&gpu, &m, &x, t, false, false);
                    for (a, b) in [(64usize, 70usize), (5, 7), (0, 1)] {
                        let part = run_mm(&gpu, &m, &x[a * k..b * k], b - a, false, false);
                        assert_bits_eq(
                            &format!("coop rows {a}..{b} alone vs in a 70-row call, {what}"),
                            &part,
                            &all[a * n..b * n],
                        );
                    }
                    match &first {
                        Some((t0, y0)) => assert_bits_eq(
                            &format!("coop tile {tile:?} vs {t0:?}, {what}"),
                            &all,
                            y0,
                        ),
                        None => first = Some((tile, all.clone())),
                    }
                    // SwiGLU epilogue: interleaved gate/up vs stacked GEMM then the SwiGLU kernel.
                    let fused = run_mm(&gpu, &inter, &x, t, false, true);
                    let gu = run_mm(&gpu, &stacked, &x, t, false, false);
                    assert_bits_eq(
                        &format!("coop SwiGLU epilogue vs coop + swiglu kernel, {what}"),
                        &fused,
                        &swiglu_kernel(&gpu, &gu, t, n),
                    );
                }
                // One f16 per value (no pairs): within f16's rounding of w and x (2^-11 each, and
                // the products' sums in f32), and not the pairs' bits.
                let single = CoopTile {
                    wlo: false,
                    xlo: false,
                    ..CoopTile::DEFAULT
                };
                set_coop_tile(Some(single));
                let got = run_mm(&gpu, &m, &x, t, false, false);
                assert_close(
                    &format!(
                        "coop GEMM without pairs vs CPU, {} n={n} k={k}",
                        f.describe()
                    ),
                    &got,
                    &want,
                    &mag,
                    0.0,
                    3.0 / 2048.0,
                );
                let (_, y0) = first.as_ref().unwrap();
                // Worst error relative to Σ|x·w|.
                let worst = |y: &[f32]| {
                    y.iter()
                        .zip(&want)
                        .zip(&mag)
                        .map(|((a, b), m)| (a - b).abs() / m.max(f32::MIN_POSITIVE))
                        .fold(0f32, f32::max)
                };
                // The exact-weights form against the weight pairs it replaces (both checked
                // against the CPU above): not the same bits (the form is in use).
                if exact {
                    set_coop_tile(Some(CoopTile::DEFAULT));
                    set_coop_exact(false);
                    let pairs = run_mm(&gpu, &m, &x, t, false, false);
                    set_coop_exact(true);
                    eprintln!(
                        "{} n={n} k={k}: worst error / Σ|x·w|: exact weights {:.2e}, weight pairs {:.2e}",
                        f.describe(),
                        worst(y0),
                        worst(&pairs)
                    );
                    assert!(
                        &pairs != y0,
                        "{} n={n} k={k}: the exact-weights form gave the weight pairs' bits",
                        f.describe()
                    );
                }
                // Unforced, chunks of at most 4 / 6 / 8 tokens run the tiny / 32-token / short
                // tile (the plan holds every form, each step records the one for its token
                // count): every row has the bits of the forced tiles' above.
                set_coop_tile(None);
                let short = [
                    (4, CoopTile::TINY),
                    (6, CoopTile::SHORT32),
                    (8, CoopTile::SHORT),
                ];
                set_coop_forms(Some(short.to_vec()));
                let fits = |c: CoopTile| c.fits(&gpu.limits) && k % c.bk as usize == 0;
                if short.iter().all(|(_, c)| fits(*c)) {
                    let full = coop_tile(&gpu.limits, n as u32).unwrap().bt;
                    assert_eq!(
                        prompt_forms(&gpu, &m, t),
                        [
                            ((0, 4), CoopTile::TINY.bt),
                            ((5, 6), CoopTile::SHORT32.bt),
                            ((7, 8), CoopTile::SHORT.bt),
                            ((9, u32::MAX), full)
                        ]
                    );
                }
                let long = run_mm(&gpu, &m, &x, t, false, false);
                assert_bits_eq(
                    &format!("unforced tiles, 70 rows, {} n={n} k={k}", f.describe()),
                    &long,
                    y0,
                );
                for (a, b) in [
                    (0usize, 8usize),
                    (5, 7),
                    (62, 70),
                    (60, 69),
                    (10, 14),
                    (3, 4),
                    (20, 26),
                ] {
                    let part = run_mm(&gpu, &m, &x[a * k..b * k], b - a, false, false);
                    assert_bits_eq(
                        &format!(
                            "unforced tiles, rows {a}..{b} alone, {} n={n} k={k}",
                            f.describe()
                        ),
                        &part,
                        &y0[a * n..b * n],
                    );
                }
                set_coop_forms(None);
                // The pairs do what they are for: their worst error (relative to Σ|x·w|) is far
                // below one f16's.
                let (ep, es) = (worst(y0), worst(&got));
                eprintln!(
                    "{} n={n} k={k}, exact weights {exact}: worst error / Σ|x·w|: {ep:.2e}, one f16 {es:.2e}",
                    f.describe()
                );
                assert!(
                    ep * 4.0 < es,
                    "{} n={n} k={k}: the f16 pairs ({ep:.2e}) are not clearly more accurate than one f16 ({es:.2e})",
                    f.describe()
                );
            }
        }
    }
    set_coop_tile(None);
    set_coop_exact(false);
    // Unforced: the wide tile for matrices of more than FEW_ROWS rows where it fits, the
    // default tile for the others (the tile never changes the bits, checked above).
    let limits = gpu_with(GpuOptions::default()).limits.clone();
    if CoopTile::WIDE.fits(&limits)
        && std::env::var_os("QWGPU_COOP_TILE").is_none()
        && std::env::var_os("QWGPU_COOP_TILE_WIDE").is_none()
    {
        assert_eq!(coop_tile(&limits, FEW_ROWS + 1), Some(CoopTile::WIDE));
        assert_eq!(coop_tile(&limits, FEW_ROWS), Some(CoopTile::DEFAULT));
    }
}

/// `xsplit.wgsl` on any device (it needs no cooperative matrices): every row's scale, f16
/// pairs and factor, and in the exact-weights form the groups' sums as pseudo-features and the
/// zeros after them, against a scalar CPU model of the layout (hi: the value's mantissa cut to
/// 10 bits; lo and the sums' halves: f16 of what is left, round to nearest even).
#[test]
fn xsplit_rows_and_group_sums_match_cpu() {
    use qwgpu_engine::gpu::{Rows, StepShape, StepSlot};
    use qwgpu_engine::ops::matmul::{coop_row_words, xsplit};
    use qwgpu_engine::ops::Act;
    let gpu = gpu();
    let mut rng = Rng(5);
    for (k, col, stride, exact) in [
        (256u32, 0u32, 256u32, None),
        (256, 0, 256, Some(64u32)),
        (320, 6, 330, Some(32)),
        (384, 2, 390, Some(128)),
        (1024, 0, 1024, Some(64)),
    ] {
        let t = 5usize;
        let mut x = rng.vec(t * stride as usize, 1.0);
        // Row 1 large, row 2 tiny, row 3 zero, row 4 with one outlier.
        for (r, f) in [(1usize, 3.0e5f32), (2, 1.0e-7), (3, 0.0)] {
            for v in &mut x[r * stride as usize..(r + 1) * stride as usize] {
                *v *= f;
            }
        }
        x[4 * stride as usize + col as usize + 7] = 900.0;
        let xb = upload_f32(&gpu, "x", &x);
        let sb = tokens_step(&gpu, t);
        let xs = pollster::block_on(xsplit(
            &gpu,
            "xsplit test",
            k,
            exact,
            Act {
                buf: &xb,
                stride,
                col,
            },
            StepSlot {
                buf: &sb,
                offset: 0,
            },
            Rows::Tokens,
        ))
        .unwrap();
        assert_eq!(xs.row_words, coop_row_words(k, exact));
        run(
            &gpu,
            &[xs.dispatch],
            StepShape {
                n_tokens: t as u32,
                n_out: 1,
                keys: 0,
            },
        );
        let words = read_u32(&gpu, &xs.buf, (xs.sig_off as usize) + t);
        let f16 = |v: f32| half::f16::from_f32(v).to_bits() as u32;
        let cut = |v: f32| f32::from_bits(v.to_bits() & 0xFFFF_E000);
        for r in 0..t {
            let row = &x[r * stride as usize + col as usize..][..k as usize];
            let m = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let e = ((m.to_bits() >> 23) & 0xFF) as i32 - 127;
            let top = if exact.is_some() { 7 } else { 13 };
            let sh = (top - e).clamp(-114, 118);
            let sc = f32::from_bits(((sh + 127) as u32) << 23);
            let what = format!("k={k} col={col} exact={exact:?} row {r}");
            assert_eq!(
                words[xs.sig_off as usize + r],
                ((127 - sh - 8) as u32) << 23,
                "{what}: factor"
            );
            let base = r * xs.row_words as usize;
            let pair = |j: usize, a: f32, b: f32, what: &str| {
                let o = base + (j / 8) * 16 + j % 8;
                let (ha, hb) = (cut(a), cut(b));
                assert_eq!(words[o], f16(ha) | f16(hb) << 16, "{what}: hi of pair {j}");
                assert_eq!(
                    words[o + 8],
                    f16(a - ha) | f16(b - hb) << 16,
                    "{what}: lo of pair {j}"
                );
            };
            for j in 0..k as usize / 2 {
                pair(j, row[2 * j] * sc, row[2 * j + 1] * sc, &what);
            }
            if let Some(g) = exact {
                let ng = (k / g) as usize;
                for (gi, grp) in row.chunks(g as usize).enumerate() {
                    let sum = grp.iter().fold(0f32, |a, v| a + v * sc);
                    assert!(sum.abs() < 32768.0, "{what}: group {gi} sum {sum}");
                    pair(k as usize / 2 + gi, sum, sum, &format!("{what}, group sum"));
                }
                for j in ng..(xs.row_words - k) as usize / 2 {
                    pair(k as usize / 2 + j, 0.0, 0.0, &format!("{what}, pad"));
                }
            } else {
                assert_eq!(xs.row_words, k);
            }
        }
    }
}
