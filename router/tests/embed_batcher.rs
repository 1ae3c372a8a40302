//! The embedding batcher: concurrent requests share forward passes up to the batch limit, every
//! caller gets its own vector back, a full queue is refused at once, and the thread ends with
//! its last handle.

use std::sync::mpsc;
use std::time::Duration;

use coe_router::embed::{BatcherConfig, EmbedBatcher, EmbedError, Embedder, EmbedderIdentity};

/// Embeds a text as [length, first byte]; reports each batch size, and can be made to wait for a
/// go-ahead per batch.
struct Fake {
    identity: EmbedderIdentity,
    batches: mpsc::Sender<usize>,
    gate: Option<mpsc::Receiver<()>>,
}

impl Embedder for Fake {
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.batches.send(texts.len()).unwrap();
        if let Some(gate) = &self.gate {
            gate.recv().unwrap();
        }
        Ok(texts
            .iter()
            .map(|t| vec![t.len() as f32, t.bytes().next().unwrap_or(0) as f32])
            .collect())
    }

    fn identity(&self) -> &EmbedderIdentity {
        &self.identity
    }
}

fn fake(gate: Option<mpsc::Receiver<()>>) -> (Box<dyn Embedder>, mpsc::Receiver<usize>) {
    let (tx, rx) = mpsc::channel();
    let identity = EmbedderIdentity {
        model: "fake".into(),
        weights_sha256: String::new(),
        dim: 2,
    };
    (
        Box::new(Fake {
            identity,
            batches: tx,
            gate,
        }),
        rx,
    )
}

#[tokio::test]
async fn concurrent_requests_share_batches_and_get_their_own_vectors() {
    let (embedder, batches) = fake(None);
    let config = BatcherConfig {
        max_batch: 4,
        max_wait: Duration::from_millis(200),
        queue_capacity: 64,
    };
    let (batcher, thread) = EmbedBatcher::spawn(embedder, config).unwrap();
    let texts: Vec<String> = (0..10)
        .map(|i| format!("{}{}", (b'a' + i) as char, "x".repeat(i as usize)))
        .collect();
    let results = futures_join(&batcher, &texts).await;
    for (text, got) in texts.iter().zip(results) {
        assert_eq!(
            got.unwrap(),
            vec![text.len() as f32, text.as_bytes()[0] as f32]
        );
    }
    drop(batcher);
    thread.join().unwrap();
    let sizes: Vec<usize> = batches.try_iter().collect();
    assert_eq!(sizes.iter().sum::<usize>(), 10);
    assert!(sizes.iter().all(|&s| s <= 4), "{sizes:?}");
    assert!(sizes.len() <= 4, "expected batching, got {sizes:?}");
}

async fn futures_join(
    batcher: &EmbedBatcher,
    texts: &[String],
) -> Vec<Result<Vec<f32>, EmbedError>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in texts.iter().enumerate() {
        let (b, t) = (batcher.clone(), t.clone());
        set.spawn(async move { (i, b.embed(t).await) });
    }
    let mut out: Vec<Option<Result<Vec<f32>, EmbedError>>> =
        (0..texts.len()).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (i, r) = done.unwrap();
        out[i] = Some(r);
    }
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn a_full_queue_is_refused_instead_of_growing() {
    let (go, gate) = mpsc::channel();
    let (embedder, batches) = fake(Some(gate));
    let config = BatcherConfig {
        max_batch: 1,
        max_wait: Duration::ZERO,
        queue_capacity: 1,
    };
    let (batcher, thread) = EmbedBatcher::spawn(embedder, config).unwrap();
    // The first request occupies the embedder (it waits at the gate)...
    let first = tokio::spawn({
        let b = batcher.clone();
        async move { b.embed("first").await }
    });
    let started = tokio::task::spawn_blocking(move || {
        let n = batches.recv().unwrap();
        (n, batches)
    });
    let (n, batches) = started.await.unwrap();
    assert_eq!(n, 1);
    // ...the second fills the one queue slot (one poll enqueues it), and the third is turned away.
    let mut second = Box::pin(batcher.embed("second"));
    assert!(futures::poll!(&mut second).is_pending());
    assert!(matches!(
        batcher.embed("third").await,
        Err(EmbedError::Overloaded)
    ));
    go.send(()).unwrap();
    go.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap()[0], 5.0);
    assert_eq!(second.await.unwrap()[0], 6.0);
    drop(batcher);
    drop(go);
    thread.join().unwrap();
    drop(batches);
}
