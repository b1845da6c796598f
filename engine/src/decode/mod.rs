//! Generation loops over a [`Session`]: greedy decoding with mlx-lm's prompt split and stop rules.

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
pub async fn generate(
    session: &mut Session,
    prompt: &[u32],
    opts: &GenOptions,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Result<(Vec<u32>, Finish), RunError> {
    let mut out = Vec::new();
    session.start_request(prompt)?;
    if opts.max_tokens == 0 {
        session.prefill(prompt).await?;
        on_event(Event::PromptDone);
        return Ok((out, Finish::Length));
    }
    let mut tok = session.forward_greedy(prompt).await?;
    on_event(Event::PromptDone);
    loop {
        if !opts.ignore_eos && opts.eos.contains(&tok) {
            return Ok((out, Finish::Stop));
        }
        out.push(tok);
        let go_on = on_event(Event::Token(tok, session.last_logprobs().cloned()));
        if out.len() >= opts.max_tokens || !go_on {
            return Ok((out, Finish::Length));
        }
        tok = session.decode_greedy().await?;
    }
}
