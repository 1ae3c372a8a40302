//! Sentence embeddings for the router: the `Embedder` seam, the MiniLM implementation and the
//! dynamic batcher that feeds it from async code.

mod batcher;
mod bert;
#[cfg(target_arch = "x86_64")]
mod kernel_amx;
#[cfg(target_arch = "x86_64")]
mod kernel_avx512;
mod linear;
mod math;
mod minilm;

pub use batcher::{BatcherConfig, EmbedBatcher};
pub use linear::DenseKernel;
pub use minilm::{MiniLm, MAX_SEQ_LEN, MINILM_MODEL};

use serde::{Deserialize, Serialize};

/// Which embedder produced a vector. A classifier trained on one embedder's vectors is meaningless
/// on another's, so artefacts record this and refuse to load against a different one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderIdentity {
    /// The manifest name of the model, e.g. `all-minilm-l6-v2`.
    pub model: String,
    /// The sha256 of the weights file, as the model manifest pins it.
    pub weights_sha256: String,
    /// The length of each embedding.
    pub dim: usize,
}

/// Turns texts into fixed-length, L2-normalised vectors.
///
/// A seam: the MiniLM model in production, a cheap deterministic stand-in in tests of the batcher
/// and the classifier.
pub trait Embedder: Send {
    /// One vector of `identity().dim` floats per text, in order.
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError>;

    fn identity(&self) -> &EmbedderIdentity;
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("could not fetch the embedding model: {0}")]
    Fetch(#[from] coe_fetch::FetchError),
    #[error("the embedding model is not in the manifest: {0}")]
    Manifest(#[from] coe_fetch::ManifestError),
    #[error(
        "could not load the tokenizer {path}: {reason} (delete the file and run `coe fetch` again)"
    )]
    Tokenizer { path: String, reason: String },
    #[error("could not tokenise the input: {0}")]
    Tokenize(String),
    #[error(
        "could not load the weights {path}: {reason} (delete the file and run `coe fetch` again)"
    )]
    Weights { path: String, reason: String },
    #[error("the embedding queue is full; retry later or lower the request rate")]
    Overloaded,
    #[error("embedding the batch failed: {0}")]
    Batch(String),
    #[error("the embedder has stopped; restart the router")]
    Stopped,
}
