//! The registry's storage seam: a transactional store of experts, category-map versions and the change
//! log, with an embedded redb backend (the default) and an etcd backend (for a replicated registry).
//!
//! The change log is the source of truth: every committed [`Change`] gets the next revision and is
//! appended to the log in the same transaction that applies it to the current state, so the state is
//! always the fold of the log, and Watch can resume from any revision.
use std::collections::BTreeMap;

use coe_proto::v1 as pb;
use tokio::sync::broadcast;

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod redb;

/// One change, exactly as Watch streams it.
pub type Change = pb::watch_event::Change;

/// How many committed events a slow subscriber may fall behind before it must replay from the log.
pub const BROADCAST_CAPACITY: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer committed since the snapshot the change was planned on; re-plan and retry.
    #[error("the registry changed during the update (expected revision {expected}, found {actual}); retry")]
    Conflict { expected: u64, actual: u64 },
    #[error("the registry store is unavailable: {0}")]
    Unavailable(String),
    #[error("the registry store holds data it cannot decode: {0}")]
    Corrupt(String),
}

/// The current state at one revision, read in one transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub revision: u64,
    pub experts: BTreeMap<String, pb::ExpertRecord>,
    /// The current map; version 0 (empty) until the first map change.
    pub map: pb::CategoryMap,
    /// The revision at which the current map was set; 0 when there is none.
    pub map_revision: u64,
}

#[async_trait::async_trait]
pub trait RegistryStore: Send + Sync + 'static {
    /// The current state, consistent at one revision.
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// A category map version, current or earlier; `None` when it never existed.
    async fn map_version(&self, version: u64) -> Result<Option<pb::CategoryMap>, StoreError>;

    /// Applies `changes` in one durable transaction if the revision is still `expected_revision`,
    /// giving them the revisions `expected_revision + 1 ..`; returns the events as logged. An expert
    /// upsert gets its event's revision in `ExpertRecord.revision`. Returns only once durable.
    async fn commit(
        &self,
        expected_revision: u64,
        changes: Vec<Change>,
    ) -> Result<Vec<pb::WatchEvent>, StoreError>;

    /// Up to `limit` logged events with a revision greater than `after`, in revision order.
    async fn changes_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<pb::WatchEvent>, StoreError>;

    /// Events as they commit, in revision order (from this process or, for a shared backend, any
    /// replica). A subscriber that lags or sees a gap replays from [`RegistryStore::changes_since`].
    fn subscribe(&self) -> broadcast::Receiver<pb::WatchEvent>;
}

/// Applies one change to an in-memory state; both backends fold their log with this, so the meaning
/// of a change is defined once.
pub fn apply(state: &mut Snapshot, event: &pb::WatchEvent) {
    state.revision = event.revision;
    match &event.change {
        Some(Change::ExpertUpserted(record)) => {
            state.experts.insert(record.name.clone(), record.clone());
        }
        Some(Change::ExpertRemoved(name)) => {
            state.experts.remove(name);
        }
        Some(Change::CategoryMap(map)) => {
            state.map = map.clone();
            state.map_revision = event.revision;
        }
        None => {}
    }
}

/// Numbers `changes` from `expected_revision + 1`, stamping each upserted record with its revision.
pub fn number_changes(expected_revision: u64, changes: Vec<Change>) -> Vec<pb::WatchEvent> {
    changes
        .into_iter()
        .zip(expected_revision + 1..)
        .map(|(change, revision)| {
            let change = match change {
                Change::ExpertUpserted(mut record) => {
                    record.revision = revision;
                    Change::ExpertUpserted(record)
                }
                other => other,
            };
            pb::WatchEvent {
                revision,
                change: Some(change),
            }
        })
        .collect()
}
