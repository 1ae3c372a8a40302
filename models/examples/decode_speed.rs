//! Measures a model's prompt and decode speed: loads it, runs a 128-token prompt in one pass,
//! then 64 single-token decode steps, and prints load time, tokens/s and resident memory.
//! Usage: decode_speed MODEL.gguf [prompt_tokens] [decode_steps]; threads come from
//! RAYON_NUM_THREADS (or CANDLE_NUM_THREADS).
mod common;

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or_else(|| {
        anyhow::anyhow!("usage: decode_speed MODEL.gguf [prompt_tokens] [decode_steps]")
    })?;
    let prompt_len: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let steps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let rss_before = common::rss_bytes();
    let m = common::load(path, 4096)?;
    let rss_loaded = common::rss_bytes();
    let vocab = m.model.config().vocab_size as u32;
    // A fixed, varied prompt: real text would not change the arithmetic.
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 7919 + 13) % vocab.min(30_000))
        .collect();

    // Warm-up pass: wakes the thread pool and faults in pages outside the timed runs.
    let mut cache = m.model.new_cache();
    m.model.forward(&prompt[..8], &mut cache)?;

    let mut cache = m.model.new_cache();
    let t = Instant::now();
    let mut logits = m.model.forward(&prompt, &mut cache)?;
    let prompt_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..steps {
        let next = common::argmax(&logits);
        logits = m.model.forward(&[next], &mut cache)?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    println!(
        "{}: threads {} kernels {} load {:.2}s weights {:.1} MiB rss(model) {:.1} MiB rss(total) {:.1} MiB kv {:.1} MiB | prompt {} tok {:.1} tok/s | decode {} tok {:.1} tok/s",
        path.rsplit('/').next().unwrap_or(path),
        candle_core::utils::get_num_threads(),
        coe_models::kernel_level(),
        m.load_seconds,
        m.model.weight_bytes() as f64 / 1048576.0,
        (rss_loaded - rss_before) as f64 / 1048576.0,
        common::rss_bytes() as f64 / 1048576.0,
        cache.bytes() as f64 / 1048576.0,
        prompt_len,
        prompt_len as f64 / prompt_s,
        steps,
        steps as f64 / decode_s,
    );
    Ok(())
}
