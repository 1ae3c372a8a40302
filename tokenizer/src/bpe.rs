//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): pre-tokenize, map bytes to GPT-2 characters,
//! then apply merges lowest rank first, as llama.cpp's `llm_tokenizer_bpe_session`.
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::metadata::Metadata;
use crate::pretokenize::PreTokenizer;
use crate::symbols::Symbols;
use crate::unicode::ByteChars;
use crate::vocab::Vocab;
use crate::TokenizerError;

#[derive(Clone, Copy)]
struct Merge {
    rank: u32,
    /// The token the pair becomes, when the vocabulary has it.
    merged: Option<u32>,
}

pub(crate) struct Bpe {
    pre: PreTokenizer,
    /// Merges keyed by the token ids of their halves: the fast path, which covers every merge
    /// of a well-formed vocabulary.
    merges: HashMap<(u32, u32), Merge>,
    /// Merges whose halves are not both tokens, keyed by text.
    text_merges: HashMap<(String, String), u32>,
    /// The token of each byte's GPT-2 character.
    byte_ids: [Option<u32>; 256],
}

/// A queued merge candidate. The derived order, lowest rank first then leftmost, is the order of
/// llama.cpp's queue; the lengths tell whether the pair is stale by the time it is popped.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pair {
    rank: u32,
    left: usize,
    right: usize,
    left_len: usize,
    right_len: usize,
}

type PairQueue = BinaryHeap<Reverse<Pair>>;

impl Bpe {
    pub(crate) fn load(
        meta: &Metadata<'_>,
        vocab: &Vocab,
        pre: PreTokenizer,
    ) -> Result<Self, TokenizerError> {
        let lines = meta
            .strings("tokenizer.ggml.merges")?
            .ok_or(TokenizerError::MissingKey("tokenizer.ggml.merges"))?;
        let mut merges = HashMap::with_capacity(lines.len());
        let mut text_merges = HashMap::new();
        for (rank, line) in lines.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte; a line without one
            // becomes an empty pair that never matches.
            let Some(pos) = line.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
                continue;
            };
            let (left, right) = (&line[..pos], &line[pos + 1..]);
            let rank = rank as u32;
            match (vocab.id(left), vocab.id(right)) {
                (Some(l), Some(r)) => {
                    let merged = vocab.id(&format!("{left}{right}"));
                    merges.entry((l, r)).or_insert(Merge { rank, merged });
                }
                _ => {
                    text_merges
                        .entry((left.to_owned(), right.to_owned()))
                        .or_insert(rank);
                }
            }
        }
        let table = ByteChars::get();
        let byte_ids =
            std::array::from_fn(|b| vocab.id(table.char_of(b as u8).encode_utf8(&mut [0; 4])));
        Ok(Self {
            pre,
            merges,
            text_merges,
            byte_ids,
        })
    }

    pub(crate) fn ignores_merges(&self) -> bool {
        self.pre.ignore_merges
    }

    pub(crate) fn tokenize(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut words = Vec::new();
        self.pre.split(text, &mut words);
        let mut scratch = Scratch::default();
        for word in words {
            if self.ignores_merges() {
                if let Some(id) = vocab.id(&ByteChars::get().encode(word.as_bytes())) {
                    out.push(id);
                    continue;
                }
            }
            self.tokenize_word(vocab, word.as_bytes(), &mut scratch, out);
        }
    }

    fn tokenize_word(&self, vocab: &Vocab, word: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        let Scratch {
            symbols,
            ids,
            queue,
        } = scratch;
        // Byte-level BPE starts from one symbol per byte (one GPT-2 character each).
        symbols.reset(word.iter().map(|_| 1));
        ids.clear();
        ids.extend(word.iter().map(|&b| self.byte_ids[b as usize]));
        queue.clear();
        for i in 1..word.len() {
            self.push_pair(word, symbols, ids, i - 1, i, queue);
        }
        while let Some(Reverse(pair)) = queue.pop() {
            let (left, right) = (pair.left, pair.right);
            let (l, r) = (symbols.get(left), symbols.get(right));
            if l.len != pair.left_len || r.len != pair.right_len {
                continue;
            }
            ids[left] = match (ids[left], ids[right]) {
                (Some(a), Some(b)) if self.merges.contains_key(&(a, b)) => {
                    self.merges[&(a, b)].merged
                }
                _ => vocab.id(&ByteChars::get().encode(&word[l.start..l.start + l.len + r.len])),
            };
            symbols.merge(left, right);
            if let Some(prev) = l.prev {
                self.push_pair(word, symbols, ids, prev, left, queue);
            }
            if let Some(next) = r.next {
                self.push_pair(word, symbols, ids, left, next, queue);
            }
        }
        for (i, s) in symbols.chain() {
            match ids[i] {
                Some(id) => out.push(id),
                None => push_unknown_symbol(vocab, &word[s.range()], out),
            }
        }
    }

    fn push_pair(
        &self,
        word: &[u8],
        symbols: &Symbols,
        ids: &[Option<u32>],
        left: usize,
        right: usize,
        queue: &mut PairQueue,
    ) {
        let (l, r) = (symbols.get(left), symbols.get(right));
        let by_id = match (ids[left], ids[right]) {
            (Some(a), Some(b)) => self.merges.get(&(a, b)).map(|m| m.rank),
            _ => None,
        };
        let rank = by_id.or_else(|| {
            if self.text_merges.is_empty() {
                return None;
            }
            let table = ByteChars::get();
            let key = (
                table.encode(&word[l.range()]),
                table.encode(&word[r.range()]),
            );
            self.text_merges.get(&key).copied()
        });
        if let Some(rank) = rank {
            queue.push(Reverse(Pair {
                rank,
                left,
                right,
                left_len: l.len,
                right_len: r.len,
            }));
        }
    }
}

/// Buffers reused across the words of one text.
#[derive(Default)]
struct Scratch {
    symbols: Symbols,
    /// The token of each symbol, when the vocabulary has one.
    ids: Vec<Option<u32>>,
    queue: PairQueue,
}

/// A merged symbol the vocabulary lacks: llama.cpp falls back to the single-byte tokens of its
/// encoded text, which exist only for ASCII characters; anything else is dropped.
fn push_unknown_symbol(vocab: &Vocab, bytes: &[u8], out: &mut Vec<u32>) {
    let encoded = ByteChars::get().encode(bytes);
    if let Some(id) = vocab.id(&encoded) {
        out.push(id);
        return;
    }
    for b in encoded.bytes().filter(u8::is_ascii) {
        out.extend(vocab.id(std::str::from_utf8(&[b]).unwrap_or_default()));
    }
}
