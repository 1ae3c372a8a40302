//! The tier manager: the one owner of where each expert lives, with a byte budget per tier and the
//! policy that promotes experts on demand and demotes others to make room.
//!
//! Tiers on a CPU worker (both Host and Device are process memory there):
//! - Storage: the verified GGUF on disk; the worker keeps only its parsed header and tokenizer.
//! - Host: the weights staged in memory already repacked into the kernels' layout, with no engine.
//!   Staging the repacked form (not the file's bytes) is what makes Host->Device cheap: the repack
//!   costs several times a memcpy, so it is paid once, on Storage->Host.
//! - Device: an engine thread owns those buffers and computes with them. Host->Device hands the
//!   staged buffers over (no weight byte is copied); Device->Host takes them back after the engine
//!   drained its requests.
//! - Active: a Device expert with requests queued or computing; never demoted.
//!
//! All state sits behind one mutex; moves run outside it with the expert marked `Moving`, so a second
//! request for the same expert joins the running move (waits on the condvar) instead of starting one.
mod moves;
mod policy;
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use coe_core::Tier;
use coe_models::QuantizedModel;

use crate::engine::{EngineHandle, EngineLimits, EngineRequest};
use crate::error::WorkerError;
use crate::expert::{ExpertHeader, ExpertInfo};
use crate::worker::ExpertSpec;
pub use policy::{plan_room, Candidate, Plan};

/// Byte budgets per tier (Storage is not budgeted: files stay where they are).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierBudgets {
    /// Weights of experts computing at once.
    pub active_bytes: u64,
    /// Weights of experts with an engine (Active included).
    pub device_bytes: u64,
    /// Repacked weights staged without an engine.
    pub host_bytes: u64,
    /// How long a request waits for room (busy experts finishing) before RESOURCE_EXHAUSTED.
    pub wait: Duration,
}

impl Default for TierBudgets {
    /// Room for the three default experts (about 0.9 GiB together) in Device and again in Host.
    fn default() -> Self {
        Self {
            active_bytes: 4 << 30,
            device_bytes: 4 << 30,
            host_bytes: 4 << 30,
            wait: Duration::from_secs(30),
        }
    }
}

impl std::fmt::Display for TierBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "budgets: active {} B, device {} B, host {} B",
            self.active_bytes, self.device_bytes, self.host_bytes
        )
    }
}

/// One tier's budget and use, as GetStatus reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierUsage {
    pub tier: Tier,
    pub budget_bytes: u64,
    pub used_bytes: u64,
}

/// What status reports of one expert.
#[derive(Clone, Debug)]
pub struct ExpertStatus {
    pub name: String,
    pub path: PathBuf,
    pub tier: Tier,
    pub pinned: bool,
    pub info: ExpertInfo,
    pub queued: usize,
    pub active: usize,
    /// Promotions to Device since registration (the first load included).
    pub promotions: u64,
}

enum Residence {
    Storage,
    // Boxed: a model is far larger than the other variants.
    Host(Box<QuantizedModel>),
    Device(EngineHandle),
    /// A move runs outside the lock; its bytes count against both tiers until it lands.
    Moving {
        from: Tier,
        to: Tier,
    },
}

struct Entry {
    spec: ExpertSpec,
    header: Arc<ExpertHeader>,
    info: ExpertInfo,
    residence: Residence,
    pinned: bool,
    last_used: Instant,
    reload_cost: Duration,
    promotions: u64,
}

impl Entry {
    fn tier(&self) -> Tier {
        match &self.residence {
            Residence::Storage => Tier::Storage,
            Residence::Host(_) => Tier::Host,
            Residence::Device(e) if e.in_flight() > 0 => Tier::Active,
            Residence::Device(_) => Tier::Device,
            Residence::Moving { from, .. } => *from,
        }
    }

    fn in_tier(&self, tier: Tier) -> bool {
        match (&self.residence, tier) {
            (Residence::Host(_), Tier::Host) => true,
            (Residence::Device(_), Tier::Device) => true,
            (Residence::Device(e), Tier::Active) => e.in_flight() > 0,
            (Residence::Moving { from, to }, t) => *from == t || *to == t,
            _ => false,
        }
    }
}

type State = BTreeMap<String, Entry>;

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// Why [`TierManager::try_submit`] did not queue a request.
pub enum Submit {
    Failed(WorkerError),
    /// It needs a promotion or a wait: retry on a blocking thread with
    /// [`TierManager::promote_and_submit`].
    Pending(EngineRequest),
}

pub struct TierManager {
    shared: Arc<Shared>,
    budgets: TierBudgets,
    limits: EngineLimits,
    max_context: usize,
}

impl TierManager {
    pub fn new(budgets: TierBudgets, limits: EngineLimits, max_context: usize) -> Self {
        let manager = Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new()),
                changed: Condvar::new(),
            }),
            budgets,
            limits,
            max_context,
        };
        manager.publish(&manager.lock());
        manager
    }

    pub fn budgets(&self) -> TierBudgets {
        self.budgets
    }

    /// Registers an expert from its file and moves it to `target` (Device when `None`). Blocking.
    pub fn register(
        &self,
        spec: ExpertSpec,
        target: Option<Tier>,
        pinned: bool,
    ) -> Result<ExpertStatus, WorkerError> {
        let name = spec.name.to_string();
        if self.lock().contains_key(&name) {
            return Err(WorkerError::AlreadyLoaded(name));
        }
        let header = ExpertHeader::read(&spec.path, self.max_context)?;
        let fits = self.budgets.device_bytes.min(self.budgets.active_bytes);
        if header.info.weight_bytes > fits {
            return Err(WorkerError::BudgetTooSmall {
                expert: name,
                bytes: header.info.weight_bytes,
                budgets: self.budgets.to_string(),
            });
        }
        {
            let mut state = self.lock();
            if state.contains_key(&name) {
                return Err(WorkerError::AlreadyLoaded(name));
            }
            state.insert(
                name.clone(),
                Entry {
                    spec,
                    info: header.info.clone(),
                    header: Arc::new(header),
                    residence: Residence::Storage,
                    pinned,
                    last_used: Instant::now(),
                    reload_cost: Duration::ZERO,
                    promotions: 0,
                },
            );
        }
        if let Err(e) = self.move_to(&name, target.unwrap_or(Tier::Device)) {
            let _ = self.unload(&name);
            return Err(e);
        }
        self.status_of(&name)
    }

    /// Moves an expert to `tier` (Active means Device) and sets its pin. Blocking.
    pub fn move_expert(
        &self,
        name: &str,
        tier: Option<Tier>,
        pinned: Option<bool>,
    ) -> Result<ExpertStatus, WorkerError> {
        if let Some(pinned) = pinned {
            self.lock()
                .get_mut(name)
                .ok_or_else(|| WorkerError::unknown(name, &[]))?
                .pinned = pinned;
        }
        if let Some(tier) = tier {
            self.move_to(name, tier)?;
        }
        self.status_of(name)
    }

    /// Forgets an expert after its accepted requests finished. Blocking.
    pub fn unload(&self, name: &str) -> Result<ExpertStatus, WorkerError> {
        let mut state = self.lock();
        loop {
            let entry = state.get(name).ok_or_else(|| unknown(&state, name))?;
            if matches!(entry.residence, Residence::Moving { .. }) {
                state = self.wait(state, None, name)?;
                continue;
            }
            break;
        }
        let status = status(name, &state[name]);
        let entry = state.remove(name).expect("checked above");
        drop(state);
        if let Residence::Device(engine) = entry.residence {
            engine.drain();
        }
        self.notify();
        tracing::info!(expert = %name, "expert unloaded");
        Ok(status)
    }

    /// The header (tokenizer, context) of a hosted expert, whatever its tier.
    pub fn header(&self, name: &str) -> Result<(Arc<ExpertHeader>, ExpertInfo), WorkerError> {
        let state = self.lock();
        let entry = state.get(name).ok_or_else(|| unknown(&state, name))?;
        Ok((entry.header.clone(), entry.info.clone()))
    }

    /// Queues a request when its expert is on Device and the Active budget allows; otherwise hands
    /// it back for [`TierManager::promote_and_submit`].
    pub fn try_submit(&self, name: &str, request: EngineRequest) -> Result<(), Submit> {
        let mut state = self.lock();
        match self.submit_locked(&mut state, name, request) {
            Ok(result) => {
                stats::lookup(Tier::Device, true);
                result.map_err(Submit::Failed)
            }
            Err(request) => Err(Submit::Pending(request)),
        }
    }

    /// Promotes the expert to Device (joining a promotion already running, demoting others if the
    /// budget needs it, waiting a bounded time for busy ones), then queues the request. Blocking.
    pub fn promote_and_submit(
        &self,
        name: &str,
        request: EngineRequest,
    ) -> Result<(), WorkerError> {
        let deadline = Instant::now() + self.budgets.wait;
        let mut request = request;
        let mut state = self.lock();
        loop {
            state = self.promote_locked(state, name, deadline)?;
            match self.submit_locked(&mut state, name, request) {
                Ok(result) => return result,
                // Over the Active budget: wait for an engine to go idle.
                Err(back) => {
                    request = back;
                    state = self.wait(state, Some(deadline), name)?;
                }
            }
        }
    }

    pub fn status(&self) -> Vec<ExpertStatus> {
        let state = self.lock();
        state.iter().map(|(name, e)| status(name, e)).collect()
    }

    pub fn usage(&self) -> Vec<TierUsage> {
        usage(&self.lock(), &self.budgets)
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn status_of(&self, name: &str) -> Result<ExpertStatus, WorkerError> {
        let state = self.lock();
        let entry = state.get(name).ok_or_else(|| unknown(&state, name))?;
        Ok(status(name, entry))
    }

    /// Queues on a Device expert. `Err(request)`: not on Device, or over the Active budget.
    fn submit_locked(
        &self,
        state: &mut State,
        name: &str,
        request: EngineRequest,
    ) -> Result<Result<(), WorkerError>, EngineRequest> {
        let active_used = used(state, Tier::Active);
        let Some(entry) = state.get_mut(name) else {
            return Ok(Err(unknown_in(name)));
        };
        let Residence::Device(engine) = &entry.residence else {
            return Err(request);
        };
        let joins_active = engine.in_flight() == 0;
        if joins_active && active_used + entry.info.weight_bytes > self.budgets.active_bytes {
            return Err(request);
        }
        entry.last_used = Instant::now();
        Ok(engine.submit(request))
    }

    /// Returns with the expert on Device and the lock held.
    fn promote_locked<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        name: &str,
        deadline: Instant,
    ) -> Result<MutexGuard<'a, State>, WorkerError> {
        let mut missed = false;
        loop {
            let entry = state.get(name).ok_or_else(|| unknown(&state, name))?;
            let from = match &entry.residence {
                Residence::Device(_) => return Ok(state),
                Residence::Moving { .. } => {
                    state = self.wait(state, Some(deadline), name)?;
                    continue;
                }
                Residence::Storage => Tier::Storage,
                Residence::Host(_) => Tier::Host,
            };
            if !missed {
                stats::lookup(Tier::Device, false);
                stats::lookup(Tier::Host, from == Tier::Host);
                missed = true;
            }
            let needed = entry.info.weight_bytes;
            let candidates = candidates(&state, name);
            let used = used(&state, Tier::Device);
            match plan_room(&candidates, used, self.budgets.device_bytes, needed) {
                Plan::Evict(victims) => {
                    drop(state);
                    self.promote(name, from, &victims)?;
                    state = self.lock();
                }
                Plan::Wait => state = self.wait(state, Some(deadline), name)?,
                Plan::Impossible => return Err(self.exhausted(&state, name, needed)),
            }
        }
    }

    fn wait<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        deadline: Option<Instant>,
        name: &str,
    ) -> Result<MutexGuard<'a, State>, WorkerError> {
        let Some(deadline) = deadline else {
            return Ok(self.shared.changed.wait(state).expect("tier state lock"));
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let needed = state.get(name).map_or(0, |e| e.info.weight_bytes);
            return Err(self.exhausted(&state, name, needed));
        }
        let (state, _) = self
            .shared
            .changed
            .wait_timeout(state, left)
            .expect("tier state lock");
        Ok(state)
    }

    fn exhausted(&self, state: &State, name: &str, needed: u64) -> WorkerError {
        let usage = usage(state, &self.budgets)
            .iter()
            .map(|u| format!("{} {}/{} B", u.tier.as_str(), u.used_bytes, u.budget_bytes))
            .collect::<Vec<_>>()
            .join(", ");
        WorkerError::TiersExhausted {
            expert: name.to_string(),
            bytes: needed,
            usage,
        }
    }

    fn publish(&self, state: &State) {
        for u in usage(state, &self.budgets) {
            stats::usage(u.tier, u.used_bytes, u.budget_bytes);
        }
    }

    fn notify(&self) {
        let _held = self.lock();
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("tier state lock")
    }
}

fn idle_on_device(state: &State, name: &str) -> bool {
    matches!(
        state.get(name).map(|e| &e.residence),
        Some(Residence::Device(engine)) if engine.in_flight() == 0
    )
}

fn candidates(state: &State, except: &str) -> Vec<Candidate> {
    let now = Instant::now();
    state
        .iter()
        .filter(|(n, e)| *n != except && e.in_tier(Tier::Device))
        .map(|(n, e)| Candidate {
            name: n.clone(),
            bytes: e.info.weight_bytes,
            idle: idle_on_device(state, n),
            pinned: e.pinned,
            since_last_use: now.duration_since(e.last_used),
            reload_cost: e.reload_cost,
        })
        .collect()
}

fn used(state: &State, tier: Tier) -> u64 {
    state
        .values()
        .filter(|e| e.in_tier(tier))
        .map(|e| e.info.weight_bytes)
        .sum()
}

fn usage(state: &State, budgets: &TierBudgets) -> Vec<TierUsage> {
    let storage: u64 = state
        .values()
        .filter(|e| e.tier() == Tier::Storage)
        .map(|e| e.info.file_bytes)
        .sum();
    [
        (Tier::Active, budgets.active_bytes),
        (Tier::Device, budgets.device_bytes),
        (Tier::Host, budgets.host_bytes),
    ]
    .into_iter()
    .map(|(tier, budget_bytes)| TierUsage {
        tier,
        budget_bytes,
        used_bytes: used(state, tier),
    })
    .chain(std::iter::once(TierUsage {
        tier: Tier::Storage,
        budget_bytes: 0,
        used_bytes: storage,
    }))
    .collect()
}

fn status(name: &str, e: &Entry) -> ExpertStatus {
    let (queued, active) = match &e.residence {
        Residence::Device(engine) => (engine.queued(), engine.active()),
        _ => (0, 0),
    };
    ExpertStatus {
        name: name.to_string(),
        path: e.spec.path.clone(),
        tier: e.tier(),
        pinned: e.pinned,
        info: e.info.clone(),
        queued,
        active,
        promotions: e.promotions,
    }
}

fn unknown(state: &State, name: &str) -> WorkerError {
    WorkerError::unknown(name, &state.keys().cloned().collect::<Vec<_>>())
}

fn unknown_in(name: &str) -> WorkerError {
    WorkerError::unknown(name, &[])
}
