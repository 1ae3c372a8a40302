//! coe's domain types: experts, chat messages, sampling, tiers, generation events.
//! Everything here is free of network and model code so every crate can share it.

mod chat;
mod expert;
mod generation;
mod sampling;
mod tier;

pub use chat::{ChatMessage, Role};
pub use expert::{ExpertName, InvalidExpertName};
pub use generation::{FinishReason, GenerationEvent, Usage};
pub use sampling::{SamplingError, SamplingParams};
pub use tier::Tier;
