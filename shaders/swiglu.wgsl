// SwiGLU (spec §4.4): a[t, i] = silu(gate[t, i]) * up[t, i]; gate and up are columns of one buffer.
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> gu: array<f32>;       // [T, gu_stride]: gate at gate_col, up at up_col
@group(0) @binding(3) var<storage, read_write> a: array<f32>;  // [T, dim]

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = wid.z;
    let i = wg_linear(wid, nwg) * WG + lid;
    if (t >= step.n_tokens || i >= p.dim) { return; }
    let g = gu[t * p.gu_stride + p.gate_col + i];
    let u = gu[t * p.gu_stride + p.up_col + i];
    a[t * p.dim + i] = silu(g) * u;
}
