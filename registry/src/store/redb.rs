//! The embedded store: one redb file holding the current experts, every category-map version, the
//! change log and the revision. Each commit is one redb write transaction with immediate durability
//! (fsync before `commit` returns), so an acknowledged change survives a crash and a half-written one
//! never becomes visible. Blocking redb calls run on tokio's blocking pool.
//!
//! Values are the protobuf encodings of the public API's messages (`ExpertRecord`, `CategoryMap`,
//! `WatchEvent`): the schema's field numbers already give forward and backward compatibility, and the
//! bytes are the same the etcd backend stores and Watch sends, so there is no second format to keep
//! in sync.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coe_proto::v1 as pb;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use super::{number_changes, Change, RegistryStore, Snapshot, StoreError, BROADCAST_CAPACITY};

/// Expert name -> `ExpertRecord`.
const EXPERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("experts");
/// Map version -> `CategoryMap`; every version is kept so any can be rolled back to.
const MAPS: TableDefinition<u64, &[u8]> = TableDefinition::new("category_maps");
/// Revision -> `WatchEvent`; the change log Watch replays.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Counters: the revision, the current map version and the revision it was set at.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const REVISION: &str = "revision";
const MAP_VERSION: &str = "map_version";
const MAP_REVISION: &str = "map_revision";

#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    /// Held from the start of a write transaction until its events are broadcast, so subscribers see
    /// events in revision order.
    write_order: Arc<Mutex<()>>,
    events: broadcast::Sender<pb::WatchEvent>,
    path: PathBuf,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

impl RedbStore {
    /// Opens the database at `path`, creating it (and its directory) when missing. redb recovers an
    /// interrupted commit on open, so a file left by a killed process opens at its last durable commit.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let opened = path.clone();
        let db = tokio::task::spawn_blocking(move || -> Result<Database, StoreError> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
            }
            let db = Database::create(&path)
                .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
            // Create every table up front so readers never meet a missing one.
            let txn = db.begin_write().map_err(unavailable)?;
            {
                txn.open_table(EXPERTS).map_err(unavailable)?;
                txn.open_table(MAPS).map_err(unavailable)?;
                txn.open_table(LOG).map_err(unavailable)?;
                txn.open_table(META).map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)?;
            Ok(db)
        })
        .await
        .map_err(unavailable)??;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        Ok(Self {
            db: Arc::new(db),
            write_order: Arc::new(Mutex::new(())),
            events,
            path: opened,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }
}

fn read_snapshot(db: &Database) -> Result<Snapshot, StoreError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let meta = txn.open_table(META).map_err(unavailable)?;
    let counter = |key: &str| -> Result<u64, StoreError> {
        Ok(meta
            .get(key)
            .map_err(unavailable)?
            .map(|v| v.value())
            .unwrap_or(0))
    };
    let revision = counter(REVISION)?;
    let map_version = counter(MAP_VERSION)?;
    let map_revision = counter(MAP_REVISION)?;
    let mut experts = std::collections::BTreeMap::new();
    for entry in txn
        .open_table(EXPERTS)
        .map_err(unavailable)?
        .iter()
        .map_err(unavailable)?
    {
        let (name, bytes) = entry.map_err(unavailable)?;
        let record: pb::ExpertRecord = decode("expert record", bytes.value())?;
        experts.insert(name.value().to_string(), record);
    }
    let map = if map_version == 0 {
        pb::CategoryMap::default()
    } else {
        let maps = txn.open_table(MAPS).map_err(unavailable)?;
        let bytes = maps.get(map_version).map_err(unavailable)?.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "current category map version {map_version} is missing"
            ))
        })?;
        decode("category map", bytes.value())?
    };
    Ok(Snapshot {
        revision,
        experts,
        map,
        map_revision,
    })
}

fn write_changes(
    db: &Database,
    expected: u64,
    changes: Vec<Change>,
) -> Result<Vec<pb::WatchEvent>, StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let events = {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let actual = meta
            .get(REVISION)
            .map_err(unavailable)?
            .map(|v| v.value())
            .unwrap_or(0);
        if actual != expected {
            return Err(StoreError::Conflict { expected, actual });
        }
        let mut experts = txn.open_table(EXPERTS).map_err(unavailable)?;
        let mut maps = txn.open_table(MAPS).map_err(unavailable)?;
        let mut log = txn.open_table(LOG).map_err(unavailable)?;
        let events = number_changes(expected, changes);
        for event in &events {
            match &event.change {
                Some(Change::ExpertUpserted(record)) => {
                    experts
                        .insert(record.name.as_str(), record.encode_to_vec().as_slice())
                        .map_err(unavailable)?;
                }
                Some(Change::ExpertRemoved(name)) => {
                    experts.remove(name.as_str()).map_err(unavailable)?;
                }
                Some(Change::CategoryMap(map)) => {
                    if maps.get(map.version).map_err(unavailable)?.is_some() {
                        return Err(StoreError::Corrupt(format!(
                            "category map version {} already exists",
                            map.version
                        )));
                    }
                    maps.insert(map.version, map.encode_to_vec().as_slice())
                        .map_err(unavailable)?;
                    meta.insert(MAP_VERSION, map.version).map_err(unavailable)?;
                    meta.insert(MAP_REVISION, event.revision)
                        .map_err(unavailable)?;
                }
                None => {}
            }
            log.insert(event.revision, event.encode_to_vec().as_slice())
                .map_err(unavailable)?;
        }
        let last = events.last().map_or(expected, |e| e.revision);
        meta.insert(REVISION, last).map_err(unavailable)?;
        events
    };
    // Durability::Immediate (redb's default): commit returns only after the data is synced.
    txn.commit().map_err(unavailable)?;
    Ok(events)
}

#[async_trait::async_trait]
impl RegistryStore for RedbStore {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.blocking(read_snapshot).await
    }

    async fn map_version(&self, version: u64) -> Result<Option<pb::CategoryMap>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let maps = txn.open_table(MAPS).map_err(unavailable)?;
            let found = maps.get(version).map_err(unavailable)?;
            found
                .map(|bytes| decode("category map", bytes.value()))
                .transpose()
        })
        .await
    }

    async fn commit(
        &self,
        expected_revision: u64,
        changes: Vec<Change>,
    ) -> Result<Vec<pb::WatchEvent>, StoreError> {
        let order = self.write_order.clone();
        let sender = self.events.clone();
        self.blocking(move |db| {
            let _order = order
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let events = write_changes(db, expected_revision, changes)?;
            for event in &events {
                // No subscriber is fine: Watch replays from the log.
                let _ = sender.send(event.clone());
            }
            Ok(events)
        })
        .await
    }

    async fn changes_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<pb::WatchEvent>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let log = txn.open_table(LOG).map_err(unavailable)?;
            let mut events = Vec::new();
            for entry in log
                .range(after.saturating_add(1)..)
                .map_err(unavailable)?
                .take(limit)
            {
                let (_, bytes) = entry.map_err(unavailable)?;
                events.push(decode("change log entry", bytes.value())?);
            }
            Ok(events)
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<pb::WatchEvent> {
        self.events.subscribe()
    }
}
