//! The MiniLM embedder reproduces sentence-transformers: every text of the recorded fixture
//! (tests/fixtures/embeddings, made by scripts/record_embedding_fixture.py) embeds to cosine >= 0.9999,
//! on every dense kernel this machine can run (AMX bf16, AVX-512 f16, portable f32).

use coe_router::embed::{DenseKernel, Embedder, MiniLm, MINILM_MODEL};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    model: String,
    model_safetensors_sha256: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    n_tokens: usize,
    embedding: Vec<f32>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/embeddings/all-minilm-l6-v2.json"
    );
    serde_json::from_slice(&std::fs::read(path).expect("fixture file")).expect("fixture json")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn embeddings_match_sentence_transformers() {
    let fx = fixture();
    let kernels = DenseKernel::all_available();
    assert!(kernels.contains(&DenseKernel::Portable));
    for kernel in kernels {
        check_kernel(&fx, kernel);
    }
}

fn check_kernel(fx: &Fixture, kernel: DenseKernel) {
    let k = kernel.name();
    let mut model = MiniLm::load_with_kernel(&coe_fetch::coe_home(), kernel).expect("load MiniLM");
    assert_eq!(model.kernel(), kernel);
    assert_eq!(fx.model, MINILM_MODEL);
    assert_eq!(model.identity().weights_sha256, fx.model_safetensors_sha256);

    let texts: Vec<&str> = fx.cases.iter().map(|c| c.text.as_str()).collect();
    let ids = model.tokenize(&texts).unwrap();
    for (case, ids) in fx.cases.iter().zip(&ids) {
        assert_eq!(ids.len(), case.n_tokens, "token count of {:?}", case.text);
    }

    // Once as one batch (mixed lengths, up to the 256-token truncation) and once text by text.
    let batched = model.embed(&texts).unwrap();
    let mut worst = f64::INFINITY;
    for (case, got) in fx.cases.iter().zip(&batched) {
        let single = model.embed(&[case.text.as_str()]).unwrap().remove(0);
        for (how, v) in [("batched", got), ("alone", &single)] {
            let cos = cosine(v, &case.embedding);
            worst = worst.min(cos);
            assert!(cos >= 0.9999, "{k} {how} {:?}: cosine {cos}", case.text);
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-4,
                "{k} {how} {:?}: norm {norm}",
                case.text
            );
        }
    }
    eprintln!("{k}: lowest cosine to sentence-transformers: {worst:.7}");
}
