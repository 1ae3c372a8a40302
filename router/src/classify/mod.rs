//! Category classification of embedded queries: training with linfa, temperature calibration,
//! evaluation that holds out whole sources, and the versioned artefact.

mod any;
mod artifact;
mod cache;
mod calibrate;
mod dataset;
mod evaluate;
mod linear;
mod metrics;
mod mlp;
mod train;

pub use any::AnyClassifier;
pub use artifact::{
    sorted_scores, ArtifactError, Head, LinearClassifier, MlpClassifier, TrainedClassifier,
    TrainingSummary, ARTIFACT_FILE, ARTIFACT_VERSION,
};
pub use cache::EmbeddingCache;
pub use calibrate::{expected_calibration_error, fit_temperature, softmax_t};
pub use dataset::{first_sentence, load_jsonl, question_stem, training_views, Example};
pub use evaluate::evaluate;
pub use linear::{FitParams, LinearHead};
pub use metrics::EvalReport;
pub use mlp::{MlpHead, MlpParams};
pub use train::{train, GroupScore, HeadKind, Holdout, TrainOptions, TrainOutcome};

use crate::embed::{EmbedError, EmbedderIdentity};
use crate::route::CategoryScore;

/// Embedding -> calibrated category probabilities.
///
/// A seam: the trained heads (`LinearClassifier`, `MlpClassifier`, either through
/// `AnyClassifier`) in production, fixed tables in tests of what consumes scores.
pub trait Classifier: Send + Sync {
    fn labels(&self) -> &[String];

    /// The embedder whose vectors this classifier was trained on.
    fn embedder(&self) -> &EmbedderIdentity;

    /// Calibrated probabilities in `labels()` order, summing to 1.
    fn probabilities(&self, embedding: &[f32]) -> Vec<f32>;

    /// The probabilities paired with their labels, highest first.
    fn scores(&self, embedding: &[f32]) -> Vec<CategoryScore> {
        sorted_scores(self.labels(), &self.probabilities(embedding))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: {reason}")]
    Data {
        path: String,
        line: usize,
        reason: String,
    },
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("training failed: {0}")]
    Train(String),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
}
