//! The tier manager's Prometheus metrics (`coe_tier_*`) and the counters GetStatus and tests read.
use std::time::Duration;

use coe_core::Tier;

/// A request found its expert in `tier` (hit) or had to bring it there (miss).
pub fn lookup(tier: Tier, hit: bool) {
    let name = if hit {
        "coe_tier_hits_total"
    } else {
        "coe_tier_misses_total"
    };
    metrics::counter!(name, "tier" => tier.as_str()).increment(1);
}

/// One move of an expert's weights between tiers.
pub fn moved(expert: &str, from: Tier, to: Tier, bytes: u64, took: Duration) {
    let labels = [("from", from.as_str()), ("to", to.as_str())];
    metrics::counter!("coe_tier_moved_bytes_total", &labels).increment(bytes);
    metrics::counter!("coe_tier_moves_total", &labels).increment(1);
    metrics::histogram!("coe_tier_swap_seconds", &labels).record(took.as_secs_f64());
    tracing::info!(
        expert,
        from = from.as_str(),
        to = to.as_str(),
        bytes,
        ms = took.as_secs_f64() * 1e3,
        "tier move"
    );
}

/// Budget and use of one tier, published after every change.
pub fn usage(tier: Tier, used: u64, budget: u64) {
    metrics::gauge!("coe_tier_used_bytes", "tier" => tier.as_str()).set(used as f64);
    metrics::gauge!("coe_tier_budget_bytes", "tier" => tier.as_str()).set(budget as f64);
}
