//! Generation loops over a [`Session`]: greedy decoding with mlx-lm's prompt split and stop rules.

pub mod cache;
pub mod constrain;
pub mod mtp;
pub mod text;

pub mod sampler;

use crate::model::{RunError, Session};

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// An EOS id was produced (it is not part of the output).
    Stop,
    /// `max_tokens` were produced.
    Length,
}

/// What the caller hears while generating.
pub enum Event {
    /// The prompt is in the context and the first token is known.
    PromptDone,
    /// A new token, with its logprobs when they were asked for ([`Session::set_sampling`]).
    Token(u32, Option<crate::ops::sample::RowResult>),
    /// MTP only: the running draft counts after a verify step, sent before that step's tokens
    /// (the last one equals the final [`mtp::MtpStats`]). Returning false stops generation.
    Mtp { drafted: u64, accepted: u64 },
}

#[derive(Clone, Debug)]
pub struct GenOptions {
    pub max_tokens: usize,
    /// Ids that end generation; ignored with `ignore_eos`.
    pub eos: Vec<u32>,
    pub ignore_eos: bool,
}

/// Decoding as mlx-lm's `generate_step` (greedy, or sampled per [`Session::set_sampling`]): the prompt except its last token is prefilled in
/// chunks, the last token runs alone to give the first logits, then one token per step. EOS
/// stops generation and is not emitted. Returns the tokens and the finish reason.
///
/// One step stays in flight: the step that feeds token n is submitted before token n is read
/// (the id never leaves the GPU), so the GPU does not wait for the host between tokens. No step
/// is submitted past `max_tokens`. When generation stops early (EOS, or `on_event` returning
/// false) the step in flight has fed the last id read, so the session's state then holds the
/// prompt, the tokens returned and that last id (the EOS id on a stop); [`Session::pos`] counts
/// them all.
pub async fn generate(
    session: &mut Session,
    prompt: &[u32],
    opts: &GenOptions,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Result<(Vec<u32>, Finish), RunError> {
    generate_in_context(session, prompt, 0, opts, on_event).await
}

/// As [`generate`] when the session's state already holds `prompt[..in_context]` (a restored
/// prompt cache, see [`cache`]): only the rest is fed; the whole prompt is the request's token
/// history (penalties). At least one id must be left to feed.
pub async fn generate_in_context(
    session: &mut Session,
    prompt: &[u32],
    in_context: usize,
    opts: &GenOptions,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Result<(Vec<u32>, Finish), RunError> {
    let mut out = Vec::new();
    let rest = start(session, prompt, in_context)?;
    if opts.max_tokens == 0 {
        session.prefill(rest).await?;
        on_event(Event::PromptDone);
        return Ok((out, Finish::Length));
    }
    session.feed(rest).await?;
    let f = plain_steps(session, &mut out, opts, on_event, false).await?;
    Ok((out, f))
}

/// Starts a request whose state already holds `prompt[..in_context]`: the ids left to feed (at
/// least one).
pub(crate) fn start<'a>(
    session: &mut Session,
    prompt: &'a [u32],
    in_context: usize,
) -> Result<&'a [u32], RunError> {
    if in_context >= prompt.len() {
        return Err(RunError::Empty);
    }
    session.start_request(prompt)?;
    Ok(&prompt[in_context..])
}

/// Plain decoding from a session whose next input id is on the GPU (pending or already fed),
/// keeping one step in flight, until EOS, `max_tokens` or `on_event` stops it. `prompt_done`:
/// [`Event::PromptDone`] was already sent (else it is sent when the first id is read).
pub(crate) async fn plain_steps(
    session: &mut Session,
    out: &mut Vec<u32>,
    opts: &GenOptions,
    on_event: &mut dyn FnMut(Event) -> bool,
    mut prompt_done: bool,
) -> Result<Finish, RunError> {
    loop {
        // Keep one step submitted ahead of the one being read (two when the loop starts with
        // none pending, e.g. after MTP speculation stopped), while its token can still be
        // emitted (and, while a step is pending anyway, only when it fits: a full context
        // errors only when the token is actually needed).
        while session.pending() < 2
            && out.len() + session.pending() < opts.max_tokens
            && (session.pending() == 0 || session.has_room(1))
        {
            session.decode_ahead()?;
        }
        let tok = session.next_id().await?;
        if !prompt_done {
            on_event(Event::PromptDone);
            prompt_done = true;
        }
        let lp = session.last_logprobs().cloned();
        if let Some(f) = emit(tok, lp, out, opts, on_event) {
            session.discard_pending();
            return Ok(f);
        }
    }
}

/// Emits one token; Some(finish) when generation must stop (EOS is not emitted).
pub(crate) fn emit(
    tok: u32,
    logprobs: Option<crate::ops::sample::RowResult>,
    out: &mut Vec<u32>,
    opts: &GenOptions,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Option<Finish> {
    if !opts.ignore_eos && opts.eos.contains(&tok) {
        return Some(Finish::Stop);
    }
    out.push(tok);
    let go_on = on_event(Event::Token(tok, logprobs));
    if out.len() >= opts.max_tokens || !go_on {
        return Some(Finish::Length);
    }
    None
}
