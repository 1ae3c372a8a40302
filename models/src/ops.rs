//! The element-wise and small vector operations of a decoder step (norms, rotary embeddings,
//! gated activations, ggml's e^x), written on plain slices so that they allocate
//! nothing and the compiler can vectorize them.
use half::f16;

use crate::config::RopeStyle;

/// `out = x / rms(x) · w` for one row, computed as llama.cpp does (squares summed in f64,
/// then scale = 1/√(mean + eps) in f32, then x·scale·w).
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let scale = rms_scale(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// In-place [`rms_norm`] of one row.
pub(crate) fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    // Four f64 partial sums vectorize; in f64 their order cannot change the f32 result of a
    // few thousand f32 squares in practice.
    let mut acc = [0f64; 4];
    let chunks = x.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v * v)).sum();
    for c in chunks {
        for i in 0..4 {
            acc[i] += f64::from(c[i] * c[i]);
        }
    }
    let sum = (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail;
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

pub(crate) fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `gate = silu(gate) · up`, with silu(x) = x / (1 + e^−x) and e^x from [`expf`] as in
/// llama.cpp's vectorised SwiGLU.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + expf(-*g)) * u;
    }
}

/// e^x by ggml's vectorised routine (adapted from Arm's optimized-routines; max error about
/// 1.5 ulp): softmax and SiLU round like llama.cpp's only with the same approximation, and it
/// is branch-free, so loops over it vectorize.
#[inline]
pub(crate) fn expf(x: f32) -> f32 {
    // ggml's constants, written as bits because Rust has no hexadecimal float literals.
    let c = f32::from_bits;
    let shift = c(0x4b40_0000); // 0x1.8p23: adding it rounds to an integer
    let z = x.mul_add(c(0x3fb8_aa3b), shift);
    let n = z - shift;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)));
    let j = j.mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    // j · 2^n (vscalefps) in two exact steps; beyond ±192 ggml returns 0 or ∞. Selects rather
    // than an early return keep loops over this function vectorizable.
    let ni = n.clamp(-192.0, 192.0) as i32;
    let half = ni >> 1;
    let r = j * pow2(half) * pow2(ni - half);
    let out_of_range = if n <= 0.0 { 0.0 } else { f32::INFINITY };
    if n.abs() > 192.0 {
        out_of_range
    } else {
        r
    }
}

/// 2^e for |e| ≤ 126 (the callers keep |e| ≤ 96).
#[inline]
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// `gate = gelu_tanh(gate) · up` the way llama.cpp's CPU backend computes it: GELU is read
/// from a table indexed by the f16 value of x that holds f16 results. Matching that rounding
/// keeps greedy outputs equal, and the lookup is also several times faster than tanh.
pub(crate) fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let y = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x
        } else {
            table[usize::from(f16::from_f32(x).to_bits())].to_f32()
        };
        *g = y * u;
    }
}

/// GELU (tanh approximation) of every f16 value, rounded to f16 (llama.cpp's table).
fn gelu_table() -> &'static [f16] {
    static TABLE: std::sync::OnceLock<Vec<f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        const COEF_A: f32 = 0.044715;
        (0..=u16::MAX)
            .map(|bits| {
                let x = f16::from_bits(bits).to_f32();
                let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh());
                f16::from_f32(y)
            })
            .collect()
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expf_is_within_two_ulps_of_libm() {
        for i in -2000..2000 {
            let x = i as f32 * 0.043;
            let (got, want) = (expf(x), x.exp());
            assert!(
                (got - want).abs() <= 2.5 * f32::EPSILON * want,
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(expf(-200.0), 0.0);
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
