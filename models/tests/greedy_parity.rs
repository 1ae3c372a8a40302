//! Greedy decoding must reproduce llama.cpp's: for every recorded case the first 16 argmax
//! tokens equal the fixture's, except after a step llama.cpp itself saw as a near-tie (top-1
//! minus top-2 logit under 0.1), where tiny numeric differences may legitimately flip the choice.
//! Models come from $COE_TEST_MODELS_DIR (default /tmp/models); COE_SKIP_MODEL_TESTS=1 skips.
use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use coe_models::QuantizedModel;
use serde_json::Value;

/// Tokens compared per case.
const COMPARED: usize = 16;
/// Fewest tokens a case must compare when no near-tie cut it short.
const MIN_COMPARED: usize = 8;
/// Steps whose recorded top-1/top-2 margin is below this are near-ties.
const NEAR_TIE: f64 = 0.1;

fn skip(reason: &str) -> bool {
    if std::env::var("COE_SKIP_MODEL_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: {reason} (COE_SKIP_MODEL_TESTS=1)");
        return true;
    }
    false
}

fn ids(v: &Value, field: &str) -> Vec<u32> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("fixture case has no `{field}` array"))
        .iter()
        .map(|x| x.as_u64().expect("token ids are integers") as u32)
        .collect()
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate() {
        if v > xs[best] {
            best = i;
        }
    }
    best as u32
}

fn check_model(key: &str, file: &str) {
    let models = std::env::var("COE_TEST_MODELS_DIR").unwrap_or_else(|_| "/tmp/models".into());
    let model_path = PathBuf::from(models).join(file);
    let fixture_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/greedy")
        .join(format!("{key}.json"));
    if !model_path.exists() {
        if skip(&format!("model file {} is missing", model_path.display())) {
            return;
        }
        panic!(
            "model file {} is missing: run `coe fetch` or set COE_TEST_MODELS_DIR (COE_SKIP_MODEL_TESTS=1 skips)",
            model_path.display()
        );
    }
    let fixture: Value = match std::fs::read_to_string(&fixture_path) {
        Ok(text) => serde_json::from_str(&text).expect("fixture is valid JSON"),
        Err(e) => {
            if skip(&format!(
                "fixture {} unreadable: {e}",
                fixture_path.display()
            )) {
                return;
            }
            panic!("fixture {} unreadable: {e}", fixture_path.display());
        }
    };

    let mut file = std::fs::File::open(&model_path).expect("model file opens");
    let content = Content::read(&mut file).expect("model file is GGUF");
    let model = QuantizedModel::from_gguf(&content, &mut file, &candle_core::Device::Cpu, 4096)
        .expect("model loads");

    let cases = fixture["cases"].as_array().expect("fixture has `cases`");
    assert!(!cases.is_empty(), "{key}: fixture has no cases");
    let mut failures = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let prompt = ids(case, "prompt_ids");
        let expected = ids(case, "greedy_ids");
        let margins: Vec<f64> = case["margins"]
            .as_array()
            .expect("fixture case has `margins`")
            .iter()
            .map(|m| m.as_f64().expect("margins are numbers"))
            .collect();
        let mut cache = model.new_cache();
        let mut logits = model.forward(&prompt, &mut cache).expect("prompt runs");
        let mut compared = 0;
        let mut cut = None;
        let mut mismatch = None;
        for step in 0..COMPARED.min(expected.len()) {
            if margins.get(step).is_some_and(|&m| m < NEAR_TIE) {
                cut = Some(step);
                break;
            }
            let got = argmax(&logits);
            if got != expected[step] {
                mismatch = Some((step, got));
                break;
            }
            compared += 1;
            logits = model.forward(&[got], &mut cache).expect("decode step runs");
        }
        let label = case["prompt"]
            .as_str()
            .unwrap_or("?")
            .chars()
            .take(40)
            .collect::<String>();
        match (mismatch, cut) {
            (Some((step, got)), _) => failures.push(format!(
                "{key} case {n} ({label:?}): step {step} produced {got}, llama.cpp {} (margin {:?}); expected {:?}",
                expected[step],
                margins.get(step),
                &expected[..COMPARED.min(expected.len())]
            )),
            (None, Some(step)) => {
                eprintln!("{key} case {n}: {compared} tokens match; cut at step {step}, a near-tie (margin {:.4})", margins[step]);
            }
            (None, None) if compared < MIN_COMPARED => failures.push(format!(
                "{key} case {n}: only {compared} tokens compared (fixture too short?)"
            )),
            (None, None) => eprintln!("{key} case {n}: {compared} tokens match"),
        }
    }
    assert!(
        failures.is_empty(),
        "greedy outputs differ from llama.cpp:\n{}",
        failures.join("\n")
    );
}

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    check_model("smollm2-135m-instruct", "smollm2-135m-instruct-q4_1.gguf");
}

#[test]
fn qwen2_5_coder_greedy_matches_llama_cpp() {
    check_model(
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    );
}

#[test]
fn gemma3_greedy_matches_llama_cpp() {
    check_model("gemma-3-270m", "gemma-3-270m-q4_k_m.gguf");
}
