//! The replicated store: the same data as the embedded one, under one key prefix of an etcd cluster,
//! so several registry replicas on Kubernetes share it. A commit is one etcd transaction guarded by a
//! compare on the revision key, so two replicas never both commit on the same revision; etcd
//! acknowledges a transaction only once a quorum has it on disk.
//!
//! Keys under the prefix: `rev` (decimal), `map_version` and `map_revision` (decimal),
//! `experts/<name>`, `maps/<version, 20 digits>` and `log/<revision, 20 digits>` (protobuf values,
//! as in the redb backend). Live events come from an etcd watch on `log/`, so a replica's watchers
//! also see the other replicas' commits.
use std::collections::BTreeMap;

use coe_proto::v1 as pb;
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use prost::Message;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{number_changes, Change, RegistryStore, Snapshot, StoreError, BROADCAST_CAPACITY};

/// Log entries forwarded per read when the live feed catches up after a reconnect.
const CATCH_UP_BATCH: usize = 256;

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    events: broadcast::Sender<pb::WatchEvent>,
    /// Stops the live-feed task when the store is dropped.
    _feed: std::sync::Arc<FeedGuard>,
}

struct FeedGuard(CancellationToken);

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn parse_counter(key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("{key} holds {bytes:?}, not a number")))
}

/// The key just past every key starting with `prefix` (whose last byte is '/').
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl EtcdStore {
    /// Connects to `endpoints` and keeps the data under `prefix` (a trailing '/' is added if missing).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        let prefix = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let stop = CancellationToken::new();
        let store = Self {
            client,
            prefix,
            events,
            _feed: std::sync::Arc::new(FeedGuard(stop.clone())),
        };
        let feed = Feed {
            store: store.without_feed(),
            stop,
        };
        let forwarded = store.snapshot().await?.revision;
        tokio::spawn(feed.run(forwarded));
        Ok(store)
    }

    /// A handle for the feed task that does not keep the feed alive.
    fn without_feed(&self) -> FeedHandle {
        FeedHandle {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            events: self.events.clone(),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
}

fn log_key(prefix: &str, revision: u64) -> String {
    format!("{prefix}log/{revision:020}")
}

fn map_key(prefix: &str, version: u64) -> String {
    format!("{prefix}maps/{version:020}")
}

async fn read_log(
    client: &Client,
    prefix: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<pb::WatchEvent>, StoreError> {
    let options = GetOptions::new()
        .with_range(prefix_end(&format!("{prefix}log/")))
        .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
    let response = client
        .kv_client()
        .get(log_key(prefix, after.saturating_add(1)), Some(options))
        .await
        .map_err(unavailable)?;
    response
        .kvs()
        .iter()
        .map(|kv| decode("change log entry", kv.value()))
        .collect()
}

#[async_trait::async_trait]
impl RegistryStore for EtcdStore {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let counters = ["rev", "map_version", "map_revision"];
        let mut ops: Vec<TxnOp> = counters
            .iter()
            .map(|k| TxnOp::get(self.key(k), None))
            .collect();
        let experts_prefix = self.key("experts/");
        ops.push(TxnOp::get(
            experts_prefix.clone(),
            Some(GetOptions::new().with_range(prefix_end(&experts_prefix))),
        ));
        // The gets of one transaction read one etcd revision: a consistent snapshot.
        let response = self
            .client
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(unavailable)?;
        let mut gets = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => Ok(get),
            other => Err(StoreError::Corrupt(format!(
                "unexpected transaction response {other:?}"
            ))),
        });
        let mut values = [0u64; 3];
        for (value, key) in values.iter_mut().zip(counters) {
            let get = gets
                .next()
                .ok_or_else(|| StoreError::Corrupt("short transaction".into()))??;
            if let Some(kv) = get.kvs().first() {
                *value = parse_counter(key, kv.value())?;
            }
        }
        let [revision, map_version, map_revision] = values;
        let experts_get = gets
            .next()
            .ok_or_else(|| StoreError::Corrupt("short transaction".into()))??;
        let mut experts = BTreeMap::new();
        for kv in experts_get.kvs() {
            let record: pb::ExpertRecord = decode("expert record", kv.value())?;
            experts.insert(record.name.clone(), record);
        }
        // Map versions never change once written, so reading it outside the transaction is safe.
        let map = match map_version {
            0 => pb::CategoryMap::default(),
            v => self.map_version(v).await?.ok_or_else(|| {
                StoreError::Corrupt(format!("current category map version {v} is missing"))
            })?,
        };
        Ok(Snapshot {
            revision,
            experts,
            map,
            map_revision,
        })
    }

    async fn map_version(&self, version: u64) -> Result<Option<pb::CategoryMap>, StoreError> {
        let response = self
            .client
            .kv_client()
            .get(map_key(&self.prefix, version), None)
            .await
            .map_err(unavailable)?;
        response
            .kvs()
            .first()
            .map(|kv| decode("category map", kv.value()))
            .transpose()
    }

    async fn commit(
        &self,
        expected_revision: u64,
        changes: Vec<Change>,
    ) -> Result<Vec<pb::WatchEvent>, StoreError> {
        let rev_key = self.key("rev");
        let guard = if expected_revision == 0 {
            Compare::version(rev_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(
                rev_key.clone(),
                CompareOp::Equal,
                expected_revision.to_string(),
            )
        };
        let events = number_changes(expected_revision, changes);
        // etcd refuses a transaction naming a key twice: the last write of each key wins here.
        let mut puts: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        let mut compares = vec![guard];
        for event in &events {
            match &event.change {
                Some(Change::ExpertUpserted(record)) => {
                    puts.insert(
                        self.key(&format!("experts/{}", record.name)),
                        Some(record.encode_to_vec()),
                    );
                }
                Some(Change::ExpertRemoved(name)) => {
                    puts.insert(self.key(&format!("experts/{name}")), None);
                }
                Some(Change::CategoryMap(map)) => {
                    let key = map_key(&self.prefix, map.version);
                    compares.push(Compare::version(key.clone(), CompareOp::Equal, 0));
                    puts.insert(key, Some(map.encode_to_vec()));
                    puts.insert(
                        self.key("map_version"),
                        Some(map.version.to_string().into_bytes()),
                    );
                    puts.insert(
                        self.key("map_revision"),
                        Some(event.revision.to_string().into_bytes()),
                    );
                }
                None => {}
            }
            puts.insert(
                log_key(&self.prefix, event.revision),
                Some(event.encode_to_vec()),
            );
        }
        let last = events.last().map_or(expected_revision, |e| e.revision);
        puts.insert(rev_key.clone(), Some(last.to_string().into_bytes()));
        let ops: Vec<TxnOp> = puts
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => TxnOp::put(key, value, None),
                None => TxnOp::delete(key, None),
            })
            .collect();
        let txn = Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else(vec![TxnOp::get(rev_key.clone(), None)]);
        let response = self
            .client
            .kv_client()
            .txn(txn)
            .await
            .map_err(unavailable)?;
        if response.succeeded() {
            return Ok(events);
        }
        let actual = match response.op_responses().first() {
            Some(TxnOpResponse::Get(get)) => match get.kvs().first() {
                Some(kv) => parse_counter("rev", kv.value())?,
                None => 0,
            },
            _ => expected_revision,
        };
        Err(StoreError::Conflict {
            expected: expected_revision,
            actual,
        })
    }

    async fn changes_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<pb::WatchEvent>, StoreError> {
        read_log(&self.client, &self.prefix, after, limit).await
    }

    fn subscribe(&self) -> broadcast::Receiver<pb::WatchEvent> {
        self.events.subscribe()
    }
}

struct FeedHandle {
    client: Client,
    prefix: String,
    events: broadcast::Sender<pb::WatchEvent>,
}

/// Forwards committed log entries, from any replica, to this replica's subscribers in revision order.
struct Feed {
    store: FeedHandle,
    stop: CancellationToken,
}

impl Feed {
    async fn run(self, mut forwarded: u64) {
        loop {
            match self.follow(&mut forwarded).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "the etcd watch broke; reconnecting");
                    tokio::select! {
                        _ = self.stop.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    /// Catches up from the log, then follows an etcd watch on it; returns Ok on stop.
    async fn follow(&self, forwarded: &mut u64) -> Result<(), StoreError> {
        let store = &self.store;
        let log_prefix = format!("{}log/", store.prefix);
        let options = WatchOptions::new().with_range(prefix_end(&log_prefix));
        let mut watch = store
            .client
            .watch_client()
            .watch(log_prefix.clone(), Some(options))
            .await
            .map_err(unavailable)?;
        // Entries committed before the watch started are read from the log; the watch's own events
        // below `forwarded` are skipped.
        loop {
            let batch = read_log(&store.client, &store.prefix, *forwarded, CATCH_UP_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for event in batch {
                *forwarded = event.revision;
                let _ = store.events.send(event);
            }
        }
        loop {
            let message = tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                message = watch.message() => message.map_err(unavailable)?,
            };
            let Some(message) = message else {
                return Err(unavailable("the watch stream ended"));
            };
            let mut events = message
                .events()
                .iter()
                .filter_map(|e| e.kv())
                .map(|kv| decode::<pb::WatchEvent>("change log entry", kv.value()))
                .collect::<Result<Vec<_>, _>>()?;
            events.sort_by_key(|e| e.revision);
            for event in events {
                if event.revision <= *forwarded {
                    continue;
                }
                *forwarded = event.revision;
                let _ = store.events.send(event);
            }
        }
    }
}
