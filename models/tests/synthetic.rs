//! Behaviour of the model API on tiny synthetic GGUF models built in memory (no model files
//! needed): loading from a cursor, prefill/decode agreement, sliding windows, cache handling
//! and the errors a caller sees.
use std::io::Cursor;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use coe_models::{Architecture, ModelError, QuantizedModel};

const HIDDEN: usize = 64;
const FFN: usize = 256;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const VOCAB: usize = 48;
const LAYERS: usize = 2;

/// Deterministic pseudo-random values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(dims: &[usize], dtype: GgmlDType, seed: u64, scale: f32) -> QTensor {
    let n = dims.iter().product();
    let t = Tensor::from_vec(values(n, seed, scale), dims, &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

fn ones_ish(n: usize, seed: u64) -> QTensor {
    let v: Vec<f32> = values(n, seed, 0.1).iter().map(|x| 1.0 + x).collect();
    QTensor::quantize(
        &Tensor::from_vec(v, n, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap()
}

/// A two-layer model of `arch` whose matrices use every weight format the loader handles.
fn gguf(arch: &str, window: Option<u32>) -> Vec<u8> {
    build(arch, window, LAYERS)
}

fn build(arch: &str, window: Option<u32>, layers: usize) -> Vec<u8> {
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            format!("{arch}.embedding_length"),
            Value::U32(HIDDEN as u32),
        ),
        (format!("{arch}.block_count"), Value::U32(layers as u32)),
        (
            format!("{arch}.attention.head_count"),
            Value::U32(HEADS as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            Value::U32(KV_HEADS as u32),
        ),
        (format!("{arch}.context_length"), Value::U32(1024)),
        (
            format!("{arch}.feed_forward_length"),
            Value::U32(FFN as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{arch}.rope.freq_base"), Value::F32(10000.0)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
    ];
    if let Some(w) = window {
        meta.push((format!("{arch}.attention.sliding_window"), Value::U32(w)));
        meta.push((
            format!("{arch}.attention.key_length"),
            Value::U32(HEAD_DIM as u32),
        ));
    }
    let kv = KV_HEADS * HEAD_DIM;
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            tensor(&[VOCAB, HIDDEN], GgmlDType::Q8_0, 1, 1.0),
        ),
        ("output_norm.weight".into(), ones_ish(HIDDEN, 2)),
    ];
    for l in 0..layers {
        let name = |t: &str| format!("blk.{l}.{t}");
        let seed = 100 * (l as u64 + 1);
        let down = if l == 0 {
            GgmlDType::Q4K
        } else {
            GgmlDType::Q6K
        };
        tensors.extend([
            (name("attn_norm.weight"), ones_ish(HIDDEN, seed)),
            (
                name("attn_q.weight"),
                tensor(&[HIDDEN, HIDDEN], GgmlDType::Q4_0, seed + 1, 0.3),
            ),
            (
                name("attn_k.weight"),
                tensor(&[kv, HIDDEN], GgmlDType::Q8_0, seed + 2, 0.3),
            ),
            (
                name("attn_v.weight"),
                tensor(&[kv, HIDDEN], GgmlDType::Q5_0, seed + 3, 0.3),
            ),
            (
                name("attn_output.weight"),
                tensor(&[HIDDEN, HIDDEN], GgmlDType::F16, seed + 4, 0.2),
            ),
            (name("ffn_norm.weight"), ones_ish(HIDDEN, seed + 5)),
            (
                name("ffn_gate.weight"),
                tensor(&[FFN, HIDDEN], GgmlDType::Q4_1, seed + 6, 0.3),
            ),
            (
                name("ffn_up.weight"),
                tensor(&[FFN, HIDDEN], GgmlDType::Q5_0, seed + 7, 0.3),
            ),
            (
                name("ffn_down.weight"),
                tensor(&[HIDDEN, FFN], down, seed + 8, 0.2),
            ),
        ]);
        if arch == "qwen2" {
            tensors.extend([
                (
                    name("attn_q.bias"),
                    tensor(&[HIDDEN], GgmlDType::F32, seed + 9, 0.1),
                ),
                (
                    name("attn_k.bias"),
                    tensor(&[kv], GgmlDType::F32, seed + 10, 0.1),
                ),
                (
                    name("attn_v.bias"),
                    tensor(&[kv], GgmlDType::F32, seed + 11, 0.1),
                ),
            ]);
        }
        if arch == "gemma3" {
            tensors.extend([
                (name("attn_q_norm.weight"), ones_ish(HEAD_DIM, seed + 12)),
                (name("attn_k_norm.weight"), ones_ish(HEAD_DIM, seed + 13)),
                (
                    name("post_attention_norm.weight"),
                    ones_ish(HIDDEN, seed + 14),
                ),
                (name("post_ffw_norm.weight"), ones_ish(HIDDEN, seed + 15)),
            ]);
        }
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta_refs, &tensor_refs).unwrap();
    out.into_inner()
}

fn load(bytes: &[u8], max_context: usize) -> Result<QuantizedModel, ModelError> {
    let mut cursor = Cursor::new(bytes);
    let content = Content::read(&mut cursor).unwrap();
    QuantizedModel::from_gguf(&content, &mut cursor, &Device::Cpu, max_context)
}

fn decode(model: &QuantizedModel, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache();
    tokens
        .iter()
        .map(|&t| model.forward(&[t], &mut cache).unwrap())
        .collect()
}

#[test]
fn all_architectures_load_and_report_their_shape() {
    for (arch, want) in [
        ("llama", Architecture::Llama),
        ("qwen2", Architecture::Qwen2),
        ("gemma3", Architecture::Gemma3),
    ] {
        let model = load(&gguf(arch, None), 4096).unwrap();
        let c = model.config();
        assert_eq!(c.architecture, want);
        assert_eq!(
            (c.vocab_size, c.hidden_size, c.num_layers),
            (VOCAB, HIDDEN, LAYERS)
        );
        // The trained context (1024) caps the requested one.
        assert_eq!(c.context_length, 1024);
        assert!(model.weight_bytes() > 0);
        let logits = model.forward(&[1, 2, 3], &mut model.new_cache()).unwrap();
        assert_eq!(logits.len(), VOCAB);
        assert!(logits.iter().all(|v| v.is_finite()), "{arch}: {logits:?}");
    }
}

#[test]
fn a_prompt_in_one_pass_gives_the_logits_of_token_by_token_decoding() {
    for arch in ["llama", "qwen2", "gemma3"] {
        let model = load(&gguf(arch, None), 64).unwrap();
        let tokens = [1, 7, 9, 30, 2, 11, 40, 5];
        let stepwise = decode(&model, &tokens);
        let mut cache = model.new_cache();
        let at_once = model.forward(&tokens, &mut cache).unwrap();
        assert_eq!(cache.len(), tokens.len());
        // Every row goes through the same operations in the same order.
        assert_eq!(&at_once, stepwise.last().unwrap(), "{arch}");
        // Prompt, then decoding, continues the same sequence.
        let mut cache = model.new_cache();
        model.forward(&tokens[..5], &mut cache).unwrap();
        let next = model.forward(&tokens[5..], &mut cache).unwrap();
        assert_eq!(&next, stepwise.last().unwrap(), "{arch}");
    }
}

#[test]
fn prompts_longer_than_one_prefill_chunk_match_decoding() {
    let model = load(&gguf("qwen2", None), 1024).unwrap();
    let tokens: Vec<u32> = (0..600).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
    let mut cache = model.new_cache();
    let at_once = model.forward(&tokens, &mut cache).unwrap();
    assert_eq!(cache.len(), 600);
    assert_eq!(&at_once, decode(&model, &tokens).last().unwrap());
}

#[test]
fn sliding_window_layers_forget_tokens_beyond_their_reach() {
    // Window 4 over two sliding layers: position 7 sees tokens 1..=7 at most.
    let model = load(&gguf("gemma3", Some(4)), 64).unwrap();
    assert!(model.config().is_sliding_layer(0) && model.config().is_sliding_layer(1));
    let a = decode(&model, &[3, 7, 9, 30, 2, 11, 40, 5]);
    let b = decode(&model, &[4, 7, 9, 30, 2, 11, 40, 5]);
    assert_ne!(a[6], b[6], "position 6 still sees token 0");
    assert_eq!(a[7], b[7], "position 7 must not see token 0");
}

#[test]
fn caches_are_independent_and_clear_resets_them() {
    let model = load(&gguf("llama", None), 64).unwrap();
    let (mut first, mut second) = (model.new_cache(), model.new_cache());
    let a = model.forward(&[5, 6, 7], &mut first).unwrap();
    model.forward(&[9, 9], &mut second).unwrap();
    assert_eq!((first.len(), second.len()), (3, 2));
    assert!(first.bytes() > 0);
    first.clear();
    assert!(first.is_empty());
    assert_eq!(model.forward(&[5, 6, 7], &mut first).unwrap(), a);
}

#[test]
fn a_full_context_is_reported_and_leaves_the_cache_untouched() {
    let model = load(&gguf("llama", None), 8).unwrap();
    let mut cache = model.new_cache();
    model.forward(&[1, 2, 3, 4, 5, 6], &mut cache).unwrap();
    let err = model.forward(&[1, 2, 3], &mut cache).unwrap_err();
    assert!(
        matches!(err, ModelError::ContextFull { len: 9, max: 8 }),
        "{err}"
    );
    assert_eq!(cache.len(), 6);
    model.forward(&[1, 2], &mut cache).unwrap();
    assert_eq!(cache.len(), 8);
}

#[test]
fn bad_input_is_rejected_with_a_named_error() {
    let model = load(&gguf("qwen2", None), 64).unwrap();
    let mut cache = model.new_cache();
    let err = model.forward(&[], &mut cache).unwrap_err();
    assert!(matches!(err, ModelError::EmptyInput), "{err}");
    let err = model.forward(&[1, VOCAB as u32], &mut cache).unwrap_err();
    assert!(
        matches!(err, ModelError::InvalidToken { token, .. } if token == VOCAB as u32),
        "{err}"
    );
    assert!(cache.is_empty());
    let shallow = load(&build("qwen2", None, 1), 64).unwrap();
    let err = model.forward(&[1], &mut shallow.new_cache()).unwrap_err();
    assert!(matches!(err, ModelError::CacheMismatch { .. }), "{err}");
}

#[test]
fn files_that_are_not_supported_models_fail_to_load_with_the_reason() {
    let err = load(&gguf("mamba", None), 64).err().unwrap();
    assert!(
        matches!(&err, ModelError::UnsupportedArchitecture(a) if a == "mamba"),
        "{err}"
    );
    assert!(err.to_string().contains("mamba"));

    // Cut the file short: the last tensor's bytes are missing.
    let bytes = gguf("llama", None);
    let err = load(&bytes[..bytes.len() - 4096], 64).err().unwrap();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");

    let err = QuantizedModel::from_gguf(
        &Content::read(&mut Cursor::new(&bytes)).unwrap(),
        &mut Cursor::new(&bytes),
        &Device::Cpu,
        0,
    )
    .map(|m| m.config().context_length);
    // A zero context is raised to one token rather than producing an unusable model.
    assert_eq!(err.unwrap(), 1);
}

#[test]
fn models_and_caches_can_move_to_an_engine_thread() {
    fn send<T: Send + Sync>() {}
    send::<QuantizedModel>();
    send::<coe_models::KvCache>();
}
