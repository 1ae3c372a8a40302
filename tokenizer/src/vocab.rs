//! The vocabulary as llama.cpp loads it: token texts, scores, attributes, and its fix-ups of
//! special tokens (control-looking texts, end-of-generation ids).
use std::collections::HashMap;

use crate::metadata::Metadata;
use crate::TokenizerError;

/// Token attributes, the bit values llama.cpp uses (`llama_token_attr`).
pub(crate) mod attr {
    pub(crate) const UNKNOWN: u32 = 1 << 0;
    pub(crate) const UNUSED: u32 = 1 << 1;
    pub(crate) const NORMAL: u32 = 1 << 2;
    pub(crate) const CONTROL: u32 = 1 << 3;
    pub(crate) const USER_DEFINED: u32 = 1 << 4;
    pub(crate) const BYTE: u32 = 1 << 5;
}

/// `tokenizer.ggml.token_type` values (`llama_token_type`) to attributes.
fn attr_of_type(token_type: i32) -> u32 {
    match token_type {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

pub(crate) struct Vocab {
    pub(crate) texts: Vec<String>,
    ids: HashMap<String, u32>,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<u32>,
}

impl Vocab {
    pub(crate) fn load(meta: &Metadata<'_>) -> Result<Self, TokenizerError> {
        let tokens = meta
            .strings("tokenizer.ggml.tokens")?
            .ok_or(TokenizerError::MissingKey("tokenizer.ggml.tokens"))?;
        let n = tokens.len();
        let scores = meta.f32s("tokenizer.ggml.scores")?;
        let types = meta.i32s("tokenizer.ggml.token_type")?;
        for (key, len) in [
            ("tokenizer.ggml.scores", scores.as_ref().map(Vec::len)),
            ("tokenizer.ggml.token_type", types.as_ref().map(Vec::len)),
        ] {
            if let Some(len) = len.filter(|&len| len < n) {
                return Err(TokenizerError::InvalidVocab(format!(
                    "{key} has {len} entries for {n} tokens"
                )));
            }
        }
        let mut texts = Vec::with_capacity(n);
        let mut ids = HashMap::with_capacity(n);
        for (i, text) in tokens.into_iter().enumerate() {
            let id = i as u32;
            // llama.cpp renames empty tokens so that every text maps back to one id.
            let text = if text.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                text.to_owned()
            };
            if let Some(first) = ids.insert(text.clone(), id) {
                return Err(TokenizerError::InvalidVocab(format!(
                    "duplicate token {text:?} has ids {first} and {id}"
                )));
            }
            texts.push(text);
        }
        let attrs = match types {
            Some(types) => types[..n].iter().map(|&t| attr_of_type(t)).collect(),
            None => vec![attr::NORMAL; n],
        };
        let scores = scores.map_or_else(
            || vec![0.0; n],
            |mut s| {
                s.truncate(n);
                s
            },
        );
        Ok(Self {
            texts,
            ids,
            scores,
            attrs,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

    pub(crate) fn id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    pub(crate) fn has_attr(&self, id: u32, mask: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & mask != 0)
    }

    /// llama.cpp's `byte_to_token` for SentencePiece vocabularies: `<0xXX>`, else the byte itself.
    pub(crate) fn byte_token(&self, byte: u8) -> Option<u32> {
        self.id(&format!("<0x{byte:02X}>"))
            .or_else(|| std::str::from_utf8(&[byte]).ok().and_then(|s| self.id(s)))
    }

    /// Marks a token control, as llama.cpp does for texts it knows to be control tokens
    /// even when the converter typed them as normal.
    fn force_control(&mut self, id: u32) {
        self.attrs[id as usize] |= attr::CONTROL;
    }

    fn first_with_text(&self, candidates: &[&str]) -> Option<u32> {
        // llama.cpp walks a hash map here, so its pick among several candidates is arbitrary;
        // the lowest id is a deterministic stand-in.
        candidates.iter().filter_map(|t| self.id(t)).min()
    }
}

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss tokens llama.cpp always renders.
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Ids from metadata (or llama.cpp's defaults) that the tokenizer needs.
pub(crate) struct SpecialIds {
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) eot: Option<u32>,
    pub(crate) eom: Option<u32>,
    pub(crate) fim_pad: Option<u32>,
    pub(crate) fim_rep: Option<u32>,
    pub(crate) fim_sep: Option<u32>,
}

impl SpecialIds {
    /// Reads the special ids, dropping any outside the vocabulary as llama.cpp does.
    pub(crate) fn load(
        meta: &Metadata<'_>,
        n_tokens: usize,
        default_bos: Option<u32>,
        default_eos: Option<u32>,
    ) -> Result<Self, TokenizerError> {
        let in_range = |id: Option<u32>| id.filter(|&id| (id as usize) < n_tokens);
        let read =
            |key: &'static str, default: Option<u32>| -> Result<Option<u32>, TokenizerError> {
                Ok(in_range(meta.id(key)?).or(in_range(default)))
            };
        Ok(Self {
            bos: read("tokenizer.ggml.bos_token_id", default_bos)?,
            eos: read("tokenizer.ggml.eos_token_id", default_eos)?,
            eot: read("tokenizer.ggml.eot_token_id", None)?,
            eom: read("tokenizer.ggml.eom_token_id", None)?,
            fim_pad: read("tokenizer.ggml.fim_pad_token_id", None)?,
            fim_rep: read("tokenizer.ggml.fim_rep_token_id", None)?,
            fim_sep: read("tokenizer.ggml.fim_sep_token_id", None)?,
        })
    }

    /// Fills unset ids from token texts, fixes attributes of control-looking tokens, and returns
    /// the end-of-generation ids, sorted: llama.cpp's `special_eog_ids`.
    pub(crate) fn resolve_eog(&mut self, vocab: &mut Vocab) -> Vec<u32> {
        for (slot, texts) in [
            (&mut self.eot, EOT_TEXTS),
            (&mut self.eom, &["<|eom_id|>"][..]),
            (&mut self.fim_pad, FIM_PAD_TEXTS),
            (&mut self.fim_rep, FIM_REP_TEXTS),
            (&mut self.fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_none() {
                *slot = vocab.first_with_text(texts);
                if let Some(id) = *slot {
                    vocab.force_control(id);
                }
            }
        }
        let mut eog: Vec<u32> = [self.fim_pad, self.fim_rep, self.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        let by_text: Vec<u32> = EOG_TEXTS.iter().filter_map(|t| vocab.id(t)).collect();
        for id in by_text {
            eog.push(id);
            vocab.force_control(id);
        }
        let always_rendered: Vec<u32> =
            ALWAYS_RENDERED.iter().filter_map(|t| vocab.id(t)).collect();
        for id in always_rendered {
            vocab.attrs[id as usize] = attr::USER_DEFINED;
        }
        eog.extend([self.eos, self.eot, self.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();

        let has = |text: &str| eog.iter().any(|&id| vocab.texts[id as usize] == text);
        // o200k_harmony and solar-open use `<|end|>` mid-message, so it must not stop generation.
        let end_is_text = (has("<|return|>") && has("<|call|>")
            || has("<|calls|>") && has("<|flush|>"))
            && has("<|end|>");
        // gemma4 and paddleocr use `</s>` as text.
        let s_is_text = has("<|tool_response>") && has("</s>");
        for (is_text, text, new_attr) in [
            (end_is_text, "<|end|>", attr::USER_DEFINED),
            (s_is_text, "</s>", attr::NORMAL),
        ] {
            if let Some(id) = vocab.id(text).filter(|_| is_text) {
                eog.retain(|&e| e != id);
                vocab.attrs[id as usize] = new_attr;
            }
        }
        eog
    }
}
