//! The classification path of one query, as the gRPC layer calls it: explicit expert, or embed
//! (through the batcher) -> classify -> route.

use std::sync::Arc;
use std::time::Instant;

use coe_core::ExpertName;

use crate::classify::{ArtifactError, Classifier};
use crate::config::{MapError, MapHandle};
use crate::embed::{EmbedBatcher, EmbedError};
use crate::route::{RouteDecision, RouteError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Map(#[from] MapError),
}

/// A decision and how long classification took (0 for an explicit expert).
#[derive(Clone, Debug)]
pub struct Classified {
    pub decision: RouteDecision,
    pub classify_ms: f64,
}

pub struct QueryRouter {
    batcher: EmbedBatcher,
    classifier: Arc<dyn Classifier>,
    maps: MapHandle,
}

impl QueryRouter {
    /// Checks at start-up that the classifier was trained on this embedder and that every one of
    /// its categories has an expert in the map in force. Later maps are checked when they replace it.
    pub fn new(
        batcher: EmbedBatcher,
        classifier: Arc<dyn Classifier>,
        maps: MapHandle,
    ) -> Result<Self, PipelineError> {
        if classifier.embedder() != batcher.identity() {
            return Err(ArtifactError::WrongEmbedder {
                path: "classifier".into(),
                trained: format!("{:?}", classifier.embedder()),
                running: format!("{:?}", batcher.identity()),
            }
            .into());
        }
        maps.current().table.check_covers(classifier.labels())?;
        Ok(Self {
            batcher,
            classifier,
            maps,
        })
    }

    pub fn maps(&self) -> &MapHandle {
        &self.maps
    }

    pub fn classifier(&self) -> &dyn Classifier {
        self.classifier.as_ref()
    }

    /// Routes `text`, or goes straight to `explicit` when the client named an expert.
    pub async fn route(
        &self,
        text: &str,
        explicit: Option<ExpertName>,
    ) -> Result<Classified, PipelineError> {
        if let Some(expert) = explicit {
            return Ok(Classified {
                decision: self.maps.current().table.explicit(expert),
                classify_ms: 0.0,
            });
        }
        let started = Instant::now();
        let embedding = self.batcher.embed(text).await?;
        let scores = self.classifier.scores(&embedding);
        Ok(Classified {
            decision: self.maps.current().table.decide(scores),
            classify_ms: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}
