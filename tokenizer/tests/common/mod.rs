//! Locating the real GGUF models the integration tests run against.
use std::path::PathBuf;

/// Fetches (or finds cached and verified) the GGUF of a manifest model.
pub fn model_path(key: &str) -> PathBuf {
    coe_fetch::fetch_gguf(&coe_fetch::coe_home(), key, &mut |_| {})
        .unwrap_or_else(|e| panic!("fetching {key}: {e}"))
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
