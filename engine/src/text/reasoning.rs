//! The reasoning / content split, decided on token ids.
//!
//! Text between `<think>` and `</think>` is reasoning, everything else is content. The markers are
//! single tokens in the Qwen3.5/3.6 vocabulary (248068 / 248069) and are never shown as text.
//! The state at the start of the reply comes from the prompt: the thinking-mode generation prompt
//! ends with `<think>\n` (an open block), the non-thinking one with `<think>\n\n</think>\n\n`.

/// Where generated text goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Inside a think block.
    Reasoning,
    /// The answer (may contain tool calls).
    Content,
}

/// The channel a reply starts in: reasoning when the prompt's last `think` id comes after its last
/// `end_think` id (the prompt opened a think block and did not close it), content otherwise.
pub fn initial_channel(prompt: &[u32], think: u32, end_think: u32) -> Channel {
    let open = prompt.iter().rposition(|&t| t == think);
    let close = prompt.iter().rposition(|&t| t == end_think);
    match (open, close) {
        (Some(o), Some(c)) if o > c => Channel::Reasoning,
        (Some(_), None) => Channel::Reasoning,
        _ => Channel::Content,
    }
}

/// What one token id means to the reasoning state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThinkStep {
    /// An ordinary token: its text belongs to the current channel.
    Text(Channel),
    /// `<think>` while in content: reasoning starts (the marker is not text).
    Open,
    /// `</think>` while reasoning: content starts (the marker is not text).
    Close,
    /// A marker that changes nothing (`<think>` while reasoning, `</think>` in content). It is
    /// dropped: markers never appear as text.
    Stray,
}

/// The state machine over token ids (mlx-lm server's "normal" / "reasoning" states).
#[derive(Clone, Debug)]
pub struct ReasoningSplitter {
    think: u32,
    end_think: u32,
    channel: Channel,
}

impl ReasoningSplitter {
    /// `think` / `end_think` are the marker ids; the initial state comes from `prompt`
    /// (see [`initial_channel`]).
    pub fn new(think: u32, end_think: u32, prompt: &[u32]) -> Self {
        Self {
            think,
            end_think,
            channel: initial_channel(prompt, think, end_think),
        }
    }

    /// Starts in the given channel regardless of any prompt.
    pub fn starting_in(think: u32, end_think: u32, channel: Channel) -> Self {
        Self {
            think,
            end_think,
            channel,
        }
    }

    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// Whether `id` is one of the two markers.
    pub fn is_marker(&self, id: u32) -> bool {
        id == self.think || id == self.end_think
    }

    /// Whether `id` would change the channel (an opening or closing marker, not a stray one).
    pub fn would_switch(&self, id: u32) -> bool {
        match self.channel {
            Channel::Content => id == self.think,
            Channel::Reasoning => id == self.end_think,
        }
    }

    /// Advances the state by one generated token.
    pub fn push(&mut self, id: u32) -> ThinkStep {
        if id == self.think {
            if self.channel == Channel::Content {
                self.channel = Channel::Reasoning;
                ThinkStep::Open
            } else {
                ThinkStep::Stray
            }
        } else if id == self.end_think {
            if self.channel == Channel::Reasoning {
                self.channel = Channel::Content;
                ThinkStep::Close
            } else {
                ThinkStep::Stray
            }
        } else {
            ThinkStep::Text(self.channel)
        }
    }
}
