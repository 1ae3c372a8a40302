//! Model hyper-parameters read from GGUF metadata, with the per-architecture conventions that the
//! metadata leaves implicit (rope layout, gemma3's local/global layer pattern, query scaling).
use candle_core::quantized::gguf_file::{Content, Value};

use crate::ModelError;

/// The decoder families coe-models can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Architecture {
    Llama,
    Qwen2,
    Gemma3,
}

impl Architecture {
    /// The `general.architecture` string of this family.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Gemma3 => "gemma3",
        }
    }

    fn from_gguf(name: &str) -> Result<Self, ModelError> {
        match name {
            "llama" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "gemma3" => Ok(Self::Gemma3),
            other => Err(ModelError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): llama GGUFs, whose converter permuted q/k rows for this layout.
    Interleaved,
    /// Halves (i, i + d/2): qwen2 and gemma3 ("neox" in llama.cpp).
    Halves,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// Longest sequence this loaded model accepts: min(trained context, the caller's max_context).
    pub context_length: usize,
    /// The context length the model was trained for, from the metadata.
    pub trained_context_length: usize,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Dimension of one query/key/value head.
    pub head_dim: usize,
    pub ffn_size: usize,
    pub rms_norm_eps: f32,
    /// Leading dimensions of each head that rotary embedding rotates.
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
    /// Rope base of full-attention layers.
    pub rope_base: f32,
    /// Rope base of sliding-window layers (gemma3: 10000); equal to `rope_base` elsewhere.
    pub rope_base_local: f32,
    /// Linear position scaling of full-attention layers (1.0 when the model has none).
    pub rope_freq_scale: f32,
    /// Window of sliding-window layers, in positions (the query's own position included).
    pub sliding_window: Option<usize>,
    /// Every `sliding_window_pattern`-th layer attends globally; the others use the window.
    pub sliding_window_pattern: usize,
    /// Factor applied to queries before q·k.
    pub query_scale: f32,
    /// Logits are squashed to (-c, c) with c·tanh(x/c) when set.
    pub final_logit_softcap: Option<f32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Reads the hyper-parameters of `content`, capping the context at `max_context`.
    pub fn from_gguf(content: &Content, max_context: usize) -> Result<Self, ModelError> {
        let meta = Meta(content);
        let architecture = Architecture::from_gguf(meta.string("general.architecture")?)?;
        let arch = architecture.as_str();
        let key = |name: &str| format!("{arch}.{name}");

        let hidden_size = meta.usize(&key("embedding_length"))?;
        let num_heads = meta.usize(&key("attention.head_count"))?;
        let num_kv_heads = meta
            .opt_usize(&key("attention.head_count_kv"))?
            .unwrap_or(num_heads);
        let head_dim = match meta.opt_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None => hidden_size / num_heads.max(1),
        };
        if let Some(v) = meta.opt_usize(&key("attention.value_length"))? {
            if v != head_dim {
                return Err(ModelError::InvalidMetadata {
                    key: key("attention.value_length"),
                    reason: format!("value heads of {v} differ from key heads of {head_dim}"),
                });
            }
        }
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(ModelError::InvalidMetadata {
                key: key("attention.head_count_kv"),
                reason: format!(
                    "{num_heads} query heads cannot share {num_kv_heads} key/value heads"
                ),
            });
        }
        // Attention accumulates heads in 16-wide lanes, as llama.cpp's f16 GEMM does.
        if head_dim == 0 || !head_dim.is_multiple_of(16) {
            return Err(ModelError::InvalidMetadata {
                key: key("attention.key_length"),
                reason: format!("heads of {head_dim} values are not a multiple of 16"),
            });
        }
        let rope_dim = meta
            .opt_usize(&key("rope.dimension_count"))?
            .unwrap_or(head_dim);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ModelError::InvalidMetadata {
                key: key("rope.dimension_count"),
                reason: format!("{rope_dim} is odd or larger than the head dimension {head_dim}"),
            });
        }
        let trained_context_length = meta.usize(&key("context_length"))?;
        let rope_base = meta.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rope_freq_scale = match meta.opt_f32(&key("rope.scaling.factor"))? {
            Some(f) if f > 0.0 => 1.0 / f,
            _ => 1.0,
        };
        let rms_norm_eps = meta.f32(&key("attention.layer_norm_rms_epsilon"))?;
        let vocab_size = match content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims()[0],
            None => {
                return Err(ModelError::MissingTensor {
                    name: "token_embd.weight".into(),
                })
            }
        };

        let (rope_style, sliding_window, rope_base_local) = match architecture {
            Architecture::Llama => (RopeStyle::Interleaved, None, rope_base),
            Architecture::Qwen2 => (RopeStyle::Halves, None, rope_base),
            // llama.cpp hard-codes gemma3's local rope base; the metadata only has the global one.
            Architecture::Gemma3 => (
                RopeStyle::Halves,
                meta.opt_usize(&key("attention.sliding_window"))?,
                meta.opt_f32(&key("rope.freq_base_swa"))?
                    .unwrap_or(10_000.0),
            ),
        };
        // Gemma's query_pre_attn_scalar equals the head dimension for the sizes GGUF files carry
        // it for (llama.cpp special-cases only the 27B model), so one formula serves all three.
        let query_scale = match meta.opt_f32(&key("attention.query_pre_attn_scalar"))? {
            Some(s) if s > 0.0 => 1.0 / s.sqrt(),
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let final_logit_softcap = meta
            .opt_f32(&key("final_logit_softcapping"))?
            .filter(|c| *c > 0.0);

        Ok(Self {
            architecture,
            context_length: trained_context_length.min(max_context).max(1),
            trained_context_length,
            vocab_size,
            hidden_size,
            num_layers: meta.usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            ffn_size: meta.usize(&key("feed_forward_length"))?,
            rms_norm_eps,
            rope_dim,
            rope_style,
            rope_base,
            rope_base_local,
            rope_freq_scale,
            sliding_window,
            sliding_window_pattern: 6,
            query_scale,
            final_logit_softcap,
            bos_token_id: meta.opt_u32("tokenizer.ggml.bos_token_id")?,
            eos_token_id: meta.opt_u32("tokenizer.ggml.eos_token_id")?,
        })
    }

    /// Whether `layer` attends only to the last `sliding_window` positions.
    pub fn is_sliding_layer(&self, layer: usize) -> bool {
        self.sliding_window.is_some()
            && !(layer + 1).is_multiple_of(self.sliding_window_pattern.max(1))
    }
}

/// Typed access to GGUF metadata with errors that name the key.
struct Meta<'a>(&'a Content);

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value, ModelError> {
        self.0
            .metadata
            .get(key)
            .ok_or_else(|| ModelError::MissingMetadata { key: key.into() })
    }

    fn invalid(key: &str, e: candle_core::Error) -> ModelError {
        ModelError::InvalidMetadata {
            key: key.into(),
            reason: e.to_string(),
        }
    }

    fn string(&self, key: &str) -> Result<&str, ModelError> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| Self::invalid(key, e))
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        let v = self.get(key)?;
        let n = match v {
            Value::U64(_) | Value::I64(_) => v.to_u64(),
            _ => v.to_u32().map(u64::from),
        }
        .map_err(|e| Self::invalid(key, e))?;
        usize::try_from(n).map_err(|_| ModelError::InvalidMetadata {
            key: key.into(),
            reason: format!("{n} does not fit in usize"),
        })
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.0.metadata.contains_key(key) {
            true => self.usize(key).map(Some),
            false => Ok(None),
        }
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>, ModelError> {
        self.opt_usize(key)?
            .map(|n| {
                u32::try_from(n).map_err(|_| ModelError::InvalidMetadata {
                    key: key.into(),
                    reason: format!("{n} is not a token id"),
                })
            })
            .transpose()
    }

    fn f32(&self, key: &str) -> Result<f32, ModelError> {
        let v = self.get(key)?;
        match v {
            Value::F64(x) => Ok(*x as f32),
            _ => v.to_f32().map_err(|e| Self::invalid(key, e)),
        }
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        match self.0.metadata.contains_key(key) {
            true => self.f32(key).map(Some),
            false => Ok(None),
        }
    }
}
