//! coe-router: embeds a query with MiniLM, classifies it into categories with a calibrated linear
//! model, decides which expert answers (`route`, through the category map in `config`) and streams
//! that expert's answer from the worker hosting it (`dispatch`), behind the `coe.v1.Router` gRPC
//! service (`grpc`, thin).
//!
//! Composing servers: [`server::start`] loads a [`router::RouterCore`] in the background and returns
//! the Router service (UNAVAILABLE until loaded) plus a handle to the loaded core; it reports
//! `coe.v1.Router` on the health reporter it is given. Mount that service, the health service and
//! one [`server::reflection_builder`] (listing every mounted service) on one tonic `Server`, as
//! `coe serve` does with the worker beside it. [`server::serve`] is the router alone, built from
//! the same pieces.

pub mod classify;
pub mod config;
pub mod dispatch;
pub mod embed;
pub mod grpc;
pub mod pipeline;
pub mod registry_follow;
pub mod route;
pub mod router;
pub mod server;

pub use config::{CategoryMap, MapHandle};
pub use router::{RouterConfig, RouterCore, RouterError};
pub use server::{reflection_builder, serve, start, ROUTER_SERVICE};

use std::path::Path;

use classify::{AnyClassifier, ArtifactError};

/// Where the shipped classifier lives in the repository; `scripts/train_router.sh` rebuilds it.
pub const DEFAULT_CLASSIFIER_PATH: &str = "router/artifacts/minilm-8cat/classifier.json";
const DEFAULT_CLASSIFIER: &str = include_str!("../artifacts/minilm-8cat/classifier.json");

/// The eight-category classifier that ships with coe (compiled into the binary).
pub fn default_classifier() -> Result<AnyClassifier, ArtifactError> {
    AnyClassifier::from_json(
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
