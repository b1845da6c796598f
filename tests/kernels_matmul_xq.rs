//! The decode matmuls on x as integer planes (`xquant.wgsl` once per input, then `XQ` in
//! `matmul_staged.wgsl`: `ops::xquant::xquant` + `ops::matmul::matmul_xq`) for every 4-bit format:
//! - against a scalar CPU reference of the same arithmetic (x rounded to s · round(x / s) per
//!   word of 8 with s = 2^(E - F) for the word's max |x| < 2^E, then the products and sums
//!   in f64; F = 15 in the two-plane format `ops::xquant::narrow`, 7 in the one-plane
//!   format `ops::xquant::byte`, or 22): only the f32
//!   accumulation may differ;
//! - against the exact product in f64, within the bound x's rounding allows (Σ |scale · q| · s / 2
//!   per word), on x with outliers, all-zero blocks and tiny blocks, from a column inside wider
//!   rows;
//! - with the RMSNorm in the xquant dispatch, against a CPU norm and the exact product;
//! - row 0 of a 2-token call equal to a 1-token call bit for bit, with a residual add, a SwiGLU
//!   pair matrix and a norm (a verify's row 0 equals a decode);
//! - the kernel's variants: a block's word products summed in i32 at the block's largest scale
//!   (within the added floor bound), and several blocks' loads per lane iteration (the same bits);
//! - rows per lane group of long rows (`QWGPU_XQ_LONG_ROWS`; the same bits);
//! - the two-plane format (`QWGPU_XQ_NARROW`, the default), the three-plane one and the one-plane
//!   one (`QWGPU_XQ_BYTE`, F = 7) through the above checks;
//! - the fused epilogues (`matmul_xq_ext`): a residual projection writing the next norm's planes
//!   (w ∘ y, the norm deferred) has xquant's bits for those values, the matmul reading them with
//!   the deferred norm matches W · RMSNorm(y) on the CPU, a SwiGLU gate+up writing the down
//!   projection's planes has xquant's bits for its output, and the whole chain is batch invariant.

use qwgpu_engine::gpu::Gpu;
use qwgpu_engine::gpu::{Rows, StepShape, StepSlot};
use qwgpu_engine::ops::matmul::{
    matmul_xq_ext, set_acc_vars, set_fuse_xq, set_staged, set_xq, set_xq_block_sum, set_xq_const_k,
    set_xq_grid, set_xq_grid_frac, set_xq_grid_frac_verify, set_xq_ksplit, set_xq_long_rows,
    set_xq_mid_verify, set_xq_norm_late, set_xq_unroll, set_xq_unroll_ch, set_xreg, takes_xq,
    writes_xq, xq_grid_cap, xq_tile, MatmulOpts, XqOut, FEW_ROWS, MT_FOUR, MT_ONE, MT_SMALL,
    MT_THREE,
};
use qwgpu_engine::ops::matrix::Matrix;
use qwgpu_engine::ops::xquant::{
    byte, frac_bits, narrow, q_stride, row_bytes, set_byte, set_narrow, xquant,
};
use qwgpu_engine::ops::Act;
use qwgpu_engine::quant::{decode_floats, WeightFormat};
use qwgpu_tests::quant::{added, quantized_formats, run_matmul, MmCall, Q};
use qwgpu_tests::*;

/// The kernel switches are process-wide: the tests of this binary take turns.
static SWITCHES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// x rounded as xquant rounds it: per word of 8 values, s = 2^(E - F) with the word's max |x|
/// in [2^(E-1), 2^E) (0 below 2^(F - 127)), x → s · round_half_even(x / s); F = `frac_bits()`
/// (the format of plans built now).
fn plane_round(x: &[f32]) -> Vec<f32> {
    let f = frac_bits() as i32;
    let mut out = Vec::with_capacity(x.len());
    for block in x.chunks(8) {
        let mx = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        // The biased exponent: mx in [2^(e - 127), 2^(e - 126)), so E = e - 126.
        let e = ((mx.to_bits() >> 23) & 0xFF) as i32;
        if e < f {
            out.extend(block.iter().map(|_| 0f32));
            continue;
        }
        let s = 2f64.powi(e - 126 - f) as f32;
        let inv = 2f64.powi(126 + f - e) as f32;
        assert_eq!(s as f64 * inv as f64, 1.0);
        // The two- and one-plane formats keep xi below 2^F (a value within 2^-(F+1) of 2^E
        // rounds down).
        let top = if narrow() || byte() {
            2f32.powi(f) - 1.0
        } else {
            2f32.powi(f)
        };
        out.extend(block.iter().map(|&v| {
            let q = (v * inv).round_ties_even().min(top);
            assert!(q.abs() <= 2f32.powi(f), "fixed-point code {q} out of range");
            q * s
        }));
    }
    out
}

/// At least the plane scale of values whose max |x| is that of `v`: 2^(E - F) for a max in
/// [2^(E-1), 2^E), twice that (a value a rounding step below a power of two may round up).
fn scale_bound(v: &[f32]) -> f64 {
    let mx = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    if mx > 0.0 {
        2.0 * 2f64.powi(mx.log2().floor() as i32 + 1 - frac_bits() as i32)
    } else {
        0.0
    }
}

/// The most the block sums' shifts can move each output: a block of 32 values sums its four
/// words' integer products in i32, each floored to a unit of the block's largest word scale S,
/// so each word adds less than |scale| · S (`QWGPU_XQ_BLOCK_SUM=1`); 0 for the per-word sums.
fn shift_bound(q: &Q, x: &[f32], t: usize, block_sum: bool) -> Vec<f32> {
    let (n, k) = (q.n, q.k);
    if !block_sum {
        return vec![0.0; t * n];
    }
    let WeightFormat::Affine { group, scale, .. } = q.format else {
        unreachable!()
    };
    let group = group as usize;
    let scales = decode_floats(scale, &q.scales);
    let mut out = vec![0f32; t * n];
    for ti in 0..t {
        let xr = &x[ti * k..(ti + 1) * k];
        // S per block: the largest word scale.
        let big: Vec<f64> = xr.chunks(32).map(scale_bound).collect();
        for r in 0..n {
            let mut b = 0f64;
            for w in 0..k / 8 {
                b += scales[r * (k / group) + w * 8 / group].abs() as f64 * big[w / 4];
            }
            out[ti * n + r] = b as f32;
        }
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

/// The most x's rounding can move each output: Σ_j |dense_j − bias_j| · s_j / 2 with s_j the
/// plane scale of x_j's word (x taken as the values the kernel rounds, up to their last bits).
fn plane_bound(q: &Q, x: &[f32], t: usize) -> Vec<f32> {
    let (n, k) = (q.n, q.k);
    let WeightFormat::Affine { group, scale, .. } = q.format else {
        unreachable!()
    };
    let group = group as usize;
    let biases = decode_floats(scale, &q.biases);
    let mut out = vec![0f32; t * n];
    for ti in 0..t {
        let xr = &x[ti * k..(ti + 1) * k];
        let s: Vec<f64> = xr
            .chunks(8)
            .flat_map(|w| std::iter::repeat_n(scale_bound(w), w.len()))
            .collect();
        for r in 0..n {
            let mut b = 0f64;
            for j in 0..k {
                let w = q.dense[r * k + j] as f64;
                let bias = biases[r * (k / group) + j / group] as f64;
                b += (w - bias).abs() * s[j] / 2.0;
            }
            out[ti * n + r] = b as f32;
        }
    }
    out
}

/// x with the shapes the planes must survive: normal values, an outlier every 97 values (a block
/// with one value 300× the rest), an all-zero block, a block of tiny values, and words whose max
/// is a hair below a power of two.
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
        // A word's max a hair below a power of two (x / s rounds up to 2^F in both formats).
        if j % 89 == 11 {
            *v = v.signum() * (4.0 - 2f32.powi(-20));
        }
    }
    x
}

/// A random n × k matrix in format `f` on the GPU; with `swiglu`, gate and up of n / 2 rows each,
/// interleaved.
fn random_matrix(
    gpu: &std::sync::Arc<Gpu>,
    rng: &mut Rng,
    n: usize,
    k: usize,
    f: WeightFormat,
    swiglu: bool,
) -> Matrix {
    if swiglu {
        let (g, u) = (Q::random(rng, n / 2, k, f), Q::random(rng, n / 2, k, f));
        Matrix::upload_interleaved(gpu, "gate~up", ("gate", &g.data()), ("up", &u.data())).unwrap()
    } else {
        Matrix::upload(gpu, "w", &Q::random(rng, n, k, f).data()).unwrap()
    }
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

/// The weight formats that device variant `gi` (of `0..=last`, the device's own variant last)
/// runs in a pass: in the full pass every one on the device's own variant and the first on the
/// checked one without subgroups (the browser's form); otherwise the first. The formats differ
/// only in how a group's scale and bias are read, and on a CPU device shader compiles are most
/// of these tests' time, so the other formats also take fewer tiles than the first.
fn formats_for(formats: &[WeightFormat], full: bool, gi: usize, last: usize) -> &[WeightFormat] {
    if full && gi == last {
        formats
    } else {
        &formats[..1]
    }
}

#[test]
fn integer_plane_matmul_matches_cpu_and_is_batch_invariant() {
    let _turn = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    set_xreg(false);
    set_staged(true);
    set_xq(true);
    let formats: Vec<WeightFormat> = quantized_formats()
        .into_iter()
        .filter(|f| matches!(f, WeightFormat::Affine { bits: 4, .. }))
        .collect();
    // The default (each word's product scaled in f32; long rows split over 2 groups of lanes)
    // on every device variant and shape, every format on the device's own variant (`formats_for`;
    // the first format with every tile and the row checks, the others the 1- and 2-token tiles);
    // then block sums in i32 (`QWGPU_XQ_BLOCK_SUM=1`), 3 / 2 blocks per lane iteration with 2 / 4
    // groups per row, and no split at all, on one device variant, one format and two shapes (the
    // unrolled chunk loop four, the three- and one-plane passes three).
    // Pipelines are built for their row length (`QWGPU_XQ_CONST_K`, the default: k = 2048 is rows
    // of whole chunks, no tail checks) except in the fifth pass; the last writes the chunk loop
    // out (one group per row); the next two take the three-plane format (`QWGPU_XQ_NARROW=0`),
    // with per-word and block sums; the last two the one-plane format (`QWGPU_XQ_BYTE=1`), the
    // same. n = 64 and 16 are whole workgroups of rows (no row clamp, `QWGPU_XQ_EXACT_ROWS`);
    // the others end in a partial one.
    for (block_sum, unroll, ksplit, const_k, unroll_ch, narrow, one) in [
        (false, None, None, true, false, true, false),
        (true, None, None, true, false, true, false),
        (false, Some((3, 2)), Some((2, 4)), true, false, true, false),
        (false, None, Some((1, 1)), true, false, true, false),
        (false, None, None, false, false, true, false),
        (false, None, Some((1, 1)), true, true, true, false),
        (false, None, None, true, false, false, false),
        (true, None, None, true, false, false, false),
        (false, None, None, true, false, true, true),
        (true, None, None, true, false, true, true),
    ] {
        set_narrow(narrow);
        set_byte(one);
        set_xq_block_sum(block_sum);
        set_xq_unroll(unroll);
        set_xq_ksplit(ksplit);
        set_xq_const_k(const_k);
        set_xq_unroll_ch(unroll_ch);
        let full = !block_sum && unroll.is_none() && ksplit.is_none() && const_k && narrow && !one;
        let gpus = gpu_variants();
        let gpus = if full {
            gpus
        } else {
            gpus[gpus.len() - 1..].to_vec()
        };
        let shapes: &[(usize, usize)] = if full {
            &[
                (70, 1536),
                (70, 2048),
                (64, 2048),
                (9, 256),
                (20, 4224),
                (6, 16896),
                (16, 16896),
            ]
        } else if unroll_ch {
            &[(70, 1536), (70, 2048), (64, 2048), (6, 16896)]
        } else if !narrow || one {
            &[(70, 1536), (64, 2048), (6, 16896)]
        } else {
            &[(70, 1536), (6, 16896)]
        };
        let last = gpus.len() - 1;
        // The device variants side by side (the switches above are set for the whole pass:
        // nothing inside changes them).
        each_in_parallel(gpus, |gi, gpu| {
            let mut rng = Rng(41);
            for (fi, &f) in formats_for(&formats, full, gi, last).iter().enumerate() {
                // The other formats: the 1- and 2-token tiles on every shape, no row checks.
                let every_tile = full && fi == 0;
                // k = 1536: a full chunk of 32 blocks and a partial one; 4224: five chunks and three
                // xquant workgroups; 16896: rows past the long-row limit. n not a multiple of the tile.
                for &(n, k) in shapes {
                    let q = Q::random(&mut rng, n, k, f);
                    let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
                    assert!(
                        takes_xq(&gpu, &m, MT_ONE)
                            && takes_xq(&gpu, &m, MT_SMALL)
                            && takes_xq(&gpu, &m, MT_THREE)
                            && takes_xq(&gpu, &m, MT_FOUR),
                        "{} k={k} ({}): the decode tiles should take integer planes",
                        f.describe(),
                        gpu.describe()
                    );
                    let x = hard_x(&mut rng, 4 * k);
                    // The same rows inside wider ones, from column 4.
                    let stride = k + 8;
                    let mut wide = vec![7.0f32; 4 * stride];
                    for t in 0..4 {
                        wide[t * stride + 4..t * stride + 4 + k]
                            .copy_from_slice(&x[t * k..(t + 1) * k]);
                    }
                    let what = |t: usize, mt: u32| {
                        format!(
                        "{} n={n} k={k} T={t} tile {mt} ({}; block sums {block_sum}, unroll {unroll:?}, k split {ksplit:?}, const k {const_k}, unrolled {unroll_ch}, narrow {narrow}, one plane {one})",
                        f.describe(),
                        gpu.describe()
                    )
                    };
                    // The 4-token tile (a batch of streams) with three and four rows in the
                    // default pass.
                    let tiles: &[(usize, u32)] = if every_tile {
                        &[(1, MT_ONE), (2, MT_SMALL), (3, MT_THREE), (4, MT_FOUR)]
                    } else {
                        &[(1, MT_ONE), (2, MT_SMALL)]
                    };
                    for &(t, mt) in tiles {
                        let (want, bound, mag) = cpu_planes(&q, &x[..t * k], t);
                        let shift = shift_bound(&q, &x[..t * k], t, block_sum);
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
                            // (With block sums, also within the shifts' floors.)
                            let scale: Vec<f32> =
                                mag.iter().zip(&shift).map(|(m, s)| 2e-6 * m + s).collect();
                            assert_close(
                                &format!(
                                    "planes vs their CPU arithmetic, add={add}, {}",
                                    what(t, mt)
                                ),
                                &got,
                                &want,
                                &scale,
                                1e-5,
                                1.0,
                            );
                            // Within x's rounding of the exact product.
                            let tol: Vec<f32> = bound
                                .iter()
                                .zip(&shift)
                                .zip(&mag)
                                .map(|((b, s), m)| b + s + 2e-6 * m)
                                .collect();
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
                        // within x's rounding (2^-F of a word's max per value) and the norm's f32.
                        let nw: Vec<f32> = (0..k).map(|_| 1.0 + 0.3 * rng.normal()).collect();
                        let xn = cpu_norm(&x, t, k, &nw, 1e-6);
                        let (exact_n, mag_n) = q.cpu_matmul(&xn, t);
                        let tol_n: Vec<f32> = plane_bound(&q, &xn, t)
                            .iter()
                            .zip(shift_bound(&q, &xn, t, block_sum))
                            .zip(&mag_n)
                            .map(|((b, s), m)| b + s + 2e-5 * m)
                            .collect();
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
                            &tol_n,
                            1e-5,
                            1.0,
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
                        if !every_tile || add {
                            continue;
                        }
                        // Every row of a 4-token tile (four rows, or three in a partial tile)
                        // is that row's 1-token call, and rows of the 2-token tile too (each
                        // row its own x; with add the rows start from different y).
                        let row = |t: usize| {
                            run_matmul(
                                &gpu,
                                mat,
                                MmCall {
                                    swiglu,
                                    planes: true,
                                    norm: norm.then_some((nw.as_slice(), 1e-6)),
                                    ..MmCall::new(&x[t * k..(t + 1) * k], 1, k, MT_ONE)
                                },
                            )
                        };
                        let alone: Vec<Vec<f32>> = (0..4).map(row).collect();
                        let w = alone[0].len();
                        for (t, mt) in [
                            (2usize, MT_SMALL),
                            (3, MT_THREE),
                            (3, MT_FOUR),
                            (4, MT_FOUR),
                        ] {
                            let many = run_matmul(&gpu, mat, call(t, mt));
                            for (r, a) in alone.iter().enumerate().take(t) {
                                assert_bits_eq(
                                    &format!(
                                        "planes row {r} of {t} tokens vs 1 token, swiglu={swiglu} norm={norm}, {}",
                                        what(t, mt)
                                    ),
                                    &many[r * w..(r + 1) * w],
                                    a,
                                );
                            }
                        }
                    }
                }
            }
        });
    }
    // Blocks per lane iteration never change the bits (either sum).
    set_narrow(true);
    set_byte(false);
    set_xq_block_sum(false);
    set_xq_ksplit(None);
    set_xq_const_k(true);
    set_xq_unroll_ch(false);
    let gpu: std::sync::Arc<Gpu> = gpu();
    let mut rng = Rng(44);
    for (n, k) in [(70usize, 1536usize), (6, 16896)] {
        let q = Q::random(&mut rng, n, k, formats[0]);
        let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
        let x = hard_x(&mut rng, 2 * k);
        for (t, mt) in [(1usize, MT_ONE), (2, MT_SMALL)] {
            let call = || MmCall {
                add: true,
                planes: true,
                ..MmCall::new(&x[..t * k], t, k, mt)
            };
            set_xq_unroll(Some((1, 1)));
            let one = run_matmul(&gpu, &m, call());
            set_xq_unroll(Some((4, 3)));
            let more = run_matmul(&gpu, &m, call());
            assert_bits_eq(&format!("unrolled vs not, n={n} k={k} T={t}"), &more, &one);
        }
    }
    set_xq_unroll(None);
    // The grid-stride form (`QWGPU_XQ_GRID`: fewer workgroups than tiles of rows, each taking
    // several in turn) never changes the bits: both tiles, whole and partial workgroups of rows,
    // long rows (split over two groups), SwiGLU pairs.
    for (n, k, swiglu) in [
        (70usize, 1536usize, false),
        (6, 16896, false),
        (FEW_ROWS as usize + 64, 256, true),
    ] {
        let m = random_matrix(&gpu, &mut rng, n, k, formats[0], swiglu);
        let x = hard_x(&mut rng, 2 * k);
        for (t, mt) in [(1usize, MT_ONE), (2, MT_SMALL)] {
            let call = || MmCall {
                add: !swiglu,
                swiglu,
                planes: true,
                ..MmCall::new(&x[..t * k], t, k, mt)
            };
            set_xq_grid(Some((0, 0)));
            let base = run_matmul(&gpu, &m, call());
            for g in [1u32, 3] {
                set_xq_grid(Some((g, g)));
                let other = run_matmul(&gpu, &m, call());
                assert_bits_eq(
                    &format!(
                        "grid of {g} workgroups vs one per tile, n={n} k={k} T={t} swiglu={swiglu}"
                    ),
                    &other,
                    &base,
                );
            }
        }
    }
    set_xq_grid(None);
    // The relative caps (`QWGPU_XQ_GRID_FRAC=F,MIN` for the 1-token tile, the H200's default, and
    // `QWGPU_XQ_GRID_FRAC_VERIFY` for the 2-token tile): a matrix of at least MIN tiles of the
    // tile's rows takes ⌈F · tiles⌉ workgroups, one of fewer keeps one per tile, each tile takes
    // only its own knob, an absolute cap wins over both, and the outputs keep the bits of one
    // workgroup per tile.
    {
        let (n, k) = (512usize, 1536usize);
        let m = random_matrix(&gpu, &mut rng, n, k, formats[0], true);
        let tiles_of = |mt: u32| (n as u32).div_ceil(xq_tile(mt, k as u32, n as u32).1);
        assert!(tiles_of(MT_ONE) >= 4, "{} tiles", tiles_of(MT_ONE));
        let groups = |mt: u32| {
            let planes = gpu.storage("planes", 2 * row_bytes(k as u32)).unwrap();
            let y = gpu.storage("y", 2 * n as u64 * 4).unwrap();
            let step = gpu.storage("step", 256).unwrap();
            let ds = pollster::block_on(matmul_xq_ext(
                &gpu,
                &m,
                &planes,
                Act::new(&y, n as u32 / 2),
                StepSlot {
                    buf: &step,
                    offset: 0,
                },
                MatmulOpts {
                    rows: Rows::Tokens,
                    add: false,
                    mt,
                    swiglu: true,
                },
                None,
                None,
                None,
            ))
            .unwrap();
            ds[0].grid.groups
        };
        let x = hard_x(&mut rng, 2 * k);
        for (t, mt) in [(1usize, MT_ONE), (2, MT_SMALL)] {
            // Each tile's own tiles of rows (each relative cap counts its tile's).
            let tiles = tiles_of(mt);
            assert!(tiles >= 4, "{tiles} tiles of the {t}-token tile");
            let call = || MmCall {
                swiglu: true,
                planes: true,
                ..MmCall::new(&x[..t * k], t, k, mt)
            };
            // This tile's knob and the other one's.
            let (own, other): (fn(Option<(f64, u32)>), fn(Option<(f64, u32)>)) = if mt == MT_ONE {
                (set_xq_grid_frac, set_xq_grid_frac_verify)
            } else {
                (set_xq_grid_frac_verify, set_xq_grid_frac)
            };
            set_xq_grid(Some((0, 0)));
            own(Some((0.0, 0)));
            other(Some((0.5, 0)));
            assert_eq!(xq_grid_cap(&gpu, &m, mt), 0, "the other tile's cap, T={t}");
            assert_eq!(groups(mt), tiles);
            let base = run_matmul(&gpu, &m, call());
            for (f, min) in [(0.75, tiles), (0.5, 2), (0.75, tiles + 1), (1.0, 0)] {
                own(Some((f, min)));
                let want = if tiles >= min && f < 1.0 {
                    (tiles as f64 * f).ceil() as u32
                } else {
                    tiles
                };
                assert_eq!(groups(mt), want, "F={f} MIN={min} T={t}");
                let capped = run_matmul(&gpu, &m, call());
                assert_bits_eq(
                    &format!("relative cap F={f} MIN={min} vs one per tile, T={t}"),
                    &capped,
                    &base,
                );
            }
            // An absolute cap wins.
            own(Some((0.5, 0)));
            set_xq_grid(Some((3, 3)));
            assert_eq!(groups(mt), 3);
            set_xq_grid(Some((0, 0)));
            own(None);
            other(None);
        }
        set_xq_grid(None);
        set_xq_grid_frac(None);
        set_xq_grid_frac_verify(None);
    }
    // Rows per lane group of long rows (`QWGPU_XQ_LONG_ROWS`) never change the bits: whole and
    // partial workgroups, both tiles.
    for (n, k) in [(16usize, 16896usize), (6, 16896), (40, 16896)] {
        let q = Q::random(&mut rng, n, k, formats[0]);
        let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
        let x = hard_x(&mut rng, 4 * k);
        for (t, mt) in [(1usize, MT_ONE), (2, MT_SMALL), (3, MT_THREE), (4, MT_FOUR)] {
            let call = || MmCall {
                add: true,
                planes: true,
                ..MmCall::new(&x[..t * k], t, k, mt)
            };
            set_xq_long_rows(Some((2, 2)));
            let two = run_matmul(&gpu, &m, call());
            for rows in [(2, 4), (4, 4), (1, 8)] {
                set_xq_long_rows(Some(rows));
                let want_rg = if mt == MT_ONE { rows.0 } else { rows.1 };
                assert_eq!(xq_tile(mt, k as u32, n as u32).2, want_rg, "long-row tile");
                let other = run_matmul(&gpu, &m, call());
                assert_bits_eq(
                    &format!("long rows {rows:?} per group vs 2, n={n} k={k} T={t}"),
                    &other,
                    &two,
                );
            }
        }
    }
    set_xq_long_rows(None);
    // The verify tile of mid-row matrices (`QWGPU_XQ_MID_VERIFY`: more than FEW_ROWS, at most
    // MID_ROWS rows) never changes the bits: whole and partial workgroups, with the SwiGLU pairs.
    // (n: the matrix's rows; with SwiGLU, gate and up of n / 2 rows each, interleaved.)
    for (n, k, swiglu) in [
        (FEW_ROWS as usize + 128, 320usize, false),
        (FEW_ROWS as usize + 70, 256, false),
        (FEW_ROWS as usize + 64, 256, true),
    ] {
        let m = random_matrix(&gpu, &mut rng, n, k, formats[0], swiglu);
        let x = hard_x(&mut rng, 2 * k);
        let call = || MmCall {
            add: !swiglu,
            swiglu,
            planes: true,
            ..MmCall::new(&x[..2 * k], 2, k, MT_SMALL)
        };
        set_xq_mid_verify(Some(None));
        assert_eq!(
            xq_tile(MT_SMALL, k as u32, n as u32).2,
            4,
            "default verify tile"
        );
        let base = run_matmul(&gpu, &m, call());
        for (g, r) in [(2u32, 8u32), (1, 8), (4, 2)] {
            set_xq_mid_verify(Some(Some((g, r))));
            assert_eq!(
                xq_tile(MT_SMALL, k as u32, n as u32),
                (32 * g, g * r, r),
                "mid-row verify tile"
            );
            assert_eq!(
                xq_tile(MT_ONE, k as u32, n as u32).2,
                4,
                "the 1-token tile stays"
            );
            let other = run_matmul(&gpu, &m, call());
            assert_bits_eq(
                &format!(
                    "mid-row verify tile {g} x {r} vs the default, n={n} k={k} swiglu={swiglu}"
                ),
                &other,
                &base,
            );
        }
        // The 3- and 4-token tiles (a batch of streams) keep four groups of 4 rows whatever
        // the verify tile, and each of their rows is that row's 1-token call.
        set_xq_mid_verify(None);
        for mt in [MT_THREE, MT_FOUR] {
            assert_eq!(
                xq_tile(mt, k as u32, n as u32),
                (128, 16, 4),
                "{mt}-token tile"
            );
        }
        let x4 = hard_x(&mut rng, 4 * k);
        let plain = |x: &[f32], t: usize, mt: u32| {
            run_matmul(
                &gpu,
                &m,
                MmCall {
                    swiglu,
                    planes: true,
                    ..MmCall::new(x, t, k, mt)
                },
            )
        };
        for (t, mt) in [(3usize, MT_THREE), (4, MT_FOUR)] {
            let many = plain(&x4[..t * k], t, mt);
            let w = many.len() / t;
            for r in 0..t {
                assert_bits_eq(
                    &format!(
                        "mid-row {mt}-token tile row {r} vs 1 token, n={n} k={k} swiglu={swiglu}"
                    ),
                    &many[r * w..(r + 1) * w],
                    &plain(&x4[r * k..(r + 1) * k], 1, MT_ONE),
                );
            }
        }
    }
    set_xq_mid_verify(None);
    // The switch must decide: with it off no matrix takes planes.
    let mut rng = Rng(43);
    let q = Q::random(&mut rng, 32, 1024, formats[0]);
    let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
    set_xq(false);
    assert!(!takes_xq(&gpu, &m, MT_ONE));
    set_xq(true);
    assert!(takes_xq(&gpu, &m, MT_ONE));
}

/// What one run of the fused chain left: the residual y, its planes (w ∘ y), the deferred-norm
/// matmul's output, the SwiGLU output and its planes (u32 as written).
struct Chain {
    y: Vec<f32>,
    yq: Vec<u32>,
    c: Vec<f32>,
    act: Vec<f32>,
    aq: Vec<u32>,
}

/// Planes of `t` rows of `x` (`dim` values each) by an xquant dispatch, as u32.
fn xquant_u32(gpu: &Gpu, x: &[f32], t: usize, dim: u32) -> Vec<u32> {
    let xb = upload_f32(gpu, "x", x);
    let qb = gpu.storage("xq", t as u64 * row_bytes(dim)).unwrap();
    let sb = tokens_step(gpu, t);
    let slot = StepSlot {
        buf: &sb,
        offset: 0,
    };
    let d = pollster::block_on(xquant(
        gpu,
        dim,
        Act::new(&xb, dim),
        None,
        &qb,
        t as u32,
        slot,
        false,
    ))
    .unwrap();
    run(
        gpu,
        &[d],
        StepShape {
            n_tokens: t as u32,
            n_out: 1,
            keys: 0,
        },
    );
    read_u32(gpu, &qb, t * q_stride(dim) as usize * 4)
}

/// Plane P of every word of `t` rows of `dim` values.
fn plane(q: &[u32], t: usize, dim: u32, p: usize) -> Vec<f32> {
    let row = q_stride(dim) as usize * 4;
    let words = dim as usize / 8;
    (0..t)
        .flat_map(|r| {
            q[r * row + p * words..r * row + (p + 1) * words]
                .iter()
                .map(|&u| f32::from_bits(u))
        })
        .collect()
}

#[test]
fn fused_plane_epilogues_match_xquant_and_cpu() {
    let _turn = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    set_xreg(false);
    set_staged(true);
    set_xq(true);
    set_fuse_xq(true);
    let eps = 1e-6f32;
    let formats: Vec<WeightFormat> = quantized_formats()
        .into_iter()
        .filter(|f| matches!(f, WeightFormat::Affine { bits: 4, .. }))
        .collect();
    // Every device variant (every format on the device's own); then 2 groups per row, the
    // three-plane format (`QWGPU_XQ_NARROW=0`) and the one-plane format (`QWGPU_XQ_BYTE=1`), on
    // one of each.
    // Last, the grid-stride form with 2 workgroups (`QWGPU_XQ_GRID`), the epilogues included.
    for (ksplit, narrow, one, grid) in [
        (None, true, false, None),
        (Some((2, 2)), true, false, None),
        (None, false, false, None),
        (None, true, true, None),
        (None, true, false, Some((2, 2))),
    ] {
        set_xq_ksplit(ksplit);
        set_narrow(narrow);
        set_byte(one);
        set_xq_grid(grid);
        let gpus = gpu_variants();
        let full = ksplit.is_none() && narrow && !one && grid.is_none();
        let gpus = if full {
            gpus
        } else {
            gpus[gpus.len() - 1..].to_vec()
        };
        let last = gpus.len() - 1;
        for (gi, gpu) in gpus.into_iter().enumerate() {
            let mut rng = Rng(47);
            for (fi, &f) in formats_for(&formats, full, gi, last).iter().enumerate() {
                // The other formats: the 1- and 2-token tiles, without the epilogue's
                // alternative forms.
                let every_form = fi == 0;
                // A residual projection kin → h, a matmul h → n2 and a SwiGLU gate+up h → i on its
                // planes (i and h multiples of the tiles' 16 output rows, n2 not; with the row
                // split, h spans two chunks of 1024 values so that both parts of a row count).
                let h = if ksplit.is_some() { 1280usize } else { 256 };
                let (kin, n2, i) = (1152usize, 40usize, 128usize);
                let p = Q::random(&mut rng, h, kin, f);
                let pm = Matrix::upload(&gpu, "p", &p.data()).unwrap();
                let c = Q::random(&mut rng, n2, h, f);
                let cm = Matrix::upload(&gpu, "c", &c.data()).unwrap();
                let (g, u) = (Q::random(&mut rng, i, h, f), Q::random(&mut rng, i, h, f));
                let gu = Matrix::upload_interleaved(
                    &gpu,
                    "gate~up",
                    ("gate", &g.data()),
                    ("up", &u.data()),
                )
                .unwrap();
                let nw: Vec<f32> = (0..h).map(|_| 1.0 + 0.3 * rng.normal()).collect();
                let nwb = upload_f32(&gpu, "norm_w", &nw);
                let x = hard_x(&mut rng, 4 * kin);
                let resid = rng.vec(4 * h, 2.0);
                let what = |t: usize| {
                    format!(
                        "{} T={t} ({}; k split {ksplit:?}, narrow {narrow}, one plane {one}, grid {grid:?})",
                        f.describe(),
                        gpu.describe()
                    )
                };
                for mt in [MT_ONE, MT_SMALL, MT_THREE, MT_FOUR] {
                    let o = |add, swiglu| MatmulOpts {
                        rows: Rows::Tokens,
                        add,
                        mt,
                        swiglu,
                    };
                    assert!(
                        writes_xq(&gpu, &pm, &o(true, false))
                            && writes_xq(&gpu, &gu, &o(false, true)),
                        "the projection and the gate+up should write planes ({})",
                        what(mt as usize)
                    );
                }
                let chain = |t: usize, mt: u32, fused: bool| -> Chain {
                    let xb = upload_f32(&gpu, "x", &x[..t * kin]);
                    let qin = gpu
                        .storage("qin", t as u64 * row_bytes(kin as u32))
                        .unwrap();
                    let yb = upload_f32(&gpu, "y", &resid[..t * h]);
                    let yq = gpu.storage("yq", 4 * row_bytes(h as u32)).unwrap();
                    let cb = gpu.storage("c", (t * n2 * 4) as u64).unwrap();
                    let ab = gpu.storage("act", (t * i * 4) as u64).unwrap();
                    let aq = gpu.storage("aq", 4 * row_bytes(i as u32)).unwrap();
                    let sb = tokens_step(&gpu, t);
                    let slot = StepSlot {
                        buf: &sb,
                        offset: 0,
                    };
                    let o = |add, swiglu| MatmulOpts {
                        rows: Rows::Tokens,
                        add,
                        mt,
                        swiglu,
                    };
                    let mut d = vec![pollster::block_on(xquant(
                        &gpu,
                        kin as u32,
                        Act::new(&xb, kin as u32),
                        None,
                        &qin,
                        t as u32,
                        slot,
                        false,
                    ))
                    .unwrap()];
                    let out = fused.then_some(XqOut {
                        planes: &yq,
                        norm_w: Some(&nwb),
                    });
                    d.extend(
                        pollster::block_on(matmul_xq_ext(
                            &gpu,
                            &pm,
                            &qin,
                            Act::new(&yb, h as u32),
                            slot,
                            o(true, false),
                            None,
                            None,
                            out,
                        ))
                        .unwrap(),
                    );
                    if fused {
                        d.extend(
                            pollster::block_on(matmul_xq_ext(
                                &gpu,
                                &cm,
                                &yq,
                                Act::new(&cb, n2 as u32),
                                slot,
                                o(false, false),
                                None,
                                Some(eps),
                                None,
                            ))
                            .unwrap(),
                        );
                        d.extend(
                            pollster::block_on(matmul_xq_ext(
                                &gpu,
                                &gu,
                                &yq,
                                Act::new(&ab, i as u32),
                                slot,
                                o(false, true),
                                None,
                                Some(eps),
                                Some(XqOut {
                                    planes: &aq,
                                    norm_w: None,
                                }),
                            ))
                            .unwrap(),
                        );
                    }
                    run(
                        &gpu,
                        &d,
                        StepShape {
                            n_tokens: t as u32,
                            n_out: 1,
                            keys: 0,
                        },
                    );
                    Chain {
                        y: read_f32(&gpu, &yb, t * h),
                        yq: read_u32(&gpu, &yq, t * q_stride(h as u32) as usize * 4),
                        c: read_f32(&gpu, &cb, t * n2),
                        act: read_f32(&gpu, &ab, t * i),
                        aq: read_u32(&gpu, &aq, t * q_stride(i as u32) as usize * 4),
                    }
                };
                let one = chain(1, MT_ONE, true);
                let tiles: &[(usize, u32)] = if every_form {
                    &[(1, MT_ONE), (2, MT_SMALL), (3, MT_THREE), (4, MT_FOUR)]
                } else {
                    &[(1, MT_ONE), (2, MT_SMALL)]
                };
                for &(t, mt) in tiles {
                    let r = chain(t, mt, true);
                    // The epilogue leaves y as the plain residual projection writes it.
                    let plain = chain(t, mt, false);
                    assert_bits_eq(
                        &format!("fused vs plain residual y, {}", what(t)),
                        &r.y,
                        &plain.y,
                    );
                    // The squares summed after the products (`QWGPU_XQ_NORM_LATE`, on by default
                    // for the 1- and 4-token tiles) or inside their loop: the same bits.
                    if every_form {
                        set_xq_norm_late(false, false, false);
                        let early = chain(t, mt, true);
                        set_xq_norm_late(true, true, true);
                        let late = chain(t, mt, true);
                        set_xq_norm_late(true, false, true);
                        assert_bits_eq(
                            &format!("deferred norm, squares late vs in the loop, {}", what(t)),
                            &late.c,
                            &early.c,
                        );
                        assert_bits_eq(
                            &format!(
                                "SwiGLU on normed planes, squares late vs in the loop, {}",
                                what(t)
                            ),
                            &late.act,
                            &early.act,
                        );
                        // The epilogue's accumulators copied into a private array first
                        // (`QWGPU_ACC_VARS=0`) or reduced from their own variables: the same bits.
                        set_acc_vars(false, false);
                        let arr = chain(t, mt, true);
                        set_acc_vars(true, true);
                        for (name, a, b) in [
                            ("residual y", &arr.y, &r.y),
                            ("deferred-norm projection", &arr.c, &r.c),
                            ("SwiGLU", &arr.act, &r.act),
                        ] {
                            assert_bits_eq(
                                &format!(
                                    "{name}, accumulators in an array vs variables, {}",
                                    what(t)
                                ),
                                a,
                                b,
                            );
                        }
                        for (name, a, b) in
                            [("residual", &arr.yq, &r.yq), ("SwiGLU", &arr.aq, &r.aq)]
                        {
                            assert_eq!(
                                a,
                                b,
                                "{name} output planes, accumulators in an array vs variables, {}",
                                what(t)
                            );
                        }
                    }
                    // Its planes: xquant's bits for w ∘ y, and the unscaled squares of y.
                    let wy: Vec<f32> = r.y.iter().enumerate().map(|(j, v)| v * nw[j % h]).collect();
                    let qw = xquant_u32(&gpu, &wy, t, h as u32);
                    let qy = xquant_u32(&gpu, &r.y, t, h as u32);
                    for pl in 0..7 {
                        assert_bits_eq(
                            &format!("output planes, plane {pl}, vs xquant of w ∘ y, {}", what(t)),
                            &plane(&r.yq, t, h as u32, pl),
                            &plane(&qw, t, h as u32, pl),
                        );
                    }
                    // Σ (w ∘ y) per word: the compiler may fuse the epilogue's w · y into the sum.
                    let sums = plane(&qw, t, h as u32, 7);
                    let mags: Vec<f32> = wy
                        .chunks(8)
                        .map(|c| c.iter().map(|v| v.abs()).sum())
                        .collect();
                    assert_close(
                        &format!("output planes' sums vs xquant's of w ∘ y, {}", what(t)),
                        &plane(&r.yq, t, h as u32, 7),
                        &sums,
                        &mags,
                        0.0,
                        1e-6,
                    );
                    assert_bits_eq(
                        &format!("output planes' squares vs xquant's of y, {}", what(t)),
                        &plane(&r.yq, t, h as u32, 8),
                        &plane(&qy, t, h as u32, 8),
                    );
                    // The deferred norm: W · RMSNorm(y) against the CPU.
                    let yn = cpu_norm(&r.y, t, h, &nw, eps);
                    let (exact, mag) = c.cpu_matmul(&yn, t);
                    let tol = |q: &Q, mag: &[f32]| -> Vec<f32> {
                        plane_bound(q, &yn, t)
                            .iter()
                            .zip(mag)
                            .map(|(b, m)| 2.0 * b + 2e-5 * m)
                            .collect()
                    };
                    assert_close(
                        &format!("deferred-norm matmul vs W · RMSNorm(y), {}", what(t)),
                        &r.c,
                        &exact,
                        &tol(&c, &mag),
                        1e-5,
                        1.0,
                    );
                    // SwiGLU on the deferred norm, and its planes = xquant's of its output.
                    let (ge, gm) = g.cpu_matmul(&yn, t);
                    let (ue, um) = u.cpu_matmul(&yn, t);
                    let silu = |v: f32| v / (1.0 + (-v).exp());
                    let want: Vec<f32> = ge.iter().zip(&ue).map(|(&a, &b)| silu(a) * b).collect();
                    let (tg, tu) = (tol(&g, &gm), tol(&u, &um));
                    let scale: Vec<f32> = (0..want.len())
                        .map(|j| 1.2 * tg[j] * ue[j].abs() + tu[j] * (ge[j].abs() + 1.0))
                        .collect();
                    assert_close(
                        &format!("SwiGLU on the deferred norm, {}", what(t)),
                        &r.act,
                        &want,
                        &scale,
                        1e-5,
                        1.0,
                    );
                    let qa = xquant_u32(&gpu, &r.act, t, i as u32);
                    let got: Vec<f32> = r.aq.iter().map(|&v| f32::from_bits(v)).collect();
                    let want: Vec<f32> = qa.iter().map(|&v| f32::from_bits(v)).collect();
                    assert_bits_eq(
                        &format!("SwiGLU output planes vs xquant's, {}", what(t)),
                        &got,
                        &want,
                    );
                    // Row 0 of 2 tokens is the 1-token chain, bit for bit.
                    if t == 2 {
                        let wq = |q: &[u32], dim: usize| -> Vec<f32> {
                            q[..q_stride(dim as u32) as usize * 4]
                                .iter()
                                .map(|&v| f32::from_bits(v))
                                .collect()
                        };
                        assert_bits_eq(&format!("chain y row 0, {}", what(t)), &r.y[..h], &one.y);
                        assert_bits_eq(
                            &format!("chain planes row 0, {}", what(t)),
                            &wq(&r.yq, h),
                            &wq(&one.yq, h),
                        );
                        assert_bits_eq(
                            &format!("chain deferred-norm row 0, {}", what(t)),
                            &r.c[..n2],
                            &one.c,
                        );
                        assert_bits_eq(
                            &format!("chain SwiGLU row 0, {}", what(t)),
                            &r.act[..i],
                            &one.act,
                        );
                        assert_bits_eq(
                            &format!("chain SwiGLU planes row 0, {}", what(t)),
                            &wq(&r.aq, i),
                            &wq(&one.aq, i),
                        );
                    }
                }
            }
        }
    }
    set_xq_ksplit(None);
    set_narrow(true);
    set_byte(false);
    set_xq_grid(None);
}

#[test]
fn chained_phases_in_one_dispatch_give_the_bits_of_one_dispatch() {
    // Kernel lab (`lab mmchain`): a matrix's rows as P phases chained in ONE dispatch
    // (`set_xq_chain`: workgroups take tiles from an atomic queue, a tile of phase p waits for
    // every tile of phase p - 1; or over a resident grid with grid barriers) give the bits of
    // the plain dispatch, for grids smaller and larger
    // than the tiles, short and long rows (split over two groups), both decode tiles; and the
    // dispatch's counters are back at zero after a run (a second run of the same dispatch, over
    // a zeroed output, gives the same bits).
    let _turn = SWITCHES.lock().unwrap_or_else(|e| e.into_inner());
    set_xreg(false);
    set_staged(true);
    set_xq(true);
    let gpu = gpu();
    let f = quantized_formats()
        .into_iter()
        .find(|f| matches!(f, WeightFormat::Affine { bits: 4, .. }))
        .unwrap();
    let mut rng = Rng(61);
    for (n, k) in [(3 * 64usize, 1536usize), (3 * 16, 16896)] {
        let q = Q::random(&mut rng, n, k, f);
        let m = Matrix::upload(&gpu, "w", &q.data()).unwrap();
        let x = hard_x(&mut rng, 2 * k);
        for (t, mt) in [(1usize, MT_ONE), (2, MT_SMALL)] {
            qwgpu_engine::ops::matmul::set_xq_chain(None);
            let want = run_matmul(
                &gpu,
                &m,
                MmCall {
                    planes: true,
                    ..MmCall::new(&x[..t * k], t, k, mt)
                },
            );
            // The queue form on grids smaller and larger than the tiles; the barrier form
            // (`set_xq_chain_barrier`: a resident grid, grid-stride tiles, a grid barrier between
            // phases) on one workgroup, the only grid every adapter is sure to hold at once.
            let forms = [
                (1u32, false),
                (2, false),
                (7, false),
                (64, false),
                (1, true),
            ];
            for (g, barrier) in forms {
                qwgpu_engine::ops::matmul::set_xq_chain_barrier(barrier);
                qwgpu_engine::ops::matmul::set_xq_chain(Some((3, g)));
                let xb = upload_f32(&gpu, "x", &x[..t * k]);
                let yb = gpu.storage("y", (t * n * 4) as u64).unwrap();
                let qb = gpu.storage("xq", t as u64 * row_bytes(k as u32)).unwrap();
                let sb = tokens_step(&gpu, t);
                let slot = StepSlot {
                    buf: &sb,
                    offset: 0,
                };
                let conv = pollster::block_on(xquant(
                    &gpu,
                    k as u32,
                    Act::new(&xb, k as u32),
                    None,
                    &qb,
                    t as u32,
                    slot,
                    false,
                ))
                .unwrap();
                let ds = pollster::block_on(matmul_xq_ext(
                    &gpu,
                    &m,
                    &qb,
                    Act::new(&yb, n as u32),
                    slot,
                    MatmulOpts {
                        rows: Rows::Tokens,
                        add: false,
                        mt,
                        swiglu: false,
                    },
                    None,
                    None,
                    None,
                ))
                .unwrap();
                qwgpu_engine::ops::matmul::set_xq_chain(None);
                qwgpu_engine::ops::matmul::set_xq_chain_barrier(false);
                let shape = StepShape {
                    n_tokens: t as u32,
                    n_out: 1,
                    keys: 0,
                };
                run(&gpu, &[conv], shape);
                for pass in 0..2 {
                    gpu.queue.write_buffer(&yb.buf, 0, &vec![0u8; t * n * 4]);
                    run(&gpu, &ds, shape);
                    let got = read_f32(&gpu, &yb, t * n);
                    assert_bits_eq(
                        &format!(
                            "chained phases, grid {g}, barrier {barrier}, run {pass}, n={n} k={k} T={t}"
                        ),
                        &got,
                        &want,
                    );
                }
            }
        }
    }
    qwgpu_engine::ops::matmul::set_xq_chain(None);
}
