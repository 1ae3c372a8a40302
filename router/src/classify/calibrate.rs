//! Confidence calibration: temperature scaling of logits and the expected calibration error.

/// Softmax of `logits / temperature`.
pub fn softmax_t(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits
        .iter()
        .map(|l| ((l - max) / temperature).exp())
        .collect();
    let sum: f32 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= sum);
    p
}

/// Mean negative log-likelihood of `labels` under `softmax(logits / t)`.
fn nll(logits: &[Vec<f32>], labels: &[usize], t: f32) -> f64 {
    let mut total = 0.0f64;
    for (l, &y) in logits.iter().zip(labels) {
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let t = t as f64;
        let lse = l
            .iter()
            .map(|x| ((*x as f64 - max) / t).exp())
            .sum::<f64>()
            .ln();
        total += lse - (l[y] as f64 - max) / t;
    }
    total / logits.len().max(1) as f64
}

/// The temperature that minimises the NLL of held-out `logits` (Guo et al., 2017): one scalar, so
/// it changes confidences but never which category wins. Golden-section search on log t, which the
/// NLL is unimodal in.
pub fn fit_temperature(logits: &[Vec<f32>], labels: &[usize]) -> f32 {
    if logits.is_empty() {
        return 1.0;
    }
    let (mut lo, mut hi) = ((0.02f64).ln(), (50.0f64).ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let f = |x: f64| nll(logits, labels, x.exp() as f32);
    let (mut a, mut b) = (hi - g * (hi - lo), lo + g * (hi - lo));
    let (mut fa, mut fb) = (f(a), f(b));
    for _ in 0..60 {
        if fa < fb {
            hi = b;
            (b, fb) = (a, fa);
            a = hi - g * (hi - lo);
            fa = f(a);
        } else {
            lo = a;
            (a, fa) = (b, fb);
            b = lo + g * (hi - lo);
            fb = f(b);
        }
    }
    ((lo + hi) / 2.0).exp() as f32
}

/// Expected calibration error with 15 equal-width confidence bins: the gap between confidence and
/// accuracy, averaged over bins weighted by how many predictions fall in each.
pub fn expected_calibration_error(probs: &[Vec<f32>], labels: &[usize]) -> f64 {
    const BINS: usize = 15;
    let mut count = [0usize; BINS];
    let mut conf = [0f64; BINS];
    let mut correct = [0f64; BINS];
    for (p, &y) in probs.iter().zip(labels) {
        let (best, &c) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("at least one class");
        let bin = ((c as f64 * BINS as f64).ceil() as usize).clamp(1, BINS) - 1;
        count[bin] += 1;
        conf[bin] += c as f64;
        correct[bin] += (best == y) as u8 as f64;
    }
    let n = probs.len().max(1) as f64;
    (0..BINS)
        .filter(|&b| count[b] > 0)
        .map(|b| (correct[b] - conf[b]).abs() / n)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overconfident_logits_get_a_temperature_above_one() {
        // Logits that say 99.9% but are right 3 times in 4.
        let logits: Vec<Vec<f32>> = (0..400).map(|_| vec![7.0, 0.0]).collect();
        let labels: Vec<usize> = (0..400).map(|i| usize::from(i % 4 == 0)).collect();
        let t = fit_temperature(&logits, &labels);
        let p = softmax_t(&logits[0], t);
        assert!(t > 1.0 && (p[0] - 0.75).abs() < 0.01, "t {t}, p {p:?}");
        let calibrated: Vec<Vec<f32>> = logits.iter().map(|l| softmax_t(l, t)).collect();
        assert!(expected_calibration_error(&calibrated, &labels) < 0.01);
        let raw: Vec<Vec<f32>> = logits.iter().map(|l| softmax_t(l, 1.0)).collect();
        assert!((expected_calibration_error(&raw, &labels) - 0.249).abs() < 0.01);
    }
}
