//! The Unicode facts llama.cpp's tokenizers rely on: letter and number classes, and GPT-2's byte <-> char table.
use std::collections::HashMap;
use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

const LETTER: u8 = 1;
const NUMBER: u8 = 2;

/// Class flags for every code point: a flat table for the BMP, where nearly all text lives,
/// and sorted ranges for the rest.
struct Classes {
    bmp: Vec<u8>,
    astral: Vec<(u32, u32, u8)>,
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(build_classes)
}

fn build_classes() -> Classes {
    let mut bmp = vec![0u8; 0x1_0000];
    let mut astral = Vec::new();
    for (pattern, flag) in [(r"\p{L}", LETTER), (r"\p{N}", NUMBER)] {
        // Both patterns are constant and valid, so parsing cannot fail at run time.
        let hir = regex_syntax::parse(pattern).expect("constant Unicode class pattern");
        let HirKind::Class(Class::Unicode(class)) = hir.kind() else {
            unreachable!("{pattern} parses to a Unicode class");
        };
        for range in class.iter() {
            let (start, end) = (u32::from(range.start()), u32::from(range.end()));
            for cp in start..=end.min(0xFFFF) {
                bmp[cp as usize] |= flag;
            }
            if end > 0xFFFF {
                astral.push((start.max(0x1_0000), end, flag));
            }
        }
    }
    astral.sort_unstable();
    Classes { bmp, astral }
}

fn flags(c: char) -> u8 {
    let cp = u32::from(c);
    let classes = classes();
    if cp < 0x1_0000 {
        return classes.bmp[cp as usize];
    }
    let idx = classes.astral.partition_point(|&(start, _, _)| start <= cp);
    classes.astral[..idx]
        .iter()
        .rev()
        .take_while(|&&(_, end, _)| end >= cp)
        .fold(0, |acc, &(_, _, f)| acc | f)
}

/// `\p{L}`: the Unicode general category Letter.
pub(crate) fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    flags(c) & LETTER != 0
}

/// `\p{N}`: the Unicode general category Number.
pub(crate) fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    flags(c) & NUMBER != 0
}

/// White_Space, the set llama.cpp (and `\s` in its regexes) treats as whitespace.
pub(crate) fn is_whitespace(c: char) -> bool {
    c.is_whitespace()
}

/// GPT-2's reversible map from bytes to printable characters, so BPE vocabularies never hold raw
/// control bytes or spaces.
pub(crate) struct ByteChars {
    to_char: [char; 256],
    to_byte: HashMap<char, u8>,
}

impl ByteChars {
    pub(crate) fn get() -> &'static ByteChars {
        static TABLE: OnceLock<ByteChars> = OnceLock::new();
        TABLE.get_or_init(|| {
            let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let mut to_char = ['\0'; 256];
            let mut next = 256u32;
            for b in 0..=255u8 {
                to_char[b as usize] = if printable(b) {
                    char::from(b)
                } else {
                    let c = char::from_u32(next).expect("256..324 are valid chars");
                    next += 1;
                    c
                };
            }
            let to_byte = (0..=255u8).map(|b| (to_char[b as usize], b)).collect();
            ByteChars { to_char, to_byte }
        })
    }

    pub(crate) fn char_of(&self, byte: u8) -> char {
        self.to_char[byte as usize]
    }

    pub(crate) fn byte_of(&self, c: char) -> Option<u8> {
        self.to_byte.get(&c).copied()
    }

    /// Encodes bytes as the characters a byte-level BPE vocabulary is written in.
    pub(crate) fn encode(&self, bytes: &[u8]) -> String {
        bytes.iter().map(|&b| self.char_of(b)).collect()
    }

    /// The bytes a byte-level BPE token stands for; characters outside the table are kept
    /// visible as llama.cpp does (`[UNK_BYTE_0x..]`), so a broken vocabulary shows up in output.
    pub(crate) fn decode(&self, token_text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(token_text.len());
        for c in token_text.chars() {
            match self.byte_of(c) {
                Some(b) => out.push(b),
                None => {
                    out.extend_from_slice(b"[UNK_BYTE_0x");
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                    out.extend_from_slice(token_text.as_bytes());
                    out.push(b']');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_non_ascii_letters_and_numbers() {
        assert!(is_letter('é') && is_letter('日') && is_letter('Ж') && is_letter('𝒜'));
        assert!(is_number('٣') && is_number('²') && is_number('Ⅻ') && is_number('𝟙'));
        assert!(!is_letter('1') && !is_number('a') && !is_letter('😀') && !is_number('😀'));
        assert!(!is_letter('\u{0301}'), "combining marks are M, not L");
        assert!(is_whitespace('\u{3000}') && is_whitespace('\u{a0}') && !is_whitespace('\u{200b}'));
    }

    #[test]
    fn gpt2_byte_table_round_trips_and_maps_space_to_g_dot() {
        let t = ByteChars::get();
        assert_eq!(t.char_of(b' '), 'Ġ');
        assert_eq!(t.char_of(b'\n'), 'Ċ');
        assert_eq!(t.char_of(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(t.byte_of(t.char_of(b)), Some(b));
        }
        assert_eq!(t.decode("ĠhelloĊ"), b" hello\n");
    }
}
