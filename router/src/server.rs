//! Running the router: the composable pieces (a core loaded in the background that flips health to
//! SERVING, the Router service, reflection) and the standalone `serve` built from them. `coe serve`
//! mounts the same pieces beside the worker's service on one tonic server.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use coe_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::grpc::{router_grpc_service, CoreSlot, RouterService};
use crate::router::{RouterConfig, RouterCore, RouterError};

/// The health service name the router reports on.
pub const ROUTER_SERVICE: &str = "coe.v1.Router";

/// Starts loading the router in the background. The returned service answers UNAVAILABLE until
/// the core is ready; then `coe.v1.Router` turns SERVING on `health` and, when `registry` is
/// configured, the category map starts following it. The handle resolves to the loaded core, or
/// to the error that stopped it loading (a bad map or classifier, a map naming an unhosted expert).
pub fn start(
    config: RouterConfig,
    health: HealthReporter,
) -> (
    pb::router_server::RouterServer<RouterService>,
    JoinHandle<Result<Arc<RouterCore>, RouterError>>,
) {
    let slot: CoreSlot = Arc::new(OnceLock::new());
    let service = router_grpc_service(slot.clone());
    let loading = tokio::spawn(async move {
        health
            .set_service_status(ROUTER_SERVICE, ServingStatus::NotServing)
            .await;
        let core = Arc::new(RouterCore::load(&config).await?);
        let _ = slot.set(core.clone());
        if let Some(registry) = config.registry.clone() {
            tokio::spawn(crate::registry_follow::follow(
                registry,
                Arc::downgrade(&core),
            ));
        }
        health
            .set_service_status(ROUTER_SERVICE, ServingStatus::Serving)
            .await;
        tracing::info!(map = ?core.maps().current().map, "router SERVING");
        Ok(core)
    });
    (service, loading)
}

/// Reflection over the coe.v1 and health descriptors, listing only `services`.
pub fn reflection_builder(services: &[&str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for s in services {
        builder = builder.with_service_name(s.to_string());
    }
    builder
}

/// Serves the router alone until `shutdown` resolves or loading fails, then drains in-flight
/// streams. Health (`""` and `coe.v1.Router`) stays NOT_SERVING until the embedder is warm and the
/// workers answered.
pub async fn serve(
    config: RouterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let (router, loading) = start(config, health.clone());
    let reflection = reflection_builder(&[ROUTER_SERVICE]);
    let reflection_v1 = reflection
        .build_v1()
        .map_err(|e| RouterError::Serve(e.to_string()))?;
    let reflection_v1alpha = reflection_builder(&[ROUTER_SERVICE])
        .build_v1alpha()
        .map_err(|e| RouterError::Serve(e.to_string()))?;
    tracing::info!(addr = ?listener.local_addr().ok(), "router listening; loading");

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<RouterError>();
    let overall = health.clone();
    tokio::spawn(async move {
        match loading.await {
            Ok(Ok(_)) => overall.set_service_status("", ServingStatus::Serving).await,
            Ok(Err(e)) => {
                let _ = failed_tx.send(e);
            }
            Err(e) => {
                let _ = failed_tx.send(RouterError::Serve(format!("loading panicked: {e}")));
            }
        }
    });
    let (failure_tx, failure_rx) = tokio::sync::oneshot::channel();
    let signal = async move {
        let failure = tokio::select! {
            _ = shutdown => None,
            Ok(e) = failed_rx => Some(e),
        };
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(ROUTER_SERVICE, ServingStatus::NotServing)
            .await;
        tracing::info!("router shutting down: draining in-flight streams");
        let _ = failure_tx.send(failure);
    };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(router)
        .serve_with_incoming_shutdown(incoming(listener), signal)
        .await
        .map_err(|e| RouterError::Serve(e.to_string()))?;
    tracing::info!("router stopped");
    match failure_rx.await {
        Ok(Some(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Accepts with Nagle off: token chunks are small and must not wait for an ACK.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
