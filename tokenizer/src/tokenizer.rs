//! `GgufTokenizer`: the tokenizer a GGUF file describes, encoding and decoding as llama.cpp does.
use std::borrow::Cow;

use candle_core::quantized::gguf_file::Content;

use crate::bpe::Bpe;
use crate::metadata::Metadata;
use crate::pretokenize::PreTokenizer;
use crate::special::{Fragment, SpecialTokens};
use crate::unicode::ByteChars;
use crate::vocab::{attr, SpecialIds, Vocab};
use crate::{spm, TokenizerError};

enum Model {
    Bpe(Box<Bpe>),
    Spm { add_space_prefix: bool },
}

/// A tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata.
pub struct GgufTokenizer {
    vocab: Vocab,
    model: Model,
    special: SpecialTokens,
    /// What each token detokenises to when special tokens are rendered.
    pieces: Vec<Vec<u8>>,
    bos: Option<u32>,
    eos: Option<u32>,
    stop_ids: Vec<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for GgufTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufTokenizer")
            .field(
                "kind",
                &match self.model {
                    Model::Bpe(_) => "gpt2",
                    Model::Spm { .. } => "llama",
                },
            )
            .field("vocab_size", &self.vocab.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata (tokenizer.ggml.* keys).
    pub fn from_gguf(content: &Content) -> Result<Self, TokenizerError> {
        let meta = Metadata(&content.metadata);
        let kind = meta
            .string("tokenizer.ggml.model")?
            .ok_or(TokenizerError::MissingKey("tokenizer.ggml.model"))?;
        let mut vocab = Vocab::load(&meta)?;
        // Defaults per tokenizer family, then metadata overrides, in llama.cpp's order.
        let (model, default_bos, default_eos, mut add_bos) = match kind {
            "llama" => {
                let add_space_prefix = meta
                    .bool("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true);
                (Model::Spm { add_space_prefix }, Some(1), Some(2), true)
            }
            "gpt2" => {
                let pre_name = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
                let pre = PreTokenizer::from_name(pre_name)?;
                let bpe = Bpe::load(&meta, &vocab, pre)?;
                let add_bos = bpe.ignores_merges();
                (Model::Bpe(Box::new(bpe)), Some(11), Some(11), add_bos)
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
        };
        if let Some(flag) = meta.bool("tokenizer.ggml.add_bos_token")? {
            add_bos = flag;
        }
        let mut ids = SpecialIds::load(&meta, vocab.len(), default_bos, default_eos)?;
        let stop_ids = ids.resolve_eog(&mut vocab);
        let special = SpecialTokens::new(&vocab);
        let pieces = (0..vocab.len() as u32)
            .map(|id| piece(&vocab, &model, id))
            .collect();
        tracing::debug!(
            kind,
            vocab = vocab.len(),
            bos = ?ids.bos,
            eos = ?ids.eos,
            ?stop_ids,
            "built GGUF tokenizer"
        );
        Ok(Self {
            vocab,
            model,
            special,
            pieces,
            bos: ids.bos,
            eos: ids.eos,
            stop_ids,
            add_bos,
        })
    }

    /// llama.cpp's `tokenize(text, add_special=false, parse_special)`: with parse_special,
    /// control and user-defined tokens written in the text become their ids. User-defined
    /// tokens are always recognised, as in llama.cpp.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let fragments = self.special.partition(&self.vocab, text, parse_special);
        match &self.model {
            Model::Bpe(bpe) => {
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(t) => bpe.tokenize(&self.vocab, t, &mut out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Model::Spm { add_space_prefix } => {
                // The space prefix goes before text that starts the input or follows a special token.
                let mut prev_special = true;
                for fragment in fragments {
                    match fragment {
                        Fragment::Text(t) => {
                            let prefix = if *add_space_prefix && prev_special {
                                "▁"
                            } else {
                                ""
                            };
                            let escaped = format!("{prefix}{}", t.replace(' ', "▁"));
                            spm::tokenize(&self.vocab, &escaped, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        out
    }

    /// The exact bytes a token stands for when detokenised: byte-fallback `<0xAB>` gives that
    /// byte, `▁` a space, GPT-2 byte-level characters their bytes; control (and unknown) tokens
    /// give nothing unless `render_special`. Ids outside the vocabulary give nothing.
    pub fn token_bytes(&self, id: u32, render_special: bool) -> Cow<'_, [u8]> {
        if !render_special && self.vocab.has_attr(id, attr::CONTROL | attr::UNKNOWN) {
            return Cow::Borrowed(&[]);
        }
        Cow::Borrowed(self.pieces.get(id as usize).map_or(&[][..], Vec::as_slice))
    }

    /// The text of `ids`, invalid UTF-8 replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(&self.token_bytes(id, render_special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Ids that end generation (llama.cpp's end-of-generation set): eos, eot, and end-of-turn
    /// style tokens such as `<|im_end|>`, `<end_of_turn>`, `<|endoftext|>` when present.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether the model wants a BOS token prepended (tokenizer.ggml.add_bos_token, defaulting
    /// as llama.cpp does: true for SentencePiece, false for most byte-level BPE).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The raw vocabulary string of a token.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// Whether the token is a control token (hidden in output unless special tokens are rendered).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.has_attr(id, attr::CONTROL)
    }
}

/// llama.cpp's `token_to_piece` with special tokens rendered.
fn piece(vocab: &Vocab, model: &Model, id: u32) -> Vec<u8> {
    let text = &vocab.texts[id as usize];
    if vocab.has_attr(id, attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) {
        return text.as_bytes().to_vec();
    }
    if vocab.has_attr(id, attr::NORMAL) {
        return match model {
            Model::Spm { .. } => text.replace('▁', " ").into_bytes(),
            Model::Bpe(_) => ByteChars::get().decode(text),
        };
    }
    if vocab.has_attr(id, attr::BYTE) {
        // `<0xAB>`; llama.cpp reads the two hex digits after `<0x`.
        return text
            .get(3..5)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .map_or_else(Vec::new, |b| vec![b]);
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::quantized::gguf_file::{Value, VersionedMagic};

    use super::*;

    fn content(model: &str, tokens: &[(&str, i32, f32)], extra: Vec<(&str, Value)>) -> Content {
        let strings = |v: Vec<&str>| {
            Value::Array(v.into_iter().map(|s| Value::String(s.to_owned())).collect())
        };
        let mut metadata: HashMap<String, Value> =
            extra.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        metadata.insert("tokenizer.ggml.model".into(), Value::String(model.into()));
        metadata.insert(
            "tokenizer.ggml.tokens".into(),
            strings(tokens.iter().map(|t| t.0).collect()),
        );
        metadata.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(tokens.iter().map(|t| Value::I32(t.1)).collect()),
        );
        metadata.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(tokens.iter().map(|t| Value::F32(t.2)).collect()),
        );
        Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: HashMap::new(),
            tensor_data_offset: 0,
        }
    }

    /// unk, bos, eos, a byte token for 'c', pieces with scores, a control and a user-defined token.
    fn spm() -> GgufTokenizer {
        let tokens = [
            ("<unk>", 2, 0.0),
            ("<s>", 3, 0.0),
            ("</s>", 3, 0.0),
            ("<0x63>", 6, 0.0),
            ("▁", 1, -10.0),
            ("a", 1, -10.0),
            ("b", 1, -10.0),
            ("ab", 1, -1.0),
            ("▁ab", 1, -0.5),
            ("<ctl>", 3, 0.0),
            ("<ud>", 4, 0.0),
        ];
        GgufTokenizer::from_gguf(&content("llama", &tokens, vec![])).unwrap()
    }

    #[test]
    fn spm_merges_best_scoring_pairs_and_falls_back_to_byte_tokens() {
        let tok = spm();
        assert_eq!(tok.encode("ab c", false), [8, 4, 3]);
        assert_eq!(tok.decode(&[8, 4, 3], false), " ab c");
        assert!(tok.add_bos(), "SentencePiece defaults to adding BOS");
        assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    }

    #[test]
    fn special_tokens_split_text_and_restart_the_space_prefix() {
        let tok = spm();
        assert_eq!(tok.encode("<ctl>ab<ud>ab", true), [9, 8, 10, 8]);
        // User-defined tokens are recognised even without parse_special.
        assert_eq!(tok.encode("ab<ud>ab", false), [8, 10, 8]);
        assert_eq!(tok.decode(&[9, 10], false), "<ud>");
        assert_eq!(tok.decode(&[9, 10], true), "<ctl><ud>");
        assert!(tok.is_control(9) && !tok.is_control(10));
    }

    #[test]
    fn bpe_applies_merges_by_rank_over_gpt2_byte_characters() {
        let tokens = [
            ("a", 1, 0.0),
            ("b", 1, 0.0),
            ("c", 1, 0.0),
            ("Ġ", 1, 0.0),
            ("ab", 1, 0.0),
            ("Ġab", 1, 0.0),
            ("<|im_end|>", 3, 0.0),
        ];
        let merges = Value::Array(vec![
            Value::String("a b".into()),
            Value::String("Ġ ab".into()),
        ]);
        let meta = vec![
            ("tokenizer.ggml.merges", merges),
            ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
            ("tokenizer.ggml.eos_token_id", Value::U32(0)),
        ];
        let tok = GgufTokenizer::from_gguf(&content("gpt2", &tokens, meta)).unwrap();
        assert_eq!(tok.encode(" ab c<|im_end|>", true), [5, 3, 2, 6]);
        assert_eq!(tok.decode(&[5, 3, 2, 6], false), " ab c");
        assert!(!tok.add_bos(), "byte-level BPE defaults to no BOS");
        assert_eq!(tok.stop_ids(), [0, 6], "eos and <|im_end|> end generation");
    }

    #[test]
    fn unsupported_tokenizer_model_is_named_in_the_error() {
        let err = GgufTokenizer::from_gguf(&content("t5", &[("a", 1, 0.0)], vec![])).unwrap_err();
        assert!(
            matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "t5"),
            "{err}"
        );
    }

    #[test]
    fn missing_merges_are_reported_by_key() {
        let err = GgufTokenizer::from_gguf(&content(
            "gpt2",
            &[("a", 1, 0.0)],
            vec![("tokenizer.ggml.pre", Value::String("qwen2".into()))],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
    }

    #[test]
    fn tokenizer_and_template_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<GgufTokenizer>();
        assert_send_sync::<crate::ChatTemplate>();
    }
}
