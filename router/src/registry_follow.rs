//! Follows the registry's Watch stream and applies each category-map event to the router's map,
//! resuming after the last revision seen when the stream breaks. A map naming an expert no worker
//! hosts is logged and the previous map stays.

use std::sync::Arc;
use std::time::Duration;

use coe_proto::v1 as pb;
use pb::registry_client::RegistryClient;

use crate::config::CategoryMap;
use crate::router::RouterCore;

/// Pause before reconnecting to an unreachable registry.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Runs until the core is dropped by everyone else (the router stopped).
pub async fn follow(addr: String, core: std::sync::Weak<RouterCore>) {
    let uri = if addr.contains("://") {
        addr.clone()
    } else {
        format!("http://{addr}")
    };
    let mut last_revision = 0u64;
    loop {
        if core.strong_count() == 0 {
            return;
        }
        match watch_once(&uri, &core, &mut last_revision).await {
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
    core: &std::sync::Weak<RouterCore>,
    last_revision: &mut u64,
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
            let Some(core) = core.upgrade() else {
                return Ok(());
            };
            apply(&core, CategoryMap::from_proto(map), event.revision).await;
        }
    }
    Ok(())
}

/// Applies a map from the registry, or keeps the previous one and says why.
pub async fn apply(core: &Arc<RouterCore>, map: CategoryMap, revision: u64) {
    let version = map.version;
    // Learn the workers afresh: the registry may have placed a new expert just before the map.
    let hosted = core.dispatcher().refresh().await.hosted();
    match core.maps().replace(map, core.labels(), &hosted) {
        Ok(()) => tracing::info!(revision, version, "applied the registry's category map"),
        Err(e) => {
            tracing::error!(revision, version, error = %e, "rejected the registry's category map; keeping the previous one")
        }
    }
}
