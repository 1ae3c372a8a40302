//! Evaluation numbers: confusion matrix, per-category precision/recall, macro accuracy and ECE,
//! and their plain-text rendering for the CLI.

use std::fmt::Write;

use super::calibrate::expected_calibration_error;

/// Predictions against truth over a fixed label set. `truth` may include labels the model does not
/// know (an eval file with other categories): those rows count as errors.
#[derive(Clone, Debug)]
pub struct EvalReport {
    /// Row (true) labels: the model's labels, then any unknown ones from the data.
    pub true_labels: Vec<String>,
    /// Column (predicted) labels: the model's labels.
    pub predicted_labels: Vec<String>,
    /// `confusion[t][p]` counts examples of true label `t` predicted as `p`.
    pub confusion: Vec<Vec<usize>>,
    /// Expected calibration error of the top-class confidence.
    pub ece: f64,
    pub n: usize,
}

impl EvalReport {
    /// `truth[i]` indexes `true_labels`; `probs[i]` is over `predicted_labels`.
    pub fn new(
        true_labels: Vec<String>,
        predicted_labels: Vec<String>,
        truth: &[usize],
        probs: &[Vec<f32>],
    ) -> Self {
        let mut confusion = vec![vec![0; predicted_labels.len()]; true_labels.len()];
        for (&t, p) in truth.iter().zip(probs) {
            confusion[t][argmax(p)] += 1;
        }
        Self {
            // An unknown true label's index lies past the predicted ones, so it never matches.
            ece: expected_calibration_error(probs, truth),
            n: truth.len(),
            true_labels,
            predicted_labels,
            confusion,
        }
    }

    fn correct(&self, t: usize) -> usize {
        if t < self.predicted_labels.len() {
            self.confusion[t][t]
        } else {
            0
        }
    }

    /// Recall of each true label that has examples: `(label, accuracy, count)`.
    pub fn per_category_accuracy(&self) -> Vec<(String, f64, usize)> {
        self.true_labels
            .iter()
            .enumerate()
            .filter_map(|(t, label)| {
                let total: usize = self.confusion[t].iter().sum();
                (total > 0).then(|| (label.clone(), self.correct(t) as f64 / total as f64, total))
            })
            .collect()
    }

    /// Precision of each predicted label (None when nothing was predicted as it).
    pub fn precision(&self, p: usize) -> Option<f64> {
        let predicted: usize = self.confusion.iter().map(|row| row[p]).sum();
        (predicted > 0).then(|| self.confusion[p][p] as f64 / predicted as f64)
    }

    /// The mean of the per-category accuracies, so that large categories do not drown small ones.
    pub fn macro_accuracy(&self) -> f64 {
        let per = self.per_category_accuracy();
        per.iter().map(|(_, a, _)| a).sum::<f64>() / per.len().max(1) as f64
    }

    pub fn accuracy(&self) -> f64 {
        let correct: usize = (0..self.true_labels.len()).map(|t| self.correct(t)).sum();
        correct as f64 / self.n.max(1) as f64
    }

    /// Per-category precision/recall/count table.
    pub fn render_precision_recall(&self) -> String {
        let width = label_width(&self.true_labels);
        let mut s = format!("{:width$}  precision  recall      n\n", "category");
        for (t, label) in self.true_labels.iter().enumerate() {
            let total: usize = self.confusion[t].iter().sum();
            if total == 0 {
                continue;
            }
            let precision = if t < self.predicted_labels.len() {
                self.precision(t)
                    .map_or("-".to_string(), |p| format!("{p:.3}"))
            } else {
                "-".to_string()
            };
            let recall = self.correct(t) as f64 / total as f64;
            let _ = writeln!(
                s,
                "{label:width$}  {precision:>9}  {recall:>6.3}  {total:>5}"
            );
        }
        s
    }

    /// Per-category accuracy table.
    pub fn render_accuracy(&self) -> String {
        let width = label_width(&self.true_labels);
        let mut s = format!("{:width$}  accuracy      n\n", "category");
        for (label, acc, n) in self.per_category_accuracy() {
            let _ = writeln!(s, "{label:width$}  {acc:>8.3}  {n:>5}");
        }
        s
    }

    /// The confusion matrix, rows true and columns predicted, columns headed by label numbers.
    pub fn render_confusion(&self) -> String {
        let width = label_width(&self.true_labels);
        let mut s = format!("{:width$}", "true \\ predicted");
        for p in 0..self.predicted_labels.len() {
            let _ = write!(s, " {:>5}", format!("[{p}]"));
        }
        s.push('\n');
        for (t, label) in self.true_labels.iter().enumerate() {
            if self.confusion[t].iter().sum::<usize>() == 0 {
                continue;
            }
            let tag = if t < self.predicted_labels.len() {
                format!("[{t}] {label}")
            } else {
                format!("[?] {label}")
            };
            let _ = write!(s, "{tag:width$}");
            for c in &self.confusion[t] {
                let _ = write!(s, " {c:>5}");
            }
            s.push('\n');
        }
        s
    }

    /// The summary line `coe router eval` ends with.
    pub fn summary_line(&self) -> String {
        format!(
            "macro_accuracy={:.4} ece={:.4} n={}",
            self.macro_accuracy(),
            self.ece,
            self.n
        )
    }
}

fn label_width(labels: &[String]) -> usize {
    labels
        .iter()
        .map(|l| l.len() + 4)
        .max()
        .unwrap_or(8)
        .max(18)
}

pub fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_accuracy_weights_categories_equally_and_unknown_labels_count_as_errors() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let mut truth_labels = labels.clone();
        truth_labels.push("zzz".into());
        // 9 of 10 "a" right, 0 of 1 "b" right, the one "zzz" necessarily wrong.
        let mut truth = vec![0; 10];
        truth.extend([1, 2]);
        let mut probs = vec![vec![0.9, 0.1]; 9];
        probs.push(vec![0.2, 0.8]);
        probs.push(vec![0.7, 0.3]);
        probs.push(vec![0.6, 0.4]);
        let r = EvalReport::new(truth_labels, labels, &truth, &probs);
        assert!((r.macro_accuracy() - (0.9 + 0.0 + 0.0) / 3.0).abs() < 1e-9);
        assert_eq!(r.n, 12);
        assert!(r.summary_line().starts_with("macro_accuracy=0.3000 ece="));
        assert!(r.summary_line().ends_with(" n=12"));
        assert!(r.render_confusion().contains("[?] zzz"));
    }
}
