//! The category map (category -> expert, fallback expert, confidence threshold): loaded from a TOML
//! or JSON file or the embedded default, checked against the experts the workers host, and held
//! behind a watch channel so that a new map (from the registry) replaces it while the router runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use coe_core::ExpertName;
use coe_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::route::{RouteError, RoutingTable};

/// The map shipped with coe, for the eight categories and the three default experts; the reasons
/// for each choice are written in the file.
pub const DEFAULT_CATEGORY_MAP: &str = include_str!("../category_map.toml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryMap {
    /// Category -> the expert that answers it.
    pub categories: BTreeMap<String, String>,
    /// Answers when the top category's probability is under `threshold`.
    pub fallback: String,
    pub threshold: f32,
    /// The registry's version of the map; 0 for a file.
    #[serde(default)]
    pub version: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("could not read the category map {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the category map {path} is not valid {format}: {reason}")]
    Parse {
        path: String,
        format: &'static str,
        reason: String,
    },
    #[error("the category map names an invalid expert name {name:?}: {reason}")]
    BadExpertName { name: String, reason: String },
    #[error(
        "the category map names expert {expert:?} (for {used_by}), which no worker hosts (workers host: {hosted}); \
         load the expert on a worker or change the map"
    )]
    UnhostedExpert {
        expert: String,
        used_by: String,
        hosted: String,
    },
    #[error(transparent)]
    Route(#[from] RouteError),
}

impl CategoryMap {
    pub fn embedded_default() -> Self {
        Self::parse(
            DEFAULT_CATEGORY_MAP,
            Path::new("category_map.toml (embedded)"),
        )
        .expect("the embedded category map parses")
    }

    /// Reads a `.json` file as JSON and anything else as TOML.
    pub fn load(path: &Path) -> Result<Self, MapError> {
        let text = std::fs::read_to_string(path).map_err(|e| MapError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, MapError> {
        let bad = |format, reason: String| MapError::Parse {
            path: path.display().to_string(),
            format,
            reason,
        };
        if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| bad("JSON", e.to_string()))
        } else {
            toml::from_str(text).map_err(|e| bad("TOML", e.to_string()))
        }
    }

    pub fn from_proto(map: pb::CategoryMap) -> Self {
        Self {
            categories: map.category_to_expert.into_iter().collect(),
            fallback: map.fallback_expert,
            threshold: map.confidence_threshold,
            version: map.version,
        }
    }

    /// Every expert the map names, with the categories (or "fallback") that use it.
    fn experts(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (category, expert) in &self.categories {
            out.entry(expert).or_default().push(category);
        }
        out.entry(&self.fallback).or_default().push("fallback");
        out
    }

    /// Fails with the first expert the map names that is not in `hosted`.
    pub fn check_hosted(&self, hosted: &HashSet<String>) -> Result<(), MapError> {
        for (expert, used_by) in self.experts() {
            if !hosted.contains(expert) {
                let mut names: Vec<&str> = hosted.iter().map(String::as_str).collect();
                names.sort_unstable();
                return Err(MapError::UnhostedExpert {
                    expert: expert.to_string(),
                    used_by: used_by.join(", "),
                    hosted: if names.is_empty() {
                        "none".into()
                    } else {
                        names.join(", ")
                    },
                });
            }
        }
        Ok(())
    }

    pub fn to_table(&self) -> Result<RoutingTable, MapError> {
        let parse = |name: &str| {
            ExpertName::parse(name).map_err(|e| MapError::BadExpertName {
                name: name.to_string(),
                reason: e.to_string(),
            })
        };
        let experts = self
            .categories
            .iter()
            .map(|(c, e)| Ok((c.clone(), parse(e)?)))
            .collect::<Result<HashMap<_, _>, MapError>>()?;
        Ok(RoutingTable::new(
            experts,
            parse(&self.fallback)?,
            self.threshold,
        )?)
    }
}

/// The map in force and its routing table.
#[derive(Debug)]
pub struct ActiveMap {
    pub map: CategoryMap,
    pub table: RoutingTable,
}

/// Holds the map in force; readers take a cheap snapshot per request, writers swap it whole.
#[derive(Clone)]
pub struct MapHandle {
    tx: Arc<watch::Sender<Arc<ActiveMap>>>,
}

impl MapHandle {
    pub fn new(map: CategoryMap) -> Result<Self, MapError> {
        let table = map.to_table()?;
        let (tx, _) = watch::channel(Arc::new(ActiveMap { map, table }));
        Ok(Self { tx: Arc::new(tx) })
    }

    pub fn current(&self) -> Arc<ActiveMap> {
        self.tx.borrow().clone()
    }

    /// Replaces the map after checking it routes every category `labels` names and names only
    /// hosted experts; on error the previous map stays.
    pub fn replace(
        &self,
        map: CategoryMap,
        labels: &[String],
        hosted: &HashSet<String>,
    ) -> Result<(), MapError> {
        map.check_hosted(hosted)?;
        let table = map.to_table()?;
        table.check_covers(labels)?;
        self.tx.send_replace(Arc::new(ActiveMap { map, table }));
        Ok(())
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ActiveMap>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosted(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn embedded_default_maps_the_eight_categories_to_the_default_experts() {
        let map = CategoryMap::embedded_default();
        assert_eq!(map.categories.len(), 8);
        assert_eq!(map.categories["code"], "qwen2.5-coder-0.5b-instruct");
        assert_eq!(map.categories["general_chat"], "smollm2-135m-instruct");
        let table = map.to_table().unwrap();
        let labels = crate::default_classifier().unwrap();
        table
            .check_covers(crate::classify::Classifier::labels(&labels))
            .unwrap();
        map.check_hosted(&hosted(&[
            "smollm2-135m-instruct",
            "qwen2.5-coder-0.5b-instruct",
            "gemma-3-270m",
        ]))
        .unwrap();
    }

    #[test]
    fn map_naming_an_unhosted_expert_is_rejected_with_its_name() {
        let map = CategoryMap::embedded_default();
        let err = map
            .check_hosted(&hosted(&["smollm2-135m-instruct", "gemma-3-270m"]))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"qwen2.5-coder-0.5b-instruct\""), "{msg}");
        assert!(msg.contains("code"), "{msg}");
    }

    #[test]
    fn json_and_toml_files_load_and_bad_files_say_where() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("map.json");
        std::fs::write(
            &json,
            r#"{"categories": {"code": "a"}, "fallback": "b", "threshold": 0.3}"#,
        )
        .unwrap();
        let map = CategoryMap::load(&json).unwrap();
        assert_eq!((map.fallback.as_str(), map.threshold), ("b", 0.3));
        let toml = dir.path().join("map.toml");
        std::fs::write(
            &toml,
            "fallback = \"b\"\nthreshold = 2.0\n[categories]\ncode = \"a\"\n",
        )
        .unwrap();
        let err = CategoryMap::load(&toml).unwrap().to_table().unwrap_err();
        assert!(matches!(err, MapError::Route(RouteError::BadThreshold(_))));
        std::fs::write(&toml, "fallback = ").unwrap();
        let err = CategoryMap::load(&toml).unwrap_err().to_string();
        assert!(err.contains("map.toml") && err.contains("TOML"), "{err}");
    }

    #[test]
    fn a_rejected_replacement_keeps_the_previous_map() {
        let handle = MapHandle::new(CategoryMap::embedded_default()).unwrap();
        let mut next = CategoryMap::embedded_default();
        next.categories
            .insert("code".into(), "missing-expert".into());
        let all = hosted(&[
            "smollm2-135m-instruct",
            "qwen2.5-coder-0.5b-instruct",
            "gemma-3-270m",
        ]);
        assert!(handle.replace(next, &[], &all).is_err());
        assert_eq!(
            handle.current().map.categories["code"],
            "qwen2.5-coder-0.5b-instruct"
        );
        let mut next = CategoryMap::embedded_default();
        next.threshold = 0.9;
        handle.replace(next, &[], &all).unwrap();
        assert_eq!(handle.current().table.threshold(), 0.9);
    }
}
