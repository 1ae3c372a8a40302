//! coe-router's classification core: embed a query with MiniLM, classify it into categories with
//! a calibrated linear model, and decide which expert answers. No network code lives here.

pub mod classify;
pub mod embed;
pub mod pipeline;
pub mod route;

use std::path::Path;

use classify::{ArtifactError, LinearClassifier};

/// Where the shipped classifier lives in the repository; `scripts/train_router.sh` rebuilds it.
pub const DEFAULT_CLASSIFIER_PATH: &str = "router/artifacts/minilm-8cat/classifier.json";
const DEFAULT_CLASSIFIER: &str = include_str!("../artifacts/minilm-8cat/classifier.json");

/// The eight-category classifier that ships with coe (compiled into the binary).
pub fn default_classifier() -> Result<LinearClassifier, ArtifactError> {
    LinearClassifier::from_json(
        DEFAULT_CLASSIFIER.as_bytes(),
        Path::new(DEFAULT_CLASSIFIER_PATH),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Classifier;

    #[test]
    fn shipped_classifier_loads_and_expects_the_manifest_minilm() {
        let c = default_classifier().unwrap();
        assert_eq!(c.labels().len(), 8);
        assert_eq!(c.embedder(), &embed::MiniLm::manifest_identity().unwrap());
        let p = c.probabilities(&vec![0.05; 384]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
