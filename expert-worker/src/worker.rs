//! The worker's core, free of gRPC: which experts it hosts, and how a request becomes engine work.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use coe_core::{ChatMessage, ExpertName, GenerationEvent, SamplingParams, Tier};
use tokio::sync::mpsc;

use crate::engine::{EngineLimits, EngineRequest};
use crate::error::WorkerError;
use crate::tiers::{Submit, TierManager};

/// An expert to host: its name and GGUF file.
#[derive(Clone, Debug)]
pub struct ExpertSpec {
    pub name: ExpertName,
    pub path: PathBuf,
}

/// A generation request in core types.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub request_id: String,
    pub expert: String,
    pub messages: Vec<ChatMessage>,
    pub prompt: String,
    pub sampling: SamplingParams,
}

pub use crate::tiers::{ExpertStatus, TierBudgets, TierUsage};

/// The worker: its experts live in the tier manager, which promotes them to Device on demand.
pub struct Worker {
    tiers: Arc<TierManager>,
}

impl Worker {
    /// A worker with the default budgets (room for the default experts).
    pub fn new(limits: EngineLimits, max_context: usize) -> Self {
        Self::with_budgets(limits, max_context, TierBudgets::default())
    }

    pub fn with_budgets(limits: EngineLimits, max_context: usize, budgets: TierBudgets) -> Self {
        Self {
            tiers: Arc::new(TierManager::new(budgets, limits, max_context)),
        }
    }

    /// Registers an expert and brings it to Device, demoting others if the budget needs it.
    /// Blocking: call from a blocking context.
    pub fn load_blocking(&self, spec: ExpertSpec) -> Result<ExpertStatus, WorkerError> {
        self.load_blocking_in(spec, None, false)
    }

    /// Registers an expert into `tier` (Device when `None`), pinned or not. Blocking.
    pub fn load_blocking_in(
        &self,
        spec: ExpertSpec,
        tier: Option<Tier>,
        pinned: bool,
    ) -> Result<ExpertStatus, WorkerError> {
        let started = Instant::now();
        let status = self.tiers.register(spec, tier, pinned)?;
        tracing::info!(
            expert = %status.name,
            architecture = %status.info.architecture,
            tier = status.tier.as_str(),
            pinned,
            weight_bytes = status.info.weight_bytes,
            load_ms = started.elapsed().as_millis() as u64,
            "expert registered"
        );
        Ok(status)
    }

    /// Moves an expert to a tier and/or sets its pin. Blocking.
    pub fn move_blocking(
        &self,
        name: &str,
        tier: Option<Tier>,
        pinned: Option<bool>,
    ) -> Result<ExpertStatus, WorkerError> {
        self.tiers.move_expert(name, tier, pinned)
    }

    /// Forgets an expert, then waits (blocking) for its accepted requests to finish.
    pub fn unload_blocking(&self, name: &str) -> Result<ExpertStatus, WorkerError> {
        self.tiers.unload(name)
    }

    /// Validates and tokenises a request, then queues it on the expert's engine, promoting the expert
    /// to Device first when it is not there. Errors come back before anything is streamed.
    pub async fn generate(
        &self,
        request: GenerateRequest,
    ) -> Result<mpsc::UnboundedReceiver<GenerationEvent>, WorkerError> {
        let enqueued_at = Instant::now();
        let (header, info) = self.tiers.header(&request.expert)?;
        request
            .sampling
            .validate()
            .map_err(|e| WorkerError::InvalidRequest(e.to_string()))?;
        validate_input(&request.messages, &request.prompt)?;
        let context_length = info.context_length;
        if request.sampling.max_tokens as usize > context_length {
            return Err(WorkerError::MaxTokensPastContext {
                expert: request.expert,
                max_tokens: request.sampling.max_tokens,
                context_length,
            });
        }
        let prompt_ids = header
            .text
            .encode_prompt(&request.messages, &request.prompt)?;
        // At least one position must stay free for the first generated token.
        if prompt_ids.len() >= context_length {
            return Err(WorkerError::PromptTooLong {
                expert: request.expert,
                prompt_tokens: prompt_ids.len(),
                context_length,
            });
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let engine_request = EngineRequest {
            request_id: request.request_id,
            prompt_ids,
            sampling: request.sampling,
            events,
            enqueued_at,
        };
        match self.tiers.try_submit(&request.expert, engine_request) {
            Ok(()) => Ok(receiver),
            Err(Submit::Failed(e)) => Err(e),
            Err(Submit::Pending(engine_request)) => {
                // Promotion reads and repacks files and waits for room: never on the executor.
                let tiers = self.tiers.clone();
                let name = request.expert.clone();
                tokio::task::spawn_blocking(move || {
                    tiers.promote_and_submit(&name, engine_request)
                })
                .await
                .map_err(|e| WorkerError::Internal {
                    expert: request.expert.clone(),
                    reason: format!("promotion task failed: {e}"),
                })??;
                Ok(receiver)
            }
        }
    }

    pub fn status(&self) -> Vec<ExpertStatus> {
        self.tiers.status()
    }

    /// Each tier's budget and use.
    pub fn tier_usage(&self) -> Vec<TierUsage> {
        self.tiers.usage()
    }

    pub fn budgets(&self) -> TierBudgets {
        self.tiers.budgets()
    }

    pub fn expert_names(&self) -> Vec<String> {
        self.tiers.names()
    }

    pub fn expert_path(&self, name: &str) -> Option<PathBuf> {
        self.status()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.path)
    }

    /// Closes every engine's queue and waits for accepted work to finish.
    pub fn shutdown_blocking(&self) {
        for name in self.expert_names() {
            let _ = self.unload_blocking(&name);
        }
    }
}

fn validate_input(messages: &[ChatMessage], prompt: &str) -> Result<(), WorkerError> {
    match (messages.is_empty(), prompt.is_empty()) {
        (true, true) => Err(WorkerError::InvalidRequest(
            "the request is empty: give chat messages or a prompt".into(),
        )),
        (false, false) => Err(WorkerError::InvalidRequest(
            "give either chat messages or a prompt, not both".into(),
        )),
        (false, true) if messages.iter().all(|m| m.content.trim().is_empty()) => Err(
            WorkerError::InvalidRequest("every chat message is empty: nothing to answer".into()),
        ),
        (true, false) if prompt.trim().is_empty() => Err(WorkerError::InvalidRequest(
            "the prompt is only whitespace: nothing to complete".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_inputs_are_rejected() {
        assert!(validate_input(&[], "").is_err());
        assert!(validate_input(&[], "  \n").is_err());
        assert!(validate_input(&[ChatMessage::user(" ")], "").is_err());
        assert!(validate_input(&[ChatMessage::user("hi")], "x").is_err());
        assert!(validate_input(&[ChatMessage::user("hi")], "").is_ok());
        assert!(validate_input(&[], "Once upon").is_ok());
    }
}
