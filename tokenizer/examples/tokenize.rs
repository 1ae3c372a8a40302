//! Prints how a GGUF model's tokenizer splits a text, with and without special-token parsing.
//!
//! `cargo run -p coe-tokenizer --example tokenize -- MODEL.gguf "some text"`
use candle_core::quantized::gguf_file::Content;
use coe_tokenizer::GgufTokenizer;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(text)) = (args.next(), args.next()) else {
        eprintln!("usage: tokenize MODEL.gguf TEXT");
        std::process::exit(2);
    };
    let mut file = std::fs::File::open(&path).expect("open model");
    let content = Content::read(&mut file).expect("read GGUF");
    let tok = GgufTokenizer::from_gguf(&content).expect("build tokenizer");
    for parse_special in [true, false] {
        let ids = tok.encode(&text, parse_special);
        let pieces: Vec<_> = ids
            .iter()
            .map(|&id| tok.token_text(id).unwrap_or("?"))
            .collect();
        println!("parse_special={parse_special}: {ids:?}\n  {pieces:?}");
    }
}
