//! The classifier head: multinomial logistic regression on embeddings, fitted with linfa in f32
//! (twice as fast as f64 in its matrix products; the embeddings are f32 anyway).

use linfa::prelude::*;
use linfa_logistic::MultiLogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::ClassifyError;

/// Logits `W e + b` for each class. Stored row-major, one row of `dim` weights per class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearHead {
    pub classes: usize,
    pub dim: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A logit low enough that a class the head never saw gets no probability, yet finite so that
/// softmax stays well defined.
pub(super) const ABSENT_CLASS_LOGIT: f32 = -1e4;

/// How hard to fit: the L2 penalty `alpha` on `0.5 |W|^2` (added to the summed log-loss, so it is
/// sklearn's `1 / C`) and the L-BFGS iteration cap.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct FitParams {
    pub alpha: f64,
    pub max_iterations: u64,
}

impl Default for FitParams {
    fn default() -> Self {
        Self {
            alpha: 0.1,
            max_iterations: 300,
        }
    }
}

impl LinearHead {
    /// Fits rows `x` (each `dim` long) to `labels` in `0..classes`. A class without examples gets
    /// a prohibitive bias instead of failing the fit (it happens in held-out folds).
    pub fn fit(
        x: &[&[f32]],
        labels: &[usize],
        classes: usize,
        params: FitParams,
    ) -> Result<Self, ClassifyError> {
        let dim = x.first().map_or(0, |r| r.len());
        if x.is_empty() || x.len() != labels.len() {
            return Err(ClassifyError::Train("no training examples".into()));
        }
        let mut feats = Array2::<f32>::zeros((x.len(), dim));
        for (mut row, src) in feats.rows_mut().into_iter().zip(x) {
            row.assign(&ndarray::ArrayView1::from(*src));
        }
        let targets = Array1::from_iter(labels.iter().copied());
        let present: Vec<usize> = {
            let mut seen = vec![false; classes];
            labels.iter().for_each(|&l| seen[l] = true);
            (0..classes).filter(|&c| seen[c]).collect()
        };
        let mut weights = vec![0.0f32; classes * dim];
        let mut bias = vec![ABSENT_CLASS_LOGIT; classes];
        if present.len() == 1 {
            // linfa needs two classes; one class is certain.
            bias[present[0]] = 0.0;
            return Ok(Self {
                classes,
                dim,
                weights,
                bias,
            });
        }
        let model = MultiLogisticRegression::default()
            .alpha(params.alpha as f32)
            .max_iterations(params.max_iterations)
            .fit(&Dataset::new(feats, targets))
            .map_err(|e| ClassifyError::Train(e.to_string()))?;
        // params is [dim, fitted classes], columns in the order of `classes()`.
        let w = model.params();
        for (j, &c) in model.classes().iter().enumerate() {
            for d in 0..dim {
                weights[c * dim + d] = w[[d, j]];
            }
            bias[c] = model.intercept()[j];
        }
        Ok(Self {
            classes,
            dim,
            weights,
            bias,
        })
    }

    pub fn logits(&self, embedding: &[f32]) -> Vec<f32> {
        self.weights
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(w, b)| w.iter().zip(embedding).map(|(w, e)| w * e).sum::<f32>() + b)
            .collect()
    }
}
