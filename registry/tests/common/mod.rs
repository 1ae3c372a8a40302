//! Shared test helpers: tiny GGUF files, a registry server on 127.0.0.1:0, and a client.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use coe_proto::v1 as pb;
use coe_registry::{Limits, RegistryConfig, StoreConfig};
use pb::registry_client::RegistryClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Writes a GGUF with `general.architecture = arch` and one 64-element f32 tensor.
pub fn write_gguf(path: &Path, arch: &str) {
    let tensor = Tensor::arange(0f32, 64f32, &Device::Cpu).unwrap();
    let qtensor = QTensor::quantize(&tensor, GgmlDType::F32).unwrap();
    let arch = gguf_file::Value::String(arch.to_string());
    let name = gguf_file::Value::String("test model".to_string());
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(
        &mut file,
        &[("general.architecture", &arch), ("general.name", &name)],
        &[("token_embd.weight", &qtensor)],
    )
    .unwrap();
}

/// The weight bytes of a file from [`write_gguf`].
pub const TINY_WEIGHT_BYTES: u64 = 64 * 4;

pub fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// A registry served in this process on a port of its own, with its database in a temp dir.
pub struct TestRegistry {
    pub dir: tempfile::TempDir,
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), coe_registry::RegistryError>>>,
}

impl TestRegistry {
    pub async fn start() -> Self {
        Self::start_with(Limits::default()).await
    }

    pub async fn start_with(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, limits).await
    }

    /// Serves the database in `dir` (kept from an earlier run when given one).
    pub async fn start_in(dir: tempfile::TempDir, limits: Limits) -> Self {
        let store = StoreConfig::Redb(dir.path().join("registry.redb"));
        Self::start_with_store(dir, store, limits).await
    }

    /// Serves `store`, with `dir` for the test's files.
    pub async fn start_with_store(
        dir: tempfile::TempDir,
        store: StoreConfig,
        limits: Limits,
    ) -> Self {
        let config = RegistryConfig { store, limits };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(coe_registry::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        wait_serving(addr).await;
        Self {
            dir,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A GGUF file of `arch` in the registry's temp dir.
    pub fn gguf(&self, name: &str, arch: &str) -> PathBuf {
        let path = self.path(name);
        write_gguf(&path, arch);
        path
    }

    pub async fn client(&self) -> RegistryClient<Channel> {
        client(self.addr).await
    }

    /// Stops the server gracefully, waits for it, and hands back its directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        let Self { dir, .. } = self;
        dir
    }
}

pub async fn client(addr: std::net::SocketAddr) -> RegistryClient<Channel> {
    RegistryClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Polls grpc.health.v1 until the registry reports SERVING (the server answers NOT_SERVING until its
/// store is open); gives up after 30 s.
pub async fn wait_serving(addr: std::net::SocketAddr) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: "coe.v1.Registry".into(),
                })
                .await;
            if let Ok(status) = status {
                if status.into_inner().status == ServingStatus::Serving as i32 {
                    return;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the registry at {addr} never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn add_request(name: &str, path: &Path) -> pb::AddExpertRequest {
    pb::AddExpertRequest {
        name: name.to_string(),
        source: Some(pb::ExpertSource {
            source: Some(pb::expert_source::Source::Path(path.display().to_string())),
        }),
        ..Default::default()
    }
}

/// Everything a client can see: the experts, the revision and the current map.
#[derive(Debug, PartialEq)]
pub struct Visible {
    pub experts: Vec<pb::ExpertRecord>,
    pub revision: u64,
    pub map: pb::CategoryMap,
}

pub async fn visible(client: &mut RegistryClient<Channel>) -> Visible {
    let list = client
        .list_experts(pb::ListExpertsRequest {})
        .await
        .unwrap()
        .into_inner();
    let map = client
        .get_category_map(pb::GetCategoryMapRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    Visible {
        experts: list.experts,
        revision: list.revision,
        map,
    }
}

pub fn map_of(pairs: &[(&str, &str)], fallback: &str) -> pb::CategoryMap {
    pb::CategoryMap {
        version: 0,
        category_to_expert: pairs
            .iter()
            .map(|(c, e)| (c.to_string(), e.to_string()))
            .collect(),
        fallback_expert: fallback.to_string(),
        confidence_threshold: 0.5,
    }
}
