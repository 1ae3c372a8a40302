//! A classifier artefact of any head kind: what the router and `coe router eval` load when they do
//! not know in advance which kind was trained.

use std::path::{Path, PathBuf};

use crate::embed::EmbedderIdentity;

use super::artifact::{
    read_artifact, ArtifactError, LinearClassifier, MlpClassifier, TrainingSummary,
};
use super::Classifier;

#[derive(Clone, Debug, PartialEq)]
pub enum AnyClassifier {
    Linear(LinearClassifier),
    Mlp(MlpClassifier),
}

impl From<LinearClassifier> for AnyClassifier {
    fn from(c: LinearClassifier) -> Self {
        Self::Linear(c)
    }
}

impl From<MlpClassifier> for AnyClassifier {
    fn from(c: MlpClassifier) -> Self {
        Self::Mlp(c)
    }
}

/// Calls `$body` with `$c` bound to the inner classifier, whatever its kind.
macro_rules! each {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            AnyClassifier::Linear($c) => $body,
            AnyClassifier::Mlp($c) => $body,
        }
    };
}

impl AnyClassifier {
    /// Loads and validates `dir/classifier.json` (or `dir` itself if it is the file).
    pub fn load(dir: &Path) -> Result<Self, ArtifactError> {
        let (bytes, path) = read_artifact(dir)?;
        Self::from_json(&bytes, &path)
    }

    /// Parses an artefact of any kind; `path` is only used in error messages.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, ArtifactError> {
        let kind = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned));
        match kind.as_deref() {
            Some("mlp") => Ok(Self::Mlp(MlpClassifier::from_json(bytes, path)?)),
            Some("linear") => Ok(Self::Linear(LinearClassifier::from_json(bytes, path)?)),
            // Not JSON, no kind, an old version: the linear loader names what is wrong.
            None => Ok(Self::Linear(LinearClassifier::from_json(bytes, path)?)),
            Some(other) => Err(ArtifactError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("unknown classifier kind {other:?} (this coe knows linear, mlp)"),
            }),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<PathBuf, ArtifactError> {
        each!(self, c => c.save(dir))
    }

    pub fn kind(&self) -> &str {
        each!(self, c => &c.kind)
    }

    pub fn temperature(&self) -> f32 {
        each!(self, c => c.temperature)
    }

    pub fn training(&self) -> &TrainingSummary {
        each!(self, c => &c.training)
    }

    /// Uncalibrated logits, one per label.
    pub fn logits(&self, embedding: &[f32]) -> Vec<f32> {
        each!(self, c => c.logits(embedding))
    }

    pub fn check_embedder(
        &self,
        running: &EmbedderIdentity,
        path: &Path,
    ) -> Result<(), ArtifactError> {
        each!(self, c => c.check_embedder(running, path))
    }
}

impl Classifier for AnyClassifier {
    fn labels(&self) -> &[String] {
        each!(self, c => c.labels())
    }

    fn embedder(&self) -> &EmbedderIdentity {
        each!(self, c => c.embedder())
    }

    fn probabilities(&self, embedding: &[f32]) -> Vec<f32> {
        each!(self, c => c.probabilities(embedding))
    }
}
