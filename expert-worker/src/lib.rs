//! The expert worker: hosts several GGUF experts, each computed by an engine thread of its own, and
//! streams their tokens over gRPC.
//!
//! A request enters in [`grpc`], is validated and tokenised in [`worker`], and is computed by the
//! expert's thread in [`engine`], which samples with [`sampler`] and turns tokens into text with
//! [`text_stream`].

pub mod engine;
pub mod error;
pub mod expert;
pub mod grpc;
pub mod sampler;
pub mod server;
pub mod text_stream;
pub mod worker;

pub use error::WorkerError;
pub use server::{serve, WorkerConfig};
pub use worker::{ExpertSpec, Worker};
