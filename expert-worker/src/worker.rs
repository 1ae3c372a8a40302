//! The worker's core, free of gRPC: which experts it hosts, and how a request becomes engine work.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use coe_core::{ChatMessage, ExpertName, GenerationEvent, SamplingParams, Tier};
use tokio::sync::mpsc;

use crate::engine::{EngineHandle, EngineLimits, EngineRequest};
use crate::error::WorkerError;
use crate::expert::{ExpertInfo, ExpertText, LoadedExpert};

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

#[derive(Clone, Debug)]
pub struct ExpertStatus {
    pub name: String,
    pub path: PathBuf,
    pub tier: Tier,
    pub info: ExpertInfo,
    pub queued: usize,
    pub active: usize,
}

struct HostedExpert {
    spec: ExpertSpec,
    info: ExpertInfo,
    text: Arc<ExpertText>,
    engine: EngineHandle,
}

pub struct Worker {
    experts: RwLock<BTreeMap<String, Arc<HostedExpert>>>,
    limits: EngineLimits,
    max_context: usize,
}

impl Worker {
    pub fn new(limits: EngineLimits, max_context: usize) -> Self {
        Self {
            experts: RwLock::new(BTreeMap::new()),
            limits,
            max_context,
        }
    }

    /// Loads an expert's model (blocking: call from a blocking context) and starts its engine.
    pub fn load_blocking(&self, spec: ExpertSpec) -> Result<ExpertStatus, WorkerError> {
        let name = spec.name.to_string();
        if self.read().contains_key(&name) {
            return Err(WorkerError::AlreadyLoaded(name));
        }
        let started = Instant::now();
        let loaded = LoadedExpert::load(&spec.path, self.max_context)?;
        let hosted = Arc::new(HostedExpert {
            info: loaded.info.clone(),
            text: loaded.text.clone(),
            engine: EngineHandle::spawn(name.clone(), loaded, self.limits),
            spec,
        });
        tracing::info!(
            expert = %name,
            architecture = %hosted.info.architecture,
            context_length = hosted.info.context_length,
            weight_bytes = hosted.info.weight_bytes,
            load_ms = started.elapsed().as_millis() as u64,
            "expert loaded"
        );
        let mut experts = self.experts.write().expect("expert map lock");
        if experts.contains_key(&name) {
            return Err(WorkerError::AlreadyLoaded(name));
        }
        experts.insert(name, hosted.clone());
        Ok(status_of(&hosted))
    }

    /// Forgets an expert, then waits (blocking) for its accepted requests to finish.
    pub fn unload_blocking(&self, name: &str) -> Result<ExpertStatus, WorkerError> {
        let hosted = self
            .experts
            .write()
            .expect("expert map lock")
            .remove(name)
            .ok_or_else(|| self.unknown(name))?;
        let status = status_of(&hosted);
        // Requests being admitted hold clones of the Arc only briefly; wait for them to let go.
        let mut hosted = hosted;
        let engine = loop {
            match Arc::try_unwrap(hosted) {
                Ok(expert) => break expert.engine,
                Err(shared) => {
                    hosted = shared;
                    std::thread::yield_now();
                }
            }
        };
        engine.drain();
        tracing::info!(expert = %name, "expert unloaded");
        Ok(status)
    }

    /// Validates and tokenises a request, then queues it on the expert's engine. Errors come back
    /// before anything is streamed.
    pub fn generate(
        &self,
        request: GenerateRequest,
    ) -> Result<mpsc::UnboundedReceiver<GenerationEvent>, WorkerError> {
        let enqueued_at = Instant::now();
        let hosted = self
            .read()
            .get(&request.expert)
            .cloned()
            .ok_or_else(|| self.unknown(&request.expert))?;
        request
            .sampling
            .validate()
            .map_err(|e| WorkerError::InvalidRequest(e.to_string()))?;
        validate_input(&request.messages, &request.prompt)?;
        let context_length = hosted.info.context_length;
        if request.sampling.max_tokens as usize > context_length {
            return Err(WorkerError::MaxTokensPastContext {
                expert: request.expert,
                max_tokens: request.sampling.max_tokens,
                context_length,
            });
        }
        let prompt_ids = hosted
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
        hosted.engine.submit(EngineRequest {
            request_id: request.request_id,
            prompt_ids,
            sampling: request.sampling,
            events,
            enqueued_at,
        })?;
        Ok(receiver)
    }

    pub fn status(&self) -> Vec<ExpertStatus> {
        self.read().values().map(|h| status_of(h)).collect()
    }

    pub fn expert_names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    pub fn expert_path(&self, name: &str) -> Option<PathBuf> {
        self.read().get(name).map(|h| h.spec.path.clone())
    }

    /// Closes every engine's queue and waits for accepted work to finish.
    pub fn shutdown_blocking(&self) {
        for name in self.expert_names() {
            let _ = self.unload_blocking(&name);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<HostedExpert>>> {
        self.experts.read().expect("expert map lock")
    }

    fn unknown(&self, name: &str) -> WorkerError {
        WorkerError::UnknownExpert {
            name: name.to_string(),
            known: self.expert_names().join(", "),
        }
    }
}

fn status_of(hosted: &HostedExpert) -> ExpertStatus {
    let load = hosted.engine.load();
    let active = load.active.load(Ordering::Relaxed);
    ExpertStatus {
        name: hosted.spec.name.to_string(),
        path: hosted.spec.path.clone(),
        tier: if active > 0 {
            Tier::Active
        } else {
            Tier::Device
        },
        info: hosted.info.clone(),
        queued: load.queued.load(Ordering::Relaxed),
        active,
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
