//! Weight matrices on the GPU, split by rows into chunks that each fit one storage binding
//! (browsers cap a binding at 128 MiB or so; lavapipe does too), so a 248,320-row lm_head or
//! embedding works everywhere. The model never sees the format: it asks for a matmul.

use crate::gpu::{Gpu, GpuBuffer, GpuError};
use crate::quant::WeightFormat;

/// Host bytes of one matrix [n, k] as stored in the checkpoint (little-endian).
pub struct MatrixData<'a> {
    pub n: usize,
    pub k: usize,
    pub format: WeightFormat,
    /// Packed codes (affine) or the dense values, row-major.
    pub weight: &'a [u8],
    /// Affine only: [n, k / group] scales and biases.
    pub scales: &'a [u8],
    pub biases: &'a [u8],
}

/// Rows [row0, row0 + rows) of a matrix, each tensor in its own buffer.
pub struct MatrixChunk {
    pub row0: u32,
    pub rows: u32,
    pub weight: GpuBuffer,
    pub scales: Option<GpuBuffer>,
    pub biases: Option<GpuBuffer>,
}

/// A weight matrix [n, k] on the GPU.
pub struct Matrix {
    pub name: String,
    pub n: u32,
    pub k: u32,
    pub format: WeightFormat,
    pub chunks: Vec<MatrixChunk>,
}

impl Matrix {
    /// Elements per 16-byte block for the matmul kernel; `k` must be a multiple of it.
    pub fn block_elems(format: &WeightFormat) -> Option<usize> {
        match *format {
            WeightFormat::Affine { bits: 4, .. } => Some(32),
            WeightFormat::Affine { bits: 8, .. } => Some(16),
            WeightFormat::Affine { .. } => None,
            WeightFormat::Dense(t) => Some(16 / t.size()),
        }
    }

    /// Bytes the matrix occupies on the GPU.
    pub fn bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| c.weight.size + c.scales.as_ref().map_or(0, |b| b.size) + c.biases.as_ref().map_or(0, |b| b.size))
            .sum()
    }

    /// Uploads `data`, splitting rows so that every chunk's tensors fit `gpu.caps.max_binding`.
    pub fn upload(gpu: &Gpu, name: &str, data: &MatrixData<'_>) -> Result<Matrix, GpuError> {
        let (n, k) = (data.n, data.k);
        let bad = |msg: String| GpuError::Shader { name: format!("matrix {name}"), message: msg };
        let be = Matrix::block_elems(&data.format)
            .ok_or_else(|| bad(format!("{} has no GPU kernel yet", data.format.describe())))?;
        if k % be != 0 {
            return Err(bad(format!("in_features {k} is not a multiple of {be} for {}", data.format.describe())));
        }
        let row_bytes = data.format.row_bytes(k);
        if data.weight.len() != n * row_bytes {
            return Err(bad(format!("weight has {} bytes, expected {}", data.weight.len(), n * row_bytes)));
        }
        let srow = match data.format {
            WeightFormat::Affine { group, scale, .. } => {
                if k % group as usize != 0 {
                    return Err(bad(format!("in_features {k} is not a multiple of group size {group}")));
                }
                let sb = (k / group as usize) * scale.size();
                if data.scales.len() != n * sb || data.biases.len() != n * sb {
                    return Err(bad(format!(
                        "scales/biases have {}/{} bytes, expected {} each",
                        data.scales.len(),
                        data.biases.len(),
                        n * sb
                    )));
                }
                sb
            }
            WeightFormat::Dense(_) => 0,
        };
        let widest = row_bytes.max(srow) as u64;
        let cap = gpu.caps.max_binding.min(gpu.caps.max_buffer);
        // Multiple of 8 rows: keeps 16-bit scale rows word-aligned and the matmul row tiles whole.
        let mut per = ((cap / widest.max(1)) as usize / 8) * 8;
        if per == 0 {
            return Err(GpuError::TooLarge { what: format!("one row of {name}"), needed: widest * 8, limit: cap });
        }
        per = per.min(n.max(1));
        let mut chunks = Vec::new();
        let mut r = 0;
        while r < n {
            let rows = per.min(n - r);
            let label = if n <= per { name.to_string() } else { format!("{name}[{r}..{}]", r + rows) };
            let weight = gpu.storage_init(&label, &data.weight[r * row_bytes..(r + rows) * row_bytes])?;
            let (scales, biases) = if srow > 0 {
                (
                    Some(gpu.storage_init(&format!("{label}.scales"), &data.scales[r * srow..(r + rows) * srow])?),
                    Some(gpu.storage_init(&format!("{label}.biases"), &data.biases[r * srow..(r + rows) * srow])?),
                )
            } else {
                (None, None)
            };
            chunks.push(MatrixChunk { row0: r as u32, rows: rows as u32, weight, scales, biases });
            r += rows;
        }
        Ok(Matrix { name: name.to_string(), n: n as u32, k: k as u32, format: data.format, chunks })
    }
}
