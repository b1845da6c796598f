//! Constrained decoding: each token is chosen among those a [`TokenConstraint`] allows (a JSON
//! schema, a grammar), with the request's own sampling applied to the allowed ones.
//!
//! The constraint runs on the host: before each step's head it writes the allowed set as a bit
//! mask, which the sampler adds to the logits as a bias ([`crate::ops::sample::MASKED_LOGIT`]
//! for the others). A step's body does not need the mask, so it is submitted ahead, as in the
//! plain loop ([`Session::decode_body_ahead`]): while the GPU runs the layers of step n + 1, the
//! host reads token n, commits it and computes step n + 1's mask, then submits that step's head
//! ([`Session::decode_head`]) and the next body. Speculation is off (a draft would need the mask
//! of the position after it).
//!
//! Tokens the constraint forces (a mask of one id: a schema's keys, its punctuation) are known on
//! the host. Unless their logprobs are read, a run of them skips the heads and the readbacks and
//! is fed two ids per forward with the decode kernels ([`Session::feed_forced`]), whose rows have
//! the bits of one step each, the sampler's history and draw counter advancing as the skipped
//! heads' would: the same tokens as step by step (greedy or sampled), in fewer forwards.

use crate::decode::mtp::{break_even, MtpOptions, MtpStats};
use crate::decode::{emit, start, Event, Finish, GenOptions};
use crate::model::{RunError, Session};

/// What may come next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// Any token (the constraint is not active here, e.g. inside a reasoning block).
    Any,
    /// The tokens whose bit is set in the mask just written.
    Mask,
    /// Nothing more: the constrained output is complete, generation ends (as on EOS).
    End,
}

/// A rule over the generated tokens, consulted before each one.
pub trait TokenConstraint {
    /// What may come next; for [`Allowed::Mask`], the allowed ids are written to `mask` (bit
    /// `i % 32` of word `i / 32`; the slice covers the model's vocabulary and arrives zeroed).
    fn allowed(&mut self, mask: &mut [u32]) -> Result<Allowed, String>;
    /// The token chosen (one the last call allowed).
    fn commit(&mut self, id: u32) -> Result<(), String>;
    /// Whether [`TokenConstraint::peek`] answers: then constrained decoding can speculate with
    /// the model's MTP head (the bonus token after a draft needs the mask after the draft).
    fn lookahead(&self) -> bool {
        false
    }
    /// What [`TokenConstraint::allowed`] would answer (and write to `mask`) once `id`, a token
    /// the last call allowed, were committed, leaving the constraint as it is. `Ok(None)`: this
    /// constraint cannot look ahead.
    fn peek(&mut self, id: u32, mask: &mut [u32]) -> Result<Option<Allowed>, String> {
        let _ = (id, mask);
        Ok(None)
    }
}

fn constraint_error(e: String) -> RunError {
    RunError::Sampling(format!("constrained decoding: {e}"))
}

/// What the constraint allows next, its mask (when any) in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// The output is complete.
    End,
    /// Any token.
    Free,
    /// The tokens of the mask (more than one).
    Masked,
    /// Exactly one token (the mask holds it).
    Forced(u32),
}

fn next_allowed(c: &mut dyn TokenConstraint, mask: &mut [u32]) -> Result<Next, RunError> {
    mask.fill(0);
    let a = c.allowed(mask).map_err(constraint_error)?;
    classify(a, mask)
}

/// What the constraint allows after `id` (see [`TokenConstraint::peek`]), its mask in `mask`.
fn next_allowed_after(
    c: &mut dyn TokenConstraint,
    id: u32,
    mask: &mut [u32],
) -> Result<Next, RunError> {
    mask.fill(0);
    match c.peek(id, mask).map_err(constraint_error)? {
        Some(a) => classify(a, mask),
        None => Err(constraint_error(
            "this constraint cannot look ahead (speculation needs it)".into(),
        )),
    }
}

fn classify(a: Allowed, mask: &[u32]) -> Result<Next, RunError> {
    Ok(match a {
        Allowed::End => Next::End,
        Allowed::Any => Next::Free,
        Allowed::Mask => {
            let mut set = mask
                .iter()
                .enumerate()
                .filter(|(_, &w)| w != 0)
                .take(2)
                .map(|(i, &w)| (i, w));
            match (set.next(), set.next()) {
                (None, _) => {
                    return Err(constraint_error(
                        "no token can continue the output (the constraint allows none)".into(),
                    ))
                }
                (Some((i, w)), None) if w.count_ones() == 1 => {
                    Next::Forced(i as u32 * 32 + w.trailing_zeros())
                }
                _ => Next::Masked,
            }
        }
    })
}

/// Sets the session's token mask for the next head from `next` (not `End`).
fn apply(
    session: &mut Session,
    next: Next,
    mask: &[u32],
    masked: &mut bool,
) -> Result<(), RunError> {
    match next {
        Next::Masked | Next::Forced(_) => {
            session.set_token_mask(Some(mask))?;
            *masked = true;
        }
        Next::Free | Next::End => {
            if *masked {
                session.set_token_mask(None)?;
                *masked = false;
            }
        }
    }
    Ok(())
}

/// [`crate::decode::generate_in_context`] with every generated token allowed by `constraint`
/// (sampling as set by [`Session::set_sampling`], among the allowed tokens). Generation also ends
/// (finish `Stop`) when the constraint is complete. The session's mask is lifted on return.
pub async fn generate_constrained_in_context(
    session: &mut Session,
    prompt: &[u32],
    in_context: usize,
    opts: &GenOptions,
    constraint: &mut dyn TokenConstraint,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Result<(Vec<u32>, Finish), RunError> {
    let mut masked = false;
    let r = constrained(
        session,
        prompt,
        in_context,
        opts,
        constraint,
        on_event,
        &mut masked,
    )
    .await;
    if masked {
        session.set_token_mask(None)?;
    }
    r
}

/// The start of a constrained request, up to its first choice: what the constraint allows first
/// (into `mask`), or, when nothing may be generated (`max_tokens` 0 or the constraint complete
/// already), the prompt fed and the request's finish.
async fn first_allowed(
    session: &mut Session,
    rest: &[u32],
    opts: &GenOptions,
    c: &mut dyn TokenConstraint,
    mask: &mut [u32],
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Result<Result<Next, Finish>, RunError> {
    let first = if opts.max_tokens > 0 {
        next_allowed(c, mask)?
    } else {
        Next::End
    };
    if first != Next::End {
        return Ok(Ok(first));
    }
    session.prefill(rest).await?;
    on_event(Event::PromptDone);
    Ok(Err(if opts.max_tokens == 0 {
        Finish::Length
    } else {
        Finish::Stop
    }))
}

async fn constrained(
    session: &mut Session,
    prompt: &[u32],
    in_context: usize,
    opts: &GenOptions,
    c: &mut dyn TokenConstraint,
    on_event: &mut dyn FnMut(Event) -> bool,
    masked: &mut bool,
) -> Result<(Vec<u32>, Finish), RunError> {
    let mut out = Vec::new();
    let rest = start(session, prompt, in_context)?;
    let vocab = session.model.config.vocab_size;
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    let first = match first_allowed(session, rest, opts, c, &mut mask, on_event).await? {
        Ok(first) => first,
        Err(f) => return Ok((out, f)),
    };
    apply(session, first, &mask, masked)?;
    session.feed(rest).await?;
    let f = constrained_steps(
        session, opts, c, on_event, masked, &mut mask, &mut out, false,
    )
    .await?;
    Ok((out, f))
}

/// The constrained loop from a session with one step pending (its head chose under the mask
/// set now), until EOS, `max_tokens`, the constraint's end or `on_event` stops it.
#[allow(clippy::too_many_arguments)]
async fn constrained_steps(
    session: &mut Session,
    opts: &GenOptions,
    c: &mut dyn TokenConstraint,
    on_event: &mut dyn FnMut(Event) -> bool,
    masked: &mut bool,
    mask: &mut [u32],
    out: &mut Vec<u32>,
    mut prompt_done: bool,
) -> Result<Finish, RunError> {
    // Forced tokens skip their heads unless their logprobs are read (below).
    let skip_heads = !session.reads_logprobs();
    loop {
        // The next step's body goes ahead while its token may still be emitted and it fits (a
        // full context errors only when the token is needed, below).
        let ahead = out.len() + 1 < opts.max_tokens && session.has_room(1);
        if ahead {
            session.decode_body_ahead()?;
        }
        let tok = session.next_id().await?;
        if !prompt_done {
            on_event(Event::PromptDone);
            prompt_done = true;
        }
        let lp = session.last_logprobs().cloned();
        let eos = !opts.ignore_eos && opts.eos.contains(&tok);
        if !eos {
            c.commit(tok).map_err(constraint_error)?;
        }
        if let Some(f) = emit(tok, lp, out, opts, on_event) {
            session.discard_pending();
            return Ok(f);
        }
        let mut next = next_allowed(c, mask)?;
        if next == Next::End {
            return Ok(Finish::Stop);
        }
        if let (true, true, Next::Forced(_)) = (skip_heads, ahead, next) {
            // A run of forced tokens (a schema's keys and punctuation): known without the GPU,
            // so the body ahead (which fed `tok`) needs no head, and the run is fed two ids per
            // forward with the decode kernels, each row with the bits of its own step, the
            // sampler's history taking the ids and their draws as the skipped heads would have;
            // the head after the run's last id chooses under the first mask that is not forced.
            let mut run = Vec::new();
            while let Next::Forced(f) = next {
                if opts.ignore_eos || !opts.eos.contains(&f) {
                    c.commit(f).map_err(constraint_error)?;
                }
                if let Some(fin) = emit(f, None, out, opts, on_event) {
                    return Ok(fin);
                }
                run.push(f);
                next = next_allowed(c, mask)?;
            }
            if next == Next::End {
                return Ok(Finish::Stop);
            }
            apply(session, next, mask, masked)?;
            let pairs = run.len().div_ceil(2);
            for (i, ids) in run.chunks(2).enumerate() {
                session.feed_forced(ids, i + 1 == pairs)?;
            }
            continue;
        }
        apply(session, next, mask, masked)?;
        if ahead {
            session.decode_head()?;
        } else {
            session.decode_ahead()?;
        }
    }
}

/// The mask of `next` for [`Session::set_token_masks`] (`None` when any token may come).
fn row_mask(next: Next, mask: &[u32]) -> Option<&[u32]> {
    match next {
        Next::Masked | Next::Forced(_) => Some(mask),
        Next::Free | Next::End => None,
    }
}

fn allows(next: Next, mask: &[u32], id: u32) -> bool {
    match next {
        Next::Free => true,
        Next::End => false,
        Next::Masked | Next::Forced(_) => mask
            .get(id as usize / 32)
            .is_some_and(|w| w >> (id % 32) & 1 == 1),
    }
}

/// [`generate_constrained_in_context`] with MTP speculation (spec §7) where the session has a
/// usable MTP head and the constraint can look ahead ([`TokenConstraint::lookahead`]); else the
/// plain constrained loop (no stats). The tokens are those of the plain constrained loop: greedy
/// token for token, sampled in law.
///
/// Each verify's two target rows get their own masks ([`Session::set_token_masks`]): row 0 the
/// constraint's mask at the draft's position, row 1 (the bonus) the mask after the draft, which
/// the host computes by peeking the constraint with the draft id read back with the previous
/// iteration. The draft itself is unmasked: one the row-0 mask forbids has target probability 0
/// and is rejected (row 1 is then left free, its token unused). Where the constraint ends right
/// after an accepted draft, the bonus is not emitted, as the plain loop would stop there. Only
/// the heads wait for the masks: the next iteration's body is submitted before this one is read
/// ([`Session::mtp_submit_body_ahead`]), so the GPU runs its layers while the host reads the
/// tokens and computes the next masks, then the heads follow
/// ([`Session::mtp_submit_heads`]). `policy` may stop speculating (as
/// [`crate::decode::mtp`]'s loop does); the request then continues in the plain constrained
/// loop.
pub async fn generate_constrained_mtp_in_context(
    session: &mut Session,
    prompt: &[u32],
    in_context: usize,
    opts: &GenOptions,
    policy: &MtpOptions,
    constraint: &mut dyn TokenConstraint,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Result<(Vec<u32>, Finish, Option<MtpStats>), RunError> {
    if !session.mtp_available() || !constraint.lookahead() {
        let (t, f) = generate_constrained_in_context(
            session, prompt, in_context, opts, constraint, on_event,
        )
        .await?;
        return Ok((t, f, None));
    }
    let mut masked = true;
    let r = constrained_mtp(
        session,
        prompt,
        in_context,
        opts,
        policy,
        constraint,
        on_event,
        &mut masked,
    )
    .await;
    if r.is_err() {
        // A body submitted ahead of a failed step still gets its heads and is read, so the
        // session stays usable; the first error is the one reported.
        let _ = session.settle().await;
    }
    // Lifts the masks and puts the session back on the path its sampling settings choose.
    session.set_token_mask(None)?;
    r.map(|(t, f, s)| (t, f, Some(s)))
}

#[allow(clippy::too_many_arguments)]
async fn constrained_mtp(
    session: &mut Session,
    prompt: &[u32],
    in_context: usize,
    opts: &GenOptions,
    policy: &MtpOptions,
    c: &mut dyn TokenConstraint,
    on_event: &mut dyn FnMut(Event) -> bool,
    masked: &mut bool,
) -> Result<(Vec<u32>, Finish, MtpStats), RunError> {
    let mut out = Vec::new();
    let mut stats = MtpStats::default();
    if in_context >= prompt.len() {
        return Err(RunError::Empty);
    }
    let min_acceptance = break_even(session, policy, in_context).await?;
    let rest = start(session, prompt, in_context)?;
    let Some((&last, head)) = rest.split_last() else {
        return Err(RunError::Empty);
    };
    let words = session.model.config.vocab_size.div_ceil(32);
    let (mut m0, mut m1) = (vec![0u32; words], vec![0u32; words]);
    let first = match first_allowed(session, rest, opts, c, &mut m0, on_event).await? {
        Ok(first) => first,
        Err(f) => return Ok((out, f, stats)),
    };
    let is_eos = |t: u32| !opts.ignore_eos && opts.eos.contains(&t);
    // Every choice of the request goes through the sampler (see `Session::set_token_masks`).
    session.set_token_masks(row_mask(first, &m0), None)?;
    session.prefill_with(head, Some(last)).await?;
    let (main, mut draft) = session.mtp_first(last).await?;
    on_event(Event::PromptDone);
    if !is_eos(main) {
        c.commit(main).map_err(constraint_error)?;
    }
    if let Some(f) = emit(main, None, &mut out, opts, on_event) {
        return Ok((out, f, stats));
    }
    let mut n0 = next_allowed(c, &mut m0)?;
    if n0 == Next::End {
        return Ok((out, Finish::Stop, stats));
    }
    let mut n1 = masks_for_verify(session, c, n0, &m0, &mut m1, draft, is_eos(draft))?;
    session.mtp_submit_verify()?;
    loop {
        // The next iteration's body goes ahead while this one's tokens are read and the next
        // masks computed, when its tokens can still be needed (this iteration emits at least
        // one), it fits even if this one accepts, and this iteration's rejection would not stop
        // speculation.
        if out.len() + 1 < opts.max_tokens
            && body_ahead()
            && session.has_room(4)
            && !policy.stops(stats.drafted + 1, stats.accepted, min_acceptance)
        {
            session.mtp_submit_body_ahead()?;
        }
        let step = session.mtp_read_verify().await?;
        stats.drafted += 1;
        stats.accepted += step.accepted as u64;
        let f = take_constrained(step, n1, &mut stats, &mut out, opts, c, on_event, &is_eos)?;
        if let Some(f) = f {
            // A body submitted ahead runs its heads and is read, so the session's positions
            // stay exact (its tokens are not emitted).
            session.settle().await?;
            return Ok((out, f, stats));
        }
        draft = step.draft;
        n0 = next_allowed(c, &mut m0)?;
        if n0 == Next::End {
            session.settle().await?;
            return Ok((out, Finish::Stop, stats));
        }
        if policy.stops(stats.drafted, stats.accepted, min_acceptance) {
            // Not paying off (no body was submitted ahead then): the rest in the plain
            // constrained loop, from the last emitted token (the next input, on the GPU).
            // `apply` with `masked` set also lifts the verify's masks when the next token is
            // free, which takes the session off the sampler where its settings allow.
            session.settle().await?;
            *masked = true;
            apply(session, n0, &m0, masked)?;
            session.decode_ahead()?;
            let f = constrained_steps(session, opts, c, on_event, masked, &mut m0, &mut out, true)
                .await?;
            return Ok((out, f, stats));
        }
        n1 = masks_for_verify(session, c, n0, &m0, &mut m1, draft, is_eos(draft))?;
        // The heads of the body submitted ahead, or a whole iteration.
        session.mtp_submit_verify()?;
    }
}

/// Whether a sampled or constrained speculative iteration's body is submitted before the
/// previous iteration is read (default; `QWGPU_MTP_BODY_AHEAD=0` submits each iteration whole
/// once the previous one is read, for measurements).
pub(crate) fn body_ahead() -> bool {
    BODY_AHEAD.get()
}

static BODY_AHEAD: crate::gpu::Switch = crate::gpu::Switch::new("QWGPU_MTP_BODY_AHEAD", true);

/// Sets whether sampled and constrained speculative iterations submit the next body ahead
/// (`None`: the start-up choice, `QWGPU_MTP_BODY_AHEAD`). Either way the same kernels run in
/// the same order, so a seed gives the same tokens (tested); only the GPU's idle time differs.
pub fn set_mtp_body_ahead(on: Option<bool>) {
    BODY_AHEAD.set(on);
}

/// Sets the verify's masks: row 0's from `n0` (in `m0`); row 1's, the constraint after the draft
/// (into `m1`), when the draft can be accepted. A draft that ends the output (EOS) or that row 0
/// forbids leaves row 1 free (its token is never used). Returns row 1's `Next`.
fn masks_for_verify(
    session: &mut Session,
    c: &mut dyn TokenConstraint,
    n0: Next,
    m0: &[u32],
    m1: &mut [u32],
    draft: u32,
    draft_is_eos: bool,
) -> Result<Next, RunError> {
    let mut n1 = Next::Free;
    if !draft_is_eos && allows(n0, m0, draft) {
        // A constraint that cannot take the draft after all (its look-ahead fails) would fail
        // the plain loop only where the draft is chosen: row 1 stays free, and committing an
        // accepted draft then reports the constraint's error; a rejected one costs nothing.
        n1 = next_allowed_after(c, draft, m1).unwrap_or(Next::Free);
    }
    session.set_token_masks(row_mask(n0, m0), row_mask(n1, m1))?;
    Ok(n1)
}

/// Emits one verify iteration's tokens (the verified one, then the bonus when the draft was
/// accepted), committing them to the constraint; Some(finish) when generation must stop. `n1`:
/// what the constraint allowed after the draft (the output ends after an accepted draft when it
/// was `End`, before the bonus, as in the plain loop).
#[allow(clippy::too_many_arguments)]
fn take_constrained(
    step: crate::model::MtpStep,
    n1: Next,
    stats: &mut MtpStats,
    out: &mut Vec<u32>,
    opts: &GenOptions,
    c: &mut dyn TokenConstraint,
    on_event: &mut dyn FnMut(Event) -> bool,
    is_eos: &dyn Fn(u32) -> bool,
) -> Result<Option<Finish>, RunError> {
    if !on_event(Event::Mtp {
        drafted: stats.drafted,
        accepted: stats.accepted,
    }) {
        return Ok(Some(Finish::Length));
    }
    if !is_eos(step.verified) {
        c.commit(step.verified).map_err(constraint_error)?;
    }
    if let Some(f) = emit(step.verified, None, out, opts, on_event) {
        return Ok(Some(f));
    }
    if step.accepted {
        if n1 == Next::End {
            // The draft completed the output: the plain loop stops here too.
            return Ok(Some(Finish::Stop));
        }
        if !is_eos(step.bonus) {
            c.commit(step.bonus).map_err(constraint_error)?;
        }
        if let Some(f) = emit(step.bonus, None, out, opts, on_event) {
            return Ok(Some(f));
        }
    }
    Ok(None)
}
