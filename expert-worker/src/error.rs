//! The worker's errors; `grpc.rs` maps each to a gRPC status.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("unknown expert {name:?}; this worker hosts: {known}")]
    UnknownExpert { name: String, known: String },
    #[error("expert {0:?} is already loaded on this worker")]
    AlreadyLoaded(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the prompt is {prompt_tokens} tokens but expert {expert:?} has a context of {context_length} tokens; shorten the prompt")]
    PromptTooLong {
        expert: String,
        prompt_tokens: usize,
        context_length: usize,
    },
    #[error("max_tokens {max_tokens} is past the context of expert {expert:?} ({context_length} tokens)")]
    MaxTokensPastContext {
        expert: String,
        max_tokens: u32,
        context_length: usize,
    },
    #[error("expert {expert:?} is busy: its queue of {capacity} requests is full; retry later")]
    QueueFull { expert: String, capacity: usize },
    #[error("cannot load expert from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("expert {0:?} is shutting down")]
    ShuttingDown(String),
    #[error("expert {expert:?} needs {bytes} bytes of weights, more than the worker's tiers can ever hold ({budgets}); raise --device-budget and --active-budget")]
    BudgetTooSmall {
        expert: String,
        bytes: u64,
        budgets: String,
    },
    #[error("no room to bring expert {expert:?} ({bytes} bytes) to Device: pinned or busy experts hold it (tiers used/budget: {usage}); retry later, unpin an expert or raise the budgets")]
    TiersExhausted {
        expert: String,
        bytes: u64,
        usage: String,
    },
    #[error("internal error in expert {expert:?}: {reason}")]
    Internal { expert: String, reason: String },
}

impl WorkerError {
    pub fn unknown(name: &str, known: &[String]) -> Self {
        WorkerError::UnknownExpert {
            name: name.to_string(),
            known: known.join(", "),
        }
    }
}
