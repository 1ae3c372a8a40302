//! Classifying a labelled file with a trained classifier and scoring the result.

use crate::embed::Embedder;

use super::cache::EmbeddingCache;
use super::dataset::Example;
use super::metrics::EvalReport;
use super::{Classifier, ClassifyError};

/// Embeds every prompt (through `cache`) and compares the classifier's calibrated predictions with
/// the labels. Categories the classifier does not know are kept as rows of the report, all wrong.
pub fn evaluate(
    examples: &[Example],
    classifier: &dyn Classifier,
    embedder: &mut dyn Embedder,
    cache: &mut EmbeddingCache,
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport, ClassifyError> {
    let known: Vec<String> = classifier.labels().to_vec();
    let mut true_labels = known.clone();
    for e in examples {
        if !true_labels.contains(&e.category) {
            true_labels.push(e.category.clone());
        }
    }
    let truth: Vec<usize> = examples
        .iter()
        .map(|e| {
            true_labels
                .iter()
                .position(|l| *l == e.category)
                .expect("added above")
        })
        .collect();
    let texts: Vec<&str> = examples.iter().map(|e| e.prompt.as_str()).collect();
    let vectors = cache.embed_all(embedder, &texts, batch, progress)?;
    let probs: Vec<Vec<f32>> = vectors
        .iter()
        .map(|v| classifier.probabilities(v))
        .collect();
    Ok(EvalReport::new(true_labels, known, &truth, &probs))
}
