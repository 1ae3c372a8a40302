//! One engine thread per loaded expert: it owns the model, takes requests from a bounded queue, and
//! interleaves the decode steps of up to `max_active` sequences. Each sequence owns its KV cache; a
//! client that hangs up drops its receiver, and the sequence is dropped (its cache freed) at the next
//! step.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use coe_core::{FinishReason, GenerationEvent, SamplingParams, Usage};
use coe_models::KvCache;
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

use crate::error::WorkerError;
use crate::expert::{ExpertText, LoadedExpert};
use crate::sampler::Sampler;
use crate::text_stream::TextStream;

/// A validated, tokenised request on its way to the engine.
pub struct EngineRequest {
    pub request_id: String,
    pub prompt_ids: Vec<u32>,
    pub sampling: SamplingParams,
    pub events: mpsc::UnboundedSender<GenerationEvent>,
    pub enqueued_at: Instant,
}

#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    /// Requests waiting beyond this are refused with RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Sequences decoded in turn at once.
    pub max_active: usize,
}

/// Counters the status RPC reads without asking the engine thread.
#[derive(Default)]
pub struct EngineLoad {
    pub queued: AtomicUsize,
    pub active: AtomicUsize,
}

/// The async side's handle on an engine thread. Dropping every handle closes the queue: the thread
/// finishes what it has, then exits.
pub struct EngineHandle {
    name: String,
    queue: mpsc::Sender<EngineRequest>,
    load: Arc<EngineLoad>,
    capacity: usize,
    thread: Option<JoinHandle<coe_models::QuantizedModel>>,
}

impl EngineHandle {
    /// Starts the engine thread; it calls `on_idle` each time its last sequence finishes, so whoever
    /// waits for the expert to go idle (a demotion) learns it without polling.
    pub fn spawn(
        name: String,
        expert: LoadedExpert,
        limits: EngineLimits,
        on_idle: impl Fn() + Send + 'static,
    ) -> Self {
        let (queue, requests) = mpsc::channel(limits.queue_capacity.max(1));
        let load = Arc::new(EngineLoad::default());
        let engine = Engine {
            name: name.clone(),
            text: expert.text.clone(),
            model: expert.model,
            requests,
            active: Vec::new(),
            max_active: limits.max_active.max(1),
            load: load.clone(),
            on_idle: Box::new(on_idle),
        };
        let thread = std::thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || engine.run())
            .expect("spawning an engine thread");
        Self {
            name,
            queue,
            load,
            capacity: limits.queue_capacity,
            thread: Some(thread),
        }
    }

    pub fn submit(&self, request: EngineRequest) -> Result<(), WorkerError> {
        self.load.queued.fetch_add(1, Ordering::Relaxed);
        let result = self.queue.try_send(request);
        if result.is_err() {
            self.load.queued.fetch_sub(1, Ordering::Relaxed);
        }
        result.map_err(|e| match e {
            TrySendError::Full(_) => WorkerError::QueueFull {
                expert: self.name.clone(),
                capacity: self.capacity,
            },
            TrySendError::Closed(_) => WorkerError::ShuttingDown(self.name.clone()),
        })
    }

    pub fn load(&self) -> &EngineLoad {
        &self.load
    }

    /// Closes the queue, waits (blocking) until every accepted request has finished, and hands the
    /// model back (for a demotion that keeps it staged); `None` if the engine thread panicked.
    pub fn drain(mut self) -> Option<coe_models::QuantizedModel> {
        let thread = self.thread.take();
        drop(self);
        thread.and_then(|thread| thread.join().ok())
    }

    pub fn queued(&self) -> usize {
        self.load.queued.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> usize {
        self.load.active.load(Ordering::Relaxed)
    }

    /// Requests queued or computing now.
    pub fn in_flight(&self) -> usize {
        self.load.queued.load(Ordering::Relaxed) + self.load.active.load(Ordering::Relaxed)
    }
}

struct Sequence {
    request: EngineRequest,
    cache: KvCache,
    sampler: Sampler,
    text: TextStream,
    last_token: Option<u32>,
    completion_tokens: u32,
    started: Instant,
    first_token_at: Option<Instant>,
}

enum Step {
    Continue,
    Finished(FinishReason),
}

struct Engine {
    name: String,
    text: Arc<ExpertText>,
    model: coe_models::QuantizedModel,
    requests: mpsc::Receiver<EngineRequest>,
    active: Vec<Sequence>,
    max_active: usize,
    load: Arc<EngineLoad>,
    on_idle: Box<dyn Fn() + Send>,
}

impl Engine {
    fn run(mut self) -> coe_models::QuantizedModel {
        tracing::info!(expert = %self.name, "engine thread started");
        loop {
            if !self.admit() {
                break;
            }
            let mut i = 0;
            while i < self.active.len() {
                match self.step(i) {
                    Step::Continue => i += 1,
                    Step::Finished(finish) => {
                        let seq = self.active.swap_remove(i);
                        // Counted out before the client hears Done, so a status it asks for next
                        // no longer shows this request in flight.
                        self.load.active.store(self.active.len(), Ordering::Relaxed);
                        self.finish(seq, finish);
                    }
                }
            }
            self.load.active.store(self.active.len(), Ordering::Relaxed);
            if self.active.is_empty() {
                (self.on_idle)();
            }
        }
        tracing::info!(expert = %self.name, "engine thread stopped");
        self.model
    }

    /// Moves queued requests into the active set; blocks when idle. False once the queue is closed
    /// and every sequence has finished.
    fn admit(&mut self) -> bool {
        while self.active.len() < self.max_active {
            let request = if self.active.is_empty() {
                match self.requests.blocking_recv() {
                    Some(request) => request,
                    None => return false,
                }
            } else {
                match self.requests.try_recv() {
                    Ok(request) => request,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            self.load.queued.fetch_sub(1, Ordering::Relaxed);
            self.active.push(Sequence {
                sampler: Sampler::new(&request.sampling),
                text: TextStream::new(request.sampling.stop.clone()),
                cache: self.model.new_cache(),
                request,
                last_token: None,
                completion_tokens: 0,
                started: Instant::now(),
                first_token_at: None,
            });
        }
        self.load.active.store(self.active.len(), Ordering::Relaxed);
        true
    }

    fn step(&mut self, index: usize) -> Step {
        let seq = &mut self.active[index];
        if seq.request.events.is_closed() {
            tracing::debug!(expert = %self.name, request_id = %seq.request.request_id, "client gone; generation stopped");
            return Step::Finished(FinishReason::Cancelled);
        }
        let context = self.model.config().context_length;
        let input: Vec<u32> = match seq.last_token {
            None => seq.request.prompt_ids.clone(),
            Some(token) => vec![token],
        };
        if seq.cache.len() + input.len() > context {
            return Step::Finished(FinishReason::Length);
        }
        let logits = match self.model.forward(&input, &mut seq.cache) {
            Ok(logits) => logits,
            Err(e) => {
                tracing::error!(expert = %self.name, request_id = %seq.request.request_id, error = %e, "forward failed");
                return Step::Finished(FinishReason::Cancelled);
            }
        };
        let token = seq.sampler.sample(&logits);
        seq.last_token = Some(token);
        seq.completion_tokens += 1;
        seq.first_token_at.get_or_insert_with(Instant::now);
        if self.text.tokenizer.stop_ids().contains(&token) {
            return Step::Finished(FinishReason::Eos);
        }
        let pushed = seq
            .text
            .push(&self.text.tokenizer.token_bytes(token, false));
        if !pushed.text.is_empty() || !pushed.stopped {
            let _ = seq.request.events.send(GenerationEvent::Text {
                text: pushed.text,
                token_ids: vec![token],
            });
        }
        if pushed.stopped {
            Step::Finished(FinishReason::StopSequence)
        } else if seq.completion_tokens >= seq.request.sampling.max_tokens
            || seq.cache.len() + 1 > context
        {
            Step::Finished(FinishReason::Length)
        } else {
            Step::Continue
        }
    }

    fn finish(&self, mut seq: Sequence, finish: FinishReason) {
        let rest = seq.text.finish();
        if !rest.is_empty() && finish != FinishReason::StopSequence {
            let _ = seq.request.events.send(GenerationEvent::Text {
                text: rest,
                token_ids: Vec::new(),
            });
        }
        let now = Instant::now();
        let first = seq.first_token_at.unwrap_or(now);
        let decode_secs = now.duration_since(first).as_secs_f64();
        let usage = Usage {
            prompt_tokens: seq.request.prompt_ids.len() as u32,
            completion_tokens: seq.completion_tokens,
            queue_ms: ms(seq.started.duration_since(seq.request.enqueued_at)),
            time_to_first_token_ms: ms(first.duration_since(seq.request.enqueued_at)),
            total_ms: ms(now.duration_since(seq.request.enqueued_at)),
            decode_tokens_per_second: if decode_secs > 0.0 {
                seq.completion_tokens.saturating_sub(1) as f64 / decode_secs
            } else {
                0.0
            },
        };
        tracing::info!(
            expert = %self.name,
            request_id = %seq.request.request_id,
            ?finish,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            ttft_ms = usage.time_to_first_token_ms,
            "generation finished"
        );
        metrics::counter!("coe_worker_generated_tokens_total", "expert" => self.name.clone())
            .increment(u64::from(seq.completion_tokens));
        metrics::histogram!("coe_worker_time_to_first_token_seconds", "expert" => self.name.clone())
            .record(usage.time_to_first_token_ms / 1000.0);
        let _ = seq
            .request
            .events
            .send(GenerationEvent::Done { finish, usage });
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
