//! Causal multi-head attention over a layer's cached keys and values, with grouped key/value
//! heads and an optional sliding window; (query, head) pairs are spread over the thread pool
//! once the work is large enough to pay for the wake-up.
use std::cell::RefCell;
use std::ops::Range;

use crate::cache::LayerCache;
use crate::ops::{axpy_f16, dot_f16, softmax_in_place};

/// The attention geometry of one layer.
pub(crate) struct AttnShape {
    pub(crate) num_heads: usize,
    pub(crate) num_kv_heads: usize,
    pub(crate) head_dim: usize,
    /// Positions a query may look back, itself included; `None` for full attention.
    pub(crate) window: Option<usize>,
    pub(crate) scale: f32,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// For each of the `rows` queries in `q` (query i sits at position `start + i`, and the cache
/// already holds its key), writes the attention output of every head to `out`.
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
        SCORES.with(|scores| {
            let mut scores = scores.borrow_mut();
            for item in items {
                let (i, h) = (item / shape.num_heads, item % shape.num_heads);
                let pos = start + i;
                let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let qh = &q[i * q_dim + h * hd..][..hd];
                let kv_off = (h / group) * hd;
                scores.clear();
                scores.extend(
                    (first..=pos)
                        .map(|t| shape.scale * dot_f16(qh, &cache.k[t * kv_dim + kv_off..][..hd])),
                );
                softmax_in_place(&mut scores);
                // SAFETY: item (i, h) alone writes this head_dim-long slice of `out`.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_ptr as *mut f32).add(i * q_dim + h * hd),
                        hd,
                    )
                };
                o.fill(0.0);
                for (t, &p) in (first..=pos).zip(scores.iter()) {
                    axpy_f16(o, p, &cache.v[t * kv_dim + kv_off..][..hd]);
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
