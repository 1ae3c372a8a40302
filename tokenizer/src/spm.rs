//! SentencePiece-style merging (`tokenizer.ggml.model = "llama"`), as llama.cpp's
//! `llm_tokenizer_spm_session`: repeatedly merge the adjacent pair whose concatenation is the
//! highest-scoring token, then fall back to `<0xXX>` byte tokens for pieces the vocabulary lacks.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::symbols::Symbols;
use crate::vocab::Vocab;

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Highest score first; among equal scores, the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Tokenizes `text`, whose spaces are already escaped as `▁`, appending ids to `out`.
pub(crate) fn tokenize(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    let mut symbols = Symbols::default();
    symbols.reset(text.chars().map(char::len_utf8));
    let mut queue = BinaryHeap::new();
    let try_add = |symbols: &Symbols, queue: &mut BinaryHeap<Bigram>, left: usize, right: usize| {
        let (l, r) = (symbols.get(left), symbols.get(right));
        let size = l.len + r.len;
        if let Some(id) = vocab.id(&text[l.start..l.start + size]) {
            queue.push(Bigram {
                score: vocab.scores[id as usize],
                left,
                right,
                size,
            });
        }
    };
    for i in 1..symbols.len() {
        try_add(&symbols, &mut queue, i - 1, i);
    }
    while let Some(bigram) = queue.pop() {
        let (l, r) = (symbols.get(bigram.left), symbols.get(bigram.right));
        // Skip pairs one of whose symbols has merged since the pair was queued.
        if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
            continue;
        }
        symbols.merge(bigram.left, bigram.right);
        if let Some(prev) = l.prev {
            try_add(&symbols, &mut queue, prev, bigram.left);
        }
        if let Some(next) = r.next {
            try_add(&symbols, &mut queue, bigram.left, next);
        }
    }

    for (_, s) in symbols.chain() {
        let piece = &text[s.range()];
        match vocab.id(piece) {
            Some(id) => out.push(id),
            // Every merged piece is a token, so only single characters get here.
            None => out.extend(piece.bytes().filter_map(|b| vocab.byte_token(b))),
        }
    }
}
