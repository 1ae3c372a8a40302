//! The decoder itself: builds llama / qwen2 / gemma3 layers from GGUF tensors and runs tokens
//! through them, appending to a caller-owned KV cache and returning the last position's logits.
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::Content;
use candle_core::Device;

use crate::attention::{attention, round_queries, AttnShape};
use crate::cache::{KvCache, LayerCache};
use crate::config::{Architecture, ModelConfig};
use crate::kernels::{matmul, Product};
use crate::loader::TensorSource;
use crate::ops::{add_in_place, gelu_mul, rms_norm, rms_norm_in_place, silu_mul, RopeTable};
use crate::quant::{Activations, QMatrix};
use crate::ModelError;

/// Prompt tokens processed per pass; bounds scratch memory for long prompts.
const PREFILL_CHUNK: usize = 256;

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    /// q/k/v biases (qwen2).
    biases: Option<[Vec<f32>; 3]>,
    /// Per-head RMS norms of queries and keys (gemma3).
    qk_norm: Option<[Vec<f32>; 2]>,
    wo: QMatrix,
    /// Norms of the attention and FFN outputs before their residual adds (gemma3).
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix,
    w_up: QMatrix,
    w_down: QMatrix,
    post_ffn_norm: Option<Vec<f32>>,
    sliding: bool,
}

/// A quantized decoder loaded from GGUF, run on the CPU with coe's quantized kernels.
pub struct QuantizedModel {
    config: ModelConfig,
    embed: QMatrix,
    /// The LM head; `None` when it is tied to `embed`.
    output: Option<QMatrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope_global: RopeTable,
    /// Rope of sliding-window layers when their base differs (gemma3).
    rope_local: Option<RopeTable>,
    weight_bytes: u64,
}

/// Buffers of one forward pass, sized for `rows` tokens.
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    acts: Activations,
}

impl Scratch {
    fn new(c: &ModelConfig, rows: usize) -> Self {
        let q_dim = c.num_heads * c.head_dim;
        let kv_dim = c.num_kv_heads * c.head_dim;
        let z = |n: usize| vec![0f32; rows * n];
        Self {
            x: z(c.hidden_size),
            h: z(c.hidden_size),
            q: z(q_dim),
            k: z(kv_dim),
            v: z(kv_dim),
            attn: z(q_dim),
            o: z(c.hidden_size),
            gate: z(c.ffn_size),
            up: z(c.ffn_size),
            acts: Activations::default(),
        }
    }
}

impl QuantizedModel {
    /// Builds the model from a parsed GGUF. `reader` gives the tensor bytes (a `File` or a
    /// `Cursor` over bytes staged in memory); each tensor is read once, a few hundred rows at a
    /// time, and repacked into the buffers the model keeps. `max_context` caps the context:
    /// rope tables and caches are sized to min(trained context, max_context). Only
    /// `Device::Cpu` is supported.
    pub fn from_gguf<R: Read + Seek>(
        content: &Content,
        reader: &mut R,
        device: &Device,
        max_context: usize,
    ) -> Result<Self, ModelError> {
        if !device.is_cpu() {
            return Err(ModelError::UnsupportedDevice(format!("{device:?}")));
        }
        let config = ModelConfig::from_gguf(content, max_context)?;
        let c = &config;
        let mut src = TensorSource::new(content, reader);
        let (hidden, hd) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.num_heads * hd, c.num_kv_heads * hd);

        let embed = src.matrix("token_embd.weight", c.vocab_size, hidden)?;
        let output = match src.has("output.weight") {
            true => Some(src.matrix("output.weight", c.vocab_size, hidden)?),
            false => None,
        };
        let output_norm = src.vector("output_norm.weight", hidden)?;
        let gemma = c.architecture == Architecture::Gemma3;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let name = |t: &str| format!("blk.{i}.{t}");
            let biases = match c.architecture {
                Architecture::Qwen2 => Some([
                    src.vector(&name("attn_q.bias"), q_dim)?,
                    src.vector(&name("attn_k.bias"), kv_dim)?,
                    src.vector(&name("attn_v.bias"), kv_dim)?,
                ]),
                _ => None,
            };
            let qk_norm = match gemma {
                true => Some([
                    src.vector(&name("attn_q_norm.weight"), hd)?,
                    src.vector(&name("attn_k_norm.weight"), hd)?,
                ]),
                false => None,
            };
            layers.push(Layer {
                attn_norm: src.vector(&name("attn_norm.weight"), hidden)?,
                wq: src.matrix(&name("attn_q.weight"), q_dim, hidden)?,
                wk: src.matrix(&name("attn_k.weight"), kv_dim, hidden)?,
                wv: src.matrix(&name("attn_v.weight"), kv_dim, hidden)?,
                biases,
                qk_norm,
                wo: src.matrix(&name("attn_output.weight"), hidden, q_dim)?,
                post_attn_norm: match gemma {
                    true => Some(src.vector(&name("post_attention_norm.weight"), hidden)?),
                    false => None,
                },
                ffn_norm: src.vector(&name("ffn_norm.weight"), hidden)?,
                w_gate: src.matrix(&name("ffn_gate.weight"), c.ffn_size, hidden)?,
                w_up: src.matrix(&name("ffn_up.weight"), c.ffn_size, hidden)?,
                w_down: src.matrix(&name("ffn_down.weight"), hidden, c.ffn_size)?,
                post_ffn_norm: match gemma {
                    true => Some(src.vector(&name("post_ffw_norm.weight"), hidden)?),
                    false => None,
                },
                sliding: c.is_sliding_layer(i),
            });
        }

        let rope_global =
            RopeTable::new(c.rope_dim, c.rope_base, c.rope_freq_scale, c.context_length);
        // Sliding layers never see rope scaling (llama.cpp's freq_scale_swa is 1).
        let rope_local = (c.sliding_window.is_some()
            && (c.rope_base_local != c.rope_base || c.rope_freq_scale != 1.0))
            .then(|| RopeTable::new(c.rope_dim, c.rope_base_local, 1.0, c.context_length));

        let matrices = layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        let vectors: usize = layers
            .iter()
            .map(|l| {
                let opt = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, Vec::len);
                l.attn_norm.len()
                    + l.ffn_norm.len()
                    + opt(&l.post_attn_norm)
                    + opt(&l.post_ffn_norm)
                    + l.biases
                        .as_ref()
                        .map_or(0, |b| b.iter().map(Vec::len).sum())
                    + l.qk_norm
                        .as_ref()
                        .map_or(0, |b| b.iter().map(Vec::len).sum())
            })
            .sum();
        let weight_bytes = matrices.map(QMatrix::bytes).sum::<usize>()
            + embed.bytes()
            + output.as_ref().map_or(0, QMatrix::bytes)
            + 4 * (vectors + output_norm.len())
            + rope_global.bytes()
            + rope_local.as_ref().map_or(0, RopeTable::bytes);
        tracing::info!(
            architecture = %c.architecture,
            layers = c.num_layers,
            context = c.context_length,
            weight_bytes,
            kernels = %crate::kernel_level(),
            "loaded quantized model"
        );
        Ok(Self {
            config,
            embed,
            output,
            output_norm,
            layers,
            rope_global,
            rope_local,
            weight_bytes: weight_bytes as u64,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// A fresh, empty KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        let c = &self.config;
        KvCache::new(c.num_layers, c.num_kv_heads * c.head_dim, c.context_length)
    }

    /// Approximate bytes of weights held (quantized matrices, norms, rope tables).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Runs `tokens`, the next tokens of the sequence (positions `cache.len()..`), appends them
    /// to `cache` and returns the logits of the last one (`vocab_size` values).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        if cache.layers.len() != c.num_layers || cache.kv_dim() != c.num_kv_heads * c.head_dim {
            return Err(ModelError::CacheMismatch {
                detail: format!(
                    "{} layers of {} values per position, this model has {} of {}",
                    cache.layers.len(),
                    cache.kv_dim(),
                    c.num_layers,
                    c.num_kv_heads * c.head_dim
                ),
            });
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::InvalidToken {
                token,
                vocab_size: c.vocab_size,
            });
        }
        let len = cache.len() + tokens.len();
        if len > c.context_length {
            return Err(ModelError::ContextFull {
                len,
                max: c.context_length,
            });
        }
        let mut scratch = Scratch::new(c, tokens.len().min(PREFILL_CHUNK));
        let mut chunks = tokens.chunks(PREFILL_CHUNK).peekable();
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.run_layers(chunk, cache, &mut scratch, last);
            if last {
                return Ok(self.logits(chunk.len() - 1, &mut scratch));
            }
        }
        unreachable!("tokens is not empty")
    }

    /// Runs one chunk of tokens through every layer, leaving the final hidden states in `s.x`.
    /// With `last_only`, the last layer finishes only the last token: the others' outputs
    /// feed nothing (their keys and values are cached before that point).
    fn run_layers(&self, tokens: &[u32], cache: &mut KvCache, s: &mut Scratch, last_only: bool) {
        let c = &self.config;
        let rows = tokens.len();
        let hidden = c.hidden_size;
        let start = cache.len();
        cache.reserve(rows);

        let x = &mut s.x[..rows * hidden];
        for (row, &t) in x.chunks_exact_mut(hidden).zip(tokens) {
            self.embed.dequantize_row(t as usize, row);
        }
        if c.architecture == Architecture::Gemma3 {
            let scale = (hidden as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        let n_layers = self.layers.len();
        for (l, (layer, kv)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let outputs = match last_only && l + 1 == n_layers {
                true => rows - 1..rows,
                false => 0..rows,
            };
            self.layer(layer, kv, s, start, rows, outputs);
        }
        cache.advance(rows);
    }

    /// One decoder layer over `rows` tokens at positions `start..`: caches the keys and values
    /// of all of them and updates the hidden states of the rows in `outputs`.
    fn layer(
        &self,
        layer: &Layer,
        kv: &mut LayerCache,
        s: &mut Scratch,
        start: usize,
        rows: usize,
        outputs: std::ops::Range<usize>,
    ) {
        let c = &self.config;
        let (hidden, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let (q_dim, kv_dim) = (c.num_heads * hd, c.num_kv_heads * hd);
        let (x, h) = (&mut s.x[..rows * hidden], &mut s.h[..rows * hidden]);
        for (xr, hr) in x.chunks_exact(hidden).zip(h.chunks_exact_mut(hidden)) {
            rms_norm(xr, &layer.attn_norm, eps, hr);
        }
        let q = &mut s.q[..rows * q_dim];
        let (k, v) = (&mut s.k[..rows * kv_dim], &mut s.v[..rows * kv_dim]);
        let mut products = [
            Product {
                w: &layer.wq,
                out: q,
            },
            Product {
                w: &layer.wk,
                out: k,
            },
            Product {
                w: &layer.wv,
                out: v,
            },
        ];
        matmul(h, rows, &mut s.acts, &mut products);
        let [q, k, v] = products.map(|p| p.out);
        if let Some([bq, bk, bv]) = &layer.biases {
            q.chunks_exact_mut(q_dim).for_each(|r| add_in_place(r, bq));
            k.chunks_exact_mut(kv_dim).for_each(|r| add_in_place(r, bk));
            v.chunks_exact_mut(kv_dim).for_each(|r| add_in_place(r, bv));
        }
        if let Some([qn, kn]) = &layer.qk_norm {
            q.chunks_exact_mut(hd)
                .for_each(|head| rms_norm_in_place(head, qn, eps));
            k.chunks_exact_mut(hd)
                .for_each(|head| rms_norm_in_place(head, kn, eps));
        }
        let rope = match (layer.sliding, &self.rope_local) {
            (true, Some(local)) => local,
            _ => &self.rope_global,
        };
        for (i, (qr, kr)) in q
            .chunks_exact_mut(q_dim)
            .zip(k.chunks_exact_mut(kv_dim))
            .enumerate()
        {
            rope.apply(qr, hd, start + i, c.rope_style);
            rope.apply(kr, hd, start + i, c.rope_style);
        }
        kv.append(k, v);

        let n = outputs.len();
        let q = &mut q[outputs.start * q_dim..outputs.end * q_dim];
        // gemma3 scales queries before q·k, the others scale the scores; the two differ only
        // in where llama.cpp's f16 rounding of the queries falls.
        let scale = match c.architecture {
            Architecture::Gemma3 => {
                q.iter_mut().for_each(|v| *v *= c.query_scale);
                1.0
            }
            Architecture::Llama | Architecture::Qwen2 => c.query_scale,
        };
        round_queries(q);
        let shape = AttnShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: hd,
            window: c.sliding_window.filter(|_| layer.sliding),
            scale,
        };
        let attn = &mut s.attn[..n * q_dim];
        attention(q, kv, start + outputs.start, n, &shape, attn);

        let x = &mut s.x[outputs.start * hidden..outputs.end * hidden];
        let (h, o) = (&mut s.h[..n * hidden], &mut s.o[..n * hidden]);
        matmul(
            attn,
            n,
            &mut s.acts,
            &mut [Product {
                w: &layer.wo,
                out: o,
            }],
        );
        if let Some(norm) = &layer.post_attn_norm {
            o.chunks_exact_mut(hidden)
                .for_each(|r| rms_norm_in_place(r, norm, eps));
        }
        add_in_place(x, o);

        for (xr, hr) in x.chunks_exact(hidden).zip(h.chunks_exact_mut(hidden)) {
            rms_norm(xr, &layer.ffn_norm, eps, hr);
        }
        let (gate, up) = (&mut s.gate[..n * c.ffn_size], &mut s.up[..n * c.ffn_size]);
        let mut products = [
            Product {
                w: &layer.w_gate,
                out: gate,
            },
            Product {
                w: &layer.w_up,
                out: up,
            },
        ];
        matmul(h, n, &mut s.acts, &mut products);
        let [gate, up] = products.map(|p| p.out);
        match c.architecture {
            Architecture::Gemma3 => gelu_mul(gate, up),
            Architecture::Llama | Architecture::Qwen2 => silu_mul(gate, up),
        }
        matmul(
            gate,
            n,
            &mut s.acts,
            &mut [Product {
                w: &layer.w_down,
                out: o,
            }],
        );
        if let Some(norm) = &layer.post_ffn_norm {
            o.chunks_exact_mut(hidden)
                .for_each(|r| rms_norm_in_place(r, norm, eps));
        }
        add_in_place(x, o);
    }

    /// Logits of chunk row `row` from the final hidden states in `s.x`.
    fn logits(&self, row: usize, s: &mut Scratch) -> Vec<f32> {
        let c = &self.config;
        let hidden = c.hidden_size;
        let h = &mut s.h[..hidden];
        rms_norm(
            &s.x[row * hidden..(row + 1) * hidden],
            &self.output_norm,
            c.rms_norm_eps,
            h,
        );
        let head = self.output.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; c.vocab_size];
        matmul(
            h,
            1,
            &mut s.acts,
            &mut [Product {
                w: head,
                out: &mut logits,
            }],
        );
        if let Some(cap) = c.final_logit_softcap {
            logits.iter_mut().for_each(|l| *l = cap * (*l / cap).tanh());
        }
        logits
    }
}
