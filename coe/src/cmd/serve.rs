//! `coe serve` and `coe worker`: start the expert worker (and, in `serve`, everything else this
//! project runs in one process).
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use coe_core::ExpertName;
use coe_expert_worker::{ExpertSpec, WorkerConfig};

use crate::models::{gguf_path, DEFAULT_EXPERTS};

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
}

pub async fn run(args: ServeArgs, mode: &str) -> anyhow::Result<()> {
    tracing::info!(mode, config = ?args, "effective configuration");
    if let Some(addr) = args.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("starting the metrics listener on {addr}"))?;
    }
    let home = args.home.clone().unwrap_or_else(coe_fetch::coe_home);
    let mut experts = Vec::new();
    for model in &args.experts {
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
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("coe {mode} listening on {}", listener.local_addr()?);
    let config = WorkerConfig {
        worker_id: args.worker_id,
        experts,
        queue_capacity: args.queue_capacity,
        max_active: args.max_active,
        max_context: args.max_context,
    };
    coe_expert_worker::serve(config, listener, crate::shutdown::signal()).await?;
    Ok(())
}
