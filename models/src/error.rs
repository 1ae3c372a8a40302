//! The error type of coe-models: every way loading a GGUF model or running it can fail.

/// What went wrong while loading or running a model; each message names the offending item.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "unsupported model architecture `{0}`: coe-models runs GGUF files of the llama, qwen2 and gemma3 architectures"
    )]
    UnsupportedArchitecture(String),
    #[error("the GGUF file has no tensor `{name}`: the file is truncated or not the model its metadata claims")]
    MissingTensor { name: String },
    #[error("the GGUF metadata has no key `{key}`, which this architecture needs")]
    MissingMetadata { key: String },
    #[error("GGUF metadata key `{key}` is unusable: {reason}")]
    InvalidMetadata { key: String, reason: String },
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?} from the metadata")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("tensor `{name}` is stored as {dtype}, which coe-models cannot load")]
    UnsupportedTensorType { name: String, dtype: String },
    #[error("reading the bytes of tensor `{name}` failed (is the file complete?): {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("only the CPU device is supported; got {0}")]
    UnsupportedDevice(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(
        "context full: the sequence would hold {len} tokens but this model allows {max}; start a new sequence or load the model with a larger max_context"
    )]
    ContextFull { len: usize, max: usize },
    #[error("token id {token} is outside the vocabulary of {vocab_size} tokens")]
    InvalidToken { token: u32, vocab_size: usize },
    #[error("forward was called with no tokens; pass at least one")]
    EmptyInput,
    #[error("the KV cache was made by a model with a different shape ({detail}); use the new_cache of the model that runs it")]
    CacheMismatch { detail: String },
}
