// q / k RMSNorm + partial RoPE of whole heads (spec §4.5 steps 2-4), shared by attn_prep.wgsl and
// attention.wgsl's split pass with PREP (the prep folded into the decode tiles' split pass), so
// both give the same bits.
//
// A head ("job") is normalized by RL = 64 lanes: lane l takes dims l, l + RL, ... (RP_PER of
// them at most) and sums their squares in that order (explicit fmas), the RL sums are added by a
// fixed halving tree, then y_j = w_j * (x_j * inv) with inv = 1 / sqrt(mean(x²) + eps), and the
// dims below rotary_dim are rotated (non-traditional, rotate-half: pair (i, i + rotary_dim/2)):
//   inv_freq_i = exp2(-(i / (rotary_dim/2)) * log2(theta)), angle = f32(pos) * inv_freq_i (MLX's
//   f32 math), the angle reduced to [-pi, pi] (Cody-Waite, exact for |angle| < 2^18) before
//   cos/sin, where WGSL's accuracy guarantees hold on every backend.
// The arithmetic of a head depends on nothing but its values, weights and position: not on the
// workgroup size, the slot it runs in or the other jobs of the round.
//
// A workgroup runs RP_SLOTS jobs at a time (slot = lid / RL; threads past RP_SLOTS * RL idle).
// The includer defines RP_SLOTS, RP_D (the largest head dim, a multiple of RL) and
//   fn rp_x(job: u32, j: u32) -> f32    the job's dim j before the norm
//   fn rp_w(job: u32, j: u32) -> f32    the norm weight of dim j
//   fn rp_pos(job: u32) -> u32          the job's position (its RoPE angle)
// and its Params has head_dim, rotary_dim, eps and log2_theta.
const RL: u32 = 64u;
const RP_PER: u32 = RP_D / RL;

var<workgroup> rp_red: array<f32, RP_SLOTS * RL>;
var<workgroup> rp_ys: array<f32, RP_SLOTS * RP_D>;   // per slot: the head's normed, then rotated values

// (cos a, sin a) with a reduced to [-pi, pi] first: 2pi = C1 + C2 + C3, C1 and C2 have 8
// significant bits so k*C1 and k*C2 are exact for |k| < 2^16.
fn cos_sin(a: f32) -> vec2<f32> {
    let k = round(a * 0.15915494309189535);
    var r = a - k * 6.28125;
    r = r - k * 0.0019378662109375;
    r = r - k * -2.559031372584286e-06;
    return vec2<f32>(cos(r), sin(r));
}

// Jobs j0 .. j0 + RP_SLOTS - 1 (those below n_jobs): afterwards rp_ys[slot * RP_D + j] holds job
// j0 + slot's output dim j (j < head_dim). Called from uniform control flow by the whole
// workgroup; ends with a barrier.
fn rope_round(j0: u32, n_jobs: u32, lid: u32) {
    let slot = lid / RL;
    let lane = lid % RL;
    let job = j0 + slot;
    let live = slot < RP_SLOTS && job < n_jobs;
    let D = p.head_dim;
    let hrot = p.rotary_dim / 2u;
    var fpos = 0.0;
    if (live) { fpos = f32(rp_pos(job)); }
    // Loads, weights and the rotation of this lane's dims first, so they overlap the reduction.
    var x: array<f32, RP_PER>;
    var wn: array<f32, RP_PER>;
    var rot: array<vec2<f32>, RP_PER>;
    var s = 0.0;
    for (var i = 0u; i < RP_PER; i++) {
        let j = lane + i * RL;
        var v = 0.0;
        var w = 0.0;
        if (live && j < D) {
            v = rp_x(job, j);
            w = rp_w(job, j);
        }
        x[i] = v;
        wn[i] = w;
        s = fma(v, v, s);
        if (j < p.rotary_dim) {
            let fi = select(j - hrot, j, j < hrot);
            let inv_freq = exp2(-(f32(fi) / f32(hrot)) * p.log2_theta);
            rot[i] = cos_sin(fpos * inv_freq);
        }
    }
    let base = min(slot, RP_SLOTS - 1u) * RL;
    if (slot < RP_SLOTS) { rp_red[lid] = s; }
    workgroupBarrier();
    for (var stride = RL / 2u; stride > 0u; stride >>= 1u) {
        if (slot < RP_SLOTS && lane < stride) { rp_red[lid] += rp_red[lid + stride]; }
        workgroupBarrier();
    }
    let inv = inverseSqrt(rp_red[base] / f32(D) + p.eps);
    let yb = min(slot, RP_SLOTS - 1u) * RP_D;
    for (var i = 0u; i < RP_PER; i++) {
        let j = lane + i * RL;
        if (live && j < D) { rp_ys[yb + j] = wn[i] * (x[i] * inv); }
    }
    workgroupBarrier();
    var y: array<f32, RP_PER>;
    for (var i = 0u; i < RP_PER; i++) {
        let j = lane + i * RL;
        if (live && j < D) {
            var v = rp_ys[yb + j];
            if (j < p.rotary_dim) {
                let cs = rot[i];
                if (j < hrot) {
                    v = fma(rp_ys[yb + j], cs.x, -(rp_ys[yb + j + hrot] * cs.y));
                } else {
                    v = fma(rp_ys[yb + j - hrot], cs.y, rp_ys[yb + j] * cs.x);
                }
            }
            y[i] = v;
        }
    }
    workgroupBarrier();
    for (var i = 0u; i < RP_PER; i++) {
        let j = lane + i * RL;
        if (live && j < D) { rp_ys[yb + j] = y[i]; }
    }
    workgroupBarrier();
}
