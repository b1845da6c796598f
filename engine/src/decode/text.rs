//! Text-level generation: token ids in, a stream of content / reasoning / tool-call deltas out
//! (the layer the CLI, the server and the browser share). Wraps the greedy and MTP loops with the
//! [`StreamParser`](crate::text::stream::StreamParser) (UTF-8-safe detokenizing, stop strings,
//! the reasoning split and tool-call parsing).

use crate::decode::constrain::{
    generate_constrained_in_context, generate_constrained_mtp_in_context, TokenConstraint,
};
use crate::decode::mtp::{generate_mtp_in_context, MtpOptions, MtpStats};
use crate::decode::sampler::SamplingParams;
use crate::decode::{generate_in_context, Event, Finish, GenOptions};
use crate::model::{RunError, Session};
use crate::ops::sample::RowResult;
use crate::text::stream::{Delta, FinishReason, StreamConfig, StreamParser, StreamSummary};
use crate::text::Tokenizer;

/// One generation request at the token level.
#[derive(Clone, Debug)]
pub struct TextRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    /// Streaming options: EOS ids, stop strings, reasoning markers, tool schemas.
    pub stream: StreamConfig,
    /// Keep going past EOS ids (benchmarks).
    pub ignore_eos: bool,
    /// Decode with the MTP head (falls back to plain decoding when the session has none).
    pub mtp: bool,
    /// Stop speculating when acceptance is too low to pay off (`--mtp auto`).
    pub mtp_adaptive: bool,
    /// Token choice: None = greedy; otherwise the GPU sampler.
    pub sampling: Option<SamplingParams>,
    /// Report each token's logprob (and `sampling.top_logprobs` alternatives).
    pub logprobs: bool,
    /// Leading prompt ids the session's state already holds (a restored prompt cache, see
    /// [`crate::decode::cache`]); 0 = feed the whole prompt.
    pub in_context: usize,
}

/// What a finished request produced.
#[derive(Clone, Debug)]
pub struct TextOutput {
    pub tokens: Vec<u32>,
    pub summary: StreamSummary,
    pub mtp: Option<MtpStats>,
    /// Seconds from the call to the first token (prefill), measured by the caller's clock.
    pub prompt_tokens: usize,
}

/// Events for the caller: the prompt is in, and text deltas (return false to cancel).
pub enum TextEvent<'a> {
    PromptDone,
    /// A generated id (before its text, which may be held back), with logprobs when asked for.
    Token(u32, Option<&'a RowResult>),
    Delta(&'a Delta),
    /// MTP only: the running draft counts after a verify step, before that step's tokens (see
    /// [`Event::Mtp`]); the last one equals [`TextOutput::mtp`].
    Mtp {
        drafted: u64,
        accepted: u64,
    },
}

/// Generates from `req.prompt`, streaming deltas to `on_event` (return false to stop).
pub async fn generate_text(
    session: &mut Session,
    tokenizer: &Tokenizer,
    req: &TextRequest,
    on_event: &mut dyn FnMut(TextEvent<'_>) -> bool,
) -> Result<TextOutput, RunError> {
    generate_text_constrained(session, tokenizer, req, None, on_event).await
}

/// [`generate_text`] with every generated token allowed by `constraint` when given (see
/// [`crate::decode::constrain`]; speculative where the request asks for MTP and the constraint
/// can look ahead, [`generate_constrained_mtp_in_context`]).
pub async fn generate_text_constrained(
    session: &mut Session,
    tokenizer: &Tokenizer,
    req: &TextRequest,
    constraint: Option<&mut dyn TokenConstraint>,
    on_event: &mut dyn FnMut(TextEvent<'_>) -> bool,
) -> Result<TextOutput, RunError> {
    let mut cfg = req.stream.clone();
    if req.ignore_eos {
        cfg.eos_ids.clear();
    }
    let parser = StreamParser::new(cfg, &req.prompt);
    generate_parsed(session, tokenizer, req, constraint, parser, on_event).await
}

/// Continues a reply whose first tokens `parser` has already taken (their text delivered, as
/// [`generate_text`] streamed it or a batch slot did): `req.prompt` is the reply's prompt
/// followed by those tokens, `req.max_tokens` the tokens left to it. The events and the output's
/// tokens are those of the continuation; its summary covers the whole reply, as if one call had
/// generated it. Sampled requests should move their seed on (the draws restart with the call).
pub async fn continue_text(
    session: &mut Session,
    tokenizer: &Tokenizer,
    req: &TextRequest,
    parser: StreamParser,
    on_event: &mut dyn FnMut(TextEvent<'_>) -> bool,
) -> Result<TextOutput, RunError> {
    generate_parsed(session, tokenizer, req, None, parser, on_event).await
}

async fn generate_parsed(
    session: &mut Session,
    tokenizer: &Tokenizer,
    req: &TextRequest,
    constraint: Option<&mut dyn TokenConstraint>,
    mut parser: StreamParser,
    on_event: &mut dyn FnMut(TextEvent<'_>) -> bool,
) -> Result<TextOutput, RunError> {
    session.set_sampling(req.sampling.as_ref(), req.logprobs)?;
    let eos = if req.ignore_eos {
        Vec::new()
    } else {
        req.stream.eos_ids.clone()
    };
    let mut cancelled = false;
    let mut on_tok = |e: Event| -> bool {
        match e {
            Event::PromptDone => on_event(TextEvent::PromptDone),
            Event::Token(id, lp) => {
                if !on_event(TextEvent::Token(id, lp.as_ref())) {
                    cancelled = true;
                    return false;
                }
                let d = parser.push(tokenizer, id);
                let go = d.is_empty() || on_event(TextEvent::Delta(&d));
                if !go {
                    cancelled = true;
                }
                go && d.finished.is_none()
            }
            Event::Mtp { drafted, accepted } => {
                let go = on_event(TextEvent::Mtp { drafted, accepted });
                if !go {
                    cancelled = true;
                }
                go
            }
        }
    };
    // The loops stop on EOS themselves (not emitted); the parser stops on stop strings.
    let opts = GenOptions {
        max_tokens: req.max_tokens,
        eos,
        ignore_eos: req.ignore_eos,
    };
    // Speculative decoding covers greedy and sampled requests; per-token logprobs come from the
    // plain loop.
    let speculate = req.mtp && session.mtp_available() && !req.logprobs;
    let policy = |session: &Session| {
        if req.mtp_adaptive {
            MtpOptions::adaptive(session)
        } else {
            MtpOptions::always()
        }
    };
    let (tokens, finish, mtp) = if let Some(c) = constraint {
        if speculate && c.lookahead() {
            let policy = policy(session);
            generate_constrained_mtp_in_context(
                session,
                &req.prompt,
                req.in_context,
                &opts,
                &policy,
                c,
                &mut on_tok,
            )
            .await?
        } else {
            let (t, f) = generate_constrained_in_context(
                session,
                &req.prompt,
                req.in_context,
                &opts,
                c,
                &mut on_tok,
            )
            .await?;
            (t, f, None)
        }
    } else if speculate {
        let policy = policy(session);
        let (t, f, s) = generate_mtp_in_context(
            session,
            &req.prompt,
            req.in_context,
            &opts,
            &policy,
            &mut on_tok,
        )
        .await?;
        (t, f, Some(s))
    } else {
        let (t, f) =
            generate_in_context(session, &req.prompt, req.in_context, &opts, &mut on_tok).await?;
        (t, f, None)
    };
    let ended_by = match finish {
        Finish::Stop => Some(FinishReason::Stop),
        Finish::Length if cancelled => Some(FinishReason::Stop),
        Finish::Length => Some(FinishReason::Length),
    };
    let (last, summary) = parser.finish(ended_by);
    if !last.is_empty() {
        on_event(TextEvent::Delta(&last));
    }
    Ok(TextOutput {
        tokens,
        summary,
        mtp,
        prompt_tokens: req.prompt.len(),
    })
}
