//! Expert names: safe identifiers that can become file and metric names.
use std::fmt;

/// The longest name accepted, in bytes.
const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
#[error("invalid expert name {name:?}: {reason}")]
pub struct InvalidExpertName {
    pub name: String,
    pub reason: &'static str,
}

/// A validated expert name: 1..=64 bytes of ASCII letters, digits, '-', '_' and '.',
/// starting with a letter or digit (so no path separators and no `..`).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct ExpertName(String);

impl TryFrom<String> for ExpertName {
    type Error = InvalidExpertName;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::parse(&name)
    }
}

impl From<ExpertName> for String {
    fn from(name: ExpertName) -> Self {
        name.0
    }
}

impl ExpertName {
    pub fn parse(name: &str) -> Result<Self, InvalidExpertName> {
        let fail = |reason| {
            Err(InvalidExpertName {
                name: name.to_string(),
                reason,
            })
        };
        if name.is_empty() {
            return fail("the name is empty");
        }
        if name.len() > MAX_NAME_LEN {
            return fail("the name is longer than 64 bytes");
        }
        if !name.as_bytes()[0].is_ascii_alphanumeric() {
            return fail("the name must start with a letter or digit");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return fail("only letters, digits, '-', '_' and '.' are allowed");
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExpertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_parse() {
        for ok in ["smollm2", "qwen2.5-coder-0.5b", "A_1"] {
            assert_eq!(ExpertName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn unsafe_names_are_rejected() {
        for bad in ["", "../x", "a/b", ".hidden", "a b", "é", &"x".repeat(65)] {
            assert!(ExpertName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
