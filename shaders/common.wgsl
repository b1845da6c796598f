// Helpers shared by every kernel. Included with `#include "common.wgsl"`.
// The `Step` struct (per-call row count and cache position) is generated from Rust (gpu::Step).
{{STEP}}

// bf16 -> f32 is a shift: bf16 is the high half of an f32.
fn bf16_lo(w: u32) -> f32 { return bitcast<f32>(w << 16u); }
fn bf16_hi(w: u32) -> f32 { return bitcast<f32>(w & 0xffff0000u); }

// Element `i` of a packed array of 16-bit floats (bf16 or f16) stored two per u32, lowest first.
fn half_at_bf16(words_i: u32, i: u32) -> f32 {
    return select(bf16_lo(words_i), bf16_hi(words_i), (i & 1u) == 1u);
}
fn half_at_f16(words_i: u32, i: u32) -> f32 {
    let v = unpack2x16float(words_i);
    return select(v.x, v.y, (i & 1u) == 1u);
}

// Linear workgroup id of a grid that was split over x and y (gpu::Grid).
fn wg_linear(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }

fn sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
fn silu(x: f32) -> f32 { return x / (1.0 + exp(-x)); }
// softplus as in MLX (log1p(exp(x)) with the large-x shortcut).
fn softplus(x: f32) -> f32 { return select(log(1.0 + exp(x)), x, x > 20.0); }
