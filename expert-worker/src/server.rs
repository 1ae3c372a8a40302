//! Runs the worker's gRPC server: loads the configured experts, then reports SERVING on grpc.health.v1,
//! serves reflection (v1 and v1alpha), and on shutdown stops accepting, drains in-flight streams and
//! stops the engines.
use std::future::Future;
use std::sync::Arc;

use coe_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::engine::EngineLimits;
use crate::grpc::ExpertWorkerService;
use crate::worker::{ExpertSpec, TierBudgets, Worker};

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub worker_id: String,
    pub experts: Vec<ExpertSpec>,
    pub queue_capacity: usize,
    pub max_active: usize,
    pub max_context: usize,
    pub budgets: TierBudgets,
    /// Follow a registry: host the experts it places on this worker (see [`crate::registry_follow`]).
    pub follow: Option<FollowConfig>,
}

/// Where the registry is, and where to fetch files it names that are not on this machine.
#[derive(Clone, Debug)]
pub struct FollowConfig {
    pub registry: String,
    pub home: std::path::PathBuf,
}

impl Worker {
    /// The worker a config describes, with no expert registered yet: call
    /// [`Worker::load_configured_blocking`] (on a blocking thread) to register `config.experts`.
    pub fn from_config(config: &WorkerConfig) -> Arc<Worker> {
        Arc::new(Worker::with_budgets(
            EngineLimits {
                queue_capacity: config.queue_capacity,
                max_active: config.max_active,
            },
            config.max_context,
            config.budgets,
        ))
    }

    /// Registers each configured expert into Device, in order (later ones may demote earlier ones
    /// when the Device budget holds fewer). Blocking.
    pub fn load_configured_blocking(
        &self,
        experts: Vec<ExpertSpec>,
    ) -> Result<(), crate::WorkerError> {
        experts
            .into_iter()
            .try_for_each(|spec| self.load_blocking(spec).map(|_| ()))
    }
}

/// Reflection that lists only the services this server runs (the descriptor set has them all).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("coe.v1.ExpertWorker")
        .with_service_name("grpc.health.v1.Health")
}

/// Serves until `shutdown` resolves. Health stays NOT_SERVING until every configured expert loaded
/// and, when following a registry, until the registry's state at connection time is applied.
pub async fn serve(
    config: WorkerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::WorkerError> {
    tracing::info!(?config, "worker configuration");
    let worker = Worker::from_config(&config);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<pb::expert_worker_server::ExpertWorkerServer<ExpertWorkerService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;

    let reflection_v1 =
        reflection_builder()
            .build_v1()
            .map_err(|e| crate::WorkerError::Internal {
                expert: String::new(),
                reason: e.to_string(),
            })?;
    let reflection_v1alpha =
        reflection_builder()
            .build_v1alpha()
            .map_err(|e| crate::WorkerError::Internal {
                expert: String::new(),
                reason: e.to_string(),
            })?;

    let service = ExpertWorkerService::new(worker.clone(), config.worker_id.clone());
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "worker listening; loading experts");

    let following = config.follow.clone().map(|follow| {
        crate::registry_follow::spawn_registry_follower(
            worker.clone(),
            follow.registry,
            config.worker_id.clone(),
            follow.home,
        )
    });
    let mut follow_progress = following.as_ref().map(|(_, progress)| progress.clone());

    // Load in the background so health and reflection answer while models load.
    let loader = {
        let worker = worker.clone();
        let health = health.clone();
        let experts = config.experts.clone();
        tokio::spawn(async move {
            let loaded =
                tokio::task::spawn_blocking(move || worker.load_configured_blocking(experts)).await;
            if let (Ok(Ok(_)), Some(progress)) = (&loaded, follow_progress.as_mut()) {
                tracing::info!("waiting for the registry's experts");
                let _ = progress.wait_for(|p| p.synced).await;
            }
            match loaded {
                Ok(Ok(_)) => {
                    health
                        .set_serving::<pb::expert_worker_server::ExpertWorkerServer<ExpertWorkerService>>()
                        .await;
                    health
                        .set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                    tracing::info!("all experts loaded; SERVING");
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(crate::WorkerError::Internal {
                    expert: String::new(),
                    reason: e.to_string(),
                }),
            }
        })
    };

    let (load_failed_tx, load_failed_rx) = tokio::sync::oneshot::channel::<crate::WorkerError>();
    tokio::spawn(async move {
        if let Ok(Err(e)) = loader.await {
            tracing::error!(error = %e, "loading the configured experts failed");
            let _ = load_failed_tx.send(e);
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Option<crate::WorkerError>>();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => { let _ = stop_tx.send(None); }
            Ok(e) = load_failed_rx => { let _ = stop_tx.send(Some(e)); }
        }
    });
    let (failure_tx, failure_rx) = tokio::sync::oneshot::channel();
    let health_on_stop = health.clone();
    let signal = async move {
        let failure = stop_rx.await.ok().flatten();
        health_on_stop
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health_on_stop
            .set_not_serving::<pb::expert_worker_server::ExpertWorkerServer<ExpertWorkerService>>()
            .await;
        tracing::info!("shutting down: draining in-flight streams");
        let _ = failure_tx.send(failure);
    };

    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::expert_worker_server::ExpertWorkerServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await
        .map_err(|e| crate::WorkerError::Internal {
            expert: String::new(),
            reason: e.to_string(),
        })?;
    if let Some((follower, _)) = following {
        follower.abort();
    }
    tokio::task::spawn_blocking(move || worker.shutdown_blocking())
        .await
        .ok();
    tracing::info!("worker stopped");
    match failure_rx.await {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}
