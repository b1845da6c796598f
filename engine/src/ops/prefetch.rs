//! `cache_prefetch.wgsl`: a dispatch that reads the first bytes of a matrix into the GPU's
//! last-level cache, recorded right after a decode matmul so that the next matmul starts on
//! cached weights ([`tail_prefetch`]: on by default on NVIDIA adapters). It changes no bit.

use crate::gpu::{Defines, Dispatch, Gpu, GpuError, Grid};
use crate::ops::matrix::Matrix;

crate::gpu_struct! {
    /// `cache_prefetch.wgsl` parameters.
    pub struct PrefetchParams as "Params" {
        pf_w4: u32,
        pf_sb: u32,
        pf_wgs: u32,
        pf_never: u32,
    }
}

const WG: u32 = 256;

fn defines() -> Defines {
    Defines::new()
        .set("PARAMS", <PrefetchParams as crate::gpu::ParamStruct>::WGSL)
        .set("WG", WG)
}

pub fn variants(_base: &Defines) -> Vec<(&'static str, Defines)> {
    vec![("cache_prefetch.wgsl", defines())]
}

/// What a tail prefetch reads: (bytes of the next matrix, workgroups of 256 threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TailPrefetch {
    pub bytes: u64,
    pub workgroups: u32,
}

/// The tail prefetch measured best on an NVIDIA H100 (`bench/results/2026-12-07-d/`): 8 MB of
/// each next matrix over 1056 workgroups.
pub const NVIDIA_TAIL: TailPrefetch = TailPrefetch {
    bytes: 8_000_000,
    workgroups: 1056,
};

/// None: the device decides ([`tail_prefetch`]); Some(setting): the environment or a caller did.
type Setting = Option<Option<TailPrefetch>>;

static TAIL: std::sync::OnceLock<std::sync::Mutex<Setting>> = std::sync::OnceLock::new();

fn tail_cell() -> &'static std::sync::Mutex<Setting> {
    TAIL.get_or_init(|| {
        // QWGPU_TAIL_PREFETCH=MB[,WORKGROUPS] (MB of each next matrix; 0: off).
        let parsed = std::env::var("QWGPU_TAIL_PREFETCH").ok().map(|v| {
            let mut it = v.split(',');
            let mb: f64 = it.next().and_then(|m| m.trim().parse().ok()).unwrap_or(0.0);
            let wgs: u32 = it
                .next()
                .and_then(|w| w.trim().parse().ok())
                .unwrap_or(NVIDIA_TAIL.workgroups);
            (mb > 0.0 && wgs > 0).then_some(TailPrefetch {
                bytes: (mb * 1e6) as u64,
                workgroups: wgs.min(65_535),
            })
        });
        std::sync::Mutex::new(parsed)
    })
}

/// What decode steps on `gpu` record at each [`Site`] (after the dispatch in front of a
/// matmul): a [`cache_prefetch`] of the matmul's first bytes, or None. By default
/// [`NVIDIA_TAIL`] on NVIDIA adapters natively (measured: plain decode +2.6 %, MTP +1.4 % or
/// more on an H100) and off elsewhere (not measured there); `QWGPU_TAIL_PREFETCH=MB[,WGS]` (0: off) at
/// start-up, or [`set_tail_prefetch`], decide instead for plans built afterwards.
pub fn tail_prefetch(gpu: &Gpu) -> Option<TailPrefetch> {
    match tail_prefetch_setting() {
        Some(t) => t,
        None => {
            (cfg!(not(target_arch = "wasm32")) && gpu.info.vendor == 0x10de).then_some(NVIDIA_TAIL)
        }
    }
}

/// Sets [`tail_prefetch`] for every device (None: off).
pub fn set_tail_prefetch(t: Option<TailPrefetch>) {
    set_tail_prefetch_setting(Some(t))
}

/// The current setting (None: each device's default), for saving and restoring it.
pub fn tail_prefetch_setting() -> Setting {
    tail_cell().lock().map(|g| *g).unwrap_or(None)
}

/// Restores a setting read with [`tail_prefetch_setting`].
pub fn set_tail_prefetch_setting(s: Setting) {
    if let Ok(mut g) = tail_cell().lock() {
        *g = s;
    }
}

/// Where a decode step records a tail prefetch, named for the matmul it warms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The next layer's input projection, after the MLP's down (and the first layer's after the
    /// embedding).
    In,
    /// The MLP's gate+up, after the mixer's output projection.
    GateUp,
    /// The MLP's down, after gate+up.
    Down,
    /// The Gated-DeltaNet output projection, after the fused recurrence.
    OutProj,
    /// Attention's o_proj, after the attention kernel (all its passes).
    OProj,
    /// Attention's o_proj, after the attention kernel's split pass (before the combine).
    OProjSplit,
    /// lm_head, after the last layer's down (and the MTP layer's).
    LmHead,
    /// The MTP head's fc (at the front's start) and its layer's input projection (after fc).
    Mtp,
}

impl Site {
    pub const ALL: [(&'static str, Site); 8] = [
        ("in", Site::In),
        ("gu", Site::GateUp),
        ("down", Site::Down),
        ("out", Site::OutProj),
        ("o", Site::OProj),
        ("os", Site::OProjSplit),
        ("lm", Site::LmHead),
        ("mtp", Site::Mtp),
    ];
}

/// The sites a tail prefetch is recorded at by default, each reading [`NVIDIA_TAIL`]'s bytes
/// (H100, `bench/results/2026-12-07-d/` and `-e/`: plain decode 130.35 tok/s without any, 132.40
/// with `in`, `gu` and `down`, 133.55 with `out` besides, 133.75 with `o` and `lm` too; MTP at
/// forced 0.8 187.6 → 189.0 with `mtp` and `lm`; `os` lost, −0.35 %).
pub const DEFAULT_SITES: [Site; 7] = [
    Site::In,
    Site::GateUp,
    Site::Down,
    Site::OutProj,
    Site::OProj,
    Site::LmHead,
    Site::Mtp,
];

/// Sites with their own byte counts (None: the tail prefetch's).
pub type Sites = Vec<(Site, Option<u64>)>;

static SITES: std::sync::OnceLock<std::sync::Mutex<Sites>> = std::sync::OnceLock::new();

/// Parses `site[:MB],...` (sites `in`, `gu`, `down`, `out`, `o`, `os`, `lm`, `mtp`; a site
/// without MB reads the tail prefetch's bytes). Unknown names are ignored.
pub fn parse_sites(v: &str) -> Sites {
    v.split(',')
        .filter_map(|item| {
            let mut it = item.split(':');
            let name = it.next()?.trim();
            let site = Site::ALL.iter().find(|(n, _)| *n == name)?.1;
            let bytes = it
                .next()
                .and_then(|mb| mb.trim().parse::<f64>().ok())
                .map(|mb| (mb.max(0.0) * 1e6) as u64);
            Some((site, bytes))
        })
        .collect()
}

/// The sites a tail prefetch is recorded at, each with its own byte count where one was asked
/// for: `QWGPU_TAIL_SITES=site[:MB],...` at start-up ([`parse_sites`]), [`DEFAULT_SITES`] without
/// it, or [`set_tail_sites`].
fn sites_cell() -> &'static std::sync::Mutex<Sites> {
    SITES.get_or_init(|| {
        std::sync::Mutex::new(match std::env::var("QWGPU_TAIL_SITES") {
            Ok(v) => parse_sites(&v),
            Err(_) => DEFAULT_SITES.iter().map(|&s| (s, None)).collect(),
        })
    })
}

/// Sets the sites (and their bytes; None: the tail prefetch's) for plans built afterwards;
/// returns the previous ones.
pub fn set_tail_sites(sites: Sites) -> Sites {
    match sites_cell().lock() {
        Ok(mut g) => std::mem::replace(&mut *g, sites),
        Err(_) => Vec::new(),
    }
}

/// The bytes a tail prefetch reads at `site` under `t`, or None where none is recorded there.
pub fn site_bytes(t: TailPrefetch, site: Site) -> Option<u64> {
    let sites = sites_cell().lock().ok()?;
    sites
        .iter()
        .find(|(s, _)| *s == site)
        .map(|(_, b)| b.unwrap_or(t.bytes))
        .filter(|&b| b > 0)
}

/// One dispatch of `workgroups` workgroups that reads the first `bytes` of `m`'s first chunk
/// (codes, and the same share of its scales and biases) and writes nothing (its own 16-byte
/// sink, in practice never). None where the chunk's codes are not whole vec4s or the device
/// binds fewer than 4 storage buffers.
pub async fn cache_prefetch(
    gpu: &Gpu,
    m: &Matrix,
    bytes: u64,
    workgroups: u32,
) -> Result<Option<Dispatch>, GpuError> {
    let Some(c) = m.chunks.first() else {
        return Ok(None);
    };
    if c.weight.size % 16 != 0 || gpu.limits.max_storage_buffers_per_shader_stage < 4 {
        return Ok(None);
    }
    let take = bytes.min(c.weight.size);
    // The scales and biases of the rows whose codes are read (row-major in all three); a matrix
    // without them binds its codes thrice and reads none.
    let (sb, [w, s, b]) = match (&c.scales, &c.biases) {
        (Some(s), Some(b)) if s.size == b.size => (
            ((s.size / 4) as u128 * take as u128 / c.weight.size as u128) as u32,
            [&c.weight, s, b],
        ),
        _ => (0, [&c.weight, &c.weight, &c.weight]),
    };
    let pipeline = gpu.pipeline("cache_prefetch.wgsl", &defines()).await?;
    let u = gpu.uniform(
        &format!("prefetch {}.params", m.name),
        &PrefetchParams {
            pf_w4: (take / 16).min(u32::MAX as u64) as u32,
            pf_sb: sb,
            pf_wgs: workgroups,
            pf_never: 0,
        },
    );
    // A sink of its own: no other dispatch writes or reads it, so nothing orders this dispatch
    // after the one in front.
    let sink = gpu.storage(&format!("prefetch {}.sink", m.name), 16)?;
    Ok(Some(gpu.dispatch(
        format!("prefetch {}", m.name),
        &pipeline,
        &[u.whole(), w.whole(), s.whole(), b.whole(), sink.whole()],
        Grid::fixed(workgroups),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_parse_with_their_own_bytes_and_skip_unknown_names() {
        assert_eq!(
            parse_sites("in, out:4,bogus,lm:0.5,o:"),
            vec![
                (Site::In, None),
                (Site::OutProj, Some(4_000_000)),
                (Site::LmHead, Some(500_000)),
                (Site::OProj, None),
            ]
        );
        assert!(parse_sites("").is_empty());
        // Every name parses to its site.
        for (name, site) in Site::ALL {
            assert_eq!(parse_sites(name), vec![(site, None)]);
        }
    }
}
