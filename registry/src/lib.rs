//! coe's registry: the durable source of truth for experts, the category map (every version kept) and
//! placement on workers, served over gRPC with a Watch stream that followers resume by revision.
//!
//! A request enters in `grpc.rs`, is checked in `validate.rs` and `plan.rs`, runs in `service.rs`, and
//! is written to disk in `store/redb.rs` (one transaction per change, durable before acknowledged).

mod config;
mod error;
mod fetch;
mod grpc;
pub mod plan;
mod server;
mod service;
pub mod store;
pub mod validate;
mod watch;

pub use config::{RegistryArgs, RegistryConfig, RegistryStoreArgs, StoreConfig};
pub use error::RegistryError;
pub use grpc::RegistryService;
pub use server::{open_registry, open_store, registry_grpc_service, serve, RegistryGrpcServer};
pub use service::{Limits, Registry, Removed};
pub use watch::snapshot_events;
