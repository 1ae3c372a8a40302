//! Draws the next token from logits: greedy, temperature, top-k and top-p, with a seeded RNG.
use coe_core::SamplingParams;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    rng: StdRng,
    // Reused between steps so sampling allocates nothing per token.
    scratch: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Self {
        Self {
            temperature: params.temperature,
            top_k: params.top_k as usize,
            top_p: params.top_p,
            rng: StdRng::seed_from_u64(params.seed),
            scratch: Vec::new(),
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 || self.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.temperature;
        self.scratch.clear();
        self.scratch.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (l * inv_t, i as u32)),
        );
        let mut keep = self.scratch.len();
        if self.top_k > 0 && self.top_k < keep {
            keep = self.top_k;
            self.scratch
                .select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0));
            self.scratch.truncate(keep);
        }
        let max = self
            .scratch
            .iter()
            .map(|c| c.0)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0.0f32;
        for c in &mut self.scratch {
            c.0 = (c.0 - max).exp();
            total += c.0;
        }
        if self.top_p < 1.0 {
            self.truncate_to_nucleus(total);
            total = self.scratch.iter().map(|c| c.0).sum();
        }
        let mut threshold = self.rng.random::<f32>() * total;
        for &(p, id) in &self.scratch {
            threshold -= p;
            if threshold <= 0.0 {
                return id;
            }
        }
        self.scratch.last().map(|c| c.1).unwrap_or(0)
    }

    /// Keeps the smallest set of most likely tokens whose mass reaches top_p. Sorting the whole
    /// vocabulary costs milliseconds per token, so only a growing head of it is sorted.
    fn truncate_to_nucleus(&mut self, total: f32) {
        let wanted = self.top_p * total;
        let mut head = 64.min(self.scratch.len());
        loop {
            if head < self.scratch.len() {
                self.scratch
                    .select_nth_unstable_by(head - 1, |a, b| b.0.total_cmp(&a.0));
            }
            self.scratch[..head].sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
            let mut mass = 0.0;
            for (i, c) in self.scratch[..head].iter().enumerate() {
                mass += c.0;
                if mass >= wanted {
                    self.scratch.truncate(i + 1);
                    return;
                }
            }
            if head == self.scratch.len() {
                return;
            }
            head = (head * 4).min(self.scratch.len());
        }
    }
}

/// The index of the largest logit; the first one on ties, as llama.cpp's greedy sampler does.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: u32, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(&params(0.0, 0, 1.0, 0));
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, 3.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0)
            .collect();
        let draw = |seed| {
            let mut s = Sampler::new(&params(1.0, 0, 0.9, seed));
            (0..50).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_limits_the_choice() {
        let logits = [5.0, 4.9, 4.8, -10.0, 4.7];
        let mut s = Sampler::new(&params(5.0, 2, 1.0, 1));
        for _ in 0..200 {
            assert!(s.sample(&logits) < 2);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Token 0 holds almost all of the mass: a nucleus of 0.5 is token 0 alone.
        let mut logits = vec![0.0f32; 500];
        logits[0] = 20.0;
        let mut s = Sampler::new(&params(1.0, 0, 0.5, 3));
        for _ in 0..200 {
            assert_eq!(s.sample(&logits), 0);
        }
    }
}
