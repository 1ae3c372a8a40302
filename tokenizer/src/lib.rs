//! Tokenizers and chat templates built from GGUF metadata, matching llama.cpp token for token.
//!
//! [`GgufTokenizer`] reads `tokenizer.ggml.*` and implements the two families small GGUF models
//! use: byte-level BPE (`gpt2`, with llama.cpp's per-model pre-tokenizers) and SentencePiece
//! (`llama`, score-driven merges with byte fallback). [`ChatTemplate`] renders
//! `tokenizer.chat_template` the way Hugging Face transformers' `apply_chat_template` does.
mod bpe;
mod chat;
mod error;
mod metadata;
mod pretokenize;
mod special;
mod spm;
mod symbols;
mod tokenizer;
mod unicode;
mod vocab;

pub use chat::ChatTemplate;
pub use error::TokenizerError;
pub use tokenizer::GgufTokenizer;
