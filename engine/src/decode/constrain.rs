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

/// Sets the session's token mask for the next step from `c`; `Ok(false)` when the constraint
/// says the output is complete.
fn next_mask(
    session: &mut Session,
    c: &mut dyn TokenConstraint,
    mask: &mut [u32],
    masked: &mut bool,
) -> Result<bool, RunError> {
    mask.fill(0);
    match c.allowed(mask).map_err(constraint_error)? {
        Allowed::End => Ok(false),
        Allowed::Mask => {
            if mask.iter().all(|&w| w == 0) {
                return Err(constraint_error(
                    "no token can continue the output (the constraint allows none)".into(),
                ));
            }
            session.set_token_mask(Some(mask))?;
            *masked = true;
            Ok(true)
        }
        Allowed::Any => {
            if *masked {
                session.set_token_mask(None)?;
                *masked = false;
            }
            Ok(true)
        }
    }
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
    let go = opts.max_tokens > 0 && next_mask(session, c, &mut mask, masked)?;
    if !go {
        session.prefill(rest).await?;
        on_event(Event::PromptDone);
        let f = if opts.max_tokens == 0 {
            Finish::Length
        } else {
            Finish::Stop
        };
        return Ok((out, f));
    }
    session.feed(rest).await?;
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
        if !next_mask(session, c, &mut mask, masked)? {
            return Ok((out, Finish::Stop));
        }
        if ahead {
            session.decode_head()?;
        } else {
            session.decode_ahead()?;
        }
    }
}
