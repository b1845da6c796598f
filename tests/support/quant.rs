//! Random quantized matrices for the matmul kernel tests: MLX affine codes, scales and biases
//! from [`quantize_row`], and the dense weights the GPU sees (scales and biases rounded to their
//! storage type) for CPU references.

use qwgpu_engine::ops::matrix::MatrixData;
use qwgpu_engine::quant::{
    decode_floats, dequantize_row, encode_floats, quantize_row, WeightFormat,
};

use crate::Rng;

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
