// Quantized matmul for prompt chunks as a tiled GEMM (experimental; QWGPU_PREFILL_GEMM=1, see
// ops::matmul::prefill_gemm). Same bindings and parameters as matmul.wgsl's quantized path.
//
// A workgroup of 256 threads computes a tile of BN = 64 rows × BT = 64 tokens. Per step of
// BK = 32 input features it dequantizes the tile's weights (w = s * q + b, MLX affine, spec §3.1)
// and stages the tokens' x values, both in workgroup memory, and each thread accumulates a 4-row
// × 4-token block from there: 16 multiply-adds per two workgroup loads, and each weight byte and
// x value read from memory once per tile instead of once per row group.
//
// Per (row, token) the sum runs over k in increasing order, one fused term per feature, whatever
// the number of tokens or the tile the token lands in: a prompt gives the same bits in chunks of
// any size. (Not the bits of the decode tiles, which sum per block with the affine identity.)
//
// Defines: TOKENS, ADD, SWIGLU, Q4 or Q8, SCALE_F32 / SCALE_F16 / SCALE_BF16.
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;      // [T, x_stride / 4]
@group(0) @binding(3) var<storage, read> w: array<u32>;            // [n, k / EPW] code words
@group(0) @binding(4) var<storage, read> scales: array<u32>;       // [n, k / group]
@group(0) @binding(5) var<storage, read> biases: array<u32>;       // [n, k / group]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;      // [T, y_stride]

const WG: u32 = 256u;
const BN: u32 = 64u;
const BT: u32 = 64u;
const BK: u32 = 32u;
#if Q4
const EPW: u32 = 8u;   // codes per u32 word
const BITS: u32 = 4u;
const MASK: u32 = 15u;
#else
const EPW: u32 = 4u;
const BITS: u32 = 8u;
const MASK: u32 = 255u;
#endif
const WPS: u32 = BK / EPW;  // words per row per step

// [BK][BN / 4]: the step's dequantized weights, feature-major, 4 rows per vec4.
var<workgroup> ws: array<vec4<f32>, BK * BN / 4u>;
// [BK][BT / 4]: the step's x values, feature-major, 4 tokens per vec4.
var<workgroup> xs: array<vec4<f32>, BK * BT / 4u>;

fn scale_bias(idx: u32) -> vec2<f32> {
#if SCALE_F32
    return vec2<f32>(bitcast<f32>(scales[idx]), bitcast<f32>(biases[idx]));
#elif SCALE_F16
    return vec2<f32>(half_at_f16(scales[idx >> 1u], idx), half_at_f16(biases[idx >> 1u], idx));
#else
    return vec2<f32>(half_at_bf16(scales[idx >> 1u], idx), half_at_bf16(biases[idx >> 1u], idx));
#endif
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let T = step.{{TOKENS}};
    let n0 = wg_linear(wid, nwg) * BN;
    if (n0 >= p.n) { return; }
    let t0 = wid.z * BT;
    let wpr = p.k / EPW;
    let xs4 = p.x_stride / 4u;
    let ty = lid / 16u;   // rows ty*4 .. ty*4+3 of the tile
    let tx = lid % 16u;   // tokens tx*4 .. tx*4+3 of the tile

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    let nsteps = p.k / BK;
    for (var s = 0u; s < nsteps; s++) {
        workgroupBarrier();
        // Weights: BN rows × WPS words; thread i takes word i % WPS of row i / WPS.
        for (var i = lid; i < BN * WPS; i += WG) {
            let r = i / WPS;
            let wd = i % WPS;
            let row = min(n0 + r, p.n - 1u);
            let word = w[row * wpr + s * WPS + wd];
            let sb = scale_bias(row * p.groups_per_row + (s * BK + wd * EPW) / p.group_size);
            for (var e = 0u; e < EPW; e++) {
                let q = f32((word >> (BITS * e)) & MASK);
                let kk = wd * EPW + e;
                ws[kk * (BN / 4u) + r / 4u][r % 4u] = sb.x * q + sb.y;
            }
        }
        // x: BT tokens × BK / 4 vec4 (zeros past the step's tokens).
        for (var i = lid; i < BT * (BK / 4u); i += WG) {
            let t = i / (BK / 4u);
            let kv = i % (BK / 4u);
            var v = vec4<f32>(0.0);
            if (t0 + t < T) {
                v = x[(t0 + t) * xs4 + p.x_col / 4u + s * (BK / 4u) + kv];
            }
            let kk = kv * 4u;
            xs[(kk + 0u) * (BT / 4u) + t / 4u][t % 4u] = v.x;
            xs[(kk + 1u) * (BT / 4u) + t / 4u][t % 4u] = v.y;
            xs[(kk + 2u) * (BT / 4u) + t / 4u][t % 4u] = v.z;
            xs[(kk + 3u) * (BT / 4u) + t / 4u][t % 4u] = v.w;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = ws[kk * (BN / 4u) + ty];
            let b = xs[kk * (BT / 4u) + tx];
            acc0 += vec4<f32>(a.x) * b;
            acc1 += vec4<f32>(a.y) * b;
            acc2 += vec4<f32>(a.z) * b;
            acc3 += vec4<f32>(a.w) * b;
        }
    }

    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
#if SWIGLU
    // Rows come in (gate, up) pairs: rows ty*4 + {0,1} and ty*4 + {2,3}.
    for (var i = 0u; i < 4u; i += 2u) {
        let row = n0 + ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let t = t0 + tx * 4u + j;
            if (row + 1u < p.n && t < T) {
                y[t * p.y_stride + (p.row0 + row) / 2u] = silu(accs[i][j]) * accs[i + 1u][j];
            }
        }
    }
#else
    for (var i = 0u; i < 4u; i++) {
        let row = n0 + ty * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let t = t0 + tx * 4u + j;
            if (row < p.n && t < T) {
                let o = t * p.y_stride + p.row0 + row;
#if ADD
                y[o] = y[o] + accs[i][j];
#else
                y[o] = accs[i][j];
#endif
            }
        }
    }
#endif
}
