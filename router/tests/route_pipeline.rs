//! One query through the whole classification path: batcher -> classifier -> routing table, an
//! explicit expert skipping classification, and the start-up checks that catch a mismatched
//! classifier or category map.

use std::sync::Arc;

use coe_core::ExpertName;
use coe_router::classify::Classifier;
use coe_router::config::{CategoryMap, MapHandle};
use coe_router::embed::{BatcherConfig, EmbedBatcher, EmbedError, Embedder, EmbedderIdentity};
use coe_router::pipeline::{PipelineError, QueryRouter};
use coe_router::route::RouteReason;

fn identity(model: &str) -> EmbedderIdentity {
    EmbedderIdentity {
        model: model.into(),
        weights_sha256: "ff".repeat(32),
        dim: 2,
    }
}

/// [is code, is not code] by a keyword.
struct KeywordEmbedder(EmbedderIdentity);

impl Embedder for KeywordEmbedder {
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts
            .iter()
            .map(|t| match (t.contains("rust"), t.contains("maybe")) {
                (_, true) => vec![0.5, 0.5],
                (true, _) => vec![1.0, 0.0],
                _ => vec![0.0, 1.0],
            })
            .collect())
    }

    fn identity(&self) -> &EmbedderIdentity {
        &self.0
    }
}

/// Passes the embedding through as the probabilities of [code, general_chat].
struct Passthrough(Vec<String>, EmbedderIdentity);

impl Classifier for Passthrough {
    fn labels(&self) -> &[String] {
        &self.0
    }
    fn embedder(&self) -> &EmbedderIdentity {
        &self.1
    }
    fn probabilities(&self, embedding: &[f32]) -> Vec<f32> {
        embedding.to_vec()
    }
}

fn name(s: &str) -> ExpertName {
    ExpertName::parse(s).unwrap()
}

fn table(categories: &[&str]) -> MapHandle {
    let map = CategoryMap {
        categories: categories
            .iter()
            .map(|c| (c.to_string(), format!("{c}-expert")))
            .collect(),
        fallback: "fallback".into(),
        threshold: 0.6,
        version: 0,
    };
    MapHandle::new(map).unwrap()
}

fn router(embedder_model: &str, categories: &[&str]) -> Result<QueryRouter, PipelineError> {
    let (batcher, _thread) = EmbedBatcher::spawn(
        Box::new(KeywordEmbedder(identity(embedder_model))),
        BatcherConfig::default(),
    )
    .unwrap();
    let classifier = Passthrough(vec!["code".into(), "general_chat".into()], identity("mini"));
    QueryRouter::new(batcher, Arc::new(classifier), table(categories))
}

#[tokio::test]
async fn queries_are_classified_routed_and_timed() {
    let r = router("mini", &["code", "general_chat"]).unwrap();
    let code = r.route("how do I borrow in rust", None).await.unwrap();
    assert_eq!(code.decision.expert.as_str(), "code-expert");
    assert_eq!(code.decision.reason, RouteReason::TopCategory);
    assert_eq!(code.decision.categories[0].category, "code");
    assert!(code.classify_ms > 0.0);

    let unsure = r.route("maybe", None).await.unwrap();
    assert_eq!(unsure.decision.reason, RouteReason::LowConfidenceFallback);
    assert_eq!(unsure.decision.expert.as_str(), "fallback");

    let explicit = r
        .route("how do I borrow in rust", Some(name("gemma3")))
        .await
        .unwrap();
    assert_eq!(explicit.decision.reason, RouteReason::ExplicitExpert);
    assert_eq!(explicit.decision.expert.as_str(), "gemma3");
    assert!(explicit.decision.categories.is_empty());
}

#[test]
fn a_classifier_trained_on_another_embedder_is_refused_at_start() {
    let err = router("other-model", &["code", "general_chat"])
        .err()
        .unwrap();
    assert!(err.to_string().contains("retrain"), "{err}");
}

#[test]
fn a_category_without_an_expert_is_refused_at_start() {
    let err = router("mini", &["code"]).err().unwrap();
    assert!(err.to_string().contains("general_chat"), "{err}");
}
