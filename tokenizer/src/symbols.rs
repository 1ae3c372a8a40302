//! The pieces of a word being merged: a doubly linked chain over byte ranges of the text, where
//! merging a pair lets the left piece absorb its right neighbour (as llama.cpp's `llm_symbol`).

#[derive(Clone, Copy, Debug)]
pub(crate) struct Symbol {
    pub(crate) start: usize,
    /// Zero once the symbol has been absorbed by its left neighbour.
    pub(crate) len: usize,
    pub(crate) prev: Option<usize>,
    pub(crate) next: Option<usize>,
}

impl Symbol {
    pub(crate) fn range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }
}

#[derive(Default)]
pub(crate) struct Symbols(Vec<Symbol>);

impl Symbols {
    /// Resets the chain to consecutive pieces of the given byte lengths.
    pub(crate) fn reset(&mut self, lengths: impl Iterator<Item = usize>) {
        self.0.clear();
        let mut start = 0;
        for (i, len) in lengths.enumerate() {
            self.0.push(Symbol {
                start,
                len,
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
            start += len;
        }
        if let Some(last) = self.0.last_mut() {
            last.next = None;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn get(&self, i: usize) -> Symbol {
        self.0[i]
    }

    /// Merges `right` into `left`, its left neighbour.
    pub(crate) fn merge(&mut self, left: usize, right: usize) {
        let r = self.0[right];
        self.0[left].len += r.len;
        self.0[left].next = r.next;
        self.0[right].len = 0;
        if let Some(next) = r.next {
            self.0[next].prev = Some(left);
        }
    }

    /// The live symbols in text order, with their indices. The first symbol is never absorbed,
    /// so the chain starts at index 0.
    pub(crate) fn chain(&self) -> impl Iterator<Item = (usize, Symbol)> + '_ {
        let mut at = (!self.0.is_empty()).then_some(0);
        std::iter::from_fn(move || {
            let i = at?;
            let s = self.0[i];
            at = s.next;
            Some((i, s))
        })
    }
}
