//! Watch: a snapshot (from revision 0) or a replay of the change log, then live events, with no gap and
//! no duplicate where replay hands over to live.
//!
//! The subscription to live events is taken *before* the store is read, so every event committed after
//! the read is also in the subscription; live events at or below the last revision sent are skipped;
//! a live event that is not the next revision (a lagging subscriber lost some) sends the watcher back
//! to replaying from the log.
use std::sync::Arc;

use coe_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::RegistryError;
use crate::store::{Change, RegistryStore, Snapshot};

/// Log entries read per store call while replaying.
const REPLAY_BATCH: usize = 256;
/// Events buffered per watcher before the watcher waits on its client.
pub const WATCH_BUFFER: usize = 64;

/// A snapshot as events in revision order: every live expert at the revision that last changed it, and
/// the current map at the revision that set it. Any prefix of it, followed by the log after its last
/// revision, still folds to the current state, so a watcher cut off mid-snapshot can resume.
pub fn snapshot_events(state: &Snapshot) -> Vec<pb::WatchEvent> {
    let mut events: Vec<pb::WatchEvent> = state
        .experts
        .values()
        .map(|record| pb::WatchEvent {
            revision: record.revision,
            change: Some(Change::ExpertUpserted(record.clone())),
        })
        .collect();
    if state.map.version != 0 {
        events.push(pb::WatchEvent {
            revision: state.map_revision,
            change: Some(Change::CategoryMap(state.map.clone())),
        });
    }
    events.sort_by_key(|event| event.revision);
    events
}

/// Why a watcher stopped sending.
enum Stop {
    /// The client went away.
    Gone,
    Shutdown,
}

/// Feeds `tx` until the client leaves, the registry shuts down (the stream then ends with
/// UNAVAILABLE so the client reconnects elsewhere) or the store fails.
pub async fn run(
    store: Arc<dyn RegistryStore>,
    from_revision: u64,
    tx: mpsc::Sender<Result<pb::WatchEvent, RegistryError>>,
    shutdown: CancellationToken,
) {
    let result = follow(&store, from_revision, &tx, &shutdown).await;
    let last_word = match result {
        Ok(Stop::Gone) => return,
        Ok(Stop::Shutdown) => RegistryError::ShuttingDown,
        Err(e) => e,
    };
    let _ = tx.send(Err(last_word)).await;
}

async fn follow(
    store: &Arc<dyn RegistryStore>,
    from_revision: u64,
    tx: &mpsc::Sender<Result<pb::WatchEvent, RegistryError>>,
    shutdown: &CancellationToken,
) -> Result<Stop, RegistryError> {
    let mut live = store.subscribe();
    let mut last = from_revision;
    if from_revision == 0 {
        let state = store.snapshot().await?;
        for event in snapshot_events(&state) {
            if let Some(stop) = send(tx, shutdown, event).await {
                return Ok(stop);
            }
        }
        last = state.revision;
    } else {
        let current = store.snapshot().await?.revision;
        if from_revision > current {
            return Err(RegistryError::RevisionInFuture {
                from: from_revision,
                current,
            });
        }
    }
    loop {
        loop {
            let batch = store.changes_since(last, REPLAY_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for event in batch {
                last = event.revision;
                if let Some(stop) = send(tx, shutdown, event).await {
                    return Ok(stop);
                }
            }
        }
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Stop::Shutdown),
                _ = tx.closed() => return Ok(Stop::Gone),
                received = live.recv() => received,
            };
            match received {
                Ok(event) if event.revision <= last => continue,
                Ok(event) if event.revision == last + 1 => {
                    last = event.revision;
                    if let Some(stop) = send(tx, shutdown, event).await {
                        return Ok(stop);
                    }
                }
                // A gap: this subscriber lagged or the event came before a replay caught up.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return Ok(Stop::Shutdown),
            }
        }
    }
}

async fn send(
    tx: &mpsc::Sender<Result<pb::WatchEvent, RegistryError>>,
    shutdown: &CancellationToken,
    event: pb::WatchEvent,
) -> Option<Stop> {
    tokio::select! {
        _ = shutdown.cancelled() => Some(Stop::Shutdown),
        sent = tx.send(Ok(event)) => sent.err().map(|_| Stop::Gone),
    }
}
