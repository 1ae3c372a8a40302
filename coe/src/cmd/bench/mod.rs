//! `coe bench …`: benchmarks that print a table with ratios against a baseline measured in the same run.
mod decode;
mod peer;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prompt-processing and decode tokens/s of each expert against llama.cpp on the same GGUF.
    Decode(decode::DecodeArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Decode(args) => {
            tokio::task::spawn_blocking(move || decode::run(args)).await?
        }
    }
}
