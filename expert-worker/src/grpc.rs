//! The ExpertWorker gRPC service: converts proto to core types, calls [`Worker`], converts back.
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use coe_core::{
    ChatMessage, ExpertName, FinishReason, GenerationEvent, Role, SamplingParams, Tier, Usage,
};
use coe_proto::v1 as pb;
use futures::Stream;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::error::WorkerError;
use crate::worker::{self, ExpertSpec, Worker};

pub struct ExpertWorkerService {
    worker: Arc<Worker>,
    worker_id: String,
}

impl ExpertWorkerService {
    pub fn new(worker: Arc<Worker>, worker_id: String) -> Self {
        Self { worker, worker_id }
    }
}

/// The worker's gRPC service, ready to mount on any tonic server (beside a router or registry).
pub fn worker_grpc_service(
    worker: Arc<Worker>,
    worker_id: impl Into<String>,
) -> pb::expert_worker_server::ExpertWorkerServer<ExpertWorkerService> {
    pb::expert_worker_server::ExpertWorkerServer::new(ExpertWorkerService::new(
        worker,
        worker_id.into(),
    ))
}

impl From<WorkerError> for Status {
    fn from(e: WorkerError) -> Self {
        let message = e.to_string();
        match e {
            WorkerError::UnknownExpert { .. } => Status::not_found(message),
            WorkerError::AlreadyLoaded(_) => Status::already_exists(message),
            WorkerError::InvalidRequest(_)
            | WorkerError::PromptTooLong { .. }
            | WorkerError::MaxTokensPastContext { .. } => Status::invalid_argument(message),
            WorkerError::QueueFull { .. } | WorkerError::TiersExhausted { .. } => {
                Status::resource_exhausted(message)
            }
            WorkerError::Load { .. } | WorkerError::BudgetTooSmall { .. } => {
                Status::failed_precondition(message)
            }
            WorkerError::ShuttingDown(_) => Status::unavailable(message),
            WorkerError::Internal { .. } => Status::internal(message),
        }
    }
}

type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::expert_worker_server::ExpertWorker for ExpertWorkerService {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let request = request.into_inner();
        let request_id = request_id_or_new(&request.request_id);
        let span =
            tracing::info_span!("generate", request_id = %request_id, expert = %request.expert);
        let _entered = span.enter();
        let core_request = worker::GenerateRequest {
            request_id: request_id.clone(),
            expert: request.expert,
            messages: messages_from_proto(request.messages)?,
            prompt: request.prompt,
            sampling: sampling_from_proto(request.sampling),
        };
        let events = self.worker.generate(core_request).await?;
        let stream = UnboundedReceiverStream::new(events).map(move |event| {
            Ok(pb::GenerateResponse {
                request_id: request_id.clone(),
                event: Some(event_to_proto(event)),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn load_expert(
        &self,
        request: Request<pb::LoadExpertRequest>,
    ) -> Result<Response<pb::ExpertStatus>, Status> {
        let request = request.into_inner();
        let target = tier_from_proto(request.target_tier)?;
        let pin = request.pin;
        let spec = request
            .expert
            .ok_or_else(|| Status::invalid_argument("LoadExpert needs an expert spec"))?;
        let name =
            ExpertName::parse(&spec.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if spec.path.is_empty() {
            return Err(Status::invalid_argument(
                "the expert spec needs the path of its GGUF file",
            ));
        }
        let worker = self.worker.clone();
        let spec = ExpertSpec {
            name,
            path: PathBuf::from(spec.path),
        };
        let status =
            tokio::task::spawn_blocking(move || worker.load_blocking_in(spec, target, pin))
                .await
                .map_err(|e| Status::internal(format!("load task failed: {e}")))??;
        Ok(Response::new(status_to_proto(&status)))
    }

    async fn unload_expert(
        &self,
        request: Request<pb::UnloadExpertRequest>,
    ) -> Result<Response<pb::UnloadExpertResponse>, Status> {
        let name = request.into_inner().name;
        let worker = self.worker.clone();
        let status = tokio::task::spawn_blocking(move || worker.unload_blocking(&name))
            .await
            .map_err(|e| Status::internal(format!("unload task failed: {e}")))??;
        Ok(Response::new(pb::UnloadExpertResponse {
            name: status.name,
            drained_requests: (status.queued + status.active) as u32,
        }))
    }

    async fn move_expert(
        &self,
        request: Request<pb::MoveExpertRequest>,
    ) -> Result<Response<pb::ExpertStatus>, Status> {
        let request = request.into_inner();
        let tier = tier_from_proto(request.target_tier)?;
        if tier.is_none() && request.pin.is_none() {
            return Err(Status::invalid_argument(
                "MoveExpert needs a target_tier, a pin, or both",
            ));
        }
        let worker = self.worker.clone();
        let status = tokio::task::spawn_blocking(move || {
            worker.move_blocking(&request.name, tier, request.pin)
        })
        .await
        .map_err(|e| Status::internal(format!("move task failed: {e}")))??;
        Ok(Response::new(status_to_proto(&status)))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        let experts = self.worker.status();
        Ok(Response::new(pb::WorkerStatus {
            worker_id: self.worker_id.clone(),
            experts: experts.iter().map(status_to_proto).collect(),
            tiers: self
                .worker
                .tier_usage()
                .iter()
                .map(|u| pb::TierUsage {
                    tier: tier_to_proto(u.tier) as i32,
                    budget_bytes: u.budget_bytes,
                    used_bytes: u.used_bytes,
                })
                .collect(),
        }))
    }
}

fn request_id_or_new(id: &str) -> String {
    if id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        id.to_string()
    }
}

pub fn messages_from_proto(messages: Vec<pb::ChatMessage>) -> Result<Vec<ChatMessage>, Status> {
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match pb::Role::try_from(m.role) {
                Ok(pb::Role::System) => Role::System,
                Ok(pb::Role::User) => Role::User,
                Ok(pb::Role::Assistant) => Role::Assistant,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "message {i} has no role: use ROLE_SYSTEM, ROLE_USER or ROLE_ASSISTANT"
                    )))
                }
            };
            Ok(ChatMessage::new(role, m.content))
        })
        .collect()
}

pub fn sampling_from_proto(params: Option<pb::SamplingParams>) -> SamplingParams {
    let params = params.unwrap_or_default();
    let defaults = SamplingParams::default();
    SamplingParams {
        max_tokens: params.max_tokens.unwrap_or(defaults.max_tokens),
        temperature: params.temperature.unwrap_or(defaults.temperature),
        top_p: params.top_p.unwrap_or(defaults.top_p),
        top_k: params.top_k.unwrap_or(defaults.top_k),
        seed: params.seed.unwrap_or_else(rand::random),
        stop: params.stop,
    }
}

pub fn event_to_proto(event: GenerationEvent) -> pb::generate_response::Event {
    use pb::generate_response::Event;
    match event {
        GenerationEvent::Text { text, token_ids } => {
            Event::Chunk(pb::TokenChunk { text, token_ids })
        }
        GenerationEvent::Done { finish, usage } => Event::Done(pb::GenerationDone {
            finish_reason: finish_to_proto(finish) as i32,
            usage: Some(usage_to_proto(&usage)),
            expert: String::new(),
        }),
    }
}

fn finish_to_proto(finish: FinishReason) -> pb::FinishReason {
    match finish {
        FinishReason::Eos => pb::FinishReason::Eos,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::StopSequence => pb::FinishReason::StopSequence,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
    }
}

fn usage_to_proto(usage: &Usage) -> pb::Usage {
    pb::Usage {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        time_to_first_token_ms: usage.time_to_first_token_ms,
        total_ms: usage.total_ms,
        queue_ms: usage.queue_ms,
        decode_tokens_per_second: usage.decode_tokens_per_second,
    }
}

pub fn tier_to_proto(tier: Tier) -> pb::Tier {
    match tier {
        Tier::Storage => pb::Tier::Storage,
        Tier::Host => pb::Tier::Host,
        Tier::Device => pb::Tier::Device,
        Tier::Active => pb::Tier::Active,
    }
}

/// `None` for TIER_UNSPECIFIED (the caller's default); an unknown number is bad input.
pub fn tier_from_proto(tier: i32) -> Result<Option<Tier>, Status> {
    match pb::Tier::try_from(tier) {
        Ok(pb::Tier::Unspecified) => Ok(None),
        Ok(pb::Tier::Storage) => Ok(Some(Tier::Storage)),
        Ok(pb::Tier::Host) => Ok(Some(Tier::Host)),
        Ok(pb::Tier::Device) => Ok(Some(Tier::Device)),
        Ok(pb::Tier::Active) => Ok(Some(Tier::Active)),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown tier {tier}: use TIER_STORAGE, TIER_HOST, TIER_DEVICE or TIER_ACTIVE"
        ))),
    }
}

fn status_to_proto(status: &worker::ExpertStatus) -> pb::ExpertStatus {
    pb::ExpertStatus {
        name: status.name.clone(),
        architecture: status.info.architecture.clone(),
        tier: tier_to_proto(status.tier) as i32,
        pinned: status.pinned,
        resident_bytes: if status.tier == Tier::Storage {
            0
        } else {
            status.info.weight_bytes
        },
        file_bytes: status.info.file_bytes,
        context_length: status.info.context_length as u32,
        queued_requests: status.queued as u32,
        active_requests: status.active as u32,
        path: status.path.display().to_string(),
        has_chat_template: status.info.has_chat_template,
    }
}
