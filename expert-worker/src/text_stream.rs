//! Turns token bytes into text chunks: never emits half a UTF-8 character, and holds back text that
//! may be the start of a stop sequence until it is known not to be.

pub struct TextStream {
    pending_bytes: Vec<u8>,
    held_text: String,
    stop: Vec<String>,
}

/// What pushing a token produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Text safe to send now (may be empty).
    pub text: String,
    /// A stop sequence matched; `text` ends right before it and nothing more must be sent.
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            pending_bytes: Vec::new(),
            held_text: String::new(),
            stop,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Pushed {
        self.pending_bytes.extend_from_slice(bytes);
        let complete = take_complete_utf8(&mut self.pending_bytes);
        self.held_text.push_str(&complete);
        if let Some(pos) = self.earliest_stop() {
            self.held_text.truncate(pos);
            return Pushed {
                text: std::mem::take(&mut self.held_text),
                stopped: true,
            };
        }
        let keep = self.longest_stop_prefix_suffix();
        let split = self.held_text.len() - keep;
        let rest = self.held_text.split_off(split);
        Pushed {
            text: std::mem::replace(&mut self.held_text, rest),
            stopped: false,
        }
    }

    /// Everything still held, at the end of generation (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.held_text);
        text.push_str(&String::from_utf8_lossy(&self.pending_bytes));
        self.pending_bytes.clear();
        text
    }

    fn earliest_stop(&self) -> Option<usize> {
        self.stop
            .iter()
            .filter_map(|s| self.held_text.find(s.as_str()))
            .min()
    }

    /// Bytes at the end of the held text that could begin a stop sequence.
    fn longest_stop_prefix_suffix(&self) -> usize {
        let text = &self.held_text;
        let mut longest = 0;
        for stop in &self.stop {
            for (idx, _) in stop.char_indices().skip(1) {
                let prefix = &stop[..idx];
                if idx > longest && text.ends_with(prefix) {
                    longest = idx;
                }
            }
        }
        longest
    }
}

/// Removes and returns the longest valid UTF-8 prefix; bytes that can never be valid become U+FFFD,
/// and an incomplete character at the end stays in `bytes`.
fn take_complete_utf8(bytes: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&bytes[start..]) {
            Ok(valid) => {
                out.push_str(valid);
                start = bytes.len();
                break;
            }
            Err(e) => {
                let valid_end = start + e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[start..valid_end]).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        start = valid_end + bad;
                    }
                    None => {
                        start = valid_end;
                        break;
                    }
                }
            }
        }
    }
    bytes.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_character_split_across_tokens_is_emitted_whole() {
        let mut s = TextStream::new(vec![]);
        let euro = "€".as_bytes();
        assert_eq!(s.push(&euro[..1]).text, "");
        assert_eq!(s.push(&euro[1..2]).text, "");
        assert_eq!(s.push(&euro[2..]).text, "€");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = TextStream::new(vec![]);
        assert_eq!(s.push(&[b'a', 0xff, b'b']).text, "a\u{fffd}b");
    }

    #[test]
    fn stop_sequence_across_tokens_is_cut() {
        let mut s = TextStream::new(vec!["\nUser:".into()]);
        assert_eq!(s.push(b"Hello").text, "Hello");
        assert_eq!(s.push(b"\nUs").text, "");
        let end = s.push(b"er: hi");
        assert_eq!(
            end,
            Pushed {
                text: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn held_prefix_is_released_when_it_diverges() {
        let mut s = TextStream::new(vec!["STOP".into()]);
        assert_eq!(s.push(b"a ST").text, "a ");
        assert_eq!(s.push(b"ART").text, "START");
        assert_eq!(s.finish(), "");
    }
}
