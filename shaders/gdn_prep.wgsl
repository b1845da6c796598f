// Gated-DeltaNet q/k normalization and gates (spec §4.6 steps 4-5, mlx-lm normalize_qk and
// gated_delta_update), for every row of the step:
//   q <- q_scale * (q * inverseSqrt(mean(q²) + qk_eps))   (q_scale = 1/Dk)
//   k <- k_scale * (k * inverseSqrt(mean(k²) + qk_eps))   (k_scale = Dk^-0.5; qk_eps = 1e-6 / Dk)
//   beta = sigmoid(b),  g = exp(-exp(A_log) * softplus(a + dt_bias))
// q and k are rewritten in place in conv_out.
//
// Grid: x = 2*Hk + 1 workgroups per row (q heads, then k heads, then one for the gates), z = rows.
// Each (row, head) reduces in the same fixed order whatever the row count (batch invariant).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read_write> conv_out: array<f32>; // [T, conv_dim] = q [Hk, Dk] | k [Hk, Dk] | v [Hv, Dv]
@group(0) @binding(3) var<storage, read> bv: array<f32>;             // [T, b_stride], b [Hv] at b_col
@group(0) @binding(4) var<storage, read> av: array<f32>;             // [T, a_stride], a [Hv] at a_col
@group(0) @binding(5) var<storage, read> a_log: array<f32>;          // [Hv]
@group(0) @binding(6) var<storage, read> dt_bias: array<f32>;        // [Hv]
@group(0) @binding(7) var<storage, read_write> gates: array<f32>;    // [T, 2*Hv] = beta [Hv] | g [Hv]

const WG: u32 = {{WG}}u;
var<workgroup> red: array<f32, WG>;

#include "gdn_gates.wgsl"

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let T = min(step.n_tokens, p.rows_cap);
    let t = wid.z;
    let j = wg_linear(wid, nwg);
    if (t >= T || j > 2u * p.n_k_heads) { return; }

    if (j < 2u * p.n_k_heads) {
        // q heads at columns [0, key_dim), k heads right after: head j starts at column j * Dk.
        let base = t * p.conv_dim + j * p.dk;
        var s = 0.0;
        for (var c = lid; c < p.dk; c += WG) {
            let x = conv_out[base + c];
            s += x * x;
        }
        red[lid] = s;
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
            if (lid < stride) { red[lid] += red[lid + stride]; }
            workgroupBarrier();
        }
        let inv = inverseSqrt(red[0] / f32(p.dk) + p.qk_eps);
        let scale = select(p.k_scale, p.q_scale, j < p.n_k_heads);
        for (var c = lid; c < p.dk; c += WG) {
            conv_out[base + c] = scale * (conv_out[base + c] * inv);
        }
    } else {
        let hv = p.n_v_heads;
        for (var h = lid; h < hv; h += WG) {
            let beta = sigmoid(bv[t * p.b_stride + p.b_col + h]);
            let g = decay_gate(av[t * p.a_stride + p.a_col + h], a_log[h], dt_bias[h]);
            gates[t * 2u * hv + h] = beta;
            gates[t * 2u * hv + hv + h] = g;
        }
    }
}
