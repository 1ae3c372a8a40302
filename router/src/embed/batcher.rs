//! Dynamic batching of embedding requests: async callers enqueue texts, one dedicated thread owns
//! the embedder and runs them in batches of up to `max_batch`, waiting at most `max_wait` (counted
//! from the oldest request's arrival) for a batch to fill. Model compute never runs on the async
//! executor, and a full queue is refused at once instead of growing.

use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{EmbedError, Embedder, EmbedderIdentity};

#[derive(Clone, Debug)]
pub struct BatcherConfig {
    /// The most texts embedded in one forward pass.
    pub max_batch: usize,
    /// How long the oldest queued request may wait for others to join its batch.
    pub max_wait: Duration,
    /// Requests queued beyond this are refused with `EmbedError::Overloaded`.
    pub queue_capacity: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait: Duration::from_millis(2),
            queue_capacity: 1024,
        }
    }
}

struct Job {
    text: String,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<f32>, EmbedError>>,
}

/// The handle async code embeds through; cheap to clone. The thread stops when every handle is
/// dropped, after finishing the jobs already queued.
#[derive(Clone)]
pub struct EmbedBatcher {
    tx: SyncSender<Job>,
    identity: EmbedderIdentity,
}

impl EmbedBatcher {
    /// Starts the embedding thread, which takes ownership of `embedder`.
    pub fn spawn(
        embedder: Box<dyn Embedder>,
        config: BatcherConfig,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let identity = embedder.identity().clone();
        let thread = std::thread::Builder::new()
            .name("coe-embed-batcher".into())
            .spawn(move || run(embedder, rx, config))?;
        Ok((Self { tx, identity }, thread))
    }

    pub fn identity(&self) -> &EmbedderIdentity {
        &self.identity
    }

    /// Embeds one text, batched with whatever else is in flight.
    pub async fn embed(&self, text: impl Into<String>) -> Result<Vec<f32>, EmbedError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            text: text.into(),
            enqueued: Instant::now(),
            reply,
        };
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(EmbedError::Overloaded),
            Err(TrySendError::Disconnected(_)) => return Err(EmbedError::Stopped),
        }
        rx.await.map_err(|_| EmbedError::Stopped)?
    }
}

fn run(mut embedder: Box<dyn Embedder>, rx: mpsc::Receiver<Job>, config: BatcherConfig) {
    let max_batch = config.max_batch.max(1);
    while let Ok(first) = rx.recv() {
        let deadline = first.enqueued + config.max_wait;
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            // Take what is already queued without waiting, then wait out the deadline.
            let next = match rx.try_recv() {
                Ok(job) => Ok(job),
                Err(_) => rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
            };
            match next {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // A caller that went away (a dropped future) needs no compute.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let texts: Vec<&str> = jobs.iter().map(|j| j.text.as_str()).collect();
        let started = Instant::now();
        let result = embedder.embed(&texts);
        debug!(
            batch = jobs.len(),
            compute_ms = started.elapsed().as_secs_f64() * 1e3,
            "embedded batch"
        );
        match result {
            Ok(vectors) if vectors.len() == jobs.len() => {
                for (job, v) in jobs.into_iter().zip(vectors) {
                    let _ = job.reply.send(Ok(v));
                }
            }
            Ok(vectors) => {
                warn!(
                    got = vectors.len(),
                    want = jobs.len(),
                    "embedder returned the wrong count"
                );
                for job in jobs {
                    let _ = job.reply.send(Err(EmbedError::Tokenize(
                        "the embedder returned the wrong number of vectors".into(),
                    )));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(EmbedError::Batch(msg.clone())));
                }
            }
        }
    }
}
