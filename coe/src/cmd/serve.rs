//! `coe worker` (the expert worker alone, optionally following a registry) and the worker flags that
//! `coe serve` (serve_all.rs) shares.
use std::path::PathBuf;

use crate::models::{gguf_path, DEFAULT_EXPERTS};
use anyhow::Context;
use clap::Args;
use coe_core::ExpertName;
use coe_expert_worker::{ExpertSpec, FollowConfig, TierBudgets, WorkerConfig};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "COE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Manifest models to host as experts (fetched on first start).
    #[arg(long, env = "COE_EXPERTS", value_delimiter = ',', default_values_t = DEFAULT_EXPERTS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub experts: Vec<String>,
    /// Extra experts from local GGUF files, as NAME=PATH.
    #[arg(long = "expert-file", env = "COE_EXPERT_FILES", value_delimiter = ',')]
    pub expert_files: Vec<String>,
    /// Requests that may wait per expert before RESOURCE_EXHAUSTED.
    #[arg(long, env = "COE_QUEUE_CAPACITY", default_value_t = 32)]
    pub queue_capacity: usize,
    /// Sequences an expert decodes in turn at once.
    #[arg(long, env = "COE_MAX_ACTIVE", default_value_t = 4)]
    pub max_active: usize,
    /// Context cap in tokens per sequence (the model's own context if smaller).
    #[arg(long, env = "COE_MAX_CONTEXT", default_value_t = 4096)]
    pub max_context: usize,
    /// Cache directory for fetched models.
    #[arg(long, env = "COE_HOME")]
    pub home: Option<PathBuf>,
    /// Serve Prometheus metrics (coe_* counters and histograms) on this address, e.g. 127.0.0.1:9090.
    #[arg(long, env = "COE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// This worker's id, reported in status.
    #[arg(long, env = "COE_WORKER_ID", default_value = "worker-0")]
    pub worker_id: String,
    /// Bytes of expert weights with an engine (Device tier); others are demoted to make room.
    #[arg(long, env = "COE_DEVICE_BUDGET", default_value_t = TierBudgets::default().device_bytes)]
    pub device_budget: u64,
    /// Bytes of repacked weights staged in memory without an engine (Host tier).
    #[arg(long, env = "COE_HOST_BUDGET", default_value_t = TierBudgets::default().host_bytes)]
    pub host_budget: u64,
    /// Bytes of weights of experts computing at once (Active tier).
    #[arg(long, env = "COE_ACTIVE_BUDGET", default_value_t = TierBudgets::default().active_bytes)]
    pub active_budget: u64,
    /// Seconds a request waits for room in the tiers before RESOURCE_EXHAUSTED.
    #[arg(long, env = "COE_TIER_WAIT_SECS", default_value_t = TierBudgets::default().wait.as_secs())]
    pub tier_wait_secs: u64,
}

impl ServeArgs {
    pub fn budgets(&self) -> TierBudgets {
        TierBudgets {
            active_bytes: self.active_budget,
            device_bytes: self.device_budget,
            host_bytes: self.host_budget,
            wait: std::time::Duration::from_secs(self.tier_wait_secs),
        }
    }
}

pub(crate) fn install_metrics(addr: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("starting the metrics listener on {addr}"))?;
    }
    Ok(())
}

/// The configured experts, fetched if needed.
pub(crate) async fn expert_specs(args: &ServeArgs) -> anyhow::Result<Vec<ExpertSpec>> {
    let home = args.home.clone().unwrap_or_else(coe_fetch::coe_home);
    let mut experts = Vec::new();
    // An empty COE_EXPERTS (a worker that takes its experts from the registry) names no expert.
    for model in args.experts.iter().filter(|m| !m.trim().is_empty()) {
        let fetch_home = home.clone();
        let model_name = model.clone();
        let path =
            tokio::task::spawn_blocking(move || gguf_path(&fetch_home, &model_name)).await??;
        experts.push(ExpertSpec {
            name: ExpertName::parse(model)?,
            path,
        });
    }
    for entry in &args.expert_files {
        let (name, path) = entry
            .split_once('=')
            .with_context(|| format!("--expert-file {entry:?} must be NAME=PATH"))?;
        experts.push(ExpertSpec {
            name: ExpertName::parse(name)?,
            path: PathBuf::from(path),
        });
    }
    Ok(experts)
}

/// The flags of `coe worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub worker: ServeArgs,
    /// Follow this registry (host:port or URI): host the experts it places on this worker (by
    /// `--worker-id`) or on no worker in particular, and load, move and unload them as it changes.
    #[arg(long, env = "COE_REGISTRY")]
    pub registry: Option<String>,
}

/// `coe worker`: the expert worker alone.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let mode = "worker";
    let WorkerArgs {
        worker: args,
        registry,
    } = args;
    tracing::info!(mode, config = ?args, ?registry, "effective configuration");
    install_metrics(args.metrics_listen)?;
    let experts = expert_specs(&args).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("coe {mode} listening on {}", listener.local_addr()?);
    let config = WorkerConfig {
        budgets: args.budgets(),
        worker_id: args.worker_id,
        experts,
        queue_capacity: args.queue_capacity,
        max_active: args.max_active,
        max_context: args.max_context,
        follow: registry.map(|registry| FollowConfig {
            registry,
            home: args.home.clone().unwrap_or_else(coe_fetch::coe_home),
        }),
    };
    coe_expert_worker::serve(config, listener, crate::shutdown::signal()).await?;
    Ok(())
}
