//! The moves themselves: promotion to Device (demoting the planned victims first), staging from
//! Storage into Host, demotions, and explicit moves. Each runs outside the state lock with the expert
//! marked `Moving`, and lands under the lock.
use std::path::Path;
use std::time::{Duration, Instant};

use coe_core::Tier;
use coe_models::QuantizedModel;

use super::{idle_on_device, stats, unknown_in, used, Residence, State, TierManager};
use crate::engine::EngineHandle;
use crate::error::WorkerError;
use crate::expert::{ExpertHeader, LoadedExpert};

impl TierManager {
    /// Demotes `victims` (idle, chosen under the lock) and promotes `name` from `from` to Device.
    pub(super) fn promote(
        &self,
        name: &str,
        from: Tier,
        victims: &[String],
    ) -> Result<(), WorkerError> {
        let mut state = self.lock();
        // The plan was made under an earlier hold of the lock: if the expert moved meanwhile or a
        // victim took a request, change nothing and let the caller plan again.
        let planned = state.get(name).is_some_and(|e| e.tier() == from);
        if !planned || !victims.iter().all(|v| idle_on_device(&state, v)) {
            return Ok(());
        }
        let mut engines = Vec::new();
        for victim in victims {
            let entry = state.get_mut(victim).expect("checked above");
            let moving = Residence::Moving {
                from: Tier::Device,
                to: Tier::Host,
            };
            if let Residence::Device(engine) = std::mem::replace(&mut entry.residence, moving) {
                engines.push((victim.clone(), engine));
            }
        }
        let entry = state.get_mut(name).expect("checked above");
        let staged = std::mem::replace(
            &mut entry.residence,
            Residence::Moving {
                from,
                to: Tier::Device,
            },
        );
        let (header, path) = (entry.header.clone(), entry.spec.path.clone());
        drop(state);
        self.finish_demotions(engines);

        let started = Instant::now();
        let built = match staged {
            Residence::Host(model) => Ok(*model),
            _ => self.stage(name, &header, &path),
        };
        let mut state = self.lock();
        let entry = state
            .get_mut(name)
            .expect("a moving expert is never removed");
        match built {
            Ok(model) => {
                let handed = Instant::now();
                let loaded = LoadedExpert::from_parts(&header, model);
                entry.info = loaded.info.clone();
                let shared = self.shared.clone();
                let engine =
                    EngineHandle::spawn(name.to_string(), loaded, self.limits, move || {
                        let _held = shared.state.lock();
                        shared.changed.notify_all();
                    });
                entry.residence = Residence::Device(engine);
                entry.promotions += 1;
                entry.reload_cost = started.elapsed();
                stats::moved(
                    name,
                    Tier::Host,
                    Tier::Device,
                    entry.info.weight_bytes,
                    handed.elapsed(),
                );
                self.publish(&state);
                drop(state);
                self.notify();
                Ok(())
            }
            Err(e) => {
                entry.residence = Residence::Storage;
                drop(state);
                self.notify();
                Err(e)
            }
        }
    }

    /// Storage -> Host: reads the file (large sequential reads) and repacks its tensors.
    fn stage(
        &self,
        name: &str,
        header: &ExpertHeader,
        path: &Path,
    ) -> Result<QuantizedModel, WorkerError> {
        let started = Instant::now();
        let model = header.build_model(path, self.max_context)?;
        stats::moved(
            name,
            Tier::Storage,
            Tier::Host,
            model.weight_bytes(),
            started.elapsed(),
        );
        Ok(model)
    }

    /// Drains demoted engines, then stages their models in Host where the Host budget has room
    /// (dropping least recently used Host experts to Storage), else drops them to Storage.
    pub(super) fn finish_demotions(&self, engines: Vec<(String, EngineHandle)>) {
        for (name, engine) in engines {
            let started = Instant::now();
            let model = engine.drain();
            let mut state = self.lock();
            let bytes = model.as_ref().map_or(0, |m| m.weight_bytes());
            let to = match model {
                Some(model) if self.make_host_room(&mut state, &name, bytes) => {
                    Residence::Host(Box::new(model))
                }
                _ => Residence::Storage,
            };
            let tier = if matches!(to, Residence::Host(_)) {
                Tier::Host
            } else {
                Tier::Storage
            };
            if let Some(entry) = state.get_mut(&name) {
                entry.residence = to;
            }
            stats::moved(&name, Tier::Device, tier, bytes, started.elapsed());
            self.publish(&state);
        }
        self.notify();
    }

    /// Drops idle, unpinned Host experts (least recently used first) to Storage until `bytes` fit.
    fn make_host_room(&self, state: &mut State, name: &str, bytes: u64) -> bool {
        let budget = self.budgets.host_bytes;
        let mut host: Vec<(Instant, String, u64)> = state
            .iter()
            .filter(|(n, e)| *n != name && !e.pinned && matches!(e.residence, Residence::Host(_)))
            .map(|(n, e)| (e.last_used, n.clone(), e.info.weight_bytes))
            .collect();
        host.sort();
        let mut used = used(state, Tier::Host).saturating_sub(bytes);
        if bytes > budget {
            return false;
        }
        for (_, victim, victim_bytes) in host {
            if used + bytes <= budget {
                break;
            }
            if let Some(entry) = state.get_mut(&victim) {
                entry.residence = Residence::Storage;
                used -= victim_bytes;
                stats::moved(
                    &victim,
                    Tier::Host,
                    Tier::Storage,
                    victim_bytes,
                    Duration::ZERO,
                );
            }
        }
        used + bytes <= budget
    }

    /// Explicit moves (preload, MoveExpert, registration).
    pub(super) fn move_to(&self, name: &str, tier: Tier) -> Result<(), WorkerError> {
        let deadline = Instant::now() + self.budgets.wait;
        if matches!(tier, Tier::Device | Tier::Active) {
            let state = self.promote_locked(self.lock(), name, deadline)?;
            drop(state);
            return Ok(());
        }
        let mut state = self.lock();
        loop {
            let entry = state.get_mut(name).ok_or_else(|| unknown_in(name))?;
            match (&entry.residence, tier) {
                (Residence::Moving { .. }, _) => {
                    state = self.wait(state, Some(deadline), name)?;
                }
                (Residence::Storage, Tier::Storage) | (Residence::Host(_), Tier::Host) => {
                    return Ok(())
                }
                (Residence::Host(_), _) => {
                    entry.residence = Residence::Storage;
                    stats::moved(
                        name,
                        Tier::Host,
                        Tier::Storage,
                        entry.info.weight_bytes,
                        Duration::ZERO,
                    );
                    self.publish(&state);
                    return Ok(());
                }
                (Residence::Device(_), _) => {
                    let moving = Residence::Moving {
                        from: Tier::Device,
                        to: tier,
                    };
                    let Residence::Device(engine) = std::mem::replace(&mut entry.residence, moving)
                    else {
                        unreachable!("matched Device above")
                    };
                    let draining = engine.in_flight();
                    drop(state);
                    tracing::info!(
                        expert = name,
                        draining,
                        "demoting: waiting for accepted requests"
                    );
                    self.finish_demotions(vec![(name.to_string(), engine)]);
                    state = self.lock();
                    if tier == Tier::Storage {
                        if let Some(entry) = state.get_mut(name) {
                            entry.residence = Residence::Storage;
                        }
                        self.publish(&state);
                        return Ok(());
                    }
                }
                (Residence::Storage, _) => {
                    let bytes = entry.info.weight_bytes;
                    if !self.make_host_room(&mut state, name, bytes) {
                        return Err(self.exhausted(&state, name, bytes));
                    }
                    let entry = state.get_mut(name).expect("checked above");
                    entry.residence = Residence::Moving {
                        from: Tier::Storage,
                        to: Tier::Host,
                    };
                    let (header, path) = (entry.header.clone(), entry.spec.path.clone());
                    drop(state);
                    let staged = self.stage(name, &header, &path);
                    state = self.lock();
                    let entry = state
                        .get_mut(name)
                        .expect("a moving expert is never removed");
                    let (residence, result) = match staged {
                        Ok(model) => (Residence::Host(Box::new(model)), Ok(())),
                        Err(e) => (Residence::Storage, Err(e)),
                    };
                    entry.residence = residence;
                    self.publish(&state);
                    drop(state);
                    self.notify();
                    return result;
                }
            }
        }
    }
}
