//! Text: the tokenizer (a Hugging Face `tokenizer.json`, byte-level BPE) and the chat template.
//!
//! [`tokenizer::Tokenizer`] turns text into token ids and back, the same way on native targets and
//! in the browser (one pure-Rust regex engine everywhere). [`tokenizer::from_tiktoken`] builds a
//! `tokenizer.json` from a tiktoken rank file. [`template::ChatTemplate`] renders a checkpoint's
//! Jinja chat template (or the built-in Qwen3.6 one) from OpenAI-style messages.

#[cfg(feature = "grammar")]
pub mod grammar;
pub mod reasoning;
pub mod stream;
pub mod template;
pub mod tokenizer;
pub mod toolcall;

pub use template::ChatTemplate;
pub use tokenizer::{ControlTokens, Tokenizer};

/// What went wrong with a tokenizer or a chat template. Every variant names where the problem is
/// (a file, a line, a message index) and what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file could not be read.
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    /// A tokenizer file (tokenizer.json, a tiktoken file, tokenizer_config.json) is malformed.
    #[error("{source_name}: {message}")]
    Format {
        source_name: String,
        message: String,
    },
    /// Encoding text failed.
    #[error("encode: {0}")]
    Encode(String),
    /// Decoding ids failed (e.g. an id outside the vocabulary).
    #[error("decode: {0}")]
    Decode(String),
    /// The chat template did not compile, or raised while rendering.
    #[error("chat template ({source_name}): {message}")]
    Template {
        source_name: String,
        message: String,
    },
    /// The messages, tools or kwargs passed to the chat template are malformed.
    #[error("chat input: {0}")]
    Input(String),
    /// The tokenizer does not belong to the model it is paired with (see
    /// [`Tokenizer::check_model`]).
    #[error("{source_name}: {message}")]
    ModelMismatch {
        source_name: String,
        message: String,
    },
}

pub type Result<T> = std::result::Result<T, TextError>;

impl stream::TokenText for Tokenizer {
    fn token_bytes(&self, id: u32) -> Option<std::borrow::Cow<'_, [u8]>> {
        Tokenizer::token_bytes(self, id).map(std::borrow::Cow::Owned)
    }
    fn is_special(&self, id: u32) -> bool {
        Tokenizer::is_special(self, id)
    }
}

impl Tokenizer {
    /// The streaming configuration this tokenizer implies: its stop ids (`<|im_end|>`,
    /// `<|endoftext|>`) plus `extra_eos`, and the `<think>` / `</think>` markers.
    pub fn stream_config(&self, extra_eos: &[u32]) -> stream::StreamConfig {
        let c = self.controls();
        let mut eos = c.stop_ids();
        for e in extra_eos {
            if !eos.contains(e) {
                eos.push(*e);
            }
        }
        stream::StreamConfig {
            eos_ids: eos,
            think_ids: c.think.zip(c.think_end),
            ..Default::default()
        }
    }
}
