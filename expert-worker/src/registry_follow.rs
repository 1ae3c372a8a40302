//! Makes a worker follow the registry: it watches the registry's change stream (resuming from the last
//! revision after a reconnect), folds the events into the set of experts placed on this worker, and
//! loads, moves or unloads experts until what it hosts matches that set.
//!
//! An expert whose placement names no worker is hosted by every following worker; one that names a
//! worker is hosted only by the worker with that id. Experts the worker was started with (flags) are
//! never touched: the follower manages only the experts it loaded itself.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coe_core::{ExpertName, Tier};
use coe_proto::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::WorkerError;
use crate::worker::{ExpertSpec, Worker};

/// What the registry asks this worker to host for one expert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedExpert {
    pub path: PathBuf,
    /// The file's sha256 (hex): finds the file in coe's model manifest when `path` is not on this
    /// machine (a worker on another host than the registry).
    pub sha256: String,
    /// `None` leaves the tier to the worker's policy.
    pub tier: Option<Tier>,
    pub pinned: bool,
}

/// What the worker hosts now for one expert the follower manages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostedExpert {
    pub path: PathBuf,
    pub tier: Tier,
    pub pinned: bool,
}

/// One step towards the wanted state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowAction {
    Load {
        name: String,
        wanted: WantedExpert,
    },
    /// Drains the expert's in-flight requests, then unloads it.
    Unload {
        name: String,
    },
    Move {
        name: String,
        tier: Option<Tier>,
        pinned: bool,
    },
}

/// The actions that turn `hosted` (the experts the follower manages) into `wanted`: unloads first, so
/// their memory is free before anything new is loaded; a changed file is an unload and a load.
pub fn plan(
    wanted: &BTreeMap<String, WantedExpert>,
    hosted: &BTreeMap<String, HostedExpert>,
) -> Vec<FollowAction> {
    let mut unloads = Vec::new();
    let mut rest = Vec::new();
    for (name, have) in hosted {
        match wanted.get(name) {
            None => unloads.push(FollowAction::Unload { name: name.clone() }),
            Some(want) if want.path != have.path => {
                unloads.push(FollowAction::Unload { name: name.clone() });
                rest.push(FollowAction::Load {
                    name: name.clone(),
                    wanted: want.clone(),
                });
            }
            Some(want) => {
                let tier_differs = want.tier.is_some_and(|t| !same_tier(t, have.tier));
                if tier_differs || want.pinned != have.pinned {
                    rest.push(FollowAction::Move {
                        name: name.clone(),
                        tier: want.tier,
                        pinned: want.pinned,
                    });
                }
            }
        }
    }
    for (name, want) in wanted {
        if !hosted.contains_key(name) {
            rest.push(FollowAction::Load {
                name: name.clone(),
                wanted: want.clone(),
            });
        }
    }
    unloads.extend(rest);
    unloads
}

/// Active is Device in use: a wish for Device is met by an expert that is computing now.
fn same_tier(want: Tier, have: Tier) -> bool {
    want == have || (want == Tier::Device && have == Tier::Active)
}

/// The registry's state as far as this worker cares, folded from Watch events.
#[derive(Debug, Default)]
pub struct WantedState {
    worker_id: String,
    experts: BTreeMap<String, WantedExpert>,
    /// The last revision applied; a reconnect resumes after it.
    pub revision: u64,
}

impl WantedState {
    pub fn new(worker_id: impl Into<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            ..Self::default()
        }
    }

    pub fn wanted(&self) -> &BTreeMap<String, WantedExpert> {
        &self.experts
    }

    pub fn apply(&mut self, event: &pb::WatchEvent) {
        self.revision = self.revision.max(event.revision);
        match &event.change {
            Some(pb::watch_event::Change::ExpertUpserted(record)) => {
                let placement = record.placement.clone().unwrap_or_default();
                let ours = placement.worker.is_empty() || placement.worker == self.worker_id;
                if ours {
                    let tier = tier_from_proto(placement.tier);
                    self.experts.insert(
                        record.name.clone(),
                        WantedExpert {
                            path: PathBuf::from(&record.path),
                            sha256: record.sha256.clone(),
                            tier,
                            pinned: placement.pinned,
                        },
                    );
                } else {
                    self.experts.remove(&record.name);
                }
            }
            Some(pb::watch_event::Change::ExpertRemoved(name)) => {
                self.experts.remove(name);
            }
            Some(pb::watch_event::Change::CategoryMap(_)) | None => {}
        }
    }
}

/// The registry's tier wish; unspecified (or unknown) leaves the tier to the worker's policy.
fn tier_from_proto(tier: i32) -> Option<Tier> {
    match pb::Tier::try_from(tier).ok()? {
        pb::Tier::Storage => Some(Tier::Storage),
        pb::Tier::Host => Some(Tier::Host),
        pb::Tier::Device | pb::Tier::Active => Some(Tier::Device),
        pb::Tier::Unspecified => None,
    }
}

/// How far the follower has got, for health reporting: `synced` turns true once the registry's
/// state at connection time has been applied.
#[derive(Clone, Debug, Default)]
pub struct FollowProgress {
    pub synced: bool,
    pub revision: u64,
}

/// Starts following the registry at `endpoint` (e.g. `http://127.0.0.1:50051`). Runs until aborted;
/// reconnects with a growing pause when the registry is away.
pub fn spawn_registry_follower(
    worker: Arc<Worker>,
    endpoint: String,
    worker_id: String,
    home: PathBuf,
) -> (JoinHandle<()>, watch::Receiver<FollowProgress>) {
    let endpoint = if endpoint.contains("://") {
        endpoint
    } else {
        format!("http://{endpoint}")
    };
    let (progress_tx, progress) = watch::channel(FollowProgress::default());
    let handle = tokio::spawn(async move {
        let mut follower = Follower {
            worker,
            home,
            state: WantedState::new(worker_id),
            managed: BTreeSet::new(),
            progress: progress_tx,
        };
        let mut pause = Duration::from_millis(100);
        loop {
            match follower.follow_once(&endpoint).await {
                Ok(()) => pause = Duration::from_millis(100),
                Err(status) => {
                    tracing::warn!(registry = %endpoint, error = %status, retry_in_ms = pause.as_millis() as u64,
                        "registry watch interrupted");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    });
    (handle, progress)
}

struct Follower {
    worker: Arc<Worker>,
    /// The model cache, for files the registry names that are not on this machine.
    home: PathBuf,
    state: WantedState,
    /// Experts this follower loaded (and so may move or unload).
    managed: BTreeSet<String>,
    progress: watch::Sender<FollowProgress>,
}

impl Follower {
    /// One Watch stream: resume after the last applied revision, reconcile after each burst of events.
    async fn follow_once(&mut self, endpoint: &str) -> Result<(), tonic::Status> {
        let mut client = pb::registry_client::RegistryClient::connect(endpoint.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connecting to {endpoint}: {e}")))?;
        // The revision the registry is at now: once applied, the initial state is in.
        let (_, at_connect) = {
            let list = client
                .list_experts(pb::ListExpertsRequest {})
                .await?
                .into_inner();
            (list.experts, list.revision)
        };
        let mut stream = client
            .watch(pb::WatchRequest {
                from_revision: self.state.revision,
            })
            .await?
            .into_inner();
        tracing::info!(registry = %endpoint, from_revision = self.state.revision, "following the registry");
        if at_connect <= self.state.revision {
            self.reconcile().await;
        }
        while let Some(event) = stream.message().await? {
            self.state.apply(&event);
            if self.state.revision >= at_connect {
                self.reconcile().await;
            }
        }
        Ok(())
    }

    async fn reconcile(&mut self) {
        let hosted = self.hosted();
        for action in plan(self.state.wanted(), &hosted) {
            self.execute(action).await;
        }
        self.progress.send_replace(FollowProgress {
            synced: true,
            revision: self.state.revision,
        });
    }

    /// The managed experts as the worker reports them.
    fn hosted(&self) -> BTreeMap<String, HostedExpert> {
        self.worker
            .status()
            .into_iter()
            .filter(|s| self.managed.contains(&s.name))
            .map(|s| {
                (
                    s.name.clone(),
                    HostedExpert {
                        path: s.path.clone(),
                        tier: s.tier,
                        pinned: s.pinned,
                    },
                )
            })
            .collect()
    }

    async fn execute(&mut self, action: FollowAction) {
        let worker = self.worker.clone();
        let described = format!("{action:?}");
        let outcome = match action {
            FollowAction::Load { name, wanted } => {
                let Ok(expert) = ExpertName::parse(&name) else {
                    tracing::error!(expert = %name, "the registry named an expert with an invalid name");
                    return;
                };
                if self.worker.status().iter().any(|s| s.name == name) {
                    tracing::warn!(expert = %name, "already hosted from the worker's own configuration; the registry's copy is not loaded");
                    return;
                }
                let home = self.home.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let path = local_file(&home, &wanted)?;
                    let spec = ExpertSpec { name: expert, path };
                    worker.load_blocking_in(spec, wanted.tier, wanted.pinned)
                })
                .await;
                if matches!(result, Ok(Ok(_))) {
                    self.managed.insert(name);
                }
                result.map(|r| r.map(|_| ()))
            }
            FollowAction::Unload { name } => {
                self.managed.remove(&name);
                tokio::task::spawn_blocking(move || worker.unload_blocking(&name).map(|_| ())).await
            }
            FollowAction::Move { name, tier, pinned } => {
                tokio::task::spawn_blocking(move || {
                    worker.move_blocking(&name, tier, Some(pinned)).map(|_| ())
                })
                .await
            }
        };
        match outcome {
            Ok(Ok(())) => tracing::info!(action = %described, "applied a registry change"),
            Ok(Err(e)) => {
                tracing::error!(action = %described, error = %e, "could not apply a registry change")
            }
            Err(e) => {
                tracing::error!(action = %described, error = %e, "registry change task failed")
            }
        }
    }
}

/// The expert's file on this machine: the registry's path when it exists here, else the manifest
/// model with the same sha256, fetched into the cache.
fn local_file(home: &Path, wanted: &WantedExpert) -> Result<PathBuf, WorkerError> {
    if wanted.path.exists() || wanted.sha256.is_empty() {
        return Ok(wanted.path.clone());
    }
    let manifest = coe_fetch::Manifest::embedded();
    let model = manifest
        .models
        .iter()
        .find(|m| {
            m.files
                .iter()
                .any(|f| f.sha256.eq_ignore_ascii_case(&wanted.sha256))
        })
        .ok_or_else(|| WorkerError::Load {
            path: wanted.path.clone(),
            reason: format!(
                "the file is not on this worker and no manifest model has sha256 {}",
                wanted.sha256
            ),
        })?;
    tracing::info!(model = %model.name, "fetching a registry expert's file onto this worker");
    coe_fetch::fetch_gguf(home, &model.name, &mut |_| {}).map_err(|e| WorkerError::Load {
        path: wanted.path.clone(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(path: &str, tier: Option<Tier>, pinned: bool) -> WantedExpert {
        WantedExpert {
            path: path.into(),
            sha256: String::new(),
            tier,
            pinned,
        }
    }

    fn have(path: &str, tier: Tier, pinned: bool) -> HostedExpert {
        HostedExpert {
            path: path.into(),
            tier,
            pinned,
        }
    }

    fn upsert(revision: u64, name: &str, worker: &str, tier: pb::Tier) -> pb::WatchEvent {
        pb::WatchEvent {
            revision,
            change: Some(pb::watch_event::Change::ExpertUpserted(pb::ExpertRecord {
                name: name.into(),
                path: format!("/models/{name}.gguf"),
                placement: Some(pb::Placement {
                    worker: worker.into(),
                    tier: tier as i32,
                    pinned: false,
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn new_experts_are_loaded_and_gone_ones_unloaded_first() {
        let wanted = BTreeMap::from([("b".to_string(), want("/b", None, false))]);
        let hosted = BTreeMap::from([("a".to_string(), have("/a", Tier::Device, false))]);
        assert_eq!(
            plan(&wanted, &hosted),
            vec![
                FollowAction::Unload { name: "a".into() },
                FollowAction::Load {
                    name: "b".into(),
                    wanted: want("/b", None, false)
                },
            ]
        );
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_changed_placement_moved() {
        let wanted = BTreeMap::from([
            ("a".to_string(), want("/a2", None, false)),
            ("b".to_string(), want("/b", Some(Tier::Host), true)),
            ("c".to_string(), want("/c", Some(Tier::Device), false)),
        ]);
        let hosted = BTreeMap::from([
            ("a".to_string(), have("/a", Tier::Device, false)),
            ("b".to_string(), have("/b", Tier::Device, false)),
            ("c".to_string(), have("/c", Tier::Active, false)),
        ]);
        assert_eq!(
            plan(&wanted, &hosted),
            vec![
                FollowAction::Unload { name: "a".into() },
                FollowAction::Load {
                    name: "a".into(),
                    wanted: want("/a2", None, false)
                },
                FollowAction::Move {
                    name: "b".into(),
                    tier: Some(Tier::Host),
                    pinned: true
                },
            ]
        );
    }

    #[test]
    fn only_experts_placed_on_this_worker_or_on_none_are_wanted() {
        let mut state = WantedState::new("worker-1");
        state.apply(&upsert(1, "mine", "worker-1", pb::Tier::Unspecified));
        state.apply(&upsert(2, "anyone", "", pb::Tier::Device));
        state.apply(&upsert(3, "theirs", "worker-2", pb::Tier::Device));
        assert_eq!(
            state.wanted().keys().collect::<Vec<_>>(),
            vec!["anyone", "mine"]
        );
        assert_eq!(state.wanted()["anyone"].tier, Some(Tier::Device));
        assert_eq!(state.wanted()["mine"].tier, None);
        // Moved to another worker, then removed: no longer ours.
        state.apply(&upsert(4, "mine", "worker-2", pb::Tier::Device));
        state.apply(&pb::WatchEvent {
            revision: 5,
            change: Some(pb::watch_event::Change::ExpertRemoved("anyone".into())),
        });
        assert!(state.wanted().is_empty());
        assert_eq!(state.revision, 5);
    }
}
