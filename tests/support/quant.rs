//! Random quantized matrices for the matmul kernel tests: MLX affine codes, scales and biases
//! from [`quantize_row`], and the dense weights the GPU sees (scales and biases rounded to their
//! storage type) for CPU references; and [`run_matmul`], one matmul call on the GPU.

use qwgpu_engine::gpu::{Gpu, Rows, Step, StepShape, StepSlot};
use qwgpu_engine::ops::matmul::{matmul, matmul_normed, matmul_xq, MatmulOpts};
use qwgpu_engine::ops::matrix::{Matrix, MatrixData};
use qwgpu_engine::ops::Act;
use qwgpu_engine::quant::{
    decode_floats, dequantize_row, encode_floats, quantize_row, WeightFormat,
};

use crate::Rng;

/// The quantized formats the matmul kernels are checked on: 4-bit codes with group sizes 64, 32
/// and 128 and bf16, f32 and f16 scales, and 8-bit codes.
pub fn quantized_formats() -> [WeightFormat; 4] {
    use qwgpu_engine::quant::FloatType::*;
    [
        WeightFormat::Affine {
            bits: 4,
            group: 64,
            scale: BF16,
        },
        WeightFormat::Affine {
            bits: 4,
            group: 32,
            scale: F32,
        },
        WeightFormat::Affine {
            bits: 4,
            group: 128,
            scale: F16,
        },
        WeightFormat::Affine {
            bits: 8,
            group: 64,
            scale: BF16,
        },
    ]
}

pub struct Q {
    pub n: usize,
    pub k: usize,
    pub format: WeightFormat,
    pub weight: Vec<u8>,
    pub scales: Vec<u8>,
    pub biases: Vec<u8>,
    /// The weights the GPU sees, as f32, [n, k].
    pub dense: Vec<f32>,
}

impl Q {
    /// An `n` × `k` matrix of normal(0, 0.05) weights quantized to `format` (affine formats only).
    pub fn random(rng: &mut Rng, n: usize, k: usize, format: WeightFormat) -> Q {
        let WeightFormat::Affine { bits, group, scale } = format else {
            panic!("Q::random: quantized formats only, got {format:?}")
        };
        let (mut codes, mut s, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            let row: Vec<f32> = (0..k).map(|_| rng.normal() * 0.05).collect();
            let (c, sc, bi) = quantize_row(&row, bits, group as usize);
            codes.extend(c);
            s.extend(sc);
            b.extend(bi);
        }
        let (scales, biases) = (encode_floats(scale, &s), encode_floats(scale, &b));
        let (s2, b2) = (decode_floats(scale, &scales), decode_floats(scale, &biases));
        let (gpr, wpr) = (k / group as usize, k * bits as usize / 32);
        let mut dense = Vec::with_capacity(n * k);
        for r in 0..n {
            dense.extend(dequantize_row(
                &codes[r * wpr..(r + 1) * wpr],
                &s2[r * gpr..(r + 1) * gpr],
                &b2[r * gpr..(r + 1) * gpr],
                bits,
                group as usize,
                k,
            ));
        }
        Q {
            n,
            k,
            format,
            weight: bytemuck::cast_slice(&codes).to_vec(),
            scales,
            biases,
            dense,
        }
    }

    pub fn data(&self) -> MatrixData<'_> {
        MatrixData {
            n: self.n,
            k: self.k,
            format: self.format,
            weight: &self.weight,
            scales: &self.scales,
            biases: &self.biases,
        }
    }

    /// x · Wᵀ for `t` rows of x ([t, k]) in f64: (values [t, n], Σ|x·w| [t, n] for tolerances).
    pub fn cpu_matmul(&self, x: &[f32], t: usize) -> (Vec<f32>, Vec<f32>) {
        let (n, k) = (self.n, self.k);
        let (mut want, mut mag) = (vec![0f32; t * n], vec![0f32; t * n]);
        for ti in 0..t {
            for r in 0..n {
                let (mut s, mut a) = (0f64, 0f64);
                for j in 0..k {
                    let v = x[ti * k + j] as f64 * self.dense[r * k + j] as f64;
                    s += v;
                    a += v.abs();
                }
                want[ti * n + r] = s as f32;
                mag[ti * n + r] = a as f32;
            }
        }
        (want, mag)
    }
}

/// The values y starts from in [`run_matmul`] (so a residual add is visible).
pub fn start_y(len: usize) -> Vec<f32> {
    (0..len).map(|i| (i % 5) as f32 * 0.5).collect()
}

/// `y` with [`start_y`] taken away: what a residual-add matmul added.
pub fn added(y: &[f32]) -> Vec<f32> {
    y.iter().zip(start_y(y.len())).map(|(v, a)| v - a).collect()
}

/// One matmul call as the kernel tests make it.
#[derive(Clone, Copy)]
pub struct MmCall<'a> {
    /// `t` rows of `stride` values; the input starts at column `col`.
    pub x: &'a [f32],
    pub t: usize,
    pub stride: usize,
    pub col: usize,
    /// Token tile (`MT_ONE`, `MT_SMALL`, `MT_PREFILL`).
    pub mt: u32,
    pub add: bool,
    pub swiglu: bool,
    /// Fold an RMSNorm (weight [k], epsilon) into the matmul (`matmul_normed`), or with
    /// `planes` into the xquant dispatch.
    pub norm: Option<(&'a [f32], f32)>,
    /// x goes through `xquant` (one dispatch) and the matmul takes its integer planes
    /// (`matmul_xq`).
    pub planes: bool,
}

impl<'a> MmCall<'a> {
    /// `t` rows of `k` values, no add, no SwiGLU, no norm.
    pub fn new(x: &'a [f32], t: usize, k: usize, mt: u32) -> Self {
        MmCall {
            x,
            t,
            stride: k,
            col: 0,
            mt,
            add: false,
            swiglu: false,
            norm: None,
            planes: false,
        }
    }
}

/// The prompt GEMM dispatches of `m` for chunks of up to `t` tokens (no add, no SwiGLU): each
/// one's token range ([`qwgpu_engine::gpu::Grid::for_tokens`]) and the tokens of its tile.
pub fn prompt_forms(gpu: &Gpu, m: &Matrix, t: usize) -> Vec<((u32, u32), u32)> {
    let x = gpu.storage("x", (t * m.k as usize * 4) as u64).unwrap();
    let y = gpu.storage("y", (t * m.n as usize * 4) as u64).unwrap();
    let step = crate::step_buffer(gpu, Default::default());
    let slot = StepSlot {
        buf: &step,
        offset: 0,
    };
    let opts = MatmulOpts {
        rows: Rows::Tokens,
        add: false,
        mt: qwgpu_engine::ops::matmul::MT_PREFILL,
        swiglu: false,
    };
    let ds = pollster::block_on(matmul(
        gpu,
        m,
        Act::new(&x, m.k),
        Act::new(&y, m.n),
        slot,
        opts,
    ))
    .unwrap();
    ds.iter()
        .filter(|d| d.label.starts_with("matmul "))
        .map(|d| (d.grid.tokens, d.grid.tile))
        .collect()
}

/// Runs `c` on `m` and returns y ([t, n], or [t, n / 2] with SwiGLU) as written, starting from
/// [`start_y`].
pub fn run_matmul(gpu: &Gpu, m: &Matrix, c: MmCall<'_>) -> Vec<f32> {
    let ny = if c.swiglu { m.n / 2 } else { m.n } as usize;
    let xb = crate::upload_f32(gpu, "x", c.x);
    let yb = crate::upload_f32(gpu, "y", &start_y(c.t * ny));
    let sb = crate::step_buffer(
        gpu,
        Step {
            n_tokens: c.t as u32,
            pos: 0,
            n_confirmed: 0,
            n_out: 1,
            force: 0,
            rollback: 0,
            ..Default::default()
        },
    );
    let slot = StepSlot {
        buf: &sb,
        offset: 0,
    };
    let opts = MatmulOpts {
        rows: Rows::Tokens,
        add: c.add,
        mt: c.mt,
        swiglu: c.swiglu,
    };
    let x = Act::at(&xb, c.stride as u32, c.col as u32);
    let y = Act::new(&yb, ny as u32);
    if c.planes {
        let k = m.k;
        let qb = gpu
            .storage("xq", c.t as u64 * qwgpu_engine::ops::xquant::row_bytes(k))
            .unwrap();
        let wb = c.norm.map(|(w, _)| crate::upload_f32(gpu, "norm_w", w));
        let norm = c.norm.zip(wb.as_ref()).map(|((_, eps), b)| (b, eps));
        let mut d = vec![pollster::block_on(qwgpu_engine::ops::xquant::xquant(
            gpu, k, x, norm, &qb, c.t as u32, slot, false,
        ))
        .unwrap_or_else(|e| panic!("xquant for {}: {e}", m.name))];
        d.extend(
            pollster::block_on(matmul_xq(gpu, m, &qb, y, slot, opts, None))
                .unwrap_or_else(|e| panic!("matmul_xq {}: {e}", m.name)),
        );
        crate::run(
            gpu,
            &d,
            StepShape {
                n_tokens: c.t as u32,
                n_out: 1,
                keys: 0,
            },
        );
        return crate::read_f32(gpu, &yb, c.t * ny);
    }
    let d = match c.norm {
        Some((w, eps)) => {
            let wb = crate::upload_f32(gpu, "norm_w", w);
            pollster::block_on(matmul_normed(gpu, m, x, &wb, eps, y, slot, opts))
        }
        None => pollster::block_on(matmul(gpu, m, x, y, slot, opts)),
    }
    .unwrap_or_else(|e| panic!("matmul {}: {e}", m.name));
    crate::run(
        gpu,
        &d,
        StepShape {
            n_tokens: c.t as u32,
            n_out: 1,
            keys: 0,
        },
    );
    crate::read_f32(gpu, &yb, c.t * ny)
}
