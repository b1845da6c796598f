//! `matmul.wgsl`: y[t, :] (+)= x[t, :] · Wᵀ for every weight format (spec §3.2).

use crate::gpu::{Defines, Dispatch, Gpu, GpuError, Grid, Rows, StepSlot};
use crate::ops::embed::{dense_define, scale_define};
use crate::ops::matrix::Matrix;
use crate::ops::Act;
use crate::quant::WeightFormat;

crate::gpu_struct! {
    pub struct MatmulParams as "Params" {
        /// in_features
        k: u32,
        /// rows of this chunk
        n: u32,
        /// output column of the chunk's row 0
        row0: u32,
        /// elements per x row, and the x column where the input starts (multiples of 4)
        x_stride: u32,
        x_col: u32,
        /// elements per y row
        y_stride: u32,
        groups_per_row: u32,
        group_size: u32,
        /// RMSNorm epsilon of a folded norm (`matmul_staged.wgsl` with NORM or GATED; unused
        /// otherwise).
        eps: f32,
        /// A folded gated norm (GATED): features per head, and where z is (elements per row,
        /// first column; multiples of 4).
        dv: u32,
        z_stride: u32,
        z_col: u32,
        /// A conv epilogue (CONV): conv channels (output columns below it) and taps.
        conv_dim: u32,
        taps: u32,
        /// XOUT: vec4<u32> per row of the output planes (`xquant::q_stride` of y's columns).
        xo_stride: u32,
        /// `matmul_coop.wgsl`: where the rows' scale factors start in the xsplit buffer (words).
        sig_off: u32,
    }
}

crate::gpu_struct! {
    pub struct XsplitParams as "Params" {
        /// features per row
        k: u32,
        /// elements per x row and the x column where the input starts (even)
        x_stride: u32,
        x_col: u32,
        /// word where the rows' scale factors start
        sig_off: u32,
        /// features per weight group (the pseudo-features of `XGRP`) and u32 words per row
        group: u32,
        row_words: u32,
    }
}

/// Where a matmul on integer planes also writes its outputs as integer planes ([`matmul_xq_ext`]):
/// `planes` (rows of `xquant::q_stride(columns of y)` vec4), scaled by `norm_w` (the next
/// RMSNorm's weight, whose 1/rms the reading matmul applies: [`matmul_xq_ext`]'s `norm_eps`).
#[derive(Clone, Copy)]
pub struct XqOut<'a> {
    pub planes: &'a crate::gpu::GpuBuffer,
    pub norm_w: Option<&'a crate::gpu::GpuBuffer>,
}

/// The causal conv of a Gated-DeltaNet layer taken by its input projection's epilogue
/// ([`matmul_normed_conv`]): conv weights [conv_dim, taps], the conv state and its snapshot
/// [taps - 1, conv_dim], and `out` [T, conv_dim] for silu(conv).
#[derive(Clone, Copy)]
pub struct ConvFold<'a> {
    pub conv_w: &'a crate::gpu::GpuBuffer,
    pub state: &'a crate::gpu::GpuBuffer,
    pub snap: &'a crate::gpu::GpuBuffer,
    pub out: &'a crate::gpu::GpuBuffer,
    pub conv_dim: u32,
    pub taps: u32,
}

/// What the matmul folds into its input: nothing, an RMSNorm (weight [k], epsilon), or the gated
/// RMSNorm of a Gated-DeltaNet output (weight [dv], z, dv, epsilon).
#[derive(Clone, Copy)]
enum Fold<'a> {
    None,
    Norm(&'a crate::gpu::GpuBuffer, f32),
    Gated(&'a crate::gpu::GpuBuffer, Act<'a>, u32, f32),
    /// x is integer planes ([`matmul_xq_ext`]): with the deferred RMSNorm's epsilon, and where the
    /// outputs also go as planes.
    Planes(Option<f32>, Option<XqOut<'a>>),
}

/// Rows per workgroup of the prefill tile.
pub const ROWS: u32 = 4;

/// Threads and rows per workgroup for a token tile of `mt` and `k` input features.
///
/// Decode tiles (1 and 2 tokens, block reads): 32 threads, or 128 for long rows (k >= 16384,
/// e.g. the MLP down projection), where fewer, longer workgroups win; both decode tiles of one
/// matrix use the same thread count, so each (row, token) is reduced in the same order by both
/// (bit-identical results). Rows: 8 for the 2-token verify tile (`MT_SMALL`: the codes of 8 rows
/// are unpacked once for both tokens, so a verify costs little more than a decode), 4 for the
/// 1-token decode tile (`MT_ONE`).
/// Prefill tiles (word reads, see [`words`]): 32 threads and 4 rows for every k (on an H200,
/// 32x4x8 beat 64 or 128 threads, 8 or 16 rows and 16-token tiles by 6-70 %).
/// Rows per workgroup never change a row's arithmetic.
/// Measured on an H200 (kernel lab, see the README's performance section). Retune per machine
/// with `QWGPU_MATMUL_TILE=WGxROWS` (e.g. `64x4`: the thread count of the decode tiles and the
/// rows of the 1-token tile; read once, at load) and `QWGPU_PREFILL_TILE=WGxROWSxTOKENS`.
/// `WG * ROWS * tokens` floats of workgroup memory stay within WebGPU's 16 KiB default.
pub fn tile(mt: u32, k: u32) -> (u32, u32) {
    static TILE: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    let forced = *TILE.get_or_init(|| {
        let parse = |v: String| -> Option<(u32, u32)> {
            let (a, b) = v.split_once('x')?;
            let (wg, rows) = (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?);
            let ok = wg.is_power_of_two() && (32..=128).contains(&wg) && (1..=16).contains(&rows) && rows * MT_FOUR <= wg && wg * rows * MT_FOUR * 4 <= 16384;
            ok.then_some((wg, rows))
        };
        match std::env::var("QWGPU_MATMUL_TILE") {
            Ok(v) => parse(v.clone()).or_else(|| {
                eprintln!("qwgpu: ignoring QWGPU_MATMUL_TILE={v:?}: expected WGxROWS with WG 32, 64 or 128, ROWS in 1..=16, 4*ROWS <= WG and WG*ROWS <= 1024 (every decode tile, 4 tokens included)");
                None
            }),
            Err(_) => None,
        }
    });
    let wg = forced.map_or(if k >= LONG_K { LONG_WG } else { SMALL_WG }, |f| f.0);
    match mt {
        MT_ONE => (wg, forced.map_or(ONE_ROWS, |f| f.1)),
        MT_SMALL | MT_THREE | MT_FOUR => (wg, forced.map_or(SMALL_ROWS, |f| f.1)),
        // Prefill tiles read words, which need no long workgroups for long rows.
        _ => match prefill_tile() {
            Some((pwg, rows, _)) => (pwg, rows),
            None => (SMALL_WG, ROWS),
        },
    }
}

/// A prefill tile forced with `QWGPU_PREFILL_TILE=WGxROWSxTOKENS` (kernel lab; read once).
fn prefill_tile() -> Option<(u32, u32, u32)> {
    static TILE: std::sync::OnceLock<Option<(u32, u32, u32)>> = std::sync::OnceLock::new();
    *TILE.get_or_init(|| {
        let v = std::env::var("QWGPU_PREFILL_TILE").ok()?;
        let parts: Vec<u32> = v.split('x').filter_map(|p| p.trim().parse().ok()).collect();
        match parts[..] {
            [wg, rows, mt] if wg.is_power_of_two() && (32..=128).contains(&wg) && (1..=16).contains(&rows) && (3..=32).contains(&mt) && wg * rows * mt * 4 <= 16384 => Some((wg, rows, mt)),
            _ => {
                eprintln!("qwgpu: ignoring QWGPU_PREFILL_TILE={v:?}: expected WGxROWSxTOKENS (WG 32..128, ROWS 1..16, TOKENS 3..32, WG*ROWS*TOKENS <= 4096)");
                None
            }
        }
    })
}

/// Tokens of the tile that `mt` names (the prefill tile's may be forced, see [`prefill_tile`]).
pub fn tile_tokens(mt: u32) -> u32 {
    match (mt, prefill_tile()) {
        (MT_PREFILL, Some((_, _, t))) => t,
        _ => mt,
    }
}
pub const SMALL_WG: u32 = 32;
pub const LONG_WG: u32 = 128;
pub const LONG_K: u32 = 16384;
pub const ONE_ROWS: u32 = 4;
pub const SMALL_ROWS: u32 = 8;
/// Tokens per tile: 1-token decode (`MT_ONE`), 2-token verify (`MT_SMALL`, also the lm_head and
/// MTP tiles), prefill chunks (`MT_PREFILL`). The two decode tiles compute a (row, token) with
/// the same arithmetic in the same order, so row 0 of a verify is bit-identical to a decode;
/// the prefill tile does the same for any token count, so a prompt gives the same state in
/// chunks of any size.
pub const MT_ONE: u32 = 1;
pub const MT_SMALL: u32 = 2;
/// The 4-row decode tile of a batch of four independent streams ([`crate::model::Batch`]): each
/// (row, token) with the arithmetic of the 1-token tile, so every row keeps a lone sequence's
/// bits; its own layout where the 2-token tile's would spill ([`batch_tile`]).
pub const MT_FOUR: u32 = 4;
/// The 3-row decode tile of a batch of three streams: the 4-token tile's layout for three
/// tokens (a step of three rows in the 4-token tile would pay for four: the integer-plane loop
/// runs every token of its tile).
pub const MT_THREE: u32 = 3;
/// Every decode tile, fewest tokens first.
pub const DECODE_TILES: [u32; 4] = [MT_ONE, MT_SMALL, MT_THREE, MT_FOUR];

/// Whether `mt` is a tile of a batch of three or four streams ([`MT_THREE`], [`MT_FOUR`]), which
/// share the layout knobs of the 4-token tile (mid-row and long-row layouts, the late norm).
pub fn batch_tile(mt: u32) -> bool {
    matches!(mt, MT_THREE | MT_FOUR)
}
pub const MT_PREFILL: u32 = 8;

/// Whether token tile `mt` is a decode tile (1 to 4 rows: block reads, every (row, token)
/// with the 1-token tile's arithmetic) rather than the prefill tile.
pub fn decode_tile(mt: u32) -> bool {
    DECODE_TILES.contains(&mt)
}

/// Whether quantized rows are read word by word (`QWORDS`: each thread takes code words
/// lid, lid + WG, ...; x reads coalesced) rather than in 16-byte blocks per thread. Word reads
/// win where x dominates the traffic (prefill tiles: 2x faster on an H200); block reads win for
/// the 1- and 2-token tiles (fewer scale loads and instructions per weight byte). The two
/// orders give different bits, so every decode tile (1 and 2 tokens) uses blocks and every
/// prefill tile uses words: a verify row equals a decode row, and a prompt gives the same state
/// in chunks of any size.
pub fn words(mt: u32) -> bool {
    !decode_tile(mt)
}

/// Code words each thread loads per loop iteration of the word path (before using any). Never
/// changes a (row, token)'s arithmetic or order.
pub fn unroll(mt: u32) -> u32 {
    if decode_tile(mt) {
        4
    } else {
        1
    }
}

#[derive(Clone, Copy, Debug)]
pub struct MatmulOpts {
    /// Which step row count the dispatch follows (`Tokens`, or `Out` for the lm_head rows).
    pub rows: Rows,
    /// Add into y instead of overwriting it (residual epilogue).
    pub add: bool,
    /// Tokens per tile (see [`MT_SMALL`], [`MT_PREFILL`]).
    pub mt: u32,
    /// The matrix's rows are interleaved (gate, up) pairs ([`Matrix::upload_interleaved`]):
    /// write silu(gate) * up for each pair, at column (row0 + row) / 2 (y has half the columns).
    pub swiglu: bool,
}

/// The defines of a matmul variant.
/// The defines every matmul kernel shares: parameters, the row count the grid follows, the
/// epilogue (residual add or SwiGLU) and, for quantized weights, the code width and the type
/// of the scales and biases.
fn shared_defines(base: &Defines, format: &WeightFormat, opts: &MatmulOpts) -> Defines {
    let tokens = if opts.rows == Rows::Out {
        "n_out"
    } else {
        "n_tokens"
    };
    let d = base
        .clone()
        .set("PARAMS", <MatmulParams as crate::gpu::ParamStruct>::WGSL)
        .set("TOKENS", tokens)
        .flag("ADD", opts.add)
        .flag("SWIGLU", opts.swiglu);
    match *format {
        WeightFormat::Affine { bits, scale, .. } => d
            .flag(if bits == 4 { "Q4" } else { "Q8" }, true)
            .flag(scale_define(scale), true),
        WeightFormat::Dense(_) => d,
    }
}

/// The defines of a matmul variant.
pub fn defines(base: &Defines, format: &WeightFormat, k: u32, opts: &MatmulOpts) -> Defines {
    let d = shared_defines(base, format, opts)
        .set("WG", tile(opts.mt, k).0)
        .set("ROWS", tile(opts.mt, k).1)
        .set("MT", tile_tokens(opts.mt))
        .set("UNROLL", unroll(opts.mt));
    match *format {
        WeightFormat::Affine { .. } => d.flag("QUANT", true).flag("QWORDS", words(opts.mt)),
        WeightFormat::Dense(t) => d.flag(dense_define(t), true),
    }
}

use crate::gpu::Switch;

static STAGED: Switch = Switch::new("QWGPU_MATMUL_STAGED", true);

/// Whether quantized decode tiles use `matmul_staged.wgsl` (x staged once per workgroup in
/// workgroup memory and shared by four 32-lane row groups; the same bits as the 32-thread block
/// kernel, 5-30 % faster on an H200). On by default where the device's workgroup limits allow it;
/// `QWGPU_MATMUL_STAGED=0` turns it off at start-up. Plans built after [`set_staged`] follow the
/// new setting.
pub fn staged() -> bool {
    STAGED.get()
}

/// See [`staged`].
pub fn set_staged(on: bool) {
    STAGED.set(Some(on))
}

static GEMM: Switch = Switch::new("QWGPU_PREFILL_GEMM", true);

/// Whether quantized prefill tiles use the tiled GEMM `matmul_gemm.wgsl` (see [`GemmTile`]:
/// weights dequantized and x staged per step of features in workgroup memory; 2x the word
/// kernel on an H200). On by default where the device's workgroup limits allow a tile;
/// `QWGPU_PREFILL_GEMM=0` turns it off at start-up. It keeps the prefill invariant (a prompt
/// gives the same bits in chunks of any size) with its own bits.
pub fn prefill_gemm() -> bool {
    GEMM.get()
}

/// See [`prefill_gemm`].
pub fn set_prefill_gemm(on: bool) {
    GEMM.set(Some(on))
}

static GEMM_HALF: Switch = Switch::new("QWGPU_GEMM_HALF", false);

/// Whether the prefill GEMM runs its f16 variant (`HALF` in `matmul_gemm.wgsl`: f16 staging and
/// packed f16 multiply-adds over runs of 8 features, summed in f32) on devices with SHADER_F16.
/// A measurement variant, off by default (`QWGPU_GEMM_HALF=1` at start-up): its rounding is
/// f16's, and partial sums beyond f16's range would overflow. On an H200 through Vulkan it was
/// slower than the f32 GEMM (gate+up at 512 tokens 26.3 against 28.8 TFLOP/s,
/// bench/results/2026-12-02-h200/gemm_half/): the f16 vectors did not become packed math there.
pub fn gemm_half() -> bool {
    GEMM_HALF.get()
}

/// See [`gemm_half`].
pub fn set_gemm_half(on: bool) {
    GEMM_HALF.set(Some(on))
}

/// The tile of the prefill GEMM: `bn` rows × `bt` tokens per workgroup, `bk` input features per
/// step, `tm` rows × `tn` tokens per thread. The tile never changes a (row, token)'s arithmetic
/// or order (one term per feature, k increasing), so every tile gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTile {
    pub bn: u32,
    pub bt: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl GemmTile {
    /// 64 × 64, 4 × 4 per thread, 256 threads, 16 KiB: within WebGPU's default limits.
    pub const SMALL: GemmTile = GemmTile {
        bn: 64,
        bt: 64,
        bk: 32,
        tm: 4,
        tn: 4,
    };
    /// 128 × 64, 8 × 4 per thread, 256 threads, 24 KiB.
    pub const WIDE: GemmTile = GemmTile {
        bn: 128,
        bt: 64,
        bk: 32,
        tm: 8,
        tn: 4,
    };

    /// 64 × 16, 4 × 4 per thread, 64 threads, 10 KiB: prompt chunks of at most 16 tokens.
    /// H100 (Vulkan), 27B, TTFT of 10 tokens: 235 ms on [`GemmTile::WIDE`], 110 on this one
    /// (128 × 16: 170, 32 × 16: 121, 64 × 16 × 64: 135; bench/results/2026-12-06-g/).
    pub const TINY: GemmTile = GemmTile {
        bn: 64,
        bt: 16,
        bk: 32,
        tm: 4,
        tn: 4,
    };

    /// The forms of short prompt chunks: (the most tokens of a step, tile), by rising count
    /// ([`gemm_forms`]). H100, TTFT of 64 tokens: 247 ms on [`GemmTile::WIDE`], 198 on
    /// [`GemmTile::SMALL`] (64 × 32: 202).
    pub const SHORT_FORMS: [(u32, GemmTile); 2] = [(16, GemmTile::TINY), (64, GemmTile::SMALL)];

    pub fn threads(&self) -> u32 {
        (self.bn / self.tm) * (self.bt / self.tn)
    }

    /// Bytes of workgroup memory (dequantized weights and x of one step, f32).
    pub fn shared_bytes(&self) -> u32 {
        4 * self.bk * (self.bn + self.bt)
    }

    /// Whether the kernel can be built for this tile: shapes whole and the per-thread loads of
    /// a step whole for both code widths.
    pub fn valid(&self) -> bool {
        let t = self.threads();
        self.tm % 4 == 0
            && self.tn % 4 == 0
            && self.tm > 0
            && self.tn > 0
            && self.bn % self.tm == 0
            && self.bt % self.tn == 0
            && self.bk % 8 == 0
            && (32..=1024).contains(&t)
            && (self.bn * self.bk / 8) % t == 0
            && (self.bt * self.bk / 4) % t == 0
    }

    /// Whether a device with these limits can run it.
    pub fn fits(&self, limits: &wgpu::Limits) -> bool {
        self.valid()
            && self.threads() <= limits.max_compute_invocations_per_workgroup
            && self.shared_bytes() <= limits.max_compute_workgroup_storage_size
    }

    fn parse(v: &str) -> Option<GemmTile> {
        let p: Vec<u32> = v.split('x').filter_map(|p| p.trim().parse().ok()).collect();
        match p[..] {
            [bn, bt, bk, tm, tn] => Some(GemmTile { bn, bt, bk, tm, tn }).filter(|t| t.valid()),
            _ => None,
        }
    }
}

/// A tile that tests and the kernel lab can force ([`ForcedTile::set`]), or the environment
/// variable `var` at start-up (read once); otherwise the first default that fits.
struct ForcedTile<T: 'static> {
    var: &'static str,
    expected: &'static str,
    parse: fn(&str) -> Option<T>,
    set: std::sync::Mutex<Option<T>>,
    env: std::sync::OnceLock<Option<T>>,
}

impl<T: Clone> ForcedTile<T> {
    const fn new(var: &'static str, expected: &'static str, parse: fn(&str) -> Option<T>) -> Self {
        ForcedTile {
            var,
            expected,
            parse,
            set: std::sync::Mutex::new(None),
            env: std::sync::OnceLock::new(),
        }
    }

    fn set(&self, tile: Option<T>) {
        if let Ok(mut t) = self.set.lock() {
            *t = tile;
        }
    }

    fn pick(&self, defaults: &[T], fits: impl Fn(&T) -> bool) -> Option<T> {
        self.forced()
            .into_iter()
            .chain(defaults.iter().cloned())
            .find(|t| fits(t))
    }

    /// The tile set by [`ForcedTile::set`], else the environment's.
    fn forced(&self) -> Option<T> {
        let env = self.env.get_or_init(|| {
            let v = std::env::var(self.var).ok()?;
            let t = (self.parse)(&v);
            if t.is_none() {
                eprintln!(
                    "qwgpu: ignoring {}={v:?}: expected {}",
                    self.var, self.expected
                );
            }
            t
        });
        self.set
            .lock()
            .ok()
            .and_then(|t| t.clone())
            .or_else(|| env.clone())
    }
}

static GEMM_TILE: ForcedTile<GemmTile> = ForcedTile::new(
    "QWGPU_GEMM_TILE",
    "BNxBTxBKxTMxTN with TM, TN multiples of 4 dividing BN, BT and whole loads per thread",
    GemmTile::parse,
);

/// Forces the GEMM tile of plans built from now on (`None`: choose by the device's limits).
/// `QWGPU_GEMM_TILE=BNxBTxBKxTMxTN` does the same at start-up.
pub fn set_gemm_tile(tile: Option<GemmTile>) {
    GEMM_TILE.set(tile)
}

static GEMM_FORMS: ForcedTile<Vec<(u32, GemmTile)>> = ForcedTile::new(
    "QWGPU_GEMM_FORMS",
    "none or N:BNxBTxBKxTMxTN,... (token counts rising)",
    parse_gemm_forms,
);

/// `QWGPU_GEMM_FORMS`'s value: `none` or `N:BNxBTxBKxTMxTN,...` with N rising; `None` when
/// malformed.
pub fn parse_gemm_forms(v: &str) -> Option<Vec<(u32, GemmTile)>> {
    parse_forms(v, GemmTile::parse)
}

/// Forces the short-chunk forms of the prefill GEMM in plans built from now on (`None`:
/// [`GemmTile::SHORT_FORMS`]; an empty list: none). `QWGPU_GEMM_FORMS=16:64x16x32x4x4,...` (or
/// `none`) does the same at start-up.
pub fn set_gemm_forms(forms: Option<Vec<(u32, GemmTile)>>) {
    GEMM_FORMS.set(forms)
}

/// The forms of `m`'s prefill GEMM over a step's tokens whose tile for long chunks is `t`, as
/// [`coop_forms`]: the short-chunk forms ([`set_gemm_forms`]) whose tile fits the device and
/// `m`, none where the tile is forced ([`set_gemm_tile`]). The tile never changes the bits.
pub fn gemm_forms(limits: &wgpu::Limits, m: &Matrix, t: GemmTile) -> Vec<(u32, GemmTile)> {
    let listed = match GEMM_TILE.forced() {
        Some(_) => Vec::new(),
        None => GEMM_FORMS
            .forced()
            .unwrap_or_else(|| GemmTile::SHORT_FORMS.to_vec()),
    };
    token_forms(&listed, t, |s| s.fits(limits) && m.k % s.bk == 0)
}

/// The GEMM tile for a device: a forced one if it fits, else [`GemmTile::WIDE`] where the limits
/// allow it (fastest measured on an H200), else [`GemmTile::SMALL`]; `None` when neither fits
/// (the word kernel runs instead).
pub fn gemm_tile(limits: &wgpu::Limits) -> Option<GemmTile> {
    GEMM_TILE.pick(&[GemmTile::WIDE, GemmTile::SMALL], |t| t.fits(limits))
}

/// [`gemm_half`] where the device has f16 and the tile's steps are whole runs of 8 features.
fn half_gemm(gpu: &Gpu, t: GemmTile) -> bool {
    gemm_half() && gpu.caps.f16 && t.bk % 8 == 0
}

static COOP: Switch = Switch::new("QWGPU_PREFILL_COOP", true);

/// Whether quantized prefill tiles run on cooperative matrices (tensor cores,
/// `matmul_coop.wgsl` after `xsplit.wgsl`) where the device has them ([`crate::gpu::Caps::coop`]).
/// On by default; `QWGPU_PREFILL_COOP=0` turns it off at start-up (the f32 GEMM runs instead).
pub fn prefill_coop() -> bool {
    COOP.get()
}

/// See [`prefill_coop`].
pub fn set_prefill_coop(on: bool) {
    COOP.set(Some(on))
}

/// The tile of the tensor-core GEMM: `bn` rows × `bt` tokens per workgroup, `bk` features per
/// step, `sgr` × `sgc` subgroups of 32 lanes (each owning (bn / 16 / sgr) × (bt / 16 / sgc)
/// fragments of 16 × 16); `wlo` / `xlo`: the weights / x enter as f16 pairs (hi + lo, near f32)
/// rather than rounded to one f16. The tile never changes a (row, token)'s arithmetic; the pairs
/// do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopTile {
    pub bn: u32,
    pub bt: u32,
    pub bk: u32,
    pub sgr: u32,
    pub sgc: u32,
    pub wlo: bool,
    pub xlo: bool,
}

/// Rows of the xsplit buffer are padded to a multiple of this (the most tokens a tile takes).
pub const COOP_ROW_PAD: u32 = 256;

/// Name of the device's shared xsplit buffer ([`Gpu::shared_scratch`]).
pub const COOP_SCRATCH: &str = "xsplit";

impl CoopTile {
    /// 128 × 128, 8 subgroups of 2 × 4 fragments, 32 features a step, both pairs (46 KiB):
    /// the fastest with pairs measured on an H200 (27B gate+up at 1024 tokens: 74 TFLOP/s,
    /// against 51 for 128 × 64 and 29.6 for the f32 GEMM; bench/results/2026-12-02-h200-b/).
    pub const DEFAULT: CoopTile = CoopTile {
        bn: 128,
        bt: 128,
        bk: 32,
        sgr: 4,
        sgc: 2,
        wlo: true,
        xlo: true,
    };
    /// 128 × 64, 8 subgroups of 2 × 2 fragments (37 KiB), for devices with less workgroup memory.
    pub const MEDIUM: CoopTile = CoopTile {
        bt: 64,
        ..CoopTile::DEFAULT
    };
    /// 128 × 256, 8 subgroups of 4 × 4 fragments, 16 features a step (40 KiB): the matrices of
    /// more than [`FEW_ROWS`] rows ([`coop_tile`]). Each subgroup loads 16 fragments for 48
    /// products instead of 12 for 24, and each staged weight serves twice the tokens. H200,
    /// 1024 tokens (bench/results/2026-12-03-h200-d/call1): gate+up 83.3 → 87.6 TFLOP/s,
    /// in_proj 68.4 → 82.5; down (5120 rows: 160 workgroups for 132 SMs) 63.4 → 55.2, so the
    /// matrices with few rows keep [`CoopTile::DEFAULT`].
    pub const WIDE: CoopTile = CoopTile {
        bn: 128,
        bt: 256,
        bk: 16,
        sgr: 2,
        sgc: 4,
        wlo: true,
        xlo: true,
    };

    /// 64 × 64, 4 subgroups of 2 × 2 fragments, 64 features a step (39 KiB): prompt chunks of
    /// 33 to 64 tokens ([`CoopTile::SHORT_FORMS`]). With the default tiles a short chunk runs one
    /// 128-row workgroup per SM or fewer (5120 rows: 40 workgroups), each a long serial loop
    /// over k; twice the workgroups and half the steps take the 27B's TTFT of 10 tokens from
    /// 192 to 110 ms on an H100 (and 1024 tokens from 0.66 to 1.25 s, hence only for short
    /// chunks).
    pub const SHORT: CoopTile = CoopTile {
        bn: 64,
        bt: 64,
        bk: 64,
        sgr: 2,
        sgc: 2,
        wlo: true,
        xlo: true,
    };

    /// 64 × 32, 4 subgroups of 1 × 2 fragments, 64 features a step (31 KiB): prompt chunks of 17
    /// to 32 tokens. H100, 27B, TTFT of 32 tokens: 103 ms on [`CoopTile::SHORT`], 85 on this one
    /// (bench/results/2026-12-06-g/).
    pub const SHORT32: CoopTile = CoopTile {
        bn: 64,
        bt: 32,
        bk: 64,
        sgr: 4,
        sgc: 1,
        wlo: true,
        xlo: true,
    };

    /// 64 × 16, 4 subgroups of one fragment each, 128 features a step (46 KiB): prompt chunks
    /// of at most 16 tokens, a quarter of the short tile's x staging and half its steps. H100,
    /// 27B, TTFT of 10 tokens: 111 ms on [`CoopTile::SHORT`], 68 on this one (64 × 16 × 64: 76,
    /// 32 × 16 × 128: 108; bench/results/2026-12-06-g/).
    pub const TINY: CoopTile = CoopTile {
        bn: 64,
        bt: 16,
        bk: 128,
        sgr: 4,
        sgc: 1,
        wlo: true,
        xlo: true,
    };

    /// The forms of short prompt chunks: (the most tokens of a step, tile), by rising count.
    /// [`coop_forms`] keeps those that fit the device and the matrix.
    pub const SHORT_FORMS: [(u32, CoopTile); 3] = [
        (16, CoopTile::TINY),
        (32, CoopTile::SHORT32),
        (64, CoopTile::SHORT),
    ];

    pub fn threads(&self) -> u32 {
        32 * self.sgr * self.sgc
    }

    /// Bytes of workgroup memory: the staged weights (one or two f16 per value, rows padded by
    /// 8), the staged x (two f16 per value, rows padded by 8) and 256 floats per subgroup for
    /// the epilogue.
    pub fn shared_bytes(&self) -> u32 {
        self.bn * (self.bk + 8) * 2 * (1 + self.wlo as u32)
            + self.bt * (2 * self.bk + 8) * 2
            + self.sgr * self.sgc * 1024
    }

    pub fn valid(&self) -> bool {
        let t = self.threads();
        self.sgr > 0
            && self.sgc > 0
            && self.bn % (16 * self.sgr) == 0
            && self.bt % (16 * self.sgc) == 0
            && self.bt <= COOP_ROW_PAD
            && self.bk % 16 == 0
            && self.bk > 0
            && t <= 1024
            && (self.bn * self.bk / 8) % t == 0
            && (self.bn * self.bk / 4) % t == 0
            && (self.bt * self.bk / 4) % t == 0
    }

    pub fn fits(&self, limits: &wgpu::Limits) -> bool {
        self.valid()
            && self.threads() <= limits.max_compute_invocations_per_workgroup
            && self.shared_bytes() <= limits.max_compute_workgroup_storage_size
    }

    /// `BNxBTxBKxSGRxSGCxP`, P = 1 (f16 w and x), 2 (x as pairs) or 3 (both as pairs).
    fn parse(v: &str) -> Option<CoopTile> {
        let p: Vec<u32> = v.split('x').filter_map(|p| p.trim().parse().ok()).collect();
        match p[..] {
            [bn, bt, bk, sgr, sgc, pairs @ 1..=3] => Some(CoopTile {
                bn,
                bt,
                bk,
                sgr,
                sgc,
                wlo: pairs == 3,
                xlo: pairs >= 2,
            })
            .filter(|t| t.valid()),
            _ => None,
        }
    }
}

/// What the tensor-core tile variables take.
const COOP_TILE_FORM: &str = "BNxBTxBKxSGRxSGCxP (P = 1, 2 or 3) with whole fragments and loads";

static COOP_TILE: ForcedTile<CoopTile> =
    ForcedTile::new("QWGPU_COOP_TILE", COOP_TILE_FORM, CoopTile::parse);

static COOP_TILE_WIDE: ForcedTile<CoopTile> =
    ForcedTile::new("QWGPU_COOP_TILE_WIDE", COOP_TILE_FORM, CoopTile::parse);

static COOP_FORMS: ForcedTile<Vec<(u32, CoopTile)>> = ForcedTile::new(
    "QWGPU_COOP_FORMS",
    "none or N:BNxBTxBKxSGRxSGCxP,... (token counts rising)",
    parse_coop_forms,
);

/// `QWGPU_COOP_FORMS`'s value: `none` or `N:BNxBTxBKxSGRxSGCxP,...` with N rising; `None` when
/// malformed.
pub fn parse_coop_forms(v: &str) -> Option<Vec<(u32, CoopTile)>> {
    parse_forms(v, CoopTile::parse)
}

/// Forces the tensor-core GEMM tile of plans built from now on, for every matrix (`None`: the
/// defaults). `QWGPU_COOP_TILE=BNxBTxBKxSGRxSGCxP` does the same at start-up;
/// `QWGPU_COOP_TILE_WIDE=...` replaces only the tile of the matrices of more than [`FEW_ROWS`]
/// rows.
pub fn set_coop_tile(tile: Option<CoopTile>) {
    COOP_TILE.set(tile)
}

/// The tensor-core GEMM tile of a matrix of `n` rows on a device's limits: a forced one if it
/// fits, else for more than [`FEW_ROWS`] rows [`CoopTile::WIDE`] (or `QWGPU_COOP_TILE_WIDE`'s),
/// then [`CoopTile::DEFAULT`] or [`CoopTile::MEDIUM`], the first that fits. The tile never
/// changes a result's bits.
pub fn coop_tile(limits: &wgpu::Limits, n: u32) -> Option<CoopTile> {
    let fits = |t: &CoopTile| t.fits(limits);
    if let Some(t) = COOP_TILE.forced().filter(fits) {
        return Some(t);
    }
    let wide = (n > FEW_ROWS)
        .then(|| COOP_TILE_WIDE.pick(&[CoopTile::WIDE], fits))
        .flatten();
    wide.or_else(|| [CoopTile::DEFAULT, CoopTile::MEDIUM].into_iter().find(fits))
}

/// Short-chunk forms from `none` or `N:TILE,N:TILE,...` with N rising (a tile's form is the
/// GEMM's own, `parse`).
fn parse_forms<T>(v: &str, parse: fn(&str) -> Option<T>) -> Option<Vec<(u32, T)>> {
    let v = v.trim();
    if v.is_empty() || v == "none" {
        return Some(Vec::new());
    }
    let mut out: Vec<(u32, T)> = Vec::new();
    for f in v.split(',') {
        let (n, t) = f.split_once(':')?;
        let n: u32 = n.trim().parse().ok()?;
        if n == 0 || out.last().is_some_and(|(m, _)| *m >= n) {
            return None;
        }
        out.push((n, parse(t.trim())?));
    }
    Some(out)
}

/// The forms of a prompt GEMM by token count: `listed`'s short forms whose tile `fits`, then `t`
/// for any count; a form whose tile is the next one's gives it its tokens. Each entry is (the
/// most tokens of a step that records it, tile), the counts rising.
fn token_forms<T: Copy + PartialEq>(
    listed: &[(u32, T)],
    t: T,
    fits: impl Fn(&T) -> bool,
) -> Vec<(u32, T)> {
    let mut out: Vec<(u32, T)> = Vec::new();
    for &(n, s) in listed {
        if n > 0 && fits(&s) && out.last().is_none_or(|(m, _)| *m < n) {
            out.push((n, s));
        }
    }
    out.push((u32::MAX, t));
    let mut i = 0;
    while i + 1 < out.len() {
        if out[i].1 == out[i + 1].1 {
            out.remove(i);
        } else {
            i += 1;
        }
    }
    out
}

/// `forms` ([`token_forms`]) as token ranges: (first and last token count, tile).
fn form_ranges<T: Copy>(forms: &[(u32, T)]) -> Vec<(u32, u32, T)> {
    let mut lo = 0;
    forms
        .iter()
        .map(|&(hi, t)| {
            let r = (lo, hi, t);
            lo = hi.saturating_add(1);
            r
        })
        .collect()
}

/// The label of a form's dispatch of matrix `name`: the short-chunk forms (all but the last)
/// name their tile.
fn form_label(name: &str, hi: u32, bn: u32, bt: u32) -> String {
    match hi {
        u32::MAX => format!("matmul {name}"),
        _ => format!("matmul {name} (short chunks, {bn}x{bt})"),
    }
}

/// Forces the short-chunk forms of the tensor-core GEMM in plans built from now on (`None`:
/// [`CoopTile::SHORT_FORMS`]; an empty list: none). `QWGPU_COOP_FORMS=16:64x16x128x4x1x3,...`
/// (or `none`) does the same at start-up.
pub fn set_coop_forms(forms: Option<Vec<(u32, CoopTile)>>) {
    COOP_FORMS.set(forms)
}

/// The forms of `m`'s tensor-core GEMM whose tile for long chunks is `t`: (the most tokens a
/// step may have to record it, its tile) by rising token count, the last one `t` for any count
/// ([`token_forms`]): the short-chunk forms ([`set_coop_forms`]) whose tile fits the device and
/// `m`, none where the tile is forced ([`set_coop_tile`]). No form changes a result's bits.
pub fn coop_forms(limits: &wgpu::Limits, m: &Matrix, t: CoopTile) -> Vec<(u32, CoopTile)> {
    let listed = match COOP_TILE.forced() {
        Some(_) => Vec::new(),
        None => COOP_FORMS
            .forced()
            .unwrap_or_else(|| CoopTile::SHORT_FORMS.to_vec()),
    };
    token_forms(&listed, t, |s| s.fits(limits) && m.k % s.bk == 0)
}

/// The tensor-core GEMM's tile where `m` in tile `mt` runs on it: [`prefill_coop`], a device
/// with cooperative matrices, quantized weights, a prompt tile over the step's tokens, and k a
/// multiple of the tile's step.
pub fn use_coop(gpu: &Gpu, m: &Matrix, opts: &MatmulOpts) -> Option<CoopTile> {
    if !(prefill_coop()
        && gpu.caps.coop
        && matches!(m.format, WeightFormat::Affine { .. })
        && opts.mt == MT_PREFILL
        && opts.rows == Rows::Tokens
        && gpu.limits.max_storage_buffers_per_shader_stage >= 7)
    {
        return None;
    }
    coop_tile(&gpu.limits, m.n).filter(|t| m.k % t.bk == 0)
}

/// Bytes of the xsplit buffer for `rows` rows of `k` features: f16 pairs (4 bytes per value)
/// and the exact-weights form's pseudo-features at their most (groups of 32), and one factor per
/// row, rows padded to [`COOP_ROW_PAD`].
pub fn coop_scratch_bytes(rows: u32, k: u32) -> u64 {
    let r = rows.next_multiple_of(COOP_ROW_PAD) as u64;
    r * coop_row_words(k, Some(32)) as u64 * 4 + r * 4
}

/// Steps of the exact-weights form's pseudo-features are padded to a multiple of this (the
/// largest step of the tiles that may take the form).
pub const COOP_EXACT_PAD: u32 = 128;

/// u32 words of one xsplit row: `k` (one word per feature: hi and lo of pairs), and with
/// `Some(group)` (the exact-weights form, [`coop_exact`]) two pseudo-features per weight group,
/// padded to [`COOP_EXACT_PAD`].
pub fn coop_row_words(k: u32, group: Option<u32>) -> u32 {
    match group {
        Some(g) => k + (2 * k.div_ceil(g)).next_multiple_of(COOP_EXACT_PAD),
        None => k,
    }
}

static COOP_EXACT: Switch = Switch::new("QWGPU_COOP_EXACT", false);

/// See [`coop_exact`].
pub fn set_coop_exact(on: bool) {
    COOP_EXACT.set(Some(on))
}

/// Whether the tensor-core GEMM takes 4-bit weights with bf16 scales exactly (`WEXACT` in
/// `matmul_coop.wgsl`): for tiles asking for near-f32 accuracy (weight pairs), each weight is
/// staged as the one f16 s·(q − 8) (exact: 8 significant bits of scale, at most 3 of q − 8) and
/// the groups' offsets b + 8s enter through pseudo-features of x (`XGRP` in `xsplit.wgsl`), so
/// each 16 features take two tensor-core products instead of three. Returns the group size
/// where the form applies to `format` with every tile in `tiles`. As accurate as the pairs
/// (worst error 5.8e-7 of Σ|x·w| against 5.7e-7 in the kernel test on an H100), faster for short
/// chunks (TTFT of 10 / 64 tokens 67 / 109 → 61 / 99 ms) but slower at 1024 tokens (660 → 781
/// ms; bench/results/2026-12-07/), so off by default: `QWGPU_COOP_EXACT=1` (or
/// [`set_coop_exact`]) turns it on. Every tile of a call takes the same form (forms by token
/// count must give the same bits).
pub fn coop_exact(format: &WeightFormat, tiles: &[CoopTile]) -> Option<u32> {
    exact_capable(format, tiles).filter(|_| COOP_EXACT.get())
}

/// [`coop_exact`] whatever the switch says.
fn exact_capable(format: &WeightFormat, tiles: &[CoopTile]) -> Option<u32> {
    match *format {
        WeightFormat::Affine {
            bits: 4,
            group,
            scale: crate::quant::FloatType::BF16,
        } if group % 2 == 0
            && group <= 128
            && !tiles.is_empty()
            && tiles
                .iter()
                .all(|t| t.wlo && t.xlo && COOP_EXACT_PAD % t.bk == 0) =>
        {
            Some(group)
        }
        _ => None,
    }
}

/// The defines of the tensor-core GEMM.
pub fn coop_defines(
    base: &Defines,
    format: &WeightFormat,
    opts: &MatmulOpts,
    t: CoopTile,
) -> Defines {
    let epw = match *format {
        WeightFormat::Affine { bits: 8, .. } => 4,
        _ => 8,
    };
    shared_defines(base, format, opts)
        .flag("F16", true)
        .flag("COOP", true)
        .set("BN", t.bn)
        .set("BT", t.bt)
        .set("BK", t.bk)
        .set("SGC", t.sgc)
        .set("FM", t.bn / 16 / t.sgr)
        .set("FN", t.bt / 16 / t.sgc)
        .set("WG", t.threads())
        .set("WL", t.bn * t.bk / epw / t.threads())
        .set("VW", epw / 4)
        .set("XL", t.bt * t.bk / 4 / t.threads())
        .flag("WLO", t.wlo)
        .flag("XLO", t.xlo)
        .flag("XCLAMP", false)
}

/// The defines of a short-chunk form of the tensor-core GEMM ([`coop_forms`]): [`coop_defines`]
/// with the tokens of a tile past the step reading the step's last row (`XCLAMP`; the same
/// bits, fewer bytes where most of a tile is past the step, slower in full tiles).
pub fn coop_short_defines(
    base: &Defines,
    format: &WeightFormat,
    opts: &MatmulOpts,
    t: CoopTile,
) -> Defines {
    coop_defines(base, format, opts, t).flag("XCLAMP", true)
}

/// `defines` (of [`coop_defines`] or [`coop_short_defines`]) in the exact-weights form
/// ([`coop_exact`]): one f16 per weight, x as pairs.
pub fn coop_exact_defines(defines: Defines) -> Defines {
    defines.flag("WEXACT", true).flag("WLO", false)
}

/// The xsplit dispatch of a tensor-core GEMM call ([`xsplit`]) and where it writes.
pub struct Xsplit {
    pub dispatch: Dispatch,
    /// The device's shared xsplit buffer ([`COOP_SCRATCH`]).
    pub buf: std::sync::Arc<crate::gpu::GpuBuffer>,
    /// u32 words per row ([`coop_row_words`]): row t at t · row_words.
    pub row_words: u32,
    /// Word of row 0's factor 2^-(sh + 8) (f32); row t's at sig_off + t.
    pub sig_off: u32,
}

/// `xsplit.wgsl` over the step's rows of `x` (`k` features from `x.col`): each row scaled by a
/// power of two and written as f16 pairs for the tensor-core GEMM, with `exact` = `Some(group)`
/// the exact-weights form's pseudo-features (the groups' sums; [`coop_exact`]).
pub async fn xsplit(
    gpu: &Gpu,
    name: &str,
    k: u32,
    exact: Option<u32>,
    x: Act<'_>,
    step: StepSlot<'_>,
    rows: Rows,
) -> Result<Xsplit, GpuError> {
    if x.stride % 2 != 0 || x.col % 2 != 0 || x.stride == 0 || k % 2 != 0 {
        return Err(GpuError::Shader {
            name: format!("matmul {name}"),
            message: "x stride/column and k must be even for the tensor-core GEMM".into(),
        });
    }
    if exact.is_some_and(|g| g == 0 || g % 2 != 0 || k % g != 0) {
        return Err(GpuError::Shader {
            name: format!("matmul {name}"),
            message: format!("k = {k} is not whole even groups of {exact:?}"),
        });
    }
    // The most rows a step can have: what x's buffer holds.
    let max_rows = (x.buf.size / 4 / x.stride as u64).min(u32::MAX as u64) as u32;
    let row_words = coop_row_words(k, exact);
    let padded = max_rows.next_multiple_of(COOP_ROW_PAD);
    let buf = gpu.shared_scratch(
        COOP_SCRATCH,
        (padded as u64 * row_words as u64 * 4 + padded as u64 * 4)
            .max(coop_scratch_bytes(max_rows, k)),
    )?;
    let sig_off = padded * row_words;
    let split = gpu
        .pipeline(
            "xsplit.wgsl",
            &gpu.base_defines()
                .set("PARAMS", <XsplitParams as crate::gpu::ParamStruct>::WGSL)
                .set("TOKENS", "n_tokens")
                .flag("XGRP", exact.is_some()),
        )
        .await?;
    let sp = XsplitParams {
        k,
        x_stride: x.stride,
        x_col: x.col,
        sig_off,
        group: exact.unwrap_or(0),
        row_words,
    };
    let u = gpu.uniform(&format!("{name}.xsplit"), &sp);
    let dispatch = gpu.dispatch(
        format!("xsplit {name}"),
        &split,
        &[u.whole(), step.binding(), x.buf.whole(), buf.whole()],
        Grid {
            groups: 1,
            rows,
            tile: 1,
            out_rows: crate::gpu::plan::ALL_OUT,
            keys: crate::gpu::plan::ALL_KEYS,
            tokens: crate::gpu::plan::ALL_TOKENS,
        },
    );
    Ok(Xsplit {
        dispatch,
        buf,
        row_words,
        sig_off,
    })
}

/// The xsplit dispatch and the tensor-core GEMM's (one per chunk of `m`).
async fn coop_matmul(
    gpu: &Gpu,
    m: &Matrix,
    x: Act<'_>,
    y: Act<'_>,
    step: StepSlot<'_>,
    opts: MatmulOpts,
    t: CoopTile,
) -> Result<Vec<Dispatch>, GpuError> {
    let form_list = coop_forms(&gpu.limits, m, t);
    let tiles: Vec<CoopTile> = form_list.iter().map(|f| f.1).collect();
    let exact = coop_exact(&m.format, &tiles);
    let xs = xsplit(gpu, &m.name, m.k, exact, x, step, opts.rows).await?;
    let (scratch, row_words, sig_off) = (xs.buf, xs.row_words, xs.sig_off);
    let mut out = vec![xs.dispatch];
    // Short chunks run the same GEMM with smaller tiles (the same bits), each form recorded for
    // the steps of its token range ([`coop_forms`]).
    let mut forms = Vec::new();
    for (lo, hi, tile) in form_ranges(&form_list) {
        let defines = match hi {
            u32::MAX => coop_defines(&gpu.base_defines(), &m.format, &opts, tile),
            _ => coop_short_defines(&gpu.base_defines(), &m.format, &opts, tile),
        };
        let defines = match exact {
            Some(_) => coop_exact_defines(defines),
            None => defines,
        };
        let pipeline = gpu.pipeline("matmul_coop.wgsl", &defines).await?;
        forms.push((lo, hi, tile, pipeline));
    }
    let (groups_per_row, group_size) = match m.format {
        WeightFormat::Affine { group, .. } => (m.k / group, group),
        WeightFormat::Dense(_) => (0, 1),
    };
    for c in &m.chunks {
        let (Some(s), Some(b)) = (&c.scales, &c.biases) else {
            return Err(GpuError::Shader {
                name: format!("matmul {}", m.name),
                message: "quantized chunk without scales and biases".into(),
            });
        };
        let params = MatmulParams {
            k: m.k,
            n: c.rows,
            row0: if opts.swiglu {
                2 * y.col + c.row0
            } else {
                y.col + c.row0
            },
            // (u32 words per xsplit row)
            x_stride: row_words,
            x_col: 0,
            y_stride: y.stride,
            groups_per_row,
            group_size,
            eps: 0.0,
            dv: 0,
            z_stride: 0,
            z_col: 0,
            conv_dim: 0,
            taps: 0,
            xo_stride: 0,
            sig_off,
        };
        let u = gpu.uniform(&format!("{}.params", m.name), &params);
        let res = [
            u.whole(),
            step.binding(),
            scratch.whole(),
            c.weight.whole(),
            s.whole(),
            b.whole(),
            y.buf.whole(),
            scratch.whole(),
        ];
        let grid = |t: CoopTile| Grid {
            groups: c.rows.div_ceil(t.bn),
            rows: opts.rows,
            tile: t.bt,
            out_rows: crate::gpu::plan::ALL_OUT,
            keys: crate::gpu::plan::ALL_KEYS,
            tokens: crate::gpu::plan::ALL_TOKENS,
        };
        for (lo, hi, tile, pipeline) in &forms {
            out.push(gpu.dispatch(
                form_label(&m.name, *hi, tile.bn, tile.bt),
                pipeline,
                &res,
                grid(*tile).for_tokens(*lo, *hi),
            ));
        }
    }
    Ok(out)
}

fn use_gemm(gpu: &Gpu, m: &Matrix, mt: u32) -> Option<GemmTile> {
    if !(prefill_gemm() && matches!(m.format, WeightFormat::Affine { .. }) && mt == MT_PREFILL) {
        return None;
    }
    gemm_tile(&gpu.limits).filter(|t| m.k % t.bk == 0)
}

/// The defines of the tiled GEMM.
pub fn gemm_defines(
    base: &Defines,
    format: &WeightFormat,
    opts: &MatmulOpts,
    tile: GemmTile,
) -> Defines {
    let epw = match *format {
        WeightFormat::Affine { bits: 8, .. } => 4,
        _ => 8,
    };
    shared_defines(base, format, opts)
        .set("BN", tile.bn)
        .set("BT", tile.bt)
        .set("BK", tile.bk)
        .set("TM", tile.tm)
        .set("TN", tile.tn)
        .set("TMV", tile.tm / 4)
        .set("TNV", tile.tn / 4)
        .set("WL", tile.bn * tile.bk / epw / tile.threads())
        .set("XL", tile.bt * tile.bk / 4 / tile.threads())
}

/// Threads, rows per workgroup and rows per 32-lane group of the staged kernel for a decode tile
/// (four groups of 4 rows for both tiles: 4 rows per group beat 8 for the 2-token tile on an
/// H200, 81 vs 87 µs for the 27B gate+up; rows never change a row's arithmetic).
/// `QWGPU_STAGED_GROUPS=G` (1, 2, 4 or 8; read once) changes the group count for the kernel lab.
pub fn staged_tile(mt: u32) -> (u32, u32, u32) {
    static GROUPS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let g = *GROUPS.get_or_init(|| {
        match std::env::var("QWGPU_STAGED_GROUPS")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
        {
            Some(g @ (1 | 2 | 4 | 8)) => g,
            Some(g) => {
                eprintln!("qwgpu: ignoring QWGPU_STAGED_GROUPS={g}: expected 1, 2, 4 or 8");
                4
            }
            None => 4,
        }
    });
    // `QWGPU_STAGED_ROWS=A,B`: rows per group of the 1- and 2-token tiles (kernel lab; rows per
    // group never change a row's arithmetic).
    static ROWS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    let (one, small) = *ROWS.get_or_init(|| {
        let v = std::env::var("QWGPU_STAGED_ROWS").ok();
        let p: Option<(u32, u32)> = v.as_deref().and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        });
        match p {
            Some((a, b)) if [2, 4, 8].contains(&a) && [2, 4, 8].contains(&b) => (a, b),
            _ => {
                if let Some(v) = v {
                    eprintln!("qwgpu: ignoring QWGPU_STAGED_ROWS={v:?}: expected A,B with A and B in 2, 4, 8");
                }
                (ONE_ROWS, ONE_ROWS)
            }
        }
    });
    let rg = if mt == MT_ONE { one } else { small };
    (32 * g, g * rg, rg)
}

/// Whether the staged kernel also takes rows of [`LONG_K`] or more features (kernel lab:
/// `QWGPU_STAGED_LONG=1`); by default those keep the 128-thread block kernel.
fn staged_long() -> bool {
    static LONG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LONG.get_or_init(|| {
        matches!(
            std::env::var("QWGPU_STAGED_LONG").as_deref(),
            Ok("1") | Ok("true")
        )
    })
}

/// Whether `m` in tile `mt` runs on the staged kernel: quantized, a decode tile, and rows the
/// block kernel reads with 32 threads (k below [`LONG_K`]), so the bits are the block kernel's.
/// Bytes of workgroup memory the staged kernel uses for tile `mt`: x of one chunk (32 blocks
/// of up to 32 values per token) and the partials.
fn staged_shared_bytes(mt: u32) -> u32 {
    let (wg, _, rg) = staged_tile(mt);
    mt * 32 * 32 * 4 + wg * rg * mt * 4
}

fn use_staged(gpu: &Gpu, m: &Matrix, mt: u32) -> bool {
    let (wg, _, _) = staged_tile(mt);
    let shared = staged_shared_bytes(mt);
    staged()
        && matches!(m.format, WeightFormat::Affine { .. })
        && decode_tile(mt)
        && (m.k < LONG_K || staged_long())
        && wg <= gpu.limits.max_compute_invocations_per_workgroup
        && shared <= gpu.limits.max_compute_workgroup_storage_size
}

/// The tile of the register kernel (`matmul_xreg.wgsl`) for one matrix: `wg` threads, each
/// owning `cb` 16-byte blocks of every row (x under them held in registers), `rpw` rows per
/// workgroup streamed `ru` at a time, at most `nsg` subgroups (for the partials in workgroup
/// memory). Rows never change a (row, token)'s arithmetic; `wg` and `cb` do (they decide which
/// blocks a thread sums), and both decode tiles of a matrix use the same ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XregTile {
    pub wg: u32,
    pub cb: u32,
    pub rpw: u32,
    pub ru: u32,
    pub nsg: u32,
}

static XREG: Switch = Switch::new("QWGPU_MATMUL_XREG", false);

/// Whether quantized decode tiles use `matmul_xreg.wgsl` (x in registers, K split over the
/// workgroup) where the device allows it (subgroups, enough threads per workgroup). Off by
/// default: on an H200 it was no faster than the staged kernel (README, kernel lab);
/// `QWGPU_MATMUL_XREG=1` turns it on at start-up. Plans built after [`set_xreg`] follow the new
/// setting.
pub fn xreg() -> bool {
    XREG.get()
}

/// See [`xreg`].
pub fn set_xreg(on: bool) {
    XREG.set(Some(on))
}

/// A forced shape of the register kernel: (blocks per thread, rows per workgroup, rows per step).
static XREG_SHAPE: std::sync::Mutex<Option<(u32, u32, u32)>> = std::sync::Mutex::new(None);

/// Forces the register kernel's blocks per thread, rows per workgroup and rows per step for plans
/// built from now on (`None`: the defaults). `QWGPU_XREG=CB,RPW,RU` does the same at start-up
/// (kernel lab); a shape the device cannot run falls back to the defaults.
pub fn set_xreg_shape(shape: Option<(u32, u32, u32)>) {
    if let Ok(mut s) = XREG_SHAPE.lock() {
        *s = shape;
    }
}

fn xreg_shape() -> Option<(u32, u32, u32)> {
    static ENV: std::sync::OnceLock<Option<(u32, u32, u32)>> = std::sync::OnceLock::new();
    let env = *ENV.get_or_init(|| {
        let v = std::env::var("QWGPU_XREG").ok()?;
        let p: Vec<u32> = v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
        match p[..] {
            [cb, rpw, ru] if (1..=4).contains(&cb) && ru > 0 && rpw % ru == 0 && rpw % 2 == 0 && rpw <= 128 && ru <= 16 => {
                Some((cb, rpw, ru))
            }
            _ => {
                eprintln!("qwgpu: ignoring QWGPU_XREG={v:?}: expected CB,RPW,RU with CB in 1..=4, RPW even and a multiple of RU, RPW <= 128, RU <= 16");
                None
            }
        }
    });
    XREG_SHAPE.lock().ok().and_then(|s| *s).or(env)
}

/// Rows per workgroup and per step of the register kernel by default.
pub const XREG_ROWS: (u32, u32) = (16, 4);

/// The register kernel's tile for `m` in token tile `mt`, or `None` where it does not apply: not
/// a quantized matrix, not a decode tile, no subgroups, or rows too long for one workgroup's
/// threads at two blocks per thread (one for the 2-token tile: its x takes twice the registers).
pub fn xreg_tile(gpu: &Gpu, m: &Matrix, mt: u32) -> Option<XregTile> {
    let bits = match m.format {
        WeightFormat::Affine { bits, .. } => bits,
        WeightFormat::Dense(_) => return None,
    };
    if !(xreg() && gpu.caps.subgroups && decode_tile(mt)) {
        return None;
    }
    let ncol = m.k / if bits == 4 { 32 } else { 16 };
    let max_threads = gpu.limits.max_compute_invocations_per_workgroup.min(1024);
    let threads = |cb: u32| 32 * ncol.div_ceil(32 * cb);
    let forced = xreg_shape();
    // Blocks per thread: the same for both decode tiles (so they give the same bits), the fewest
    // that fit in a workgroup, at most 2 (x of 2 tokens × 2 blocks is 128 registers).
    let cb = match forced {
        Some((cb, _, _)) if threads(cb) <= max_threads => cb,
        _ => (1..=2).find(|&cb| threads(cb) <= max_threads)?,
    };
    let (rpw, ru) = forced.map_or(XREG_ROWS, |f| (f.1, f.2));
    let wg = threads(cb);
    let nsg = wg.div_ceil(gpu.caps.subgroup_min_size.max(1));
    let shared = 4 * (rpw * mt * nsg + mt * nsg);
    (shared <= gpu.limits.max_compute_workgroup_storage_size).then_some(XregTile {
        wg,
        cb,
        rpw,
        ru,
        nsg,
    })
}

/// The defines of the register kernel.
pub fn xreg_defines(
    base: &Defines,
    format: &WeightFormat,
    opts: &MatmulOpts,
    t: XregTile,
) -> Defines {
    shared_defines(base, format, opts)
        .set("WG", t.wg)
        .set("CB", t.cb)
        .set("RPW", t.rpw)
        .set("RU", t.ru)
        .set("MT", opts.mt)
        .set("NSG", t.nsg)
}

/// The defines of the staged kernel. `subgroups`: the device has subgroups of at most 32 lanes.
pub fn staged_defines(
    base: &Defines,
    format: &WeightFormat,
    opts: &MatmulOpts,
    subgroups: bool,
) -> Defines {
    let (wg, rows, rg) = staged_tile(opts.mt);
    shared_defines(base, format, opts)
        .set("WG", wg)
        .set("ROWS", rows)
        .set("RG", rg)
        .set("MT", opts.mt)
        // Blocks per lane iteration and groups per row of the integer-plane loop (1 elsewhere).
        .set("XU", 1)
        .set("KS", 1)
        .set("NCH", 1)
        // The conv epilogue's taps (the CONV pipelines set the layer's; its #for loops need a
        // count in every variant).
        .set("TAPS", 0)
        .flag("SUBGROUPS", subgroups)
}

/// Formats the integer-plane path takes: 4-bit affine codes.
fn q4_format(format: &WeightFormat) -> bool {
    matches!(format, WeightFormat::Affine { bits: 4, .. })
}

static XQ: Switch = Switch::new("QWGPU_MATMUL_XQ", true);

/// Whether the decode tiles take x as integer planes converted once per step (`XQ` in
/// `matmul_staged.wgsl`, `xquant.wgsl`, [`matmul_xq`]) where [`takes_xq`] allows: packed 8-bit
/// dot products of the 4-bit codes with x held as word fixed point (x rounded to at most 2^-22
/// of the max |x| of its word of 8 values; 2^-15 with the two-plane format), no staging in
/// workgroup memory. On by default where the device has packed dot products ([`packed_dot`]);
/// `QWGPU_MATMUL_XQ=0` turns it off at start-up, [`set_xq`] for plans built afterwards.
pub fn xq() -> bool {
    XQ.get()
}

/// See [`xq`].
pub fn set_xq(on: bool) {
    XQ.set(Some(on))
}

/// Threads, rows per workgroup and rows per 32-lane group of the integer-plane decode kernel for
/// tile `mt` and rows of `k` features: four groups of 4 rows, or for rows of [`LONG_K`] or more
/// [`xq_long_rows`] (2 in the 1-token tile, 4 in the 2-token one; H200 kernel lab, 27B down
/// projection 5120×17408 before the k split: 2 rows 25.5 against 29.5 µs for 4 at 1 token; 2 rows
/// were slower for the other shapes, lm_head 205 against 179 µs), unless `QWGPU_XQ_TILE=G,A,B` (read once; G groups of 32 lanes, 1–16, A and B
/// rows per group of the 1- and 2-token tiles, 1–16) says otherwise (kernel lab). Rows never
/// change a (row, token)'s arithmetic; both tiles use the same lanes per row.
pub fn xq_tile(mt: u32, k: u32, n: u32) -> (u32, u32, u32) {
    let (wg, rows, rg, _) = xq_layout(mt, k, n);
    (wg, rows, rg)
}

/// [`xq_tile`] and the groups per row ([`xq_ksplit`]): threads (with the split), rows per
/// workgroup, rows per group, groups per row.
pub fn xq_layout(mt: u32, k: u32, n: u32) -> (u32, u32, u32, u32) {
    static FORCED: std::sync::OnceLock<Option<(u32, u32, u32)>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        let v = std::env::var("QWGPU_XQ_TILE").ok()?;
        let p: Vec<u32> = v.split(',').filter_map(|t| t.trim().parse().ok()).collect();
        match p.as_slice() {
            &[g, a, b]
                if (1..=16).contains(&g) && (1..=16).contains(&a) && (1..=16).contains(&b) =>
            {
                Some((g, a, b))
            }
            _ => {
                eprintln!("qwgpu: ignoring QWGPU_XQ_TILE={v:?}: expected G,A,B (1-16 each)");
                None
            }
        }
    });
    let (wg, rows, rg) = match forced {
        Some((g, a, b)) => {
            let rg = if mt == MT_ONE { a } else { b };
            (32 * g, g * rg, rg)
        }
        None if k >= LONG_K => {
            let rg = xq_long_rows(mt);
            (128, 4 * rg, rg)
        }
        None if mt != MT_ONE => {
            let tile = if n <= FEW_ROWS {
                xq_verify_env(true)
            } else if n <= MID_ROWS && batch_tile(mt) {
                xq_mid_four()
            } else if n <= MID_ROWS {
                xq_mid_verify()
            } else {
                xq_verify_env(false)
            };
            match tile {
                Some((g, rg)) => (32 * g, g * rg, rg),
                None => staged_tile(mt),
            }
        }
        None => staged_tile(mt),
    };
    // KS groups share each row ([`xq_ksplit`]): KS times the threads, the same rows.
    let ks = xq_ksplit(k, n, wg);
    (wg * ks, rows, rg, ks)
}

/// Matrices of more than [`FEW_ROWS`] and at most this many rows of short rows are mid-row
/// matrices for [`xq_mid_verify`] (the 27B's Gated-DeltaNet in_proj, 16480 rows, and attention
/// q|k|v, 14336 rows; not gate|up, 34816).
pub const MID_ROWS: u32 = 20480;

static XQ_MID_VERIFY_ENV: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
static XQ_MID_VERIFY_SET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Lane groups and rows per group of the integer-plane kernel's 2-token tile for mid-row
/// matrices ([`MID_ROWS`]): 2 groups of 8 rows (16 rows per workgroup of 64 threads, as many
/// workgroups as the default four groups of 4, each lane reading its x planes for twice the rows),
/// unless `QWGPU_XQ_MID_VERIFY=G,R` (read once; 1–8 each; `0` keeps the default tile) or
/// [`set_xq_mid_verify`] says otherwise. `None`: the default staged tile. Never changes the bits.
pub fn xq_mid_verify() -> Option<(u32, u32)> {
    let set = XQ_MID_VERIFY_SET.load(std::sync::atomic::Ordering::Relaxed);
    if set != 0 {
        return (set != u32::MAX).then_some((set & 0xFF, set >> 8));
    }
    *XQ_MID_VERIFY_ENV.get_or_init(|| env_tile("QWGPU_XQ_MID_VERIFY", Some((2, 8))))
}

/// A verify tile from `var` at start-up: `G,R` (lane groups, rows per group; 1–8 each), `0` (the
/// staged tile: `None`), or `default` when unset or malformed (with a note).
fn env_tile(var: &str, default: Option<(u32, u32)>) -> Option<(u32, u32)> {
    let Ok(v) = std::env::var(var) else {
        return default;
    };
    let p: Vec<u32> = v.split(',').filter_map(|t| t.trim().parse().ok()).collect();
    match p.as_slice() {
        [0] => None,
        &[g, r] if (1..=8).contains(&g) && (1..=8).contains(&r) => Some((g, r)),
        _ => {
            eprintln!("qwgpu: ignoring {var}={v:?}: expected G,R (1 to 8 each) or 0");
            default
        }
    }
}

/// Lane groups and rows per group of the 3- and 4-token tiles (a batch of streams) for mid-row matrices:
/// the staged tile (four groups of 4 rows), unless `QWGPU_XQ_MID_FOUR=G,R` (read once; 1–8 each)
/// says otherwise. The 2-token tile's 8 rows per group hold 32 accumulators per lane at 4 tokens:
/// H100 kernel lab (`bench/results/2026-12-06-b/`), GDN in_proj at 4 tokens with its
/// epilogues 164.7 µs in 2 groups of 8 rows against 40.1 in four groups of 4. Never changes the
/// bits.
fn xq_mid_four() -> Option<(u32, u32)> {
    static FOUR: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    *FOUR.get_or_init(|| env_tile("QWGPU_XQ_MID_FOUR", None))
}

/// Tuning knobs for the 2-token tile of the other short-row matrices (kernel lab and benchmarks;
/// read once): `QWGPU_XQ_VERIFY_FEW=G,R` for matrices of at most [`FEW_ROWS`] rows,
/// `QWGPU_XQ_VERIFY_BIG=G,R` for those of more than [`MID_ROWS`]; unset: the staged tile.
fn xq_verify_env(few: bool) -> Option<(u32, u32)> {
    static FEW: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    static BIG: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    let (cell, var) = if few {
        (&FEW, "QWGPU_XQ_VERIFY_FEW")
    } else {
        (&BIG, "QWGPU_XQ_VERIFY_BIG")
    };
    *cell.get_or_init(|| env_tile(var, None))
}

/// See [`xq_mid_verify`]: `Some(Some((g, r)))` (each taken into 1..=8) or `Some(None)` (the
/// default staged tile) for plans built afterwards; `None` goes back to the start-up choice.
pub fn set_xq_mid_verify(v: Option<Option<(u32, u32)>>) {
    let packed = match v {
        None => 0,
        Some(None) => u32::MAX,
        Some(Some((g, r))) => g.clamp(1, 8) | r.clamp(1, 8) << 8,
    };
    XQ_MID_VERIFY_SET.store(packed, std::sync::atomic::Ordering::Relaxed);
}

static XQ_LONG_ROWS_ENV: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
static XQ_LONG_ROWS_SET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Rows per 32-lane group of the integer-plane kernel for rows of [`LONG_K`] or more features
/// (the 27B's down projection), in tile `mt`: 2 in the 1-token tile (four groups, 8 rows per
/// workgroup) and 4 in the 2-token tile (16 rows), unless `QWGPU_XQ_LONG_ROWS=A,B` (read once;
/// A for the 1-token tile, B for the 2-token tile, 1–8 each) or [`set_xq_long_rows`] says
/// otherwise. Never changes the bits. H200, two-plane format
/// (`bench/results/2026-12-03-h200/call4/`): down alone at 2 tokens 32.2 → 26.9 µs with 4 rows
/// (8: 35.1), MTP at forced 0.8 175.9 → 184.0 tok/s; 4 rows at 1 token were slower (18.0 →
/// 19.7 µs; plain decode 142.4 → 142.0), 1 row much slower (25.1 µs, 131.2 tok/s).
/// The 3- and 4-token tiles of a batch of streams: 2 (`QWGPU_XQ_LONG_ROWS_FOUR=C`, 1–8, read once; or
/// B where [`set_xq_long_rows`] set it). H100, four streams 242.6 → 261.2 tok/s in all with 2
/// rows instead of 4 (`bench/results/2026-12-06-b/`), though the down projection timed
/// alone without its epilogues was faster with 4 (46.3 against 59.4 µs): its fused epilogues'
/// registers at 4 tokens.
pub fn xq_long_rows(mt: u32) -> u32 {
    let set = XQ_LONG_ROWS_SET.load(std::sync::atomic::Ordering::Relaxed);
    if batch_tile(mt) && set == 0 {
        static FOUR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        return *FOUR.get_or_init(|| {
            match std::env::var("QWGPU_XQ_LONG_ROWS_FOUR").map(|v| v.trim().parse::<u32>()) {
                Err(_) => 2,
                Ok(Ok(c)) if (1..=8).contains(&c) => c,
                Ok(_) => {
                    eprintln!("qwgpu: ignoring QWGPU_XQ_LONG_ROWS_FOUR: expected 1 to 8");
                    2
                }
            }
        });
    }
    let (a, b) = if set != 0 {
        (set & 0xFF, set >> 8)
    } else {
        *XQ_LONG_ROWS_ENV.get_or_init(|| {
            let Ok(v) = std::env::var("QWGPU_XQ_LONG_ROWS") else {
                return (2, 4);
            };
            let p: Vec<u32> = v.split(',').filter_map(|t| t.trim().parse().ok()).collect();
            match p.as_slice() {
                &[a, b] if (1..=8).contains(&a) && (1..=8).contains(&b) => (a, b),
                _ => {
                    eprintln!(
                        "qwgpu: ignoring QWGPU_XQ_LONG_ROWS={v:?}: expected A,B (1 to 8 each)"
                    );
                    (2, 4)
                }
            }
        })
    };
    if mt == MT_ONE {
        a
    } else {
        b
    }
}

/// See [`xq_long_rows`]: (1-token tile, 2-token tile), each taken into 1..=8, for plans built
/// afterwards; `None` goes back to the start-up choice.
pub fn set_xq_long_rows(v: Option<(u32, u32)>) {
    let packed = v.map_or(0, |(a, b)| a.clamp(1, 8) | b.clamp(1, 8) << 8);
    XQ_LONG_ROWS_SET.store(packed, std::sync::atomic::Ordering::Relaxed);
}

/// A count per matrix class, 1 to 4 each: rows below [`LONG_K`] features, longer rows, and short
/// rows of a matrix with at most [`FEW_ROWS`] rows (its workgroups alone leave most of a large GPU
/// idle). `VAR=A,B` or `VAR=A,B,C` at start-up (read once; C defaults to A where only two are
/// given), else the default; [`PerLength::set`] overrides it for plans built afterwards.
struct PerLength {
    var: &'static str,
    default: (u32, u32, u32),
    env: std::sync::OnceLock<(u32, u32, u32)>,
    set: std::sync::atomic::AtomicU32,
}

/// Matrices with at most this many rows count as few-row matrices for [`xq_ksplit`] (the 27B's
/// Gated-DeltaNet out_proj and attention o_proj, 5120 rows: 320 workgroups of 16 rows).
pub const FEW_ROWS: u32 = 8192;

impl PerLength {
    const fn new(var: &'static str, default: (u32, u32, u32)) -> PerLength {
        PerLength {
            var,
            default,
            env: std::sync::OnceLock::new(),
            set: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn get(&self, k: u32, n: u32) -> u32 {
        let set = self.set.load(std::sync::atomic::Ordering::Relaxed);
        let (short, long, few) = if set != 0 {
            (set & 0xFF, (set >> 8) & 0xFF, set >> 16)
        } else {
            *self.env.get_or_init(|| {
                let Ok(v) = std::env::var(self.var) else {
                    return self.default;
                };
                let p: Vec<u32> = v.split(',').filter_map(|t| t.trim().parse().ok()).collect();
                let ok = |x: u32| (1..=4).contains(&x);
                match *p.as_slice() {
                    [a, b] if ok(a) && ok(b) => (a, b, a),
                    [a, b, c] if ok(a) && ok(b) && ok(c) => (a, b, c),
                    _ => {
                        eprintln!(
                            "qwgpu: ignoring {}={v:?}: expected A,B or A,B,C (1 to 4 each)",
                            self.var
                        );
                        self.default
                    }
                }
            })
        };
        if k >= LONG_K {
            long
        } else if n <= FEW_ROWS {
            few
        } else {
            short
        }
    }

    /// (short rows, long rows, short rows of few-row matrices), each taken into 1..=4; `None` goes
    /// back to the start-up choice.
    fn set(&self, v: Option<(u32, u32, u32)>) {
        let packed = v.map_or(0, |(a, b, c)| {
            a.clamp(1, 4) | b.clamp(1, 4) << 8 | c.clamp(1, 4) << 16
        });
        self.set.store(packed, std::sync::atomic::Ordering::Relaxed);
    }
}

// Two groups per long row: the 27B's down projection 5120×17408 in the H200 kernel lab 31.8 →
// 22.5 µs at 1 token (33.8 → 25.1 with its fused epilogues), plain decode 116.1 → 121.1 tok/s
// (bench/results/2026-12-02-h200/); splitting the shorter rows too was slower (gate+up 40.6 →
// 42.4 µs, decode 118.3). Two groups per row of the few-row matrices (out_proj, o_proj: 320
// workgroups of 16 rows): plain decode 127.1 → 130.7 tok/s, MTP at forced 0.8 152.9 → 151.2
// (their 2-token tile is slower split; bench/results/2026-12-02-h200-c/); 3 or 4 groups were
// slower than 2.
static XQ_KSPLIT: PerLength = PerLength::new("QWGPU_XQ_KSPLIT", (1, 2, 2));
static XQ_UNROLL: PerLength = PerLength::new("QWGPU_XQ_UNROLL", (1, 1, 1));

/// Groups of 32 lanes that share each row of the integer-plane kernel for a matrix of `n` rows of
/// `k` features, each summing a contiguous part of the row's chunks (the parts added in order:
/// the same bits for 1 and 2 tokens, not those of another split), for a tile of `wg` threads
/// without the split: 2 for rows of [`LONG_K`] or more and for matrices of at most [`FEW_ROWS`]
/// rows, else 1; or `QWGPU_XQ_KSPLIT=A,B[,C]` (read once; A for rows below [`LONG_K`], B for
/// longer rows, C for the short rows of few-row matrices, A if not given; 1 to 4), or
/// [`set_xq_ksplit`]; at most what keeps the workgroup within 1024 threads.
pub fn xq_ksplit(k: u32, n: u32, wg: u32) -> u32 {
    let mut ks = XQ_KSPLIT.get(k, n);
    while ks > 1 && wg * ks > 1024 {
        ks -= 1;
    }
    ks
}

/// Sets [`xq_ksplit`] for plans built afterwards (short rows, long rows; few-row matrices take the
/// short rows' count; each taken into 1..=4; `None` goes back to the start-up choice).
pub fn set_xq_ksplit(v: Option<(u32, u32)>) {
    XQ_KSPLIT.set(v.map(|(a, b)| (a, b, a)))
}

/// Blocks per lane per loop iteration of the integer-plane kernel for rows of `k` features (the
/// loads of that many blocks are issued before their arithmetic; never changes the bits): 1, or
/// `QWGPU_XQ_UNROLL=A,B[,C]` (read once; A for rows below [`LONG_K`], B for longer rows, C for the
/// short rows of few-row matrices, A if not given; 1 to 4), or [`set_xq_unroll`].
pub fn xq_unroll(k: u32, n: u32) -> u32 {
    XQ_UNROLL.get(k, n)
}

/// Sets [`xq_unroll`] for plans built afterwards (short rows, long rows; each taken into 1..=4;
/// `None` goes back to the start-up choice).
pub fn set_xq_unroll(v: Option<(u32, u32)>) {
    XQ_UNROLL.set(v.map(|(a, b)| (a, b, a)))
}

/// Whether `m` in tile `mt` can take x as integer planes ([`matmul_xq`]): [`xq`] is on, 4-bit
/// codes, a decode tile (1, 2 or 4 tokens), a device with packed dot products ([`packed_dot`]:
/// not WebGPU, not Metal; they keep the f32 path), k a multiple of 32, every decode tile's
/// threads and partials fit the device, and the staged kernel is not turned off. The same
/// answer for every decode tile of a matrix (a row's bits depend on the path).
pub fn takes_xq(gpu: &Gpu, m: &Matrix, mt: u32) -> bool {
    let fits = DECODE_TILES.iter().all(|&t| {
        let (wg, _, rg) = xq_tile(t, m.k, m.n);
        wg <= gpu.limits.max_compute_invocations_per_workgroup
            && wg * rg * t * 4 <= gpu.limits.max_compute_workgroup_storage_size
    });
    xq() && staged()
        && q4_format(&m.format)
        && packed_dot(gpu)
        && decode_tile(mt)
        && m.k % crate::ops::xquant::BLOCK == 0
        && fits
}

static XQ_METAL: Switch = Switch::new("QWGPU_XQ_METAL", false);

/// Whether the device runs WGSL's packed 8-bit dot products (`dot4I8Packed`, `dot4U8Packed`) as
/// instructions, which the integer-plane decode matmuls are built on ([`takes_xq`]). Not on
/// Metal: MSL has no packed dot product and Apple GPUs no such instruction, so naga writes each
/// as four byte extractions and multiply-adds, several times the f32 path's work per weight on
/// GPUs whose decode is bound by memory, not arithmetic (where the f32 path's 2-token verify
/// also costs little more than a 1-token step); `QWGPU_XQ_METAL=1` at start-up or
/// [`set_xq_metal`] allows them there for measurement. Not in browsers either (WebGPU leaves the
/// lowering to each implementation). Vulkan and D3D12 drivers lower them to the GPU's
/// packed dot product (DP4A on NVIDIA, AMD and Intel GPUs since 2016–2019).
pub fn packed_dot(gpu: &Gpu) -> bool {
    !gpu.caps.web && (gpu.info.backend != wgpu::Backend::Metal || XQ_METAL.get())
}

/// See [`packed_dot`].
pub fn set_xq_metal(on: bool) {
    XQ_METAL.set(Some(on))
}

/// y (+)= x · Wᵀ with x given as integer planes (`xq_planes.wgsl`) of the step's rows in `xq` (rows
/// of `xquant::q_stride(m.k)` vec4; from [`crate::ops::xquant::xquant`] or a kernel's epilogue), optionally with the conv
/// epilogue of [`matmul_normed_conv`] (then no add or SwiGLU, and the device binds 10 storage
/// buffers). Only where [`takes_xq`] holds; the 1- and 2-token tiles give the same bits.
pub async fn matmul_xq(
    gpu: &Gpu,
    m: &Matrix,
    xq: &crate::gpu::GpuBuffer,
    y: Act<'_>,
    step: StepSlot<'_>,
    opts: MatmulOpts,
    conv: Option<ConvFold<'_>>,
) -> Result<Vec<Dispatch>, GpuError> {
    matmul_xq_ext(gpu, m, xq, y, step, opts, conv, None, None).await
}

/// [`matmul_xq`] with the two fusions of the integer-plane path: `norm_eps` = the RMSNorm in front
/// of `m` was deferred by the planes' writer (an [`XqOut`] with its weight: the planes hold
/// w ∘ x and the squares of x), so `m` scales each output by 1/sqrt(mean(x²) + eps); `out` = the
/// outputs (after the residual add or SwiGLU) also go to `out.planes` (only where [`writes_xq`]
/// holds, not with a conv epilogue). Both keep row 0 of 2 tokens equal to 1 token, bit for bit.
#[allow(clippy::too_many_arguments)]
pub async fn matmul_xq_ext(
    gpu: &Gpu,
    m: &Matrix,
    xq: &crate::gpu::GpuBuffer,
    y: Act<'_>,
    step: StepSlot<'_>,
    opts: MatmulOpts,
    conv: Option<ConvFold<'_>>,
    norm_eps: Option<f32>,
    out: Option<XqOut<'_>>,
) -> Result<Vec<Dispatch>, GpuError> {
    let bad = |message: String| GpuError::Shader {
        name: format!("matmul {}", m.name),
        message,
    };
    if !takes_xq(gpu, m, opts.mt) {
        return Err(bad(
            "this matrix cannot take x as integer planes in this tile (see ops::matmul::takes_xq)"
                .into(),
        ));
    }
    if let Some(c) = conv {
        if opts.add || opts.swiglu || out.is_some() || !xq_conv_fits(gpu) {
            return Err(bad("a conv epilogue on integer planes takes no residual add, SwiGLU or output planes, and needs 10 storage buffers".into()));
        }
        check_conv(m, &c, opts.mt)?;
    }
    if let Some(o) = out {
        if !writes_xq(gpu, m, &opts) || y.col != 0 {
            return Err(bad("this matrix cannot write its outputs as integer planes in this tile (see ops::matmul::writes_xq; y must start at column 0)".into()));
        }
        let cols = out_cols(m, &opts);
        let need = opts.mt as u64 * crate::ops::xquant::row_bytes(cols);
        if o.planes.size < need {
            return Err(bad(format!(
                "the output plane buffer holds {} bytes, {} rows of {cols} values need {need}",
                o.planes.size, opts.mt
            )));
        }
        if let Some(w) = o.norm_w {
            if w.size < cols as u64 * 4 {
                return Err(bad(format!(
                    "the output norm weight holds {} values, the outputs have {cols}",
                    w.size / 4
                )));
            }
        }
    }
    matmul_with(
        gpu,
        m,
        Act::new(xq, 0),
        y,
        step,
        opts,
        Fold::Planes(norm_eps, out),
        conv,
    )
    .await
}

/// Whether `m` (taking integer planes, [`takes_xq`]) can also write its outputs as integer planes
/// in tile `opts.mt` ([`XqOut`]): every workgroup's output columns are whole words of 8 in every
/// decode tile (rows per workgroup a multiple of 8, or 16 with SwiGLU pairs, and so is every
/// chunk's first row), the outputs a multiple of 32, and the device binds 8 storage buffers.
/// The same answer for every decode tile.
pub fn writes_xq(gpu: &Gpu, m: &Matrix, opts: &MatmulOpts) -> bool {
    let unit = out_unit(opts.swiglu);
    let cols = out_cols(m, opts);
    xq() && fuse_xq()
        && takes_xq(gpu, m, MT_ONE)
        && DECODE_TILES
            .iter()
            .all(|&t| xq_tile(t, m.k, m.n).1 % unit == 0)
        && m.n % unit == 0
        && cols % crate::ops::xquant::BLOCK == 0
        && m.chunks.iter().all(|c| c.row0 % unit == 0)
        && gpu.limits.max_storage_buffers_per_shader_stage >= 8
}

/// Columns of y a matmul writes: its rows, or half of them for (gate, up) pairs.
fn out_cols(m: &Matrix, opts: &MatmulOpts) -> u32 {
    if opts.swiglu {
        m.n / 2
    } else {
        m.n
    }
}

/// Matrix rows behind one word of 8 output columns: 8, or 16 (gate, up) pairs.
fn out_unit(swiglu: bool) -> u32 {
    if swiglu {
        16
    } else {
        8
    }
}

/// `matmul_staged.wgsl`'s norm defines for tile `mt`: NORM (folded RMSNorm), XNORM (deferred by
/// the planes' writer), XNORM_LATE ([`xq_norm_late`]) and INV, which the shader's shared epilogue
/// tests for either.
fn norm_flags(d: Defines, norm: bool, xnorm: bool, mt: u32) -> Defines {
    d.flag("NORM", norm)
        .flag("XNORM", xnorm)
        .flag("XNORM_LATE", xnorm && xq_norm_late(mt))
        .flag("INV", norm || xnorm)
        .flag("ACC_ARRAY", !acc_vars(mt))
}

static ACC_VARS: Switch = Switch::new("QWGPU_ACC_VARS", true);
static ACC_VARS_VERIFY: Switch = Switch::new("QWGPU_ACC_VARS_VERIFY", true);

/// Whether `matmul_staged.wgsl`'s epilogue in tile `mt` reduces each (row, token) accumulator
/// from its own variable (every index a compile-time constant) instead of first copying them into
/// a private array that the reduction loop indexes (`ACC_ARRAY`; the same sums in the same order,
/// so the same bits). `QWGPU_ACC_VARS=0|1` (1-token tile) and `QWGPU_ACC_VARS_VERIFY=0|1` (the
/// others) at start-up, or [`set_acc_vars`]; the measurements behind the defaults are in
/// ARCHITECTURE.md (performance notes).
pub fn acc_vars(mt: u32) -> bool {
    if mt == MT_ONE {
        ACC_VARS.get()
    } else {
        ACC_VARS_VERIFY.get()
    }
}

/// See [`acc_vars`]: the 1-token tile's choice and the other tiles', for plans built afterwards.
pub fn set_acc_vars(one: bool, verify: bool) {
    ACC_VARS.set(Some(one));
    ACC_VARS_VERIFY.set(Some(verify));
}

static XQ_NORM_LATE: Switch = Switch::new("QWGPU_XQ_NORM_LATE", true);
static XQ_NORM_LATE_VERIFY: Switch = Switch::new("QWGPU_XQ_NORM_LATE_VERIFY", false);
static XQ_NORM_LATE_FOUR: Switch = Switch::new("QWGPU_XQ_NORM_LATE_FOUR", true);

/// Whether the integer-plane matmul with a deferred RMSNorm (`XNORM`) in tile `mt` sums the
/// squares plane after the row's products instead of inside their loop (`XNORM_LATE`: the same
/// order and arithmetic, so the same bits; fewer registers live in the loop). On for the 1-token
/// tile, off for the others: H200 2026-12-03 (bench/results/2026-12-03-h200-d/call1), plain
/// decoding 144.3 → 146.1 tok/s with it, MTP at forced 0.8 (its verify in the 2-token tile)
/// 194.6 → 194.1. `QWGPU_XQ_NORM_LATE=0|1` (1-token tile) and `QWGPU_XQ_NORM_LATE_VERIFY=0|1`
/// (the 2-token tile) at start-up, or [`set_xq_norm_late`]. The 3- and 4-token tiles of a batch of
/// streams: on (`QWGPU_XQ_NORM_LATE_FOUR=0` turns it off; H200, four streams 267.4 → 273.8 tok/s
/// in all, `bench/results/2026-12-06-b/`).
pub fn xq_norm_late(mt: u32) -> bool {
    match mt {
        MT_ONE => XQ_NORM_LATE.get(),
        MT_THREE | MT_FOUR => XQ_NORM_LATE_FOUR.get(),
        _ => XQ_NORM_LATE_VERIFY.get(),
    }
}

/// See [`xq_norm_late`]: the 1- and 2-token tiles' choices and the batch tiles' (3 and 4 tokens),
/// for plans built afterwards.
pub fn set_xq_norm_late(one: bool, verify: bool, four: bool) {
    XQ_NORM_LATE.set(Some(one));
    XQ_NORM_LATE_VERIFY.set(Some(verify));
    XQ_NORM_LATE_FOUR.set(Some(four));
}

static XQ_BLOCK_SUM: Switch = Switch::new("QWGPU_XQ_BLOCK_SUM", false);

/// Whether the integer-plane matmul sums a block's four word dot products in i32, each shifted to
/// the block's largest word scale (one conversion to f32 per block and row; each word's product
/// floored to a unit of that scale, 2^-22 of the block's largest word max), instead of scaling
/// every word's product in f32 (the default: its conversion work runs on the float units, the
/// block sum's on the integer units that also run the packed dot products; which is faster is
/// the device's to say). `QWGPU_XQ_BLOCK_SUM=1` turns it on at start-up, [`set_xq_block_sum`]
/// for plans built afterwards.
pub fn xq_block_sum() -> bool {
    XQ_BLOCK_SUM.get()
}

/// See [`xq_block_sum`].
pub fn set_xq_block_sum(on: bool) {
    XQ_BLOCK_SUM.set(Some(on))
}

static XQ_CONST_K: Switch = Switch::new("QWGPU_XQ_CONST_K", true);

/// Whether the integer-plane matmul's pipelines are built for their matrix's row length and
/// group size (compile-time constants: the chunk loop's trip count and the scale and plane
/// indexing known to the driver's compiler, the tail checks gone where the row is whole chunks).
/// Never changes the bits. On by default (H200: plain decode 130.4 → 135.3 tok/s);
/// `QWGPU_XQ_CONST_K=0` turns it off at start-up, [`set_xq_const_k`] for plans built afterwards.
pub fn xq_const_k() -> bool {
    XQ_CONST_K.get()
}

/// See [`xq_const_k`].
pub fn set_xq_const_k(on: bool) {
    XQ_CONST_K.set(Some(on))
}

/// Workgroups of the integer-plane decode kernel's grid-stride form for tile `mt` (each
/// workgroup takes the tiles of rows w, w + G, w + 2G, ... instead of one), from
/// `QWGPU_XQ_GRID=A,B` (the 1- and 2-token tiles; read once) or [`set_xq_grid`], for every
/// matrix with more tiles; 0 (the default): none, and the 1-token tile takes the relative cap
/// of [`xq_grid_frac`] (see [`xq_grid_cap`]). Never changes the bits. H200 (132 SMs): A = 1584
/// (12 workgroups per SM) took plain decode 147.2 → 149.2 tok/s, 1056 lost (144.9), and any
/// cap slowed the 2-token tile (bench/results/2026-12-03-h200-e/); 1632 on gate|up alone gained
/// more than on every matrix (lm_head lost with it; 2026-12-04-h200-d/).
pub fn xq_grid(mt: u32) -> u32 {
    let set = XQ_GRID_SET.load(std::sync::atomic::Ordering::Relaxed);
    let (a, b) = if set != 0 {
        (set & 0xFFFF_FFFF, (set >> 32) & 0x7FFF_FFFF)
    } else {
        *XQ_GRID_ENV.get_or_init(|| {
            let Ok(v) = std::env::var("QWGPU_XQ_GRID") else {
                return (0, 0);
            };
            let p: Vec<u64> = v.split(',').filter_map(|t| t.trim().parse().ok()).collect();
            match *p.as_slice() {
                [a, b] if a < 1 << 24 && b < 1 << 24 => (a, b),
                [a] if a < 1 << 24 => (a, a),
                _ => {
                    eprintln!("qwgpu: ignoring QWGPU_XQ_GRID={v:?}: expected A,B");
                    (0, 0)
                }
            }
        })
    };
    (if mt == MT_ONE { a } else { b }) as u32
}

static XQ_GRID_ENV: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();
static XQ_GRID_SET: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// See [`xq_grid`]: `Some((a, b))` caps the 1- and 2-token tiles' workgroups (0: no cap) for
/// plans built afterwards; `None` goes back to the start-up choice.
pub fn set_xq_grid(v: Option<(u32, u32)>) {
    let packed = v.map_or(0, |(a, b)| {
        // A set value is never 0 (0 means "not set"): bit 63 marks it.
        (a as u64) | (b as u64) << 32 | 1 << 63
    });
    XQ_GRID_SET.store(packed, std::sync::atomic::Ordering::Relaxed);
}

/// The integer-plane matmul's relative grid-stride cap in tile `mt`: `Some((f, min))` = a matrix
/// of at least `min` tiles of rows takes ⌈f · tiles⌉ workgroups (each taking one or two tiles in
/// turn); `None`: one workgroup per tile. [`set_xq_grid_frac`] (1-token tile) or
/// [`set_xq_grid_frac_verify`] (2-token tile) if set, else `QWGPU_XQ_GRID_FRAC=F[,MIN]` resp.
/// `QWGPU_XQ_GRID_FRAC_VERIFY=F[,MIN]` (read once; `0`: none), else the adapter's tuned value
/// ([`tuned_grid_frac`]). An absolute cap ([`xq_grid`]) takes precedence. Never changes the bits.
///
/// The 1-token tile on the H200: (0.75, 2000), i.e. the 27B's gate|up (2176 tiles → 1632
/// workgroups) and lm_head (15520 → 11640): plain decode 150.0 → 151.8 tok/s, the same as the cap
/// on gate|up alone (bench/results/2026-12-04-h200-d/, call 8); the cap on every matrix,
/// including those of less than one wave (in_proj, q|k|v, down, out_proj), lost 11 % (132.9), an
/// absolute 1632 on lm_head lost 0.4 %, and the kernel timed alone (even followed by down) shows
/// no gain at any cap, so it cannot be measured at load: it is a per-adapter table, other
/// adapters keep one workgroup per tile until measured. The 2-token tile on the H200: the same
/// (0.75, 2000) (bench/results/2026-12-04-h200-e/, call 2): MTP at forced 0.8 197.85 / 197.85 →
/// 204.26 / 204.26 tok/s in alternating runs (a verify iteration 8.96 → 8.68 ms), F = 0.65 to
/// 0.85 all ≈ 204.0, 0.6 and 0.5 lost (196.7, 195.2); an absolute cap on every matrix of more
/// tiles (lm_head at ≈ 1600 workgroups) had lost 4–17 % (2026-12-03-h200-e).
pub fn xq_grid_frac(gpu: &Gpu, mt: u32) -> Option<(f64, u32)> {
    let knob = if mt == MT_ONE {
        &XQ_GRID_FRAC
    } else {
        &XQ_GRID_FRAC_VERIFY
    };
    knob.get()
        .or_else(|| tuned_grid_frac(gpu, mt))
        .filter(|&(f, _)| f > 0.0)
}

/// The adapters whose decode step (1-token tile) or MTP verify (2-token tile) was measured faster
/// with a relative grid cap, and their caps: on the H200 (0.75, 2000) for both tiles (the 27B's
/// gate|up, 2176 tiles of 16 rows in either tile, and lm_head, 15520); on the H100 (80 GB HBM3)
/// the same for the verify tile only (bench/results/2026-12-05-h100/: MTP at forced 0.8 176.96 →
/// 182.88 tok/s; plain decode with the 1-token tile capped 126.10 against 126.05 / 125.46
/// without, so no cap there).
fn tuned_grid_frac(gpu: &Gpu, mt: u32) -> Option<(f64, u32)> {
    let native = !gpu.caps.web;
    let h200 = native && gpu.info.name.contains("H200");
    let h100 = native && gpu.info.name.contains("H100");
    match mt {
        MT_ONE | MT_SMALL if h200 => Some((0.75, 2000)),
        MT_SMALL if h100 => Some((0.75, 2000)),
        _ => None,
    }
}

/// A relative grid cap's start-up value (`var=F[,MIN]`, read once) and the value set for plans
/// built afterwards.
struct FracKnob {
    var: &'static str,
    env: std::sync::OnceLock<Option<(f64, u32)>>,
    set: std::sync::Mutex<Option<(f64, u32)>>,
}

impl FracKnob {
    const fn new(var: &'static str) -> FracKnob {
        FracKnob {
            var,
            env: std::sync::OnceLock::new(),
            set: std::sync::Mutex::new(None),
        }
    }

    fn get(&self) -> Option<(f64, u32)> {
        if let Some(v) = self.set.lock().ok().and_then(|g| *g) {
            return Some(v);
        }
        *self.env.get_or_init(|| {
            let v = std::env::var(self.var).ok()?;
            let mut it = v.split(',');
            let f = it.next().and_then(|t| t.trim().parse::<f64>().ok());
            let min = match it.next() {
                Some(t) => t.trim().parse::<u32>().ok(),
                None => Some(0),
            };
            match (f, min) {
                (Some(f), Some(min)) if (0.0..=1.0).contains(&f) => Some((f, min)),
                _ => {
                    eprintln!(
                        "qwgpu: ignoring {}={v:?}: expected F[,MIN] with 0 <= F <= 1",
                        self.var
                    );
                    None
                }
            }
        })
    }

    fn put(&self, v: Option<(f64, u32)>) {
        if let Ok(mut g) = self.set.lock() {
            *g = v;
        }
    }
}

static XQ_GRID_FRAC: FracKnob = FracKnob::new("QWGPU_XQ_GRID_FRAC");
static XQ_GRID_FRAC_VERIFY: FracKnob = FracKnob::new("QWGPU_XQ_GRID_FRAC_VERIFY");

/// See [`xq_grid_frac`]: the 1-token tile's `Some((f, min))` for plans built afterwards (`f = 0`:
/// none), `None` goes back to the start-up choice (`QWGPU_XQ_GRID_FRAC`, else the adapter's
/// tuned value).
pub fn set_xq_grid_frac(v: Option<(f64, u32)>) {
    XQ_GRID_FRAC.put(v)
}

/// [`set_xq_grid_frac`] for the 2-token (verify) tile (`QWGPU_XQ_GRID_FRAC_VERIFY`).
pub fn set_xq_grid_frac_verify(v: Option<(f64, u32)>) {
    XQ_GRID_FRAC_VERIFY.put(v)
}

/// Workgroups the integer-plane kernel of `m` in tile `mt` takes as a grid-stride grid (0: one
/// per tile of rows): the absolute cap ([`xq_grid`]) if any, else the tile's relative one
/// ([`xq_grid_frac`]) where the matrix has enough tiles of that tile's rows. Read once per pipeline build, for
/// its shader and its grids alike.
pub fn xq_grid_cap(gpu: &Gpu, m: &Matrix, mt: u32) -> u32 {
    // `QWGPU_XQ_GRID_ONLY=NAME` (kernel lab): a cap only for matrices whose name contains NAME.
    static ONLY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(o) = ONLY.get_or_init(|| std::env::var("QWGPU_XQ_GRID_ONLY").ok()) {
        if !m.name.contains(o.as_str()) {
            return 0;
        }
    }
    let abs = xq_grid(mt);
    if abs > 0 {
        return abs;
    }
    let tiles = m.n.div_ceil(xq_tile(mt, m.k, m.n).1.max(1));
    match xq_grid_frac(gpu, mt) {
        Some((f, min)) if tiles >= min.max(2) => {
            let c = ((tiles as f64 * f).ceil() as u32).clamp(1, tiles);
            if c < tiles {
                c
            } else {
                0
            }
        }
        _ => 0,
    }
}

static XQ_EXACT_ROWS: Switch = Switch::new("QWGPU_XQ_EXACT_ROWS", true);

/// Whether the multi-token (verify) tile of integer-plane pipelines drops the row clamp for
/// matrices whose every chunk has a multiple of the workgroup's rows (each group's rows then sit
/// at constant offsets from its first). Never changes the bits. On by default: H200, MTP at forced
/// 0.8 acceptance 145.4 → 152.1 tok/s; the 1-token tile was slower without the clamp (plain
/// decode 134.6 → 130.4) and keeps it. `QWGPU_XQ_EXACT_ROWS=0|1` at start-up,
/// [`set_xq_exact_rows`] for plans built afterwards.
pub fn xq_exact_rows() -> bool {
    XQ_EXACT_ROWS.get()
}

/// See [`xq_exact_rows`].
pub fn set_xq_exact_rows(on: bool) {
    XQ_EXACT_ROWS.set(Some(on))
}

static XQ_UNROLL_CH: Switch = Switch::new("QWGPU_XQ_UNROLL_CH", false);

/// With [`xq_const_k`], whether the chunk loop is written out (one copy per step) where one group
/// of lanes takes the whole row. Never changes the bits. `QWGPU_XQ_UNROLL_CH=0|1` at start-up,
/// [`set_xq_unroll_ch`] for plans built afterwards.
pub fn xq_unroll_ch() -> bool {
    XQ_UNROLL_CH.get()
}

/// See [`xq_unroll_ch`].
pub fn set_xq_unroll_ch(on: bool) {
    XQ_UNROLL_CH.set(Some(on))
}

static XQ_CHAIN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Kernel lab only: `Some((phases, grid))` makes integer-plane matmuls built afterwards (plain
/// ones: no residual add, SwiGLU, deferred norm, output planes or conv) run their matrix's rows
/// as `phases` equal phases chained in ONE dispatch of `grid` workgroups (`PERSIST_Q` in
/// `matmul_staged.wgsl`): each workgroup takes the next tile of rows from an atomic queue, and a
/// tile of phase p waits until every tile of phase p - 1 is done, as the next of a chain of
/// dependent matmuls would, without a dispatch boundary between them. Tiles are taken in order,
/// so every tile a wait depends on is held by a running workgroup: no residency is assumed. The
/// same arithmetic per row: the same bits as one dispatch per phase.
pub fn set_xq_chain(v: Option<(u32, u32)>) {
    let packed = v.map_or(0, |(p, g)| (p.max(1) as u64) << 32 | g.max(1) as u64);
    XQ_CHAIN.store(packed, std::sync::atomic::Ordering::Relaxed);
}

static XQ_CHAIN_BARRIER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Kernel lab only: chained phases ([`set_xq_chain`]) over a resident grid with a grid barrier
/// between phases (`PERSIST_B` in `matmul_staged.wgsl`: workgroup w takes the tiles w, w + G, ...
/// of each phase) instead of a tile queue. It needs every workgroup of the grid resident at once,
/// which WebGPU does not promise (bounded polls: too large a grid gives wrong results, not a
/// hang), so it is a measurement, never an engine path.
pub fn set_xq_chain_barrier(on: bool) {
    XQ_CHAIN_BARRIER.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn xq_chain() -> Option<(u32, u32)> {
    let v = XQ_CHAIN.load(std::sync::atomic::Ordering::Relaxed);
    (v != 0).then_some(((v >> 32) as u32, v as u32))
}

static FUSE_XQ: Switch = Switch::new("QWGPU_XQ_FUSE", true);

/// Whether decode matmuls on integer planes write the next matmul's planes in their epilogue
/// ([`XqOut`]: the residual projections for the next RMSNorm, deferred to its reader, and the
/// SwiGLU gate+up for the down projection) instead of an xquant dispatch per input. On by
/// default; `QWGPU_XQ_FUSE=0` turns it off at start-up, [`set_fuse_xq`] for plans built afterwards.
pub fn fuse_xq() -> bool {
    FUSE_XQ.get()
}

/// See [`fuse_xq`].
pub fn set_fuse_xq(on: bool) {
    FUSE_XQ.set(Some(on))
}

/// Whether the device binds the storage buffers of [`matmul_xq`] with a conv epilogue.
pub fn xq_conv_fits(gpu: &Gpu) -> bool {
    gpu.limits.max_storage_buffers_per_shader_stage >= CONV_FOLD_STORAGE_BUFFERS - 1
}

/// One dispatch per chunk of `m`. `y.col` shifts the output columns (several projections can
/// write side by side into one buffer).
pub async fn matmul(
    gpu: &Gpu,
    m: &Matrix,
    x: Act<'_>,
    y: Act<'_>,
    step: StepSlot<'_>,
    opts: MatmulOpts,
) -> Result<Vec<Dispatch>, GpuError> {
    matmul_with(gpu, m, x, y, step, opts, Fold::None, None).await
}

/// Whether the RMSNorm in front of `m` can be folded into it for tile `mt`
/// ([`matmul_normed`]): `m` runs on the register or the staged kernel there, the device binds one
/// more storage buffer, and `QWGPU_NORM_FOLD=0` did not turn folding off.
fn norm_fold_allowed() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("QWGPU_NORM_FOLD").as_deref(),
            Ok("0") | Ok("false")
        )
    })
}

pub fn folds_norm(gpu: &Gpu, m: &Matrix, mt: u32) -> bool {
    let on = norm_fold_allowed();
    let (wg, _, _) = staged_tile(mt);
    on && gpu.limits.max_storage_buffers_per_shader_stage >= 7
        && (xreg_tile(gpu, m, mt).is_some()
            || (use_staged(gpu, m, mt)
                && staged_shared_bytes(mt) + wg * mt * 4
                    <= gpu.limits.max_compute_workgroup_storage_size))
}

/// Whether sessions with an MTP head fold the RMSNorms too (their verify tile then takes them,
/// and so does every decode step: row 0 of a verify must equal a decode). On by default: on an
/// H200 with the staged kernel the folded speculative session decodes plainly at 93.7 against
/// 83.6 tok/s with 405 against 533 dispatches, its verify takes 18.4 against 18.9 ms, and MTP at
/// 80 % acceptance ran within 1.3 % (96.1 against 97.4 tok/s). `QWGPU_NORM_FOLD_MTP=0` turns it
/// off.
pub fn fold_norms_with_mtp() -> bool {
    static ON: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = *ON.get_or_init(|| match std::env::var("QWGPU_NORM_FOLD_MTP").as_deref() {
        Ok("0") | Ok("false") => Some(false),
        Ok("1") | Ok("true") => Some(true),
        _ => None,
    });
    forced.unwrap_or(true)
}

/// y (+)= RMSNorm(x) · Wᵀ with the norm (weight `norm_w` [k], epsilon `eps`) folded into the
/// matmul: no normalized copy of x, no dispatch for the norm. Only where [`folds_norm`] holds;
/// the 1- and 2-token tiles give the same bits, not those of `rms_norm` followed by `matmul`.
#[allow(clippy::too_many_arguments)]
pub async fn matmul_normed(
    gpu: &Gpu,
    m: &Matrix,
    x: Act<'_>,
    norm_w: &crate::gpu::GpuBuffer,
    eps: f32,
    y: Act<'_>,
    step: StepSlot<'_>,
    opts: MatmulOpts,
) -> Result<Vec<Dispatch>, GpuError> {
    if !folds_norm(gpu, m, opts.mt) {
        return Err(GpuError::Shader {
            name: format!("matmul {}", m.name),
            message: "this matrix cannot take a folded RMSNorm in this tile (see ops::matmul::folds_norm)".into(),
        });
    }
    matmul_with(gpu, m, x, y, step, opts, Fold::Norm(norm_w, eps), None).await
}

/// Storage buffers the staged kernel binds with a folded norm and a conv epilogue.
const CONV_FOLD_STORAGE_BUFFERS: u32 = 11;

/// Whether `m` in tile `mt` can take a folded RMSNorm and the conv epilogue
/// ([`matmul_normed_conv`]): [`folds_norm`] on the staged kernel (not the register kernel), a
/// decode tile, and the device binds 11 storage buffers.
pub fn folds_conv(gpu: &Gpu, m: &Matrix, mt: u32) -> bool {
    folds_norm(gpu, m, mt)
        && xreg_tile(gpu, m, mt).is_none()
        && use_staged(gpu, m, mt)
        && gpu.limits.max_storage_buffers_per_shader_stage >= CONV_FOLD_STORAGE_BUFFERS
}

/// [`matmul_normed`] whose epilogue also runs the causal conv + silu of a Gated-DeltaNet layer
/// over the output columns below `conv.conv_dim` (spec §4.6 steps 2-3; the bits of
/// `gdn_conv_prep`'s conv, tested): it writes silu(conv) to `conv.out` and updates the conv state
/// and its snapshot, and still writes the raw projections to `y`. Only where [`folds_conv`] holds,
/// for steps of at most `opts.mt` rows, with `y.col + row` the conv channel (the projection layout
/// starts with the conv channels) and no residual add or SwiGLU.
#[allow(clippy::too_many_arguments)]
pub async fn matmul_normed_conv(
    gpu: &Gpu,
    m: &Matrix,
    x: Act<'_>,
    norm_w: &crate::gpu::GpuBuffer,
    eps: f32,
    y: Act<'_>,
    conv: ConvFold<'_>,
    step: StepSlot<'_>,
    opts: MatmulOpts,
) -> Result<Vec<Dispatch>, GpuError> {
    let bad = |message: String| GpuError::Shader {
        name: format!("matmul {}", m.name),
        message,
    };
    if !folds_conv(gpu, m, opts.mt) || opts.add || opts.swiglu {
        return Err(bad(
            "this matrix cannot take a conv epilogue in this tile (see ops::matmul::folds_conv)"
                .into(),
        ));
    }
    check_conv(m, &conv, opts.mt)?;
    matmul_with(
        gpu,
        m,
        x,
        y,
        step,
        opts,
        Fold::Norm(norm_w, eps),
        Some(conv),
    )
    .await
}

/// The conv epilogue's taps and buffer sizes.
fn check_conv(m: &Matrix, conv: &ConvFold<'_>, mt: u32) -> Result<(), GpuError> {
    let bad = |message: String| GpuError::Shader {
        name: format!("matmul {}", m.name),
        message,
    };
    if conv.taps == 0 || conv.taps > CONV_KMAX {
        return Err(bad(format!(
            "conv taps {} outside 1..={CONV_KMAX}",
            conv.taps
        )));
    }
    let cd = conv.conv_dim as u64;
    let need = [
        ("conv weights", conv.conv_w, cd * conv.taps as u64),
        ("conv state", conv.state, cd * (conv.taps as u64 - 1)),
        ("conv snapshot", conv.snap, cd * (conv.taps as u64 - 1)),
        ("conv output", conv.out, cd * mt as u64),
    ];
    for (what, b, elems) in need {
        if b.size / 4 < elems {
            return Err(bad(format!(
                "{what} holds {} f32 values, needs {elems}",
                b.size / 4
            )));
        }
    }
    Ok(())
}

/// Most conv taps the conv epilogue takes (gdn_conv_prep's KMAX).
const CONV_KMAX: u32 = crate::ops::gdn::CONV_KMAX;

static GATED_FOLD: Switch = Switch::new("QWGPU_GATED_FOLD", false);

/// Whether plain sessions fold the Gated-DeltaNet output norm into out_proj ([`folds_gated`]).
/// Off by default: on an H200 the fold saves 48 dispatches per 27B token but costs out_proj more
/// (each workgroup recomputes the head norms and silu(z) of the whole input), 91.7 → 89.4 tok/s;
/// `QWGPU_GATED_FOLD=1` turns it on at start-up.
pub fn gated_fold() -> bool {
    GATED_FOLD.get()
}

/// See [`gated_fold`].
pub fn set_gated_fold(on: bool) {
    GATED_FOLD.set(Some(on))
}

/// Whether the gated RMSNorm of a Gated-DeltaNet output (heads of `dv` features) can be folded
/// into `m` for tile `mt` ([`matmul_gated`]): [`gated_fold`] is on, `m` runs on the staged kernel
/// there (not the register kernel), the device binds two more storage buffers, a head never
/// straddles two staged chunks, and `QWGPU_NORM_FOLD=0` did not turn folding off.
pub fn folds_gated(gpu: &Gpu, m: &Matrix, mt: u32, dv: u32) -> bool {
    let epb = match m.format {
        WeightFormat::Affine { bits: 4, .. } => 32,
        _ => 16,
    };
    gated_fold()
        && norm_fold_allowed()
        && xreg_tile(gpu, m, mt).is_none()
        && use_staged(gpu, m, mt)
        && dv > 0
        && dv % 4 == 0
        && (32 * epb) % dv == 0
        && m.k % dv == 0
        && gpu.limits.max_storage_buffers_per_shader_stage >= 8
        && staged_shared_bytes(mt) + mt * 32 * epb <= gpu.limits.max_compute_workgroup_storage_size
}

/// y (+)= (silu(z) ∘ gated RMSNorm(x)) · Wᵀ with the Gated-DeltaNet output norm (spec §4.6 step 7,
/// heads of `dv` features, weight `gate_w` [dv], epsilon `eps`) folded into the matmul: no normed
/// copy, no dispatch for the norm. Only where [`folds_gated`] holds; the 1- and 2-token tiles give
/// the same bits, not those of `gated_norm` followed by `matmul`.
#[allow(clippy::too_many_arguments)]
pub async fn matmul_gated(
    gpu: &Gpu,
    m: &Matrix,
    x: Act<'_>,
    z: Act<'_>,
    gate_w: &crate::gpu::GpuBuffer,
    dv: u32,
    eps: f32,
    y: Act<'_>,
    step: StepSlot<'_>,
    opts: MatmulOpts,
) -> Result<Vec<Dispatch>, GpuError> {
    if !folds_gated(gpu, m, opts.mt, dv) || z.stride % 4 != 0 || z.col % 4 != 0 || opts.swiglu {
        return Err(GpuError::Shader {
            name: format!("matmul {}", m.name),
            message: "this matrix cannot take a folded gated norm in this tile (see ops::matmul::folds_gated)".into(),
        });
    }
    matmul_with(
        gpu,
        m,
        x,
        y,
        step,
        opts,
        Fold::Gated(gate_w, z, dv, eps),
        None,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn matmul_with(
    gpu: &Gpu,
    m: &Matrix,
    x: Act<'_>,
    y: Act<'_>,
    step: StepSlot<'_>,
    opts: MatmulOpts,
    fold: Fold<'_>,
    conv: Option<ConvFold<'_>>,
) -> Result<Vec<Dispatch>, GpuError> {
    let norm = match fold {
        Fold::Norm(w, eps) => Some((w, eps)),
        _ => None,
    };
    let gated = matches!(fold, Fold::Gated(..));
    let planes = matches!(fold, Fold::Planes(..));
    // The grid-stride cap, read once for the pipeline and its grids alike.
    let gcap = if planes {
        xq_grid_cap(gpu, m, opts.mt)
    } else {
        0
    };
    let (xnorm, xout) = match fold {
        Fold::Planes(e, o) => (e, o),
        _ => (None, None),
    };
    // Kernel lab: the matrix's rows as phases chained in one dispatch (see [`set_xq_chain`]).
    let chain = if planes && xnorm.is_none() && xout.is_none() && conv.is_none() && !opts.add {
        xq_chain()
    } else {
        None
    };
    if let Some((phases, _)) = chain {
        let rows = xq_tile(opts.mt, m.k, m.n).1;
        if m.chunks.len() != 1 || m.n % (phases * rows) != 0 || opts.swiglu {
            return Err(GpuError::Shader {
                name: format!("matmul {}", m.name),
                message: format!(
                    "a chained matmul takes one buffer of {phases} phases of whole tiles of {rows} rows, no SwiGLU"
                ),
            });
        }
    }
    if !planes && (x.stride % 4 != 0 || x.col % 4 != 0) {
        return Err(GpuError::Shader {
            name: format!("matmul {}", m.name),
            message: "x stride/column must be multiples of 4".into(),
        });
    }
    if opts.swiglu
        && (opts.add
            || m.n % 2 != 0
            || tile(opts.mt, m.k).1 % 2 != 0
            || m.chunks.iter().any(|c| c.row0 % 2 != 0))
    {
        return Err(GpuError::Shader {
            name: format!("matmul {}", m.name),
            message: "a SwiGLU matmul needs (gate, up) row pairs: an even row count, even rows per workgroup and chunk, and no residual add".into(),
        });
    }
    let staged = if planes {
        takes_xq(gpu, m, opts.mt)
    } else {
        use_staged(gpu, m, opts.mt)
    };
    if planes && !staged {
        return Err(GpuError::Shader {
            name: format!("matmul {}", m.name),
            message: "this matrix cannot take x as integer planes in this tile (see ops::matmul::takes_xq)".into(),
        });
    }
    if matches!(fold, Fold::None) && conv.is_none() {
        if let Some(t) = use_coop(gpu, m, &opts) {
            match coop_matmul(gpu, m, x, y, step, opts, t).await {
                Ok(d) => return Ok(d),
                // A driver that advertises the matrices but cannot build the kernel: say so once
                // and keep the f32 GEMM for prompts from here on.
                Err(e) => {
                    eprintln!(
                        "qwgpu: the tensor-core prompt GEMM failed on {} ({e}); prompts use the f32 GEMM",
                        gpu.info.name
                    );
                    set_prefill_coop(false);
                }
            }
        }
    }
    let gemm = if planes {
        None
    } else {
        use_gemm(gpu, m, opts.mt)
    };
    let xt = if gated || planes || conv.is_some() {
        None
    } else {
        xreg_tile(gpu, m, opts.mt)
    };
    if conv.is_some() && (!staged || gemm.is_some()) {
        return Err(GpuError::Shader {
            name: format!("matmul {}", m.name),
            message: "a conv epilogue needs the staged decode kernel".into(),
        });
    }
    // Prompt GEMMs over the step's tokens: every form by token count ([`gemm_forms`]): (first
    // and last token count, tile, pipeline).
    let mut forms = Vec::new();
    if let (None, Some(t), Rows::Tokens) = (xt, gemm, opts.rows) {
        for (lo, hi, tile) in form_ranges(&gemm_forms(&gpu.limits, m, t)) {
            let half = half_gemm(gpu, tile);
            let pipeline = gpu
                .pipeline(
                    "matmul_gemm.wgsl",
                    &gemm_defines(&gpu.base_defines(), &m.format, &opts, tile)
                        .flag("HALF", half)
                        .flag("F16", half),
                )
                .await?;
            forms.push((lo, hi, tile, pipeline));
        }
    }
    let (pipeline, rows_per_wg) = if let Some(t) = xt {
        (
            gpu.pipeline(
                "matmul_xreg.wgsl",
                &xreg_defines(&gpu.base_defines(), &m.format, &opts, t)
                    .flag("NORM", norm.is_some()),
            )
            .await?,
            t.rpw,
        )
    } else if let Some(t) = gemm {
        (
            gpu.pipeline(
                "matmul_gemm.wgsl",
                &gemm_defines(&gpu.base_defines(), &m.format, &opts, t)
                    .flag("HALF", half_gemm(gpu, t))
                    .flag("F16", half_gemm(gpu, t)),
            )
            .await?,
            t.bn,
        )
    } else if staged {
        let sub = gpu.caps.subgroups && gpu.caps.subgroup_max_size <= 32;
        let d = norm_flags(
            staged_defines(&gpu.base_defines(), &m.format, &opts, sub),
            norm.is_some(),
            xnorm.is_some(),
            opts.mt,
        )
        .flag("GATED", gated)
        .flag("XQ", planes)
        .flag("XSUM_BLOCK", planes && xq_block_sum())
        .flag("XOUT", xout.is_some())
        .flag("XONORM", xout.is_some_and(|o| o.norm_w.is_some()));
        let d = if planes {
            let (wg, rows, rg, ks) = xq_layout(opts.mt, m.k, m.n);
            let xu = xq_unroll(m.k, m.n);
            let d = d
                .set("WG", wg)
                .set("ROWS", rows)
                .set("RG", rg)
                .set("XU", xu)
                .set("KS", ks)
                .flag("KSPLIT", ks > 1)
                // Every chunk whole workgroups of rows: no row clamp in the multi-token tile
                // ([`xq_exact_rows`]).
                .flag(
                    "EXACT_ROWS",
                    opts.mt != MT_ONE
                        && xq_exact_rows()
                        && m.chunks.iter().all(|c| c.rows % rows == 0),
                );
            // `QWGPU_XQ_PAD=WORDS` (kernel lab): unused workgroup memory that caps the kernel's
            // occupancy.
            static PAD: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
            let pad = *PAD.get_or_init(|| {
                std::env::var("QWGPU_XQ_PAD")
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            });
            let d = if pad > 0 {
                d.flag("XQ_PAD", true).set("XQ_PAD", pad)
            } else {
                d
            };
            let d = match chain {
                Some((phases, _)) => d
                    .flag("PERSIST_Q", true)
                    .flag(
                        "PERSIST_B",
                        XQ_CHAIN_BARRIER.load(std::sync::atomic::Ordering::Relaxed),
                    )
                    .set("PQ_PHASES", phases),
                None => d.flag("GSTRIDE", gcap > 0),
            };
            match m.format {
                WeightFormat::Affine { group, .. } if xq_const_k() => {
                    let d = d
                        .flag("CONST_K", true)
                        .set("KC", m.k)
                        .set("GS", group)
                        .set("XSTR", crate::ops::xquant::q_stride(m.k));
                    // The chunk loop written out (one copy per XU chunks of 32 blocks of 32
                    // codes) where one group takes the whole row.
                    let steps = m.k.div_ceil(32 * 32).div_ceil(xu);
                    if ks == 1 && steps <= 32 && xq_unroll_ch() {
                        d.flag("UNROLL_CH", true).set("NCH", steps)
                    } else {
                        d
                    }
                }
                _ => d,
            }
        } else {
            d
        };
        let d = match conv {
            Some(c) => d.flag("CONV", true).set("TAPS", c.taps),
            None => d,
        };
        (
            gpu.pipeline("matmul_staged.wgsl", &d).await?,
            if planes {
                xq_tile(opts.mt, m.k, m.n).1
            } else {
                staged_tile(opts.mt).1
            },
        )
    } else {
        (
            gpu.pipeline(
                "matmul.wgsl",
                &defines(&gpu.base_defines(), &m.format, m.k, &opts),
            )
            .await?,
            tile(opts.mt, m.k).1,
        )
    };
    let (groups_per_row, group_size) = match m.format {
        WeightFormat::Affine { group, .. } => (m.k / group, group),
        WeightFormat::Dense(_) => (0, 1),
    };
    let mut out = Vec::new();
    for c in &m.chunks {
        let params = MatmulParams {
            k: m.k,
            n: c.rows,
            // SwiGLU rows are pairs: the kernel writes column (row0 + row) / 2.
            row0: if opts.swiglu {
                2 * y.col + c.row0
            } else {
                y.col + c.row0
            },
            // Planes: rows of xquant's q_stride vec4<u32>, from the row's start.
            x_stride: if planes {
                crate::ops::xquant::q_stride(m.k)
            } else {
                x.stride
            },
            x_col: if planes { 0 } else { x.col },
            y_stride: y.stride,
            groups_per_row,
            group_size,
            eps: match fold {
                Fold::None => 0.0,
                Fold::Planes(e, _) => e.unwrap_or(0.0),
                Fold::Norm(_, eps) | Fold::Gated(_, _, _, eps) => eps,
            },
            dv: if let Fold::Gated(_, _, dv, _) = fold {
                dv
            } else {
                0
            },
            z_stride: if let Fold::Gated(_, z, _, _) = fold {
                z.stride
            } else {
                0
            },
            z_col: if let Fold::Gated(_, z, _, _) = fold {
                z.col
            } else {
                0
            },
            conv_dim: conv.map_or(0, |c| c.conv_dim),
            taps: conv.map_or(0, |c| c.taps),
            xo_stride: crate::ops::xquant::q_stride(out_cols(m, &opts)),
            sig_off: 0,
        };
        let u = gpu.uniform(&format!("{}.params", m.name), &params);
        let mut res = vec![u.whole(), step.binding(), x.buf.whole(), c.weight.whole()];
        if let (Some(s), Some(b)) = (&c.scales, &c.biases) {
            res.push(s.whole());
            res.push(b.whole());
        }
        res.push(y.buf.whole());
        match fold {
            Fold::None => {}
            Fold::Planes(_, out) => {
                if let Some(o) = out {
                    res.push(o.planes.whole());
                    if let Some(w) = o.norm_w {
                        res.push(w.whole());
                    }
                }
            }
            Fold::Norm(w, _) => res.push(w.whole()),
            Fold::Gated(w, z, _, _) => {
                res.push(w.whole());
                res.push(z.buf.whole());
            }
        }
        if let Some(cf) = conv {
            res.push(cf.conv_w.whole());
            res.push(cf.state.whole());
            res.push(cf.snap.whole());
            res.push(cf.out.whole());
        }
        // The chain's counters (zeros; the last workgroup out of each run zeroes them again).
        let counters = match chain {
            Some((phases, _)) => Some(gpu.storage("matmul.chain", 4 * (phases as u64 + 2))?),
            None => None,
        };
        if let Some(b) = &counters {
            res.push(b.whole());
        }
        let tokens = gemm.map_or(tile_tokens(opts.mt), |t| t.bt);
        // A grid-stride integer-plane kernel ([`xq_grid_cap`]) takes at most that many workgroups.
        let cap = match (gcap, chain) {
            (_, Some((_, g))) => g,
            (g, None) if planes && gemm.is_none() && g > 0 => g,
            _ => u32::MAX,
        };
        let grid = Grid {
            groups: c.rows.div_ceil(rows_per_wg).min(cap),
            rows: opts.rows,
            tile: tokens,
            out_rows: crate::gpu::plan::ALL_OUT,
            keys: crate::gpu::plan::ALL_KEYS,
            tokens: crate::gpu::plan::ALL_TOKENS,
        };
        if forms.len() > 1 {
            for (lo, hi, tile, pipeline) in &forms {
                let grid = Grid {
                    groups: c.rows.div_ceil(tile.bn),
                    tile: tile.bt,
                    ..grid
                }
                .for_tokens(*lo, *hi);
                out.push(gpu.dispatch(
                    form_label(&m.name, *hi, tile.bn, tile.bt),
                    pipeline,
                    &res,
                    grid,
                ));
            }
        } else {
            out.push(gpu.dispatch(format!("matmul {}", m.name), &pipeline, &res, grid));
        }
    }
    Ok(out)
}

/// Every variant this op can build (for the offline naga checks).
pub fn variants(base: &Defines) -> Vec<(&'static str, Defines)> {
    let mut v = Vec::new();
    for format in crate::ops::all_formats()
        .into_iter()
        .filter(|f| matches!(f, WeightFormat::Affine { .. }))
    {
        for rows in [Rows::Tokens, Rows::Out] {
            for (add, swiglu) in [(false, false), (true, false), (false, true)] {
                for tile in [GemmTile::SMALL, GemmTile::WIDE, GemmTile::TINY] {
                    let d = gemm_defines(
                        base,
                        &format,
                        &MatmulOpts {
                            rows,
                            add,
                            mt: MT_PREFILL,
                            swiglu,
                        },
                        tile,
                    );
                    if tile == GemmTile::WIDE {
                        v.push((
                            "matmul_gemm.wgsl",
                            d.clone().flag("HALF", true).flag("F16", true),
                        ));
                    }
                    v.push(("matmul_gemm.wgsl", d));
                }
                if base.is_true("SUBGROUPS") && rows == Rows::Tokens {
                    let opts = MatmulOpts {
                        rows,
                        add,
                        mt: MT_PREFILL,
                        swiglu,
                    };
                    for pairs in [false, true] {
                        let t = CoopTile {
                            wlo: pairs,
                            xlo: pairs,
                            ..CoopTile::DEFAULT
                        };
                        v.push(("matmul_coop.wgsl", coop_defines(base, &format, &opts, t)));
                    }
                    // The other tiles' shapes.
                    v.push((
                        "matmul_coop.wgsl",
                        coop_defines(base, &format, &opts, CoopTile::WIDE),
                    ));
                    for (_, t) in CoopTile::SHORT_FORMS {
                        v.push((
                            "matmul_coop.wgsl",
                            coop_short_defines(base, &format, &opts, t),
                        ));
                    }
                    // The exact-weights form, full and short tiles.
                    if exact_capable(&format, &[CoopTile::DEFAULT]).is_some() {
                        for t in [CoopTile::DEFAULT, CoopTile::WIDE] {
                            v.push((
                                "matmul_coop.wgsl",
                                coop_exact_defines(coop_defines(base, &format, &opts, t)),
                            ));
                        }
                        for (_, t) in CoopTile::SHORT_FORMS {
                            v.push((
                                "matmul_coop.wgsl",
                                coop_exact_defines(coop_short_defines(base, &format, &opts, t)),
                            ));
                        }
                    }
                }
            }
        }
        for grp in [false, true] {
            v.push((
                "xsplit.wgsl",
                base.clone()
                    .set("PARAMS", <XsplitParams as crate::gpu::ParamStruct>::WGSL)
                    .set("TOKENS", "n_tokens")
                    .flag("XGRP", grp),
            ));
        }
        if base.is_true("SUBGROUPS") {
            for mt in DECODE_TILES {
                for rows in [Rows::Tokens, Rows::Out] {
                    for (add, swiglu) in [(false, false), (true, false), (false, true)] {
                        for (norm, t) in [
                            (
                                false,
                                XregTile {
                                    wg: 160,
                                    cb: 1,
                                    rpw: 16,
                                    ru: 4,
                                    nsg: 5,
                                },
                            ),
                            (
                                true,
                                XregTile {
                                    wg: 96,
                                    cb: 2,
                                    rpw: 8,
                                    ru: 2,
                                    nsg: 12,
                                },
                            ),
                        ] {
                            let opts = MatmulOpts {
                                rows,
                                add,
                                mt,
                                swiglu,
                            };
                            v.push((
                                "matmul_xreg.wgsl",
                                xreg_defines(base, &format, &opts, t).flag("NORM", norm),
                            ));
                        }
                    }
                }
            }
        }
        for mt in DECODE_TILES {
            for rows in [Rows::Tokens, Rows::Out] {
                for (add, swiglu) in [(false, false), (true, false), (false, true)] {
                    for (sub, norm) in [(false, false), (true, false), (false, true), (true, true)]
                    {
                        let b = if sub {
                            base.clone()
                        } else {
                            base.clone().flag("SUBGROUPS", false)
                        };
                        let opts = MatmulOpts {
                            rows,
                            add,
                            mt,
                            swiglu,
                        };
                        v.push((
                            "matmul_staged.wgsl",
                            norm_flags(
                                staged_defines(
                                    &b,
                                    &format,
                                    &opts,
                                    sub && base.is_true("SUBGROUPS"),
                                ),
                                norm,
                                false,
                                mt,
                            ),
                        ));
                        if norm && !add && !swiglu {
                            v.push((
                                "matmul_staged.wgsl",
                                norm_flags(
                                    staged_defines(
                                        &b,
                                        &format,
                                        &opts,
                                        sub && base.is_true("SUBGROUPS"),
                                    ),
                                    true,
                                    false,
                                    mt,
                                )
                                .flag("CONV", true)
                                .set("TAPS", 4),
                            ));
                        }
                        if !norm && q4_format(&format) {
                            // (Rows past MID_ROWS: the 2-token tile of the larger matrices.)
                            for (conv, k, n) in [
                                (false, 4096, FEW_ROWS + 1),
                                (false, 4096, MID_ROWS + 1),
                                (true, 4096, FEW_ROWS + 1),
                                (false, LONG_K, FEW_ROWS + 1),
                            ] {
                                if conv && (add || swiglu) || n > MID_ROWS && mt == MT_ONE {
                                    continue;
                                }
                                // The long rows also take the variants: block sums, 2 blocks
                                // per lane iteration, 2 groups per row.
                                let (wg, rows, rg, ks) = xq_layout(mt, k, n);
                                let long = k == LONG_K;
                                let (wg, ks) = if long { (wg / ks * 2, 2) } else { (wg, ks) };
                                let d = staged_defines(
                                    &b,
                                    &format,
                                    &opts,
                                    sub && base.is_true("SUBGROUPS"),
                                )
                                .flag("XQ", true)
                                .flag("XSUM_BLOCK", long)
                                .set("XU", if long { 2 } else { 1 })
                                .set("KS", ks)
                                .flag("KSPLIT", ks > 1)
                                .set("WG", wg)
                                .set("ROWS", rows)
                                .set("RG", rg);
                                let d = if conv {
                                    d.flag("CONV", true).set("TAPS", 4)
                                } else {
                                    d
                                };
                                // The fusions: a deferred norm (with the conv: in_proj), output
                                // planes with and without the next norm's weight.
                                v.push((
                                    "matmul_staged.wgsl",
                                    norm_flags(d.clone(), false, true, mt)
                                        .flag("XNORM_LATE", false),
                                ));
                                v.push((
                                    "matmul_staged.wgsl",
                                    norm_flags(d.clone(), false, true, mt).flag("XNORM_LATE", true),
                                ));
                                if !conv && rows % out_unit(swiglu) == 0 {
                                    for onorm in [false, true] {
                                        v.push((
                                            "matmul_staged.wgsl",
                                            d.clone().flag("XOUT", true).flag("XONORM", onorm),
                                        ));
                                    }
                                    v.push((
                                        "matmul_staged.wgsl",
                                        norm_flags(d.clone(), false, true, mt).flag("XOUT", true),
                                    ));
                                }
                                v.push((
                                    "matmul_staged.wgsl",
                                    d.clone()
                                        .flag("CONST_K", true)
                                        .set("KC", k)
                                        .set("GS", 64)
                                        .set("XSTR", crate::ops::xquant::q_stride(k))
                                        .flag("EXACT_ROWS", true),
                                ));
                                // The grid-stride form, with the fused norm and output planes.
                                v.push((
                                    "matmul_staged.wgsl",
                                    norm_flags(d.clone(), false, true, mt)
                                        .flag("XOUT", !conv && rows % out_unit(swiglu) == 0)
                                        .flag("GSTRIDE", true),
                                ));
                                // The kernel lab's chained phases ([`set_xq_chain`]).
                                if !conv && !add && !swiglu {
                                    for barrier in [false, true] {
                                        v.push((
                                            "matmul_staged.wgsl",
                                            d.clone()
                                                .flag("PERSIST_Q", true)
                                                .flag("PERSIST_B", barrier)
                                                .set("PQ_PHASES", 8),
                                        ));
                                    }
                                }
                                v.push(("matmul_staged.wgsl", d));
                            }
                        }
                        if add && !norm && !swiglu {
                            v.push((
                                "matmul_staged.wgsl",
                                staged_defines(
                                    &b,
                                    &format,
                                    &opts,
                                    sub && base.is_true("SUBGROUPS"),
                                )
                                .flag("GATED", true),
                            ));
                        }
                    }
                }
            }
        }
    }
    for format in crate::ops::all_formats() {
        for mt in [MT_ONE, MT_SMALL, MT_THREE, MT_FOUR, MT_PREFILL] {
            for rows in [Rows::Tokens, Rows::Out] {
                for (add, swiglu) in [(false, false), (true, false), (false, true)] {
                    for k in [4096, LONG_K] {
                        v.push((
                            "matmul.wgsl",
                            defines(
                                base,
                                &format,
                                k,
                                &MatmulOpts {
                                    rows,
                                    add,
                                    mt,
                                    swiglu,
                                },
                            ),
                        ));
                    }
                }
            }
        }
    }
    v
}
