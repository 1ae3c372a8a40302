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
use std::ops::Range;

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

/// q·k as llama.cpp's f16 GEMM computes it: lane l accumulates elements l, l+16, … by FMA,
/// then the lanes are reduced. Products of two f16 values are exact in f32.
#[inline]
fn dot16(q: &[f32], k: &[f16]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut qc = q.chunks_exact(LANES);
    for (qc, kc) in qc.by_ref().zip(k.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = kc[l].to_f32().mul_add(qc[l], acc[l]);
        }
    }
    // Heads that are not a multiple of 16 wide (none of the supported models) add the rest.
    let tail: f32 = qc
        .remainder()
        .iter()
        .zip(k.chunks_exact(LANES).remainder())
        .map(|(a, b)| a * b.to_f32())
        .sum();
    reduce16(&acc) + tail
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
                let kv_off = (h / group) * hd;
                let at = |t: usize| t * kv_dim + kv_off;

                scores.clear();
                scores.extend(
                    (first..=pos).map(|t| dot16(qh, &cache.k[at(t)..][..hd]) * shape.scale),
                );
                softmax16(scores, first);

                // Σ p·v with lane l taking the positions t ≡ l (mod 16), as the f16 GEMM does.
                lanes.fill(0.0);
                for (t, &p) in (first..=pos).zip(scores.iter()) {
                    let acc = &mut lanes[(t % LANES) * hd..][..hd];
                    for (a, v) in acc.iter_mut().zip(&cache.v[at(t)..][..hd]) {
                        *a = v.to_f32().mul_add(p, *a);
                    }
                }
                // SAFETY: item (i, h) alone writes this head_dim-long slice of `out`.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_ptr as *mut f32).add(i * q_dim + h * hd),
                        hd,
                    )
                };
                for (d, o) in o.iter_mut().enumerate() {
                    *o = reduce16(&std::array::from_fn(|l| lanes[l * hd + d]));
                }
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
    for s in scores.iter_mut() {
        *s = expf(*s - max);
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
    for s in scores.iter_mut() {
        *s = round_f16(*s * inv);
    }
}
