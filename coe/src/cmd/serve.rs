//! `coe serve` and `coe worker`: `worker` runs the expert worker alone; `serve` runs the router and
//! the worker in one process on one tonic server, the router's service on the public port and the
//! worker's service beside it (the router dispatches to that same address).
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use coe_core::ExpertName;
use coe_expert_worker::engine::EngineLimits;
use coe_expert_worker::grpc::ExpertWorkerService;
use coe_expert_worker::{ExpertSpec, TierBudgets, Worker, WorkerConfig};
use coe_proto::v1 as pb;
use tonic_health::ServingStatus;

use super::router_serve::RouterOptions;
use crate::models::{gguf_path, DEFAULT_EXPERTS};

type WorkerServer = pb::expert_worker_server::ExpertWorkerServer<ExpertWorkerService>;

#[derive(Args, Debug)]
pub struct ServeAllArgs {
    #[command(flatten)]
    pub worker: ServeArgs,
    #[command(flatten)]
    pub router: RouterOptions,
}

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

fn install_metrics(addr: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("starting the metrics listener on {addr}"))?;
    }
    Ok(())
}

/// The configured experts, fetched if needed.
async fn expert_specs(args: &ServeArgs) -> anyhow::Result<Vec<ExpertSpec>> {
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
    Ok(experts)
}

/// `coe worker`: the expert worker alone.
pub async fn run(args: ServeArgs, mode: &str) -> anyhow::Result<()> {
    tracing::info!(mode, config = ?args, "effective configuration");
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
    };
    coe_expert_worker::serve(config, listener, crate::shutdown::signal()).await?;
    Ok(())
}

/// `coe serve`: router and worker in one process, on one port, with one health reporter and one
/// reflection service.
pub async fn run_all(args: ServeAllArgs) -> anyhow::Result<()> {
    tracing::info!(config = ?args, "effective configuration");
    install_metrics(args.worker.metrics_listen)?;
    let experts = expert_specs(&args.worker).await?;
    let listener = tokio::net::TcpListener::bind(&args.worker.listen)
        .await
        .with_context(|| format!("binding {}", args.worker.listen))?;
    let addr = listener.local_addr()?;
    println!("coe serve listening on {addr}");

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health.set_not_serving::<WorkerServer>().await;
    let worker = Arc::new(Worker::with_budgets(
        EngineLimits {
            queue_capacity: args.worker.queue_capacity,
            max_active: args.worker.max_active,
        },
        args.worker.max_context,
        args.worker.budgets(),
    ));
    let worker_service = WorkerServer::new(ExpertWorkerService::new(
        worker.clone(),
        args.worker.worker_id.clone(),
    ));
    // The router dispatches to the worker service on this same server.
    let config = args
        .router
        .config(vec![addr.to_string()], args.worker.home.clone());
    let (router_service, router_loading) = coe_router::start(config, health.clone());

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let ready = {
        let (worker, health) = (worker.clone(), health.clone());
        async move {
            let loaded = tokio::task::spawn_blocking(move || {
                experts
                    .into_iter()
                    .try_for_each(|spec| worker.load_blocking(spec).map(|_| ()))
            })
            .await?;
            loaded.context("loading the configured experts")?;
            health.set_serving::<WorkerServer>().await;
            router_loading.await?.context("starting the router")?;
            health.set_service_status("", ServingStatus::Serving).await;
            tracing::info!("router and worker SERVING");
            anyhow::Ok(())
        }
    };
    tokio::spawn(async move {
        if let Err(e) = ready.await {
            let _ = failed_tx.send(e);
        }
    });
    let (failure_tx, failure_rx) = tokio::sync::oneshot::channel();
    let signal = {
        let health = health.clone();
        async move {
            let failure = tokio::select! {
                _ = crate::shutdown::signal() => None,
                Ok(e) = failed_rx => Some(e),
            };
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_service_status(coe_router::ROUTER_SERVICE, ServingStatus::NotServing)
                .await;
            health.set_not_serving::<WorkerServer>().await;
            tracing::info!("shutting down: draining in-flight streams");
            let _ = failure_tx.send(failure);
        }
    };
    let services = [coe_router::ROUTER_SERVICE, "coe.v1.ExpertWorker"];
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(coe_router::reflection_builder(&services).build_v1()?)
        .add_service(coe_router::reflection_builder(&services).build_v1alpha()?)
        .add_service(router_service)
        .add_service(worker_service)
        .serve_with_incoming_shutdown(coe_router::server::incoming(listener), signal)
        .await?;
    tokio::task::spawn_blocking(move || worker.shutdown_blocking()).await?;
    tracing::info!("coe serve stopped");
    match failure_rx.await {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}
