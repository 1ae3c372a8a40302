//! Runs `coe router train|eval` without building the whole `coe` binary: the same source file,
//! compiled against this crate alone (`cargo run --release -p coe-router --example router_cli -- train ...`).

#[path = "../../coe/src/cmd/router_cli.rs"]
mod router_cli;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: router_cli::RouterCommand,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    router_cli::run(Cli::parse().cmd)
}
