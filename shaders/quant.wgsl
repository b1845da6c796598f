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

// Codes of a u32 word without shifts or int-to-float conversions, for kernels that keep x
// pre-multiplied by X_LO / X_HI (exact powers of two, so every product equals x·q bit for bit):
// a nibble in bits 4i..4i+3 with i <= 4 lies in the low 23 bits, (word & (15 << 4i)) | 2^23's
// bits is the f32 2^23 + 16^i q exactly, and one subtraction leaves 16^i q; nibbles 5..7 come
// from word >> 20 the same way. 8-bit codes: bytes 0, 1 in place, bytes 2, 3 after >> 16.
// codes_lo covers the word's values 0..3, codes_hi (4-bit codes only) values 4..7.
#if Q4
const CODE_MLO = vec4<u32>(0xFu, 0xF0u, 0xF00u, 0xF000u);
const CODE_MHI = vec4<u32>(0xF0000u, 0xFu, 0xF0u, 0xF00u);
const X_LO = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const X_HI = vec4<f32>(0.0000152587890625, 1.0, 0.0625, 0.00390625);
fn codes_lo(wd: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>((vec4<u32>(wd) & CODE_MLO) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
}
fn codes_hi(wd: u32) -> vec4<f32> {
    let s = wd >> 20u;
    return bitcast<vec4<f32>>((vec4<u32>(wd, s, s, s) & CODE_MHI) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
}
// Σ of the 4 (unscaled) x values under a pre-scaled vec4, summed left to right (each product by
// a power of two is exact, so the sum has the bits of x0 + x1 + x2 + x3).
fn sum_lo(a: vec4<f32>) -> f32 { return a.x + a.y * 16.0 + a.z * 256.0 + a.w * 4096.0; }
fn sum_hi(a: vec4<f32>) -> f32 { return a.x * 65536.0 + a.y + a.z * 16.0 + a.w * 256.0; }
#elif Q8
const CODE_MLO = vec4<u32>(0xFFu, 0xFF00u, 0xFFu, 0xFF00u);
const X_LO = vec4<f32>(1.0, 0.00390625, 1.0, 0.00390625);
fn codes_lo(wd: u32) -> vec4<f32> {
    let s = wd >> 16u;
    return bitcast<vec4<f32>>((vec4<u32>(wd, wd, s, s) & CODE_MLO) | vec4<u32>(0x4B000000u)) - vec4<f32>(8388608.0);
}
fn sum_lo(a: vec4<f32>) -> f32 { return a.x + a.y * 256.0 + a.z + a.w * 256.0; }
#endif
