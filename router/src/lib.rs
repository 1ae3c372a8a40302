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
