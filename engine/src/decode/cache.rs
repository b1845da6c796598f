//! Prompt caching: a [`SavedState`] that holds the start of a prompt stands in for feeding it.
//!
//! A prompt of n ids is put into the state up to its last id ([`prefill_prompt`]); the generation
//! loops then feed that last id ([`crate::decode::generate_in_context`]). On the way the state
//! after a chosen number of ids is recorded with those ids ([`save_prompt`]); it serves any later
//! prompt that starts with them and has at least one more: only the rest is prefilled. A prompt
//! fed in pieces gives the same state, bit for bit, as one fed whole, so the output is the same
//! with or without the cache.
//!
//! With an MTP head the MTP cache's last entry pairs the last hidden state with the id after it,
//! so a state restored for speculation also needs that id to match the new prompt; a state saved
//! without the MTP cache in step serves plain decoding only.

use crate::model::{RunError, Session};
use crate::state::SavedState;

/// How many leading ids of `prompt` `saved` can stand for (0 = none): its recorded ids when they
/// start `prompt` and leave at least one id to feed; with `mtp`, only if its MTP cache is in step
/// and was paired with the id that follows them in `prompt`.
pub fn reusable(saved: &SavedState, prompt: &[u32], mtp: bool) -> usize {
    let k = saved.tokens.len();
    if k == 0 || k != saved.pos as usize || k >= prompt.len() || prompt[..k] != saved.tokens[..] {
        return 0;
    }
    if mtp && !(saved.mtp_synced && saved.mtp_next == Some(prompt[k])) {
        return 0;
    }
    k
}

/// Puts `prompt` except its last id into `session`'s state (which it resets): restores `cached`
/// when [`reusable`] and prefills only the rest. With `mtp` and a usable MTP head the MTP cache is
/// filled too. On the way, the state after `prompt[..save_at]` is recorded as the next cache
/// entry (`save_at` is clamped to the ids reused and to all but the last id; where the prompts of
/// a conversation stop sharing ids, such as before the generation prompt of a chat template, is a
/// good place). Returns the ids taken from the cache and the new entry (`None` when it would hold
/// nothing). A `cached` state of another model (or one that does not fit this session) is an
/// error, and the session is then left reset.
pub async fn prefill_prompt(
    session: &mut Session,
    prompt: &[u32],
    cached: Option<&SavedState>,
    mtp: bool,
    save_at: usize,
) -> Result<(usize, Option<SavedState>), RunError> {
    let Some(last) = prompt.len().checked_sub(1) else {
        return Err(RunError::Empty);
    };
    let (reused, mut entries) =
        prefill_prompt_at(session, prompt, cached, mtp, &[save_at.min(last)]).await?;
    // A point at or below the ids reused: the cached entry stands for it.
    let entry = match entries.pop() {
        Some(e) => Some(e),
        None if reused > 0 => cached.cloned(),
        None => None,
    };
    Ok((reused, entry))
}

/// [`prefill_prompt`] with several points: the state after `prompt[..p]` is recorded for every
/// `p` in `save_at` past the ids reused and before the last id (a conversation's shared start,
/// such as a system prompt and its tools, and its end). The entries come in the order of their
/// points, shortest first; a point at or below the ids reused records nothing (the cached entry
/// stands for it, or for more). The prompt is fed in pieces between the points, which leaves the
/// state of feeding it whole, bit for bit.
pub async fn prefill_prompt_at(
    session: &mut Session,
    prompt: &[u32],
    cached: Option<&SavedState>,
    mtp: bool,
    save_at: &[usize],
) -> Result<(usize, Vec<SavedState>), RunError> {
    let mut feed = PromptFeed::start(session, prompt, cached, mtp, save_at)?;
    while !feed.advance(session, usize::MAX).await? {}
    Ok(feed.finish())
}

/// [`prefill_prompt_at`] in pieces: [`PromptFeed::start`] resets the session (restoring the
/// cached state where it serves), each [`PromptFeed::advance`] feeds at most a given number of
/// ids (recording the entries at the points it passes), so other GPU work (a batch's decode
/// steps) can run between the pieces. Run to its end it leaves the state and entries of
/// [`prefill_prompt_at`], bit for bit (a prompt fed in pieces of any size gives the state of one
/// fed whole). The session must not be used for anything else until it ends.
pub struct PromptFeed {
    prompt: Vec<u32>,
    mtp: bool,
    /// Points still to record, ascending, each past `fed` and at most the prompt's last index.
    points: std::collections::VecDeque<usize>,
    /// Ids of the prompt the session holds.
    fed: usize,
    reused: usize,
    entries: Vec<SavedState>,
}

impl PromptFeed {
    /// Resets `session` and restores `cached` where [`reusable`] for `prompt` (a `cached` state
    /// of another model is an error, the session then left reset); nothing is fed yet.
    pub fn start(
        session: &mut Session,
        prompt: &[u32],
        cached: Option<&SavedState>,
        mtp: bool,
        save_at: &[usize],
    ) -> Result<PromptFeed, RunError> {
        let Some(last) = prompt.len().checked_sub(1) else {
            return Err(RunError::Empty);
        };
        session.reset();
        let max = session.state.max_ctx;
        if last > max as usize {
            // (Checked before anything is fed, as a whole prefill does.)
            return Err(RunError::ContextFull {
                needed: last.try_into().unwrap_or(u32::MAX),
                max,
            });
        }
        let mtp = mtp && session.mtp_available();
        let reused = cached.map_or(0, |c| reusable(c, prompt, mtp));
        if let Some(c) = cached.filter(|_| reused > 0) {
            session.restore(c)?;
        } else if let Some(c) = cached {
            // Not usable for this prompt, but it must still be this model's: a cache file that
            // belongs elsewhere is reported, not silently overwritten.
            if c.config_crc != crate::state::config_crc(&session.model.config) {
                return Err(crate::state::StateError::Mismatch(format!(
                    "saved from another model ({})",
                    c.model_type
                ))
                .into());
            }
        }
        let mut points: Vec<usize> = save_at
            .iter()
            .map(|&p| p.min(last))
            .filter(|&p| p > reused)
            .collect();
        points.sort_unstable();
        points.dedup();
        Ok(PromptFeed {
            prompt: prompt.to_vec(),
            mtp,
            points: points.into(),
            fed: reused,
            reused,
            entries: Vec::new(),
        })
    }

    /// Ids still to feed (all of the prompt but its last id, less those the session holds).
    pub fn remaining(&self) -> usize {
        self.prompt.len() - 1 - self.fed
    }

    /// Leading ids of the prompt restored from the cached state.
    pub fn reused(&self) -> usize {
        self.reused
    }

    /// Feeds the next ids of the prompt, at most `max_ids` (at least one while any remain), and
    /// records an entry at each point reached. True once the whole prompt but its last id is in
    /// the state (its entries recorded).
    pub async fn advance(
        &mut self,
        session: &mut Session,
        max_ids: usize,
    ) -> Result<bool, RunError> {
        let end = self.prompt.len() - 1;
        let mut budget = max_ids.max(1);
        loop {
            let target = self.points.front().copied().unwrap_or(end);
            if self.fed == target {
                let Some(at) = self.points.pop_front() else {
                    return Ok(true);
                };
                self.entries
                    .push(save_prompt(session, &self.prompt[..=at]).await?);
                continue;
            }
            if budget == 0 {
                return Ok(false);
            }
            let to = target.min(self.fed.saturating_add(budget));
            feed(
                session,
                &self.prompt[self.fed..to],
                self.prompt[to],
                self.mtp,
            )
            .await?;
            budget -= to - self.fed;
            self.fed = to;
        }
    }

    /// The ids taken from the cached state and the entries recorded (in the order of their
    /// points, shortest first).
    pub fn finish(self) -> (usize, Vec<SavedState>) {
        (self.reused, self.entries)
    }
}

/// Prefills `ids`; with `mtp` the MTP cache too, its last entry paired with `next`.
async fn feed(session: &mut Session, ids: &[u32], next: u32, mtp: bool) -> Result<(), RunError> {
    if mtp {
        session.prefill_with(ids, Some(next)).await
    } else if ids.is_empty() {
        Ok(())
    } else {
        session.prefill(ids).await
    }
}

/// The session's state when it holds all of `prompt` but the last id, recorded with those ids
/// and the id its MTP cache was paired with (the last).
pub async fn save_prompt(session: &mut Session, prompt: &[u32]) -> Result<SavedState, RunError> {
    let Some((&last, head)) = prompt.split_last() else {
        return Err(RunError::Empty);
    };
    if session.pos() as usize != head.len() {
        return Err(RunError::Busy(format!(
            "the session holds {} positions, not the {} of the prompt's start",
            session.pos(),
            head.len()
        )));
    }
    let mut s = session.save().await?;
    s.tokens = head.to_vec();
    s.mtp_next = s.mtp_synced.then_some(last);
    Ok(s)
}
