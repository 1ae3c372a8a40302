//! Helpers shared by the examples: model loading and a crude vocabulary-based tokenizer that is
//! good enough to eyeball outputs (the real tokenizer lives in coe-tokenizer).
#![allow(dead_code)]
use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use coe_models::QuantizedModel;

pub struct Loaded {
    pub model: QuantizedModel,
    pub vocab: Vec<String>,
    pub gpt2: bool,
    pub load_seconds: f64,
}

pub fn load(path: &str, max_context: usize) -> anyhow::Result<Loaded> {
    let t = std::time::Instant::now();
    let mut file = std::fs::File::open(path)?;
    let content = Content::read(&mut file)?;
    let model =
        QuantizedModel::from_gguf(&content, &mut file, &candle_core::Device::Cpu, max_context)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let vocab = match content.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.to_string().cloned().unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    };
    let gpt2 = matches!(content.metadata.get("tokenizer.ggml.model"), Some(Value::String(s)) if s == "gpt2");
    Ok(Loaded {
        model,
        vocab,
        gpt2,
        load_seconds,
    })
}

impl Loaded {
    /// Greedy longest-match over the vocabulary, with the model's space marker.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let marked: String = text
            .chars()
            .map(|c| match (c, self.gpt2) {
                (' ', true) => 'Ġ',
                ('\n', true) => 'Ċ',
                (' ', false) => '▁',
                (c, _) => c,
            })
            .collect();
        let index: HashMap<&str, u32> = self
            .vocab
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as u32))
            .collect();
        let mut ids = Vec::new();
        let mut rest = marked.as_str();
        while !rest.is_empty() {
            let mut end = rest.len();
            loop {
                if let Some(&id) = index.get(&rest[..end]) {
                    ids.push(id);
                    rest = &rest[end..];
                    break;
                }
                end = rest[..end]
                    .char_indices()
                    .last()
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                if end == 0 {
                    rest = &rest[rest.chars().next().unwrap().len_utf8()..];
                    break;
                }
            }
        }
        ids
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| self.vocab.get(i as usize).cloned().unwrap_or_default())
            .collect::<String>()
            .replace(['Ġ', '▁'], " ")
            .replace('Ċ', "\n")
    }
}

pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate() {
        if v > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Resident set size of this process in bytes, from /proc.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}
