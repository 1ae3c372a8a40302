//! `coe router` without a subcommand: runs the router alone in front of expert workers. The
//! router's flags (`RouterOptions`) are shared with `coe serve`.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use coe_router::embed::BatcherConfig;
use coe_router::RouterConfig;

use super::router_cli::RouterCommand;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RouterArgs {
    #[command(subcommand)]
    pub command: Option<RouterCommand>,
    #[command(flatten)]
    pub serve: RouterServeArgs,
}

#[derive(Args, Debug)]
pub struct RouterServeArgs {
    /// Address to listen on.
    #[arg(long, env = "COE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Expert workers: host:port or URIs, comma-separated (replicas of the same expert are balanced).
    #[arg(
        long,
        env = "COE_WORKERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:50061"
    )]
    pub workers: Vec<String>,
    /// Cache directory for the embedding model.
    #[arg(long, env = "COE_HOME")]
    pub home: Option<PathBuf>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9091.
    #[arg(long, env = "COE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub options: RouterOptions,
}

/// What the router needs besides where to listen and which workers to use.
#[derive(Args, Debug, Clone)]
pub struct RouterOptions {
    /// Category map file (TOML, or JSON by extension): categories, fallback, threshold.
    /// Default: the map shipped with coe.
    #[arg(long, env = "COE_CATEGORY_MAP")]
    pub category_map: Option<PathBuf>,
    /// Follow this registry's category map (Watch), e.g. 127.0.0.1:50070.
    #[arg(long, env = "COE_REGISTRY")]
    pub registry: Option<String>,
    /// Classifier directory made by `coe router train`. Default: the one shipped with coe.
    #[arg(long, env = "COE_CLASSIFIER")]
    pub classifier: Option<PathBuf>,
    /// Longest prompt accepted, in bytes (all messages together).
    #[arg(long, env = "COE_MAX_PROMPT_BYTES", default_value_t = 32 * 1024)]
    pub max_prompt_bytes: usize,
    /// Most queries embedded in one batch.
    #[arg(long, env = "COE_EMBED_BATCH", default_value_t = 32)]
    pub embed_batch: usize,
    /// How long (ms) the first query of a batch waits for others.
    #[arg(long, env = "COE_EMBED_WAIT_MS", default_value_t = 2)]
    pub embed_wait_ms: u64,
    /// How often (s) the workers' experts are re-learnt.
    #[arg(long, env = "COE_WORKER_REFRESH_SECS", default_value_t = 5)]
    pub worker_refresh_secs: u64,
}

impl RouterOptions {
    pub fn config(&self, workers: Vec<String>, home: Option<PathBuf>) -> RouterConfig {
        let mut config = RouterConfig::new(workers);
        config.category_map = self.category_map.clone();
        config.registry = self.registry.clone();
        config.classifier = self.classifier.clone();
        config.max_prompt_bytes = self.max_prompt_bytes;
        config.batcher = BatcherConfig {
            max_batch: self.embed_batch,
            max_wait: Duration::from_millis(self.embed_wait_ms),
            ..BatcherConfig::default()
        };
        config.refresh_every = Duration::from_secs(self.worker_refresh_secs.max(1));
        if let Some(home) = home {
            config.home = home;
        }
        config
    }
}

pub async fn run(args: RouterServeArgs) -> anyhow::Result<()> {
    let config = args.options.config(args.workers.clone(), args.home.clone());
    tracing::info!(config = ?config, listen = %args.listen, "effective configuration");
    if let Some(addr) = args.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("starting the metrics listener on {addr}"))?;
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("coe router listening on {}", listener.local_addr()?);
    coe_router::serve(config, listener, crate::shutdown::signal()).await?;
    Ok(())
}
