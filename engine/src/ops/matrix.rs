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

impl MatrixData<'_> {
    /// Whether `other` can be stacked under `self` into one matrix: the same in_features and the
    /// same format on the GPU (bits there, group size and scale type, or dense type).
    pub fn stacks_with(&self, other: &MatrixData<'_>) -> bool {
        self.k == other.k && self.format.on_gpu() == other.format.on_gpu()
    }

    /// Bytes as stored in the checkpoint.
    pub fn bytes(&self) -> u64 {
        (self.weight.len() + self.scales.len() + self.biases.len()) as u64
    }

    /// Bytes on the GPU: more than stored where narrow codes are widened
    /// ([`WeightFormat::on_gpu`]).
    pub fn gpu_bytes(&self) -> u64 {
        (self.n * self.format.on_gpu().row_bytes(self.k) + self.scales.len() + self.biases.len())
            as u64
    }

    /// Rows [a, b) of the codes (or dense values) in the GPU's format
    /// ([`WeightFormat::on_gpu`]): the stored bytes where the formats agree, else the rows
    /// widened (on every core natively).
    fn rows_on_gpu(&self, a: usize, b: usize) -> std::borrow::Cow<'_, [u8]> {
        let from = self.format.row_bytes(self.k);
        let (bits, to) = match (self.format, self.format.on_gpu()) {
            (WeightFormat::Affine { bits, .. }, WeightFormat::Affine { bits: to, .. })
                if bits != to =>
            {
                (bits, to)
            }
            _ => return std::borrow::Cow::Borrowed(&self.weight[a * from..b * from]),
        };
        let width = self.format.on_gpu().row_bytes(self.k);
        let mut out = vec![0u8; (b - a) * width];
        let widen = |rows: &mut [u8], r0: usize| {
            for (i, dst) in rows.chunks_mut(width).enumerate() {
                let r = r0 + i;
                crate::quant::widen_codes(
                    &self.weight[r * from..(r + 1) * from],
                    bits,
                    to,
                    self.k,
                    dst,
                );
            }
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let per = (b - a).div_ceil(threads.max(1)).max(1);
            std::thread::scope(|sc| {
                for (t, part) in out.chunks_mut(per * width).enumerate() {
                    let widen = &widen;
                    sc.spawn(move || widen(part, a + t * per));
                }
            });
        }
        #[cfg(target_arch = "wasm32")]
        widen(&mut out, a);
        std::borrow::Cow::Owned(out)
    }
}

/// Rows [a, b) of a tensor of `n` equal rows (scales, biases: stored as the GPU takes them).
fn rows_of(t: &[u8], n: usize, a: usize, b: usize) -> std::borrow::Cow<'_, [u8]> {
    let w = t.len() / n.max(1);
    std::borrow::Cow::Borrowed(&t[a * w..b * w])
}

/// Rows of a matrix widened at a time while uploading ([`MatrixData::rows_on_gpu`]): at most
/// this many bytes of them in host memory.
const WIDEN_BLOCK_BYTES: usize = 32 << 20;

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
            .map(|c| {
                c.weight.size
                    + c.scales.as_ref().map_or(0, |b| b.size)
                    + c.biases.as_ref().map_or(0, |b| b.size)
            })
            .sum()
    }

    /// Uploads `data`, splitting rows so that every chunk's tensors fit `gpu.caps.max_binding`.
    pub fn upload(gpu: &Gpu, name: &str, data: &MatrixData<'_>) -> Result<Matrix, GpuError> {
        Matrix::upload_stacked(gpu, name, &[(name, data)])
    }

    /// Uploads `parts` (each `(name, data)`) as one matrix whose rows are theirs in order, split
    /// into chunks like [`Matrix::upload`] (a chunk may span parts). Linear maps of one input
    /// whose outputs lie side by side (q | k | v) then take one dispatch per chunk instead of one
    /// per part, with the same values: a row's arithmetic does not depend on the rows that share
    /// its call. Every part must have the same in_features and format ([`MatrixData::stacks_with`]).
    /// Chunks are filled from the parts' bytes directly (no host copy of the stack).
    pub fn upload_stacked<'a>(
        gpu: &Gpu,
        name: &str,
        parts: &[(&str, &MatrixData<'a>)],
    ) -> Result<Matrix, GpuError> {
        Matrix::upload_rows(gpu, name, parts, false)
    }

    /// Uploads two matrices of the same shape and format with their rows interleaved: row 2i is
    /// `a`'s row i, row 2i + 1 is `b`'s. With gate and up this lets one matmul compute both for
    /// a row pair and write the SwiGLU directly (`MatmulOpts::swiglu`). Chunks start at even rows.
    pub fn upload_interleaved<'a>(
        gpu: &Gpu,
        name: &str,
        a: (&str, &MatrixData<'a>),
        b: (&str, &MatrixData<'a>),
    ) -> Result<Matrix, GpuError> {
        if a.1.n != b.1.n {
            return Err(GpuError::Shader {
                name: format!("matrix {name}"),
                message: format!(
                    "cannot interleave '{}' ({} rows) with '{}' ({} rows)",
                    a.0, a.1.n, b.0, b.1.n
                ),
            });
        }
        Matrix::upload_rows(gpu, name, &[a, b], true)
    }

    /// [`Matrix::upload_stacked`], or with `interleave` (two parts of equal rows) the rows of
    /// the parts alternating.
    fn upload_rows<'a>(
        gpu: &Gpu,
        name: &str,
        parts: &[(&str, &MatrixData<'a>)],
        interleave: bool,
    ) -> Result<Matrix, GpuError> {
        let bad = |part: &str, msg: String| GpuError::Shader {
            name: format!("matrix {part}"),
            message: msg,
        };
        let Some(&(first_name, first)) = parts.first() else {
            return Err(bad(name, "no rows to upload (empty stack)".into()));
        };
        for &(pname, p) in &parts[1..] {
            if !first.stacks_with(p) {
                return Err(bad(
                    name,
                    format!(
                        "cannot stack '{pname}' ({}, in_features {}) under '{first_name}' ({}, in_features {})",
                        p.format.describe(),
                        p.k,
                        first.format.describe(),
                        first.k
                    ),
                ));
            }
        }
        // The GPU's format: narrower affine codes are widened while uploading (the same values).
        let (k, format) = (first.k, first.format.on_gpu());
        let be = Matrix::block_elems(&format)
            .ok_or_else(|| bad(name, format!("{} has no GPU kernel yet", format.describe())))?;
        if k % be != 0 {
            return Err(bad(
                name,
                format!(
                    "in_features {k} is not a multiple of {be} for {}",
                    format.describe()
                ),
            ));
        }
        let row_bytes = format.row_bytes(k);
        let srow = match format {
            WeightFormat::Affine { group, scale, .. } => {
                if k % group as usize != 0 {
                    return Err(bad(
                        name,
                        format!("in_features {k} is not a multiple of group size {group}"),
                    ));
                }
                (k / group as usize) * scale.size()
            }
            WeightFormat::Dense(_) => 0,
        };
        for &(pname, p) in parts {
            let stored = p.format.row_bytes(k);
            if p.weight.len() != p.n * stored {
                return Err(bad(
                    pname,
                    format!(
                        "weight has {} bytes, expected {}",
                        p.weight.len(),
                        p.n * stored
                    ),
                ));
            }
            if srow > 0 && (p.scales.len() != p.n * srow || p.biases.len() != p.n * srow) {
                return Err(bad(
                    pname,
                    format!(
                        "scales/biases have {}/{} bytes, expected {} each",
                        p.scales.len(),
                        p.biases.len(),
                        p.n * srow
                    ),
                ));
            }
        }
        let n: usize = parts.iter().map(|(_, p)| p.n).sum();
        let widest = row_bytes.max(srow) as u64;
        let cap = gpu.caps.max_binding.min(gpu.caps.max_buffer);
        // Multiple of 8 rows: keeps 16-bit scale rows word-aligned and the matmul row tiles whole.
        let mut per = ((cap / widest.max(1)) as usize / 8) * 8;
        if per == 0 {
            return Err(GpuError::TooLarge {
                what: format!("one row of {name}"),
                needed: widest * 8,
                limit: cap,
            });
        }
        per = per.min(n.max(1));
        // Rows [r0, r1) of the stack, `width` bytes each on the GPU, from `pick(part, a, b)` (the
        // part's rows [a, b) in the GPU's layout), taken in blocks of at most
        // WIDEN_BLOCK_BYTES.
        type Pick<'a> = for<'p> fn(&'p MatrixData<'a>, usize, usize) -> std::borrow::Cow<'p, [u8]>;
        let fill = |label: &str, r0: usize, r1: usize, width: usize, pick: Pick<'a>| {
            let block = (WIDEN_BLOCK_BYTES / width.max(1)).max(1);
            gpu.storage_with(label, ((r1 - r0) * width) as u64, |write| {
                if interleave {
                    // Rows r0.. alternate between the two parts (r0 is even): pair rows i.
                    let (i0, i1) = (r0 / 2, r1.div_ceil(2));
                    let mut i = i0;
                    while i < i1 {
                        let e = (i + block).min(i1);
                        let (x, y) = (pick(parts[0].1, i, e), pick(parts[1].1, i, e));
                        for j in i..e {
                            let o = j - i;
                            for (part, rows) in [(0, &x), (1, &y)] {
                                let r = 2 * j + part;
                                if r < r1 {
                                    write((r - r0) * width, &rows[o * width..(o + 1) * width]);
                                }
                            }
                        }
                        i = e;
                    }
                    return;
                }
                let mut start = 0;
                for &(_, p) in parts {
                    let (a, b) = (r0.max(start), r1.min(start + p.n));
                    let mut i = a;
                    while i < b {
                        let e = (i + block).min(b);
                        write((i - r0) * width, &pick(p, i - start, e - start));
                        i = e;
                    }
                    start += p.n;
                }
            })
        };
        let mut chunks = Vec::new();
        let mut r = 0;
        while r < n {
            let rows = per.min(n - r);
            let label = if n <= per {
                name.to_string()
            } else {
                format!("{name}[{r}..{}]", r + rows)
            };
            let weight = fill(&label, r, r + rows, row_bytes, |p, a, b| {
                p.rows_on_gpu(a, b)
            })?;
            let (scales, biases) = if srow > 0 {
                (
                    Some(fill(
                        &format!("{label}.scales"),
                        r,
                        r + rows,
                        srow,
                        |p, a, b| rows_of(p.scales, p.n, a, b),
                    )?),
                    Some(fill(
                        &format!("{label}.biases"),
                        r,
                        r + rows,
                        srow,
                        |p, a, b| rows_of(p.biases, p.n, a, b),
                    )?),
                )
            } else {
                (None, None)
            };
            chunks.push(MatrixChunk {
                row0: r as u32,
                rows: rows as u32,
                weight,
                scales,
                biases,
            });
            r += rows;
        }
        Ok(Matrix {
            name: name.to_string(),
            n: n as u32,
            k: k as u32,
            format,
            chunks,
        })
    }
}
