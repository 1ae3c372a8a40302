//! Checks the tokenizer against a dump of llama.cpp's behaviour made by
//! `tokenizer/scripts/dump_llama_cpp_tokenizer.py`: ids for thousands of texts, every token's
//! piece, lossy decoding of random id sequences, and the special-token ids. Exits non-zero on
//! any difference.
//!
//! `cargo run --release -p coe-tokenizer --example llama_cpp_dump_parity -- MODEL.gguf DUMP.json`
use candle_core::quantized::gguf_file::Content;
use coe_tokenizer::GgufTokenizer;
use serde_json::Value;

const SHOWN: usize = 10;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(dump)) = (args.next(), args.next()) else {
        eprintln!("usage: llama_cpp_dump_parity MODEL.gguf DUMP.json");
        std::process::exit(2);
    };
    let mut file = std::fs::File::open(&model).expect("open model");
    let content = Content::read(&mut file).expect("read GGUF");
    let tok = GgufTokenizer::from_gguf(&content).expect("build tokenizer");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&dump).expect("read dump"))
        .expect("parse dump");

    let mut mismatches = Vec::new();
    let cases = d["cases"].as_array().expect("cases");
    for case in cases {
        let text = case["text"].as_str().expect("text");
        for (special, key) in [(true, "ids"), (false, "ids_no_special")] {
            let (got, want) = (tok.encode(text, special), ids(&case[key]));
            if got != want {
                mismatches.push(format!(
                    "encode {text:?} special={special}\n  got  {got:?}\n  want {want:?}"
                ));
            }
        }
    }
    let pieces = d["pieces"].as_array().expect("pieces");
    for (id, piece) in pieces.iter().enumerate() {
        for (special, idx) in [(false, 0), (true, 1)] {
            let got = hex(&tok.token_bytes(id as u32, special));
            if got != piece[idx].as_str().expect("hex") {
                mismatches.push(format!(
                    "piece {id} special={special}: got {got}, want {}",
                    piece[idx]
                ));
            }
        }
    }
    let seqs = d["seqs"].as_array().expect("seqs");
    for seq in seqs {
        let got = tok.decode(&ids(&seq["ids"]), false);
        if got != seq["text"].as_str().expect("text") {
            mismatches.push(format!(
                "decode {}: got {got:?}, want {}",
                seq["ids"], seq["text"]
            ));
        }
    }
    let control: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&id| tok.is_control(id))
        .collect();
    let expect_eq = |what: &str, ok: bool, mismatches: &mut Vec<String>| {
        if !ok {
            mismatches.push(format!("{what} differs"));
        }
    };
    expect_eq("eog ids", tok.stop_ids() == ids(&d["eog"]), &mut mismatches);
    expect_eq(
        "control ids",
        control == ids(&d["control"]),
        &mut mismatches,
    );
    expect_eq(
        "add_bos",
        Some(tok.add_bos()) == d["add_bos"].as_bool(),
        &mut mismatches,
    );
    expect_eq(
        "bos",
        tok.bos_id().map(i64::from) == d["bos"].as_i64(),
        &mut mismatches,
    );
    expect_eq(
        "eos",
        tok.eos_id().map(i64::from) == d["eos"].as_i64(),
        &mut mismatches,
    );

    println!(
        "{model}: {} texts x2, {} pieces x2, {} sequences: {} mismatches",
        cases.len(),
        pieces.len(),
        seqs.len(),
        mismatches.len()
    );
    for m in mismatches.iter().take(SHOWN) {
        println!("{m}");
    }
    if !mismatches.is_empty() {
        std::process::exit(1);
    }
}
