//! Runs the registry's gRPC server: opens the store, then reports SERVING on grpc.health.v1, serves
//! reflection (v1 and v1alpha), and on shutdown reports NOT_SERVING, ends the Watch streams and drains
//! in-flight calls before returning.
use std::future::Future;
use std::sync::Arc;

use coe_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::config::{RegistryConfig, StoreConfig};
use crate::error::RegistryError;
use crate::grpc::RegistryService;
use crate::service::Registry;
use crate::store::redb::RedbStore;
use crate::store::RegistryStore;

/// The registry's tonic service type, also the name health reports under.
pub type RegistryGrpcServer = pb::registry_server::RegistryServer<RegistryService>;

/// Opens the configured store.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn RegistryStore>, RegistryError> {
    match config {
        StoreConfig::Redb(path) => {
            let store = RedbStore::open(path).await?;
            tracing::info!(path = %path.display(), "opened the embedded registry database");
            Ok(Arc::new(store))
        }
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd { endpoints, prefix } => {
            let store = crate::store::etcd::EtcdStore::connect(endpoints, prefix).await?;
            tracing::info!(?endpoints, prefix, "connected to the etcd registry store");
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "etcd"))]
        StoreConfig::Etcd { .. } => Err(RegistryError::Unimplemented(
            "this build has no etcd backend; rebuild with the `etcd` feature or use the embedded database".into(),
        )),
    }
}

/// Opens the configured store and returns the registry, ready to serve. Stop it with
/// [`Registry::shutdown`], which ends its Watch streams so a server's graceful drain can finish.
pub async fn open_registry(config: &RegistryConfig) -> Result<Arc<Registry>, RegistryError> {
    let store = open_store(&config.store).await?;
    Ok(Arc::new(Registry::new(
        store,
        config.limits.clone(),
        CancellationToken::new(),
    )))
}

/// The registry's gRPC service, to mount on any tonic server (`coe serve` mounts it beside the
/// router and worker services).
pub fn registry_grpc_service(registry: Arc<Registry>) -> RegistryGrpcServer {
    pb::registry_server::RegistryServer::new(RegistryService::new(registry))
}

/// Serves the registry alone until `shutdown` resolves. Health is NOT_SERVING until the store is open.
pub async fn serve(
    config: RegistryConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RegistryError> {
    tracing::info!(?config, addr = ?listener.local_addr().ok(), "starting the registry");
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<RegistryGrpcServer>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| RegistryError::Internal(e.to_string()))?;

    let registry = open_registry(&config).await?;
    health.set_serving::<RegistryGrpcServer>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tracing::info!("registry SERVING");

    let health_on_stop = health.clone();
    let stopping = registry.clone();
    let signal = async move {
        shutdown.await;
        health_on_stop
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health_on_stop.set_not_serving::<RegistryGrpcServer>().await;
        // Watch streams never end by themselves; ending them lets the drain below finish.
        stopping.shutdown();
        tracing::info!("shutting down: draining in-flight calls");
    };

    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(registry_grpc_service(registry))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
        .await
        .map_err(|e| RegistryError::Internal(e.to_string()))?;
    tracing::info!("registry stopped");
    Ok(())
}
