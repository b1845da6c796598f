//! Greedy speculative decoding with the model's MTP head (spec §7): draft one token with the
//! head, verify it with a 2-row forward, emit 1 or 2 tokens per iteration. The output equals
//! plain greedy decoding token for token (the verify reuses the backbone's batch-invariant
//! kernels and restores the recurrent state exactly on rejection).

use crate::decode::{emit, plain_steps, Event, Finish, GenOptions};
use crate::model::{MtpStep, RunError, Session};

/// Drafts proposed and accepted during one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MtpStats {
    pub drafted: u64,
    pub accepted: u64,
}

impl MtpStats {
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// How speculation adapts to the acceptance it gets.
#[derive(Clone, Copy, Debug)]
pub struct MtpOptions {
    /// Fall back to plain decoding for the rest of the request when, after `probe` verify steps,
    /// the acceptance rate is below `min_acceptance` (speculation would be slower than plain);
    /// earlier, from [`EARLY_PROBE`] steps on, when a head accepting `min_acceptance` of its
    /// drafts would accept this few less than [`EARLY_ALPHA`] of the time ([`MtpOptions::stops`]).
    pub adaptive: bool,
    pub probe: u64,
    pub min_acceptance: f64,
    /// (Adaptive) use the session's measured break-even instead of `min_acceptance`, measuring
    /// it first when the session has not yet ([`Session::calibrate_mtp`], on an empty context).
    pub measured: bool,
}

/// Verify steps before the adaptive policy may stop early (see [`MtpOptions::stops`]).
pub const EARLY_PROBE: u64 = 4;
/// How unlikely the accepted count must be at the break-even acceptance for an early stop.
pub const EARLY_ALPHA: f64 = 0.05;

/// P(X <= k) for X ~ Binomial(n, p).
pub fn binomial_cdf(k: u64, n: u64, p: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    let p = p.clamp(0.0, 1.0);
    if p >= 1.0 {
        return 0.0;
    }
    // The terms by their ratio: P(X = i + 1) = P(X = i) · (n − i) / (i + 1) · p / (1 − p).
    let mut term = (1.0 - p).powi(n as i32);
    let mut sum = term;
    for i in 0..k {
        term *= (n - i) as f64 / (i + 1) as f64 * p / (1.0 - p);
        sum += term;
    }
    sum.min(1.0)
}

impl MtpOptions {
    /// Whether the adaptive policy stops speculating after `drafted` verify steps of which
    /// `accepted` were accepted, at break-even acceptance `min_acceptance`: at the end of the
    /// probe when the acceptance is below it (and at every step after), or from
    /// [`EARLY_PROBE`] steps on when an acceptance at break-even would give `accepted` or
    /// fewer less than [`EARLY_ALPHA`] of the time (a head that rarely agrees costs a few verify
    /// steps, not the whole probe). Never for a non-adaptive policy.
    pub fn stops(&self, drafted: u64, accepted: u64, min_acceptance: f64) -> bool {
        if !self.adaptive || drafted == 0 {
            return false;
        }
        if drafted >= self.probe {
            return (accepted as f64) < min_acceptance * drafted as f64;
        }
        drafted >= EARLY_PROBE && binomial_cdf(accepted, drafted, min_acceptance) < EARLY_ALPHA
    }

    /// Speculate whatever the acceptance (`--mtp on`, benchmarks).
    pub fn always() -> Self {
        MtpOptions {
            adaptive: false,
            probe: 0,
            min_acceptance: 0.0,
            measured: false,
        }
    }
    /// Speculate while it pays off for this session's model on this device (`--mtp auto`): the
    /// break-even acceptance comes from the session's measured step costs
    /// ([`Session::calibrate_mtp`], run by the first greedy adaptive request on an empty
    /// context), else, and always for sampled requests (whose tokens must not depend on timing),
    /// from [`Session::mtp_break_even`]'s model.
    pub fn adaptive(session: &Session) -> Self {
        MtpOptions {
            adaptive: true,
            probe: 16,
            min_acceptance: session.mtp_break_even_measured(),
            measured: true,
        }
    }
}

/// As [`crate::decode::generate`], with MTP speculation: greedy (exact match) or sampled
/// (accept with probability min(1, p/q), residual resampling on rejection) per the session's
/// sampling mode. EOS inside an accepted draft stops
/// before the bonus token; `max_tokens` is checked after every emitted token. After each verify
/// step, before its tokens, `on_event` hears [`Event::Mtp`] with the running counts.
pub async fn generate_mtp(
    session: &mut Session,
    prompt: &[u32],
    opts: &GenOptions,
    policy: &MtpOptions,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Result<(Vec<u32>, Finish, MtpStats), RunError> {
    generate_mtp_in_context(session, prompt, 0, opts, policy, on_event).await
}

/// As [`generate_mtp`] when the session's state (MTP cache included) already holds
/// `prompt[..in_context]` (see [`crate::decode::cache`]).
pub async fn generate_mtp_in_context(
    session: &mut Session,
    prompt: &[u32],
    in_context: usize,
    opts: &GenOptions,
    policy: &MtpOptions,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Result<(Vec<u32>, Finish, MtpStats), RunError> {
    let mut out = Vec::new();
    let mut stats = MtpStats::default();
    if in_context >= prompt.len() {
        return Err(RunError::Empty);
    }
    let rest = &prompt[in_context..];
    let Some((&last, head)) = rest.split_last() else {
        return Err(RunError::Empty);
    };
    let min_acceptance = break_even(session, policy, in_context).await?;
    session.start_request(prompt)?;
    if opts.max_tokens == 0 {
        session.prefill(rest).await?;
        on_event(Event::PromptDone);
        return Ok((out, Finish::Length, stats));
    }
    session.prefill_with(head, Some(last)).await?;
    let (main, _draft) = session.mtp_first(last).await?;
    on_event(Event::PromptDone);
    if let Some(f) = emit(main, None, &mut out, opts, on_event) {
        return Ok((out, f, stats));
    }
    // Iterations are queued one ahead: the GPU advances the next one's positions and rollback
    // itself, so it never waits for the host between iterations. Sampled ones too when the MTP
    // head runs on its one row (the draft's distribution is then always in the same row;
    // `Session::mtp_queues`); otherwise the next one's body goes ahead: its layers run on the GPU
    // while the host reads this iteration, and only its heads wait (as for constrained requests).
    let sampling = session.is_sampling();
    let queue_ahead = session.mtp_queues() && (!sampling || sampled_queue());
    let body_ahead = !queue_ahead && crate::decode::constrain::body_ahead();
    loop {
        if policy.stops(stats.drafted, stats.accepted, min_acceptance) {
            // Not paying off: take the queued iteration's tokens, then continue with plain steps
            // (a pending rollback is applied first, and the last emitted token is already the
            // next input on the GPU). (No sampled body waits here: one goes ahead only when a
            // rejection could not stop speculation, and an acceptance stops it less.)
            while session.pending_verifies() > 0 {
                let step = session.mtp_read_verify().await?;
                if let Some(f) = take_step(step, &mut stats, &mut out, opts, on_event) {
                    session.settle().await?;
                    return Ok((out, f, stats));
                }
            }
            let f = plain_steps(session, &mut out, opts, on_event, true).await?;
            return Ok((out, f, stats));
        }
        if session.pending_verifies() == 0 {
            // (The heads of a body submitted ahead, or a whole iteration.)
            session.mtp_submit_verify()?;
        }
        // Each queued iteration emits at least one token: queue another only while its tokens
        // can still be needed and it fits even if every queued iteration accepts; and, during
        // the adaptive probe, not when the queued iterations' rejection would stop speculation
        // (that iteration runs only if they pay off). Sampled: never when it would not run
        // unqueued. The policy stops less with more accepted drafts, so an iteration queued when
        // even rejections would not stop it runs unqueued too; then a seed's tokens do not
        // depend on queueing (sampled speculation keeps plain sampling's law, not its draws).
        let queued = session.pending_verifies() as u64;
        let probing = stats.drafted + queued <= policy.probe;
        let may_stop = (probing || sampling)
            && policy.stops(stats.drafted + queued, stats.accepted, min_acceptance);
        if queue_ahead
            && !may_stop
            && out.len() + (queued as usize) < opts.max_tokens
            && session.has_room(2 * (queued as u32 + 1))
        {
            session.mtp_submit_verify()?;
        }
        // Sampled: the next iteration's body, when its tokens can still be needed (this one
        // emits at least one), it fits even if this one accepts, and this one's rejection would
        // not stop speculation.
        if body_ahead
            && out.len() + 1 < opts.max_tokens
            && session.has_room(4)
            && !policy.stops(stats.drafted + 1, stats.accepted, min_acceptance)
        {
            session.mtp_submit_body_ahead()?;
        }
        let step = session.mtp_read_verify().await?;
        if let Some(f) = take_step(step, &mut stats, &mut out, opts, on_event) {
            // A queued iteration may still be running: read it so the session's positions and
            // rollback are exact (its tokens are not emitted).
            session.settle().await?;
            return Ok((out, f, stats));
        }
    }
}

static SAMPLED_QUEUE: crate::gpu::Switch = crate::gpu::Switch::new("QWGPU_MTP_SAMPLED_QUEUE", true);

/// Whether sampled speculative iterations are queued one ahead where the session allows it
/// ([`Session::mtp_queues`]): on unless `QWGPU_MTP_SAMPLED_QUEUE=0`, which submits the next one's
/// body ahead instead (or whole iterations, see [`crate::decode::constrain::set_mtp_body_ahead`]).
/// A seed gives the same tokens either way (tested); only the GPU's idle time differs.
pub fn sampled_queue() -> bool {
    SAMPLED_QUEUE.get()
}

/// Sets [`sampled_queue`] (`None`: the start-up choice).
pub fn set_mtp_sampled_queue(on: Option<bool>) {
    SAMPLED_QUEUE.set(on);
}

/// The acceptance below which `policy` stops speculating for a request whose state holds
/// `in_context` ids.
pub(crate) async fn break_even(
    session: &mut Session,
    policy: &MtpOptions,
    in_context: usize,
) -> Result<f64, RunError> {
    // The adaptive policy's break-even: measured on this device once per session (on an empty
    // context, before the request; the context is left empty). Sampled requests take the
    // unmeasured model instead: a measurement moves with timing, and where speculation stops
    // changes which tokens a seed draws (sampled speculation keeps plain sampling's law, not its
    // draws), so a seed must give the same tokens on every run. Greedy tokens never depend on it.
    let mut min_acceptance = policy.min_acceptance;
    if policy.adaptive && policy.measured {
        if session.is_sampling() {
            min_acceptance = session.mtp_break_even();
        } else {
            if session.mtp_costs().is_none() && in_context == 0 && session.pos() == 0 {
                session.calibrate_mtp(8).await?;
            }
            if session.mtp_costs().is_some() {
                min_acceptance = session.mtp_break_even_measured();
            }
        }
    }
    Ok(min_acceptance)
}

/// Counts one verify iteration and emits its tokens (the verified one, then the bonus when the
/// draft was accepted); Some(finish) when generation must stop.
pub(crate) fn take_step(
    step: MtpStep,
    stats: &mut MtpStats,
    out: &mut Vec<u32>,
    opts: &GenOptions,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Option<Finish> {
    stats.drafted += 1;
    if step.accepted {
        stats.accepted += 1;
    }
    if !on_event(Event::Mtp {
        drafted: stats.drafted,
        accepted: stats.accepted,
    }) {
        return Some(Finish::Length);
    }
    if let Some(f) = emit(step.verified, None, out, opts, on_event) {
        return Some(f);
    }
    if step.accepted {
        return emit(step.bonus, None, out, opts, on_event);
    }
    None
}
