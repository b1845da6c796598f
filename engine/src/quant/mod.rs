//! Weight formats, without GPU code. The scalar functions here are the test oracles of the kernels.
//!
//! MLX affine quantization (spec §3.1, MLX `backend/cpu/quantized.cpp`): a row of K weights is a
//! little-endian bit stream of `bits`-bit codes packed in u32 words (code j at bits
//! [j·b, (j+1)·b) of the row, lowest first); each group of `group_size` consecutive weights has a
//! scale s and a bias β with w = s·q + β. Scales may be negative.

use half::{bf16, f16};

/// Storage type of a float tensor as found in a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FloatType {
    F32,
    F16,
    BF16,
}

impl FloatType {
    pub fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }
    /// `v` rounded to this type (round to nearest even), as f32.
    pub fn round(self, v: f32) -> f32 {
        match self {
            FloatType::F32 => v,
            FloatType::F16 => f16::from_f32(v).to_f32(),
            FloatType::BF16 => bf16::from_f32(v).to_f32(),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            FloatType::F32 => "F32",
            FloatType::F16 => "F16",
            FloatType::BF16 => "BF16",
        }
    }
}

/// How one weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum WeightFormat {
    /// MLX affine: codes of `bits` bits, one scale and one bias (of type `scale`) per `group` weights.
    Affine {
        bits: u32,
        group: u32,
        scale: FloatType,
    },
    /// Unquantized.
    Dense(FloatType),
}

impl WeightFormat {
    /// Bytes of one row of `k` weights (codes only for affine).
    pub fn row_bytes(&self, k: usize) -> usize {
        match *self {
            WeightFormat::Affine { bits, .. } => k * bits as usize / 8,
            WeightFormat::Dense(t) => k * t.size(),
        }
    }
    /// Average bits per weight including scales and biases.
    pub fn bits_per_weight(&self) -> f64 {
        match *self {
            WeightFormat::Affine { bits, group, scale } => {
                bits as f64 + 2.0 * 8.0 * scale.size() as f64 / group as f64
            }
            WeightFormat::Dense(t) => 8.0 * t.size() as f64,
        }
    }
    /// The format the GPU kernels hold this matrix in: affine codes of 2 or 3 bits widened to
    /// 4, of 5 to 7 bits to 8 (the kernels take 4- and 8-bit codes); the codes, scales and biases
    /// are unchanged, so every weight keeps its value. Others as stored.
    pub fn on_gpu(&self) -> WeightFormat {
        match *self {
            WeightFormat::Affine { bits, group, scale } => WeightFormat::Affine {
                bits: if bits <= 4 { 4 } else { 8 },
                group,
                scale,
            },
            f => f,
        }
    }
    pub fn describe(&self) -> String {
        match *self {
            WeightFormat::Affine { bits, group, scale } => {
                format!("affine {bits}-bit, group {group}, {} scales", scale.name())
            }
            WeightFormat::Dense(t) => format!("dense {}", t.name()),
        }
    }
}

/// Decodes float values of type `t` from little-endian bytes.
pub fn decode_floats(t: FloatType, bytes: &[u8]) -> Vec<f32> {
    match t {
        FloatType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        FloatType::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        FloatType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

/// Encodes f32 values as type `t` (round to nearest even), little-endian.
pub fn encode_floats(t: FloatType, values: &[f32]) -> Vec<u8> {
    match t {
        FloatType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        FloatType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        FloatType::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Code `j` of a packed row (any bits in 2..=8).
pub fn code_at(row: &[u32], bits: u32, j: usize) -> u32 {
    let bit = j * bits as usize;
    let (w, s) = (bit / 32, (bit % 32) as u32);
    let mask = (1u32 << bits) - 1;
    let mut v = row[w] >> s;
    if s + bits > 32 {
        v |= row[w + 1] << (32 - s);
    }
    v & mask
}

/// Packs codes (each < 2^bits) LSB-first into u32 words.
pub fn pack_codes(codes: &[u32], bits: u32) -> Vec<u32> {
    let total_bits = codes.len() * bits as usize;
    let mut out = vec![0u32; total_bits.div_ceil(32)];
    for (j, &c) in codes.iter().enumerate() {
        let bit = j * bits as usize;
        let (w, s) = (bit / 32, (bit % 32) as u32);
        out[w] |= c << s;
        if s + bits > 32 {
            out[w + 1] |= c >> (32 - s);
        }
    }
    out
}

/// Re-packs the `k` codes of one row stored with `from` bits (`src`: MLX's LSB-first stream in
/// little-endian words) as codes of `to` bits, 4 or 8 (>= `from`), into `dst` (`k · to / 8`
/// bytes): the same codes, in the layout the 4- and 8-bit kernels read ([`WeightFormat::on_gpu`]).
/// Bytes missing from a short `src` read as zero codes (the loader checks sizes first).
pub fn widen_codes(src: &[u8], from: u32, to: u32, k: usize, dst: &mut [u8]) {
    let mask = (1u64 << from) - 1;
    let mut acc = 0u64;
    let mut have = 0u32;
    let mut bytes = src.iter();
    for j in 0..k.min(dst.len() * 8 / to as usize) {
        while have < from {
            acc |= (*bytes.next().unwrap_or(&0) as u64) << have;
            have += 8;
        }
        let c = (acc & mask) as u8;
        acc >>= from;
        have -= from;
        if to == 8 {
            dst[j] = c;
        } else if j % 2 == 0 {
            dst[j / 2] = c;
        } else {
            dst[j / 2] |= c << 4;
        }
    }
}

/// Dequantizes one row: `codes` holds the row's packed words, `scales`/`biases` its groups.
pub fn dequantize_row(
    codes: &[u32],
    scales: &[f32],
    biases: &[f32],
    bits: u32,
    group: usize,
    k: usize,
) -> Vec<f32> {
    (0..k)
        .map(|j| scales[j / group] * code_at(codes, bits, j) as f32 + biases[j / group])
        .collect()
}

/// MLX's affine quantizer's scale and bias for one group of weights (spec §3.1, MLX
/// `backend/cpu/quantized.cpp`, whose arithmetic this follows operation for operation, so a
/// converter gives its bytes): the scale can come out negative and the bias is an edge of the
/// group, not always its minimum.
pub fn affine_group(g: &[f32], bits: u32) -> (f32, f32) {
    let n_bins = ((1u32 << bits) - 1) as f32;
    let mut w_min = f32::INFINITY;
    let mut w_max = f32::NEG_INFINITY;
    for &v in g {
        // std::max / std::min: the first argument unless the second compares greater (less).
        if w_max < v {
            w_max = v;
        }
        if v < w_min {
            w_min = v;
        }
    }
    let mask = w_min.abs() > w_max.abs();
    let mut scale = ((w_max - w_min) / n_bins).max(1e-7);
    if !mask {
        scale = -scale;
    }
    let edge = if mask { w_min } else { w_max };
    let q0 = (edge / scale).round_ties_even();
    if q0 != 0.0 {
        (edge / q0, edge)
    } else {
        (scale, 0.0)
    }
}

/// The code of weight `v` in a group quantized as (scale, bias) by [`affine_group`].
pub fn affine_code(v: f32, scale: f32, bias: f32, bits: u32) -> u32 {
    let n_bins = ((1u32 << bits) - 1) as f32;
    ((v - bias) / scale).round_ties_even().clamp(0.0, n_bins) as u32
}

/// MLX's affine quantizer for one row (spec §3.1): packed codes, scales and biases per group.
pub fn quantize_row(w: &[f32], bits: u32, group: usize) -> (Vec<u32>, Vec<f32>, Vec<f32>) {
    let mut codes = Vec::with_capacity(w.len());
    let mut scales = Vec::new();
    let mut biases = Vec::new();
    for g in w.chunks(group) {
        let (scale, bias) = affine_group(g, bits);
        codes.extend(g.iter().map(|&v| affine_code(v, scale, bias, bits)));
        scales.push(scale);
        biases.push(bias);
    }
    (pack_codes(&codes, bits), scales, biases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_roundtrip_all_bits() {
        for bits in [2u32, 3, 4, 5, 6, 8] {
            let codes: Vec<u32> = (0..96u32).map(|i| (i * 7 + 3) % (1 << bits)).collect();
            let packed = pack_codes(&codes, bits);
            assert_eq!(packed.len(), 96 * bits as usize / 32);
            for (j, &c) in codes.iter().enumerate() {
                assert_eq!(code_at(&packed, bits, j), c, "bits {bits} j {j}");
            }
        }
    }

    #[test]
    fn widened_codes_are_the_stored_codes() {
        // Every MLX width, rows that end inside a word: the widened row read as 4- or 8-bit
        // codes gives the codes the packed row holds.
        for bits in [2u32, 3, 4, 5, 6, 8] {
            let to = WeightFormat::Affine {
                bits,
                group: 32,
                scale: FloatType::F16,
            }
            .on_gpu();
            let WeightFormat::Affine { bits: to, .. } = to else {
                unreachable!()
            };
            for k in [32usize, 96, 160] {
                let codes: Vec<u32> = (0..k as u32).map(|i| (i * 11 + 5) % (1 << bits)).collect();
                let src: Vec<u8> = bytemuck::cast_slice(&pack_codes(&codes, bits)).to_vec();
                let mut dst = vec![0xAAu8; k * to as usize / 8];
                widen_codes(&src, bits, to, k, &mut dst);
                let words: Vec<u32> = dst
                    .chunks(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                for (j, &c) in codes.iter().enumerate() {
                    assert_eq!(
                        code_at(&words, to, j),
                        c,
                        "{bits} bits to {to}, k {k}, j {j}"
                    );
                }
            }
        }
    }

    #[test]
    fn four_bit_layout_is_lowest_nibble_first() {
        // Spec §3.1: code j of a 4-bit row is word j/8, bits 4·(j%8).
        let packed = pack_codes(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
        assert_eq!(packed[0], 0x8765_4321);
        assert_eq!(packed[1], 9);
    }

    #[test]
    fn quantizer_reconstructs_within_half_step() {
        let w: Vec<f32> = (0..128)
            .map(|i| ((i as f32) * 0.37).sin() * 0.1 - 0.02)
            .collect();
        for bits in [4u32, 8] {
            let (codes, s, b) = quantize_row(&w, bits, 64);
            let back = dequantize_row(&codes, &s, &b, bits, 64, 128);
            for (g, chunk) in w.chunks(64).enumerate() {
                let step = s[g].abs();
                for (i, v) in chunk.iter().enumerate() {
                    assert!((back[g * 64 + i] - v).abs() <= step * 0.5 + 1e-6);
                }
            }
        }
    }
}
