//! `coe`: one binary for every coe process and client command.
mod cmd;
mod models;
mod shutdown;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "coe",
    version,
    about = "Composition-of-Experts serving: many small expert LLMs behind one endpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs everything in one process on embedded defaults (fetching the models on first start).
    Serve(cmd::serve_all::ServeAllArgs),
    /// Runs the expert worker alone.
    Worker(cmd::serve::WorkerArgs),
    /// Streams an answer to the terminal.
    Ask(cmd::ask::AskArgs),
    /// Shows what a worker hosts, in which tier, and how full each tier is.
    Status(cmd::status::StatusArgs),
    /// Fetches and verifies models into the cache.
    Fetch(cmd::fetch::FetchArgs),
    /// Runs the expert registry alone.
    Registry(coe_registry::RegistryArgs),
    /// Adds, removes, lists, shows, pins and moves experts in the registry.
    Expert(cmd::registry_cli::ExpertArgs),
    /// Shows, sets and rolls back the category map.
    Map(cmd::registry_cli::MapArgs),
    /// Runs the router alone; `train` and `eval` fit and score its classifier.
    Router(cmd::router_serve::RouterArgs),
    /// Benchmarks against baselines measured in the same run.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => cmd::serve_all::run(args).await,
            Command::Worker(args) => cmd::serve::run(args).await,
            Command::Ask(args) => cmd::ask::run(args).await,
            Command::Status(args) => cmd::status::run(args).await,
            Command::Fetch(args) => cmd::fetch::run(args).await,
            Command::Registry(args) => cmd::registry_cli::run_registry(args).await,
            Command::Expert(args) => cmd::registry_cli::run_expert(args).await,
            Command::Map(args) => cmd::registry_cli::run_map(args).await,
            Command::Router(args) => match args.command {
                Some(command) => {
                    tokio::task::spawn_blocking(move || cmd::router_cli::run(command)).await?
                }
                None => cmd::router_serve::run(args.serve).await,
            },
            Command::Bench(command) => cmd::bench::run(command).await,
        }
    })
}
