//! Token-for-token parity with llama.cpp on the real models, against fixtures recorded with
//! llama-cpp-python (`tests/fixtures/tokenizer/<model>.json` at the workspace root).
mod common;

use std::path::PathBuf;
use std::time::Instant;

use coe_tokenizer::GgufTokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
    tokenizer_info: Info,
}

#[derive(Deserialize)]
struct Info {
    llama_token_bos: i64,
    llama_token_eos: i64,
    llama_eog_ids: Vec<u32>,
    n_vocab: usize,
    llama_vocab_get_add_bos: bool,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    /// `tokenize(text, add_bos=False, special=True)`
    ids: Vec<u32>,
    /// `tokenize(text, add_bos=False, special=False)`
    ids_no_special: Vec<u32>,
    /// `detokenize(ids)`
    detok: String,
    /// `detokenize(ids, special=True)`
    detok_special: String,
    /// `detokenize(ids_no_special)`
    detok_no_special: String,
}

fn fixture(key: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../tests/fixtures/tokenizer/{key}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("read fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse fixture {}: {e}", path.display()))
}

fn id_or_none(id: i64) -> Option<u32> {
    u32::try_from(id).ok()
}

/// Checks every case and reports all mismatches at once, so one run shows the whole picture.
fn check_parity(key: &str) {
    let Some((_, tok)) = common::load(key) else {
        return;
    };
    let fixture = fixture(key);
    let info = &fixture.tokenizer_info;
    let mut failures = Vec::new();
    let mut check = |what: String, ok: bool| {
        if !ok {
            failures.push(what);
        }
    };
    check(
        format!("vocab_size {} != {}", tok.vocab_size(), info.n_vocab),
        tok.vocab_size() == info.n_vocab,
    );
    check(
        format!("bos {:?} != {}", tok.bos_id(), info.llama_token_bos),
        tok.bos_id() == id_or_none(info.llama_token_bos),
    );
    check(
        format!("eos {:?} != {}", tok.eos_id(), info.llama_token_eos),
        tok.eos_id() == id_or_none(info.llama_token_eos),
    );
    check(
        format!(
            "stop_ids {:?} != eog {:?}",
            tok.stop_ids(),
            info.llama_eog_ids
        ),
        tok.stop_ids() == info.llama_eog_ids,
    );
    check(
        format!(
            "add_bos {} != {}",
            tok.add_bos(),
            info.llama_vocab_get_add_bos
        ),
        tok.add_bos() == info.llama_vocab_get_add_bos,
    );

    let mut passed = 0;
    for case in &fixture.cases {
        let before = failures.len();
        let mut check = |what: &str, got: String, want: String| {
            if got != want {
                failures.push(format!(
                    "{what} of {:?}:\n   got {got}\n  want {want}",
                    case.text
                ));
            }
        };
        let ids = tok.encode(&case.text, true);
        check(
            "ids (special)",
            format!("{ids:?}"),
            format!("{:?}", case.ids),
        );
        let ids_plain = tok.encode(&case.text, false);
        check(
            "ids (no special)",
            format!("{ids_plain:?}"),
            format!("{:?}", case.ids_no_special),
        );
        check(
            "detok",
            format!("{:?}", tok.decode(&case.ids, false)),
            format!("{:?}", case.detok),
        );
        check(
            "detok (special)",
            format!("{:?}", tok.decode(&case.ids, true)),
            format!("{:?}", case.detok_special),
        );
        check(
            "detok (no special)",
            format!("{:?}", tok.decode(&case.ids_no_special, false)),
            format!("{:?}", case.detok_no_special),
        );
        passed += usize::from(failures.len() == before);
    }
    eprintln!(
        "{key}: {passed}/{} cases match llama.cpp",
        fixture.cases.len()
    );
    assert!(
        failures.is_empty(),
        "{key}: {} mismatches with llama.cpp:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn smollm2_tokenizes_like_llama_cpp() {
    check_parity("smollm2-135m-instruct");
}

#[test]
fn qwen25_coder_tokenizes_like_llama_cpp() {
    check_parity("qwen2.5-coder-0.5b-instruct");
}

#[test]
fn gemma3_tokenizes_like_llama_cpp() {
    check_parity("gemma-3-270m");
}

/// A prompt of a few thousand characters must tokenize in milliseconds (release builds).
#[test]
fn encodes_a_long_mixed_prompt_quickly_and_round_trips() {
    let text = long_prompt();
    for key in [
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "gemma-3-270m",
    ] {
        let Some((_, tok)) = common::load(key) else {
            continue;
        };
        let ids = timed(key, &tok, &text);
        assert_eq!(tok.decode(&ids, false), text, "{key} does not round-trip");
    }
}

fn timed(key: &str, tok: &GgufTokenizer, text: &str) -> Vec<u32> {
    let runs = 20;
    let start = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..runs {
        ids = tok.encode(text, true);
    }
    let per = start.elapsed() / runs;
    eprintln!(
        "{key}: {} chars -> {} tokens in {per:?} per encode",
        text.chars().count(),
        ids.len()
    );
    ids
}

fn long_prompt() -> String {
    let paragraph =
        "The quick brown fox jumps over the lazy dog; it's 2024-01-01 and π ≈ 3.14159.\n\
        fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!(\"{:?}\", v);\n}\n\
        Café naïve résumé — 日本語のテキスト, Привет мир!   Tabs\tand  spaces.\n\n";
    paragraph.repeat(2000 / paragraph.len() + 1)
}
