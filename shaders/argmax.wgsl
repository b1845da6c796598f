// Greedy pick over logits rows (ties -> lowest index, as mlx's argmax). Two phases so the
// 248,320-wide vocabulary spreads over many workgroups:
//   PHASE1: workgroup b of row r reduces logits[r, b*BLOCK ..] to (max, index) in part[r, b];
//   PHASE2: one workgroup per row reduces part[r, :] and writes ids[id_offset + r].
// NaN never wins (comparisons with NaN are false).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
#if PHASE1
@group(0) @binding(2) var<storage, read> logits: array<f32>;      // [n_out, vocab]
@group(0) @binding(3) var<storage, read_write> part: array<u32>;  // [n_out, n_blocks, 2] (max bits, index)
#else
@group(0) @binding(2) var<storage, read> part: array<u32>;        // [n_out, n_blocks, 2]
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;   // output ids
#endif

const WG: u32 = 256u;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

// (v, i) beats (bv, bi) if larger, or equal with a lower index.
fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wid.z;
    if (r >= step.n_out) { return; }
    var bv = -3.0e38;
    var bi = 0xffffffffu;
#if PHASE1
    let start = wid.x * p.block;
    let end = min(start + p.block, p.vocab);
    for (var j = start + lid; j < end; j += WG) {
        let v = logits[r * p.vocab + j];
        if (better(v, j, bv, bi)) { bv = v; bi = j; }
    }
#else
    for (var b = lid; b < p.n_blocks; b += WG) {
        let o = (r * p.n_blocks + b) * 2u;
        let v = bitcast<f32>(part[o]);
        let i = part[o + 1u];
        if (better(v, i, bv, bi)) { bv = v; bi = i; }
    }
#endif
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride && better(best_v[lid + stride], best_i[lid + stride], best_v[lid], best_i[lid])) {
            best_v[lid] = best_v[lid + stride];
            best_i[lid] = best_i[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
#if PHASE1
        let o = (r * p.n_blocks + wid.x) * 2u;
        part[o] = bitcast<u32>(best_v[0]);
        part[o + 1u] = best_i[0];
#else
        // A row of only NaN / -inf leaves the sentinel: fall back to index 0.
        ids[p.id_offset + r] = select(best_i[0], 0u, best_i[0] == 0xffffffffu);
#endif
    }
}
