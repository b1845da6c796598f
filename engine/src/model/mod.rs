//! The model: config, the tensors it needs (validated before any GPU work), and the forward pass.

pub mod batch;
pub mod config;
pub mod forward;
pub mod inspect;
pub mod session;
pub mod tensors;
pub mod weights;

pub use batch::{Batch, BatchOptions, MAX_BATCH};
pub use session::{Model, MtpStep, RunError, Session, SessionOptions};
pub use weights::LoadOptions;
