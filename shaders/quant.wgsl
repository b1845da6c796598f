// Helpers of the quantized matmul kernels (matmul.wgsl, matmul_staged.wgsl, matmul_gemm.wgsl),
// included by each: the MLX affine scale and bias of a group, and 4-bit / 8-bit codes to f32.
// The including kernel declares `scales` and `biases` (u32 words) and one of SCALE_F32 /
// SCALE_F16 / SCALE_BF16.

// The (scale, bias) of group `idx` (spec §3.1: w = scale * q + bias).
fn scale_bias(idx: u32) -> vec2<f32> {
#if SCALE_F32
    return vec2<f32>(bitcast<f32>(scales[idx]), bitcast<f32>(biases[idx]));
#elif SCALE_F16
    return vec2<f32>(half_at_f16(scales[idx >> 1u], idx), half_at_f16(biases[idx >> 1u], idx));
#else
    return vec2<f32>(half_at_bf16(scales[idx >> 1u], idx), half_at_bf16(biases[idx >> 1u], idx));
#endif
}

// Small unsigned codes (< 2^23) to f32 exactly, without an int-to-float conversion (a
// quarter-rate instruction on many GPUs): 2^23 + q has q in its mantissa bits.
fn codes_f32(q: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(q | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
}
