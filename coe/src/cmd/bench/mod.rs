//! `coe bench …`: benchmarks that print a table with ratios against a baseline measured in the same run.
mod classify;
mod decode;
mod overhead;
mod peer;
mod swap;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Prompt-processing and decode tokens/s of each expert against llama.cpp on the same GGUF.
    Decode(decode::DecodeArgs),
    /// Time to first token through the router minus straight to the worker, against classify p50.
    Overhead(overhead::OverheadArgs),
    /// Router embedder latency (short/long query) and batch throughput against sentence-transformers.
    Classify(classify::ClassifyArgs),
    /// Tier swap times of each expert (Storage->Device cold, Host->Device, naive) against disk and memcpy floors.
    Swap(swap::SwapArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Overhead(args) => overhead::run(args).await,
        BenchCommand::Classify(args) => {
            tokio::task::spawn_blocking(move || classify::run(args)).await?
        }
        BenchCommand::Swap(args) => tokio::task::spawn_blocking(move || swap::run(args)).await?,
        BenchCommand::Decode(args) => {
            tokio::task::spawn_blocking(move || decode::run(args)).await?
        }
    }
}
