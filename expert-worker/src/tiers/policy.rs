//! Which Device experts to demote to make room for a promotion: least recently used first, weighted
//! by what the expert would cost to bring back. Pure, so the policy is tested without models.
use std::time::Duration;

/// A Device expert as the policy sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub name: String,
    pub bytes: u64,
    /// No request queued or computing: it can be demoted now.
    pub idle: bool,
    pub pinned: bool,
    pub since_last_use: Duration,
    /// What promoting it again took last time (or an estimate).
    pub reload_cost: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Demote these (possibly none), then promote.
    Evict(Vec<String>),
    /// Busy experts hold the room; it frees when their requests finish.
    Wait,
    /// Pinned experts (or the request's own size) leave no way to make room.
    Impossible,
}

/// Plans room for `needed` bytes in a tier holding `used` of `budget` bytes.
pub fn plan_room(candidates: &[Candidate], used: u64, budget: u64, needed: u64) -> Plan {
    if needed > budget {
        return Plan::Impossible;
    }
    if used + needed <= budget {
        return Plan::Evict(Vec::new());
    }
    let mut evictable: Vec<&Candidate> =
        candidates.iter().filter(|c| c.idle && !c.pinned).collect();
    // Lowest keep-score first: an expert used long ago and cheap to reload goes before one used just
    // now or slow to bring back.
    evictable.sort_by(|a, b| keep_score(a).total_cmp(&keep_score(b)));
    let mut freed = 0u64;
    let mut victims = Vec::new();
    for candidate in evictable {
        if used - freed + needed <= budget {
            break;
        }
        freed += candidate.bytes;
        victims.push(candidate.name.clone());
    }
    if used - freed + needed <= budget {
        return Plan::Evict(victims);
    }
    let unpinned: u64 = candidates
        .iter()
        .filter(|c| !c.pinned)
        .map(|c| c.bytes)
        .sum();
    if used.saturating_sub(unpinned) + needed <= budget {
        Plan::Wait
    } else {
        Plan::Impossible
    }
}

fn keep_score(c: &Candidate) -> f64 {
    c.reload_cost.as_secs_f64().max(1e-3) / (c.since_last_use.as_secs_f64() + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(
        name: &str,
        bytes: u64,
        idle: bool,
        pinned: bool,
        age_s: u64,
        cost_ms: u64,
    ) -> Candidate {
        Candidate {
            name: name.into(),
            bytes,
            idle,
            pinned,
            since_last_use: Duration::from_secs(age_s),
            reload_cost: Duration::from_millis(cost_ms),
        }
    }

    #[test]
    fn room_left_evicts_nothing() {
        assert_eq!(
            plan_room(&[cand("a", 10, true, false, 1, 1)], 10, 100, 50),
            Plan::Evict(vec![])
        );
    }

    #[test]
    fn least_recently_used_goes_first_at_equal_cost() {
        let c = [
            cand("new", 40, true, false, 1, 100),
            cand("old", 40, true, false, 60, 100),
        ];
        assert_eq!(plan_room(&c, 80, 100, 40), Plan::Evict(vec!["old".into()]));
    }

    #[test]
    fn a_costly_reload_is_kept_over_a_cheap_one_of_the_same_age() {
        let c = [
            cand("slow", 40, true, false, 10, 5000),
            cand("fast", 40, true, false, 10, 50),
        ];
        assert_eq!(plan_room(&c, 80, 100, 40), Plan::Evict(vec!["fast".into()]));
    }

    #[test]
    fn pinned_and_busy_experts_are_never_picked() {
        let c = [
            cand("pinned", 40, true, true, 99, 1),
            cand("busy", 40, false, false, 99, 1),
        ];
        assert_eq!(plan_room(&c, 80, 100, 40), Plan::Wait);
        let c = [
            cand("pinned", 40, true, true, 99, 1),
            cand("pinned2", 40, true, true, 99, 1),
        ];
        assert_eq!(plan_room(&c, 80, 100, 40), Plan::Impossible);
    }

    #[test]
    fn a_model_larger_than_the_budget_is_impossible() {
        assert_eq!(plan_room(&[], 0, 100, 101), Plan::Impossible);
    }
}
