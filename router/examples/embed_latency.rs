//! Measures the MiniLM embedder: p50/p90 latency of one ~24-token query and batch-32 throughput.
//! Run with `RAYON_NUM_THREADS=2 cargo run --release -p coe-router --example embed_latency`;
//! `EMBED_LATENCY_TEXT=...` times that text instead of the short query.

use std::time::Instant;

use coe_router::embed::{Embedder, MiniLm};

const QUERY: &str = "What are the main differences between a process and a thread in operating systems like Linux, macOS and Windows?";

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

/// CPU time of the whole process: with RAYON_NUM_THREADS=1 it is the compute cost without the time
/// spent descheduled, which a busy two-core machine adds to wall time.
fn process_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

fn main() -> anyhow::Result<()> {
    let mut model = MiniLm::load(&coe_fetch::coe_home())?;
    let text = std::env::var("EMBED_LATENCY_TEXT").unwrap_or_else(|_| QUERY.to_string());
    let query = text.as_str();
    let n_tokens = model.tokenize(&[query])?[0].len();
    for _ in 0..20 {
        model.embed(&[query])?;
    }
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..std::env::var("EMBED_LATENCY_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
    {
        let (t, c) = (Instant::now(), process_cpu_ms());
        model.embed(&[query])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        cpu.push(process_cpu_ms() - c);
    }
    println!(
        "single query ({n_tokens} tokens): min {:.3} ms  p50 {:.3} ms  p90 {:.3} ms  (threads {})",
        percentile(&mut times, 0.0),
        percentile(&mut times, 0.5),
        percentile(&mut times, 0.9),
        rayon::current_num_threads()
    );
    println!(
        "  process CPU time p50 {:.3} ms (all threads, spinning included)",
        percentile(&mut cpu, 0.5)
    );

    // `embed_latency single` stops here (for profiling the one-query path alone).
    if std::env::args().nth(1).as_deref() == Some("single") {
        return Ok(());
    }
    let data = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/router/router_train.jsonl"
    ))?;
    let prompts: Vec<String> = data
        .lines()
        .take(320)
        .map(|l| {
            Ok(serde_json::from_str::<serde_json::Value>(l)?["prompt"]
                .as_str()
                .unwrap_or("")
                .to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    let short: Vec<&str> = (0..32).map(|_| QUERY).collect();
    let t = Instant::now();
    for _ in 0..10 {
        model.embed(&short)?;
    }
    println!(
        "batch 32 x {n_tokens} tokens: {:.1} texts/s",
        320.0 / t.elapsed().as_secs_f64()
    );
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let t = Instant::now();
    for chunk in refs.chunks(32) {
        model.embed(chunk)?;
    }
    println!(
        "batch 32, training prompts: {:.1} texts/s",
        refs.len() as f64 / t.elapsed().as_secs_f64()
    );
    Ok(())
}
