//! The second classifier head: a one-hidden-layer perceptron (ReLU) on embeddings, trained with
//! Adam on the softmax cross-entropy. linfa has no neural network, and the model is small enough
//! (384 -> hidden -> classes) that plain ndarray products train it in seconds.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::train::mix;
use super::ClassifyError;

/// Logits `W2 relu(W1 e + b1) + b2`; weights row-major, one row per output unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpHead {
    pub classes: usize,
    pub dim: usize,
    pub hidden: usize,
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct MlpParams {
    pub hidden: usize,
    pub epochs: usize,
    pub learning_rate: f32,
    /// Decoupled weight decay (AdamW) on both weight matrices, not the biases.
    pub weight_decay: f32,
    pub batch: usize,
    pub seed: u64,
}

impl Default for MlpParams {
    fn default() -> Self {
        Self {
            hidden: 256,
            epochs: 30,
            learning_rate: 1e-3,
            weight_decay: 1e-2,
            batch: 64,
            seed: 0,
        }
    }
}

/// Uniform in [-1, 1) from a counter.
fn uniform(seed: u64, i: u64) -> f32 {
    ((mix(seed ^ mix(i)) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// One parameter tensor with its Adam moments.
struct Param {
    value: Array2<f32>,
    m: Array2<f32>,
    v: Array2<f32>,
    decay: bool,
}

impl Param {
    fn new(value: Array2<f32>, decay: bool) -> Self {
        let shape = value.raw_dim();
        Self {
            value,
            m: Array2::zeros(shape),
            v: Array2::zeros(shape),
            decay,
        }
    }

    fn step(&mut self, grad: &Array2<f32>, p: &MlpParams, t: i32) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let decay = if self.decay {
            1.0 - p.learning_rate * p.weight_decay
        } else {
            1.0
        };
        ndarray::Zip::from(&mut self.value)
            .and(&mut self.m)
            .and(&mut self.v)
            .and(grad)
            .for_each(|w, m, v, &g| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *w = *w * decay - p.learning_rate * (*m / c1) / ((*v / c2).sqrt() + eps);
            });
    }
}

impl MlpHead {
    /// Fits rows `x` to `labels` in `0..classes`; a class without examples gets a prohibitive
    /// output bias, as the linear head does.
    pub fn fit(
        x: &[&[f32]],
        labels: &[usize],
        classes: usize,
        params: MlpParams,
    ) -> Result<Self, ClassifyError> {
        let dim = x.first().map_or(0, |r| r.len());
        if x.is_empty() || x.len() != labels.len() || params.hidden == 0 {
            return Err(ClassifyError::Train("no training examples".into()));
        }
        let n = x.len();
        let mut feats = Array2::<f32>::zeros((n, dim));
        for (mut row, src) in feats.rows_mut().into_iter().zip(x) {
            row.assign(&ndarray::ArrayView1::from(*src));
        }
        let mut present = vec![false; classes];
        labels.iter().for_each(|&l| present[l] = true);
        // He initialisation for the ReLU layer, Glorot for the output layer.
        let (h, seed) = (params.hidden, params.seed);
        let s1 = (6.0 / dim as f32).sqrt();
        let s2 = (6.0 / (h + classes) as f32).sqrt();
        let mut w1 = Param::new(
            Array2::from_shape_fn((dim, h), |(i, j)| s1 * uniform(seed, (i * h + j) as u64)),
            true,
        );
        let mut b1 = Param::new(Array2::zeros((1, h)), false);
        let mut w2 = Param::new(
            Array2::from_shape_fn((h, classes), |(i, j)| {
                s2 * uniform(seed ^ 1, (i * classes + j) as u64)
            }),
            true,
        );
        let mut b2 = Param::new(Array2::zeros((1, classes)), false);
        let mut order: Vec<usize> = (0..n).collect();
        let mut t = 0;
        for epoch in 0..params.epochs {
            order.sort_by_key(|&i| mix(seed ^ mix((epoch * n + i) as u64 ^ 0x5eed)));
            for chunk in order.chunks(params.batch.max(1)) {
                let xb = feats.select(Axis(0), chunk);
                let pre = xb.dot(&w1.value) + &b1.value;
                let act = pre.mapv(|v| v.max(0.0));
                let mut g_out = act.dot(&w2.value) + &b2.value;
                // d(mean cross-entropy)/d(logits) = softmax - one-hot, over the batch size.
                let scale = 1.0 / chunk.len() as f32;
                for (mut row, &i) in g_out.rows_mut().into_iter().zip(chunk) {
                    let max = row.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                    row.mapv_inplace(|v| (v - max).exp());
                    let sum = row.sum();
                    row.mapv_inplace(|v| v / sum * scale);
                    row[labels[i]] -= scale;
                }
                let g_w2 = act.t().dot(&g_out);
                let g_b2 = g_out.sum_axis(Axis(0)).insert_axis(Axis(0));
                let mut g_act = g_out.dot(&w2.value.t());
                ndarray::Zip::from(&mut g_act)
                    .and(&pre)
                    .for_each(|g, &p| *g = if p > 0.0 { *g } else { 0.0 });
                let g_w1 = xb.t().dot(&g_act);
                let g_b1 = g_act.sum_axis(Axis(0)).insert_axis(Axis(0));
                t += 1;
                w1.step(&g_w1, &params, t);
                b1.step(&g_b1, &params, t);
                w2.step(&g_w2, &params, t);
                b2.step(&g_b2, &params, t);
            }
        }
        let mut b2v: Array1<f32> = b2.value.row(0).to_owned();
        for (c, &p) in present.iter().enumerate() {
            if !p {
                b2v[c] = super::linear::ABSENT_CLASS_LOGIT;
            }
        }
        Ok(Self {
            classes,
            dim,
            hidden: h,
            w1: transpose(w1.value.view()),
            b1: b1.value.row(0).to_vec(),
            w2: transpose(w2.value.view()),
            b2: b2v.to_vec(),
        })
    }

    pub fn logits(&self, embedding: &[f32]) -> Vec<f32> {
        let act: Vec<f32> = self
            .w1
            .chunks_exact(self.dim)
            .zip(&self.b1)
            .map(|(w, b)| (dot(w, embedding) + b).max(0.0))
            .collect();
        self.w2
            .chunks_exact(self.hidden)
            .zip(&self.b2)
            .map(|(w, b)| dot(w, &act) + b)
            .collect()
    }

    /// Checks the shapes against the artefact's labels and embedder.
    pub fn validate(&self, classes: usize, dim: usize) -> Result<(), String> {
        let h = self.hidden;
        if self.classes != classes || self.dim != dim || h == 0 {
            return Err(format!(
                "the head is {} classes x {} dims, expected {classes} x {dim}",
                self.classes, self.dim
            ));
        }
        if self.w1.len() != h * dim
            || self.b1.len() != h
            || self.w2.len() != classes * h
            || self.b2.len() != classes
        {
            return Err("weight shapes do not match the head's sizes".into());
        }
        let all = [&self.w1, &self.b1, &self.w2, &self.b2];
        if !all.iter().all(|v| v.iter().all(|x| x.is_finite())) {
            return Err("weights contain NaN or infinity".into());
        }
        Ok(())
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// `[in, out]` (as trained) to row-major `[out][in]` (as stored and applied); ndarray iterates a
/// transposed view in its logical order.
fn transpose(w: ArrayView2<f32>) -> Vec<f32> {
    w.t().iter().copied().collect()
}
