//! Activation rows quantized to int8 for the integer kernels, in the two roundings llama.cpp
//! uses: Q8_0/Q8_1 (a scale per 32 values, stored as f16) against the 32-wide weight formats,
//! and Q8_K (one f32 scale per 256 values) against the k-quants.
use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
use half::f16;

use super::{QK, QK_K};

/// One 32-value block of an activation row.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct BlockA8 {
    pub(crate) d: f32,
    /// d · Σqs: multiplies Q4_1's min and the k-quant mins.
    pub(crate) s: f32,
    pub(crate) qs: [i8; QK],
}

impl BlockA8 {
    /// llama.cpp's AVX quantize_row_q8_1 (whose quants equal quantize_row_q8_0's).
    fn q8_0(x: &[f32]) -> Self {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        // 127/amax rather than 1/d: the two differ in the last bit, which flips roundings.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(x) {
            // Ties to even, like _mm256_round_ps(_MM_ROUND_NEAREST).
            *q = (v * id).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        // Both scales are stored as f16 (block_q8_0 / block_q8_1); the products use the
        // rounded values.
        Self {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(d * sum as f32).to_f32(),
            qs,
        }
    }

    /// llama.cpp's quantize_row_q8_K of 256 values into eight blocks sharing one f32 scale.
    fn q8_k(x: &[f32], out: &mut [BlockA8]) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let iscale = if amax != 0.0 { -127.0 / max } else { 0.0 };
        let d = if amax != 0.0 { 1.0 / iscale } else { 0.0 };
        for (b, x) in out.iter_mut().zip(x.chunks_exact(QK)) {
            let mut sum = 0i32;
            for (q, v) in b.qs.iter_mut().zip(x) {
                *q = (iscale * v).round_ties_even().min(127.0) as i8;
                sum += i32::from(*q);
            }
            b.d = d;
            b.s = d * sum as f32;
        }
    }

    const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        qs: [0; QK],
    };
}

/// The quantized forms of `rows × cols` activations that the next products read; reused
/// between calls to avoid reallocating.
#[derive(Default)]
pub(crate) struct Activations {
    /// Q8_0-rounded blocks, for the 32-wide formats.
    pub(crate) a8: Vec<BlockA8>,
    /// Q8_K-rounded blocks, for the repacked k-quants.
    pub(crate) k8: Vec<BlockA8>,
    /// candle's Q8_K blocks, for k-quants in ggml's layout.
    pub(crate) ak: Vec<BlockQ8K>,
}

/// Which quantized forms a dispatch needs.
#[derive(Clone, Copy, Default)]
pub(crate) struct Needs {
    pub(crate) a8: bool,
    pub(crate) k8: bool,
    pub(crate) ak: bool,
}

impl Activations {
    /// Quantizes `x` (`rows × cols`, row-major) into the forms in `needs`.
    pub(crate) fn quantize(&mut self, x: &[f32], rows: usize, cols: usize, needs: Needs) {
        debug_assert_eq!(x.len(), rows * cols);
        self.a8.clear();
        if needs.a8 {
            self.a8.extend(x.chunks_exact(QK).map(BlockA8::q8_0));
        }
        self.k8.clear();
        self.ak.clear();
        if !cols.is_multiple_of(QK_K) {
            return;
        }
        if needs.k8 {
            self.k8.resize(x.len() / QK, BlockA8::ZERO);
            for (x, out) in x
                .chunks_exact(QK_K)
                .zip(self.k8.chunks_exact_mut(QK_K / QK))
            {
                BlockA8::q8_k(x, out);
            }
        }
        if needs.ak {
            self.ak.resize(x.len() / QK_K, BlockQ8K::zeros());
            BlockQ8K::from_float(x, &mut self.ak);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = Activations::default();
        a.quantize(
            &x,
            1,
            64,
            Needs {
                a8: true,
                ..Needs::default()
            },
        );
        for (blk, xs) in a.a8.iter().zip(x.chunks_exact(QK)) {
            // d is rounded to f16 after quantizing: up to 127 · 2⁻¹¹ · d on top of half a step.
            for (q, v) in blk.qs.iter().zip(xs) {
                assert!((f32::from(*q) * blk.d - v).abs() <= blk.d * 0.57 + 1e-6);
            }
        }
    }

    #[test]
    fn q8_k_blocks_share_one_scale_per_256_values() {
        let x: Vec<f32> = (0..512)
            .map(|i| (i as f32 * 0.11).cos() * (1 + i / 256) as f32)
            .collect();
        let mut a = Activations::default();
        a.quantize(
            &x,
            1,
            512,
            Needs {
                k8: true,
                ..Needs::default()
            },
        );
        for (blocks, xs) in a.k8.chunks_exact(8).zip(x.chunks_exact(QK_K)) {
            assert!(blocks.iter().all(|b| b.d == blocks[0].d));
            for (b, xs) in blocks.iter().zip(xs.chunks_exact(QK)) {
                for (q, v) in b.qs.iter().zip(xs) {
                    assert!((f32::from(*q) * b.d - v).abs() <= b.d.abs() * 0.5 + 1e-6);
                }
            }
        }
    }
}
