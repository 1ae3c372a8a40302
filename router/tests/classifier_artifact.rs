//! The classifier artefact round-trips, and every way a file can be broken is a clear error at
//! load, never a panic.

use coe_router::classify::{
    ArtifactError, Classifier, LinearClassifier, LinearHead, TrainingSummary, ARTIFACT_FILE,
};
use coe_router::embed::EmbedderIdentity;

fn identity() -> EmbedderIdentity {
    EmbedderIdentity {
        model: "test-embedder".into(),
        weights_sha256: "ab".repeat(32),
        dim: 3,
    }
}

fn classifier() -> LinearClassifier {
    let head = LinearHead {
        classes: 2,
        dim: 3,
        weights: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        bias: vec![0.0, 0.5],
    };
    LinearClassifier::new(
        vec!["code".into(), "math".into()],
        identity(),
        head,
        2.0,
        TrainingSummary::default(),
    )
}

fn load_err(json: &str) -> String {
    let err =
        LinearClassifier::from_json(json.as_bytes(), "x/classifier.json".as_ref()).unwrap_err();
    assert!(matches!(err, ArtifactError::Corrupt { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn saved_artifact_loads_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    let c = classifier();
    let path = c.save(dir.path()).unwrap();
    assert_eq!(path, dir.path().join(ARTIFACT_FILE));
    let back = LinearClassifier::load(dir.path()).unwrap();
    assert_eq!(back, c);
    let p = back.probabilities(&[2.0, 0.0, 0.0]);
    // Temperature 2 halves the logits (2.0 vs 0.5) before the softmax.
    let want = 1.0 / (1.0 + (-0.75f32).exp());
    assert!((p[0] - want).abs() < 1e-6 && (p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert_eq!(back.scores(&[2.0, 0.0, 0.0])[0].category, "code");
}

#[test]
fn truncated_file_is_corrupt() {
    let json = serde_json::to_string(&classifier()).unwrap();
    let msg = load_err(&json[..json.len() / 2]);
    assert!(
        msg.contains("not JSON") && msg.contains("coe router train"),
        "{msg}"
    );
}

#[test]
fn other_formats_and_versions_are_refused() {
    let mut v = serde_json::to_value(classifier()).unwrap();
    v["version"] = 99.into();
    assert!(load_err(&v.to_string()).contains("version"));
    v["version"] = 1.into();
    v["format"] = "something-else".into();
    assert!(load_err(&v.to_string()).contains("format"));
    assert!(load_err("{}").contains("format"));
}

#[test]
fn inconsistent_shapes_and_values_are_refused() {
    let base = serde_json::to_value(classifier()).unwrap();
    type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "weights",
            Box::new(|v| {
                v["head"]["weights"]
                    .as_array_mut()
                    .unwrap()
                    .pop()
                    .map(drop)
                    .unwrap()
            }),
        ),
        (
            "labels",
            Box::new(|v| v["labels"] = serde_json::json!(["code"])),
        ),
        (
            "repeated",
            Box::new(|v| v["labels"] = serde_json::json!(["code", "code"])),
        ),
        (
            "temperature",
            Box::new(|v| v["temperature"] = serde_json::json!(-1.0)),
        ),
        (
            "weights",
            Box::new(|v| v["embedder"]["dim"] = serde_json::json!(4)),
        ),
        (
            "missing field",
            Box::new(|v| drop(v.as_object_mut().unwrap().remove("head"))),
        ),
    ];
    for (want, mutate) in cases {
        let mut v = base.clone();
        mutate(&mut v);
        let msg = load_err(&v.to_string());
        assert!(msg.contains(want), "expected {want:?} in {msg}");
    }
    // JSON has no NaN literal; a huge number overflows f32 to infinity.
    let mut v = base.clone();
    v["head"]["bias"][0] = serde_json::json!(1e300);
    let msg = load_err(&v.to_string());
    assert!(
        msg.contains("NaN or infinity") || msg.contains("invalid"),
        "{msg}"
    );
}

#[test]
fn missing_directory_names_the_path_and_the_fix() {
    let err = LinearClassifier::load("/nonexistent/coe-model".as_ref()).unwrap_err();
    assert!(matches!(err, ArtifactError::Read { .. }));
    assert!(err
        .to_string()
        .contains("/nonexistent/coe-model/classifier.json"));
}

#[test]
fn a_different_embedder_is_refused() {
    let c = classifier();
    let mut other = identity();
    other.weights_sha256 = "cd".repeat(32);
    let err = c.check_embedder(&other, "m".as_ref()).unwrap_err();
    assert!(matches!(err, ArtifactError::WrongEmbedder { .. }));
    assert!(c.check_embedder(&identity(), "m".as_ref()).is_ok());
}
