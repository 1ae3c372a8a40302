//! The routing decision: calibrated category probabilities -> the expert that answers, through a
//! category map, with a fallback expert when the classifier is not confident enough, and a way for
//! the client to name the expert itself.

use std::collections::HashMap;

use coe_core::ExpertName;
use serde::Serialize;

/// One category and the classifier's calibrated probability for it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CategoryScore {
    pub category: String,
    pub probability: f32,
}

/// Why the decision picked its expert (the proto's `RouteReason`, less the multi-expert case the
/// aggregator decides).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteReason {
    /// The top category was confident enough and maps to the expert.
    TopCategory,
    /// The top probability was under the threshold (or the top category has no expert).
    LowConfidenceFallback,
    /// The client named the expert; nothing was classified.
    ExplicitExpert,
}

impl RouteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteReason::TopCategory => "top_category",
            RouteReason::LowConfidenceFallback => "low_confidence_fallback",
            RouteReason::ExplicitExpert => "explicit_expert",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteDecision {
    /// Highest probability first; empty for an explicit expert.
    pub categories: Vec<CategoryScore>,
    pub expert: ExpertName,
    pub reason: RouteReason,
    /// The confidence under which the fallback expert answers.
    pub threshold: f32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("the confidence threshold must be in [0, 1] (got {0})")]
    BadThreshold(f32),
    #[error(
        "categories {0:?} have no expert in the category map; add them or retrain without them"
    )]
    UnmappedCategories(Vec<String>),
}

/// Category -> expert, the fallback expert and the confidence threshold.
#[derive(Clone, Debug)]
pub struct RoutingTable {
    experts: HashMap<String, ExpertName>,
    fallback: ExpertName,
    threshold: f32,
}

impl RoutingTable {
    pub fn new(
        experts: HashMap<String, ExpertName>,
        fallback: ExpertName,
        threshold: f32,
    ) -> Result<Self, RouteError> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(RouteError::BadThreshold(threshold));
        }
        Ok(Self {
            experts,
            fallback,
            threshold,
        })
    }

    /// Checks at start-up that every category the classifier can output has an expert, so that a
    /// mis-configured map fails loudly instead of silently sending a category to the fallback.
    pub fn check_covers(&self, categories: &[String]) -> Result<(), RouteError> {
        let missing: Vec<String> = categories
            .iter()
            .filter(|c| !self.experts.contains_key(*c))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(RouteError::UnmappedCategories(missing))
        }
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn fallback(&self) -> &ExpertName {
        &self.fallback
    }

    /// Routes on classifier scores (in any order): the top category's expert if its probability
    /// reaches the threshold, else the fallback expert.
    pub fn decide(&self, mut scores: Vec<CategoryScore>) -> RouteDecision {
        scores.sort_by(|a, b| b.probability.total_cmp(&a.probability));
        let chosen = scores
            .first()
            .filter(|top| top.probability >= self.threshold)
            .and_then(|top| self.experts.get(&top.category));
        let (expert, reason) = match chosen {
            Some(expert) => (expert.clone(), RouteReason::TopCategory),
            None => (self.fallback.clone(), RouteReason::LowConfidenceFallback),
        };
        RouteDecision {
            categories: scores,
            expert,
            reason,
            threshold: self.threshold,
        }
    }

    /// The decision for a client that named its expert: no classification at all.
    pub fn explicit(&self, expert: ExpertName) -> RouteDecision {
        RouteDecision {
            categories: Vec::new(),
            expert,
            reason: RouteReason::ExplicitExpert,
            threshold: self.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ExpertName {
        ExpertName::parse(s).unwrap()
    }

    fn table(threshold: f32) -> RoutingTable {
        let map = [
            ("code", "qwen-coder"),
            ("math", "qwen-coder"),
            ("general_chat", "smollm2"),
        ]
        .into_iter()
        .map(|(c, e)| (c.to_string(), name(e)))
        .collect();
        RoutingTable::new(map, name("smollm2"), threshold).unwrap()
    }

    fn scores(pairs: &[(&str, f32)]) -> Vec<CategoryScore> {
        pairs
            .iter()
            .map(|(c, p)| CategoryScore {
                category: c.to_string(),
                probability: *p,
            })
            .collect()
    }

    #[test]
    fn confident_top_category_goes_to_its_expert_and_scores_are_sorted() {
        let d = table(0.5).decide(scores(&[
            ("general_chat", 0.1),
            ("code", 0.8),
            ("math", 0.1),
        ]));
        assert_eq!(d.expert.as_str(), "qwen-coder");
        assert_eq!(d.reason, RouteReason::TopCategory);
        assert_eq!(d.categories[0].category, "code");
        assert!(d
            .categories
            .windows(2)
            .all(|w| w[0].probability >= w[1].probability));
        assert_eq!(d.threshold, 0.5);
    }

    #[test]
    fn low_confidence_goes_to_the_fallback() {
        let d = table(0.6).decide(scores(&[
            ("code", 0.45),
            ("math", 0.4),
            ("general_chat", 0.15),
        ]));
        assert_eq!(d.expert.as_str(), "smollm2");
        assert_eq!(d.reason, RouteReason::LowConfidenceFallback);
        assert_eq!(d.categories.len(), 3);
    }

    #[test]
    fn probability_equal_to_the_threshold_is_confident() {
        let d = table(0.5).decide(scores(&[("math", 0.5), ("code", 0.5)]));
        assert_eq!(d.reason, RouteReason::TopCategory);
    }

    #[test]
    fn unmapped_category_falls_back_and_is_caught_at_start() {
        let t = table(0.1);
        let d = t.decide(scores(&[("law", 0.9), ("code", 0.1)]));
        assert_eq!(
            (d.expert.as_str(), d.reason),
            ("smollm2", RouteReason::LowConfidenceFallback)
        );
        assert_eq!(
            t.check_covers(&["code".into(), "law".into()]),
            Err(RouteError::UnmappedCategories(vec!["law".into()]))
        );
        assert!(t.check_covers(&["code".into(), "math".into()]).is_ok());
    }

    #[test]
    fn explicit_expert_skips_classification() {
        let d = table(0.5).explicit(name("gemma3"));
        assert_eq!(d.expert.as_str(), "gemma3");
        assert_eq!(d.reason, RouteReason::ExplicitExpert);
        assert!(d.categories.is_empty());
    }

    #[test]
    fn out_of_range_threshold_is_rejected() {
        for bad in [-0.1, 1.5, f32::NAN] {
            let err = RoutingTable::new(HashMap::new(), name("x"), bad).unwrap_err();
            assert!(matches!(err, RouteError::BadThreshold(_)));
        }
    }

    #[test]
    fn no_scores_at_all_fall_back() {
        let d = table(0.0).decide(Vec::new());
        assert_eq!(d.reason, RouteReason::LowConfidenceFallback);
    }
}
