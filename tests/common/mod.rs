//! Shared helpers of the end-to-end tests: fetch the real models, start a real worker on 127.0.0.1:0
//! on a runtime of its own, and talk to it over gRPC.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use coe_core::ExpertName;
use coe_expert_worker::{ExpertSpec, WorkerConfig};
use coe_proto::v1 as pb;
use pb::expert_worker_client::ExpertWorkerClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub const SMOLLM: &str = "smollm2-135m-instruct";
pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct";
pub const GEMMA: &str = "gemma-3-270m";
pub const ALL_EXPERTS: [&str; 3] = [SMOLLM, QWEN, GEMMA];

/// Fetches (once; later calls find it cached and verified) a manifest model's GGUF.
pub fn model_gguf(name: &str) -> PathBuf {
    coe_fetch::fetch_gguf(&coe_fetch::coe_home(), name, &mut |_| {}).expect("fetching the model")
}

pub fn spec(name: &str) -> ExpertSpec {
    ExpertSpec {
        name: ExpertName::parse(name).unwrap(),
        path: model_gguf(name),
    }
}

pub fn worker_config(experts: &[&str]) -> WorkerConfig {
    WorkerConfig {
        worker_id: "test-worker".into(),
        experts: experts.iter().map(|e| spec(e)).collect(),
        queue_capacity: 8,
        max_active: 2,
        max_context: 2048,
        budgets: Default::default(),
        follow: None,
    }
}

/// A worker serving on loopback from a thread and runtime of its own, so it outlives any one test.
pub type TestWorker = LoopbackServer<coe_expert_worker::WorkerError>;

/// A server on 127.0.0.1:0 driven by a thread and runtime of its own, so a test's runtime never
/// starves it; dropped, it is asked to shut down gracefully.
pub struct LoopbackServer<E> {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), E>>>,
}

impl<E: Send + 'static> LoopbackServer<E> {
    /// Binds a port and runs `serve(listener, shutdown)` on it until the shutdown future resolves.
    fn spawn<F, Fut>(what: &str, serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, ShutdownSignal) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                serve(
                    listener,
                    Box::pin(async {
                        let _ = shutdown_rx.await;
                    }),
                )
                .await
            })
        });
        let addr = addr_rx
            .recv()
            .unwrap_or_else(|_| panic!("the {what} bound a port"));
        Self {
            addr,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// Asks for a graceful shutdown and returns a handle that resolves when serve() returned.
    pub fn begin_shutdown(&mut self) -> std::thread::JoinHandle<Result<(), E>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.thread.take().expect("shutdown once")
    }

    /// Waits, without asking it to stop, until serve() returns by itself (a failed start).
    pub fn wait_exit(&mut self) -> std::thread::Result<Result<(), E>> {
        self.thread.take().expect("wait once").join()
    }
}

impl<E> Drop for LoopbackServer<E> {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The shutdown future a [`LoopbackServer`] hands to its serve function.
type ShutdownSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl TestWorker {
    pub fn start(config: WorkerConfig) -> Self {
        Self::spawn("worker", move |listener, shutdown| {
            coe_expert_worker::serve(config, listener, shutdown)
        })
    }

    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }

    pub async fn client(&self) -> ExpertWorkerClient<Channel> {
        ExpertWorkerClient::new(self.channel().await)
    }

    /// Waits until health says SERVING (models loaded); panics after `limit`.
    pub async fn wait_serving(&self, limit: Duration) {
        let mut health = HealthClient::new(self.channel().await);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = health_status(&mut health, "").await;
            if status == ServingStatus::Serving {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker not SERVING after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn health_status(health: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map(|r| ServingStatus::try_from(r.into_inner().status).unwrap_or(ServingStatus::Unknown))
        .unwrap_or(ServingStatus::Unknown)
}

pub async fn connect(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connecting to the test server")
}

pub fn user(content: &str) -> pb::ChatMessage {
    pb::ChatMessage {
        role: pb::Role::User as i32,
        content: content.to_string(),
    }
}

pub fn greedy(max_tokens: u32) -> Option<pb::SamplingParams> {
    Some(pb::SamplingParams {
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ..Default::default()
    })
}

/// A finished generation as a client sees it.
#[derive(Debug, Default)]
pub struct Collected {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub chunks: usize,
    pub done: Option<pb::GenerationDone>,
}

pub async fn collect(
    client: &mut ExpertWorkerClient<Channel>,
    request: pb::GenerateRequest,
) -> Result<Collected, tonic::Status> {
    let mut stream = client.generate(request).await?.into_inner();
    let mut out = Collected::default();
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(pb::generate_response::Event::Chunk(chunk)) => {
                out.text.push_str(&chunk.text);
                out.token_ids.extend(chunk.token_ids);
                out.chunks += 1;
            }
            Some(pb::generate_response::Event::Done(done)) => out.done = Some(done),
            None => {}
        }
    }
    Ok(out)
}

/// The repository's test fixtures folder.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A router serving on loopback from a thread and runtime of its own, like [`TestWorker`].
pub type TestRouter = LoopbackServer<coe_router::RouterError>;

/// A router in front of `workers` with the shipped classifier and category map.
pub fn router_config(workers: &[SocketAddr]) -> coe_router::RouterConfig {
    coe_router::RouterConfig::new(workers.iter().map(|a| a.to_string()).collect())
}

impl TestRouter {
    pub fn start(config: coe_router::RouterConfig) -> Self {
        Self::spawn("router", move |listener, shutdown| {
            coe_router::serve(config, listener, shutdown)
        })
    }

    pub async fn client(&self) -> pb::router_client::RouterClient<Channel> {
        pb::router_client::RouterClient::new(connect(self.addr).await)
    }

    /// Waits on the health Watch stream until SERVING; panics after `limit`.
    pub async fn wait_serving(&self, limit: Duration) {
        wait_health(self.addr, "", limit).await
    }
}

/// Follows `service`'s health on `addr` (grpc.health.v1 Watch) until SERVING; panics after `limit`.
pub async fn wait_health(addr: SocketAddr, service: &str, limit: Duration) {
    let watch = async {
        let mut health = HealthClient::new(connect(addr).await);
        let mut updates = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("health watch")
            .into_inner();
        while let Some(update) = updates.message().await.expect("health watch stream") {
            if update.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("the health watch of {addr} ended before SERVING");
    };
    tokio::time::timeout(limit, watch)
        .await
        .unwrap_or_else(|_| panic!("{addr} not SERVING after {limit:?}"));
}

/// A routed answer as a client sees it: the decision (the first message) and the generation.
#[derive(Debug, Default)]
pub struct Routed {
    pub decision: Option<pb::RouteDecision>,
    /// Whether the decision came before every other message.
    pub decision_first: bool,
    pub answer: Collected,
}

pub fn route_request(content: &str, expert: &str, max_tokens: u32) -> pb::RouteRequest {
    pb::RouteRequest {
        messages: vec![user(content)],
        expert: expert.to_string(),
        sampling: greedy(max_tokens),
        ..Default::default()
    }
}

pub async fn collect_routed(
    client: &mut pb::router_client::RouterClient<Channel>,
    request: pb::RouteRequest,
) -> Result<Routed, tonic::Status> {
    let mut stream = client.generate(request).await?.into_inner();
    let mut out = Routed::default();
    let mut seen = 0;
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(pb::route_response::Event::Decision(d)) => {
                out.decision_first = seen == 0;
                out.decision = Some(d);
            }
            Some(pb::route_response::Event::Chunk(chunk)) => {
                out.answer.text.push_str(&chunk.text);
                out.answer.token_ids.extend(chunk.token_ids);
                out.answer.chunks += 1;
            }
            Some(pb::route_response::Event::Done(done)) => out.answer.done = Some(done),
            None => {}
        }
        seen += 1;
    }
    Ok(out)
}

/// Writes a category map file sending every category of the shipped classifier to `expert`,
/// with `fallback` and `threshold`.
pub fn write_category_map(dir: &Path, expert: &str, fallback: &str, threshold: f32) -> PathBuf {
    let mut map = coe_router::CategoryMap::embedded_default();
    for e in map.categories.values_mut() {
        *e = expert.to_string();
    }
    map.fallback = fallback.to_string();
    map.threshold = threshold;
    let path = dir.join("category_map.json");
    std::fs::write(&path, serde_json::to_string_pretty(&map).unwrap()).unwrap();
    path
}

/// The router's Classify decision for `text`.
pub async fn classify(
    client: &mut pb::router_client::RouterClient<Channel>,
    text: &str,
) -> pb::RouteDecision {
    client
        .classify(pb::ClassifyRequest {
            text: text.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap()
}
