//! The trained classifier as a versioned artefact on disk (`classifier.json` in a directory): the
//! labels, which embedder it expects, the weights, the calibration temperature and how it was
//! evaluated. Loading checks everything a corrupt or mismatched file could get wrong.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::embed::EmbedderIdentity;
use crate::route::CategoryScore;

use super::calibrate::softmax_t;
use super::linear::LinearHead;
use super::mlp::MlpHead;
use super::Classifier;

/// The file name inside an artefact directory.
pub const ARTIFACT_FILE: &str = "classifier.json";
const FORMAT: &str = "coe-router-classifier";
/// Bumped whenever a field changes meaning; older or newer files are refused, not misread.
pub const ARTIFACT_VERSION: u32 = 2;

/// How the artefact was evaluated before it was saved (informational).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// `held_out_sources` or `random_split`.
    pub protocol: String,
    pub examples: usize,
    pub training_texts: usize,
    pub held_out_macro_accuracy: f64,
    pub held_out_ece_uncalibrated: f64,
    pub held_out_ece: f64,
    /// The options the model was trained with, as the CLI would spell them.
    pub options: String,
}

/// What a classifier head must offer to be stored in an artefact and applied to embeddings.
pub trait Head: Clone + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync {
    /// The artefact's `kind` field for this head.
    const KIND: &'static str;
    /// Uncalibrated logits, one per label.
    fn logits(&self, embedding: &[f32]) -> Vec<f32>;
    /// Shape and value checks against the artefact's label count and embedding length.
    fn validate(&self, classes: usize, dim: usize) -> Result<(), String>;
}

/// A trained, calibrated classifier of one head kind, as saved on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "H: Head")]
pub struct TrainedClassifier<H> {
    pub format: String,
    pub version: u32,
    /// Which head the weights belong to (`linear`, `mlp`).
    pub kind: String,
    pub labels: Vec<String>,
    pub embedder: EmbedderIdentity,
    pub head: H,
    /// Logits are divided by this before the softmax (temperature scaling).
    pub temperature: f32,
    pub training: TrainingSummary,
}

/// Multinomial logistic regression (linfa).
pub type LinearClassifier = TrainedClassifier<LinearHead>;
/// A one-hidden-layer perceptron.
pub type MlpClassifier = TrainedClassifier<MlpHead>;

impl Head for LinearHead {
    const KIND: &'static str = "linear";

    fn logits(&self, embedding: &[f32]) -> Vec<f32> {
        LinearHead::logits(self, embedding)
    }

    fn validate(&self, classes: usize, dim: usize) -> Result<(), String> {
        if self.classes != classes || self.bias.len() != self.classes {
            return Err(format!(
                "{classes} labels but the head has {} classes and {} biases",
                self.classes,
                self.bias.len()
            ));
        }
        if self.dim != dim || self.weights.len() != self.classes * self.dim {
            return Err(format!(
                "weights are {} floats, expected {} classes x {dim} dims",
                self.weights.len(),
                self.classes,
            ));
        }
        if !self.weights.iter().chain(&self.bias).all(|x| x.is_finite()) {
            return Err("weights contain NaN or infinity".into());
        }
        Ok(())
    }
}

impl Head for MlpHead {
    const KIND: &'static str = "mlp";

    fn logits(&self, embedding: &[f32]) -> Vec<f32> {
        MlpHead::logits(self, embedding)
    }

    fn validate(&self, classes: usize, dim: usize) -> Result<(), String> {
        MlpHead::validate(self, classes, dim)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "cannot read the classifier artefact {path}: {source} (train one with `coe router train`)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the classifier artefact {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the classifier artefact {path} is corrupt: {reason}; retrain it with `coe router train`"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the classifier artefact {path} was trained on embedder {trained} but the router runs {running}; \
         retrain it with `coe router train`"
    )]
    WrongEmbedder {
        path: PathBuf,
        trained: String,
        running: String,
    },
}

impl<H: Head> TrainedClassifier<H> {
    pub fn new(
        labels: Vec<String>,
        embedder: EmbedderIdentity,
        head: H,
        temperature: f32,
        training: TrainingSummary,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            version: ARTIFACT_VERSION,
            kind: H::KIND.into(),
            labels,
            embedder,
            head,
            temperature,
            training,
        }
    }

    /// Uncalibrated logits, one per label.
    pub fn logits(&self, embedding: &[f32]) -> Vec<f32> {
        Head::logits(&self.head, embedding)
    }

    pub fn save(&self, dir: &Path) -> Result<PathBuf, ArtifactError> {
        let path = dir.join(ARTIFACT_FILE);
        let write_err = |source| ArtifactError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let json = serde_json::to_vec_pretty(self).expect("the artefact serialises");
        // Written beside and renamed, so a crash never leaves half a file under the real name.
        let tmp = dir.join(format!(".{ARTIFACT_FILE}.tmp"));
        std::fs::write(&tmp, json).map_err(write_err)?;
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        Ok(path)
    }

    /// Loads and validates `dir/classifier.json` (or `dir` itself if it is the file).
    pub fn load(dir: &Path) -> Result<Self, ArtifactError> {
        let (bytes, path) = read_artifact(dir)?;
        Self::from_json(&bytes, &path)
    }

    /// Parses and validates an artefact; `path` is only used in error messages.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, ArtifactError> {
        let corrupt = |reason: String| ArtifactError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON ({e})")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            other => return Err(corrupt(format!("format is {other:?}, expected {FORMAT:?}"))),
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == ARTIFACT_VERSION as u64 => {}
            other => {
                return Err(corrupt(format!(
                    "version {other:?}, this coe reads version {ARTIFACT_VERSION}"
                )))
            }
        }
        let kind = value.get("kind").and_then(|k| k.as_str());
        if kind != Some(H::KIND) {
            return Err(corrupt(format!(
                "kind is {kind:?}, expected {:?} (load it with AnyClassifier)",
                H::KIND
            )));
        }
        let me: Self = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        me.validate().map_err(corrupt)?;
        Ok(me)
    }

    fn validate(&self) -> Result<(), String> {
        if self.labels.is_empty() {
            return Err("no labels".into());
        }
        let mut sorted = self.labels.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.labels.len() || self.labels.iter().any(String::is_empty) {
            return Err("labels are empty or repeated".into());
        }
        self.head.validate(self.labels.len(), self.embedder.dim)?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "temperature {} is not a positive number",
                self.temperature
            ));
        }
        Ok(())
    }

    /// Refuses to run against a different embedder than the one the weights were trained on.
    pub fn check_embedder(
        &self,
        running: &EmbedderIdentity,
        path: &Path,
    ) -> Result<(), ArtifactError> {
        if &self.embedder == running {
            return Ok(());
        }
        let show = |e: &EmbedderIdentity| {
            format!("{} (sha256 {}, dim {})", e.model, e.weights_sha256, e.dim)
        };
        Err(ArtifactError::WrongEmbedder {
            path: path.to_path_buf(),
            trained: show(&self.embedder),
            running: show(running),
        })
    }
}

impl<H: Head> Classifier for TrainedClassifier<H> {
    fn labels(&self) -> &[String] {
        &self.labels
    }

    fn embedder(&self) -> &EmbedderIdentity {
        &self.embedder
    }

    fn probabilities(&self, embedding: &[f32]) -> Vec<f32> {
        softmax_t(&self.logits(embedding), self.temperature)
    }
}

/// The bytes of `dir/classifier.json` (or of `dir` itself if it is the file), and that path.
pub(super) fn read_artifact(dir: &Path) -> Result<(Vec<u8>, PathBuf), ArtifactError> {
    let path = if dir.is_file() {
        dir.to_path_buf()
    } else {
        dir.join(ARTIFACT_FILE)
    };
    match std::fs::read(&path) {
        Ok(bytes) => Ok((bytes, path)),
        Err(source) => Err(ArtifactError::Read { path, source }),
    }
}

/// Scores sorted highest first, as the routing decision reports them.
pub fn sorted_scores(labels: &[String], probs: &[f32]) -> Vec<CategoryScore> {
    let mut s: Vec<CategoryScore> = labels
        .iter()
        .zip(probs)
        .map(|(c, p)| CategoryScore {
            category: c.clone(),
            probability: *p,
        })
        .collect();
    s.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    s
}
