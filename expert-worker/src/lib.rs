//! The expert worker: hosts several GGUF experts, each computed by an engine thread of its own, and
//! streams their tokens over gRPC.
//!
//! A request enters in [`grpc`], is validated and tokenised in [`worker`], and is computed by the
//! expert's thread in [`engine`], which samples with [`sampler`] and turns tokens into text with
//! [`text_stream`]. Where each expert lives (Storage, Host, Device, Active) and when it moves is
//! decided in one place, [`tiers`].
//!
//! # Embedding the worker (the coordinator's API)
//!
//! ```ignore
//! let worker = Worker::from_config(&config);            // Arc<Worker>, budgets from the config
//! // on a blocking thread:
//! worker.load_configured_blocking(config.experts.clone())?;
//! worker.load_blocking_in(spec, Some(Tier::Host), /*pinned*/ false)?; // register from a path
//! worker.move_blocking("gemma-3-270m", Some(Tier::Device), Some(true))?; // move and/or pin
//! worker.unload_blocking("gemma-3-270m")?;               // drains in-flight requests, then forgets
//! worker.status(); worker.tier_usage();                  // per expert tier/bytes, per tier budget/used
//! // mount beside other services on one tonic server:
//! Server::builder().add_service(worker_grpc_service(worker.clone(), "worker-0"))…;
//! // on shutdown, after the server stopped accepting (blocking):
//! worker.shutdown_blocking();
//! ```
//! [`serve`] does all of this for a worker that runs alone; [`registry_follow`] makes a worker load,
//! move and unload experts as the registry's Watch stream says.

pub mod engine;
pub mod error;
pub mod expert;
pub mod grpc;
pub mod registry_follow;
pub mod sampler;
pub mod server;
pub mod text_stream;
pub mod tiers;
pub mod worker;

pub use error::WorkerError;
pub use grpc::worker_grpc_service;
pub use registry_follow::{spawn_registry_follower, FollowProgress};
pub use server::{serve, FollowConfig, WorkerConfig};
pub use tiers::{TierBudgets, TierUsage};
pub use worker::{ExpertSpec, ExpertStatus, Worker};
