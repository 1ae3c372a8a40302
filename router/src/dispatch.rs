//! Dispatch to expert workers: one reused tonic Channel per configured worker address, a picture
//! of which worker hosts which expert learnt from each worker's health and GetStatus (refreshed in
//! the background, and at once when an expert is missing), and a power-of-two-choices pick by
//! in-flight requests across the replicas that host the same expert.
//!
//! The pick is ours rather than `tower::balance::p2c`: tower's load measures (`PendingRequests`)
//! count a request until its response headers arrive, which for a token stream is at once, so
//! every replica would look idle while generating. Here a stream counts against its worker until
//! the stream is dropped, and the per-worker channels stay shared by every expert they host.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use coe_proto::v1 as pb;
use pb::expert_worker_client::ExpertWorkerClient;
use tokio::sync::{watch, Mutex};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The health service name a worker reports SERVING on once its experts are loaded.
const WORKER_SERVICE: &str = "coe.v1.ExpertWorker";
/// How long one health or status probe of a worker may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("the worker address {addr:?} is not a valid URI: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error(
        "no worker hosting expert '{expert}' is up (tried {tried}); start a worker that hosts it"
    )]
    Unavailable { expert: String, tried: String },
    #[error("no worker hosts expert '{expert}' (hosted: {hosted}); name one of those")]
    NotHosted { expert: String, hosted: String },
    #[error(transparent)]
    Worker(#[from] Status),
}

impl From<DispatchError> for Status {
    fn from(e: DispatchError) -> Self {
        match e {
            DispatchError::Worker(status) => status,
            DispatchError::NotHosted { .. } => Status::not_found(e.to_string()),
            DispatchError::Unavailable { .. } => Status::unavailable(e.to_string()),
            DispatchError::BadAddress { .. } => Status::internal(e.to_string()),
        }
    }
}

struct WorkerConn {
    addr: String,
    channel: Channel,
    /// Streams open to this worker now: the load the two-choices pick compares.
    in_flight: AtomicUsize,
}

/// What the last probe of every worker found.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Expert name -> indices of the workers hosting it.
    by_expert: HashMap<String, Vec<usize>>,
    /// Workers that answered SERVING with their status.
    serving: Vec<bool>,
}

impl Discovery {
    pub fn hosted(&self) -> HashSet<String> {
        self.by_expert.keys().cloned().collect()
    }

    pub fn all_serving(&self) -> bool {
        !self.serving.is_empty() && self.serving.iter().all(|s| *s)
    }
}

/// Cheap to clone; every clone shares the channels and the discovery.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    workers: Vec<WorkerConn>,
    discovery: watch::Sender<Discovery>,
    /// One probe round at a time; callers that missed wait for the round in progress.
    refreshing: Mutex<()>,
}

/// Holds a worker's in-flight count up while a dispatched stream lives.
pub struct InFlight {
    inner: Arc<Inner>,
    worker: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.inner.workers[self.worker]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's token stream and the guard that counts it against that worker.
pub struct Dispatched {
    pub stream: Streaming<pb::GenerateResponse>,
    pub worker: String,
    pub guard: InFlight,
}

impl Dispatcher {
    /// Connects lazily to each address (`host:port` or a URI) and starts refreshing every
    /// `refresh_every` in the background for as long as a clone of the dispatcher lives.
    pub fn new(addrs: &[String], refresh_every: Duration) -> Result<Self, DispatchError> {
        let workers = addrs
            .iter()
            .map(|addr| {
                let uri = if addr.contains("://") {
                    addr.clone()
                } else {
                    format!("http://{addr}")
                };
                let endpoint = Endpoint::from_shared(uri)
                    .map_err(|e| DispatchError::BadAddress {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?
                    .connect_timeout(PROBE_TIMEOUT)
                    .tcp_nodelay(true);
                Ok(WorkerConn {
                    addr: addr.clone(),
                    channel: endpoint.connect_lazy(),
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect::<Result<Vec<_>, DispatchError>>()?;
        let (discovery, _) = watch::channel(Discovery::default());
        let inner = Arc::new(Inner {
            workers,
            discovery,
            refreshing: Mutex::new(()),
        });
        tokio::spawn(refresh_loop(Arc::downgrade(&inner), refresh_every));
        Ok(Self { inner })
    }

    pub fn addresses(&self) -> Vec<&str> {
        self.inner.workers.iter().map(|w| w.addr.as_str()).collect()
    }

    pub fn discovery(&self) -> Discovery {
        self.inner.discovery.borrow().clone()
    }

    /// Probes every worker now and returns what it found.
    pub async fn refresh(&self) -> Discovery {
        refresh(&self.inner).await
    }

    /// Waits until every worker serves, or until some serve and together host all of `needed`.
    pub async fn wait_ready(&self, needed: &HashSet<String>) -> Discovery {
        let mut probes = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let found = self.refresh().await;
            let hosted = found.hosted();
            if found.all_serving()
                || (!hosted.is_empty() && needed.iter().all(|e| hosted.contains(e)))
            {
                return found;
            }
            probes += 1;
            if probes % 25 == 1 {
                tracing::info!(workers = ?self.addresses(), hosted = ?hosted, "waiting for the workers to serve");
            }
            tick.tick().await;
        }
    }

    /// Opens a Generate stream on a worker hosting `expert`, with `timeout` as its deadline.
    pub async fn generate(
        &self,
        request: pb::GenerateRequest,
        timeout: Option<Duration>,
    ) -> Result<Dispatched, DispatchError> {
        let expert = request.expert.clone();
        let mut candidates = self.candidates(&expert);
        if candidates.is_empty() {
            candidates = self
                .refresh()
                .await
                .by_expert
                .remove(&expert)
                .unwrap_or_default();
        }
        if candidates.is_empty() {
            return Err(self.missing(&expert));
        }
        let mut tried = Vec::new();
        // The least loaded of two random replicas first, then the rest: a down replica costs
        // one failed connect, not the request.
        for worker in self.pick_order(&candidates) {
            let conn = &self.inner.workers[worker];
            conn.in_flight.fetch_add(1, Ordering::Relaxed);
            let guard = InFlight {
                inner: self.inner.clone(),
                worker,
            };
            let mut call = tonic::Request::new(request.clone());
            if let Some(t) = timeout {
                call.set_timeout(t);
            }
            let mut client = ExpertWorkerClient::new(conn.channel.clone());
            match client.generate(call).await {
                Ok(response) => {
                    return Ok(Dispatched {
                        stream: response.into_inner(),
                        worker: conn.addr.clone(),
                        guard,
                    })
                }
                Err(status) if is_transport_failure(&status) => {
                    tracing::warn!(worker = %conn.addr, %expert, error = %status.message(), "worker unreachable");
                    tried.push(conn.addr.clone());
                }
                Err(status) => return Err(status.into()),
            }
        }
        // Every replica we knew failed to connect: re-learn who is up before the next request.
        let inner = self.inner.clone();
        tokio::spawn(async move { refresh(&inner).await });
        Err(DispatchError::Unavailable {
            expert,
            tried: tried.join(", "),
        })
    }

    fn candidates(&self, expert: &str) -> Vec<usize> {
        self.inner
            .discovery
            .borrow()
            .by_expert
            .get(expert)
            .cloned()
            .unwrap_or_default()
    }

    fn pick_order(&self, candidates: &[usize]) -> Vec<usize> {
        let mut order = candidates.to_vec();
        if order.len() >= 2 {
            let load = |i: usize| self.inner.workers[i].in_flight.load(Ordering::Relaxed);
            let a = rand::random_range(0..order.len());
            let b = (a + 1 + rand::random_range(0..order.len() - 1)) % order.len();
            let first = if load(order[b]) < load(order[a]) {
                b
            } else {
                a
            };
            order.swap(0, first);
        }
        order
    }

    /// Why an expert has no candidate: every worker answered and none hosts it (NOT_FOUND), or
    /// some worker did not answer (UNAVAILABLE, naming them).
    fn missing(&self, expert: &str) -> DispatchError {
        let found = self.discovery();
        let down: Vec<&str> = self
            .inner
            .workers
            .iter()
            .zip(
                found
                    .serving
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(false)),
            )
            .filter(|(_, up)| !up)
            .map(|(w, _)| w.addr.as_str())
            .collect();
        if down.is_empty() {
            let mut hosted: Vec<String> = found.hosted().into_iter().collect();
            hosted.sort_unstable();
            DispatchError::NotHosted {
                expert: expert.to_string(),
                hosted: hosted.join(", "),
            }
        } else {
            DispatchError::Unavailable {
                expert: expert.to_string(),
                tried: down.join(", "),
            }
        }
    }
}

/// The worker could not be reached or is going away: another replica may still answer.
fn is_transport_failure(status: &Status) -> bool {
    status.code() == Code::Unavailable
}

async fn refresh(inner: &Inner) -> Discovery {
    let _one_round = inner.refreshing.lock().await;
    let probes = inner.workers.iter().map(|w| probe(w.channel.clone()));
    let answers = futures::future::join_all(probes).await;
    let mut found = Discovery::default();
    for (i, (answer, worker)) in answers.into_iter().zip(&inner.workers).enumerate() {
        match answer {
            Ok(experts) => {
                found.serving.push(true);
                for expert in experts {
                    found.by_expert.entry(expert).or_default().push(i);
                }
            }
            Err(reason) => {
                tracing::debug!(worker = %worker.addr, %reason, "worker not serving");
                found.serving.push(false);
            }
        }
    }
    inner.discovery.send_replace(found.clone());
    found
}

/// The experts a worker hosts, once its health says SERVING.
async fn probe(channel: Channel) -> Result<Vec<String>, String> {
    let ask = async {
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: WORKER_SERVICE.into(),
            })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        if health.status != ServingStatus::Serving as i32 {
            return Err("not SERVING yet".to_string());
        }
        let status = ExpertWorkerClient::new(channel)
            .get_status(pb::GetStatusRequest {})
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        Ok(status.experts.into_iter().map(|e| e.name).collect())
    };
    tokio::time::timeout(PROBE_TIMEOUT, ask)
        .await
        .map_err(|_| "probe timed out".to_string())?
}

async fn refresh_loop(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        refresh(&inner).await;
    }
}
