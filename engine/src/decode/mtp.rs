//! Greedy speculative decoding with the model's MTP head (spec §7): draft one token with the
//! head, verify it with a 2-row forward, emit 1 or 2 tokens per iteration. The output equals
//! plain greedy decoding token for token (the verify reuses the backbone's batch-invariant
//! kernels and restores the recurrent state exactly on rejection).

use crate::decode::{Event, Finish, GenOptions};
use crate::model::{RunError, Session};

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
    /// the acceptance rate is below `min_acceptance` (speculation would be slower than plain).
    pub adaptive: bool,
    pub probe: u64,
    pub min_acceptance: f64,
}

impl MtpOptions {
    /// Speculate whatever the acceptance (`--mtp on`, benchmarks).
    pub fn always() -> Self {
        MtpOptions {
            adaptive: false,
            probe: 0,
            min_acceptance: 0.0,
        }
    }
    /// Speculate while it pays off for this session's model (`--mtp auto`).
    pub fn adaptive(session: &Session) -> Self {
        MtpOptions {
            adaptive: true,
            probe: 16,
            min_acceptance: session.mtp_break_even(),
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
    let mut out = Vec::new();
    let mut stats = MtpStats::default();
    let Some((&last, head)) = prompt.split_last() else {
        return Err(RunError::Empty);
    };
    session.start_request(prompt)?;
    if opts.max_tokens == 0 {
        session.prefill(prompt).await?;
        on_event(Event::PromptDone);
        return Ok((out, Finish::Length, stats));
    }
    session.prefill_with(head, Some(last)).await?;
    let (main, _draft) = session.mtp_first(last).await?;
    on_event(Event::PromptDone);
    if let Some(f) = emit(main, &mut out, opts, on_event) {
        return Ok((out, f, stats));
    }
    loop {
        if policy.adaptive
            && stats.drafted >= policy.probe
            && stats.acceptance() < policy.min_acceptance
        {
            // Not paying off: continue with plain steps (the pending rollback is applied first,
            // and the last emitted token is already the next input on the GPU).
            loop {
                let tok = session.decode_greedy().await?;
                if let Some(f) = emit(tok, &mut out, opts, on_event) {
                    return Ok((out, f, stats));
                }
            }
        }
        let step = session.mtp_verify().await?;
        stats.drafted += 1;
        if step.accepted {
            stats.accepted += 1;
        }
        if !on_event(Event::Mtp {
            drafted: stats.drafted,
            accepted: stats.accepted,
        }) {
            return Ok((out, Finish::Length, stats));
        }
        if step.accepted {
            if let Some(f) = emit(step.verified, &mut out, opts, on_event) {
                return Ok((out, f, stats));
            }
            if let Some(f) = emit(step.bonus, &mut out, opts, on_event) {
                return Ok((out, f, stats));
            }
        } else if let Some(f) = emit(step.verified, &mut out, opts, on_event) {
            return Ok((out, f, stats));
        }
    }
}

/// Emits one token; Some(finish) when generation must stop.
fn emit(
    tok: u32,
    out: &mut Vec<u32>,
    opts: &GenOptions,
    on_event: &mut dyn FnMut(Event) -> bool,
) -> Option<Finish> {
    if !opts.ignore_eos && opts.eos.contains(&tok) {
        return Some(Finish::Stop);
    }
    out.push(tok);
    let go_on = on_event(Event::Token(tok, None));
    if out.len() >= opts.max_tokens || !go_on {
        return Some(Finish::Length);
    }
    None
}
