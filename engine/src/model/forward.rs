//! The forward pass of Qwen3.5/3.6 as prepared dispatch lists (spec §4, §11.2).
//!
//! One implementation serves every row count T: decode (T = 1), MTP verify (T = 2) and prefill
//! chunks (T = N). The only T-dependent choice is the matmul token tile (`MT_ONE` for T = 1,
//! `MT_SMALL` for T = 2, `MT_PREFILL` for prompt chunks). The decode tiles compute each row with
//! the same arithmetic in the same order, and so does the prefill tile whatever the chunk's row
//! count, so a decode or verify row never depends on how many rows share its call, nor a prompt's
//! state on how it was chunked. (Prefill tiles read weights in another order than decode tiles,
//! so a prompt row and a decode row of the same token may differ in the last bits.)

use crate::error::LoadError;
use crate::gpu::{Gpu, GpuBuffer, Plan, Rows, StepSlot};
use crate::model::config::ModelConfig;
use crate::model::weights::{Layer, Mixer, Mtp, Projections, Weights};
use crate::ops::attention::{attention_scratch_bytes, attn_prep, AttnDims};
use crate::ops::gdn::{
    conv_prep_wg, gated_norm, gdn_conv, gdn_conv_prep, gdn_prep, gdn_recurrence, GdnDims,
    CONV_PREP_STORAGE_BUFFERS,
};
use crate::ops::matmul::{matmul, MatmulOpts};
use crate::ops::matrix::Matrix;
use crate::ops::prefetch::Site;
use crate::ops::xquant::xquant;
use crate::ops::{argmax, embed, norm, swiglu, Act};
use crate::state::{KvCache, LayerState, State};

/// Activation buffers for calls of up to `max_rows` rows (f32, row-major).
pub struct Workspace {
    pub max_rows: u32,
    /// Rows that may need logits in one call (2 for MTP verify).
    pub max_out: u32,
    /// Token ids of the call [max_rows] u32 (written by the host, or by argmax on the GPU).
    pub ids: GpuBuffer,
    /// Ids chosen on the GPU [max_out] u32.
    pub out_ids: GpuBuffer,
    /// Residual stream [max_rows, H].
    pub x: GpuBuffer,
    /// Normed input of a mixer / MLP [max_rows, H].
    pub xn: GpuBuffer,
    /// Projections of a mixer side by side [max_rows, proj_width]:
    /// attention: q|gate interleaved (2·Hq·D) | k (Hkv·D) | v (Hkv·D);
    /// GDN: qkv (conv_dim) | z (value_dim) | b (Hv) | a (Hv).
    pub proj: GpuBuffer,
    pub proj_width: u32,
    /// Attention queries after norm + RoPE [max_rows, Hq·D].
    pub q: GpuBuffer,
    /// GDN conv output q|k|v [max_rows, conv_dim].
    pub conv_out: GpuBuffer,
    /// GDN beta | g [max_rows, 2·Hv].
    pub gates: GpuBuffer,
    /// Mixer output before its projection [max_rows, max(Hq·D, value_dim)].
    pub y: GpuBuffer,
    /// Gated-norm output [max_rows, value_dim].
    pub yn: GpuBuffer,
    /// MLP gate | up [max_rows, 2·I] and activation [max_rows, I].
    pub gu: GpuBuffer,
    pub act: GpuBuffer,
    /// Final-normed rows that need logits [max_out, H], and their logits [max_out, vocab].
    pub xo: GpuBuffer,
    pub logits: GpuBuffer,
    pub argmax_scratch: GpuBuffer,
    /// Split-K partials of the attention kernel, shared by every attention layer.
    pub attn_scratch: GpuBuffer,
    /// Counters of attention's split pass when it does the final pass's work too (zero between
    /// dispatches; [`crate::ops::attention::PrepFold::combine`]).
    pub attn_done: GpuBuffer,
    /// MTP head: its residual stream [max_rows, H], the fc input [max_rows, 2H], its input ids
    /// [max_rows], logits [max_out, vocab] and chosen ids [max_out] (tiny when there is no head).
    pub x_mtp: GpuBuffer,
    pub cat: GpuBuffer,
    pub mtp_ids: GpuBuffer,
    pub mtp_logits: GpuBuffer,
    pub mtp_out: GpuBuffer,
    /// Per-iteration result of the speculative loop: [v, b, accept, draft] (u32).
    pub result: GpuBuffer,
    /// A decode matmul's input as integer planes ([`XQ_ROWS`] rows of
    /// `xquant::q_stride(max k)` vec4<u32>; see `ops::matmul::matmul_xq`).
    pub xq: GpuBuffer,
    /// The normed input of a mixer or MLP as integer planes ([`XQ_ROWS`] rows of
    /// `xquant::q_stride(H)`): written by an xquant dispatch, or by the residual projection in
    /// front with the norm deferred to the reader (`ops::matmul::XqOut`).
    pub xqn: GpuBuffer,
    /// The prompt matmuls' input as f16 pairs for the tensor-core GEMM (the device's shared
    /// `ops::matmul::COOP_SCRATCH`, reserved here at its largest so no plan grows it); `None`
    /// without cooperative matrices.
    pub xsplit: Option<std::sync::Arc<GpuBuffer>>,
}

/// Rows of `Workspace::xq`: the decode tiles' most (a batch's 4-row tile).
pub const XQ_ROWS: u32 = crate::ops::matmul::MT_FOUR;

impl Workspace {
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        max_rows: u32,
        max_out: u32,
        mtp: bool,
    ) -> Result<Workspace, LoadError> {
        // Split partials for the decode rows: 2 (a verify), or a batch's streams.
        let attn_rows = max_out.clamp(2, crate::gpu::MAX_STREAMS);
        let attn_scratch = attention_scratch_bytes(&attn_dims(cfg, 1), attn_rows);
        let attn_done = crate::ops::attention::combine_counter_bytes(&attn_dims(cfg, 1), attn_rows);
        let m = if mtp { 1u64 } else { 0 };
        let r = max_rows as u64;
        let f = 4u64;
        let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
        let attn_w = (2 * cfg.num_attention_heads * cfg.head_dim
            + 2 * cfg.num_key_value_heads * cfg.head_dim) as u64;
        let gdn_w = (cfg.conv_dim() + cfg.value_dim() + 2 * cfg.linear_num_value_heads) as u64;
        let proj_width = attn_w.max(gdn_w);
        let qd = (cfg.num_attention_heads * cfg.head_dim) as u64;
        let vd = cfg.value_dim() as u64;
        let v = cfg.vocab_size as u64;
        let o = max_out as u64;
        Ok(Workspace {
            max_rows,
            max_out,
            ids: gpu.storage("ids", r * 4)?,
            out_ids: gpu.storage("out_ids", o * 4)?,
            x: gpu.storage("x", r * h * f)?,
            xn: gpu.storage("xn", r * h * f)?,
            proj: gpu.storage("proj", r * proj_width * f)?,
            proj_width: proj_width as u32,
            q: gpu.storage("q", r * qd * f)?,
            conv_out: gpu.storage("conv_out", r * cfg.conv_dim() as u64 * f)?,
            gates: gpu.storage("gates", r * 2 * cfg.linear_num_value_heads as u64 * f)?,
            y: gpu.storage("y", r * qd.max(vd) * f)?,
            yn: gpu.storage("yn", r * vd * f)?,
            gu: gpu.storage("gu", r * 2 * i * f)?,
            act: gpu.storage("act", r * i * f)?,
            xo: gpu.storage("xo", o * h * f)?,
            logits: gpu.storage("logits", o * v * f)?,
            argmax_scratch: gpu.storage(
                "argmax_scratch",
                argmax::scratch_bytes(cfg.vocab_size as u32, max_out),
            )?,
            attn_scratch: gpu.storage("attn_scratch", attn_scratch)?,
            attn_done: gpu.storage("attn_done", attn_done)?,
            x_mtp: gpu.storage("x_mtp", m * r * h * f)?,
            cat: gpu.storage("cat", m * r * 2 * h * f)?,
            mtp_ids: gpu.storage("mtp_ids", m * r * 4)?,
            mtp_logits: gpu.storage("mtp_logits", m * o * v * f)?,
            mtp_out: gpu.storage("mtp_out", o * 4)?,
            result: gpu.storage("result", 16)?,
            xq: gpu.storage(
                "xq",
                XQ_ROWS as u64
                    * crate::ops::xquant::row_bytes(
                        (h.max(i).max(qd).max(vd) as u32)
                            .next_multiple_of(crate::ops::xquant::BLOCK),
                    ),
            )?,
            xsplit: if gpu.caps.coop && crate::ops::matmul::prefill_coop() {
                let widest = h.max(i).max(qd).max(vd).max(2 * h).max(proj_width) as u32;
                Some(gpu.shared_scratch(
                    crate::ops::matmul::COOP_SCRATCH,
                    crate::ops::matmul::coop_scratch_bytes(max_rows, widest),
                )?)
            } else {
                None
            },
            xqn: gpu.storage(
                "xqn",
                XQ_ROWS as u64
                    * crate::ops::xquant::row_bytes(
                        (h as u32).next_multiple_of(crate::ops::xquant::BLOCK),
                    ),
            )?,
        })
    }

    pub fn bytes(&self) -> u64 {
        [
            &self.ids,
            &self.out_ids,
            &self.x,
            &self.xn,
            &self.proj,
            &self.q,
            &self.conv_out,
            &self.gates,
            &self.y,
            &self.yn,
            &self.gu,
            &self.act,
            &self.xo,
            &self.logits,
            &self.argmax_scratch,
            &self.attn_scratch,
            &self.attn_done,
            &self.x_mtp,
            &self.cat,
            &self.mtp_ids,
            &self.mtp_logits,
            &self.xq,
            &self.xqn,
        ]
        .iter()
        .map(|b| b.size)
        .sum::<u64>()
            + self.xsplit.as_ref().map_or(0, |b| b.size)
    }
}

pub fn attn_dims(cfg: &ModelConfig, max_ctx: u32) -> AttnDims {
    AttnDims {
        n_heads: cfg.num_attention_heads as u32,
        n_kv_heads: cfg.num_key_value_heads as u32,
        head_dim: cfg.head_dim as u32,
        rotary_dim: cfg.rotary_dim() as u32,
        rope_theta: cfg.rope_theta as f32,
        eps: cfg.rms_norm_eps,
        max_ctx,
        kv_f16: false,
        streams: 0,
    }
}

pub fn gdn_dims(cfg: &ModelConfig) -> GdnDims {
    GdnDims {
        n_k_heads: cfg.linear_num_key_heads as u32,
        n_v_heads: cfg.linear_num_value_heads as u32,
        k_head_dim: cfg.linear_key_head_dim as u32,
        v_head_dim: cfg.linear_value_head_dim as u32,
        conv_kernel: cfg.linear_conv_kernel_dim as u32,
        eps: cfg.rms_norm_eps,
        streams: 0,
    }
}

/// Builds plans for one (weights, workspace, state) triple.
pub struct Builder<'a> {
    pub gpu: &'a Gpu,
    pub cfg: &'a ModelConfig,
    pub w: &'a Weights,
    pub ws: &'a Workspace,
    pub step: StepSlot<'a>,
    /// Matmul token tile of this plan.
    pub mt: u32,
    /// Rows of every KV cache.
    pub max_ctx: u32,
    /// The residual stream this plan works on: `ws.x` for the backbone, `ws.x_mtp` for the MTP head.
    pub x: &'a GpuBuffer,
    /// Fold the RMSNorms in front of the decode tiles' matmuls into them where they can take
    /// them ([`crate::ops::matmul::folds_norm`], [`crate::ops::matmul::folds_gated`]): 176 fewer
    /// dispatches per 27B token.
    pub fold_norms: bool,
    /// Decode and verify rows of attention on the split pass (many workgroups per head) rather
    /// than one workgroup per head: the same bits, see [`crate::model::SessionOptions::attn_split`].
    pub attn_split: bool,
    /// 0: a plan for one sequence. n > 0: a plan for a [`crate::model::Batch`] of n independent
    /// streams, one row each, on a state of n slots (the state kernels' `STREAMS` forms; the
    /// Gated-DeltaNet layers take their conv from `gdn_conv_prep`, not a matmul epilogue).
    pub streams: u32,
}

/// The input of the matmuls that follow an RMSNorm: the normalized copy `xn`, or x itself with
/// the norm (weight, epsilon) to fold into the matmuls (decode tiles on the staged kernel).
#[derive(Clone, Copy)]
pub struct NormedX<'a> {
    pub x: Act<'a>,
    pub norm: Option<(&'a GpuBuffer, f32)>,
    /// The normed rows are integer planes in `ws.xqn` (`x` is that buffer), for
    /// `ops::matmul::matmul_xq`.
    pub planes: bool,
    /// The planes hold w ∘ x with the norm's 1/rms deferred to their reader (epsilon).
    pub deferred: Option<f32>,
}

/// The RMSNorm in front of the next mixer or MLP (its weight) and the matrices that read it: what
/// a residual projection needs to write their planes itself.
pub type NextNorm<'a> = Option<(&'a GpuBuffer, &'a [Matrix])>;

/// The matrices that read a layer's normed input.
fn input_consumers(layer: &Layer) -> &[Matrix] {
    match &layer.mixer {
        Mixer::Attn { qkv_proj, .. } => &qkv_proj.mats,
        Mixer::Gdn { in_proj, .. } => &in_proj.mats,
    }
}

impl Builder<'_> {
    /// Whether every matrix of `mats` takes its input as integer planes in this plan's tile
    /// (`ops::matmul::takes_xq`) and the planes fit `ws.xq`.
    fn planes_for(&self, mats: &[Matrix], mt: u32) -> bool {
        !mats.is_empty()
            && mats.iter().all(|m| {
                crate::ops::matmul::takes_xq(self.gpu, m, mt)
                    && self.ws.xq.size >= XQ_ROWS as u64 * crate::ops::xquant::row_bytes(m.k)
            })
    }

    /// Whether `ws.xqn` holds the decode tiles' rows of normed planes.
    fn xqn_fits(&self) -> bool {
        let h = self.cfg.hidden_size as u32;
        self.ws.xqn.size >= XQ_ROWS as u64 * crate::ops::xquant::row_bytes(h)
    }

    /// The planes a residual projection `m` (tile options `opts`) can write for `next` itself
    /// (into `ws.xqn`, scaled by the norm's weight, the norm deferred to the readers): where
    /// `m` takes integer planes and can write them (`ops::matmul::writes_xq`) and every reader
    /// takes planes.
    fn out_planes<'x>(
        &'x self,
        m: &Matrix,
        opts: &MatmulOpts,
        next: NextNorm<'x>,
    ) -> Option<crate::ops::matmul::XqOut<'x>> {
        let (w, readers) = next?;
        let h = self.cfg.hidden_size as u32;
        (self.xqn_fits()
            && m.n == h
            && !opts.swiglu
            && self.planes_for(std::slice::from_ref(m), self.mt)
            && self.planes_for(readers, self.mt)
            && readers.iter().all(|r| r.k == h)
            && crate::ops::matmul::writes_xq(self.gpu, m, opts))
        .then_some(crate::ops::matmul::XqOut {
            planes: &self.ws.xqn,
            norm_w: Some(w),
        })
    }

    /// RMSNorm(x) with `norm_w` as the input of `mats`. `pre`: the residual projection in front
    /// wrote its planes with the norm deferred ([`Self::out_planes`]): nothing to dispatch. Else
    /// one xquant dispatch into `ws.xqn` where they all take integer planes
    /// ([`Self::planes_for`]), else folded into them where every one can take it
    /// ([`crate::ops::matmul::folds_norm`]), else one rms_norm dispatch into `ws.xn`.
    async fn normed<'b>(
        &'b self,
        plan: &mut Plan,
        norm_w: &'b GpuBuffer,
        mats: &[Matrix],
        pre: bool,
    ) -> Result<NormedX<'b>, LoadError> {
        let h = self.cfg.hidden_size as u32;
        let eps = self.cfg.rms_norm_eps;
        if pre {
            return Ok(NormedX {
                x: Act::new(&self.ws.xqn, 0),
                norm: None,
                planes: true,
                deferred: Some(eps),
            });
        }
        if self.planes_for(mats, self.mt) && self.xqn_fits() {
            plan.push(
                xquant(
                    self.gpu,
                    h,
                    Act::new(self.x, h),
                    Some((norm_w, eps)),
                    &self.ws.xqn,
                    XQ_ROWS,
                    self.step,
                    false,
                )
                .await?,
            );
            return Ok(NormedX {
                x: Act::new(&self.ws.xqn, 0),
                norm: None,
                planes: true,
                deferred: None,
            });
        }
        if self.fold_norms
            && !mats.is_empty()
            && mats
                .iter()
                .all(|m| crate::ops::matmul::folds_norm(self.gpu, m, self.mt))
        {
            return Ok(NormedX {
                x: Act::new(self.x, h),
                norm: Some((norm_w, eps)),
                planes: false,
                deferred: None,
            });
        }
        plan.push(
            norm::rms_norm(
                self.gpu,
                h,
                eps,
                Act::new(self.x, h),
                norm_w,
                Act::new(&self.ws.xn, h),
                self.step,
                false,
            )
            .await?,
        );
        Ok(NormedX {
            x: Act::new(&self.ws.xn, h),
            norm: None,
            planes: false,
            deferred: None,
        })
    }

    /// `m` on a normed input (see [`NormedX`]).
    async fn mm_normed(
        &self,
        plan: &mut Plan,
        m: &Matrix,
        x: NormedX<'_>,
        y: Act<'_>,
        swiglu: bool,
    ) -> Result<(), LoadError> {
        let opts = MatmulOpts {
            rows: Rows::Tokens,
            add: false,
            mt: self.mt,
            swiglu,
        };
        let ds = match x.norm {
            _ if x.planes => {
                crate::ops::matmul::matmul_xq_ext(
                    self.gpu, m, x.x.buf, y, self.step, opts, None, x.deferred, None,
                )
                .await?
            }
            Some((w, eps)) => {
                crate::ops::matmul::matmul_normed(self.gpu, m, x.x, w, eps, y, self.step, opts)
                    .await?
            }
            None => matmul(self.gpu, m, x.x, y, self.step, opts).await?,
        };
        for d in ds {
            plan.push(d);
        }
        Ok(())
    }

    async fn mm(
        &self,
        plan: &mut Plan,
        m: &Matrix,
        x: Act<'_>,
        y: Act<'_>,
        add: bool,
    ) -> Result<(), LoadError> {
        for d in matmul(
            self.gpu,
            m,
            x,
            y,
            self.step,
            MatmulOpts {
                rows: Rows::Tokens,
                add,
                mt: self.mt,
                swiglu: false,
            },
        )
        .await?
        {
            plan.push(d);
        }
        Ok(())
    }

    /// `m` on the rows of `x` (`m.k` values each): converted to integer planes first by one
    /// xquant dispatch where `m` takes them ([`Self::planes_for`]), else [`Self::mm`]. With
    /// `next`, a residual projection writes the planes of the next norm's readers where it can
    /// ([`Self::out_planes`]); returns whether it did.
    async fn mm_in(
        &self,
        plan: &mut Plan,
        m: &Matrix,
        x: Act<'_>,
        y: Act<'_>,
        add: bool,
        next: NextNorm<'_>,
    ) -> Result<bool, LoadError> {
        if !self.planes_for(std::slice::from_ref(m), self.mt) {
            self.mm(plan, m, x, y, add).await?;
            return Ok(false);
        }
        plan.push(
            xquant(
                self.gpu,
                m.k,
                x,
                None,
                &self.ws.xq,
                XQ_ROWS,
                self.step,
                false,
            )
            .await?,
        );
        self.mm_planes(plan, m, y, add, next).await
    }

    /// `m` on the integer planes in `ws.xq` (written by the dispatch in front), with the next
    /// norm's planes where it can write them ([`Self::mm_in`]).
    async fn mm_planes(
        &self,
        plan: &mut Plan,
        m: &Matrix,
        y: Act<'_>,
        add: bool,
        next: NextNorm<'_>,
    ) -> Result<bool, LoadError> {
        let opts = MatmulOpts {
            rows: Rows::Tokens,
            add,
            mt: self.mt,
            swiglu: false,
        };
        let out = self.out_planes(m, &opts, next);
        plan.extend_vec(
            crate::ops::matmul::matmul_xq_ext(
                self.gpu,
                m,
                &self.ws.xq,
                y,
                self.step,
                opts,
                None,
                None,
                out,
            )
            .await?,
        );
        Ok(out.is_some())
    }

    /// `p` on `x`, written side by side into `y` from column `y.col`: one matmul per matrix of
    /// `p` (one for the whole group when its parts were stacked at load). `width` is the
    /// columns the caller expects (the layout of `y`), checked against the parts.
    async fn mm_side_by_side(
        &self,
        plan: &mut Plan,
        p: &Projections,
        x: NormedX<'_>,
        y: Act<'_>,
        width: u32,
    ) -> Result<(), LoadError> {
        if p.n() != width {
            let names: Vec<&str> = p.mats.iter().map(|m| m.name.as_str()).collect();
            return Err(LoadError::Unsupported(format!(
                "projections {} have {} output columns, the layout needs {width}",
                names.join(", "),
                p.n()
            )));
        }
        let mut col = y.col;
        for m in &p.mats {
            self.mm_normed(plan, m, x, Act::at(y.buf, y.stride, col), false)
                .await?;
            col += m.n;
        }
        Ok(())
    }

    /// embed(ids) → x, then every decoder layer (spec §4.1 steps 1–2). Leaves h_pre in `x`.
    pub async fn body(&self, state: &State) -> Result<Plan, LoadError> {
        let mut plan = Plan::new();
        let h = self.cfg.hidden_size as u32;
        for d in embed::embed(
            self.gpu,
            &self.w.embed,
            &self.ws.ids,
            0,
            Act::new(self.x, h),
            self.step,
        )
        .await?
        {
            plan.push(d);
        }
        let layers = &self.w.layers;
        let mut pre = false;
        for (i, (layer, ls)) in layers.iter().zip(&state.layers).enumerate() {
            let next = layers
                .get(i + 1)
                .map(|l| (&l.input_norm, input_consumers(l)));
            pre = self.layer(&mut plan, layer, ls, pre, next).await?;
        }
        self.tail_prefetch(&mut plan, Site::LmHead, Some(self.w.lm_head()))
            .await?;
        Ok(plan)
    }

    /// One decoder layer (spec §4.2): x += Mixer(norm(x)); x += MLP(norm(x)). `pre`: the
    /// residual projection in front wrote this layer's normed input as planes (norm deferred);
    /// `next`: the next layer's input norm and its readers. Returns whether this layer's down
    /// projection wrote the next layer's normed input.
    pub async fn layer(
        &self,
        plan: &mut Plan,
        layer: &Layer,
        ls: &LayerState,
        pre: bool,
        next: NextNorm<'_>,
    ) -> Result<bool, LoadError> {
        let (g, ws, cfg) = (self.gpu, self.ws, self.cfg);
        let h = cfg.hidden_size as u32;
        let pw = ws.proj_width;
        let consumers = input_consumers(layer);
        self.tail_prefetch(plan, Site::In, consumers.first())
            .await?;
        let xn = self.normed(plan, &layer.input_norm, consumers, pre).await?;
        let post: NextNorm<'_> = Some((&layer.post_norm, &layer.gate_up.mats));
        let post_pre = match (&layer.mixer, ls) {
            (
                Mixer::Attn {
                    qkv_proj,
                    o_proj,
                    q_norm,
                    k_norm,
                },
                LayerState::Attn(kv),
            ) => {
                self.attention(plan, xn, qkv_proj, o_proj, q_norm, k_norm, kv, post)
                    .await?
            }
            (
                Mixer::Gdn {
                    in_proj,
                    conv1d,
                    dt_bias,
                    a_log,
                    norm: gnorm,
                    out_proj,
                },
                LayerState::Gdn(st),
            ) => {
                let d = GdnDims {
                    streams: self.streams,
                    ..gdn_dims(cfg)
                };
                let (cd, vd, hv) = (cfg.conv_dim() as u32, cfg.value_dim() as u32, d.n_v_heads);
                // spec §4.6 step 1: the four input projections qkv | z | b | a, side by side in
                // `proj` (columns 0, cd, cd + vd, cd + vd + hv).
                // Steps 1-7 leave the gated, normalized rows in `yn` (None), or out_proj has
                // taken the gated norm and added to x already (Some(whether it also wrote the
                // MLP's normed input planes)).
                let out_proj_done: Option<bool> = 'mixer: {
                    let decode_tile = crate::ops::matmul::decode_tile(self.mt);
                    if (xn.norm.is_some() || xn.planes) && decode_tile && self.streams == 0 {
                        if crate::ops::gdn::fused_gdn()
                            && in_proj.n() == cd + vd + 2 * hv
                            && d.conv_kernel <= crate::ops::gdn::CONV_KMAX
                            && in_proj.mats.iter().all(|m| {
                                if xn.planes {
                                    crate::ops::matmul::xq_conv_fits(g)
                                } else {
                                    crate::ops::matmul::folds_conv(g, m, self.mt)
                                }
                            })
                            && crate::ops::gdn::gated_recurrence_layout(g, &d).is_some()
                            && g.limits.max_storage_buffers_per_shader_stage
                                >= crate::ops::gdn::FUSED_RECURRENCE_STORAGE_BUFFERS
                        {
                            // Steps 1-3 in the input projection (the conv in its epilogue), steps
                            // 4-7 in one dispatch (the bits of the kernels below), then step 8.
                            let conv = crate::ops::matmul::ConvFold {
                                conv_w: conv1d,
                                state: &st.conv,
                                snap: &st.conv_snap,
                                out: &ws.conv_out,
                                conv_dim: cd,
                                taps: d.conv_kernel,
                            };
                            let mut col = 0;
                            for m in &in_proj.mats {
                                let y = Act::at(&ws.proj, pw, col);
                                let opts = MatmulOpts {
                                    rows: Rows::Tokens,
                                    add: false,
                                    mt: self.mt,
                                    swiglu: false,
                                };
                                let ds = match xn.norm {
                                    _ if xn.planes => {
                                        crate::ops::matmul::matmul_xq_ext(
                                            g,
                                            m,
                                            xn.x.buf,
                                            y,
                                            self.step,
                                            opts,
                                            (col < cd).then_some(conv),
                                            xn.deferred,
                                            None,
                                        )
                                        .await?
                                    }
                                    Some((norm_w, eps)) if col < cd => {
                                        crate::ops::matmul::matmul_normed_conv(
                                            g, m, xn.x, norm_w, eps, y, conv, self.step, opts,
                                        )
                                        .await?
                                    }
                                    Some((norm_w, eps)) => {
                                        crate::ops::matmul::matmul_normed(
                                            g, m, xn.x, norm_w, eps, y, self.step, opts,
                                        )
                                        .await?
                                    }
                                    None => {
                                        return Err(LoadError::Unsupported(
                                            "the fused Gated-DeltaNet path needs a folded or planar input".into(),
                                        ))
                                    }
                                };
                                plan.extend_vec(ds);
                                col += m.n;
                            }
                            // With integer planes, the recurrence writes out_proj's input planes
                            // itself (the bits of an xquant dispatch on its output).
                            let planes_out = self
                                .planes_for(std::slice::from_ref(out_proj), self.mt)
                                && crate::ops::gdn::fused_recurrence_takes_planes(g, &d);
                            plan.extend_vec(
                                crate::ops::gdn::gdn_recurrence_fused(
                                    g,
                                    &d,
                                    &ws.conv_out,
                                    &st.ssm,
                                    &st.ssm_snap,
                                    Act::at(&ws.proj, pw, cd),
                                    cd + vd,
                                    cd + vd + hv,
                                    a_log,
                                    dt_bias,
                                    gnorm,
                                    &ws.yn,
                                    planes_out.then_some(&ws.xq),
                                    self.step,
                                )
                                .await?,
                            );
                            self.tail_prefetch(plan, Site::OutProj, Some(out_proj))
                                .await?;
                            if planes_out {
                                let wrote = self
                                    .mm_planes(plan, out_proj, Act::new(self.x, h), true, post)
                                    .await?;
                                break 'mixer Some(wrote);
                            }
                            break 'mixer None;
                        }
                    }
                    self.mm_side_by_side(
                        plan,
                        in_proj,
                        xn,
                        Act::at(&ws.proj, pw, 0),
                        cd + vd + 2 * hv,
                    )
                    .await?;
                    let (b, a) = (
                        Act::at(&ws.proj, pw, cd + vd),
                        Act::at(&ws.proj, pw, cd + vd + hv),
                    );
                    if conv_prep_wg(d.k_head_dim).is_some()
                        && g.device.limits().max_storage_buffers_per_shader_stage
                            >= CONV_PREP_STORAGE_BUFFERS
                    {
                        // steps 2–5 in one dispatch (same bits as the two kernels below).
                        plan.extend_vec(
                            gdn_conv_prep(
                                g,
                                &d,
                                Act::at(&ws.proj, pw, 0),
                                conv1d,
                                &st.conv,
                                &st.conv_snap,
                                &ws.conv_out,
                                b,
                                a,
                                a_log,
                                dt_bias,
                                &ws.gates,
                                self.step,
                            )
                            .await?,
                        );
                    } else if self.streams > 0 {
                        return Err(LoadError::Unsupported(format!(
                            "independent streams need gdn_conv_prep ({} storage buffers per shader stage, key heads of at most 256 channels)",
                            CONV_PREP_STORAGE_BUFFERS
                        )));
                    } else {
                        // steps 2–3: causal conv + SiLU over q|k|v with the 3-row conv state.
                        plan.extend_vec(
                            gdn_conv(
                                g,
                                &d,
                                Act::at(&ws.proj, pw, 0),
                                conv1d,
                                &st.conv,
                                &st.conv_snap,
                                &ws.conv_out,
                                self.step,
                            )
                            .await?,
                        );
                        // steps 4–5: q/k normalization and the g, beta gates.
                        plan.extend_vec(
                            gdn_prep(
                                g,
                                &d,
                                &ws.conv_out,
                                b,
                                a,
                                a_log,
                                dt_bias,
                                &ws.gates,
                                self.step,
                            )
                            .await?,
                        );
                    }
                    let z = Act::at(&ws.proj, pw, cd);
                    let fold_gated = self.fold_norms
                        && pw % 4 == 0
                        && cd % 4 == 0
                        && crate::ops::matmul::folds_gated(g, out_proj, self.mt, d.v_head_dim);
                    if !fold_gated
                        && decode_tile
                        && crate::ops::gdn::gated_recurrence()
                        && crate::ops::gdn::gated_recurrence_layout(g, &d).is_some()
                    {
                        // steps 6 and 7 in one dispatch (the bits of the two kernels below).
                        plan.extend_vec(
                            crate::ops::gdn::gdn_recurrence_gated(
                                g,
                                &d,
                                &ws.conv_out,
                                &ws.gates,
                                &st.ssm,
                                &st.ssm_snap,
                                z,
                                gnorm,
                                &ws.yn,
                                self.step,
                            )
                            .await?,
                        );
                        break 'mixer None;
                    }
                    // step 6: the delta-rule recurrence on the f32 state (snapshot after n_confirmed).
                    plan.extend_vec(
                        gdn_recurrence(
                            g,
                            &d,
                            &ws.conv_out,
                            &ws.gates,
                            &st.ssm,
                            &st.ssm_snap,
                            &ws.y,
                            self.step,
                        )
                        .await?,
                    );
                    if fold_gated {
                        // steps 7 and 8 in one dispatch: out_proj takes the gated norm (decode tiles).
                        plan.extend_vec(
                            crate::ops::matmul::matmul_gated(
                                g,
                                out_proj,
                                Act::new(&ws.y, vd),
                                z,
                                gnorm,
                                d.v_head_dim,
                                d.eps,
                                Act::new(self.x, h),
                                self.step,
                                MatmulOpts {
                                    rows: Rows::Tokens,
                                    add: true,
                                    mt: self.mt,
                                    swiglu: false,
                                },
                            )
                            .await?,
                        );
                        Some(false)
                    } else {
                        // step 7: gated RMSNorm with silu(z).
                        plan.extend_vec(
                            gated_norm(g, &d, &ws.y, z, gnorm, &ws.yn, self.step).await?,
                        );
                        None
                    }
                };
                match out_proj_done {
                    Some(wrote) => wrote,
                    // step 8: out_proj on the gated, normalized rows, added to the residual stream.
                    None => {
                        self.mm_in(
                            plan,
                            out_proj,
                            Act::new(&ws.yn, vd),
                            Act::new(self.x, h),
                            true,
                            post,
                        )
                        .await?
                    }
                }
            }
            _ => {
                return Err(LoadError::Unsupported(
                    "layer kind and state kind disagree".into(),
                ))
            }
        };
        self.mlp(plan, layer, post_pre, next).await
    }

    /// Gated attention (spec §4.5) against `kv`, added to x.
    #[allow(clippy::too_many_arguments)]
    pub async fn attention(
        &self,
        plan: &mut Plan,
        xn: NormedX<'_>,
        qkv_proj: &Projections,
        o_proj: &Matrix,
        q_norm: &GpuBuffer,
        k_norm: &GpuBuffer,
        kv: &KvCache,
        post: NextNorm<'_>,
    ) -> Result<bool, LoadError> {
        let (g, ws, cfg) = (self.gpu, self.ws, self.cfg);
        let h = cfg.hidden_size as u32;
        let pw = ws.proj_width;
        let d = AttnDims {
            kv_f16: kv.f16,
            streams: self.streams,
            ..attn_dims(cfg, self.max_ctx)
        };
        let (qw, kw) = (2 * d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
        // q (with its gate) | k | v side by side in `proj` (columns 0, qw, qw + kw).
        self.mm_side_by_side(plan, qkv_proj, xn, Act::at(&ws.proj, pw, 0), qw + 2 * kw)
            .await?;
        let scratch = if self.attn_split {
            Some(&ws.attn_scratch)
        } else {
            None
        };
        // Decode and verify tiles fold the prep (and at level 2, on Vulkan, the final pass) into
        // attention's split pass (every row a split row there): one or two dispatches fewer, the
        // same bits.
        let level = crate::ops::attention::attention_fold_level();
        let fold = (self.mt != crate::ops::matmul::MT_PREFILL
            && level >= 1
            && crate::ops::attention::attention_folds(g, &d, scratch, self.mt))
        .then_some(crate::ops::attention::PrepFold {
            k_col: qw,
            v_col: qw + kw,
            q_norm,
            k_norm,
            rows: self.mt,
            combine: (level >= 2 && crate::ops::attention::attention_combines(g))
                .then_some(&ws.attn_done),
        });
        // With integer planes, the attention kernel writes o_proj's planes itself (the bits of an
        // xquant dispatch on its output).
        let planes_out = crate::ops::matmul::fuse_xq()
            && o_proj.k == d.n_heads * d.head_dim
            && self.planes_for(std::slice::from_ref(o_proj), self.mt)
            && crate::ops::attention::attention_writes_planes(g, &d);
        // From `attention_fold_keys` keys on, the unfolded form (the same bits; each step
        // records the form for its key estimate).
        let fold_keys = crate::ops::attention::attention_fold_keys();
        let forms = match fold {
            Some(f) if fold_keys < u32::MAX => {
                vec![(Some(f), 0, fold_keys - 1), (None, fold_keys, u32::MAX)]
            }
            f => vec![(f, 0, u32::MAX)],
        };
        for (fold, lo, hi) in forms {
            let mut sub = Plan::new();
            let combined = fold.is_some_and(|f| f.combine.is_some());
            if fold.is_none() {
                sub.extend_vec(
                    attn_prep(
                        g,
                        &d,
                        Act::at(&ws.proj, pw, 0),
                        Act::at(&ws.proj, pw, qw),
                        Act::at(&ws.proj, pw, qw + kw),
                        q_norm,
                        k_norm,
                        &ws.q,
                        &kv.k,
                        &kv.v,
                        self.step,
                    )
                    .await?,
                );
            }
            let attn = crate::ops::attention::attention_fold(
                g,
                &d,
                &ws.q,
                Act::at(&ws.proj, pw, 0),
                &kv.k,
                &kv.v,
                scratch,
                &ws.y,
                planes_out.then_some(&ws.xq),
                // Prompt chunks: several query rows per workgroup (the same bits).
                if self.mt == crate::ops::matmul::MT_PREFILL {
                    crate::ops::attention::attention_rows()
                } else {
                    1
                },
                fold,
                self.step,
            )
            .await?;
            let n_attn = attn.len();
            for (i, d) in attn.into_iter().enumerate() {
                sub.push(d);
                if i == 0 && n_attn > 1 && !combined {
                    self.tail_prefetch(&mut sub, Site::OProjSplit, Some(o_proj))
                        .await?;
                }
            }
            plan.dispatches.extend(
                sub.dispatches
                    .into_iter()
                    .filter_map(|d| d.within_keys(lo, hi)),
            );
        }
        self.tail_prefetch(plan, Site::OProj, Some(o_proj)).await?;
        if planes_out {
            return self
                .mm_planes(plan, o_proj, Act::new(self.x, h), true, post)
                .await;
        }
        self.mm_in(
            plan,
            o_proj,
            Act::new(&ws.y, d.n_heads * d.head_dim),
            Act::new(self.x, h),
            true,
            post,
        )
        .await
    }

    /// Records a read of the first bytes of `m` into the GPU's cache where decode steps take a
    /// tail prefetch ([`crate::ops::prefetch::tail_prefetch`]) at `site`: pushed right after the
    /// dispatch in front of `m`'s matmul, it runs in that dispatch's tail and the matmul starts
    /// on cached weights.
    async fn tail_prefetch(
        &self,
        plan: &mut Plan,
        site: Site,
        m: Option<&Matrix>,
    ) -> Result<(), LoadError> {
        if let (Some(t), Some(m), true) = (
            crate::ops::prefetch::tail_prefetch(self.gpu),
            m,
            crate::ops::matmul::decode_tile(self.mt),
        ) {
            if let Some(bytes) = crate::ops::prefetch::site_bytes(t, site) {
                if let Some(d) =
                    crate::ops::prefetch::cache_prefetch(self.gpu, m, bytes, t.workgroups).await?
                {
                    plan.push(d);
                }
            }
        }
        Ok(())
    }

    /// SwiGLU MLP (spec §4.4) on norm(x), added to x. `pre`: the mixer's projection wrote the
    /// normed input's planes; `next`: the next norm and its readers, whose planes the down
    /// projection writes where it can (returns whether it did).
    pub async fn mlp(
        &self,
        plan: &mut Plan,
        layer: &Layer,
        pre: bool,
        next: NextNorm<'_>,
    ) -> Result<bool, LoadError> {
        let (g, ws, cfg) = (self.gpu, self.ws, self.cfg);
        let (h, i) = (cfg.hidden_size as u32, cfg.intermediate_size as u32);
        self.tail_prefetch(plan, Site::GateUp, layer.gate_up.mats.first())
            .await?;
        let xn = self
            .normed(plan, &layer.post_norm, &layer.gate_up.mats, pre)
            .await?;
        if let (true, [m], true) = (layer.swiglu_fused, layer.gate_up.mats.as_slice(), xn.planes) {
            // gate+up writes down's input planes in its SwiGLU epilogue: no xquant dispatch.
            let opts = MatmulOpts {
                rows: Rows::Tokens,
                add: false,
                mt: self.mt,
                swiglu: true,
            };
            if m.n / 2 == i
                && self.planes_for(std::slice::from_ref(&layer.down), self.mt)
                && layer.down.k == i
                && crate::ops::matmul::writes_xq(g, m, &opts)
            {
                plan.extend_vec(
                    crate::ops::matmul::matmul_xq_ext(
                        g,
                        m,
                        xn.x.buf,
                        Act::new(&ws.act, i),
                        self.step,
                        opts,
                        None,
                        xn.deferred,
                        Some(crate::ops::matmul::XqOut {
                            planes: &ws.xq,
                            norm_w: None,
                        }),
                    )
                    .await?,
                );
                self.tail_prefetch(plan, Site::Down, Some(&layer.down))
                    .await?;
                return self
                    .mm_planes(plan, &layer.down, Act::new(self.x, h), true, next)
                    .await;
            }
        }
        match (layer.swiglu_fused, layer.gate_up.mats.as_slice()) {
            // gate/up rows interleaved: one matmul writes silu(gate) * up into `act`.
            (true, [m]) => {
                self.mm_normed(plan, m, xn, Act::new(&ws.act, i), true)
                    .await?;
            }
            _ => {
                // gate | up side by side in `gu` (columns 0, i), then the SwiGLU kernel.
                self.mm_side_by_side(plan, &layer.gate_up, xn, Act::at(&ws.gu, 2 * i, 0), 2 * i)
                    .await?;
                plan.push(swiglu::swiglu(g, i, &ws.gu, &ws.act, self.step).await?);
            }
        }
        self.mm_in(
            plan,
            &layer.down,
            Act::new(&ws.act, i),
            Act::new(self.x, h),
            true,
            next,
        )
        .await
    }

    /// Final norm of the rows that need logits, lm_head, argmax into `out_ids` (spec §4.1 3–5).
    pub async fn head(&self) -> Result<Plan, LoadError> {
        let ws = self.ws;
        let mut plan = Plan::new();
        let xo = self.head_input(&mut plan, &self.w.final_norm).await?;
        self.lm_head(&mut plan, xo, &ws.logits, &ws.out_ids).await?;
        Ok(plan)
    }

    /// RMSNorm with `norm_w` of the step's out rows, compactly: as integer planes in `ws.xq`
    /// where lm_head takes them in both decode tiles, else into `ws.xo`.
    async fn head_input(
        &self,
        plan: &mut Plan,
        norm_w: &GpuBuffer,
    ) -> Result<NormedX<'_>, LoadError> {
        let (g, ws, cfg) = (self.gpu, self.ws, self.cfg);
        let h = cfg.hidden_size as u32;
        let lm = std::slice::from_ref(self.w.lm_head());
        if ws.max_out <= XQ_ROWS && self.planes_for(lm, crate::ops::matmul::MT_ONE) {
            plan.push(
                xquant(
                    g,
                    h,
                    Act::new(self.x, h),
                    Some((norm_w, cfg.rms_norm_eps)),
                    &ws.xq,
                    XQ_ROWS,
                    self.step,
                    true,
                )
                .await?,
            );
            return Ok(NormedX {
                x: Act::new(&ws.xq, 0),
                norm: None,
                planes: true,
                deferred: None,
            });
        }
        plan.push(
            norm::rms_norm(
                g,
                h,
                cfg.rms_norm_eps,
                Act::new(self.x, h),
                norm_w,
                Act::new(&ws.xo, h),
                self.step,
                true,
            )
            .await?,
        );
        Ok(NormedX {
            x: Act::new(&ws.xo, h),
            norm: None,
            planes: false,
            deferred: None,
        })
    }

    /// Final norm and lm_head into `ws.logits`, without choosing a token (the sampler follows).
    pub async fn head_logits(&self) -> Result<Plan, LoadError> {
        let (ws, cfg) = (self.ws, self.cfg);
        let v = cfg.vocab_size as u32;
        let mut plan = Plan::new();
        let xo = self.head_input(&mut plan, &self.w.final_norm).await?;
        self.lm_head_rows(&mut plan, xo, Act::new(&ws.logits, v))
            .await?;
        Ok(plan)
    }

    /// lm_head on the step's out rows of `x` into `y`: the 1-token tile when the step has one out
    /// row, the 2-token tile for two, and where the workspace has more out rows (a batch of
    /// streams) the 3- and 4-token tiles for three and four (all in the plan, the step's row count picks
    /// one; the tiles give the same bits for a row, so a decode's logits equal a verify's row 0).
    async fn lm_head_rows(
        &self,
        plan: &mut Plan,
        x: NormedX<'_>,
        y: Act<'_>,
    ) -> Result<(), LoadError> {
        use crate::ops::matmul::{MT_FOUR, MT_ONE, MT_SMALL, MT_THREE};
        let tiles: &[(u32, (u32, u32))] = if self.ws.max_out > MT_SMALL {
            &[
                (MT_ONE, (1, 1)),
                (MT_SMALL, (2, 2)),
                (MT_THREE, (3, 3)),
                (MT_FOUR, (4, u32::MAX)),
            ]
        } else {
            &[(MT_ONE, (1, 1)), (MT_SMALL, (2, u32::MAX))]
        };
        for &(mt, out_rows) in tiles {
            let opts = MatmulOpts {
                rows: Rows::Out,
                add: false,
                mt,
                swiglu: false,
            };
            let ds = if x.planes {
                crate::ops::matmul::matmul_xq(
                    self.gpu,
                    self.w.lm_head(),
                    x.x.buf,
                    y,
                    self.step,
                    opts,
                    None,
                )
                .await?
            } else {
                matmul(self.gpu, self.w.lm_head(), x.x, y, self.step, opts).await?
            };
            for mut d in ds {
                d.grid.out_rows = out_rows;
                plan.push(d);
            }
        }
        Ok(())
    }

    /// lm_head on the normed out rows in `xo`, then argmax into `ids`.
    async fn lm_head(
        &self,
        plan: &mut Plan,
        xo: NormedX<'_>,
        logits: &GpuBuffer,
        ids: &GpuBuffer,
    ) -> Result<(), LoadError> {
        let (g, ws, cfg) = (self.gpu, self.ws, self.cfg);
        let v = cfg.vocab_size as u32;
        self.lm_head_rows(plan, xo, Act::new(logits, v)).await?;
        plan.extend_vec(argmax::argmax(g, v, logits, &ws.argmax_scratch, ids, 0, self.step).await?);
        Ok(())
    }

    /// The MTP head's input and decoder layer (spec §6 steps 1–4) for the step's rows: row r pairs
    /// the backbone's pre-norm hidden state `ws.x[r]` with the token id `ws.mtp_ids[r]`. Writes
    /// the layer's K/V into the MTP cache and leaves the result in `self.x` (= `ws.x_mtp`).
    pub async fn mtp_front(&self, mtp: &Mtp, kv: &KvCache) -> Result<Plan, LoadError> {
        let (g, ws, cfg) = (self.gpu, self.ws, self.cfg);
        let h = cfg.hidden_size as u32;
        let eps = cfg.rms_norm_eps;
        let mut plan = Plan::new();
        self.tail_prefetch(&mut plan, Site::Mtp, Some(&mtp.fc))
            .await?;
        // e = RMSNorm(embed(id)) into cat[:, 0:H]; hh = RMSNorm(h) into cat[:, H:2H] (embedding first).
        for d in embed::embed(
            g,
            &self.w.embed,
            &ws.mtp_ids,
            0,
            Act::new(&ws.xn, h),
            self.step,
        )
        .await?
        {
            plan.push(d);
        }
        // Both norms in one dispatch (the bits of two).
        plan.push(
            norm::rms_norm_pair(
                g,
                h,
                eps,
                (
                    Act::new(&ws.xn, h),
                    &mtp.pre_fc_norm_embedding,
                    Act::at(&ws.cat, 2 * h, 0),
                ),
                (
                    Act::new(&ws.x, h),
                    &mtp.pre_fc_norm_hidden,
                    Act::at(&ws.cat, 2 * h, h),
                ),
                self.step,
            )
            .await?,
        );
        // f = fc(cat) → the MTP residual stream.
        self.mm(
            &mut plan,
            &mtp.fc,
            Act::new(&ws.cat, 2 * h),
            Act::new(self.x, h),
            false,
        )
        .await?;
        let layer = &mtp.layer;
        let post_pre = match &layer.mixer {
            Mixer::Attn {
                qkv_proj,
                o_proj,
                q_norm,
                k_norm,
            } => {
                self.tail_prefetch(&mut plan, Site::Mtp, qkv_proj.mats.first())
                    .await?;
                let xn = self
                    .normed(&mut plan, &layer.input_norm, &qkv_proj.mats, false)
                    .await?;
                self.attention(
                    &mut plan,
                    xn,
                    qkv_proj,
                    o_proj,
                    q_norm,
                    k_norm,
                    kv,
                    Some((&layer.post_norm, &layer.gate_up.mats)),
                )
                .await?
            }
            Mixer::Gdn { .. } => {
                return Err(LoadError::Unsupported(
                    "the MTP layer must be a full-attention layer".into(),
                ))
            }
        };
        self.mlp(&mut plan, layer, post_pre, None).await?;
        self.tail_prefetch(&mut plan, Site::LmHead, Some(self.w.lm_head()))
            .await?;
        Ok(plan)
    }

    /// The MTP head's logits (spec §6 step 5) into `ws.mtp_logits`, without choosing a token.
    pub async fn mtp_head_logits(&self, mtp: &Mtp) -> Result<Plan, LoadError> {
        let (ws, cfg) = (self.ws, self.cfg);
        let v = cfg.vocab_size as u32;
        let mut plan = Plan::new();
        let xo = self.head_input(&mut plan, &mtp.norm).await?;
        self.lm_head_rows(&mut plan, xo, Act::new(&ws.mtp_logits, v))
            .await?;
        Ok(plan)
    }

    /// The MTP head's output (spec §6 step 5): RMSNorm(mtp.norm) of the out rows, the shared
    /// lm_head, argmax into `ws.mtp_out`.
    pub async fn mtp_head(&self, mtp: &Mtp) -> Result<Plan, LoadError> {
        let ws = self.ws;
        let mut plan = Plan::new();
        let xo = self.head_input(&mut plan, &mtp.norm).await?;
        self.lm_head(&mut plan, xo, &ws.mtp_logits, &ws.mtp_out)
            .await?;
        Ok(plan)
    }
}
