//! The BERT encoder of MiniLM, run on plain f32 buffers: one matrix product per dense layer, fused
//! bias/GELU/residual/LayerNorm passes, and scratch buffers reused across calls so a query allocates
//! almost nothing.
//!
//! Sequences are packed back to back instead of padded: every dense layer sees only real tokens and
//! attention runs per sequence. That is what padding to the longest plus the attention mask computes
//! (masked keys get zero weight, pooling skips padding), without the work on padding.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

#[cfg(target_arch = "x86_64")]
use super::kernel_amx;
use super::linear::{DenseKernel, Linear, PackBuffers};
use super::math::{
    add_layer_norm, exp_shifted_in_place, gelu_in_place, layer_norm, softmax_in_place,
};
use super::EmbedError;

#[cfg(target_arch = "x86_64")]
mod team;

/// The fields of a Hugging Face BERT `config.json` that the forward pass needs.
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Query, key and value fused into one product: `[hidden, 3 * hidden]`.
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    output: Linear,
    out_norm: Norm,
}

pub struct Bert {
    cfg: BertConfig,
    kernel: DenseKernel,
    word: Vec<f32>,
    position: Vec<f32>,
    /// Row 0 of the token-type table: single-sentence inputs only ever use type 0.
    token_type0: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    /// Whether the whole pass runs on the tile unit, every pool thread at once (`team`).
    amx_team: bool,
}

/// Buffers of one forward pass, grown to the largest batch seen and then reused.
#[derive(Default)]
pub struct Scratch {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    ctx_by_head: Vec<f32>,
    ctx: Vec<f32>,
    proj: Vec<f32>,
    inter: Vec<f32>,
    pack: PackBuffers,
    /// The bf16 tiles of the AMX pass's product inputs, `hidden_size` and `intermediate_size` wide.
    packed_in: Vec<u16>,
    packed_wide: Vec<u16>,
}

fn resize(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}

struct Tensors<'a> {
    map: HashMap<String, Tensor>,
    path: &'a Path,
    kernel: DenseKernel,
}

impl Tensors<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbedError> {
        let err = |reason: String| EmbedError::Weights {
            path: self.path.display().to_string(),
            reason,
        };
        let t = self
            .map
            .get(name)
            .ok_or_else(|| err(format!("tensor {name} is missing")))?;
        if t.dims() != shape {
            return Err(err(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        t.to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| err(format!("tensor {name}: {e}")))
    }

    fn norm(&self, prefix: &str, h: usize) -> Result<Norm, EmbedError> {
        Ok(Norm {
            gamma: self.get(&format!("{prefix}.weight"), &[h])?,
            beta: self.get(&format!("{prefix}.bias"), &[h])?,
        })
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize) -> Result<Linear, EmbedError> {
        let w = self.get(&format!("{prefix}.weight"), &[out, inp])?;
        let b = self.get(&format!("{prefix}.bias"), &[out])?;
        Ok(Linear::new(&w, b, out, inp, self.kernel))
    }
}

impl Bert {
    pub fn load(weights: &Path, cfg: BertConfig, kernel: DenseKernel) -> Result<Self, EmbedError> {
        let err = |reason: String| EmbedError::Weights {
            path: weights.display().to_string(),
            reason,
        };
        if cfg.hidden_act != "gelu" || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(err(format!(
                "unsupported config: hidden_act {:?}, hidden {} / heads {}",
                cfg.hidden_act, cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        let map = candle_core::safetensors::load(weights, &Device::Cpu)
            .map_err(|e| err(e.to_string()))?;
        let t = Tensors {
            map,
            path: weights,
            kernel,
        };
        let h = cfg.hidden_size;
        let word = t.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let position = t.get(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        let types = t.get("embeddings.token_type_embeddings.weight", &[2, h])?;
        let emb_norm = t.norm("embeddings.LayerNorm", h)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let mut qkv_w = Vec::with_capacity(3 * h * h);
            let mut qkv_b = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                qkv_w.extend(t.get(&format!("{p}.attention.self.{part}.weight"), &[h, h])?);
                qkv_b.extend(t.get(&format!("{p}.attention.self.{part}.bias"), &[h])?);
            }
            layers.push(Layer {
                qkv: Linear::new(&qkv_w, qkv_b, 3 * h, h, kernel),
                attn_out: t.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: t.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                intermediate: t.linear(
                    &format!("{p}.intermediate.dense"),
                    cfg.intermediate_size,
                    h,
                )?,
                output: t.linear(&format!("{p}.output.dense"), h, cfg.intermediate_size)?,
                out_norm: t.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let mut bert = Self {
            token_type0: types[..h].to_vec(),
            cfg,
            kernel,
            word,
            position,
            emb_norm,
            layers,
            amx_team: false,
        };
        #[cfg(target_arch = "x86_64")]
        {
            bert.amx_team = kernel == DenseKernel::AmxBf16 && bert.amx_team_fits();
        }
        Ok(bert)
    }

    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    pub fn kernel(&self) -> DenseKernel {
        self.kernel
    }

    /// Mean-pooled, L2-normalised embeddings of `seqs` (token ids with `[CLS]`/`[SEP]`, each no
    /// longer than `max_position_embeddings` and with ids below `vocab_size`; the caller checks).
    pub fn embed(&self, seqs: &[&[u32]], s: &mut Scratch) -> Vec<Vec<f32>> {
        let h = self.cfg.hidden_size;
        let total: usize = seqs.iter().map(|q| q.len()).sum();
        let threads = rayon::current_num_threads();
        let eps = self.cfg.layer_norm_eps as f32;

        #[cfg(target_arch = "x86_64")]
        if self.amx_team {
            self.encode_amx(seqs, s);
            return self.pool(seqs, &s.hidden);
        }

        let hidden = resize(&mut s.hidden, total * h);
        let mut rows = hidden.chunks_exact_mut(h);
        for seq in seqs {
            for (pos, &id) in seq.iter().enumerate() {
                let row = rows.next().expect("sized to the total token count");
                self.embed_token(row, id as usize, pos, eps);
            }
        }

        for layer in &self.layers {
            let qkv = resize(&mut s.qkv, total * 3 * h);
            layer
                .qkv
                .forward(&s.hidden[..total * h], qkv, threads, &mut s.pack);
            self.attention(seqs, qkv, &mut s.ctx_by_head, &mut s.ctx, threads);

            let proj = resize(&mut s.proj, total * h);
            layer
                .attn_out
                .forward(&s.ctx[..total * h], proj, threads, &mut s.pack);
            for (p, x) in proj.chunks_exact_mut(h).zip(s.hidden.chunks_exact(h)) {
                add_layer_norm(p, x, &layer.attn_norm.gamma, &layer.attn_norm.beta, eps);
            }
            // `proj` now holds the attention block's output, the FFN's input and residual.
            let inter = resize(&mut s.inter, total * layer.intermediate.out_dim());
            layer
                .intermediate
                .forward(proj, inter, threads, &mut s.pack);
            if threads > 1 && inter.len() >= 64 * 1024 {
                inter.par_chunks_mut(16 * 1024).for_each(gelu_in_place);
            } else {
                gelu_in_place(inter);
            }
            let hidden = &mut s.hidden[..total * h];
            layer.output.forward(inter, hidden, threads, &mut s.pack);
            for (x, p) in hidden.chunks_exact_mut(h).zip(proj.chunks_exact(h)) {
                add_layer_norm(x, p, &layer.out_norm.gamma, &layer.out_norm.beta, eps);
            }
        }

        self.pool(seqs, &s.hidden)
    }

    /// `row` = LayerNorm(word + position + token-type embedding) of token `id` at `pos`.
    fn embed_token(&self, row: &mut [f32], id: usize, pos: usize, eps: f32) {
        let h = self.cfg.hidden_size;
        let word = &self.word[id * h..][..h];
        let position = &self.position[pos * h..][..h];
        for (((x, w), p), t) in row
            .iter_mut()
            .zip(word)
            .zip(position)
            .zip(&self.token_type0)
        {
            *x = w + p + t;
        }
        layer_norm(row, &self.emb_norm.gamma, &self.emb_norm.beta, eps);
    }

    /// Mean pooling of each sequence's rows of `hidden`, L2-normalised.
    fn pool(&self, seqs: &[&[u32]], hidden: &[f32]) -> Vec<Vec<f32>> {
        let h = self.cfg.hidden_size;
        let mut out = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for seq in seqs {
            let mut pooled = vec![0.0f32; h];
            for row in hidden[start * h..(start + seq.len()) * h].chunks_exact(h) {
                for (p, x) in pooled.iter_mut().zip(row) {
                    *p += x;
                }
            }
            start += seq.len();
            let inv_len = 1.0 / seq.len().max(1) as f32;
            pooled.iter_mut().for_each(|p| *p *= inv_len);
            // torch.nn.functional.normalize: x / max(||x||, 1e-12).
            let norm = pooled.iter().map(|p| p * p).sum::<f32>().sqrt().max(1e-12);
            pooled.iter_mut().for_each(|p| *p /= norm);
            out.push(pooled);
        }
        out
    }

    /// Multi-head self-attention of each sequence over itself; writes the context to `ctx`
    /// (`[tokens, hidden]`). Heads run in parallel, each into its own `[tokens, head_dim]` slab.
    fn attention(
        &self,
        seqs: &[&[u32]],
        qkv: &[f32],
        ctx_by_head: &mut Vec<f32>,
        ctx: &mut Vec<f32>,
        threads: usize,
    ) {
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_attention_heads;
        let d = h / heads;
        let total: usize = seqs.iter().map(|q| q.len()).sum();
        let max_len = seqs.iter().map(|q| q.len()).max().unwrap_or(0);
        let scale = 1.0 / (d as f32).sqrt();
        let by_head = resize(ctx_by_head, total * h);
        let parallel = threads > 1 && total * max_len >= 256;
        let for_each_head = |by_head: &mut [f32], f: &(dyn Fn(usize, &mut [f32]) + Sync)| {
            if parallel {
                by_head
                    .par_chunks_mut(total * d)
                    .enumerate()
                    .for_each(|(head, out)| f(head, out));
            } else {
                for (head, out) in by_head.chunks_mut(total * d).enumerate() {
                    f(head, out);
                }
            }
        };

        #[cfg(target_arch = "x86_64")]
        if d == kernel_amx::ATTENTION_HEAD_DIM && self.kernel == DenseKernel::AmxBf16 {
            let lens: Vec<usize> = seqs.iter().map(|q| q.len()).collect();
            let amx_head = |head: usize, out: &mut [f32]| {
                AMX_SCRATCH.with_borrow_mut(|scratch| {
                    // SAFETY: the tile unit is available (checked above); `qkv` holds `total`
                    // rows of 3 * h floats and `out` this head's `total * d` slab.
                    unsafe {
                        kernel_amx::attention_head(
                            qkv,
                            &lens,
                            h,
                            head,
                            scale,
                            exp_shifted_in_place,
                            out,
                            scratch,
                        )
                    }
                })
            };
            for_each_head(by_head, &amx_head);
            interleave_heads(by_head, ctx, total, heads, d);
            return;
        }

        let one_head = |head: usize, out: &mut [f32]| {
            let mut scores = vec![0.0f32; max_len];
            // This head's keys of one sequence transposed to [head_dim][len], so that a query's
            // scores are head_dim vector updates over the keys instead of len horizontal sums.
            let mut keys_t = vec![0.0f32; max_len * d];
            let mut start = 0;
            for seq in seqs {
                let len = seq.len();
                let keys_t = &mut keys_t[..len * d];
                for j in 0..len {
                    let k = &qkv[(start + j) * 3 * h + h + head * d..][..d];
                    for (dd, kv) in k.iter().enumerate() {
                        keys_t[dd * len + j] = *kv;
                    }
                }
                for i in 0..len {
                    let q = &qkv[(start + i) * 3 * h + head * d..][..d];
                    let scores = &mut scores[..len];
                    scores.fill(0.0);
                    for (dd, qv) in q.iter().enumerate() {
                        let qv = qv * scale;
                        for (sc, kv) in scores.iter_mut().zip(&keys_t[dd * len..][..len]) {
                            *sc += qv * kv;
                        }
                    }
                    softmax_in_place(scores);
                    let o = &mut out[(start + i) * d..][..d];
                    o.fill(0.0);
                    for (j, &p) in scores.iter().enumerate() {
                        let v = &qkv[(start + j) * 3 * h + 2 * h + head * d..][..d];
                        for (o, v) in o.iter_mut().zip(v) {
                            *o += p * v;
                        }
                    }
                }
                start += len;
            }
        };
        for_each_head(by_head, &one_head);
        interleave_heads(by_head, ctx, total, heads, d);
    }
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Each embedding thread's buffers for the tile-unit attention.
    static AMX_SCRATCH: std::cell::RefCell<kernel_amx::AttentionScratch> = Default::default();
}

/// `ctx[t][head * d..][..d] = by_head[head][t]`: the heads' slabs back into token rows.
fn interleave_heads(by_head: &[f32], ctx: &mut Vec<f32>, total: usize, heads: usize, d: usize) {
    let h = heads * d;
    let ctx = resize(ctx, total * h);
    for head in 0..heads {
        let src = &by_head[head * total * d..][..total * d];
        for (t, piece) in src.chunks_exact(d).enumerate() {
            ctx[t * h + head * d..][..d].copy_from_slice(piece);
        }
    }
}
