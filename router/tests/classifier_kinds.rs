//! Artefacts record their head kind: `AnyClassifier` loads each kind as itself, and an unknown
//! kind or an MLP with inconsistent weights is a clear error at load.

use coe_router::classify::{
    AnyClassifier, Classifier, LinearClassifier, LinearHead, MlpClassifier, MlpHead,
    TrainingSummary,
};
use coe_router::embed::EmbedderIdentity;

fn identity() -> EmbedderIdentity {
    EmbedderIdentity {
        model: "test-embedder".into(),
        weights_sha256: "cd".repeat(32),
        dim: 2,
    }
}

fn labels() -> Vec<String> {
    vec!["code".into(), "math".into()]
}

/// Hidden units copy the two inputs; the output layer swaps them, so input 0 means `math`.
fn mlp() -> MlpClassifier {
    let head = MlpHead {
        classes: 2,
        dim: 2,
        hidden: 2,
        w1: vec![1.0, 0.0, 0.0, 1.0],
        b1: vec![0.0, 0.0],
        w2: vec![0.0, 4.0, 4.0, 0.0],
        b2: vec![0.0, 0.0],
    };
    MlpClassifier::new(labels(), identity(), head, 1.0, TrainingSummary::default())
}

fn load(json: &str) -> Result<AnyClassifier, String> {
    AnyClassifier::from_json(json.as_bytes(), "m/classifier.json".as_ref())
        .map_err(|e| e.to_string())
}

#[test]
fn each_kind_loads_as_itself_and_classifies() {
    let json = serde_json::to_string(&mlp()).unwrap();
    let any = load(&json).unwrap();
    assert_eq!(any.kind(), "mlp");
    assert_eq!(any.scores(&[1.0, 0.0])[0].category, "math");
    assert_eq!(any.scores(&[0.0, 1.0])[0].category, "code");

    let linear = LinearClassifier::new(
        labels(),
        identity(),
        LinearHead {
            classes: 2,
            dim: 2,
            weights: vec![1.0, 0.0, 0.0, 1.0],
            bias: vec![0.0, 0.0],
        },
        1.0,
        TrainingSummary::default(),
    );
    let any = load(&serde_json::to_string(&linear).unwrap()).unwrap();
    assert_eq!(any.kind(), "linear");
    assert_eq!(any, AnyClassifier::Linear(linear));
}

#[test]
fn the_shipped_classifier_loads_whatever_its_kind() {
    let c = coe_router::default_classifier().unwrap();
    assert_eq!(c.labels().len(), 8);
    assert!(["linear", "mlp"].contains(&c.kind()), "{}", c.kind());
}

#[test]
fn unknown_kinds_and_broken_mlp_weights_are_refused() {
    let mut v = serde_json::to_value(mlp()).unwrap();
    v["kind"] = "forest".into();
    let err = load(&v.to_string()).unwrap_err();
    assert!(err.contains("unknown classifier kind \"forest\""), "{err}");

    let mut v = serde_json::to_value(mlp()).unwrap();
    v["head"]["w2"] = serde_json::json!([1.0, 2.0]);
    let err = load(&v.to_string()).unwrap_err();
    assert!(err.contains("corrupt") && err.contains("shapes"), "{err}");

    let mut v = serde_json::to_value(mlp()).unwrap();
    v["head"]["hidden"] = 0.into();
    assert!(load(&v.to_string()).is_err());
}
