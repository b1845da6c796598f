// Word fixed point of the integer-plane matmul input (xquant.wgsl's format), shared by every
// kernel that writes planes (xquant.wgsl, gdn_recurrence.wgsl with XQ, matmul_staged.wgsl with
// XOUT, attention.wgsl with XQ) so they give the same bits for the same values.
//
// Per word of 8 values: s = 2^(E - F) for the word's max |x| in [2^(E-1), 2^E), xi =
// round_half_even(x / s), |xi| <= 2^F, in 8-bit planes. F = 22: three planes, h = xi >> 16
// (signed), m = (xi >> 8) & 255 and l = xi & 255 (unsigned). XQ_NARROW (the default): F = 15 and
// xi at most 2^15 - 1 (a value within 2^-16 of 2^E rounds down, not up), two planes, h = xi >> 8
// (signed) and m = xi & 255, and the l planes hold zeros; a matmul then does two packed dot
// products per code word and plane pair instead of three. x's rounding is at most 2^-F of its
// word's max |x| (2^-(F+1) but for that clamp), so a value next to an outlier 2^k times larger
// keeps about F - k bits (bf16 keeps 8 of every value, and rounds the outlier itself to 2^-9). A word is the unit so that any writer owning 8
// consecutive values (a matmul workgroup of 8 output rows) can write whole words. The format is
// one per process (`ops::xquant::narrow`; every pipeline gets the flag from `Gpu::pipeline`), so
// writers and readers always agree.
//
// Layout per row of nb = dim / 32 blocks (4 words each; q_stride = 9 * nb vec4<u32>), u32 index
// (P * nb + b) * 4 + wd for word wd of block b:
//   P = 0..5: planes h even, h odd, m even, m odd, l even, l odd ("even" = values 0, 2, 4, 6,
//             which `codes & 0x0F0F0F0F` of a 4-bit code word lines up with);
//   P = 6:    s (f32 bits);
//   P = 7:    Σx, ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)) in f32;
//   P = 8:    Σ of the squares of the word's source values (a writer that scales its values by
//             an RMSNorm weight and defers the norm's 1/rms to the reader puts the squares of the
//             unscaled values here; the reader sums them over the row).
//
// XQ_BYTE (opt-in, `QWGPU_XQ_BYTE=1`; overrides XQ_NARROW): F = 7, one signed byte per value,
// h = xi with xi at most 127 (clamped as in the two-plane format; -128 for a negative value at
// the bottom of the range), m and l planes zero; a matmul does two packed dot products per code
// word and token (four with two planes). x keeps at most 7 bits of its word's max (bf16 keeps 8
// of every value).
const XQ_PLANES: u32 = 9u;
#if XQ_BYTE
const XQ_FRAC: u32 = 7u;
#else
#if XQ_NARROW
const XQ_FRAC: u32 = 15u;
#else
const XQ_FRAC: u32 = 22u;
#endif
#endif

// (s, 1 / s) for a word whose max |x| is mx: s = 2^(E - F) for mx in [2^(E-1), 2^E), both
// powers of two so x / s is exact; (0, 0) below 2^(F - 127) (s would not be a normal f32: every
// code 0); (mx, 0) for inf / NaN.
fn block_scale(mx: f32) -> vec2<f32> {
    let e = (bitcast<u32>(mx) >> 23u) & 0xFFu;
    if (e < XQ_FRAC) { return vec2<f32>(0.0); }
    if (e == 255u) { return vec2<f32>(mx, 0.0); }
    return vec2<f32>(bitcast<f32>((e + 1u - XQ_FRAC) << 23u), bitcast<f32>((253u + XQ_FRAC - e) << 23u));
}

// The nine u32 of one word of 8 values (a = values 0..3, b = 4..7) in plane order P = 0..8, with
// q the Σ of squares to store in P = 8.
fn word_out(a: vec4<f32>, b: vec4<f32>, q: f32) -> array<u32, 9> {
    let m = max(abs(a), abs(b));
    let sc = block_scale(max(max(m.x, m.y), max(m.z, m.w)));
    let evr = vec4<i32>(round(vec4<f32>(a.x, a.z, b.x, b.z) * sc.y));
    let odr = vec4<i32>(round(vec4<f32>(a.y, a.w, b.y, b.w) * sc.y));
    let sum = ((a.x + a.y) + (a.z + a.w)) + ((b.x + b.y) + (b.z + b.w));
#if XQ_BYTE
    // x / s < 2^7: only the upper clamp can apply (x / s >= -128 fits a signed byte).
    let ev = min(evr, vec4<i32>(127));
    let od = min(odr, vec4<i32>(127));
    return array<u32, 9>(
        pack4xI8(ev),
        pack4xI8(od),
        0u,
        0u,
        0u,
        0u,
        bitcast<u32>(sc.x),
        bitcast<u32>(sum),
        bitcast<u32>(q),
    );
#else
#if XQ_NARROW
    // x / s < 2^15: only the upper clamp can apply.
    let ev = min(evr, vec4<i32>(32767));
    let od = min(odr, vec4<i32>(32767));
    return array<u32, 9>(
        pack4xI8(ev >> vec4<u32>(8u)),
        pack4xI8(od >> vec4<u32>(8u)),
        pack4xU8(bitcast<vec4<u32>>(ev)),
        pack4xU8(bitcast<vec4<u32>>(od)),
        0u,
        0u,
        bitcast<u32>(sc.x),
        bitcast<u32>(sum),
        bitcast<u32>(q),
    );
#else
    return array<u32, 9>(
        pack4xI8(evr >> vec4<u32>(16u)),
        pack4xI8(odr >> vec4<u32>(16u)),
        pack4xU8(bitcast<vec4<u32>>(evr) >> vec4<u32>(8u)),
        pack4xU8(bitcast<vec4<u32>>(odr) >> vec4<u32>(8u)),
        pack4xU8(bitcast<vec4<u32>>(evr)),
        pack4xU8(bitcast<vec4<u32>>(odr)),
        bitcast<u32>(sc.x),
        bitcast<u32>(sum),
        bitcast<u32>(q),
    );
#endif
#endif
}

// Σ of squares of one word in the order every writer uses.
fn word_sq(a: vec4<f32>, b: vec4<f32>) -> f32 {
    return ((a.x * a.x + a.y * a.y) + (a.z * a.z + a.w * a.w)) + ((b.x * b.x + b.y * b.y) + (b.z * b.z + b.w * b.w));
}
