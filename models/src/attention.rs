//! Causal multi-head attention over a layer's cached keys and values, with grouped key/value
//! heads and an optional sliding window; (query, head) pairs are spread over the thread pool
//! once the work is large enough to pay for the wake-up.
//!
//! Numerics follow llama.cpp's CPU path (no flash attention) operation for operation: queries
//! and attention weights are rounded to f16 before their products with the f16 cache, both
//! products accumulate in 16 FMA lanes reduced in `_mm512_reduce_add_ps` order (its f16 GEMM),
//! and softmax uses ggml's e^x and chunked f64 sum. Greedy parity depends on it: int8
//! activation rounding amplifies 1-ulp differences, and with naive sums SmolLM2's logits
//! drifted by up to 0.5 from llama.cpp's and flipped a token whose margin was 0.47.
use std::cell::RefCell;
use std::ops::{Range, RangeInclusive};

use crate::cache::LayerCache;
use half::f16;

use crate::ops::expf;

/// The attention geometry of one layer.
pub(crate) struct AttnShape {
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
    /// Positions a query may look back, itself included; `None` for full attention.
    pub(crate) window: Option<usize>,
    pub(crate) scale: f32,
}

/// Lanes of the vectors llama.cpp's attention products accumulate in (tinyBLAS, AVX512).
const LANES: usize = 16;

thread_local! {
    /// Per-thread scratch: scores of one query, then the 16 lane accumulators of its output.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Rounds queries to f16 precision in place, as llama.cpp does before q·k.
pub(crate) fn round_queries(q: &mut [f32]) {
    q.iter_mut().for_each(|v| *v = round_f16(*v));
}

/// Σ of 16 lanes in the order `_mm512_reduce_add_ps` expands to (halves, quarters, pairs).
#[inline(always)]
fn reduce16(a: &[f32; LANES]) -> f32 {
    let h: [f32; 8] = std::array::from_fn(|i| a[8 + i] + a[i]);
    let q: [f32; 4] = std::array::from_fn(|i| h[4 + i] + h[i]);
    (q[0] + q[2]) + (q[1] + q[3])
}

/// One head's view of a layer cache: position t's keys and values start at `t·stride + offset`.
struct Head<'a> {
    k: &'a [f16],
    v: &'a [f16],
    stride: usize,
    offset: usize,
    dim: usize,
}

impl Head<'_> {
    fn key(&self, t: usize) -> &[f16] {
        &self.k[t * self.stride + self.offset..][..self.dim]
    }

    fn value(&self, t: usize) -> &[f16] {
        &self.v[t * self.stride + self.offset..][..self.dim]
    }

    /// `scale · q·k` for the positions in `range`, appended to `out`. Each product is computed
    /// as llama.cpp's f16 GEMM does: lane l accumulates elements l, l+16, … by FMA, then the
    /// lanes are reduced. Products of two f16 values are exact in f32.
    fn scores(&self, q: &[f32], range: RangeInclusive<usize>, scale: f32, out: &mut Vec<f32>) {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // SAFETY: AVX512F is present; the cache holds every position in `range`.
            return unsafe { simd::scores(self, q, range, scale, out) };
        }
        out.extend(range.map(|t| {
            let mut acc = [0f32; LANES];
            for (qc, kc) in q.chunks_exact(LANES).zip(self.key(t).chunks_exact(LANES)) {
                for l in 0..LANES {
                    acc[l] = kc[l].to_f32().mul_add(qc[l], acc[l]);
                }
            }
            reduce16(&acc) * scale
        }));
    }

    /// Adds `p[i] · v` of position `first + i` to lane `(first + i) mod 16` of `lanes`
    /// (16 rows of `dim` values), as the f16 GEMM of the weighted sum does.
    fn weigh(&self, p: &[f32], first: usize, lanes: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd::available() {
            // SAFETY: AVX512F is present; the cache holds every position weighed.
            return unsafe { simd::weigh(self, p, first, lanes) };
        }
        for (t, &p) in (first..).zip(p) {
            let acc = &mut lanes[(t % LANES) * self.dim..][..self.dim];
            for (a, v) in acc.iter_mut().zip(self.value(t)) {
                *a = v.to_f32().mul_add(p, *a);
            }
        }
    }
}

/// `out[d] = reduce16(lanes[0·hd + d], …, lanes[15·hd + d])` for every d, elementwise (the
/// tree is folded into `lanes`, which is scratch).
fn reduce_lanes(lanes: &mut [f32], out: &mut [f32]) {
    let hd = out.len();
    for width in [8, 4] {
        for i in 0..width {
            let (low, high) = lanes.split_at_mut((i + width) * hd);
            for (a, b) in low[i * hd..(i + 1) * hd].iter_mut().zip(&high[..hd]) {
                *a += *b;
            }
        }
    }
    let lane = |l: usize| &lanes[l * hd..(l + 1) * hd];
    for (d, o) in out.iter_mut().enumerate() {
        *o = (lane(0)[d] + lane(2)[d]) + (lane(1)[d] + lane(3)[d]);
    }
}

/// AVX512 forms of the attention products, bit-identical to the portable ones: the same
/// FMAs per lane and the same reduction tree.
#[cfg(target_arch = "x86_64")]
mod simd {
    use core::arch::x86_64::*;
    use std::ops::RangeInclusive;

    use super::{Head, LANES};

    pub(super) fn available() -> bool {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn scores(
        head: &Head,
        q: &[f32],
        range: RangeInclusive<usize>,
        scale: f32,
        out: &mut Vec<f32>,
    ) {
        // SAFETY: the caller guarantees AVX512F; keys hold `dim` (a multiple of 16) values.
        unsafe {
            for t in range {
                let k = head.key(t);
                let mut acc = _mm512_setzero_ps();
                for j in (0..head.dim).step_by(16) {
                    let kv = _mm512_cvtph_ps(_mm256_loadu_si256(k.as_ptr().add(j).cast()));
                    acc = _mm512_fmadd_ps(kv, _mm512_loadu_ps(q.as_ptr().add(j)), acc);
                }
                // reduce16: halves, quarters, then (q0 + q2) + (q1 + q3).
                let lo = _mm512_castps512_ps256(acc);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
                let h = _mm256_add_ps(hi, lo);
                let q4 = _mm_add_ps(_mm256_extractf128_ps::<1>(h), _mm256_castps256_ps128(h));
                let t2 = _mm_add_ps(q4, _mm_movehl_ps(q4, q4));
                out.push(_mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2))) * scale);
            }
        }
    }

    /// `s = expf(s − max)` over `scores`, operation for operation as [`crate::ops::expf`].
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn exp_shifted(scores: &mut [f32], max: f32) {
        let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
        let mut chunks = scores.chunks_exact_mut(16);
        for chunk in chunks.by_ref() {
            // SAFETY: 16 floats per chunk; AVX512F per the caller.
            unsafe {
                let p = chunk.as_mut_ptr();
                let x = _mm512_sub_ps(_mm512_loadu_ps(p), _mm512_set1_ps(max));
                let shift = c(0x4b40_0000);
                let n = _mm512_sub_ps(_mm512_fmadd_ps(x, c(0x3fb8_aa3b), shift), shift);
                let b = _mm512_fnmadd_ps(n, c(0x35bf_be8e), _mm512_fnmadd_ps(n, c(0x3f31_7200), x));
                let u = _mm512_mul_ps(b, b);
                let j = _mm512_fmadd_ps(
                    _mm512_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
                    u,
                    _mm512_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
                );
                let j = _mm512_fmadd_ps(
                    j,
                    u,
                    _mm512_fmadd_ps(c(0x3f7f_fff6), b, _mm512_set1_ps(1.0)),
                );
                let lim = _mm512_set1_ps(192.0);
                let ni = _mm512_cvttps_epi32(_mm512_min_ps(
                    _mm512_max_ps(n, _mm512_set1_ps(-192.0)),
                    lim,
                ));
                let half = _mm512_srai_epi32::<1>(ni);
                let pow2 = |e: __m512i| {
                    _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                        e,
                        _mm512_set1_epi32(127),
                    )))
                };
                let r = _mm512_mul_ps(
                    _mm512_mul_ps(j, pow2(half)),
                    pow2(_mm512_sub_epi32(ni, half)),
                );
                let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), lim);
                let low = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
                let alt =
                    _mm512_mask_blend_ps(low, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
                _mm512_storeu_ps(p, _mm512_mask_blend_ps(big, r, alt));
            }
        }
        for s in chunks.into_remainder() {
            *s = crate::ops::expf(*s - max);
        }
    }

    /// `s = f16(s · inv)` as f32, rounding to nearest even like `f16::from_f32`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn scale_to_f16(scores: &mut [f32], inv: f32) {
        let mut chunks = scores.chunks_exact_mut(16);
        for chunk in chunks.by_ref() {
            // SAFETY: 16 floats per chunk; AVX512F per the caller.
            unsafe {
                let p = chunk.as_mut_ptr();
                let v = _mm512_mul_ps(_mm512_loadu_ps(p), _mm512_set1_ps(inv));
                let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm512_storeu_ps(p, _mm512_cvtph_ps(h));
            }
        }
        for s in chunks.into_remainder() {
            *s = super::round_f16(*s * inv);
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn weigh(head: &Head, p: &[f32], first: usize, lanes: &mut [f32]) {
        // SAFETY: the caller guarantees AVX512F; values and lanes hold `dim` (a multiple of
        // 16) values per position and lane.
        unsafe {
            for (t, &p) in (first..).zip(p) {
                let (v, pv) = (head.value(t), _mm512_set1_ps(p));
                let acc = lanes.as_mut_ptr().add((t % LANES) * head.dim);
                for j in (0..head.dim).step_by(16) {
                    let vv = _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().add(j).cast()));
                    let a = acc.add(j);
                    _mm512_storeu_ps(a, _mm512_fmadd_ps(vv, pv, _mm512_loadu_ps(a)));
                }
            }
        }
    }
}

/// For each of the `rows` queries in `q` (query i sits at position `start + i`, and the cache
/// already holds its key), writes the attention output of every head to `out`. Scores are
/// `scale · q·k`; pass queries through [`round_queries`] first.
pub(crate) fn attention(
    q: &[f32],
    cache: &LayerCache,
    start: usize,
    rows: usize,
    shape: &AttnShape,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let q_dim = shape.num_heads * hd;
    let kv_dim = shape.num_kv_heads * hd;
    let group = shape.num_heads / shape.num_kv_heads;
    debug_assert!(q.len() >= rows * q_dim && out.len() >= rows * q_dim);
    debug_assert!(cache.k.len() >= (start + rows) * kv_dim);
    let out_ptr = out.as_mut_ptr() as usize;

    let run = |items: Range<usize>| {
        SCRATCH.with(|scratch| {
            let (scores, lanes) = &mut *scratch.borrow_mut();
            lanes.resize(LANES * hd, 0.0);
            for item in items {
                let (i, h) = (item / shape.num_heads, item % shape.num_heads);
                let pos = start + i;
                let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let qh = &q[i * q_dim + h * hd..][..hd];
                let head = Head {
                    k: &cache.k,
                    v: &cache.v,
                    stride: kv_dim,
                    offset: (h / group) * hd,
                    dim: hd,
                };
                scores.clear();
                head.scores(qh, first..=pos, shape.scale, scores);
                softmax16(scores, first);
                lanes.fill(0.0);
                head.weigh(scores, first, lanes);
                // SAFETY: item (i, h) alone writes this head_dim-long slice of `out`.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_ptr as *mut f32).add(i * q_dim + h * hd),
                        hd,
                    )
                };
                reduce_lanes(lanes, o);
            }
        })
    };

    let items = rows * shape.num_heads;
    let span = shape.window.unwrap_or(usize::MAX).min(start + rows);
    let pool = candle_core::utils::barrier_pool();
    if items * span * hd < 64 * 1024 || pool.n_workers() == 0 {
        run(0..items);
    } else {
        pool.execute_chunked(items, run);
    }
}

/// Softmax of the scores of positions `first..` in place, rounded to f16 like llama.cpp's
/// (ggml's e^x, the sum of each aligned 16-position chunk reduced as one vector and added in
/// f64, then one f32 reciprocal). Masked positions contribute zeros to their chunks.
fn softmax16(scores: &mut [f32], first: usize) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    #[cfg(target_arch = "x86_64")]
    let done = simd::available() && {
        // SAFETY: AVX512F is present.
        unsafe { simd::exp_shifted(scores, max) };
        true
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        for s in scores.iter_mut() {
            *s = expf(*s - max);
        }
    }
    let mut sum = 0f64;
    let mut t = first;
    let end = first + scores.len();
    while t < end {
        let chunk_end = ((t / LANES) + 1) * LANES;
        let mut lanes = [0f32; LANES];
        for u in t..chunk_end.min(end) {
            lanes[u % LANES] = scores[u - first];
        }
        sum += f64::from(reduce16(&lanes));
        t = chunk_end;
    }
    let inv = (1.0 / sum) as f32;
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: AVX512F is present.
        return unsafe { simd::scale_to_f16(scores, inv) };
    }
    for s in scores.iter_mut() {
        *s = round_f16(*s * inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halves(n: usize, seed: u32) -> Vec<f16> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) % 2001)
            .map(|v| f16::from_f32(v as f32 / 1000.0 - 1.0))
            .collect()
    }

    #[test]
    fn simd_products_equal_the_portable_ones_bit_for_bit() {
        let (dim, stride, positions) = (64, 128, 40);
        let k = halves(stride * positions, 11);
        let v = halves(stride * positions, 13);
        let q: Vec<f32> = halves(dim, 7).iter().map(|h| h.to_f32() * 3.0).collect();
        let head = Head {
            k: &k,
            v: &v,
            stride,
            offset: 64,
            dim,
        };
        let p: Vec<f32> = (0..30).map(|i| i as f32 / 100.0).collect();
        let (mut portable, mut lanes_portable) = (Vec::new(), vec![0f32; LANES * dim]);
        let mut acc = [0f32; LANES];
        for t in 3..=33 {
            acc.fill(0.0);
            for (qc, kc) in q.chunks_exact(LANES).zip(head.key(t).chunks_exact(LANES)) {
                for l in 0..LANES {
                    acc[l] = kc[l].to_f32().mul_add(qc[l], acc[l]);
                }
            }
            portable.push(reduce16(&acc) * 0.5);
        }
        for (t, &p) in (5..).zip(&p) {
            let acc = &mut lanes_portable[(t % LANES) * dim..][..dim];
            for (a, v) in acc.iter_mut().zip(head.value(t)) {
                *a = v.to_f32().mul_add(p, *a);
            }
        }
        let mut scores = Vec::new();
        head.scores(&q, 3..=33, 0.5, &mut scores);
        assert_eq!(scores, portable);
        let mut lanes = vec![0f32; LANES * dim];
        head.weigh(&p, 5, &mut lanes);
        assert_eq!(lanes, lanes_portable);
    }

    #[test]
    fn simd_softmax_equals_the_portable_one_bit_for_bit() {
        let x: Vec<f32> = (0..45)
            .map(|i| (i as f32 * 1.37).sin() * 9.0 - 2.0)
            .collect();
        let mut simd = x.clone();
        softmax16(&mut simd, 3);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = x.iter().map(|v| expf(v - max)).collect();
        let mut sum = 0f64;
        for chunk_start in (0..48).step_by(16) {
            let lanes = std::array::from_fn(|l| match (chunk_start + l).checked_sub(3) {
                Some(i) if i < e.len() => e[i],
                _ => 0.0,
            });
            sum += f64::from(reduce16(&lanes));
        }
        let inv = (1.0 / sum) as f32;
        let portable: Vec<f32> = e.iter().map(|v| round_f16(v * inv)).collect();
        assert_eq!(simd, portable);
    }

    #[test]
    fn lane_reduction_follows_the_16_lane_tree() {
        let hd = 32;
        let mut lanes: Vec<f32> = (0..16 * hd).map(|i| (i as f32 * 0.618).sin()).collect();
        let want: Vec<f32> = (0..hd)
            .map(|d| reduce16(&std::array::from_fn(|l| lanes[l * hd + d])))
            .collect();
        let mut out = vec![0f32; hd];
        reduce_lanes(&mut lanes, &mut out);
        assert_eq!(out, want);
    }
}
