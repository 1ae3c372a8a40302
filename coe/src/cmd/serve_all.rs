//! `coe serve`: registry, router and worker in one process, on one tonic server and one port, with
//! one health reporter and one reflection service. The registry is the source of truth: on first
//! start it is seeded with the configured experts and the shipped category map; the worker follows
//! it (loading, moving and unloading experts) and the router follows its category map, both over
//! the same public address, so `coe expert add|rm` and `coe map set` take effect without a restart.
use std::path::Path;

use anyhow::Context;
use clap::Args;
use coe_expert_worker::{spawn_registry_follower, ExpertSpec, Worker, WorkerConfig};
use coe_proto::v1 as pb;
use coe_registry::{Registry, RegistryGrpcServer, RegistryStoreArgs};
use coe_router::CategoryMap;
use tonic_health::ServingStatus;

use super::router_serve::RouterOptions;
use super::serve::{expert_specs, install_metrics, ServeArgs};

type WorkerServer =
    pb::expert_worker_server::ExpertWorkerServer<coe_expert_worker::grpc::ExpertWorkerService>;

#[derive(Args, Debug)]
pub struct ServeAllArgs {
    /// The worker's flags; `--experts` and `--expert-file` seed an empty registry (first start).
    #[command(flatten)]
    pub worker: ServeArgs,
    /// The router's flags; `--registry` names an external registry to follow instead of running
    /// one in this process.
    #[command(flatten)]
    pub router: RouterOptions,
    /// Where the embedded registry keeps its data.
    #[command(flatten)]
    pub store: RegistryStoreArgs,
}

pub async fn run(args: ServeAllArgs) -> anyhow::Result<()> {
    tracing::info!(config = ?args, "effective configuration");
    install_metrics(args.worker.metrics_listen)?;
    let home = args.worker.home.clone().unwrap_or_else(coe_fetch::coe_home);

    // The embedded registry, unless the router was pointed at another one.
    let registry = match &args.router.registry {
        Some(external) => {
            tracing::info!(registry = %external, "following an external registry");
            None
        }
        None => {
            let mut store = args.store.clone();
            store.db = store.db.or_else(|| Some(home.join("registry.redb")));
            let registry = coe_registry::open_registry(&store.config())
                .await
                .context("opening the registry")?;
            let experts = expert_specs(&args.worker).await?;
            seed_if_empty(&registry, experts, args.router.category_map.as_deref()).await?;
            Some(registry)
        }
    };
    // Start the router with the registry's current map, so a map changed since the first start
    // (and experts removed with it) is what the router checks against the workers.
    let initial_map = match &registry {
        Some(registry) => {
            let map = registry.get_category_map(0).await?;
            (map.version != 0).then(|| CategoryMap::from_proto(map))
        }
        None => None,
    };

    let listener = tokio::net::TcpListener::bind(&args.worker.listen)
        .await
        .with_context(|| format!("binding {}", args.worker.listen))?;
    let addr = listener.local_addr()?;
    println!("coe serve listening on {addr}");
    let registry_addr = args
        .router
        .registry
        .clone()
        .unwrap_or_else(|| addr.to_string());

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health.set_not_serving::<WorkerServer>().await;
    if registry.is_some() {
        // The registry answers as soon as its store is open.
        health.set_serving::<RegistryGrpcServer>().await;
    }

    let worker_config = WorkerConfig {
        worker_id: args.worker.worker_id.clone(),
        experts: Vec::new(),
        queue_capacity: args.worker.queue_capacity,
        max_active: args.worker.max_active,
        max_context: args.worker.max_context,
        budgets: args.worker.budgets(),
        follow: None,
    };
    let worker = Worker::from_config(&worker_config);
    let worker_service =
        coe_expert_worker::worker_grpc_service(worker.clone(), &args.worker.worker_id);
    let (follower, mut follow_progress) = spawn_registry_follower(
        worker.clone(),
        registry_addr.clone(),
        args.worker.worker_id.clone(),
        home.clone(),
    );

    let mut router_config = args.router.config(vec![addr.to_string()], Some(home));
    router_config.registry = Some(registry_addr);
    router_config.initial_map = initial_map;
    let (router_service, router_loading) = coe_router::start(router_config, health.clone());

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let ready = {
        let health = health.clone();
        async move {
            tracing::info!("loading the registry's experts");
            follow_progress
                .wait_for(|p| p.synced)
                .await
                .context("the registry follower stopped")?;
            health.set_serving::<WorkerServer>().await;
            router_loading.await?.context("starting the router")?;
            health.set_service_status("", ServingStatus::Serving).await;
            tracing::info!("registry, router and worker SERVING");
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
        let registry = registry.clone();
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
            health.set_not_serving::<RegistryGrpcServer>().await;
            // Watch streams never end by themselves: end them so the drain can finish.
            if let Some(registry) = registry {
                registry.shutdown();
            }
            tracing::info!("shutting down: draining in-flight streams");
            let _ = failure_tx.send(failure);
        }
    };
    let mut services = vec![coe_router::ROUTER_SERVICE, "coe.v1.ExpertWorker"];
    if registry.is_some() {
        services.push("coe.v1.Registry");
    }
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(coe_router::reflection_builder(&services).build_v1()?)
        .add_service(coe_router::reflection_builder(&services).build_v1alpha()?)
        .add_optional_service(registry.map(coe_registry::registry_grpc_service))
        .add_service(router_service)
        .add_service(worker_service)
        .serve_with_incoming_shutdown(coe_router::server::incoming(listener), signal)
        .await?;
    follower.abort();
    tokio::task::spawn_blocking(move || worker.shutdown_blocking()).await?;
    tracing::info!("coe serve stopped");
    match failure_rx.await {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// On first start (a registry with no experts and no map), registers the configured experts and the
/// category map (the `--category-map` file, or the one shipped with coe). Later starts keep what the
/// registry holds, whatever the flags say.
async fn seed_if_empty(
    registry: &Registry,
    experts: Vec<ExpertSpec>,
    map_file: Option<&Path>,
) -> anyhow::Result<()> {
    let (existing, _) = registry.list_experts().await?;
    let map = registry.get_category_map(0).await?;
    if !existing.is_empty() || map.version != 0 {
        tracing::info!(
            experts = existing.len(),
            map_version = map.version,
            "the registry already holds experts; --experts and --category-map only seed an empty one"
        );
        return Ok(());
    }
    for spec in experts {
        tracing::info!(expert = %spec.name, path = %spec.path.display(), "seeding the registry");
        registry
            .add_expert(pb::AddExpertRequest {
                name: spec.name.to_string(),
                source: Some(pb::ExpertSource {
                    source: Some(pb::expert_source::Source::Path(
                        spec.path.display().to_string(),
                    )),
                }),
                ..Default::default()
            })
            .await
            .with_context(|| format!("registering expert {}", spec.name))?;
    }
    let map = match map_file {
        Some(path) => CategoryMap::load(path)?,
        None => CategoryMap::embedded_default(),
    };
    registry
        .set_category_map(pb::CategoryMap {
            version: 0,
            category_to_expert: map.categories.into_iter().collect(),
            fallback_expert: map.fallback,
            confidence_threshold: map.threshold,
        })
        .await
        .context("registering the category map")?;
    Ok(())
}
