//! The `coe.v1.Router` gRPC service, kept thin: protobuf in, [`RouterCore`] decides and dispatches,
//! protobuf out. Generate's first message is the decision; the worker's chunks follow as they come.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use coe_proto::v1 as pb;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::dispatch::Dispatched;
use crate::pipeline::Classified;
use crate::route::{RouteDecision, RouteReason};
use crate::router::RouterCore;

/// Where the service finds the core once it has loaded; until then requests get UNAVAILABLE.
pub type CoreSlot = Arc<OnceLock<Arc<RouterCore>>>;

#[derive(Clone)]
pub struct RouterService {
    core: CoreSlot,
}

/// The Router service over a core that is (or will be) placed in `core`.
pub fn router_grpc_service(core: CoreSlot) -> pb::router_server::RouterServer<RouterService> {
    pb::router_server::RouterServer::new(RouterService { core })
}

impl RouterService {
    fn core(&self) -> Result<Arc<RouterCore>, Status> {
        self.core.get().cloned().ok_or_else(|| {
            Status::unavailable(
                "the router is still loading its embedder or waiting for workers; retry shortly",
            )
        })
    }
}

type RouteStream = Pin<Box<dyn Stream<Item = Result<pb::RouteResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::router_server::Router for RouterService {
    type GenerateStream = RouteStream;

    async fn generate(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let core = self.core()?;
        let timeout = grpc_timeout(request.metadata());
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut request = request.into_inner();
        if request.request_id.is_empty() {
            request.request_id = format!("{:016x}", rand::random::<u64>());
        }
        let request_id = request.request_id.clone();
        let span = tracing::info_span!("route", %request_id, expert = tracing::field::Empty, category = tracing::field::Empty);
        let query = core.validate(request)?;
        let classified = core
            .classify(&query.text, query.explicit.clone())
            .instrument(span.clone())
            .await?;
        let d = &classified.decision;
        span.record("expert", d.expert.as_str());
        if let Some(top) = d.categories.first() {
            span.record("category", top.category.as_str());
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let dispatched = core
            .dispatch(query.worker_request, &d.expert, remaining)
            .instrument(span.clone())
            .await?;
        tracing::debug!(parent: &span, worker = %dispatched.worker, "dispatched");

        let (tx, rx) = mpsc::channel(16);
        let first = pb::RouteResponse {
            request_id: request_id.clone(),
            event: Some(pb::route_response::Event::Decision(decision_to_proto(
                &classified,
            ))),
        };
        tx.try_send(Ok(first))
            .expect("a fresh channel has room for the decision");
        let expert = d.expert.to_string();
        tokio::spawn(forward(dispatched, tx, request_id, expert, deadline).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let core = self.core()?;
        let text = request.into_inner().text;
        core.validate_text(&text)?;
        let classified = core.classify(&text, None).await?;
        Ok(Response::new(pb::ClassifyResponse {
            decision: Some(decision_to_proto(&classified)),
        }))
    }
}

/// Relays the worker's messages until it finishes, the deadline passes or the client hangs up;
/// returning drops the worker stream, which cancels the generation on the worker.
async fn forward(
    mut dispatched: Dispatched,
    tx: mpsc::Sender<Result<pb::RouteResponse, Status>>,
    request_id: String,
    expert: String,
    deadline: Option<Instant>,
) {
    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    loop {
        let message = tokio::select! {
            _ = tx.closed() => {
                tracing::info!(worker = %dispatched.worker, "client went away; cancelling the worker stream");
                return;
            }
            _ = &mut expired => {
                let _ = tx.send(Err(Status::deadline_exceeded("the request's deadline passed while the expert was generating"))).await;
                return;
            }
            message = dispatched.stream.message() => message,
        };
        let event = match message {
            Ok(Some(pb::GenerateResponse { event, .. })) => event.map(|e| match e {
                pb::generate_response::Event::Chunk(c) => pb::route_response::Event::Chunk(c),
                pb::generate_response::Event::Done(mut d) => {
                    // The worker may leave it empty; the client must see who answered.
                    if d.expert.is_empty() {
                        d.expert.clone_from(&expert);
                    }
                    pb::route_response::Event::Done(d)
                }
            }),
            Ok(None) => return,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let response = pb::RouteResponse {
            request_id: request_id.clone(),
            event,
        };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
    }
}

pub fn decision_to_proto(classified: &Classified) -> pb::RouteDecision {
    let d: &RouteDecision = &classified.decision;
    pb::RouteDecision {
        categories: d
            .categories
            .iter()
            .map(|c| pb::CategoryScore {
                category: c.category.clone(),
                probability: c.probability,
            })
            .collect(),
        experts: vec![d.expert.to_string()],
        reason: match d.reason {
            RouteReason::TopCategory => pb::RouteReason::TopCategory,
            RouteReason::LowConfidenceFallback => pb::RouteReason::LowConfidenceFallback,
            RouteReason::ExplicitExpert => pb::RouteReason::ExplicitExpert,
        } as i32,
        classify_ms: classified.classify_ms,
        threshold: d.threshold,
    }
}

/// The client's deadline from its `grpc-timeout` header (e.g. `250m`, `5S`).
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_units_parse() {
        let mut m = MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        for (v, d) in [
            ("250m", Duration::from_millis(250)),
            ("5S", Duration::from_secs(5)),
            ("2M", Duration::from_secs(120)),
            ("7u", Duration::from_micros(7)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(grpc_timeout(&m), Some(d));
        }
        m.insert("grpc-timeout", "5x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }
}
