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
    Ok(match c.allowed(mask).map_err(constraint_error)? {
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
    let first = if opts.max_tokens > 0 {
        next_allowed(c, &mut mask)?
    } else {
        Next::End
    };
    if first == Next::End {
        session.prefill(rest).await?;
        on_event(Event::PromptDone);
        let f = if opts.max_tokens == 0 {
            Finish::Length
        } else {
            Finish::Stop
        };
        return Ok((out, f));
    }
    apply(session, first, &mask, masked)?;
    session.feed(rest).await?;
    // Forced tokens skip their heads unless their logprobs are read (below).
    let skip_heads = !session.reads_logprobs();
    let mut prompt_done = false;
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
        if let Some(f) = emit(tok, lp, &mut out, opts, on_event) {
            session.discard_pending();
            return Ok((out, f));
        }
        let mut next = next_allowed(c, &mut mask)?;
        if next == Next::End {
            return Ok((out, Finish::Stop));
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
                if let Some(fin) = emit(f, None, &mut out, opts, on_event) {
                    return Ok((out, fin));
                }
                run.push(f);
                next = next_allowed(c, &mut mask)?;
            }
            if next == Next::End {
                return Ok((out, Finish::Stop));
            }
            apply(session, next, &mask, masked)?;
            let pairs = run.len().div_ceil(2);
            for (i, ids) in run.chunks(2).enumerate() {
                session.feed_forced(ids, i + 1 == pairs)?;
            }
            continue;
        }
        apply(session, next, &mask, masked)?;
        if ahead {
            session.decode_head()?;
        } else {
            session.decode_ahead()?;
        }
    }
}
