//! The one error type of this crate: what was wrong with the GGUF metadata or the chat template.

/// Why a tokenizer or chat template could not be built or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key the tokenizer needs is absent.
    #[error("GGUF metadata has no `{0}` key; the file carries no usable tokenizer (re-convert it with llama.cpp's convert_hf_to_gguf.py)")]
    MissingKey(&'static str),
    /// A metadata key holds a value of the wrong GGUF type.
    #[error("GGUF metadata key `{key}` should be {expected}, found {found}")]
    WrongType {
        key: &'static str,
        expected: &'static str,
        found: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer family this crate does not implement.
    #[error("unsupported tokenizer model {0:?} (tokenizer.ggml.model); supported: \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a BPE pre-tokenizer this crate does not implement.
    #[error("unsupported pre-tokenizer {0:?} (tokenizer.ggml.pre); supported: {supported}", supported = crate::pretokenize::SUPPORTED)]
    UnsupportedPreTokenizer(String),
    /// The vocabulary contradicts itself (duplicate tokens, arrays of different lengths, ...).
    #[error("invalid GGUF vocabulary: {0}")]
    InvalidVocab(String),
    /// `tokenizer.chat_template` is not a template minijinja can compile.
    #[error("chat template in tokenizer.chat_template does not compile: {0:#}")]
    TemplateSyntax(#[source] minijinja::Error),
    /// The chat template failed while rendering (including `raise_exception` calls).
    #[error("chat template failed to render: {0:#}")]
    TemplateRender(#[source] minijinja::Error),
}
