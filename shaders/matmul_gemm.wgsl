// Quantized matmul for prompt chunks as a tiled GEMM (ops::matmul::prefill_gemm). Same bindings
// and parameters as matmul.wgsl's quantized path.
//
// A workgroup of WG = (BN / TM) * (BT / TN) threads computes a tile of BN rows × BT tokens. Per
// step of BK input features it dequantizes the tile's weights (w = s * q + b, MLX affine, spec
// §3.1) and stages the tokens' x values, both in workgroup memory, and each thread accumulates
// TM rows × TN tokens from there (TM / 4 + TN / 4 vec4 loads per TM * TN multiply-adds). The
// global reads of the next step (code words with their scale and bias, x) are issued before the
// current step's arithmetic, so their latency hides behind it.
// A thread's rows are the vec4 row groups ty, ty + BN / TM, ...; its tokens the vec4 token groups
// tx, tx + BT / TN, ...: neighbouring threads read neighbouring vec4s of workgroup memory.
//
// Per (row, token) the sum runs over k in increasing order, one term w * x per feature, whatever
// the tile shape, the number of tokens or the tile the token lands in: a prompt gives the same
// bits in chunks of any size. (Not the bits of the decode tiles, which sum per block with the
// affine identity.)
//
// HALF (a measurement variant, off by default: `ops::matmul::set_gemm_half`): the staged weights
// and x are f16 and each run of HK = 8 features is a packed f16 multiply-add chain whose sum is
// added to the f32 accumulators: half the workgroup memory traffic and f16 arithmetic, at f16's
// rounding (and range: |partial sums| must stay below 65504). Runs start at multiples of 8
// features, so a row's bits still do not depend on the tile or the chunk.
//
// Defines: BN, BT, BK, TM, TN (TM, TN multiples of 4; WG = BN * BT / (TM * TN); WL = BN * BK /
// (EPW * WG) and XL = BT * BK / (4 * WG) whole), TOKENS, ADD, SWIGLU, Q4 or Q8,
// SCALE_F32 / SCALE_F16 / SCALE_BF16, HALF (with F16; BK a multiple of 8).
#include "common.wgsl"

{{PARAMS}}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;      // [T, x_stride / 4]
@group(0) @binding(3) var<storage, read> w: array<u32>;            // [n, k / EPW] code words
@group(0) @binding(4) var<storage, read> scales: array<u32>;       // [n, k / group]
@group(0) @binding(5) var<storage, read> biases: array<u32>;       // [n, k / group]
@group(0) @binding(6) var<storage, read_write> y: array<f32>;      // [T, y_stride]

const BN: u32 = {{BN}}u;
const BT: u32 = {{BT}}u;
const BK: u32 = {{BK}}u;
const TM: u32 = {{TM}}u;
const TN: u32 = {{TN}}u;
const NTX: u32 = BT / TN;       // threads along tokens
const NTY: u32 = BN / TM;       // threads along rows
const WG: u32 = NTX * NTY;
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
const KV: u32 = BK / 4u;    // x vec4 per token per step

#if HALF
alias SS = f16;
const HK: u32 = 8u;         // features per f16 run
#else
alias SS = f32;
#endif
// [BK][BN / 4]: the step's dequantized weights, feature-major, 4 rows per vec4.
var<workgroup> ws: array<vec4<SS>, BK * BN / 4u>;
// [BK][BT / 4]: the step's x values, feature-major, 4 tokens per vec4.
var<workgroup> xs: array<vec4<SS>, BK * BT / 4u>;

#include "quant.wgsl"

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
    let tx = lid % NTX;
    let ty = lid / NTX;

#for I TMV
#for E 4
#for C TNV
    var acc_{{I}}_{{E}}_{{C}} = vec4<f32>(0.0);
#endfor
#endfor
#endfor

    // The global reads of one step: thread lid takes word i % WPS of tile row i / WPS and x vec4
    // i % KV of tile token i / KV, for i = lid, lid + WG, ...
#for J WL
    let wr{{J}} = min(n0 + (lid + {{J}}u * WG) / WPS, p.n - 1u);
    let wd{{J}} = (lid + {{J}}u * WG) % WPS;
    var wq{{J}} = 0u;
    var wsb{{J}} = vec2<f32>(0.0);
#endfor
#for J XL
    let xt{{J}} = (lid + {{J}}u * WG) / KV;
    let xk{{J}} = (lid + {{J}}u * WG) % KV;
    var xv{{J}} = vec4<f32>(0.0);
#endfor

    let nsteps = p.k / BK;
    for (var s = 0u; s <= nsteps; s++) {
        if (s > 0u) {
            // Store step s - 1 (read last iteration) into workgroup memory.
            workgroupBarrier();
#for J WL
            {
                let r = (lid + {{J}}u * WG) / WPS;
                for (var e = 0u; e < EPW; e++) {
                    let q = f32((wq{{J}} >> (BITS * e)) & MASK);
                    ws[(wd{{J}} * EPW + e) * (BN / 4u) + r / 4u][r % 4u] = SS(wsb{{J}}.x * q + wsb{{J}}.y);
                }
            }
#endfor
#for J XL
            {
                let kk = xk{{J}} * 4u;
                let c = xt{{J}} / 4u;
                let l = xt{{J}} % 4u;
                xs[(kk + 0u) * (BT / 4u) + c][l] = SS(xv{{J}}.x);
                xs[(kk + 1u) * (BT / 4u) + c][l] = SS(xv{{J}}.y);
                xs[(kk + 2u) * (BT / 4u) + c][l] = SS(xv{{J}}.z);
                xs[(kk + 3u) * (BT / 4u) + c][l] = SS(xv{{J}}.w);
            }
#endfor
            workgroupBarrier();
        }
        if (s < nsteps) {
            // Issue step s's global reads; they land while step s - 1 is computed.
#for J WL
            wq{{J}} = w[wr{{J}} * wpr + s * WPS + wd{{J}}];
            wsb{{J}} = scale_bias(wr{{J}} * p.groups_per_row + (s * BK + wd{{J}} * EPW) / p.group_size);
#endfor
#for J XL
            xv{{J}} = vec4<f32>(0.0);
            if (t0 + xt{{J}} < T) {
                xv{{J}} = x[(t0 + xt{{J}}) * xs4 + p.x_col / 4u + s * KV + xk{{J}}];
            }
#endfor
        }
        if (s > 0u) {
#if HALF
            for (var k8 = 0u; k8 < BK; k8 += HK) {
#for I TMV
#for E 4
#for C TNV
                var h_{{I}}_{{E}}_{{C}} = vec4<f16>(0.0h);
#endfor
#endfor
#endfor
                for (var kk = k8; kk < k8 + HK; kk++) {
#for I TMV
                    let a{{I}} = ws[kk * (BN / 4u) + ty + {{I}}u * NTY];
#endfor
#for C TNV
                    let b{{C}} = xs[kk * (BT / 4u) + tx + {{C}}u * NTX];
#endfor
#for I TMV
#for E 4
#for C TNV
                    h_{{I}}_{{E}}_{{C}} = fma(vec4<f16>(a{{I}}[{{E}}]), b{{C}}, h_{{I}}_{{E}}_{{C}});
#endfor
#endfor
#endfor
                }
#for I TMV
#for E 4
#for C TNV
                acc_{{I}}_{{E}}_{{C}} += vec4<f32>(h_{{I}}_{{E}}_{{C}});
#endfor
#endfor
#endfor
            }
#else
            for (var kk = 0u; kk < BK; kk++) {
#for I TMV
                let a{{I}} = ws[kk * (BN / 4u) + ty + {{I}}u * NTY];
#endfor
#for C TNV
                let b{{C}} = xs[kk * (BT / 4u) + tx + {{C}}u * NTX];
#endfor
#for I TMV
#for E 4
#for C TNV
                acc_{{I}}_{{E}}_{{C}} += vec4<f32>(a{{I}}[{{E}}]) * b{{C}};
#endfor
#endfor
#endfor
            }
#endif
        }
    }

    // Row group I of this thread: tile rows (ty + I * NTY) * 4 + E; token group C: tile tokens
    // (tx + C * NTX) * 4 + j.
#for I TMV
#for C TNV
    {
        let row = n0 + (ty + {{I}}u * NTY) * 4u;
        let tb = t0 + (tx + {{C}}u * NTX) * 4u;
#if SWIGLU
        // Rows come in (gate, up) pairs: E = 0, 1 and E = 2, 3.
        for (var j = 0u; j < 4u; j++) {
            if (tb + j < T) {
                if (row + 1u < p.n) { y[(tb + j) * p.y_stride + (p.row0 + row) / 2u] = silu(acc_{{I}}_0_{{C}}[j]) * acc_{{I}}_1_{{C}}[j]; }
                if (row + 3u < p.n) { y[(tb + j) * p.y_stride + (p.row0 + row) / 2u + 1u] = silu(acc_{{I}}_2_{{C}}[j]) * acc_{{I}}_3_{{C}}[j]; }
            }
        }
#else
        let accs = array<vec4<f32>, 4>(acc_{{I}}_0_{{C}}, acc_{{I}}_1_{{C}}, acc_{{I}}_2_{{C}}, acc_{{I}}_3_{{C}});
        for (var e = 0u; e < 4u; e++) {
            for (var j = 0u; j < 4u; j++) {
                if (row + e < p.n && tb + j < T) {
                    let o = (tb + j) * p.y_stride + p.row0 + row + e;
#if ADD
                    y[o] = y[o] + accs[e][j];
#else
                    y[o] = accs[e][j];
#endif
                }
            }
        }
#endif
    }
#endfor
#endfor
}
