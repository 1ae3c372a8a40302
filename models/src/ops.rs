//! The element-wise and small vector operations of a decoder step (norms, rotary embeddings,
//! gated activations, f16 key/value dot products), written on plain slices so that they allocate
//! nothing and the compiler can vectorize them.
use half::f16;

use crate::config::RopeStyle;

/// `out = x / rms(x) · w` for one row (llama.cpp's RMS norm followed by the weight multiply).
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let scale = 1.0 / (sum_squares(x) / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// In-place [`rms_norm`] of one row.
pub(crate) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = 1.0 / (sum_squares(x) / x.len() as f32 + eps).sqrt();
    for (v, &g) in x.iter_mut().zip(w) {
        *v *= scale * g;
    }
}

fn sum_squares(x: &[f32]) -> f32 {
    // Eight partial sums let the loop vectorize; one serial sum would not.
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] * c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

pub(crate) fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `gate = silu(gate) · up`.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `gate = gelu_tanh(gate) · up`, rounded the way llama.cpp's CPU GELU is: it reads a table
/// indexed by the f16 value of x and stores f16 results, and matching it keeps greedy outputs equal.
pub(crate) fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044715;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let y = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x
        } else {
            let x = f16::from_f32(x).to_f32();
            let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh());
            f16::from_f32(y).to_f32()
        };
        *g = y * u;
    }
}

/// Cosines and sines of rotary embedding for positions `0..positions`, `rope_dim / 2` per position.
pub(crate) struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Builds the table the way ggml does (θ_i = p · base^(−2i/d), stepped by repeated f32
    /// multiplication) so positions rotate exactly as in llama.cpp.
    pub(crate) fn new(rope_dim: usize, base: f32, freq_scale: f32, positions: usize) -> Self {
        let half = rope_dim / 2;
        let theta_scale = base.powf(-2.0 / rope_dim as f32);
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            let mut theta = p as f32;
            for _ in 0..half {
                let t = freq_scale * theta;
                cos.push(t.cos());
                sin.push(t.sin());
                theta *= theta_scale;
            }
        }
        Self { half, cos, sin }
    }

    pub(crate) fn bytes(&self) -> usize {
        (self.cos.len() + self.sin.len()) * 4
    }

    /// Rotates the leading `rope_dim` values of each `head_dim`-long head in `x` to position `pos`.
    pub(crate) fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize, style: RopeStyle) {
        let cos = &self.cos[pos * self.half..(pos + 1) * self.half];
        let sin = &self.sin[pos * self.half..(pos + 1) * self.half];
        for head in x.chunks_exact_mut(head_dim) {
            match style {
                RopeStyle::Interleaved => {
                    for (i, pair) in head[..2 * self.half].chunks_exact_mut(2).enumerate() {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * cos[i] - b * sin[i];
                        pair[1] = a * sin[i] + b * cos[i];
                    }
                }
                RopeStyle::Halves => {
                    let (lo, hi) = head[..2 * self.half].split_at_mut(self.half);
                    for i in 0..self.half {
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * cos[i] - b * sin[i];
                        hi[i] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }
}

/// Σ q·k with k stored as f16.
#[inline]
pub(crate) fn dot_f16(q: &[f32], k: &[f16]) -> f32 {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        use core::arch::x86_64::*;
        let n = q.len().min(k.len());
        let mut i = 0;
        // SAFETY: indices stay below n; the target features are enabled at compile time.
        let mut sum = unsafe {
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            while i + 16 <= n {
                let k0 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i).cast()));
                let k1 = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i + 8).cast()));
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), k0, acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i + 8)), k1, acc1);
                i += 16;
            }
            let acc = _mm256_add_ps(acc0, acc1);
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        };
        for j in i..n {
            sum += q[j] * k[j].to_f32();
        }
        sum
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    {
        q.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum()
    }
}

/// `out += p · v` with v stored as f16.
#[inline]
pub(crate) fn axpy_f16(out: &mut [f32], p: f32, v: &[f16]) {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    {
        use core::arch::x86_64::*;
        let n = out.len().min(v.len());
        let mut i = 0;
        // SAFETY: indices stay below n; the target features are enabled at compile time.
        unsafe {
            let pv = _mm256_set1_ps(p);
            while i + 8 <= n {
                let vv = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
                let o = out.as_mut_ptr().add(i);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(pv, vv, _mm256_loadu_ps(o)));
                i += 8;
            }
        }
        for j in i..n {
            out[j] += p * v[j].to_f32();
        }
    }
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    {
        for (o, x) in out.iter_mut().zip(v) {
            *o += p * x.to_f32();
        }
    }
}

/// Replaces `x` by softmax(x) in place.
pub(crate) fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_dot_and_axpy_match_scalar() {
        let q: Vec<f32> = (0..77).map(|i| (i as f32 * 0.3).cos()).collect();
        let k: Vec<f16> = (0..77)
            .map(|i| f16::from_f32((i as f32 * 0.7).sin()))
            .collect();
        let expect: f32 = q.iter().zip(&k).map(|(a, b)| a * b.to_f32()).sum();
        assert!((dot_f16(&q, &k) - expect).abs() < 1e-4);
        let mut out = q.clone();
        axpy_f16(&mut out, 0.5, &k);
        for ((o, a), b) in out.iter().zip(&q).zip(&k) {
            assert!((o - (a + 0.5 * b.to_f32())).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_styles_rotate_the_documented_pairs() {
        let table = RopeTable::new(4, 10000.0, 1.0, 3);
        let mut a = vec![1.0, 0.0, 1.0, 0.0];
        table.apply(&mut a, 4, 2, RopeStyle::Interleaved);
        assert!((a[0] - 2f32.cos()).abs() < 1e-6 && (a[1] - 2f32.sin()).abs() < 1e-6);
        let mut b = vec![1.0, 1.0, 0.0, 0.0];
        table.apply(&mut b, 4, 2, RopeStyle::Halves);
        assert!((b[0] - 2f32.cos()).abs() < 1e-6 && (b[2] - 2f32.sin()).abs() < 1e-6);
    }
}
