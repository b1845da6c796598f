//! Safetensors checkpoints: one file or many shards (with `model.safetensors.index.json`),
//! memory-mapped natively or held as bytes (browser). Tensor names are normalized to the MLX
//! layout (`language_model.…`); raw Hugging Face checkpoints are detected and mapped (spec §2.2).

use std::collections::{BTreeMap, HashMap};

use crate::error::LoadError;
use crate::quant::FloatType;

/// Bytes of one file: a read-only memory map natively, or owned bytes.
pub enum Blob {
    #[cfg(not(target_arch = "wasm32"))]
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Blob::Mmap(m) => m,
            Blob::Owned(v) => v,
        }
    }
}

/// Element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    Float(FloatType),
    U32,
    Other(safetensors::Dtype),
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dtype::Float(t) => write!(f, "{}", t.name()),
            Dtype::U32 => write!(f, "U32"),
            Dtype::Other(d) => write!(f, "{d:?}"),
        }
    }
}

fn dtype_of(d: safetensors::Dtype) -> Dtype {
    match d {
        safetensors::Dtype::F32 => Dtype::Float(FloatType::F32),
        safetensors::Dtype::F16 => Dtype::Float(FloatType::F16),
        safetensors::Dtype::BF16 => Dtype::Float(FloatType::BF16),
        safetensors::Dtype::U32 => Dtype::U32,
        other => Dtype::Other(other),
    }
}

/// Where a tensor lives.
#[derive(Clone, Debug)]
pub struct TensorMeta {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range in the file.
    pub start: usize,
    pub end: usize,
    /// The name in the file (before normalization).
    pub stored_name: String,
}

/// A tensor's bytes and description.
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub file: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
}

impl TensorRef<'_> {
    /// The values as f32 (float tensors only).
    pub fn to_f32(&self) -> Result<Vec<f32>, LoadError> {
        match self.dtype {
            Dtype::Float(t) => Ok(crate::quant::decode_floats(t, self.bytes)),
            d => Err(LoadError::Dtype {
                tensor: self.name.into(),
                file: self.file.into(),
                expected: "F32, F16 or BF16".into(),
                found: d.to_string(),
            }),
        }
    }
}

/// The layout the checkpoint was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Layout {
    /// mlx-lm convert output: already sanitized (norms hold 1 + w, conv [C, K, 1]).
    Mlx,
    /// Raw Hugging Face: zero-centred norms (+1 at load), conv [C, 1, K].
    HuggingFace,
}

/// An opened checkpoint: every tensor header validated, data not yet read.
pub struct Checkpoint {
    pub files: Vec<(String, Blob)>,
    pub tensors: BTreeMap<String, TensorMeta>,
    pub layout: Layout,
    /// Tensors skipped on purpose (vision tower), by stored name.
    pub skipped: Vec<String>,
}

/// MLX name for a stored name (mlx-lm `Model.sanitize`), or None for vision weights.
pub fn normalize_name(name: &str) -> Option<String> {
    if name.starts_with("vision_tower") || name.starts_with("model.visual") {
        return None;
    }
    if let Some(rest) = name.strip_prefix("model.language_model") {
        return Some(format!("language_model.model{rest}"));
    }
    if name.starts_with("language_model.") {
        return Some(name.to_string());
    }
    Some(format!("language_model.{name}"))
}

/// The norm weights mlx-lm's sanitize shifts by +1 in a raw HF checkpoint (spec §2.2).
pub fn is_shifted_norm(name: &str) -> bool {
    const SUFFIXES: [&str; 8] = [
        ".input_layernorm.weight",
        ".post_attention_layernorm.weight",
        "model.norm.weight",
        ".q_norm.weight",
        ".k_norm.weight",
        ".pre_fc_norm_hidden.weight",
        ".pre_fc_norm_embedding.weight",
        "mtp.norm.weight",
    ];
    SUFFIXES.iter().any(|s| name.ends_with(s))
}

impl Checkpoint {
    /// Parses and validates the headers of `files` (name, bytes). Checks every tensor's byte range
    /// against its dtype and shape and the file size (a truncated file fails here), and
    /// cross-checks `index` (the text of model.safetensors.index.json) when given.
    pub fn from_blobs(
        files: Vec<(String, Blob)>,
        index: Option<(&str, &str)>,
    ) -> Result<Checkpoint, LoadError> {
        if files.is_empty() {
            return Err(LoadError::Io {
                path: "checkpoint".into(),
                message: "no model*.safetensors files found".into(),
            });
        }
        let mut tensors = BTreeMap::new();
        let mut skipped = Vec::new();
        let mut by_stored: HashMap<String, usize> = HashMap::new();
        for (fi, (fname, blob)) in files.iter().enumerate() {
            let bad = |m: String| LoadError::Safetensors {
                file: fname.clone(),
                message: m,
            };
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(blob)
                .map_err(|e| bad(describe_st_error(&e, blob.len(), blob)))?;
            let data_start = 8 + header_len;
            let data_len = blob.len().saturating_sub(data_start);
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                if e > data_len {
                    return Err(bad(format!(
                        "tensor '{name}' needs bytes {s}..{e} of the data section but the file holds only {data_len} (truncated file?)"
                    )));
                }
                let elems: usize = info.shape.iter().product();
                let bits = info.dtype.bitsize();
                if elems * bits / 8 != e - s {
                    return Err(bad(format!(
                        "tensor '{name}' of shape {:?} {:?} should occupy {} bytes, header says {}",
                        info.shape,
                        info.dtype,
                        elems * bits / 8,
                        e - s
                    )));
                }
                by_stored.insert(name.clone(), fi);
                let Some(norm) = normalize_name(&name) else {
                    skipped.push(name.clone());
                    continue;
                };
                if tensors.contains_key(&norm) {
                    return Err(bad(format!(
                        "tensor '{name}' appears twice in the checkpoint"
                    )));
                }
                tensors.insert(
                    norm,
                    TensorMeta {
                        file: fi,
                        dtype: dtype_of(info.dtype),
                        shape: info.shape.clone(),
                        start: data_start + s,
                        end: data_start + e,
                        stored_name: name.clone(),
                    },
                );
            }
        }
        if let Some((iname, itext)) = index {
            let bad = |m: String| LoadError::Index {
                file: iname.to_string(),
                message: m,
            };
            let v: serde_json::Value =
                serde_json::from_str(itext).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad("no `weight_map` object".into()))?;
            for (tname, f) in map {
                let f = f.as_str().ok_or_else(|| {
                    bad(format!("weight_map entry for '{tname}' is not a file name"))
                })?;
                let Some(fi) = files.iter().position(|(n, _)| n == f) else {
                    return Err(bad(format!(
                        "lists '{tname}' in '{f}', but that file is missing"
                    )));
                };
                match by_stored.get(tname) {
                    Some(&actual) if actual == fi => {}
                    Some(&actual) => {
                        return Err(bad(format!(
                            "lists '{tname}' in '{f}', but it is in '{}'",
                            files[actual].0
                        )))
                    }
                    None => {
                        return Err(bad(format!(
                            "lists '{tname}' in '{f}', but no file contains it"
                        )))
                    }
                }
            }
        }
        // Raw HF is recognised as mlx-lm does: a conv1d weight whose last dim is not 1.
        let hf = tensors
            .iter()
            .any(|(n, m)| n.contains("conv1d.weight") && m.shape.last().copied().unwrap_or(1) != 1);
        Ok(Checkpoint {
            files,
            tensors,
            layout: if hf { Layout::HuggingFace } else { Layout::Mlx },
            skipped,
        })
    }

    /// Opens `dir` natively: memory-maps every `model*.safetensors` file (as mlx-lm loads them).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: &std::path::Path) -> Result<Checkpoint, LoadError> {
        Self::open_dir(dir, true)
    }

    /// [`Checkpoint::open`] without the index cross-check: the shards that are present, when
    /// only some were downloaded (`qwgpu convert --add-mtp-to` needs only those with `mtp.*`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_present(dir: &std::path::Path) -> Result<Checkpoint, LoadError> {
        Self::open_dir(dir, false)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn open_dir(dir: &std::path::Path, check_index: bool) -> Result<Checkpoint, LoadError> {
        let io = |p: &std::path::Path, e: std::io::Error| LoadError::Io {
            path: p.display().to_string(),
            message: e.to_string(),
        };
        let rd = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("model") && n.ends_with(".safetensors"))
            .collect();
        names.sort();
        let mut files = Vec::new();
        for n in names {
            let p = dir.join(&n);
            let f = std::fs::File::open(&p).map_err(|e| io(&p, e))?;
            // SAFETY: the map is read-only; a file changed underneath us while loading is a user
            // error we cannot detect, as with any mmap-based loader.
            let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| io(&p, e))?;
            files.push((n, Blob::Mmap(m)));
        }
        if files.is_empty() {
            return Err(LoadError::Io {
                path: dir.display().to_string(),
                message: "no model*.safetensors files in this directory".into(),
            });
        }
        let ipath = dir.join("model.safetensors.index.json");
        let itext = match std::fs::read_to_string(&ipath) {
            Ok(t) if check_index => Some(t),
            Ok(_) => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&ipath, e)),
        };
        Checkpoint::from_blobs(
            files,
            itext
                .as_deref()
                .map(|t| ("model.safetensors.index.json", t)),
        )
    }

    pub fn get(&self, name: &str) -> Option<TensorRef<'_>> {
        let (key, m) = self.tensors.get_key_value(name)?;
        let (fname, blob) = &self.files[m.file];
        Some(TensorRef {
            name: key,
            file: fname,
            dtype: m.dtype,
            shape: &m.shape,
            bytes: &blob[m.start..m.end],
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn file_of(&self, name: &str) -> &str {
        self.tensors
            .get(name)
            .map(|m| self.files[m.file].0.as_str())
            .unwrap_or("the checkpoint")
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|m| (m.end - m.start) as u64)
            .sum()
    }
}

/// The byte count of tensor data a safetensors header describes (for error messages).
fn described_data_bytes(blob: &[u8]) -> Option<(usize, usize)> {
    let n = u64::from_le_bytes(blob.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(blob.get(8..8 + n)?).ok()?;
    let end = header
        .as_object()?
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()?;
    Some((end as usize, blob.len().saturating_sub(8 + n)))
}

fn describe_st_error(e: &safetensors::SafeTensorError, len: usize, blob: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => match described_data_bytes(blob) {
            Some((want, have)) => format!("the header describes {want} bytes of tensor data but the file holds only {have} (truncated file?)"),
            None => "the header describes more tensor data than the file holds (truncated file?)".into(),
        },
        E::HeaderTooSmall => format!("the file is {len} bytes, too short for a safetensors header (truncated or empty)"),
        E::InvalidHeaderLength => format!("the header length does not fit in the file's {len} bytes (truncated or not safetensors)"),
        other => format!("{other:?}"),
    }
}
