// Cache prefetch by spare workgroups of a dispatch (`ops::prefetch`): while a kernel that leaves
// most of the GPU idle runs (the Gated-DeltaNet recurrence: one workgroup per value head), the
// dispatch's extra workgroups read the next matmul's code words, scales and biases once, so that
// they sit in the last-level cache when that matmul starts instead of the matmul waiting on
// memory. Nothing is written: the xor of what was read is compared with p.pf_never (always 0, an
// unsigned value is never below it, but the compiler cannot know), so the reads cannot be
// dropped and the branch is never taken.
//
// The including kernel declares pf_w: array<vec4<u32>> (codes), pf_s and pf_b: array<u32>
// (scales and biases) and the params pf_w4 (vec4 of codes to read), pf_sb (words of scales, the
// same of biases), pf_wgs (prefetching workgroups) and pf_never.

// Workgroup i0 of p.pf_wgs, of wg_size threads, reads its strided share (four reads in flight per
// thread and round); returns the xor of what it read.
fn prefetch_share(i0: u32, lid: u32, wg_size: u32) -> u32 {
    let n = p.pf_wgs * wg_size;
    var acc = vec4<u32>(0u);
    var i = i0 * wg_size + lid;
    for (; i + 3u * n < p.pf_w4; i += 4u * n) {
        let a = pf_w[i];
        let b = pf_w[i + n];
        let c = pf_w[i + 2u * n];
        let d = pf_w[i + 3u * n];
        acc ^= (a ^ b) ^ (c ^ d);
    }
    for (; i < p.pf_w4; i += n) {
        acc ^= pf_w[i];
    }
    var s = 0u;
    for (var j = i0 * wg_size + lid; j < p.pf_sb; j += n) {
        s ^= pf_s[j] ^ pf_b[j];
    }
    return ((acc.x ^ acc.y) ^ (acc.z ^ acc.w)) ^ s;
}
