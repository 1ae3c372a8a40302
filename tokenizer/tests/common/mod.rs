//! Locating the real GGUF models the integration tests run against.
use std::path::PathBuf;

/// Fetches (or finds cached and verified) the GGUF of a manifest model.
pub fn model_path(key: &str) -> PathBuf {
    let manifest = coe_fetch::Manifest::embedded();
    let model = manifest.model(key).unwrap_or_else(|e| panic!("{e}"));
    let dir = coe_fetch::fetch_model(&coe_fetch::coe_home(), model, &mut |_| {})
        .unwrap_or_else(|e| panic!("fetching {key}: {e}"));
    let file = model
        .files
        .iter()
        .find(|f| f.name.ends_with(".gguf"))
        .expect("a GGUF file");
    dir.join(&file.name)
}

use candle_core::quantized::gguf_file::Content;
use coe_tokenizer::GgufTokenizer;

/// The GGUF metadata and tokenizer of the manifest model `key` (the fixture keys are manifest
/// names), fetched into the cache on first use like every other model test.
pub fn load(key: &str) -> Option<(Content, GgufTokenizer)> {
    let path = model_path(key);
    let file = path.display().to_string();
    let mut reader =
        std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let content =
        Content::read(&mut reader).unwrap_or_else(|e| panic!("read GGUF {}: {e}", path.display()));
    let tokenizer =
        GgufTokenizer::from_gguf(&content).unwrap_or_else(|e| panic!("tokenizer of {file}: {e}"));
    Some((content, tokenizer))
}
