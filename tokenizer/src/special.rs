//! Splitting text on special tokens before tokenization, as llama.cpp's `tokenizer_st_partition`.
//!
//! llama.cpp takes the control, user-defined and unknown tokens longest first and, for each,
//! cuts every remaining text fragment at each occurrence. A trie scan first finds which of those
//! tokens occur in the text at all, so only those few are searched for (vocabularies such as
//! Gemma's have thousands).
use crate::vocab::{attr, Vocab};

/// A piece of the input: text still to tokenize, or a special token already recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

#[derive(Default)]
struct Node {
    children: Vec<(u8, u32)>,
    /// Rank in `SpecialTokens::order` of the token ending here.
    rank: Option<u32>,
}

pub(crate) struct SpecialTokens {
    /// Special token ids, longest text first (ties by id, for a deterministic order).
    order: Vec<u32>,
    trie: Vec<Node>,
}

impl SpecialTokens {
    pub(crate) fn new(vocab: &Vocab) -> Self {
        let mask = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
        let mut order: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| vocab.has_attr(id, mask))
            .collect();
        order.sort_by_key(|&id| std::cmp::Reverse(vocab.texts[id as usize].len()));
        let mut trie = vec![Node::default()];
        for (rank, &id) in order.iter().enumerate() {
            let mut node = 0usize;
            for &b in vocab.texts[id as usize].as_bytes() {
                node = match trie[node].children.iter().find(|(c, _)| *c == b) {
                    Some(&(_, child)) => child as usize,
                    None => {
                        trie.push(Node::default());
                        let child = trie.len() - 1;
                        trie[node].children.push((b, child as u32));
                        child
                    }
                };
            }
            trie[node].rank = Some(rank as u32);
        }
        Self { order, trie }
    }

    /// Ranks of the special tokens that occur somewhere in `text`, ascending.
    fn present(&self, text: &str) -> Vec<u32> {
        let bytes = text.as_bytes();
        let mut ranks = Vec::new();
        for start in 0..bytes.len() {
            let mut node = 0usize;
            for &b in &bytes[start..] {
                match self.trie[node].children.iter().find(|(c, _)| *c == b) {
                    Some(&(_, child)) => node = child as usize,
                    None => break,
                }
                ranks.extend(self.trie[node].rank);
            }
        }
        ranks.sort_unstable();
        ranks.dedup();
        ranks
    }

    /// Cuts `text` at special tokens. Without `parse_special`, control and unknown tokens stay
    /// text, but user-defined ones are still cut out (as llama.cpp and HF tokenizers do).
    pub(crate) fn partition<'t>(
        &self,
        vocab: &Vocab,
        text: &'t str,
        parse_special: bool,
    ) -> Vec<Fragment<'t>> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(text));
        let mut next = Vec::new();
        for rank in self.present(text) {
            let id = self.order[rank as usize];
            if !parse_special && vocab.has_attr(id, attr::CONTROL | attr::UNKNOWN) {
                continue;
            }
            let needle = vocab.texts[id as usize].as_str();
            next.clear();
            for fragment in &fragments {
                let Fragment::Text(mut rest) = *fragment else {
                    next.push(*fragment);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + needle.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            std::mem::swap(&mut fragments, &mut next);
        }
        fragments
    }
}
