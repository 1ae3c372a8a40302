//! Per-sequence key/value cache: f16 rows (as llama.cpp stores them) appended in place into
//! buffers that grow geometrically, so a decode step copies one row per layer and nothing else.
use half::f16;

/// Keys and values of one layer, `[position][kv_head][head_dim]`.
pub(crate) struct LayerCache {
    pub(crate) k: Vec<f16>,
    pub(crate) v: Vec<f16>,
}

/// The attention state of one sequence. Several may be alive for one model; each belongs to
/// the model whose [`new_cache`](crate::QuantizedModel::new_cache) made it.
pub struct KvCache {
    len: usize,
    max_len: usize,
    kv_dim: usize,
    pub(crate) layers: Vec<LayerCache>,
}

/// Positions reserved up front, so short sequences never reallocate.
const INITIAL_POSITIONS: usize = 256;

impl KvCache {
    pub(crate) fn new(num_layers: usize, kv_dim: usize, max_len: usize) -> Self {
        let layers = (0..num_layers)
            .map(|_| LayerCache {
                k: Vec::new(),
                v: Vec::new(),
            })
            .collect();
        Self {
            len: 0,
            max_len,
            kv_dim,
            layers,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens this cache accepts (the model's context length).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets the sequence, keeping the buffers for the next one.
    pub fn clear(&mut self) {
        self.len = 0;
        for l in &mut self.layers {
            l.k.clear();
            l.v.clear();
        }
    }

    /// Bytes of memory reserved by the buffers.
    pub fn bytes(&self) -> u64 {
        let elems: usize = self
            .layers
            .iter()
            .map(|l| l.k.capacity() + l.v.capacity())
            .sum();
        (elems * std::mem::size_of::<f16>()) as u64
    }

    pub(crate) fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// Makes room for `extra` more positions in every layer, doubling capacity so that a
    /// long sequence reallocates O(log n) times, never beyond `max_len`.
    pub(crate) fn reserve(&mut self, extra: usize) {
        let needed = self.len + extra;
        for l in &mut self.layers {
            let have = l.k.capacity() / self.kv_dim.max(1);
            if have < needed {
                let target = needed
                    .max(2 * have)
                    .max(INITIAL_POSITIONS)
                    .min(self.max_len.max(needed));
                let add = target * self.kv_dim - l.k.len();
                l.k.reserve_exact(add);
                l.v.reserve_exact(add);
            }
        }
    }

    /// Records that every layer now holds `extra` more positions.
    pub(crate) fn advance(&mut self, extra: usize) {
        self.len += extra;
        debug_assert!(self
            .layers
            .iter()
            .all(|l| l.k.len() == self.len * self.kv_dim));
    }
}

impl LayerCache {
    /// Appends rows of keys and values (each a multiple of kv_dim long) as f16.
    pub(crate) fn append(&mut self, k: &[f32], v: &[f32]) {
        self.k.extend(k.iter().map(|&x| f16::from_f32(x)));
        self.v.extend(v.iter().map(|&x| f16::from_f32(x)));
    }
}
