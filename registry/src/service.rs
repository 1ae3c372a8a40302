//! The registry's operations, independent of gRPC: check a request, plan its changes on a snapshot,
//! commit them in one transaction, and re-plan if another writer got there first.
//!
//! The registry's data model is the public API's messages (`ExpertRecord`, `CategoryMap`, …): they are
//! what is stored, logged and watched, so a separate set of domain structs would only be copied field
//! by field. Names are still parsed into [`ExpertName`] before anything is looked up.
use std::path::PathBuf;
use std::sync::Arc;

use coe_core::ExpertName;
use coe_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::RegistryError;
use crate::fetch;
use crate::plan::{self, NewExpert};
use crate::store::{Change, RegistryStore, Snapshot, StoreError};
use crate::validate::{self, parse_sha256};
use crate::watch;

/// Commits re-planned after losing a race to another replica before the request fails with ABORTED.
const MAX_ATTEMPTS: usize = 16;

/// Limits applied to every add.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// The most weight bytes one expert may have: the worker's device budget. `None`: no limit.
    pub max_expert_bytes: Option<u64>,
}

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    limits: Limits,
    shutdown: CancellationToken,
    /// Serializes this process's plan-and-commit steps, so its own writers never lose races to each
    /// other and only another replica's commit can force a re-plan.
    writing: Arc<tokio::sync::Mutex<()>>,
}

/// What a remove did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removed {
    pub name: String,
    pub revision: u64,
    pub remapped_categories: Vec<String>,
}

impl Registry {
    /// `shutdown` ends every Watch stream, so a graceful shutdown is not held open by followers.
    pub fn new(store: Arc<dyn RegistryStore>, limits: Limits, shutdown: CancellationToken) -> Self {
        Self {
            store,
            limits,
            shutdown,
            writing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Ends every Watch stream (followers see the stream close and reconnect elsewhere); call it when
    /// the server holding this registry begins its graceful shutdown. Requests still work after it.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Plans on the newest snapshot and commits; on a conflict, re-plans on a fresh one. Returns the
    /// committed events.
    async fn commit<T>(
        &self,
        mut plan: impl FnMut(&Snapshot) -> Result<(Vec<Change>, T), RegistryError>,
    ) -> Result<(Vec<pb::WatchEvent>, T), RegistryError> {
        let _writing = self.writing.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let state = self.store.snapshot().await?;
            let (changes, extra) = plan(&state)?;
            match self.store.commit(state.revision, changes).await {
                Ok(events) => {
                    tracing::info!(
                        revision = events.last().map_or(state.revision, |e| e.revision),
                        "committed"
                    );
                    return Ok((events, extra));
                }
                Err(StoreError::Conflict { .. }) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, "lost a commit race; re-planning");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    #[tracing::instrument(skip_all, fields(expert = %request.name))]
    pub async fn add_expert(
        &self,
        request: pb::AddExpertRequest,
    ) -> Result<pb::ExpertRecord, RegistryError> {
        let name = ExpertName::parse(&request.name)?;
        let categories = plan::check_add_request(
            &request.categories,
            &request.skills,
            request.placement.as_ref(),
        )?;
        let expected_sha256 = parse_sha256(&request.sha256)?;
        let source = match request.source.and_then(|s| s.source) {
            Some(pb::expert_source::Source::Path(path)) if !path.is_empty() => {
                Source::File(PathBuf::from(path))
            }
            Some(pb::expert_source::Source::Model(model)) if !model.is_empty() => {
                Source::Model(model)
            }
            Some(pb::expert_source::Source::Package(_)) => {
                return Err(RegistryError::Unimplemented(
                    "a bare package list carries no member names or checksum; add the model to the manifest (fetch/manifest.toml) and add it with --model".into(),
                ))
            }
            _ => {
                return Err(RegistryError::InvalidArgument(
                    "the expert needs a source: the path of its GGUF file or a manifest model name"
                        .into(),
                ))
            }
        };
        // Fail fast on a taken name before spending seconds fetching and hashing; the commit checks
        // again.
        if self
            .store
            .snapshot()
            .await?
            .experts
            .contains_key(name.as_str())
        {
            return Err(RegistryError::AlreadyExists(name.to_string()));
        }
        let (path, expected_sha256) = match source {
            Source::File(path) => (path, expected_sha256),
            Source::Model(model) => fetch::manifest_model(model, expected_sha256).await?,
        };
        let file =
            validate::verify_gguf(path, expected_sha256, self.limits.max_expert_bytes).await?;
        let expert = NewExpert {
            name,
            file,
            categories,
            skills: request.skills,
            placement: request.placement,
        };
        let (events, ()) = self
            .commit(|state| Ok((plan::plan_add(state, &expert)?, ())))
            .await?;
        upserted(&events)
            .ok_or_else(|| RegistryError::Internal("the add committed no record".into()))
    }

    #[tracing::instrument(skip(self))]
    pub async fn remove_expert(&self, name: &str, force: bool) -> Result<Removed, RegistryError> {
        let name = ExpertName::parse(name)?;
        let (events, remapped) = self
            .commit(|state| plan::plan_remove(state, name.as_str(), force))
            .await?;
        Ok(Removed {
            name: name.to_string(),
            revision: events.last().map_or(0, |e| e.revision),
            remapped_categories: remapped,
        })
    }

    pub async fn list_experts(&self) -> Result<(Vec<pb::ExpertRecord>, u64), RegistryError> {
        let state = self.store.snapshot().await?;
        Ok((state.experts.into_values().collect(), state.revision))
    }

    pub async fn get_expert(&self, name: &str) -> Result<pb::ExpertRecord, RegistryError> {
        let name = ExpertName::parse(name)?;
        plan::find_expert(&self.store.snapshot().await?, name.as_str())
    }

    #[tracing::instrument(skip_all)]
    pub async fn set_category_map(
        &self,
        map: pb::CategoryMap,
    ) -> Result<pb::CategoryMap, RegistryError> {
        let (events, ()) = self
            .commit(|state| Ok((plan::plan_set_map(state, &map)?, ())))
            .await?;
        committed_map(&events)
    }

    /// Version 0: the current map.
    pub async fn get_category_map(&self, version: u64) -> Result<pb::CategoryMap, RegistryError> {
        let state = self.store.snapshot().await?;
        if version == 0 || version == state.map.version {
            return Ok(state.map);
        }
        self.store
            .map_version(version)
            .await?
            .ok_or(RegistryError::UnknownMapVersion {
                version,
                latest: state.map.version,
            })
    }

    #[tracing::instrument(skip(self))]
    pub async fn rollback_category_map(
        &self,
        to_version: u64,
    ) -> Result<pb::CategoryMap, RegistryError> {
        // Stored versions never change, so reading the target once outside the retry loop is safe.
        let earlier = match to_version {
            0 => None,
            v => self.store.map_version(v).await?,
        };
        let (events, ()) = self
            .commit(|state| Ok((plan::plan_rollback(state, to_version, earlier.clone())?, ())))
            .await?;
        committed_map(&events)
    }

    #[tracing::instrument(skip(self, placement), fields(worker = %placement.worker, tier = placement.tier, pinned = placement.pinned))]
    pub async fn assign_expert(
        &self,
        name: &str,
        placement: pb::Placement,
    ) -> Result<pb::ExpertRecord, RegistryError> {
        let name = ExpertName::parse(name)?;
        let (events, ()) = self
            .commit(|state| Ok((plan::plan_assign(state, name.as_str(), &placement)?, ())))
            .await?;
        upserted(&events)
            .ok_or_else(|| RegistryError::Internal("the assignment committed no record".into()))
    }

    /// Streams every change after `from_revision` (a snapshot first when it is 0) until the receiver is
    /// dropped or the registry shuts down.
    pub fn watch(
        &self,
        from_revision: u64,
    ) -> mpsc::Receiver<Result<pb::WatchEvent, RegistryError>> {
        let (tx, rx) = mpsc::channel(watch::WATCH_BUFFER);
        tokio::spawn(watch::run(
            self.store.clone(),
            from_revision,
            tx,
            self.shutdown.clone(),
        ));
        rx
    }
}

/// Where an add's GGUF comes from.
enum Source {
    File(PathBuf),
    Model(String),
}

fn upserted(events: &[pb::WatchEvent]) -> Option<pb::ExpertRecord> {
    events.iter().find_map(|event| match &event.change {
        Some(Change::ExpertUpserted(record)) => Some(record.clone()),
        _ => None,
    })
}

fn committed_map(events: &[pb::WatchEvent]) -> Result<pb::CategoryMap, RegistryError> {
    events
        .iter()
        .find_map(|event| match &event.change {
            Some(Change::CategoryMap(map)) => Some(map.clone()),
            _ => None,
        })
        .ok_or_else(|| RegistryError::Internal("the map change committed no map".into()))
}
