//! Turns one request and the current state into the changes to commit, or the reason it is refused.
//! Pure functions over a [`Snapshot`]: no I/O, so a refused request provably writes nothing, and a
//! commit that lost a race is simply re-planned on the newer snapshot.
use std::collections::BTreeSet;

use coe_core::ExpertName;
use coe_proto::v1 as pb;

use crate::error::RegistryError;
use crate::store::{Change, Snapshot};
use crate::validate::{check_category, VerifiedGguf};

/// The threshold of a map the registry creates itself (the first add with a category); `coe map set`
/// uses the same default.
pub const DEFAULT_CONFIDENCE_THRESHOLD: f32 = 0.5;

/// An add that passed the request and file checks, waiting for the state-dependent ones.
#[derive(Clone, Debug)]
pub struct NewExpert {
    pub name: ExpertName,
    pub file: VerifiedGguf,
    pub categories: Vec<String>,
    pub skills: Vec<pb::Skill>,
    pub placement: Option<pb::Placement>,
}

/// Checks the parts of an add request that need no state: categories, skills, placement. Returns the
/// categories de-duplicated, in the order given.
pub fn check_add_request(
    categories: &[String],
    skills: &[pb::Skill],
    placement: Option<&pb::Placement>,
) -> Result<Vec<String>, RegistryError> {
    let mut seen = BTreeSet::new();
    let mut unique = Vec::new();
    for category in categories {
        check_category(category)?;
        if seen.insert(category.as_str()) {
            unique.push(category.clone());
        }
    }
    for skill in skills {
        if skill.name.trim().is_empty() {
            return Err(RegistryError::InvalidArgument(
                "a skill needs a name".into(),
            ));
        }
        if !(0.0..=1.0).contains(&skill.score) {
            return Err(RegistryError::InvalidArgument(format!(
                "skill {:?} has score {}; scores are accuracies in 0..=1",
                skill.name, skill.score
            )));
        }
    }
    if let Some(placement) = placement {
        check_placement(placement)?;
    }
    Ok(unique)
}

pub fn check_placement(placement: &pb::Placement) -> Result<(), RegistryError> {
    if pb::Tier::try_from(placement.tier).is_err() {
        return Err(RegistryError::InvalidArgument(format!(
            "unknown tier {}; use TIER_STORAGE, TIER_HOST, TIER_DEVICE or TIER_ACTIVE",
            placement.tier
        )));
    }
    if placement.worker.chars().any(|c| c.is_control() || c == '/') {
        return Err(RegistryError::InvalidArgument(format!(
            "worker id {:?} may not hold '/' or control characters",
            placement.worker
        )));
    }
    Ok(())
}

fn known_experts(state: &Snapshot) -> String {
    if state.experts.is_empty() {
        "(none)".into()
    } else {
        state.experts.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn unknown_expert(state: &Snapshot, name: &str) -> RegistryError {
    RegistryError::UnknownExpert {
        name: name.to_string(),
        known: known_experts(state),
    }
}

/// The record, then (when it names categories the map does not send to it yet) a new map version
/// sending them to it:
/// the expert exists before any map names it, for followers applying events in order. A map without
/// a fallback yet gets this expert as its fallback, so every map version is one a rollback can
/// restore.
pub fn plan_add(state: &Snapshot, expert: &NewExpert) -> Result<Vec<Change>, RegistryError> {
    let name = expert.name.as_str();
    if state.experts.contains_key(name) {
        return Err(RegistryError::AlreadyExists(name.to_string()));
    }
    let record = pb::ExpertRecord {
        name: name.to_string(),
        path: expert.file.path.display().to_string(),
        sha256: expert.file.sha256.clone(),
        size_bytes: expert.file.size_bytes,
        architecture: expert.file.architecture.clone(),
        categories: expert.categories.clone(),
        skills: expert.skills.clone(),
        placement: expert.placement.clone(),
        revision: 0,
    };
    let mut changes = vec![Change::ExpertUpserted(record)];
    // The categories an expert is added with are the ones it answers from now on: new ones join
    // the map and mapped ones move to it, in a new map version (so `coe map rollback` undoes it).
    let moved_categories: Vec<&String> = expert
        .categories
        .iter()
        .filter(|c| {
            state
                .map
                .category_to_expert
                .get(c.as_str())
                .map(String::as_str)
                != Some(name)
        })
        .collect();
    if !moved_categories.is_empty() {
        let mut map = state.map.clone();
        map.version += 1;
        for category in moved_categories {
            map.category_to_expert
                .insert(category.clone(), name.to_string());
        }
        if map.fallback_expert.is_empty() {
            map.fallback_expert = name.to_string();
        }
        if map.version == 1 {
            map.confidence_threshold = DEFAULT_CONFIDENCE_THRESHOLD;
        }
        changes.push(Change::CategoryMap(map));
    }
    Ok(changes)
}

/// The categories that send requests to `name`, sorted.
fn categories_of(map: &pb::CategoryMap, name: &str) -> Vec<String> {
    let mut categories: Vec<String> = map
        .category_to_expert
        .iter()
        .filter(|(_, expert)| expert.as_str() == name)
        .map(|(category, _)| category.clone())
        .collect();
    categories.sort();
    categories
}

/// Refuses while the map still routes to the expert, unless `force`, which first commits a map
/// version sending those categories to the fallback. Returns the changes and the remapped categories.
pub fn plan_remove(
    state: &Snapshot,
    name: &str,
    force: bool,
) -> Result<(Vec<Change>, Vec<String>), RegistryError> {
    if !state.experts.contains_key(name) {
        return Err(unknown_expert(state, name));
    }
    if state.map.fallback_expert == name {
        return Err(RegistryError::FailedPrecondition(format!(
            "expert {name:?} is the category map's fallback; set another fallback with `coe map set` first"
        )));
    }
    let categories = categories_of(&state.map, name);
    let mut changes = Vec::new();
    if !categories.is_empty() {
        if !force {
            return Err(RegistryError::ExpertInUse {
                name: name.to_string(),
                categories,
            });
        }
        let fallback = &state.map.fallback_expert;
        if fallback.is_empty() {
            return Err(RegistryError::FailedPrecondition(format!(
                "cannot remap categories {categories:?} of expert {name:?}: the category map has no fallback expert; set one with `coe map set`"
            )));
        }
        let mut map = state.map.clone();
        map.version += 1;
        for category in &categories {
            map.category_to_expert
                .insert(category.clone(), fallback.clone());
        }
        changes.push(Change::CategoryMap(map));
    }
    changes.push(Change::ExpertRemoved(name.to_string()));
    Ok((changes, categories))
}

/// Checks a map's own shape and that every expert it names is registered.
fn check_map(state: &Snapshot, map: &pb::CategoryMap) -> Result<(), RegistryError> {
    for category in map.category_to_expert.keys() {
        check_category(category)?;
    }
    if map.fallback_expert.is_empty() {
        return Err(RegistryError::InvalidArgument(
            "the category map needs a fallback expert for low-confidence requests".into(),
        ));
    }
    if !(0.0..=1.0).contains(&map.confidence_threshold) {
        return Err(RegistryError::InvalidArgument(format!(
            "confidence threshold {} is not in 0..=1",
            map.confidence_threshold
        )));
    }
    let missing: BTreeSet<String> = map
        .category_to_expert
        .values()
        .chain(std::iter::once(&map.fallback_expert))
        .filter(|expert| !state.experts.contains_key(expert.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(RegistryError::MapNamesUnknownExperts(
            missing.into_iter().collect(),
        ));
    }
    Ok(())
}

/// Every map change is a new version, one past the current; the client's `version` is ignored.
pub fn plan_set_map(state: &Snapshot, map: &pb::CategoryMap) -> Result<Vec<Change>, RegistryError> {
    check_map(state, map)?;
    let mut map = map.clone();
    map.version = state.map.version + 1;
    Ok(vec![Change::CategoryMap(map)])
}

/// Rolling back appends a new version with an earlier version's content, so history only grows and
/// followers see the change like any other. `earlier` is that version as stored, if it exists.
pub fn plan_rollback(
    state: &Snapshot,
    to_version: u64,
    earlier: Option<pb::CategoryMap>,
) -> Result<Vec<Change>, RegistryError> {
    let earlier = earlier
        .filter(|_| to_version != 0)
        .ok_or(RegistryError::UnknownMapVersion {
            version: to_version,
            latest: state.map.version,
        })?;
    check_map(state, &earlier)?;
    plan_set_map(state, &earlier)
}

pub fn plan_assign(
    state: &Snapshot,
    name: &str,
    placement: &pb::Placement,
) -> Result<Vec<Change>, RegistryError> {
    check_placement(placement)?;
    let mut record = state
        .experts
        .get(name)
        .cloned()
        .ok_or_else(|| unknown_expert(state, name))?;
    record.placement = Some(placement.clone());
    Ok(vec![Change::ExpertUpserted(record)])
}

/// Looks up an expert for GetExpert.
pub fn find_expert(state: &Snapshot, name: &str) -> Result<pb::ExpertRecord, RegistryError> {
    state
        .experts
        .get(name)
        .cloned()
        .ok_or_else(|| unknown_expert(state, name))
}
