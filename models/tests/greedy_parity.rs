//! Greedy decoding must reproduce llama.cpp's: for every recorded case the first 16 argmax
//! tokens equal the fixture's, except after a step llama.cpp itself saw as a near-tie (top-1
//! minus top-2 logit under 0.1), where tiny numeric differences may legitimately flip the choice.
//! Models are fetched into the coe cache (~/.cache/coe or $COE_HOME) on first use.
//!
//! A divergence is also cut, not failed, when both sides see a near-tie within [`NOISE`]:
//! llama.cpp's recorded margin and our own margin between its token and ours. Our kernels
//! reproduce ggml's products and sums closely but not bit for bit (its K-quant and batched
//! paths differ), and the int8 rounding of activations between layers amplifies 1-ulp
//! differences: on the recorded cases margins disagreed by up to 0.84 logits (gemma-3), while
//! a real bug (rope, norm, layout) puts llama.cpp's token several logits below ours.
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
/// Largest margin, on both sides, that numeric noise may flip (see the module comment).
const NOISE: f64 = 1.0;

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
    let _ = file;
    // The fixture keys are manifest names: fetch (or find cached and verified) the real model.
    let model_path = coe_fetch::fetch_gguf(&coe_fetch::coe_home(), key, &mut |_| {})
        .unwrap_or_else(|e| panic!("fetching {key}: {e}"));
    let fixture_path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/greedy")
        .join(format!("{key}.json"));
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
            let recorded = margins.get(step).copied().unwrap_or(f64::INFINITY);
            if recorded < NEAR_TIE {
                cut = Some(format!("a near-tie (margin {recorded:.4})"));
                break;
            }
            let got = argmax(&logits);
            if got != expected[step] {
                let ours = f64::from(logits[got as usize] - logits[expected[step] as usize]);
                if recorded < NOISE && ours < NOISE {
                    cut = Some(format!(
                        "numeric noise: we prefer {got} to {} by {ours:.4}, llama.cpp the reverse by {recorded:.4}",
                        expected[step]
                    ));
                } else {
                    mismatch = Some((step, got, ours));
                }
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
            (Some((step, got, ours)), _) => failures.push(format!(
                "{key} case {n} ({label:?}): step {step} produced {got}, llama.cpp {} (its margin {:?}, ours {ours:.4}); expected {:?}",
                expected[step],
                margins.get(step),
                &expected[..COMPARED.min(expected.len())]
            )),
            (None, Some(why)) => {
                eprintln!("{key} case {n}: {compared} tokens match; cut at step {compared}, {why}")
            }
            // A fixture that stopped at end-of-sequence early is compared to its end.
            (None, None) if compared < MIN_COMPARED.min(expected.len()) => failures.push(format!(
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
