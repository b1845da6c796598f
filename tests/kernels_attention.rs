//! attn_prep.wgsl and attention.wgsl against scalar f64 CPU references
//! (tests/support/ref_attention.rs): tiny, odd (Hq 3, Hkv 1) and real 27B head shapes; decode
//! (1 row), verify (2 rows) and prefill (N rows); contexts from 1 key to several thousand (many
//! key chunks); the K/V cache append (and nothing else) in the cache; and bit-exact batch
//! invariance: a row gives the same bits in any row count, any prefill chunking, and on either
//! attention path (key chunks split over workgroups, or all chunks in one workgroup).

use qwgpu_engine::gpu::{
    Dispatch, Gpu, GpuBuffer, GpuError, GpuOptions, Step, StepShape, StepSlot,
};
use qwgpu_engine::ops::attention::{
    attention, attention_combines, attention_fold, attention_folds, attention_scratch_bytes,
    attention_with_scratch, attention_writes_planes, attention_xq, attention_xq_rows, attn_prep,
    combine_counter_bytes, set_attention_group_keys, set_attention_split_heads, split_heads_for,
    AttnDims, PrepFold, ATTN_CK_MIN, ATTN_NS, ATTN_QR,
};
use qwgpu_engine::ops::Act;
use qwgpu_tests::ref_attention::{self as cpu, RefDims};
use qwgpu_tests::*;

// Tolerances: |gpu - cpu| <= ATOL + RTOL * size, `size` from the reference (see each use).
// Observed on lavapipe: at most ~20 % of each bound (attn_prep at pos 1000), mostly under 5 %.
//
// attn_prep, q/k (size = max(|y_i|, |y_pair|), the normed values an output is built from):
// the f32 RMSNorm (a sum of <= 256 squares, inverseSqrt within 2 ulp, two products) is good to a
// few 2^-24 relative, and cos/sin after the kernel's range reduction to ~1e-7 absolute. On top of
// that the rotation inherits the angle error: the reference forms MLX's f32 angle
// f32(pos) * f32(inv_freq) with a correctly rounded inv_freq, the kernel gets inv_freq from exp2
// (an ulp or so in practice; WGSL allows 3 + 2|x| ulp), which moves the angle by up to
// pos * inv_freq * ulps * 2^-23 <= pos * ulps * 2^-23 rad (inv_freq <= 1), i.e. ~1e-4 rad at
// pos 1000: an error that grows with the position.
const PREP_ATOL: f32 = 1e-6;
const PREP_RTOL: f32 = 4e-6;
/// Extra relative error per unit of position: 4 ulp of exp2 (f32::EPSILON = 1 ulp at 1.0).
const PREP_RTOL_PER_POS: f32 = 4.0 * f32::EPSILON;
// attention (size = Σ p_k |v_k| · sigmoid(gate) / Σ p_k, what the weighted sum adds up): f32
// scores (sums of D products, |s| up to ~15 here) are off by ~|s| · 1e-7, which moves each softmax
// weight by as much relative; exp is within 3 + 2|x| ulp (|x| <= ~30 here: ~4e-6 relative); the
// running sums over up to ~3000 keys add a few 2^-24 relative (chunked, random signs).
const ATTN_ATOL: f32 = 1e-6;
const ATTN_RTOL: f32 = 1e-5;
// prep followed by attention against the all-f64 chain: the q/k element errors above (up to
// ~1e-4 relative at pos 1000) enter each score as a sum of D terms of random sign scaled by
// 1/sqrt(D), so scores move by ~1e-5 and the softmax weights by as much relative.
const PIPE_ATOL: f32 = 1e-6;
const PIPE_RTOL: f32 = 1e-4;

#[derive(Clone, Copy, Debug)]
struct Shape {
    name: &'static str,
    hq: u32,
    hkv: u32,
    d: u32,
    rot: u32,
    theta: f32,
}

const TINY: Shape = Shape {
    name: "tiny",
    hq: 2,
    hkv: 1,
    d: 32,
    rot: 8,
    theta: 10000.0,
};
const ODD: Shape = Shape {
    name: "odd",
    hq: 3,
    hkv: 1,
    d: 64,
    rot: 16,
    theta: 1e6,
};
const B27: Shape = Shape {
    name: "27b",
    hq: 24,
    hkv: 4,
    d: 256,
    rot: 64,
    theta: 1e7,
};
const EPS: f32 = 1e-6;

impl Shape {
    fn dims(&self, max_ctx: u32) -> AttnDims {
        AttnDims {
            n_heads: self.hq,
            n_kv_heads: self.hkv,
            head_dim: self.d,
            rotary_dim: self.rot,
            rope_theta: self.theta,
            eps: EPS,
            max_ctx,
            kv_f16: false,
            streams: 0,
        }
    }
    fn rdims(&self) -> RefDims {
        RefDims {
            n_heads: self.hq as usize,
            n_kv_heads: self.hkv as usize,
            head_dim: self.d as usize,
            rotary_dim: self.rot as usize,
            rope_theta: self.theta,
            eps: EPS,
        }
    }
    /// Elements per row of q_out / out.
    fn qw(&self) -> usize {
        (self.hq * self.d) as usize
    }
    /// Elements per cache row.
    fn kvw(&self) -> usize {
        (self.hkv * self.d) as usize
    }
    /// One fused projection row: [4 pad | qg (Hq*2D) | k (Hkv*D) | v (Hkv*D) | 3 pad], so the
    /// kernels see non-zero start columns and a stride that is not a multiple of 4.
    fn layout(&self) -> Layout {
        let qg = 4;
        let k = qg + 2 * self.qw();
        let v = k + self.kvw();
        Layout {
            stride: v + self.kvw() + 3,
            qg,
            k,
            v,
        }
    }
}

#[derive(Clone, Copy)]
struct Layout {
    stride: usize,
    qg: usize,
    k: usize,
    v: usize,
}

/// `v` rounded to f16 (round to nearest even), as f32.
fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// `v` as f16 pairs, the f16 cache layout (`pack2x16float`: the first value in the low half).
fn upload_f16(gpu: &Gpu, label: &str, v: &[f32]) -> GpuBuffer {
    let h: Vec<u16> = v
        .iter()
        .map(|&x| half::f16::from_f32(x).to_bits())
        .collect();
    gpu.storage_init(label, bytemuck::cast_slice(&h)).unwrap()
}

/// One attention layer on the GPU: norm weights and the two caches (f32, or f16 with
/// `d.kv_f16`).
struct Layer {
    s: Shape,
    d: AttnDims,
    lay: Layout,
    qn: GpuBuffer,
    kn: GpuBuffer,
    kc: GpuBuffer,
    vc: GpuBuffer,
    /// Counters of the split pass doing the final pass's work (two rows), kept across calls.
    done: GpuBuffer,
}

impl Layer {
    fn new(
        gpu: &Gpu,
        s: Shape,
        max_ctx: u32,
        q_norm: &[f32],
        k_norm: &[f32],
        k_init: &[f32],
        v_init: &[f32],
    ) -> Layer {
        Layer::with_kv(gpu, s, max_ctx, q_norm, k_norm, k_init, v_init, false)
    }

    /// A layer whose caches hold f16 values with `f16` (`k_init` and `v_init` rounded to f16).
    #[allow(clippy::too_many_arguments)]
    fn with_kv(
        gpu: &Gpu,
        s: Shape,
        max_ctx: u32,
        q_norm: &[f32],
        k_norm: &[f32],
        k_init: &[f32],
        v_init: &[f32],
        f16: bool,
    ) -> Layer {
        assert_eq!(k_init.len(), max_ctx as usize * s.kvw());
        let up = if f16 { upload_f16 } else { upload_f32 };
        Layer {
            s,
            d: AttnDims {
                kv_f16: f16,
                ..s.dims(max_ctx)
            },
            lay: s.layout(),
            qn: upload_f32(gpu, "q_norm", q_norm),
            kn: upload_f32(gpu, "k_norm", k_norm),
            kc: up(gpu, "k_cache", k_init),
            vc: up(gpu, "v_cache", v_init),
            done: gpu
                .storage("done", combine_counter_bytes(&s.dims(max_ctx), 2))
                .unwrap(),
        }
    }

    /// Both caches as f32 (f16 values converted exactly).
    fn caches(&self, gpu: &Gpu) -> (Vec<f32>, Vec<f32>) {
        let n = self.d.max_ctx as usize * self.s.kvw();
        if !self.d.kv_f16 {
            return (read_f32(gpu, &self.kc, n), read_f32(gpu, &self.vc, n));
        }
        let get = |b: &GpuBuffer| -> Vec<f32> {
            read_u32(gpu, b, n / 2)
                .iter()
                .flat_map(|&w| {
                    [w & 0xFFFF, w >> 16].map(|h| half::f16::from_bits(h as u16).to_f32())
                })
                .collect()
        };
        (get(&self.kc), get(&self.vc))
    }

    /// Runs attn_prep (and attention when `attend`) for `t` rows of `proj` ([t, stride]) at
    /// position `pos`, in one compute pass. Returns q_out [t, Hq*D] and out [t, Hq*D].
    fn forward(
        &self,
        gpu: &Gpu,
        proj: &[f32],
        t: usize,
        pos: u32,
        attend: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let (lay, qw) = (self.lay, self.s.qw());
        let pb = upload_f32(gpu, "proj", &proj[..t * lay.stride]);
        let qb = gpu.storage("q_out", (t * qw * 4) as u64).unwrap();
        let ob = gpu.storage("out", (t * qw * 4) as u64).unwrap();
        let sb = rows_at(gpu, t as u32, pos);
        let slot = StepSlot {
            buf: &sb,
            offset: 0,
        };
        let st = lay.stride as u32;
        let mut ds = self.prep(gpu, &pb, &qb, slot);
        if attend {
            ds.extend(
                pollster::block_on(attention(
                    gpu,
                    &self.d,
                    &qb,
                    Act::at(&pb, st, lay.qg as u32),
                    &self.kc,
                    &self.vc,
                    &ob,
                    slot,
                ))
                .unwrap(),
            );
        }
        run(
            gpu,
            &ds,
            StepShape {
                n_tokens: t as u32,
                n_out: 1,
                keys: 0,
            },
        );
        (read_f32(gpu, &qb, t * qw), read_f32(gpu, &ob, t * qw))
    }

    /// attn_prep's dispatch for the projection rows in `pb` (this layer's layout), queries into
    /// `qb`, keys and values into the caches.
    fn prep(&self, gpu: &Gpu, pb: &GpuBuffer, qb: &GpuBuffer, slot: StepSlot<'_>) -> Vec<Dispatch> {
        let (lay, st) = (self.lay, self.lay.stride as u32);
        pollster::block_on(attn_prep(
            gpu,
            &self.d,
            Act::at(pb, st, lay.qg as u32),
            Act::at(pb, st, lay.k as u32),
            Act::at(pb, st, lay.v as u32),
            &self.qn,
            &self.kn,
            qb,
            &self.kc,
            &self.vc,
            slot,
        ))
        .unwrap()
    }

    /// A decode or verify tile's attention (every row a split row) on `t` rows of `proj` at
    /// `pos`, its output also as o_proj's integer planes: attn_prep then attention (`level` 0),
    /// the prep inside the split pass (1: no attn_prep dispatch), or the final pass in it too
    /// (2: the split pass alone). Returns out [t, Hq*D], the planes and the count of dispatches
    /// besides the split pass's (whose one or two forms follow the split-heads knob, which other
    /// tests move meanwhile).
    fn forward_tile(
        &self,
        gpu: &Gpu,
        proj: &[f32],
        t: usize,
        pos: u32,
        level: u32,
    ) -> (Vec<f32>, Vec<u32>, usize) {
        let fold = level >= 1;
        let (lay, qw) = (self.lay, self.s.qw());
        let pb = upload_f32(gpu, "proj", &proj[..t * lay.stride]);
        let qb = gpu.storage("q_out", (t * qw * 4) as u64).unwrap();
        let ob = gpu.storage("out", (t * qw * 4) as u64).unwrap();
        let scratch = gpu
            .storage("scratch", attention_scratch_bytes(&self.d, t as u32))
            .unwrap();
        let row = qwgpu_engine::ops::xquant::row_bytes(qw as u32);
        let xq = gpu.storage("xq", t as u64 * row).unwrap();
        let sb = rows_at(gpu, t as u32, pos);
        let slot = StepSlot {
            buf: &sb,
            offset: 0,
        };
        let st = lay.stride as u32;
        let gate = Act::at(&pb, st, lay.qg as u32);
        assert!(attention_folds(gpu, &self.d, Some(&scratch), t as u32));
        let mut ds: Vec<Dispatch> = Vec::new();
        if !fold {
            ds = self.prep(gpu, &pb, &qb, slot);
        }
        let f = PrepFold {
            k_col: lay.k as u32,
            v_col: lay.v as u32,
            q_norm: &self.qn,
            k_norm: &self.kn,
            rows: t as u32,
            combine: (level >= 2).then_some(&self.done),
        };
        ds.extend(
            pollster::block_on(attention_fold(
                gpu,
                &self.d,
                &qb,
                gate,
                &self.kc,
                &self.vc,
                Some(&scratch),
                &ob,
                Some(&xq),
                1,
                fold.then_some(f),
                slot,
            ))
            .unwrap(),
        );
        run(
            gpu,
            &ds,
            StepShape {
                n_tokens: t as u32,
                n_out: 1,
                keys: pos + 1,
            },
        );
        (
            read_f32(gpu, &ob, t * qw),
            read_u32(gpu, &xq, t * row as usize / 4),
            ds.iter().filter(|d| d.label != "attention.split").count(),
        )
    }

    /// attention alone: queries `q` [t, Hq*D], gates from `proj` ([t, stride], q_proj layout).
    fn attend(&self, gpu: &Gpu, q: &[f32], proj: &[f32], t: usize, pos: u32) -> Vec<f32> {
        let (lay, qw) = (self.lay, self.s.qw());
        let pb = upload_f32(gpu, "proj", &proj[..t * lay.stride]);
        let qb = upload_f32(gpu, "q", &q[..t * qw]);
        let ob = gpu.storage("out", (t * qw * 4) as u64).unwrap();
        let sb = rows_at(gpu, t as u32, pos);
        let slot = StepSlot {
            buf: &sb,
            offset: 0,
        };
        let ds = pollster::block_on(attention(
            gpu,
            &self.d,
            &qb,
            Act::at(&pb, lay.stride as u32, lay.qg as u32),
            &self.kc,
            &self.vc,
            &ob,
            slot,
        ))
        .unwrap();
        run(
            gpu,
            &ds,
            StepShape {
                n_tokens: t as u32,
                n_out: 1,
                keys: 0,
            },
        );
        read_f32(gpu, &ob, t * qw)
    }
}

/// A step buffer for `t` rows at position `pos` (one output row).
fn rows_at(gpu: &Gpu, t: u32, pos: u32) -> GpuBuffer {
    step_buffer(
        gpu,
        Step {
            n_tokens: t,
            pos,
            n_confirmed: 0,
            n_out: 1,
            ..Default::default()
        },
    )
}

fn norm_weights(rng: &mut Rng, d: u32) -> Vec<f32> {
    (0..d).map(|_| 1.0 + 0.3 * rng.uniform()).collect()
}

fn normals(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() * scale).collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn tol_scale(mag: &[f64], rtol: f32, rtol_per_pos: f32, row_w: usize, pos: u32) -> Vec<f32> {
    // assert_close uses atol + rtol * scale; fold the position-dependent part into the scale.
    mag.iter()
        .enumerate()
        .map(|(i, &m)| {
            let p = pos + (i / row_w) as u32;
            m as f32 * (1.0 + rtol_per_pos * p as f32 / rtol)
        })
        .collect()
}

/// A layer with random norm weights whose `max_ctx`-row caches hold `draw`'s values (rounded to
/// f16 for f16 caches), `t` rows of random projections, and attn_prep's f64 reference for them
/// at `pos`.
struct PrepCase {
    layer: Layer,
    k0: Vec<f32>,
    v0: Vec<f32>,
    proj: Vec<f32>,
    want: cpu::PrepOut,
}

#[allow(clippy::too_many_arguments)]
fn prep_case(
    gpu: &Gpu,
    rng: &mut Rng,
    s: Shape,
    max_ctx: u32,
    pos: u32,
    t: usize,
    f16: bool,
    draw: fn(&mut Rng, usize, f32) -> Vec<f32>,
) -> PrepCase {
    let kvw = s.kvw();
    let (qn, kn) = (norm_weights(rng, s.d), norm_weights(rng, s.d));
    let mut k0 = draw(rng, max_ctx as usize * kvw, 1.0);
    let mut v0 = draw(rng, max_ctx as usize * kvw, 1.0);
    if f16 {
        (k0, v0) = (round_f16(&k0), round_f16(&v0));
    }
    let layer = Layer::with_kv(gpu, s, max_ctx, &qn, &kn, &k0, &v0, f16);
    let lay = s.layout();
    let proj = normals(rng, t * lay.stride, 2.0);
    let want = cpu::attn_prep(
        &s.rdims(),
        &proj,
        t,
        lay.stride,
        lay.qg,
        lay.k,
        lay.v,
        &qn,
        &kn,
        pos,
    );
    PrepCase {
        layer,
        k0,
        v0,
        proj,
        want,
    }
}

/// attn_prep for `t` rows at `pos` into caches of random data: q_out and the new cache rows
/// against the reference, every other cache row untouched.
fn check_prep(gpu: &Gpu, rng: &mut Rng, s: Shape, pos: u32, t: usize, f16: bool) {
    let what = format!(
        "attn_prep {} pos {pos} T={t}{} ({})",
        s.name,
        if f16 { " f16 cache" } else { "" },
        gpu.describe()
    );
    let kvw = s.kvw();
    let c = prep_case(gpu, rng, s, pos + t as u32 + 2, pos, t, f16, Rng::vec);
    let (layer, k0, v0, want) = (c.layer, c.k0, c.v0, c.want);
    let (q, _) = layer.forward(gpu, &c.proj, t, pos, false);
    let (kc, vc) = layer.caches(gpu);

    let qs = tol_scale(&want.q_mag, PREP_RTOL, PREP_RTOL_PER_POS, s.qw(), pos);
    assert_close(
        &format!("{what}: q_out"),
        &q,
        &to_f32(&want.q),
        &qs,
        PREP_ATOL,
        PREP_RTOL,
    );
    let (a, b) = (pos as usize * kvw, (pos as usize + t) * kvw);
    // An f16 cache adds the rounding of each value to f16: within one f16 ulp of it (2^-10
    // relative), whichever way the device rounds.
    let f16_rtol = if f16 { 2f32.powi(-10) } else { 0.0 };
    let k_mag = if f16 {
        want.k_mag
            .iter()
            .zip(&want.k)
            .map(|(&m, &k)| m + f16_rtol as f64 / PREP_RTOL as f64 * k.abs())
            .collect()
    } else {
        want.k_mag.clone()
    };
    let ks = tol_scale(&k_mag, PREP_RTOL, PREP_RTOL_PER_POS, kvw, pos);
    assert_close(
        &format!("{what}: new k_cache rows"),
        &kc[a..b],
        &to_f32(&want.k),
        &ks,
        PREP_ATOL,
        PREP_RTOL,
    );
    if f16 {
        let vm: Vec<f32> = want.v.iter().map(|&v| v.abs() as f32).collect();
        assert_close(
            &format!("{what}: new v_cache rows"),
            &vc[a..b],
            &to_f32(&want.v),
            &vm,
            0.0,
            f16_rtol,
        );
    } else {
        assert_bits_eq(
            &format!("{what}: new v_cache rows"),
            &vc[a..b],
            &to_f32(&want.v),
        );
    }
    assert_bits_eq(
        &format!("{what}: k_cache rows before pos"),
        &kc[..a],
        &k0[..a],
    );
    assert_bits_eq(&format!("{what}: k_cache rows after"), &kc[b..], &k0[b..]);
    assert_bits_eq(
        &format!("{what}: v_cache rows before pos"),
        &vc[..a],
        &v0[..a],
    );
    assert_bits_eq(&format!("{what}: v_cache rows after"), &vc[b..], &v0[b..]);
}

#[test]
fn attn_prep_matches_cpu() {
    for gpu in gpu_variants() {
        let mut rng = Rng(11);
        for (s, pos) in [(TINY, 0u32), (TINY, 5), (ODD, 37), (B27, 1000)] {
            for t in [1usize, 2, 7] {
                for f16 in [false, true] {
                    check_prep(&gpu, &mut rng, s, pos, t, f16);
                }
            }
        }
    }
}

/// Attention alone over random caches: row r of a T-row call at `pos` sees keys 0..=pos+r;
/// cache rows past pos+T-1 hold NaN, so a key past the causal limit would show.
fn check_attention(gpu: &Gpu, rng: &mut Rng, s: Shape, ctx: u32, t: usize) {
    check_attention_kv(gpu, rng, s, ctx, t, false)
}

/// [`check_attention`] with f16 caches when `f16` (the reference reads the same f16 values).
fn check_attention_kv(gpu: &Gpu, rng: &mut Rng, s: Shape, ctx: u32, t: usize, f16: bool) {
    let pos = ctx - 1;
    let rows = pos as usize + t;
    let max_ctx = rows as u32 + 3;
    let kvw = s.kvw();
    let mut k0 = normals(rng, max_ctx as usize * kvw, 2.0);
    let mut v0 = normals(rng, max_ctx as usize * kvw, 1.0);
    for x in k0[rows * kvw..]
        .iter_mut()
        .chain(v0[rows * kvw..].iter_mut())
    {
        *x = f32::NAN;
    }
    if f16 {
        (k0, v0) = (round_f16(&k0), round_f16(&v0));
    }
    let w = vec![1f32; s.d as usize];
    let layer = Layer::with_kv(gpu, s, max_ctx, &w, &w, &k0, &v0, f16);
    let lay = s.layout();
    let q = normals(rng, t * s.qw(), 1.5);
    let proj = normals(rng, t * lay.stride, 2.0);
    let got = layer.attend(gpu, &q, &proj, t, pos);
    let (want, mag) = cpu::attention(&s.rdims(), &q, t, &k0, &v0, &proj, lay.stride, lay.qg, pos);
    let mag: Vec<f32> = to_f32(&mag);
    assert_close(
        &format!(
            "attention {} ctx {ctx} T={t}{} ({})",
            s.name,
            if f16 { " f16 cache" } else { "" },
            gpu.describe()
        ),
        &got,
        &to_f32(&want),
        &mag,
        ATTN_ATOL,
        ATTN_RTOL,
    );
}

#[test]
fn attention_matches_cpu() {
    for gpu in gpu_variants() {
        let mut rng = Rng(12);
        for s in [TINY, ODD, B27] {
            for ctx in [1u32, 2, 37, 300] {
                for t in [1usize, 2, 5] {
                    check_attention(&gpu, &mut rng, s, ctx, t);
                }
            }
        }
    }
}

#[test]
fn attention_with_f16_cache_matches_cpu() {
    // f16 caches (`AttnDims::kv_f16`): the kernels read the values the reference reads, on
    // both paths (split for decode and verify rows, one pass for the others), over short and
    // long contexts (chunks beyond CK_MIN).
    for gpu in gpu_variants() {
        let mut rng = Rng(19);
        for s in [TINY, ODD, B27] {
            for ctx in [1u32, 37, 300] {
                for t in [1usize, 2, 5] {
                    check_attention_kv(&gpu, &mut rng, s, ctx, t, true);
                }
            }
        }
        check_attention_kv(&gpu, &mut rng, TINY, ATTN_NS * ATTN_CK_MIN + 900, 3, true);
    }
}

#[test]
fn attention_long_context() {
    // More than 1024 keys (many key blocks, a long online softmax) at a small head shape.
    for gpu in gpu_variants() {
        let mut rng = Rng(13);
        for t in [1usize, 5] {
            check_attention(&gpu, &mut rng, TINY, 1500, t);
        }
        // Past NS * CK_MIN keys the chunks grow beyond CK_MIN.
        check_attention(&gpu, &mut rng, TINY, ATTN_NS * ATTN_CK_MIN + 900, 3);
        check_attention(&gpu, &mut rng, ODD, 1100, 2);
    }
}

/// The whole mixer core as the model records it (one pass: prep, then attention reading the
/// cache rows prep wrote) against the f64 chain. f32 caches: the reference's own cache rows.
/// f16 caches (prep's rounding is checked by attn_prep_matches_cpu): the reference attends over
/// the f16 values the GPU holds after the pass, with its own q.
fn check_prep_then_attention(gpu: &Gpu, rng: &mut Rng, s: Shape, pos: u32, t: usize, f16: bool) {
    let kvw = s.kvw();
    let lay = s.layout();
    let c = prep_case(gpu, rng, s, pos + t as u32, pos, t, f16, normals);
    let (layer, k0, v0, proj, pre) = (c.layer, c.k0, c.v0, c.proj, c.want);
    let (_, out) = layer.forward(gpu, &proj, t, pos, true);
    let a = pos as usize * kvw;
    let (kc, vc): (Vec<f64>, Vec<f64>) = if f16 {
        let (kc, vc) = layer.caches(gpu);
        assert_bits_eq("rows before pos untouched", &kc[..a], &k0[..a]);
        let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
        (wide(kc), wide(vc))
    } else {
        let mut kc: Vec<f64> = k0.iter().map(|&x| x as f64).collect();
        let mut vc: Vec<f64> = v0.iter().map(|&x| x as f64).collect();
        kc[a..a + t * kvw].copy_from_slice(&pre.k);
        vc[a..a + t * kvw].copy_from_slice(&pre.v);
        (kc, vc)
    };
    let (want, mag) = cpu::attention(
        &s.rdims(),
        &pre.q,
        t,
        &kc,
        &vc,
        &proj,
        lay.stride,
        lay.qg,
        pos,
    );
    assert_close(
        &format!(
            "prep+attention {} pos {pos} T={t}{} ({})",
            s.name,
            if f16 { " f16 cache" } else { "" },
            gpu.describe()
        ),
        &out,
        &to_f32(&want),
        &to_f32(&mag),
        PIPE_ATOL,
        PIPE_RTOL,
    );
}

#[test]
fn prep_then_attention_matches_cpu() {
    for gpu in gpu_variants() {
        let mut rng = Rng(14);
        for (s, pos) in [(TINY, 40u32), (ODD, 37), (B27, 1000)] {
            for t in [1usize, 5] {
                check_prep_then_attention(&gpu, &mut rng, s, pos, t, false);
            }
        }
    }
}

#[test]
fn prep_then_attention_with_f16_cache() {
    for gpu in gpu_variants() {
        let mut rng = Rng(20);
        for (s, pos) in [(TINY, 40u32), (B27, 300)] {
            for t in [1usize, 5] {
                check_prep_then_attention(&gpu, &mut rng, s, pos, t, true);
            }
        }
    }
}

#[test]
fn batch_invariance_decode_vs_verify() {
    // Row 0 of a 2-row call (MTP verify) equals a 1-row call (decode) bit for bit: q_out, the
    // cache row it appends, and the attention output.
    for gpu in gpu_variants() {
        let mut rng = Rng(15);
        for (s, pos, f16) in [
            (TINY, 40u32, false),
            (ODD, 37, false),
            (B27, 100, false),
            (TINY, 40, true),
            (B27, 100, true),
        ] {
            let what = format!("{} pos {pos} f16 {f16} ({})", s.name, gpu.describe());
            let max_ctx = pos + 4;
            let kvw = s.kvw();
            let (qn, kn) = (norm_weights(&mut rng, s.d), norm_weights(&mut rng, s.d));
            let k0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
            let v0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
            let lay = s.layout();
            let proj = normals(&mut rng, 2 * lay.stride, 2.0);
            let one = Layer::with_kv(&gpu, s, max_ctx, &qn, &kn, &k0, &v0, f16);
            let (q1, o1) = one.forward(&gpu, &proj, 1, pos, true);
            let (k1, v1) = one.caches(&gpu);
            let two = Layer::with_kv(&gpu, s, max_ctx, &qn, &kn, &k0, &v0, f16);
            let (q2, o2) = two.forward(&gpu, &proj, 2, pos, true);
            let (k2, v2) = two.caches(&gpu);
            let (qw, end) = (s.qw(), (pos as usize + 1) * kvw);
            assert_bits_eq(
                &format!("{what}: q_out T=1 vs row 0 of T=2"),
                &q1,
                &q2[..qw],
            );
            assert_bits_eq(&format!("{what}: out T=1 vs row 0 of T=2"), &o1, &o2[..qw]);
            assert_bits_eq(
                &format!("{what}: k_cache rows 0..=pos"),
                &k1[..end],
                &k2[..end],
            );
            assert_bits_eq(
                &format!("{what}: v_cache rows 0..=pos"),
                &v1[..end],
                &v2[..end],
            );
        }
    }
}

#[test]
fn batch_invariance_chunked_prefill() {
    // A 9-row prompt in one call equals the same prompt as 4 + 5 rows (second call at pos + 4),
    // bit for bit in q_out, out and both caches; starting positions put the chunk boundary and
    // the rows around key-block edges (32 keys per block).
    for gpu in gpu_variants() {
        let mut rng = Rng(16);
        for (s, p0, f16) in [
            (TINY, 0u32, false),
            (TINY, 30, false),
            (ODD, 3, false),
            (B27, 60, false),
            (TINY, 30, true),
            (B27, 60, true),
        ] {
            let what = format!("{} from pos {p0} f16 {f16} ({})", s.name, gpu.describe());
            let max_ctx = p0 + 12;
            let kvw = s.kvw();
            let (qn, kn) = (norm_weights(&mut rng, s.d), norm_weights(&mut rng, s.d));
            let mut k0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
            let mut v0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
            for x in k0[p0 as usize * kvw..]
                .iter_mut()
                .chain(v0[p0 as usize * kvw..].iter_mut())
            {
                *x = 0.0;
            }
            let lay = s.layout();
            let proj = normals(&mut rng, 9 * lay.stride, 2.0);
            let whole = Layer::with_kv(&gpu, s, max_ctx, &qn, &kn, &k0, &v0, f16);
            let (qa, oa) = whole.forward(&gpu, &proj, 9, p0, true);
            let (ka, va) = whole.caches(&gpu);
            let split = Layer::with_kv(&gpu, s, max_ctx, &qn, &kn, &k0, &v0, f16);
            let (mut qb, mut ob) = split.forward(&gpu, &proj, 4, p0, true);
            let (qb2, ob2) = split.forward(&gpu, &proj[4 * lay.stride..], 5, p0 + 4, true);
            qb.extend(qb2);
            ob.extend(ob2);
            let (kb, vb) = split.caches(&gpu);
            assert_bits_eq(&format!("{what}: q_out 9 vs 4+5"), &qa, &qb);
            assert_bits_eq(&format!("{what}: out 9 vs 4+5"), &oa, &ob);
            assert_bits_eq(&format!("{what}: k_cache 9 vs 4+5"), &ka, &kb);
            assert_bits_eq(&format!("{what}: v_cache 9 vs 4+5"), &va, &vb);
        }
    }
}

/// attention over `t` rows at `pos` with `split_rows` rows on the split path (0: none).
fn attend_split(
    gpu: &Gpu,
    layer: &Layer,
    q: &[f32],
    proj: &[f32],
    t: usize,
    pos: u32,
    split_rows: u32,
) -> Vec<f32> {
    attend(gpu, layer, q, proj, t, pos, split_rows, false, 1).0
}

/// attention over `t` rows at `pos` with `split_rows` rows on the split path (0: none), with
/// `planes` the output also as integer planes into a buffer of 2 rows (returned as u32), and up
/// to `rows` query rows per workgroup of the final pass.
#[allow(clippy::too_many_arguments)]
fn attend(
    gpu: &Gpu,
    layer: &Layer,
    q: &[f32],
    proj: &[f32],
    t: usize,
    pos: u32,
    split_rows: u32,
    planes: bool,
    rows: u32,
) -> (Vec<f32>, Option<Vec<u32>>) {
    let (lay, qw) = (layer.lay, layer.s.qw());
    let pb = upload_f32(gpu, "proj", &proj[..t * lay.stride]);
    let qb = upload_f32(gpu, "q", &q[..t * qw]);
    let ob = gpu.storage("out", (t * qw * 4) as u64).unwrap();
    let row = qwgpu_engine::ops::xquant::row_bytes(qw as u32);
    let xq = gpu.storage("xq", 2 * row).unwrap();
    let scratch = gpu
        .storage(
            "scratch",
            attention_scratch_bytes(&layer.d, split_rows.max(1)),
        )
        .unwrap();
    let sb = rows_at(gpu, t as u32, pos);
    let slot = StepSlot {
        buf: &sb,
        offset: 0,
    };
    let gate = Act::at(&pb, lay.stride as u32, lay.qg as u32);
    let sc = if split_rows > 0 { Some(&scratch) } else { None };
    let ds = if rows > 1 {
        pollster::block_on(attention_xq_rows(
            gpu,
            &layer.d,
            &qb,
            gate,
            &layer.kc,
            &layer.vc,
            sc,
            &ob,
            planes.then_some(&xq),
            rows,
            slot,
        ))
    } else if planes {
        pollster::block_on(attention_xq(
            gpu,
            &layer.d,
            &qb,
            gate,
            &layer.kc,
            &layer.vc,
            sc,
            &ob,
            Some(&xq),
            slot,
        ))
    } else {
        pollster::block_on(attention_with_scratch(
            gpu, &layer.d, &qb, gate, &layer.kc, &layer.vc, sc, &ob, slot,
        ))
    }
    .unwrap();
    // The split pass in one or two forms (one workgroup per head, a GQA group per workgroup),
    // then the final pass; the step's key count picks the split form.
    if split_rows > 0 {
        assert!((2..=3).contains(&ds.len()), "{} dispatches", ds.len());
    } else {
        assert_eq!(ds.len(), 1);
    }
    run(
        gpu,
        &ds,
        StepShape {
            n_tokens: t as u32,
            n_out: 1,
            keys: pos + 1,
        },
    );
    (
        read_f32(gpu, &ob, t * qw),
        planes.then(|| read_u32(gpu, &xq, 2 * row as usize / 4)),
    )
}

#[test]
fn prep_folded_into_the_split_pass_gives_the_bits_of_attn_prep() {
    // Decode (1 row) and verify (2 rows) tiles fold attn_prep into attention's split pass: each
    // workgroup normalizes and rotates its query heads, and those whose key chunk holds a new
    // row write its key and value into the caches first. The output and both whole caches must
    // have the bits of attn_prep + attention, in both forms of the split pass (a head or a GQA
    // group per workgroup), with f32 and f16 caches, at positions where the new rows sit at the
    // start, inside, and across the boundary of a chunk (CK_MIN keys, or longer ones).
    let ck = ATTN_CK_MIN;
    let long = ATTN_NS * ck + 3 * ck;
    let mut combined = false;
    for gpu in gpu_variants() {
        combined |= attention_combines(&gpu);
        let mut rng = Rng(31);
        for (s, pos, f16) in [
            (TINY, 0u32, false),
            (TINY, ck - 1, false),
            (TINY, ck, false),
            (ODD, 2 * ck - 1, false),
            (B27, 300, false),
            (TINY, long, false),
            (B27, ck - 1, true),
            (TINY, long - 1, true),
        ] {
            for t in [1usize, 2] {
                let max_ctx = pos + t as u32 + 1;
                let kvw = s.kvw();
                let (qn, kn) = (norm_weights(&mut rng, s.d), norm_weights(&mut rng, s.d));
                let k0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
                let v0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
                let proj = normals(&mut rng, t * s.layout().stride, 2.0);
                for most in [1u32, 8] {
                    set_attention_split_heads(Some(most));
                    set_attention_group_keys(Some(if most > 1 { 1 } else { u32::MAX }));
                    let what = format!(
                        "{} pos {pos} T={t} f16 {f16}, up to {most} heads per split workgroup ({})",
                        s.name,
                        gpu.describe()
                    );
                    let sep = Layer::with_kv(&gpu, s, max_ctx, &qn, &kn, &k0, &v0, f16);
                    let (oa, pa, na) = sep.forward_tile(&gpu, &proj, t, pos, 0);
                    let (ka, va) = sep.caches(&gpu);
                    let levels = if attention_combines(&gpu) { 2 } else { 1 };
                    for level in 1..=levels {
                        let fold = Layer::with_kv(&gpu, s, max_ctx, &qn, &kn, &k0, &v0, f16);
                        let (ob, pb, nb) = fold.forward_tile(&gpu, &proj, t, pos, level);
                        let what = format!("{what}, fold level {level}");
                        assert_eq!(
                            nb + level as usize,
                            na,
                            "{what}: dispatches besides the split pass"
                        );
                        assert_bits_eq(&format!("{what}: out"), &ob, &oa);
                        assert_eq!(pb, pa, "{what}: o_proj's planes");
                        let (kb, vb) = fold.caches(&gpu);
                        assert_bits_eq(&format!("{what}: k_cache"), &kb, &ka);
                        assert_bits_eq(&format!("{what}: v_cache"), &vb, &va);
                        // A second call on the same counters (the split pass leaves them zero;
                        // rewriting the same rows of the caches): the same bits again.
                        if level == 2 {
                            let (oc, _, _) = fold.forward_tile(&gpu, &proj, t, pos, level);
                            assert_bits_eq(&format!("{what}: out, again"), &oc, &oa);
                        }
                    }
                    set_attention_split_heads(None);
                    set_attention_group_keys(None);
                }
            }
        }
    }
    // (Vulkan adapters, lavapipe included, do the final pass in the split pass too.)
    assert!(
        combined,
        "no adapter folded the final pass into the split pass"
    );
    // A fold for more rows than the scratch splits (the final pass would read queries nobody
    // wrote) is refused with an error naming it, not recorded.
    let gpu = &gpu_variants()[0];
    let s = TINY;
    let max_ctx = 8;
    let w = vec![1f32; s.d as usize];
    let z = vec![0f32; max_ctx as usize * s.kvw()];
    let layer = Layer::with_kv(gpu, s, max_ctx, &w, &w, &z, &z, false);
    let lay = layer.lay;
    let pb = upload_f32(gpu, "proj", &vec![0.5f32; 3 * lay.stride]);
    let qb = gpu.storage("q", (3 * s.qw() * 4) as u64).unwrap();
    let ob = gpu.storage("out", (3 * s.qw() * 4) as u64).unwrap();
    let scratch = gpu
        .storage("scratch", attention_scratch_bytes(&layer.d, 2))
        .unwrap();
    let sb = step_buffer(gpu, Step::default());
    let r = pollster::block_on(attention_fold(
        gpu,
        &layer.d,
        &qb,
        Act::at(&pb, lay.stride as u32, lay.qg as u32),
        &layer.kc,
        &layer.vc,
        Some(&scratch),
        &ob,
        None,
        1,
        Some(PrepFold {
            k_col: lay.k as u32,
            v_col: lay.v as u32,
            q_norm: &layer.qn,
            k_norm: &layer.kn,
            rows: 3,
            combine: None,
        }),
        StepSlot {
            buf: &sb,
            offset: 0,
        },
    ));
    match r {
        Err(e) => assert!(
            e.to_string().contains("cannot be folded") && e.to_string().contains("3 rows"),
            "{e}"
        ),
        Ok(_) => panic!("a fold for 3 rows over a 2-row scratch was recorded"),
    }
}

#[test]
fn split_and_fused_paths_agree_bit_exact() {
    // Rows whose key chunks are spread over workgroups (the scratch path decode and verify use)
    // give the same bits as rows that compute all chunks in one workgroup, for key counts around
    // chunk boundaries (1 chunk, CK_MIN ± 1, many chunks, chunks longer than CK_MIN).
    let ck = ATTN_CK_MIN;
    let big = ATTN_NS * ck;
    for gpu in gpu_variants() {
        let mut rng = Rng(18);
        for (s, pos, f16) in [
            (TINY, 0u32, false),
            (TINY, ck - 3, false),
            (TINY, 2 * ck - 2, false),
            (TINY, big - 3, false),
            (TINY, big + 2 * ck, false),
            (ODD, 300, false),
            (B27, 300, false),
            (TINY, big + 2 * ck, true),
            (B27, 300, true),
        ] {
            let t = 6;
            let max_ctx = pos + t as u32;
            let kvw = s.kvw();
            let k0 = normals(&mut rng, max_ctx as usize * kvw, 2.0);
            let v0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
            let w = vec![1f32; s.d as usize];
            let layer = Layer::with_kv(&gpu, s, max_ctx, &w, &w, &k0, &v0, f16);
            let q = normals(&mut rng, t * s.qw(), 1.5);
            let proj = normals(&mut rng, t * layer.lay.stride, 2.0);
            let fused = attend_split(&gpu, &layer, &q, &proj, t, pos, 0);
            // The split pass with each head in its own workgroup, and with the heads of a GQA
            // group sharing one (every divisor of the group size; 8: the largest allowed).
            let group = s.hq / s.hkv;
            for most in [1u32, 2, 3, 6, 8] {
                let hg = split_heads_for(&gpu, &layer.d, most);
                assert!(group % hg == 0 && hg <= most);
                // From the first key on (the grouped form is otherwise taken at long contexts
                // only).
                set_attention_split_heads(Some(most));
                set_attention_group_keys(Some(1));
                let split = attend_split(&gpu, &layer, &q, &proj, t, pos, t as u32);
                let part = attend_split(&gpu, &layer, &q, &proj, t, pos, 3);
                set_attention_split_heads(None);
                set_attention_group_keys(None);
                let what = format!(
                    "{} pos {pos} f16 {f16}, {hg} heads per split workgroup ({})",
                    s.name,
                    gpu.describe()
                );
                assert_bits_eq(&format!("{what}: split vs fused"), &split, &fused);
                assert_bits_eq(&format!("{what}: 3 split rows vs fused"), &part, &fused);
            }
        }
    }
}

#[test]
fn query_row_groups_give_the_bits_of_one_row() {
    // The final pass with several query rows per workgroup (prompt chunks: each block of keys read
    // once for the group) gives every row the bits of one row per workgroup: groups that share
    // one chunk length, a last partial group, groups over the split rows (decode partials), rows
    // where the chunk length changes inside a group (beyond ATTN_NS · CK_MIN keys), one chunk,
    // chunk boundaries inside a group; with and without the output planes.
    let ck = ATTN_CK_MIN;
    let big = ATTN_NS * ck;
    for gpu in gpu_variants() {
        let mut rng = Rng(29);
        for (s, pos, t, split) in [
            (TINY, 0u32, 9usize, 0u32),
            (TINY, ck - 5, 11, 2),
            (TINY, 2 * ck - 2, 7, 0),
            (TINY, big - 3, 10, 0),
            (TINY, big + ck - 4, 9, 3),
            (ODD, 300, 13, 0),
            (B27, 130, 8, 2),
        ] {
            let max_ctx = pos + t as u32;
            let kvw = s.kvw();
            let k0 = normals(&mut rng, max_ctx as usize * kvw, 2.0);
            let v0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
            let w = vec![1f32; s.d as usize];
            let layer = Layer::new(&gpu, s, max_ctx, &w, &w, &k0, &v0);
            let q = normals(&mut rng, t * s.qw(), 1.5);
            let proj = normals(&mut rng, t * layer.lay.stride, 2.0);
            // (Planes only on the short contexts: the long ones are slow on CPU adapters.)
            let plane_cases: &[bool] = if pos < 400 { &[false, true] } else { &[false] };
            for &planes in plane_cases {
                let one = attend(&gpu, &layer, &q, &proj, t, pos, split, planes, 1);
                assert!(one.0.iter().all(|v| v.is_finite()));
                for rows in [3u32, ATTN_QR] {
                    let what = format!(
                        "{} pos {pos} t {t} split {split} planes {planes}, {rows} rows per group ({})",
                        s.name,
                        gpu.describe()
                    );
                    let got = attend(&gpu, &layer, &q, &proj, t, pos, split, planes, rows);
                    assert_bits_eq(&format!("{what}: output"), &got.0, &one.0);
                    assert_eq!(got.1, one.1, "{what}: planes");
                }
            }
        }
    }
}

#[test]
fn output_planes_are_xquants() {
    // With the output's integer planes written by the attention kernel (o_proj's input), the
    // output is unchanged and the planes are an xquant dispatch's on it (the code planes, scales
    // and sums bit for bit; the squares within rounding), for the rows the plane buffer holds.
    for gpu in gpu_variants() {
        let mut rng = Rng(19);
        for (s, pos, t) in [
            (TINY, 5u32, 2usize),
            (ODD, 40, 2),
            (B27, 300, 2),
            (TINY, 9, 3),
        ] {
            let max_ctx = pos + t as u32;
            let kvw = s.kvw();
            let k0 = normals(&mut rng, max_ctx as usize * kvw, 2.0);
            let v0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
            let w = vec![1f32; s.d as usize];
            let layer = Layer::new(&gpu, s, max_ctx, &w, &w, &k0, &v0);
            assert!(attention_writes_planes(&gpu, &layer.d));
            let q = normals(&mut rng, t * s.qw(), 1.5);
            let proj = normals(&mut rng, t * layer.lay.stride, 2.0);
            let what = format!("{} pos {pos} T={t} ({})", s.name, gpu.describe());
            let (out, planes) = attend(&gpu, &layer, &q, &proj, t, pos, t as u32, true, 1);
            let planes = planes.unwrap();
            let plain = attend_split(&gpu, &layer, &q, &proj, t, pos, t as u32);
            assert_bits_eq(
                &format!("{what}: output with planes vs without"),
                &out,
                &plain,
            );
            // xquant on the output rows the plane buffer holds.
            let qw = s.qw() as u32;
            let rows = t.min(2);
            let xb = upload_f32(&gpu, "x", &out[..rows * s.qw()]);
            let qb = gpu
                .storage("xq", rows as u64 * qwgpu_engine::ops::xquant::row_bytes(qw))
                .unwrap();
            let sb = tokens_step(&gpu, rows);
            let slot = StepSlot {
                buf: &sb,
                offset: 0,
            };
            let d = pollster::block_on(qwgpu_engine::ops::xquant::xquant(
                &gpu,
                qw,
                Act::new(&xb, qw),
                None,
                &qb,
                rows as u32,
                slot,
                false,
            ))
            .unwrap();
            run(
                &gpu,
                &[d],
                StepShape {
                    n_tokens: rows as u32,
                    n_out: 1,
                    keys: 0,
                },
            );
            let row_u32 = qwgpu_engine::ops::xquant::q_stride(qw) as usize * 4;
            let want = read_u32(&gpu, &qb, rows * row_u32);
            let words = qw as usize / 8;
            for r in 0..rows {
                for pl in 0..9 {
                    let at = |v: &[u32]| -> Vec<f32> {
                        v[r * row_u32 + pl * words..r * row_u32 + (pl + 1) * words]
                            .iter()
                            .map(|&u| f32::from_bits(u))
                            .collect()
                    };
                    if pl < 8 {
                        assert_bits_eq(
                            &format!("{what}: row {r} plane {pl} vs xquant"),
                            &at(&planes),
                            &at(&want),
                        );
                    } else {
                        let w = at(&want);
                        assert_close(
                            &format!("{what}: row {r} squares vs xquant"),
                            &at(&planes),
                            &w,
                            &w,
                            0.0,
                            1e-6,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn unchecked_shaders_match_cpu() {
    // The release configuration: wgpu's runtime bounds checks off, so only the kernels' own
    // guards keep every access in bounds (odd head counts, offsets, rows at the end of the cache).
    let gpu = gpu_with(GpuOptions {
        shader_checks: Some(false),
        ..Default::default()
    });
    let mut rng = Rng(17);
    for (s, pos) in [(ODD, 37u32), (B27, 300)] {
        check_prep(&gpu, &mut rng, s, pos, 5, false);
    }
    for (s, ctx) in [(ODD, 37u32), (B27, 300), (TINY, 1100)] {
        check_attention(&gpu, &mut rng, s, ctx, 5);
    }
}

#[test]
fn rejects_unsupported_shapes() {
    let gpu = gpu();
    let b = gpu.storage("b", 1 << 20).unwrap();
    let sb = rows_at(&gpu, 1, 0);
    let slot = StepSlot {
        buf: &sb,
        offset: 0,
    };
    let ok = TINY.dims(16);
    for bad in [
        AttnDims {
            head_dim: 260,
            rotary_dim: 64,
            ..ok
        },
        AttnDims {
            head_dim: 30,
            rotary_dim: 8,
            ..ok
        },
        AttnDims {
            n_heads: 3,
            n_kv_heads: 2,
            ..ok
        },
        AttnDims {
            rotary_dim: 40,
            ..ok
        },
        AttnDims {
            rotary_dim: 7,
            ..ok
        },
    ] {
        let r = pollster::block_on(attention(
            &gpu,
            &bad,
            &b,
            Act::new(&b, 128),
            &b,
            &b,
            &b,
            slot,
        ));
        assert!(r.is_err(), "attention accepted {bad:?}");
        let r = pollster::block_on(attn_prep(
            &gpu,
            &bad,
            Act::new(&b, 128),
            Act::new(&b, 128),
            Act::new(&b, 128),
            &b,
            &b,
            &b,
            &b,
            &b,
            slot,
        ));
        assert!(r.is_err(), "attn_prep accepted {bad:?}");
    }
    // A cache that cannot fit one storage binding.
    let huge = AttnDims {
        max_ctx: 1 << 30,
        ..ok
    };
    let r = pollster::block_on(attention(
        &gpu,
        &huge,
        &b,
        Act::new(&b, 128),
        &b,
        &b,
        &b,
        slot,
    ));
    assert!(
        matches!(r, Err(GpuError::TooLarge { .. })),
        "attention accepted a cache over the binding limit"
    );
    // A cache too small for max_ctx.
    let small = gpu.storage("small", 64).unwrap();
    assert!(pollster::block_on(attention(
        &gpu,
        &ok,
        &b,
        Act::new(&b, 128),
        &small,
        &b,
        &b,
        slot
    ))
    .is_err());
}

#[test]
#[ignore = "timing on a real GPU: cargo test --test kernels_attention -- --ignored bench --nocapture"]
fn bench_attention_27b() {
    // Wall time per call of attention (and attn_prep) at the 27B head shapes, averaged over many
    // calls recorded in one pass. A benchmark, not a check.
    let gpu = gpu_with(GpuOptions {
        shader_checks: Some(false),
        ..Default::default()
    });
    println!("device: {}", gpu.describe());
    let s = B27;
    let max_ctx = 32768u32;
    let kvw = s.kvw();
    let mut rng = Rng(99);
    let k0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
    let v0 = normals(&mut rng, max_ctx as usize * kvw, 1.0);
    let w = vec![1f32; s.d as usize];
    let layer = Layer::new(&gpu, s, max_ctx, &w, &w, &k0, &v0);
    let lay = s.layout();
    let max_t = 512usize;
    let proj = normals(&mut rng, max_t * lay.stride, 1.0);
    let pb = upload_f32(&gpu, "proj", &proj);
    let qb = upload_f32(&gpu, "q", &normals(&mut rng, max_t * s.qw(), 1.0));
    let ob = gpu.storage("out", (max_t * s.qw() * 4) as u64).unwrap();
    let st = lay.stride as u32;
    let time = |t: usize, pos: u32, prep: bool, reps: usize| -> f64 {
        let sb = rows_at(&gpu, t as u32, pos);
        let slot = StepSlot {
            buf: &sb,
            offset: 0,
        };
        let mut ds = if prep {
            pollster::block_on(attn_prep(
                &gpu,
                &layer.d,
                Act::at(&pb, st, lay.qg as u32),
                Act::at(&pb, st, lay.k as u32),
                Act::at(&pb, st, lay.v as u32),
                &layer.qn,
                &layer.kn,
                &qb,
                &layer.kc,
                &layer.vc,
                slot,
            ))
            .unwrap()
        } else {
            vec![]
        };
        ds.extend(
            pollster::block_on(attention(
                &gpu,
                &layer.d,
                &qb,
                Act::at(&pb, st, lay.qg as u32),
                &layer.kc,
                &layer.vc,
                &ob,
                slot,
            ))
            .unwrap(),
        );
        let shape = StepShape {
            n_tokens: t as u32,
            n_out: 1,
            keys: 0,
        };
        let go = |n: usize| {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                for _ in 0..n {
                    for d in &ds {
                        d.record(&mut pass, shape, gpu.caps.max_workgroups_per_dim);
                    }
                }
            }
            gpu.queue.submit([enc.finish()]);
            gpu.wait();
        };
        go(2);
        let t0 = std::time::Instant::now();
        go(reps);
        t0.elapsed().as_secs_f64() / reps as f64 * 1e6
    };
    for ctx in [1024u32, 4096, 16384, 32768] {
        for t in [1usize, 2] {
            let us = time(t, ctx - t as u32, false, 50);
            let bytes = 2.0 * ctx as f64 * kvw as f64 * 4.0;
            println!(
                "attention decode ctx {ctx:6} T={t}: {us:9.1} us  (K+V {:.1} MB, {:.0} GB/s)",
                bytes / 1e6,
                bytes / us / 1e3
            );
        }
    }
    println!(
        "attn_prep T=1: {:.1} us",
        time(1, 1000, true, 200) - time(1, 1000, false, 200)
    );
    for (t, pos) in [(512usize, 0u32), (512, 4096)] {
        let us = time(t, pos, false, 5);
        println!("attention prefill T={t} from pos {pos}: {:.1} ms", us / 1e3);
    }
}
