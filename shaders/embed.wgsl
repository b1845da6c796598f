// Embedding gather (spec §3.2): y[t, :] = dequantized row ids[id_offset + t] of the table, for the
// ids that fall in this chunk's rows [row0, row0 + rows). Formats as in matmul.wgsl.
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> ids: array<u32>;      // token ids
@group(0) @binding(3) var<storage, read> w: array<u32>;        // [rows, dim * bits / 32] or dense
#if QUANT
@group(0) @binding(4) var<storage, read> scales: array<u32>;   // [rows, dim / group]
@group(0) @binding(5) var<storage, read> biases: array<u32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;  // [T, y_stride], at y_col
#else
@group(0) @binding(4) var<storage, read_write> y: array<f32>;  // [T, y_stride], at y_col
#endif

const WG: u32 = 256u;

#if QUANT
fn scale_bias(idx: u32) -> vec2<f32> {
#if SCALE_F32
    return vec2<f32>(bitcast<f32>(scales[idx]), bitcast<f32>(biases[idx]));
#elif SCALE_F16
    return vec2<f32>(half_at_f16(scales[idx >> 1u], idx), half_at_f16(biases[idx >> 1u], idx));
#else
    return vec2<f32>(half_at_bf16(scales[idx >> 1u], idx), half_at_bf16(biases[idx >> 1u], idx));
#endif
}
#endif

fn element(r: u32, j: u32) -> f32 {
#if Q4
    let word = w[r * (p.dim / 8u) + j / 8u];
    let q = f32((word >> (4u * (j % 8u))) & 15u);
    let sb = scale_bias(r * (p.dim / p.group_size) + j / p.group_size);
    return sb.x * q + sb.y;
#elif Q8
    let word = w[r * (p.dim / 4u) + j / 4u];
    let q = f32((word >> (8u * (j % 4u))) & 255u);
    let sb = scale_bias(r * (p.dim / p.group_size) + j / p.group_size);
    return sb.x * q + sb.y;
#elif F32
    return bitcast<f32>(w[r * p.dim + j]);
#elif F16
    let i = r * p.dim + j;
    return half_at_f16(w[i >> 1u], i);
#else
    let i = r * p.dim + j;
    return half_at_bf16(w[i >> 1u], i);
#endif
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.z;
    if (t >= step.n_tokens) { return; }
    let id = ids[p.id_offset + t];
    if (id < p.row0 || id >= p.row0 + p.rows) { return; }
    let r = id - p.row0;
    let j = wg_linear(wid, nwg) * WG + lid;
    if (j >= p.dim) { return; }
    y[t * p.y_stride + p.y_col + j] = element(r, j);
}
