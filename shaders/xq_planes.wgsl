// Block fixed point of the integer-plane matmul input (xquant.wgsl's format), shared by the
// kernels that write planes (xquant.wgsl, gdn_recurrence.wgsl with XQ) so they give the same bits.

// (s, 1 / s) for a block whose max |x| is mx: s = 2^(E - 22) for mx in [2^(E-1), 2^E), both
// powers of two so x / s is exact; (0, 0) below 2^-105 (every code 0); (mx, 0) for inf / NaN.
fn block_scale(mx: f32) -> vec2<f32> {
    let e = (bitcast<u32>(mx) >> 23u) & 0xFFu;
    if (e < 22u) { return vec2<f32>(0.0); }
    if (e == 255u) { return vec2<f32>(mx, 0.0); }
    return vec2<f32>(bitcast<f32>((e - 21u) << 23u), bitcast<f32>((275u - e) << 23u));
}

// (max |x|, Σx) of one word of 8 values (a = values 0..3, b = 4..7), in the order every writer uses.
fn word_part(a: vec4<f32>, b: vec4<f32>) -> vec2<f32> {
    let m = max(abs(a), abs(b));
    return vec2<f32>(
        max(max(m.x, m.y), max(m.z, m.w)),
        ((a.x + a.y) + (a.z + a.w)) + ((b.x + b.y) + (b.z + b.w)),
    );
}

// The six plane words of one word of 8 values scaled by inv_s = 1 / s: h even, h odd, m even,
// m odd, l even, l odd ("even" = values 0, 2, 4, 6, which `codes & 0x0F0F0F0F` lines up with).
fn word_planes(a: vec4<f32>, b: vec4<f32>, inv_s: f32) -> array<u32, 6> {
    let ev = vec4<i32>(round(vec4<f32>(a.x, a.z, b.x, b.z) * inv_s));
    let od = vec4<i32>(round(vec4<f32>(a.y, a.w, b.y, b.w) * inv_s));
    return array<u32, 6>(
        pack4xI8(ev >> vec4<u32>(16u)),
        pack4xI8(od >> vec4<u32>(16u)),
        pack4xU8(bitcast<vec4<u32>>(ev) >> vec4<u32>(8u)),
        pack4xU8(bitcast<vec4<u32>>(od) >> vec4<u32>(8u)),
        pack4xU8(bitcast<vec4<u32>>(ev)),
        pack4xU8(bitcast<vec4<u32>>(od)),
    );
}
