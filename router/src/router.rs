//! The router's core object, network-free except for dispatch: loads the category map, the
//! classifier and the embedder, learns the workers, and turns one request into a routing decision
//! and a worker stream. The gRPC layer (`grpc.rs`) only converts to and from protobuf.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coe_core::ExpertName;
use coe_proto::v1 as pb;
use tonic::Status;

use crate::classify::{AnyClassifier, ArtifactError, Classifier};
use crate::config::{CategoryMap, MapError, MapHandle};
use crate::dispatch::{DispatchError, Dispatched, Dispatcher};
use crate::embed::{BatcherConfig, EmbedBatcher, EmbedError, Embedder, MiniLm};
use crate::pipeline::{Classified, PipelineError, QueryRouter};

/// Everything the router needs to start; `coe router` fills it from flags.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Worker addresses (`host:port` or URIs); replicas hosting the same expert are balanced.
    pub workers: Vec<String>,
    /// A TOML or JSON category map; the embedded default when `None`.
    pub category_map: Option<PathBuf>,
    /// A map to start with instead of the file (e.g. the registry's current one); wins over
    /// `category_map`.
    pub initial_map: Option<CategoryMap>,
    /// A registry to follow for category-map changes.
    pub registry: Option<String>,
    /// A classifier directory made by `coe router train`; the shipped one when `None`.
    pub classifier: Option<PathBuf>,
    /// Prompts longer than this (in bytes, all messages together) are refused.
    pub max_prompt_bytes: usize,
    pub batcher: BatcherConfig,
    /// The model cache (for the embedder).
    pub home: PathBuf,
    /// How often the workers' experts are re-learnt in the background.
    pub refresh_every: Duration,
}

impl RouterConfig {
    /// Laptop defaults around the given workers.
    pub fn new(workers: Vec<String>) -> Self {
        Self {
            workers,
            category_map: None,
            initial_map: None,
            registry: None,
            classifier: None,
            max_prompt_bytes: 32 * 1024,
            batcher: BatcherConfig::default(),
            home: coe_fetch::coe_home(),
            refresh_every: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("no worker addresses configured; pass --workers ADDR[,ADDR...]")]
    NoWorkers,
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("the classifier could not be loaded: {0}")]
    Classifier(#[from] ArtifactError),
    #[error("the embedder could not be loaded: {0}")]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error("the router server failed: {0}")]
    Serve(String),
}

/// Why a request was refused before it reached a worker.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the prompt is empty; send a non-blank `prompt` or a user message")]
    EmptyPrompt,
    #[error("the prompt is {got} bytes; the limit is {limit} bytes (--max-prompt-bytes)")]
    PromptTooLong { got: usize, limit: usize },
    #[error("`prompt` and `messages` are exclusive; send one of them")]
    PromptAndMessages,
    #[error("the expert name {name:?} is invalid: {reason}")]
    BadExpertName { name: String, reason: String },
    #[error("no worker hosts expert '{expert}' (hosted: {hosted}); name one of those")]
    UnknownExpert { expert: String, hosted: String },
    #[error("num_experts > 1 (multi-expert aggregation) is not supported by this router")]
    MultiExpert,
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
}

impl From<RequestError> for Status {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Dispatch(d) => d.into(),
            RequestError::UnknownExpert { .. } => Status::not_found(e.to_string()),
            RequestError::MultiExpert => Status::unimplemented(e.to_string()),
            RequestError::Pipeline(PipelineError::Embed(EmbedError::Overloaded)) => {
                Status::resource_exhausted(e.to_string())
            }
            RequestError::Pipeline(_) => Status::internal(e.to_string()),
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

/// A request that passed validation: the text to classify and the worker request to send.
pub struct Query {
    pub text: String,
    pub explicit: Option<ExpertName>,
    pub worker_request: pb::GenerateRequest,
}

pub struct RouterCore {
    pipeline: QueryRouter,
    dispatcher: Dispatcher,
    max_prompt_bytes: usize,
}

impl RouterCore {
    /// Loads and checks everything, cheapest first, so that a bad map or classifier fails before
    /// the embedder loads; then waits for the workers and checks the map against what they host.
    pub async fn load(config: &RouterConfig) -> Result<Self, RouterError> {
        if config.workers.is_empty() {
            return Err(RouterError::NoWorkers);
        }
        let map = match (&config.initial_map, &config.category_map) {
            (Some(map), _) => map.clone(),
            (None, Some(path)) => CategoryMap::load(path)?,
            (None, None) => CategoryMap::embedded_default(),
        };
        let maps = MapHandle::new(map.clone())?;
        let classifier: Arc<dyn Classifier> = match config.classifier.clone() {
            Some(dir) => Arc::new(blocking(move || AnyClassifier::load(&dir)).await?),
            None => Arc::new(crate::default_classifier()?),
        };
        let home = config.home.clone();
        let embedder = blocking(move || MiniLm::load(&home)).await?;
        let (batcher, _thread) = EmbedBatcher::spawn(
            Box::new(embedder) as Box<dyn Embedder>,
            config.batcher.clone(),
        )
        .map_err(|e| EmbedError::Batch(format!("starting the embedding thread: {e}")))?;
        // The first batch pays for lazy initialisation; pay it before reporting SERVING.
        batcher.embed("warm up the embedder").await?;
        let pipeline = QueryRouter::new(batcher, classifier, maps)?;

        let dispatcher = Dispatcher::new(&config.workers, config.refresh_every)?;
        let needed = map
            .categories
            .values()
            .chain([&map.fallback])
            .cloned()
            .collect();
        let found = dispatcher.wait_ready(&needed).await;
        map.check_hosted(&found.hosted())?;
        Ok(Self {
            pipeline,
            dispatcher,
            max_prompt_bytes: config.max_prompt_bytes,
        })
    }

    pub fn maps(&self) -> &MapHandle {
        self.pipeline.maps()
    }

    pub fn labels(&self) -> &[String] {
        self.pipeline.classifier().labels()
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Checks a Generate request and builds the worker request (its expert is set by `route`).
    pub fn validate(&self, request: pb::RouteRequest) -> Result<Query, RequestError> {
        if request.num_experts > 1 {
            return Err(RequestError::MultiExpert);
        }
        if !request.prompt.is_empty() && !request.messages.is_empty() {
            return Err(RequestError::PromptAndMessages);
        }
        let bytes = request.prompt.len()
            + request
                .messages
                .iter()
                .map(|m| m.content.len())
                .sum::<usize>();
        if bytes > self.max_prompt_bytes {
            return Err(RequestError::PromptTooLong {
                got: bytes,
                limit: self.max_prompt_bytes,
            });
        }
        // Classify what the user asked: the raw prompt, or the last user message of a chat.
        let text = if request.messages.is_empty() {
            request.prompt.clone()
        } else {
            request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == pb::Role::User as i32)
                .or(request.messages.last())
                .map(|m| m.content.clone())
                .unwrap_or_default()
        };
        if text.trim().is_empty() {
            return Err(RequestError::EmptyPrompt);
        }
        let explicit = self.explicit_expert(&request.expert)?;
        Ok(Query {
            text,
            explicit,
            worker_request: pb::GenerateRequest {
                request_id: request.request_id,
                expert: String::new(),
                messages: request.messages,
                prompt: request.prompt,
                sampling: request.sampling,
            },
        })
    }

    /// Checks a Classify request's text the same way.
    pub fn validate_text(&self, text: &str) -> Result<(), RequestError> {
        if text.len() > self.max_prompt_bytes {
            return Err(RequestError::PromptTooLong {
                got: text.len(),
                limit: self.max_prompt_bytes,
            });
        }
        if text.trim().is_empty() {
            return Err(RequestError::EmptyPrompt);
        }
        Ok(())
    }

    fn explicit_expert(&self, name: &str) -> Result<Option<ExpertName>, RequestError> {
        if name.is_empty() {
            return Ok(None);
        }
        let expert = ExpertName::parse(name).map_err(|e| RequestError::BadExpertName {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some(expert))
    }

    pub async fn classify(
        &self,
        text: &str,
        explicit: Option<ExpertName>,
    ) -> Result<Classified, RequestError> {
        let classified = self.pipeline.route(text, explicit).await?;
        let d = &classified.decision;
        metrics::counter!("coe_router_requests_total", "reason" => d.reason.as_str(), "expert" => d.expert.to_string()).increment(1);
        if d.reason != crate::route::RouteReason::ExplicitExpert {
            metrics::histogram!("coe_router_classify_seconds").record(classified.classify_ms / 1e3);
        }
        Ok(classified)
    }

    /// Sends the query to a worker hosting the decided expert.
    pub async fn dispatch(
        &self,
        mut request: pb::GenerateRequest,
        expert: &ExpertName,
        timeout: Option<Duration>,
    ) -> Result<Dispatched, RequestError> {
        request.expert = expert.to_string();
        match self.dispatcher.generate(request, timeout).await {
            Err(DispatchError::NotHosted { expert, hosted }) => {
                Err(RequestError::UnknownExpert { expert, hosted })
            }
            other => Ok(other?),
        }
    }
}

async fn blocking<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking load task panicked")
}
