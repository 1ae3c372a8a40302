//! BPE pre-tokenizers: split text into words before merges, reproducing llama.cpp's splitters.
//!
//! llama.cpp runs a list of regexes per `tokenizer.ggml.pre`, each splitting the pieces the
//! previous one produced. Some run through hand-written matchers and some through `std::regex`
//! on a "collapsed" text (each non-ASCII code point replaced by a byte standing for its category).
//! Both are reproduced here as matchers over code points with the same ordered-alternation and
//! backtracking outcome; unmatched stretches between matches become pieces of their own, as
//! `std::regex_iterator` leaves them.
use crate::unicode::{is_letter, is_number, is_whitespace};
use crate::TokenizerError;

/// Names accepted in `tokenizer.ggml.pre` for byte-level BPE vocabularies.
pub(crate) const SUPPORTED: &str = "gpt-2, phi-2, mpt, olmo, jais, starcoder, refact, command-r, smollm, codeshell, exaone, minerva-7b, qwen2, deepseek-r1-qwen, megrez, stablelm2, llama3, llama-v3, llama-bpe, falcon3, dbrx, smaug-bpe";

/// One regex of llama.cpp's per-model list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// `\p{N}`: every number character alone.
    EachDigit,
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)` (and `\s+`).
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3 { max_digits: usize },
}

/// The pre-tokenizer chosen by `tokenizer.ggml.pre`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PreTokenizer {
    stages: &'static [Stage],
    /// Emit a word that is itself a token without running merges (llama3-style vocabularies).
    pub(crate) ignore_merges: bool,
}

impl PreTokenizer {
    pub(crate) fn from_name(pre: &str) -> Result<Self, TokenizerError> {
        const GPT2: &[Stage] = &[Stage::Gpt2];
        const DIGITS_GPT2: &[Stage] = &[Stage::EachDigit, Stage::Gpt2];
        const QWEN2: &[Stage] = &[Stage::Llama3 { max_digits: 1 }];
        const LLAMA3: &[Stage] = &[Stage::Llama3 { max_digits: 3 }];
        let stages = match pre {
            "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => GPT2,
            "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone"
            | "minerva-7b" => DIGITS_GPT2,
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" => QWEN2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => LLAMA3,
            other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_owned())),
        };
        Ok(Self {
            stages,
            ignore_merges: stages == LLAMA3,
        })
    }

    /// Appends the words of `text` to `out`, in order; together they cover `text` exactly.
    pub(crate) fn split<'t>(&self, text: &'t str, out: &mut Vec<&'t str>) {
        let chars: Vec<char> = text.chars().collect();
        let mut pieces = vec![(0, chars.len())];
        let mut next = Vec::new();
        for stage in self.stages {
            next.clear();
            for &(start, end) in &pieces {
                split_piece(&chars, start, end, *stage, &mut next);
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        // Map code point offsets back to byte offsets.
        let mut byte_at = Vec::with_capacity(chars.len() + 1);
        let mut offset = 0;
        for c in &chars {
            byte_at.push(offset);
            offset += c.len_utf8();
        }
        byte_at.push(offset);
        out.extend(pieces.iter().map(|&(s, e)| &text[byte_at[s]..byte_at[e]]));
    }
}

/// Splits `chars[start..end]` into matches of `stage` and the stretches between them.
fn split_piece(
    chars: &[char],
    start: usize,
    end: usize,
    stage: Stage,
    out: &mut Vec<(usize, usize)>,
) {
    let piece = &chars[start..end];
    let mut gap_start = 0;
    let mut pos = 0;
    while pos < piece.len() {
        let len = match stage {
            Stage::EachDigit => usize::from(is_number(piece[pos])),
            Stage::Gpt2 => match_gpt2(piece, pos),
            Stage::Llama3 { max_digits } => match_llama3(piece, pos, max_digits),
        };
        if len == 0 {
            pos += 1;
            continue;
        }
        if pos > gap_start {
            out.push((start + gap_start, start + pos));
        }
        out.push((start + pos, start + pos + len));
        pos += len;
        gap_start = pos;
    }
    if piece.len() > gap_start {
        out.push((start + gap_start, start + piece.len()));
    }
}

fn is_other(c: char) -> bool {
    !is_whitespace(c) && !is_letter(c) && !is_number(c)
}

fn run(s: &[char], from: usize, pred: impl Fn(char) -> bool) -> usize {
    s[from.min(s.len())..]
        .iter()
        .take_while(|&&c| pred(c))
        .count()
}

/// `'s|'t|'re|'ve|'m|'ll|'d`, case-sensitive or not.
fn match_contraction(s: &[char], pos: usize, ignore_case: bool) -> usize {
    if s[pos] != '\'' || pos + 1 >= s.len() {
        return 0;
    }
    let fold = |c: char| {
        if ignore_case {
            c.to_ascii_lowercase()
        } else {
            c
        }
    };
    let next = fold(s[pos + 1]);
    if matches!(next, 's' | 't' | 'm' | 'd') {
        return 2;
    }
    if pos + 2 < s.len() {
        let pair = (next, fold(s[pos + 2]));
        if matches!(pair, ('r', 'e') | ('v', 'e') | ('l', 'l')) {
            return 3;
        }
    }
    0
}

/// Length of the whitespace run at `pos` and what `\s+(?!\S)|\s+` takes of it: the run, less
/// its last character when a non-space follows (that one goes with the next word).
fn match_trailing_space(s: &[char], pos: usize, n_ws: usize) -> usize {
    if n_ws > 1 && pos + n_ws < s.len() {
        n_ws - 1
    } else {
        n_ws
    }
}

fn match_gpt2(s: &[char], pos: usize) -> usize {
    let contraction = match_contraction(s, pos, false);
    if contraction > 0 {
        return contraction;
    }
    let c = s[pos];
    let lead = usize::from(c == ' ');
    if let Some(&first) = s.get(pos + lead) {
        if lead == 0 || !is_whitespace(first) {
            // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
            let class: fn(char) -> bool = if is_letter(first) {
                is_letter
            } else if is_number(first) {
                is_number
            } else if is_other(first) {
                is_other
            } else {
                |_| false
            };
            let n = run(s, pos + lead, class);
            if n > 0 {
                return lead + n;
            }
        }
    }
    let n_ws = run(s, pos, is_whitespace);
    if n_ws > 0 {
        return match_trailing_space(s, pos, n_ws);
    }
    1
}

fn match_llama3(s: &[char], pos: usize, max_digits: usize) -> usize {
    let contraction = match_contraction(s, pos, true);
    if contraction > 0 {
        return contraction;
    }
    let c = s[pos];
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if is_letter(c) {
        return run(s, pos, is_letter);
    }
    let can_lead = !(c == '\r' || c == '\n' || is_number(c));
    if can_lead && s.get(pos + 1).is_some_and(|&n| is_letter(n)) {
        return 1 + run(s, pos + 1, is_letter);
    }
    // \p{N}{1,max_digits}
    if is_number(c) {
        return run(s, pos, is_number).min(max_digits);
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    let lead = usize::from(c == ' ' && s.get(pos + 1).is_some_and(|&n| is_other(n)));
    if lead == 1 || is_other(c) {
        let n = lead + run(s, pos + lead, is_other);
        return n + run(s, pos + n, |c| c == '\r' || c == '\n');
    }
    let n_ws = run(s, pos, is_whitespace);
    // \s*[\r\n]+ : up to and including the last line break of the whitespace run
    if let Some(last) = s[pos..pos + n_ws]
        .iter()
        .rposition(|&c| c == '\r' || c == '\n')
    {
        return last + 1;
    }
    if n_ws > 0 {
        return match_trailing_space(s, pos, n_ws);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: &str, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        PreTokenizer::from_name(pre).unwrap().split(text, &mut out);
        out.into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn gpt2_keeps_space_with_the_following_word_and_splits_contractions() {
        assert_eq!(
            split("gpt-2", "Hello world's  end!!  "),
            ["Hello", " world", "'s", " ", " end", "!!", "  "]
        );
    }

    #[test]
    fn smollm_isolates_every_digit() {
        assert_eq!(
            split("smollm", "year 2024"),
            ["year", " ", "2", "0", "2", "4"]
        );
    }

    #[test]
    fn qwen2_splits_digits_singly_and_keeps_newlines_with_whitespace() {
        assert_eq!(
            split("qwen2", "x = 12;\n\n  y"),
            ["x", " =", " ", "1", "2", ";\n\n", " ", " y"]
        );
        assert_eq!(split("qwen2", "a \n b"), ["a", " \n", " b"]);
        assert_eq!(split("qwen2", "(word) IT'S"), ["(word", ")", " IT", "'S"]);
    }

    #[test]
    fn llama3_groups_digits_by_three() {
        assert_eq!(split("llama3", "1234567"), ["123", "456", "7"]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error_naming_it() {
        let err = PreTokenizer::from_name("made-up").unwrap_err();
        assert!(err.to_string().contains("\"made-up\""));
    }
}
