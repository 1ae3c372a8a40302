//! The training pipeline: embed every training view (through the cache), estimate generalisation
//! on held-out data, fit the calibration temperature on those held-out predictions, then fit the
//! shipped head on everything.
//!
//! Held-out data means whole sources when the file names them: a random split puts near-duplicates
//! of the test prompts (same benchmark, same template) in training and flatters the classifier,
//! while the router meets prompts from benchmarks it has never seen.

use std::collections::{BTreeMap, BTreeSet};

use tracing::info;

use crate::embed::Embedder;

use super::any::AnyClassifier;
use super::artifact::{LinearClassifier, MlpClassifier, TrainingSummary};
use super::cache::EmbeddingCache;
use super::calibrate::{expected_calibration_error, fit_temperature, softmax_t};
use super::dataset::{training_views, Example};
use super::linear::{FitParams, LinearHead};
use super::metrics::EvalReport;
use super::mlp::{MlpHead, MlpParams};
use super::ClassifyError;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Holdout {
    /// Whole sources when every example names one and there are at least two, else `Random(0.2)`.
    Auto,
    /// Each source in turn is held out and predicted by a model trained on the others.
    Sources,
    /// This fraction of the examples, chosen by a hash of the prompt.
    Random(f64),
}

/// Which head to fit on the embeddings.
#[derive(Clone, Copy, Debug)]
pub enum HeadKind {
    /// Multinomial logistic regression (linfa), regularised by `TrainOptions::fit`.
    Linear,
    Mlp(MlpParams),
}

/// A fitted head of either kind.
enum Fitted {
    Linear(LinearHead),
    Mlp(MlpHead),
}

impl Fitted {
    fn logits(&self, e: &[f32]) -> Vec<f32> {
        match self {
            Fitted::Linear(h) => h.logits(e),
            Fitted::Mlp(h) => h.logits(e),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub head: HeadKind,
    pub fit: FitParams,
    /// Also train on each prompt's option-less stem and first sentence.
    pub views: bool,
    /// Give every (category, source) group the same weight within its category and every
    /// category the same weight, by deterministic resampling (linfa has no sample weights).
    pub balance: bool,
    pub holdout: Holdout,
    pub seed: u64,
    /// Texts per embedding batch.
    pub batch: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            head: HeadKind::Linear,
            fit: FitParams::default(),
            views: true,
            balance: true,
            holdout: Holdout::Auto,
            seed: 0,
            batch: 32,
        }
    }
}

impl TrainOptions {
    fn describe(&self) -> String {
        let head = match self.head {
            HeadKind::Linear => "linear".to_string(),
            HeadKind::Mlp(p) => format!(
                "mlp hidden={} epochs={} lr={} weight_decay={}",
                p.hidden, p.epochs, p.learning_rate, p.weight_decay
            ),
        };
        format!(
            "head={head} alpha={} max_iterations={} views={} balance={} holdout={:?} seed={}",
            self.fit.alpha,
            self.fit.max_iterations,
            self.views,
            self.balance,
            self.holdout,
            self.seed
        )
    }
}

/// Held-out accuracy of one (source, category) group.
#[derive(Clone, Debug)]
pub struct GroupScore {
    pub source: String,
    pub category: String,
    pub accuracy: f64,
    pub n: usize,
}

pub struct TrainOutcome {
    pub classifier: AnyClassifier,
    /// Calibrated held-out predictions (temperature cross-fitted across folds).
    pub held_out: EvalReport,
    pub by_group: Vec<GroupScore>,
    pub protocol: &'static str,
}

/// One embedded training text and the example it came from.
struct Row {
    example: usize,
    vector: usize,
}

/// splitmix64: a seeded, platform-independent stream for resampling, random splits and the MLP's
/// initialisation.
pub(super) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

fn prompt_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn train(
    examples: &[Example],
    embedder: &mut dyn Embedder,
    cache: &mut EmbeddingCache,
    options: &TrainOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<TrainOutcome, ClassifyError> {
    let labels: Vec<String> = examples
        .iter()
        .map(|e| e.category.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if labels.len() < 2 {
        return Err(ClassifyError::Train(format!(
            "need at least two categories, the data has {labels:?}"
        )));
    }
    let label_of: Vec<usize> = examples
        .iter()
        .map(|e| labels.binary_search(&e.category).expect("collected above"))
        .collect();

    // Every training text; view 0 of each example is the prompt itself, the one evaluated.
    let mut texts: Vec<&str> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut prompt_vector = Vec::with_capacity(examples.len());
    for (i, ex) in examples.iter().enumerate() {
        let views = if options.views {
            training_views(&ex.prompt)
        } else {
            vec![ex.prompt.as_str()]
        };
        prompt_vector.push(texts.len());
        for v in views {
            rows.push(Row {
                example: i,
                vector: texts.len(),
            });
            texts.push(v);
        }
    }
    let vectors = cache.embed_all(embedder, &texts, options.batch, progress)?;

    let sources: BTreeSet<&str> = examples
        .iter()
        .filter(|e| !e.is_synthetic())
        .map(|e| e.source.as_str())
        .collect();
    let by_source = match options.holdout {
        Holdout::Sources => true,
        Holdout::Random(_) => false,
        Holdout::Auto => sources.len() >= 2 && !sources.contains(""),
    };
    // Folds: (name, is-held-out per example).
    let folds: Vec<(String, Vec<bool>)> = if by_source {
        sources
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    examples.iter().map(|e| e.source == *s).collect(),
                )
            })
            .collect()
    } else {
        let frac = match options.holdout {
            Holdout::Random(f) => f,
            _ => 0.2,
        };
        let held = examples
            .iter()
            .map(|e| !e.is_synthetic() && unit(prompt_hash(&e.prompt) ^ options.seed) < frac)
            .collect();
        vec![("random".to_string(), held)]
    };

    let fit = |train_examples: &dyn Fn(usize) -> bool| -> Result<Fitted, ClassifyError> {
        let chosen: Vec<&Row> = rows.iter().filter(|r| train_examples(r.example)).collect();
        let picked = if options.balance {
            resample(&chosen, examples, &label_of, options.seed)
        } else {
            chosen
        };
        let x: Vec<&[f32]> = picked
            .iter()
            .map(|r| vectors[r.vector].as_slice())
            .collect();
        let y: Vec<usize> = picked.iter().map(|r| label_of[r.example]).collect();
        Ok(match options.head {
            HeadKind::Linear => Fitted::Linear(LinearHead::fit(&x, &y, labels.len(), options.fit)?),
            HeadKind::Mlp(p) => Fitted::Mlp(MlpHead::fit(&x, &y, labels.len(), p)?),
        })
    };

    // Held-out logits of every example some fold predicts.
    let mut fold_logits: Vec<(Vec<usize>, Vec<Vec<f32>>)> = Vec::new();
    for (name, held) in &folds {
        let trained_labels: BTreeSet<usize> = (0..examples.len())
            .filter(|&i| !held[i])
            .map(|i| label_of[i])
            .collect();
        // A category only this fold has cannot be learnt without it: nothing to measure there.
        let test: Vec<usize> = (0..examples.len())
            .filter(|&i| held[i] && trained_labels.contains(&label_of[i]))
            .collect();
        if test.is_empty() {
            continue;
        }
        let head = fit(&|i| !held[i])?;
        info!(fold = %name, test = test.len(), "held-out fold fitted");
        let logits = test
            .iter()
            .map(|&i| head.logits(&vectors[prompt_vector[i]]))
            .collect();
        fold_logits.push((test, logits));
    }
    if fold_logits.is_empty() {
        return Err(ClassifyError::Train(
            "no held-out examples to evaluate on: add a source with categories others also have"
                .into(),
        ));
    }

    // Cross-fitted temperature: each fold is calibrated by the other folds' logits, so the
    // reported ECE is not measured on the data the temperature was fitted to.
    let all_logits: Vec<Vec<f32>> = fold_logits.iter().flat_map(|(_, l)| l.clone()).collect();
    let all_truth: Vec<usize> = fold_logits
        .iter()
        .flat_map(|(t, _)| t.iter().map(|&i| label_of[i]))
        .collect();
    let mut probs = Vec::with_capacity(all_logits.len());
    for (k, (test, logits)) in fold_logits.iter().enumerate() {
        let (mut other_logits, mut other_truth) = (Vec::new(), Vec::new());
        for (_, (t, l)) in fold_logits.iter().enumerate().filter(|(j, _)| *j != k) {
            other_truth.extend(t.iter().map(|&i| label_of[i]));
            other_logits.extend(l.iter().cloned());
        }
        // A single fold (the random split) has no others: its own logits are all there is.
        if other_logits.is_empty() {
            other_truth = test.iter().map(|&i| label_of[i]).collect();
            other_logits = logits.clone();
        }
        let t = fit_temperature(&other_logits, &other_truth);
        probs.extend(logits.iter().map(|l| softmax_t(l, t)));
    }
    let temperature = fit_temperature(&all_logits, &all_truth);
    let raw: Vec<Vec<f32>> = all_logits.iter().map(|l| softmax_t(l, 1.0)).collect();
    let ece_raw = expected_calibration_error(&raw, &all_truth);
    let held_out = EvalReport::new(labels.clone(), labels.clone(), &all_truth, &probs);

    let mut groups: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for ((test, _), p) in fold_logits.iter().zip(probs_by_fold(&fold_logits, &probs)) {
        for (&i, p) in test.iter().zip(p) {
            let g = groups
                .entry((examples[i].source.clone(), examples[i].category.clone()))
                .or_default();
            g.0 += usize::from(super::metrics::argmax(p) == label_of[i]);
            g.1 += 1;
        }
    }
    let by_group = groups
        .into_iter()
        .map(|((source, category), (ok, n))| GroupScore {
            source,
            category,
            accuracy: ok as f64 / n as f64,
            n,
        })
        .collect();

    let head = fit(&|_| true)?;
    let summary = TrainingSummary {
        protocol: if by_source {
            "held_out_sources"
        } else {
            "random_split"
        }
        .into(),
        examples: examples.len(),
        training_texts: texts.len(),
        held_out_macro_accuracy: held_out.macro_accuracy(),
        held_out_ece_uncalibrated: ece_raw,
        held_out_ece: held_out.ece,
        options: options.describe(),
    };
    let identity = embedder.identity().clone();
    let classifier = match head {
        Fitted::Linear(h) => {
            LinearClassifier::new(labels, identity, h, temperature, summary).into()
        }
        Fitted::Mlp(h) => MlpClassifier::new(labels, identity, h, temperature, summary).into(),
    };
    Ok(TrainOutcome {
        classifier,
        held_out,
        by_group,
        protocol: if by_source {
            "held_out_sources"
        } else {
            "random_split"
        },
    })
}

fn probs_by_fold<'a>(
    folds: &[(Vec<usize>, Vec<Vec<f32>>)],
    probs: &'a [Vec<f32>],
) -> Vec<&'a [Vec<f32>]> {
    let mut out = Vec::with_capacity(folds.len());
    let mut start = 0;
    for (test, _) in folds {
        out.push(&probs[start..start + test.len()]);
        start += test.len();
    }
    out
}

/// Resamples rows so that each category carries the same total weight and, within a category,
/// each source does too: a row's expected number of copies is its weight, rounded stochastically
/// with a seeded hash so that the same data and seed give the same model.
fn resample<'a>(
    rows: &[&'a Row],
    examples: &[Example],
    label_of: &[usize],
    seed: u64,
) -> Vec<&'a Row> {
    let mut group_size: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for r in rows {
        *group_size
            .entry((label_of[r.example], examples[r.example].source.as_str()))
            .or_default() += 1;
    }
    let mut groups_per_label: BTreeMap<usize, usize> = BTreeMap::new();
    for (label, _) in group_size.keys() {
        *groups_per_label.entry(*label).or_default() += 1;
    }
    let labels = groups_per_label.len() as f64;
    // Weight so that the total stays the number of rows.
    let total = rows.len() as f64;
    let mut out = Vec::with_capacity(rows.len());
    for (k, r) in rows.iter().enumerate() {
        let label = label_of[r.example];
        let size = group_size[&(label, examples[r.example].source.as_str())] as f64;
        let w = total / (labels * groups_per_label[&label] as f64 * size);
        let copies = w.floor() as usize + usize::from(unit(seed ^ mix(k as u64)) < w.fract());
        out.extend(std::iter::repeat_n(*r, copies));
    }
    out
}
