//! Follows the registry's Watch stream and applies each category-map event to the router's map,
//! resuming after the last revision seen when the stream breaks. A map naming an expert no worker
//! hosts yet is held back while the previous map stays: the registry commits an added expert and its
//! categories together, and the workers need a moment to load it, so the held map is retried until
//! the workers host its experts, a newer map arrives, or `PENDING_MAP_WAIT` passes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use coe_proto::v1 as pb;
use pb::registry_client::RegistryClient;

use crate::config::{CategoryMap, MapError};
use crate::router::RouterCore;

/// Pause before reconnecting to an unreachable registry.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How long a map naming experts the workers do not host yet waits for them (a worker may be
/// fetching and loading a large model).
const PENDING_MAP_WAIT: Duration = Duration::from_secs(300);
/// How often a held-back map is retried.
const PENDING_MAP_RETRY: Duration = Duration::from_millis(250);

/// Runs until the core is dropped by everyone else (the router stopped).
pub async fn follow(addr: String, core: Weak<RouterCore>) {
    let uri = if addr.contains("://") {
        addr.clone()
    } else {
        format!("http://{addr}")
    };
    let mut last_revision = 0u64;
    let latest_map = Arc::new(AtomicU64::new(0));
    loop {
        if core.strong_count() == 0 {
            return;
        }
        match watch_once(&uri, &core, &mut last_revision, &latest_map).await {
            Ok(()) => {
                tracing::info!(registry = %addr, last_revision, "registry watch ended; resuming")
            }
            Err(e) => {
                tracing::warn!(registry = %addr, last_revision, error = %e, "registry watch failed; retrying")
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

async fn watch_once(
    uri: &str,
    core: &Weak<RouterCore>,
    last_revision: &mut u64,
    latest_map: &Arc<AtomicU64>,
) -> Result<(), tonic::Status> {
    let mut client = RegistryClient::connect(uri.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut events = client
        .watch(pb::WatchRequest {
            from_revision: *last_revision,
        })
        .await?
        .into_inner();
    while let Some(event) = events.message().await? {
        *last_revision = (*last_revision).max(event.revision);
        if let Some(pb::watch_event::Change::CategoryMap(map)) = event.change {
            // A registry that never had a map set sends an empty one in its snapshot.
            if map.version == 0 && map.category_to_expert.is_empty() {
                continue;
            }
            if core.strong_count() == 0 {
                return Ok(());
            }
            latest_map.store(event.revision, Ordering::SeqCst);
            tokio::spawn(apply_when_hosted(
                core.clone(),
                CategoryMap::from_proto(map),
                event.revision,
                latest_map.clone(),
            ));
        }
    }
    Ok(())
}

/// Applies a map from the registry once the workers host every expert it names; until then (and for
/// good when it is superseded, times out or is invalid) the previous map stays.
pub async fn apply_when_hosted(
    core: Weak<RouterCore>,
    map: CategoryMap,
    revision: u64,
    latest_map: Arc<AtomicU64>,
) {
    let version = map.version;
    let since = Instant::now();
    let mut told = false;
    loop {
        let Some(core) = core.upgrade() else { return };
        if latest_map.load(Ordering::SeqCst) != revision {
            tracing::info!(
                revision,
                version,
                "a newer category map superseded a held-back one"
            );
            return;
        }
        // Learn the workers afresh: the registry may have placed a new expert just before the map.
        let hosted = core.dispatcher().refresh().await.hosted();
        match core.maps().replace(map.clone(), core.labels(), &hosted) {
            Ok(()) => {
                tracing::info!(revision, version, "applied the registry's category map");
                return;
            }
            Err(e @ MapError::UnhostedExpert { .. }) if since.elapsed() < PENDING_MAP_WAIT => {
                if !told {
                    tracing::info!(revision, version, reason = %e, "holding back the registry's category map until the workers host its experts");
                    told = true;
                }
            }
            Err(e) => {
                tracing::error!(revision, version, error = %e, "rejected the registry's category map; keeping the previous one");
                return;
            }
        }
        drop(core);
        tokio::time::sleep(PENDING_MAP_RETRY).await;
    }
}
