//! The model manifest: which package members make which file, and the hash each file must have.
use serde::Deserialize;

/// The manifest shipped with coe.
const EMBEDDED_MANIFEST: &str = include_str!("../manifest.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    pub description: String,
    pub files: Vec<ModelFile>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub parts: Vec<PackagePart>,
}

/// One member of one wheel; a file is its parts concatenated in order.
#[derive(Debug, Clone, Deserialize)]
pub struct PackagePart {
    pub package: String,
    pub version: String,
    pub member: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the model manifest does not parse: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("no model named {name:?} in the manifest (known: {known})")]
    UnknownModel { name: String, known: String },
}

impl Manifest {
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED_MANIFEST).expect("the embedded manifest is checked by a unit test")
    }

    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        Ok(toml::from_str(text)?)
    }

    pub fn model(&self, name: &str) -> Result<&ModelEntry, ManifestError> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ManifestError::UnknownModel {
                name: name.to_string(),
                known: self
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_manifest_parses_and_has_hashes() {
        let manifest = Manifest::embedded();
        assert!(manifest.models.len() >= 4);
        for file in manifest.models.iter().flat_map(|m| &m.files) {
            assert_eq!(file.sha256.len(), 64, "{}", file.name);
            assert!(!file.parts.is_empty(), "{}", file.name);
        }
    }

    #[test]
    fn unknown_model_lists_known_ones() {
        let err = Manifest::embedded().model("nope").unwrap_err().to_string();
        assert!(err.contains("smollm2-135m-instruct"), "{err}");
    }
}
