//! The registry's configuration: command-line flags (each with a `COE_…` variable) and what they
//! resolve to.
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::service::Limits;

/// Where the registry keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded database file: nothing else to run.
    Redb(PathBuf),
    /// An etcd cluster shared by several registry replicas (needs the `etcd` build feature).
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

#[derive(Clone, Debug)]
pub struct RegistryConfig {
    pub store: StoreConfig,
    pub limits: Limits,
}

/// The flags of `coe registry`: where to listen, and the store flags.
#[derive(clap::Args, Clone, Debug)]
pub struct RegistryArgs {
    /// Address to serve the registry's gRPC API on (`coe serve` takes 50051 and mounts the registry
    /// there too; this port is for the registry run alone).
    #[arg(long, env = "COE_REGISTRY_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: RegistryStoreArgs,
}

impl RegistryArgs {
    pub fn config(&self) -> RegistryConfig {
        self.store.config()
    }
}

/// Where the registry keeps its data and what it accepts: flatten these into any command that runs
/// a registry (`coe registry`, `coe serve`).
#[derive(clap::Args, Clone, Debug)]
pub struct RegistryStoreArgs {
    /// The embedded database file. Default: registry.redb under $COE_HOME (~/.cache/coe).
    #[arg(long, env = "COE_REGISTRY_DB")]
    pub db: Option<PathBuf>,
    /// etcd endpoints (comma-separated) to keep the data in instead of the embedded database, for a
    /// replicated registry.
    #[arg(long, env = "COE_REGISTRY_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The key prefix of the registry's data in etcd.
    #[arg(
        long,
        env = "COE_REGISTRY_ETCD_PREFIX",
        default_value = "/coe/registry/"
    )]
    pub etcd_prefix: String,
    /// The most weight bytes one expert may have (the worker's device budget); larger models are
    /// refused at add. Unset: no limit.
    #[arg(long, env = "COE_MAX_EXPERT_BYTES")]
    pub max_expert_bytes: Option<u64>,
}

impl RegistryStoreArgs {
    pub fn config(&self) -> RegistryConfig {
        let store = if self.etcd.is_empty() {
            let db = self
                .db
                .clone()
                .unwrap_or_else(|| coe_fetch::coe_home().join("registry.redb"));
            StoreConfig::Redb(db)
        } else {
            StoreConfig::Etcd {
                endpoints: self.etcd.clone(),
                prefix: self.etcd_prefix.clone(),
            }
        };
        RegistryConfig {
            store,
            limits: Limits {
                max_expert_bytes: self.max_expert_bytes,
            },
        }
    }
}
