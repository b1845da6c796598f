//! The Gated-DeltaNet kernels (gdn_conv, gdn_prep, gdn_recurrence, gated_norm) against scalar CPU
//! references: tiny / odd / real 27B shapes, 1, 2 and 7 rows, from a zero and from a random state,
//! both reduction variants; the rollback snapshots (spec §7.4); and bit-exact batch invariance
//! (row 0 of a 2-row call equals a 1-row call; 9 rows in one call equal 4 + 5 rows in two calls);
//! and the fused gdn_conv_prep against gdn_conv + gdn_prep, the gated recurrence against
//! gdn_recurrence + gated_norm, and the fused recurrence with a head over several workgroups
//! against one workgroup per head, bit for bit.

use qwgpu_engine::gpu::{Gpu, GpuBuffer, Step, StepShape, StepSlot};
use qwgpu_engine::ops::gdn::{
    gated_norm, gated_recurrence_layout, gdn_conv, gdn_conv_prep, gdn_prep, gdn_recurrence,
    gdn_recurrence_fused, gdn_recurrence_gated, qk_norm_constants, recurrence_layout,
    set_split_recurrence, split_recurrence, GdnDims,
};
use qwgpu_engine::ops::Act;
use qwgpu_tests::*;

/// Conv: a K-term f32 sum (error ≲ K·eps of Σ|x·w|) then silu with an f32 exp (a few ulp).
const CONV_RTOL: f32 = 4e-6;
const CONV_ATOL: f32 = 1e-6;
/// RMS-style norms: an f32 sum of ≤ 128 squares (≲ 128·eps relative) and inverseSqrt (a few ulp),
/// relative to the head's scale (normalized values have rms = scale).
const NORM_RTOL: f32 = 2e-5;
/// Gates in (0, 1): f32 exp / log / sigmoid, a few ulp each, amplified by at most exp(A_log) ≤ 5.
const GATE_ATOL: f32 = 4e-6;
/// Recurrence: two Dk-term f32 dot products per step, over ≤ 7 steps that feed back through the
/// state; relative to the largest |value| of the head (per row for y).
const REC_RTOL: f32 = 3e-5;

fn shapes() -> Vec<(&'static str, GdnDims)> {
    let d = |hk, hv, dk, dv| GdnDims {
        n_k_heads: hk,
        n_v_heads: hv,
        k_head_dim: dk,
        v_head_dim: dv,
        conv_kernel: 4,
        eps: 1e-6,
        streams: 0,
    };
    vec![
        ("tiny", d(1, 2, 32, 32)),
        ("odd", d(2, 6, 32, 64)),
        ("27B", d(16, 48, 128, 128)),
    ]
}

/// Rows of the fused projection output [T, pad | qkv | z | b | a | pad].
#[derive(Clone, Copy)]
struct Proj {
    qkv: usize,
    z: usize,
    b: usize,
    a: usize,
    stride: usize,
}

impl Proj {
    fn new(d: &GdnDims, pad: usize) -> Proj {
        let qkv = pad;
        let z = qkv + d.conv_dim() as usize;
        let b = z + d.value_dim() as usize;
        let a = b + d.n_v_heads as usize;
        Proj {
            qkv,
            z,
            b,
            a,
            stride: a + d.n_v_heads as usize + pad,
        }
    }
}

/// The weights of one layer (host copies).
struct Weights {
    conv_w: Vec<f32>,
    a_log: Vec<f32>,
    dt_bias: Vec<f32>,
    norm_w: Vec<f32>,
}

fn weights(rng: &mut Rng, d: &GdnDims) -> Weights {
    let hv = d.n_v_heads as usize;
    Weights {
        conv_w: rng.vec(d.conv_dim() as usize * d.conv_kernel as usize, 0.6),
        // A = exp(A_log) in [0.02, 4.5]: decays from ~0.99 down to ~0.01 per step.
        a_log: (0..hv).map(|_| -1.25 + 2.75 * rng.uniform()).collect(),
        dt_bias: rng.vec(hv, 1.0),
        norm_w: (0..d.v_head_dim)
            .map(|_| 1.0 + 0.3 * rng.uniform())
            .collect(),
    }
}

/// Projection rows: qkv ~ 2·U(-1, 1), z ~ 3·U, b ~ 3·U, a ~ 2·U - 1 (pads hold junk too).
fn proj_rows(rng: &mut Rng, d: &GdnDims, p: &Proj, t: usize) -> Vec<f32> {
    let mut v = rng.vec(t * p.stride, 2.0);
    for r in 0..t {
        for c in p.z..p.a {
            v[r * p.stride + c] *= 1.5;
        }
        for c in p.a..p.a + d.n_v_heads as usize {
            v[r * p.stride + c] -= 1.0;
        }
    }
    v
}

/// Raw conv rows as the conv epilogue leaves them: silu of 2·N(0, 1).
fn silu_rows(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let x = 2.0 * rng.normal();
            x / (1.0 + (-x).exp())
        })
        .collect()
}

fn step_for(gpu: &Gpu, t: usize, nc: usize) -> GpuBuffer {
    step_rb(gpu, t, nc, false)
}

fn step_rb(gpu: &Gpu, t: usize, nc: usize, rollback: bool) -> GpuBuffer {
    step_buffer(
        gpu,
        Step {
            n_tokens: t as u32,
            pos: 0,
            n_confirmed: nc as u32,
            n_out: 1,
            force: 0,
            rollback: rollback as u32,
            ..Default::default()
        },
    )
}

fn slot(b: &GpuBuffer) -> StepSlot<'_> {
    StepSlot { buf: b, offset: 0 }
}

fn shape(t: usize) -> StepShape {
    StepShape {
        n_tokens: t as u32,
        n_out: 1,
        keys: 0,
    }
}

fn zeros(gpu: &Gpu, label: &str, n: usize) -> GpuBuffer {
    gpu.storage(label, (n * 4) as u64).unwrap()
}

/// A per-element scale: the largest |want| of each consecutive group of `group` elements.
fn group_max(want: &[f32], group: usize) -> Vec<f32> {
    want.chunks(group)
        .flat_map(|c| {
            let m = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            std::iter::repeat_n(m, c.len())
        })
        .collect()
}

/// A layer's weights and states on the GPU.
struct GpuLayer {
    conv_w: GpuBuffer,
    a_log: GpuBuffer,
    dt_bias: GpuBuffer,
    norm_w: GpuBuffer,
    conv_state: GpuBuffer,
    conv_snap: GpuBuffer,
    state: GpuBuffer,
    snap: GpuBuffer,
}

impl GpuLayer {
    fn new(gpu: &Gpu, d: &GdnDims, w: &Weights, conv_state: &[f32], state: &[f32]) -> GpuLayer {
        let sentinel_c = vec![-7.25f32; d.conv_state_len() as usize];
        let sentinel_s = vec![-7.25f32; d.state_len() as usize];
        GpuLayer {
            conv_w: upload_f32(gpu, "conv_w", &w.conv_w),
            a_log: upload_f32(gpu, "a_log", &w.a_log),
            dt_bias: upload_f32(gpu, "dt_bias", &w.dt_bias),
            norm_w: upload_f32(gpu, "norm_w", &w.norm_w),
            conv_state: upload_f32(gpu, "conv_state", conv_state),
            conv_snap: upload_f32(gpu, "conv_snap", &sentinel_c),
            state: upload_f32(gpu, "state", state),
            snap: upload_f32(gpu, "snap", &sentinel_s),
        }
    }
    fn read_states(&self, gpu: &Gpu, d: &GdnDims) -> [Vec<f32>; 4] {
        let (c, s) = (d.conv_state_len() as usize, d.state_len() as usize);
        [
            read_f32(gpu, &self.conv_state, c),
            read_f32(gpu, &self.conv_snap, c),
            read_f32(gpu, &self.state, s),
            read_f32(gpu, &self.snap, s),
        ]
    }
}

/// Outputs of one forward call of the whole chain.
struct Outs {
    /// After conv + silu + q/k normalization: [T, conv_dim].
    conv_out: Vec<f32>,
    gates: Vec<f32>,
    y: Vec<f32>,
    out: Vec<f32>,
}

/// conv → prep → recurrence → gated norm over `t` projection rows, in one compute pass.
fn forward(
    gpu: &Gpu,
    d: &GdnDims,
    l: &GpuLayer,
    p: &Proj,
    proj: &[f32],
    t: usize,
    nc: usize,
) -> Outs {
    forward_with(gpu, d, l, p, proj, t, nc, false, false)
}

/// As [`forward`], with the step's rollback flag and, with `fused`, gdn_conv_prep instead of
/// gdn_conv + gdn_prep.
#[allow(clippy::too_many_arguments)]
fn forward_with(
    gpu: &Gpu,
    d: &GdnDims,
    l: &GpuLayer,
    p: &Proj,
    proj: &[f32],
    t: usize,
    nc: usize,
    rollback: bool,
    fused: bool,
) -> Outs {
    let (cd, vd, hv) = (
        d.conv_dim() as usize,
        d.value_dim() as usize,
        d.n_v_heads as usize,
    );
    let pb = upload_f32(gpu, "proj", &proj[..t * p.stride]);
    let conv_out = zeros(gpu, "conv_out", t * cd);
    let gates = zeros(gpu, "gates", t * 2 * hv);
    let y = zeros(gpu, "y", t * vd);
    let out = zeros(gpu, "out", t * vd);
    let sb = step_rb(gpu, t, nc, rollback);
    let st = p.stride as u32;
    let mut ds = Vec::new();
    pollster::block_on(async {
        let (qkv, b, a) = (
            Act::at(&pb, st, p.qkv as u32),
            Act::at(&pb, st, p.b as u32),
            Act::at(&pb, st, p.a as u32),
        );
        if fused {
            ds.extend(
                gdn_conv_prep(
                    gpu,
                    d,
                    qkv,
                    &l.conv_w,
                    &l.conv_state,
                    &l.conv_snap,
                    &conv_out,
                    b,
                    a,
                    &l.a_log,
                    &l.dt_bias,
                    &gates,
                    slot(&sb),
                )
                .await
                .unwrap(),
            );
        } else {
            ds.extend(
                gdn_conv(
                    gpu,
                    d,
                    qkv,
                    &l.conv_w,
                    &l.conv_state,
                    &l.conv_snap,
                    &conv_out,
                    slot(&sb),
                )
                .await
                .unwrap(),
            );
            ds.extend(
                gdn_prep(
                    gpu,
                    d,
                    &conv_out,
                    b,
                    a,
                    &l.a_log,
                    &l.dt_bias,
                    &gates,
                    slot(&sb),
                )
                .await
                .unwrap(),
            );
        }
        ds.extend(
            gdn_recurrence(gpu, d, &conv_out, &gates, &l.state, &l.snap, &y, slot(&sb))
                .await
                .unwrap(),
        );
        ds.extend(
            gated_norm(
                gpu,
                d,
                &y,
                Act::at(&pb, st, p.z as u32),
                &l.norm_w,
                &out,
                slot(&sb),
            )
            .await
            .unwrap(),
        );
    });
    run(gpu, &ds, shape(t));
    Outs {
        conv_out: read_f32(gpu, &conv_out, t * cd),
        gates: read_f32(gpu, &gates, t * 2 * hv),
        y: read_f32(gpu, &y, t * vd),
        out: read_f32(gpu, &out, t * vd),
    }
}

fn initial_states(rng: &mut Rng, d: &GdnDims, random: bool) -> (Vec<f32>, Vec<f32>) {
    let (c, s) = (d.conv_state_len() as usize, d.state_len() as usize);
    if random {
        (rng.vec(c, 2.0), rng.vec(s, 0.5))
    } else {
        (vec![0.0; c], vec![0.0; s])
    }
}

fn label(gpu: &Gpu, name: &str, t: usize, random: bool) -> String {
    format!(
        "{name} T={t} {} state ({})",
        if random { "random" } else { "zero" },
        gpu.describe()
    )
}

#[test]
fn conv_matches_reference() {
    for gpu in gpu_variants() {
        let mut rng = Rng(11);
        for (name, d) in shapes() {
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 3);
            let cd = d.conv_dim() as usize;
            for t in [1, 2, 7] {
                for random in [false, true] {
                    let what = label(&gpu, name, t, random);
                    let (cs, _) = initial_states(&mut rng, &d, random);
                    let proj = proj_rows(&mut rng, &d, &p, t);
                    let want = ref_gdn::conv(&d, &proj, p.stride, p.qkv, &w.conv_w, &cs, t);
                    let pb = upload_f32(&gpu, "proj", &proj);
                    let wb = upload_f32(&gpu, "conv_w", &w.conv_w);
                    let sb = upload_f32(&gpu, "conv_state", &cs);
                    let snap = zeros(&gpu, "conv_snap", cs.len());
                    let out = zeros(&gpu, "out", t * cd);
                    let stb = step_for(&gpu, t, 0);
                    let ds = pollster::block_on(gdn_conv(
                        &gpu,
                        &d,
                        Act::at(&pb, p.stride as u32, p.qkv as u32),
                        &wb,
                        &sb,
                        &snap,
                        &out,
                        slot(&stb),
                    ))
                    .unwrap();
                    run(&gpu, &ds, shape(t));
                    assert_close(
                        &format!("conv out {what}"),
                        &read_f32(&gpu, &out, t * cd),
                        &want.out,
                        &want.mag,
                        CONV_ATOL,
                        CONV_RTOL,
                    );
                    assert_bits_eq(
                        &format!("conv state {what}"),
                        &read_f32(&gpu, &sb, cs.len()),
                        &want.state,
                    );
                    assert!(
                        read_f32(&gpu, &snap, cs.len()).iter().all(|&v| v == 0.0),
                        "{what}: conv_snap written without n_confirmed"
                    );
                }
            }
        }
    }
}

#[test]
fn prep_matches_reference() {
    for gpu in gpu_variants() {
        let mut rng = Rng(12);
        for (name, d) in shapes() {
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 1);
            let (cd, hv, dk) = (
                d.conv_dim() as usize,
                d.n_v_heads as usize,
                d.k_head_dim as usize,
            );
            let key_dim = d.key_dim() as usize;
            let (q_scale, k_scale, _) = qk_norm_constants(d.k_head_dim);
            for t in [1, 2, 7] {
                let what = format!("{name} T={t} ({})", gpu.describe());
                // conv_out-like rows; one head per row scaled way down so eps matters a little.
                let mut co = rng.vec(t * cd, 1.5);
                for r in 0..t {
                    let hd = rng.below(2 * d.n_k_heads) as usize;
                    for c in 0..dk {
                        co[r * cd + hd * dk + c] *= 1e-3;
                    }
                }
                let proj = proj_rows(&mut rng, &d, &p, t);
                let (want, want_g) =
                    ref_gdn::prep(&d, &co, &proj, p.stride, p.b, p.a, &w.a_log, &w.dt_bias, t);
                let cb = upload_f32(&gpu, "conv_out", &co);
                let pb = upload_f32(&gpu, "proj", &proj);
                let (al, dt) = (
                    upload_f32(&gpu, "a_log", &w.a_log),
                    upload_f32(&gpu, "dt_bias", &w.dt_bias),
                );
                let gates = zeros(&gpu, "gates", t * 2 * hv);
                let stb = step_for(&gpu, t, 0);
                let st = p.stride as u32;
                let ds = pollster::block_on(gdn_prep(
                    &gpu,
                    &d,
                    &cb,
                    Act::at(&pb, st, p.b as u32),
                    Act::at(&pb, st, p.a as u32),
                    &al,
                    &dt,
                    &gates,
                    slot(&stb),
                ))
                .unwrap();
                run(&gpu, &ds, shape(t));
                let got = read_f32(&gpu, &cb, t * cd);
                let scale: Vec<f32> = (0..t * cd)
                    .map(|i| {
                        let c = i % cd;
                        if c < key_dim {
                            q_scale
                        } else if c < 2 * key_dim {
                            k_scale
                        } else {
                            0.0
                        }
                    })
                    .collect();
                assert_close(
                    &format!("prep q/k {what}"),
                    &got,
                    &want,
                    &scale,
                    0.0,
                    NORM_RTOL,
                );
                for r in 0..t {
                    let v = &got[r * cd + 2 * key_dim..(r + 1) * cd];
                    assert_bits_eq(
                        &format!("prep leaves v alone {what}"),
                        v,
                        &co[r * cd + 2 * key_dim..(r + 1) * cd],
                    );
                }
                let ones = vec![1.0; want_g.len()];
                assert_close(
                    &format!("gates {what}"),
                    &read_f32(&gpu, &gates, t * 2 * hv),
                    &want_g,
                    &ones,
                    GATE_ATOL,
                    0.0,
                );
            }
        }
    }
}

#[test]
fn recurrence_matches_reference() {
    for gpu in gpu_variants() {
        let mut rng = Rng(13);
        for (name, d) in shapes() {
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 0);
            let (cd, hv, dv, dk) = (
                d.conv_dim() as usize,
                d.n_v_heads as usize,
                d.v_head_dim as usize,
                d.k_head_dim as usize,
            );
            for t in [1, 2, 7] {
                for random in [false, true] {
                    let what = format!(
                        "{} {:?}",
                        label(&gpu, name, t, random),
                        recurrence_layout(&gpu, &d)
                    );
                    let (_, s0) = initial_states(&mut rng, &d, random);
                    // Realistic inputs: silu'd conv-like rows, normalized by the reference prep.
                    let raw = silu_rows(&mut rng, t * cd);
                    let proj = proj_rows(&mut rng, &d, &p, t);
                    let (co, gates) =
                        ref_gdn::prep(&d, &raw, &proj, p.stride, p.b, p.a, &w.a_log, &w.dt_bias, t);
                    let want = ref_gdn::recurrence(&d, &co, &gates, &s0, t, 0);
                    let cb = upload_f32(&gpu, "conv_out", &co);
                    let gb = upload_f32(&gpu, "gates", &gates);
                    let sb = upload_f32(&gpu, "state", &s0);
                    let snap = zeros(&gpu, "snap", s0.len());
                    let yb = zeros(&gpu, "y", t * hv * dv);
                    let stb = step_for(&gpu, t, 0);
                    let ds = pollster::block_on(gdn_recurrence(
                        &gpu,
                        &d,
                        &cb,
                        &gb,
                        &sb,
                        &snap,
                        &yb,
                        slot(&stb),
                    ))
                    .unwrap();
                    run(&gpu, &ds, shape(t));
                    let y = read_f32(&gpu, &yb, t * hv * dv);
                    assert_close(
                        &format!("recurrence y {what}"),
                        &y,
                        &want.y,
                        &group_max(&want.y, dv),
                        0.0,
                        REC_RTOL,
                    );
                    let s = read_f32(&gpu, &sb, s0.len());
                    assert_close(
                        &format!("recurrence state {what}"),
                        &s,
                        &want.state,
                        &group_max(&want.state, dv * dk),
                        0.0,
                        REC_RTOL,
                    );
                    assert!(
                        read_f32(&gpu, &snap, s0.len()).iter().all(|&v| v == 0.0),
                        "{what}: snap written without n_confirmed"
                    );
                }
            }
        }
    }
}

#[test]
fn gated_norm_matches_reference() {
    for gpu in gpu_variants() {
        let mut rng = Rng(14);
        for (name, d) in shapes() {
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 2);
            let (vd, dv) = (d.value_dim() as usize, d.v_head_dim as usize);
            for t in [1, 2, 7] {
                let what = format!("{name} T={t} ({})", gpu.describe());
                let mut y = rng.vec(t * vd, 0.3);
                // One head per row near zero: eps matters there.
                for r in 0..t {
                    let h = rng.below(d.n_v_heads) as usize;
                    for c in 0..dv {
                        y[r * vd + h * dv + c] *= 1e-3;
                    }
                }
                let proj = proj_rows(&mut rng, &d, &p, t);
                let want = ref_gdn::gated_norm(&d, &y, &proj, p.stride, p.z, &w.norm_w, t);
                let yb = upload_f32(&gpu, "y", &y);
                let pb = upload_f32(&gpu, "proj", &proj);
                let nw = upload_f32(&gpu, "norm_w", &w.norm_w);
                let out = zeros(&gpu, "out", t * vd);
                let stb = step_for(&gpu, t, 0);
                let ds = pollster::block_on(gated_norm(
                    &gpu,
                    &d,
                    &yb,
                    Act::at(&pb, p.stride as u32, p.z as u32),
                    &nw,
                    &out,
                    slot(&stb),
                ))
                .unwrap();
                run(&gpu, &ds, shape(t));
                // Scale: |silu(z)|·|w| per element (the normalized y is O(1)) plus the output itself.
                let scale: Vec<f32> = (0..t * vd)
                    .map(|i| {
                        let (r, c) = (i / vd, i % vd);
                        let z = proj[r * p.stride + p.z + c];
                        (z / (1.0 + (-z).exp())).abs() * w.norm_w[c % dv].abs() + want[i].abs()
                    })
                    .collect();
                assert_close(
                    &format!("gated norm {what}"),
                    &read_f32(&gpu, &out, t * vd),
                    &want,
                    &scale,
                    0.0,
                    NORM_RTOL,
                );
            }
        }
    }
}

#[test]
fn snapshots_equal_the_state_after_n_confirmed_rows() {
    // Spec §7.4: a verify call (T = 2, n_confirmed = 1) leaves in the snapshots exactly the states
    // a 1-row call would have produced, so rollback is exact; likewise T = 7, n_confirmed = 3.
    // n_confirmed = 0 or = T writes no snapshot.
    for gpu in gpu_variants() {
        let mut rng = Rng(15);
        for (name, d) in shapes() {
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 0);
            let (cs, s0) = initial_states(&mut rng, &d, true);
            for (t, nc) in [(2, 1), (7, 3)] {
                let what = format!("{name} T={t} n_confirmed={nc} ({})", gpu.describe());
                let proj = proj_rows(&mut rng, &d, &p, t);
                let verify = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
                forward(&gpu, &d, &verify, &p, &proj, t, nc);
                let [_, conv_snap, _, snap] = verify.read_states(&gpu, &d);
                let short = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
                forward(&gpu, &d, &short, &p, &proj, nc, 0);
                let [conv_state, conv_snap_untouched, state, snap_untouched] =
                    short.read_states(&gpu, &d);
                assert_bits_eq(
                    &format!("conv_snap vs {nc}-row conv_state {what}"),
                    &conv_snap,
                    &conv_state,
                );
                assert_bits_eq(&format!("snap vs {nc}-row state {what}"), &snap, &state);
                assert_bits_eq(
                    &format!("conv_snap equals the reference {what}"),
                    &conv_snap,
                    &ref_gdn::conv_state_after(&d, &proj, p.stride, p.qkv, &cs, nc),
                );
                assert!(
                    conv_snap_untouched
                        .iter()
                        .chain(&snap_untouched)
                        .all(|&v| v == -7.25),
                    "{what}: n_confirmed = 0 wrote a snapshot"
                );
                let all = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
                forward(&gpu, &d, &all, &p, &proj, t, t);
                let [_, cs_all, _, s_all] = all.read_states(&gpu, &d);
                assert!(
                    cs_all.iter().chain(&s_all).all(|&v| v == -7.25),
                    "{what}: n_confirmed = T wrote a snapshot"
                );
            }
        }
    }
}

#[test]
fn rollback_flag_starts_from_the_snapshots() {
    // A step with `rollback` set (a verify queued on the GPU after one that rejected its draft)
    // must give the bits of a step without it whose states hold the snapshots: every output, the
    // new states and, for a verify, the new snapshots; with gdn_conv + gdn_prep and with the fused
    // gdn_conv_prep. The states the flagged step did not start from are random and different.
    for gpu in gpu_variants() {
        let mut rng = Rng(23);
        for (name, d) in shapes() {
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 1);
            let (cs, s0) = initial_states(&mut rng, &d, true);
            let (csnap, ssnap) = initial_states(&mut rng, &d, true);
            for (t, nc) in [(2usize, 1usize), (1, 0)] {
                let proj = proj_rows(&mut rng, &d, &p, t);
                for fused in [false, true] {
                    let what = format!(
                        "{name} T={t} n_confirmed={nc} fused={fused} ({})",
                        gpu.describe()
                    );
                    let flagged = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
                    gpu.queue
                        .write_buffer(&flagged.conv_snap.buf, 0, bytemuck::cast_slice(&csnap));
                    gpu.queue
                        .write_buffer(&flagged.snap.buf, 0, bytemuck::cast_slice(&ssnap));
                    let a = forward_with(&gpu, &d, &flagged, &p, &proj, t, nc, true, fused);
                    let plain = GpuLayer::new(&gpu, &d, &w, &csnap, &ssnap);
                    gpu.queue
                        .write_buffer(&plain.conv_snap.buf, 0, bytemuck::cast_slice(&csnap));
                    gpu.queue
                        .write_buffer(&plain.snap.buf, 0, bytemuck::cast_slice(&ssnap));
                    let b = forward_with(&gpu, &d, &plain, &p, &proj, t, nc, false, fused);
                    assert_bits_eq(
                        &format!("rollback: conv_out {what}"),
                        &a.conv_out,
                        &b.conv_out,
                    );
                    assert_bits_eq(&format!("rollback: gates {what}"), &a.gates, &b.gates);
                    assert_bits_eq(&format!("rollback: y {what}"), &a.y, &b.y);
                    assert_bits_eq(&format!("rollback: out {what}"), &a.out, &b.out);
                    let (sa, sb) = (flagged.read_states(&gpu, &d), plain.read_states(&gpu, &d));
                    for (i, part) in ["conv_state", "conv_snap", "state", "snap"]
                        .iter()
                        .enumerate()
                    {
                        assert_bits_eq(&format!("rollback: {part} after {what}"), &sa[i], &sb[i]);
                    }
                }
            }
        }
    }
}

fn assert_rows_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_bits_eq(what, got, &want[..got.len()]);
}

#[test]
fn batch_invariance_is_bit_exact() {
    // Row 0 of a 2-row call equals a 1-row call bit for bit (MTP verify vs decode), and a prompt
    // in chunks (state carried between calls) gives the same outputs and states as one call.
    for gpu in gpu_variants() {
        let mut rng = Rng(16);
        for (name, d) in shapes() {
            let what = format!("{name} ({})", gpu.describe());
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 1);
            let (cs, s0) = initial_states(&mut rng, &d, true);
            let proj = proj_rows(&mut rng, &d, &p, 9);
            let (cd, vd, hv) = (
                d.conv_dim() as usize,
                d.value_dim() as usize,
                2 * d.n_v_heads as usize,
            );

            let l1 = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
            let one = forward(&gpu, &d, &l1, &p, &proj, 1, 0);
            let l2 = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
            let two = forward(&gpu, &d, &l2, &p, &proj, 2, 0);
            assert_rows_eq(
                &format!("T=1 vs row 0 of T=2: conv_out {what}"),
                &one.conv_out,
                &two.conv_out,
            );
            assert_rows_eq(
                &format!("T=1 vs row 0 of T=2: gates {what}"),
                &one.gates,
                &two.gates,
            );
            assert_rows_eq(&format!("T=1 vs row 0 of T=2: y {what}"), &one.y, &two.y);
            assert_rows_eq(
                &format!("T=1 vs row 0 of T=2: out {what}"),
                &one.out,
                &two.out,
            );

            let whole = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
            let a = forward(&gpu, &d, &whole, &p, &proj, 9, 0);
            let chunked = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
            let b0 = forward(&gpu, &d, &chunked, &p, &proj, 4, 0);
            let b1 = forward(&gpu, &d, &chunked, &p, &proj[4 * p.stride..], 5, 0);
            let cat = |x: Vec<f32>, y: Vec<f32>| [x, y].concat();
            assert_bits_eq(
                &format!("9 vs 4+5 rows: conv_out {what}"),
                &a.conv_out,
                &cat(b0.conv_out, b1.conv_out),
            );
            assert_bits_eq(
                &format!("9 vs 4+5 rows: gates {what}"),
                &a.gates,
                &cat(b0.gates, b1.gates),
            );
            assert_bits_eq(&format!("9 vs 4+5 rows: y {what}"), &a.y, &cat(b0.y, b1.y));
            assert_bits_eq(
                &format!("9 vs 4+5 rows: out {what}"),
                &a.out,
                &cat(b0.out, b1.out),
            );
            let [wc, _, ws, _] = whole.read_states(&gpu, &d);
            let [cc, _, cs2, _] = chunked.read_states(&gpu, &d);
            assert_bits_eq(&format!("9 vs 4+5 rows: conv_state {what}"), &wc, &cc);
            assert_bits_eq(&format!("9 vs 4+5 rows: state {what}"), &ws, &cs2);
            assert_eq!(a.conv_out.len(), 9 * cd);
            assert_eq!((a.gates.len(), a.y.len()), (9 * hv, 9 * vd));
        }
    }
}

#[test]
fn recurrence_variants_agree_bitwise() {
    // The subgroup and workgroup-memory recurrences add in the same order, so a device gives the
    // same bits with or without subgroups. (recurrence_layout picks the subgroup kernel on CPU
    // adapters only, so on lavapipe this compares the two kernels.)
    let vars = gpu_variants();
    if vars.len() < 2 {
        return;
    }
    let mut rng = Rng(18);
    for (name, d) in shapes() {
        let w = weights(&mut rng, &d);
        let p = Proj::new(&d, 0);
        let (cs, s0) = initial_states(&mut rng, &d, true);
        let proj = proj_rows(&mut rng, &d, &p, 7);
        let res: Vec<(Outs, [Vec<f32>; 4])> = vars
            .iter()
            .map(|g| {
                let l = GpuLayer::new(g, &d, &w, &cs, &s0);
                let o = forward(g, &d, &l, &p, &proj, 7, 3);
                let st = l.read_states(g, &d);
                (o, st)
            })
            .collect();
        assert_bits_eq(
            &format!("{name}: y, subgroups vs not"),
            &res[0].0.y,
            &res[1].0.y,
        );
        assert_bits_eq(
            &format!("{name}: state, subgroups vs not"),
            &res[0].1[2],
            &res[1].1[2],
        );
        assert_bits_eq(
            &format!("{name}: snap, subgroups vs not"),
            &res[0].1[3],
            &res[1].1[3],
        );
    }
}

/// Seconds per repetition of `ds`, recorded `reps` times in one pass (after one warm-up run).
fn time_per_call(gpu: &Gpu, ds: &[&qwgpu_engine::gpu::Dispatch], t: usize, reps: usize) -> f64 {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for d in ds {
            d.record(&mut pass, shape(t), gpu.caps.max_workgroups_per_dim);
        }
    }
    gpu.queue.submit([enc.finish()]);
    gpu.wait();
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        for _ in 0..reps {
            for d in ds {
                d.record(&mut pass, shape(t), gpu.caps.max_workgroups_per_dim);
            }
        }
    }
    let cmd = enc.finish();
    let start = std::time::Instant::now();
    gpu.queue.submit([cmd]);
    gpu.wait();
    gpu.take_error().expect("GPU error");
    start.elapsed().as_secs_f64() / reps as f64
}

#[test]
#[ignore = "timing, for a real GPU: cargo test -p qwgpu-tests --test kernels_gdn -- --ignored --nocapture (GDN_BENCH_MAX_T, GDN_BENCH_REPS)"]
fn bench_gdn_27b() {
    use qwgpu_engine::gpu::GpuOptions;
    let d = shapes()[2].1;
    let (cd, vd, hv) = (
        d.conv_dim() as usize,
        d.value_dim() as usize,
        d.n_v_heads as usize,
    );
    for no_subgroups in [true, false] {
        let gpu = gpu_with(GpuOptions {
            shader_checks: Some(false),
            no_subgroups,
            ..Default::default()
        });
        if !no_subgroups && !gpu.caps.subgroups {
            continue;
        }
        println!(
            "{}: recurrence {:?}",
            gpu.describe(),
            recurrence_layout(&gpu, &d)
        );
        let mut rng = Rng(17);
        let w = weights(&mut rng, &d);
        let p = Proj::new(&d, 0);
        let (cs, s0) = initial_states(&mut rng, &d, true);
        let l = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
        let max_t: usize = std::env::var("GDN_BENCH_MAX_T")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512);
        for t in [1usize, 2, 16, 128, 512]
            .into_iter()
            .filter(|&t| t <= max_t)
        {
            let proj = proj_rows(&mut rng, &d, &p, t);
            let pb = upload_f32(&gpu, "proj", &proj);
            let conv_out = zeros(&gpu, "conv_out", t * cd);
            let gates = zeros(&gpu, "gates", t * 2 * hv);
            let y = zeros(&gpu, "y", t * vd);
            let out = zeros(&gpu, "out", t * vd);
            let sb = step_for(&gpu, t, if t == 2 { 1 } else { 0 });
            let st = p.stride as u32;
            let (conv, prep, rec, norm) = pollster::block_on(async {
                (
                    gdn_conv(
                        &gpu,
                        &d,
                        Act::at(&pb, st, p.qkv as u32),
                        &l.conv_w,
                        &l.conv_state,
                        &l.conv_snap,
                        &conv_out,
                        slot(&sb),
                    )
                    .await
                    .unwrap(),
                    gdn_prep(
                        &gpu,
                        &d,
                        &conv_out,
                        Act::at(&pb, st, p.b as u32),
                        Act::at(&pb, st, p.a as u32),
                        &l.a_log,
                        &l.dt_bias,
                        &gates,
                        slot(&sb),
                    )
                    .await
                    .unwrap(),
                    gdn_recurrence(
                        &gpu,
                        &d,
                        &conv_out,
                        &gates,
                        &l.state,
                        &l.snap,
                        &y,
                        slot(&sb),
                    )
                    .await
                    .unwrap(),
                    gated_norm(
                        &gpu,
                        &d,
                        &y,
                        Act::at(&pb, st, p.z as u32),
                        &l.norm_w,
                        &out,
                        slot(&sb),
                    )
                    .await
                    .unwrap(),
                )
            });
            let reps: usize = std::env::var("GDN_BENCH_REPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or((4000 / t).clamp(10, 2000));
            let all: Vec<_> = conv.iter().chain(&prep).chain(&rec).chain(&norm).collect();
            let tc = |ds: &[qwgpu_engine::gpu::Dispatch]| {
                time_per_call(&gpu, &ds.iter().collect::<Vec<_>>(), t, reps) * 1e6
            };
            let (c_us, p_us, r_us, n_us) = (tc(&conv), tc(&prep), tc(&rec), tc(&norm));
            let all_us = time_per_call(&gpu, &all, t, reps) * 1e6;
            let state_bytes = 2.0 * d.state_len() as f64 * 4.0;
            println!(
                "  T={t:4}: conv {c_us:8.1} us, prep {p_us:8.1} us, recurrence {r_us:8.1} us ({:6.0} GB/s state, {:6.2} us/token), gated_norm {n_us:8.1} us; all four {all_us:8.1} us",
                state_bytes / (r_us * 1e-6) / 1e9,
                r_us / t as f64
            );
        }
    }
}

#[test]
fn fused_conv_prep_equals_conv_then_prep_bit_for_bit() {
    // gdn_conv_prep (one dispatch) gives the bits of gdn_conv followed by gdn_prep: the
    // normalized q | k | v rows, the gates, the conv state and its snapshot, for every shape
    // (Dk 32 and 128, Dv != Dk), several row counts and snapshot points, from zero and random
    // states. The chain tests above (against the CPU references) then cover it too.
    for gpu in gpu_variants() {
        let mut rng = Rng(19);
        for (name, d) in shapes() {
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 2);
            let (cd, hv) = (d.conv_dim() as usize, d.n_v_heads as usize);
            for (t, nc) in [(1usize, 0usize), (2, 1), (7, 3), (9, 0), (17, 0)] {
                for random in [false, true] {
                    let what = format!("{} n_confirmed={nc}", label(&gpu, name, t, random));
                    let (cs, s0) = initial_states(&mut rng, &d, random);
                    let proj = proj_rows(&mut rng, &d, &p, t);
                    let pb = upload_f32(&gpu, "proj", &proj);
                    let st = p.stride as u32;
                    let sb = step_for(&gpu, t, nc);
                    let run_one = |fused: bool| {
                        let l = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
                        let conv_out = zeros(&gpu, "conv_out", t * cd);
                        let gates = zeros(&gpu, "gates", t * 2 * hv);
                        let (qkv, b, a) = (
                            Act::at(&pb, st, p.qkv as u32),
                            Act::at(&pb, st, p.b as u32),
                            Act::at(&pb, st, p.a as u32),
                        );
                        let ds = pollster::block_on(async {
                            if fused {
                                gdn_conv_prep(
                                    &gpu,
                                    &d,
                                    qkv,
                                    &l.conv_w,
                                    &l.conv_state,
                                    &l.conv_snap,
                                    &conv_out,
                                    b,
                                    a,
                                    &l.a_log,
                                    &l.dt_bias,
                                    &gates,
                                    slot(&sb),
                                )
                                .await
                                .unwrap()
                            } else {
                                let mut v = gdn_conv(
                                    &gpu,
                                    &d,
                                    qkv,
                                    &l.conv_w,
                                    &l.conv_state,
                                    &l.conv_snap,
                                    &conv_out,
                                    slot(&sb),
                                )
                                .await
                                .unwrap();
                                v.extend(
                                    gdn_prep(
                                        &gpu,
                                        &d,
                                        &conv_out,
                                        b,
                                        a,
                                        &l.a_log,
                                        &l.dt_bias,
                                        &gates,
                                        slot(&sb),
                                    )
                                    .await
                                    .unwrap(),
                                );
                                v
                            }
                        });
                        run(&gpu, &ds, shape(t));
                        let [c, csnap, _, _] = l.read_states(&gpu, &d);
                        (
                            read_f32(&gpu, &conv_out, t * cd),
                            read_f32(&gpu, &gates, t * 2 * hv),
                            c,
                            csnap,
                        )
                    };
                    let (a, b) = (run_one(false), run_one(true));
                    assert_bits_eq(
                        &format!("fused vs conv + prep: conv_out {what}"),
                        &b.0,
                        &a.0,
                    );
                    assert_bits_eq(&format!("fused vs conv + prep: gates {what}"), &b.1, &a.1);
                    assert_bits_eq(
                        &format!("fused vs conv + prep: conv_state {what}"),
                        &b.2,
                        &a.2,
                    );
                    assert_bits_eq(
                        &format!("fused vs conv + prep: conv_snap {what}"),
                        &b.3,
                        &a.3,
                    );
                }
            }
        }
    }
}

#[test]
fn gated_recurrence_equals_recurrence_then_gated_norm_bit_for_bit() {
    // gdn_recurrence_gated (one dispatch, a whole head per workgroup) gives the bits of
    // gdn_recurrence followed by gated_norm: the normalized, gated rows, the state and its
    // snapshot, for every shape (Dk 32 and 128, Dv != Dk, heads near zero where eps matters),
    // several row counts and snapshot points, from zero and random states, and starting from the
    // snapshot (step.rollback). The chain tests above (against the CPU references) then cover it.
    for gpu in gpu_variants() {
        let mut rng = Rng(23);
        for (name, d) in shapes() {
            if gated_recurrence_layout(&gpu, &d).is_none() {
                continue;
            }
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 2);
            let (cd, hv, vd, dv) = (
                d.conv_dim() as usize,
                d.n_v_heads as usize,
                d.value_dim() as usize,
                d.v_head_dim as usize,
            );
            for (t, nc, rollback) in [
                (1usize, 0usize, false),
                (2, 1, false),
                (2, 0, true),
                (7, 3, false),
            ] {
                for random in [false, true] {
                    let what = format!(
                        "{} n_confirmed={nc} rollback={rollback}",
                        label(&gpu, name, t, random)
                    );
                    let (_, s0) = initial_states(&mut rng, &d, random);
                    let raw = silu_rows(&mut rng, t * cd);
                    let proj = proj_rows(&mut rng, &d, &p, t);
                    let (mut co, gates) =
                        ref_gdn::prep(&d, &raw, &proj, p.stride, p.b, p.a, &w.a_log, &w.dt_bias, t);
                    // One head of row 0 near zero: the norm's eps matters there.
                    let h0 = rng.below(d.n_v_heads) as usize;
                    for c in 0..dv {
                        co[2 * d.key_dim() as usize + h0 * dv + c] *= 1e-4;
                    }
                    let pb = upload_f32(&gpu, "proj", &proj);
                    let cb = upload_f32(&gpu, "conv_out", &co);
                    let gb = upload_f32(&gpu, "gates", &gates);
                    let sb = step_rb(&gpu, t, nc, rollback);
                    let z = Act::at(&pb, p.stride as u32, p.z as u32);
                    let run_one = |fused: bool| {
                        let (cs, _) = initial_states(&mut Rng(1), &d, false);
                        let l = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
                        // From the snapshot: give it a state of its own.
                        let snap0: Vec<f32> = s0.iter().map(|v| 0.5 * v - 0.125).collect();
                        gpu.queue
                            .write_buffer(&l.snap.buf, 0, bytemuck::cast_slice(&snap0));
                        let y = zeros(&gpu, "y", t * vd);
                        let out = zeros(&gpu, "out", t * vd);
                        let ds = pollster::block_on(async {
                            if fused {
                                gdn_recurrence_gated(
                                    &gpu,
                                    &d,
                                    &cb,
                                    &gb,
                                    &l.state,
                                    &l.snap,
                                    z,
                                    &l.norm_w,
                                    &out,
                                    slot(&sb),
                                )
                                .await
                                .unwrap()
                            } else {
                                let mut v = gdn_recurrence(
                                    &gpu,
                                    &d,
                                    &cb,
                                    &gb,
                                    &l.state,
                                    &l.snap,
                                    &y,
                                    slot(&sb),
                                )
                                .await
                                .unwrap();
                                v.extend(
                                    gated_norm(&gpu, &d, &y, z, &l.norm_w, &out, slot(&sb))
                                        .await
                                        .unwrap(),
                                );
                                v
                            }
                        });
                        run(&gpu, &ds, shape(t));
                        let [_, _, s, snap] = l.read_states(&gpu, &d);
                        (read_f32(&gpu, &out, t * vd), s, snap)
                    };
                    let (a, b) = (run_one(false), run_one(true));
                    assert!(
                        a.0.iter().all(|v| v.is_finite()) && a.0.iter().any(|&v| v != 0.0),
                        "{what}: the two-kernel output is degenerate"
                    );
                    assert_bits_eq(&format!("gated recurrence: out {what}"), &b.0, &a.0);
                    assert_bits_eq(&format!("gated recurrence: state {what}"), &b.1, &a.1);
                    assert_bits_eq(&format!("gated recurrence: snap {what}"), &b.2, &a.2);
                    let _ = hv;
                }
            }
        }
    }
}

#[test]
fn split_fused_recurrence_equals_whole_heads_bit_for_bit() {
    // gdn_recurrence_fused (q/k normalization, gates, delta rule, gated norm and the output
    // planes in one dispatch) with a head's rows over Dv / 32 workgroups, the last one out
    // normalizing the head, gives the bits of one workgroup per head: the output, its integer
    // planes, the state and the snapshot, for 1, 2 (with a snapshot point, and from the snapshot)
    // and 7 rows, from zero and random states, on heads of 1, 2 and 4 such workgroups. The split
    // form's dispatch runs twice on the same buffers (inputs restored in between), so its
    // per-head counts must be back at zero after a call. (No other test of this binary builds
    // the fused recurrence, so the switch flips nothing under them.)
    let default = split_recurrence();
    for gpu in gpu_variants() {
        let mut rng = Rng(29);
        for (name, d) in shapes() {
            if gated_recurrence_layout(&gpu, &d).is_none() {
                continue;
            }
            let w = weights(&mut rng, &d);
            let p = Proj::new(&d, 2);
            let (cd, vd) = (d.conv_dim() as usize, d.value_dim() as usize);
            for (t, nc, rollback) in [
                (1usize, 0usize, false),
                (2, 1, false),
                (2, 0, true),
                (7, 3, false),
            ] {
                for random in [false, true] {
                    let what = format!(
                        "{} n_confirmed={nc} rollback={rollback}",
                        label(&gpu, name, t, random)
                    );
                    let (_, s0) = initial_states(&mut rng, &d, random);
                    // The fused recurrence normalizes q and k itself.
                    let raw = silu_rows(&mut rng, t * cd);
                    let proj = proj_rows(&mut rng, &d, &p, t);
                    let pb = upload_f32(&gpu, "proj", &proj);
                    let cb = upload_f32(&gpu, "conv_out", &raw);
                    let sb = step_rb(&gpu, t, nc, rollback);
                    let z = Act::at(&pb, p.stride as u32, p.z as u32);
                    let qbytes = t as u64 * qwgpu_engine::ops::xquant::row_bytes(vd as u32);
                    let run_one = |split: bool, runs: usize| {
                        let (cs, _) = initial_states(&mut Rng(1), &d, false);
                        let l = GpuLayer::new(&gpu, &d, &w, &cs, &s0);
                        let snap0: Vec<f32> = s0.iter().map(|v| 0.5 * v - 0.125).collect();
                        let out = zeros(&gpu, "out", t * vd);
                        let xq = gpu.storage("xq", qbytes).unwrap();
                        set_split_recurrence(split);
                        let ds = pollster::block_on(gdn_recurrence_fused(
                            &gpu,
                            &d,
                            &cb,
                            &l.state,
                            &l.snap,
                            z,
                            p.b as u32,
                            p.a as u32,
                            &l.a_log,
                            &l.dt_bias,
                            &l.norm_w,
                            &out,
                            Some(&xq),
                            slot(&sb),
                        ));
                        set_split_recurrence(default);
                        let ds = ds.unwrap();
                        let groups = ds[0].grid.counts(shape(t), u32::MAX)[0];
                        for _ in 0..runs {
                            gpu.queue
                                .write_buffer(&l.state.buf, 0, bytemuck::cast_slice(&s0));
                            gpu.queue
                                .write_buffer(&l.snap.buf, 0, bytemuck::cast_slice(&snap0));
                            gpu.queue.write_buffer(&out.buf, 0, &vec![0u8; t * vd * 4]);
                            run(&gpu, &ds, shape(t));
                        }
                        let [_, _, s, snap] = l.read_states(&gpu, &d);
                        let planes =
                            pollster::block_on(gpu.read_u32(&xq.buf, 0, (qbytes / 4) as usize))
                                .unwrap();
                        (read_f32(&gpu, &out, t * vd), s, snap, planes, groups)
                    };
                    let whole = run_one(false, 1);
                    assert!(
                        whole.0.iter().all(|v| v.is_finite()) && whole.0.iter().any(|&v| v != 0.0),
                        "{what}: the whole-head output is degenerate"
                    );
                    for runs in [1, 2] {
                        let split = run_one(true, runs);
                        let form = format!("split fused recurrence ({runs} runs): {what}");
                        assert_eq!(
                            split.4,
                            d.n_v_heads * (d.v_head_dim / 32).max(1),
                            "{form}: workgroups"
                        );
                        assert_bits_eq(&format!("{form}: out"), &split.0, &whole.0);
                        assert_bits_eq(&format!("{form}: state"), &split.1, &whole.1);
                        assert_bits_eq(&format!("{form}: snap"), &split.2, &whole.2);
                        assert_eq!(split.3, whole.3, "{form}: output planes");
                    }
                }
            }
        }
    }
}
