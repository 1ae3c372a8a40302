//! Labelled prompts: reading the JSONL files, and the extra training views made from each prompt.

use std::path::Path;

use serde::Deserialize;

use super::ClassifyError;

/// One labelled prompt. Only `prompt` and `category` are required; `source` (which benchmark or
/// corpus the prompt came from) lets evaluation hold out whole sources.
#[derive(Clone, Debug, Deserialize)]
pub struct Example {
    pub prompt: String,
    pub category: String,
    #[serde(default)]
    pub source: String,
}

impl Example {
    /// Text the project generated itself (source `synthetic...`): trained on, never held out
    /// or scored, since it says nothing about prompts from elsewhere.
    pub fn is_synthetic(&self) -> bool {
        self.source.starts_with("synthetic")
    }
}

/// Reads a JSONL file of examples; blank lines are skipped, any other bad line is an error that
/// names the line.
pub fn load_jsonl(path: &Path) -> Result<Vec<Example>, ClassifyError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClassifyError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ex: Example = serde_json::from_str(line).map_err(|e| ClassifyError::Data {
            path: path.display().to_string(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        if ex.category.is_empty() {
            return Err(ClassifyError::Data {
                path: path.display().to_string(),
                line: i + 1,
                reason: "empty category".into(),
            });
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(ClassifyError::Data {
            path: path.display().to_string(),
            line: 0,
            reason: "the file has no examples".into(),
        });
    }
    Ok(out)
}

/// The prompt without multiple-choice options: the lines from the first `A.`/`A)` option on.
/// Exam-style sources list options and chat users do not, so training on the stem too keeps the
/// options' style from standing in for the category.
pub fn question_stem(prompt: &str) -> &str {
    let mut offset = 0;
    for line in prompt.split_inclusive('\n') {
        let t = line.trim_start().as_bytes();
        if t.len() >= 2 && t[0] == b'A' && (t[1] == b'.' || t[1] == b')') && offset > 0 {
            return prompt[..offset].trim_end();
        }
        offset += line.len();
    }
    prompt.trim_end()
}

/// The first sentence of the stem (or its first line, whichever ends first), if it is shorter than
/// the stem: the short form in which users ask what exams ask at length.
pub fn first_sentence(prompt: &str) -> Option<&str> {
    let stem = question_stem(prompt);
    let bytes = stem.as_bytes();
    let mut end = stem.len();
    for (i, &b) in bytes.iter().enumerate() {
        let next_is_space = bytes.get(i + 1).is_none_or(|c| c.is_ascii_whitespace());
        if b == b'\n' || (matches!(b, b'.' | b'?' | b'!') && next_is_space) {
            end = if b == b'\n' { i } else { i + 1 };
            // Too short to carry the topic ("Hi.", "1."): keep looking.
            if stem[..end].split_whitespace().count() >= 4 {
                break;
            }
            end = stem.len();
        }
    }
    let first = stem[..end].trim();
    (first.len() < stem.trim().len() && !first.is_empty()).then_some(first)
}

/// The texts a prompt is trained on: itself, its stem without options, and its first sentence,
/// without duplicates.
pub fn training_views(prompt: &str) -> Vec<&str> {
    let mut views = vec![prompt];
    let stem = question_stem(prompt);
    if stem != prompt.trim_end() && !stem.is_empty() {
        views.push(stem);
    }
    if let Some(first) = first_sentence(prompt) {
        if !views.contains(&first) {
            views.push(first);
        }
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_cut_from_the_stem() {
        let p = "Which theory justified US involvement in Vietnam?\nA. Devolution\nB. Containment";
        assert_eq!(
            question_stem(p),
            "Which theory justified US involvement in Vietnam?"
        );
        assert_eq!(
            question_stem("A. is not an option list here"),
            "A. is not an option list here"
        );
    }

    #[test]
    fn first_sentence_skips_fragments() {
        let p = "Hi. The owner of a test prep company sent an ad. Later she sued.\nA. yes\nB. no";
        assert_eq!(
            first_sentence(p),
            Some("Hi. The owner of a test prep company sent an ad.")
        );
        assert_eq!(first_sentence("how many seasons of the blacklist"), None);
        assert_eq!(training_views("short question?").len(), 1);
        assert_eq!(training_views(p).len(), 3);
    }
}
