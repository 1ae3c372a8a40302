//! `coe bench classify`: latency of one short and one long query and batch-32 throughput of the
//! router's MiniLM embedder, against sentence-transformers (CPU torch) on the same texts and thread
//! count, in the same run. Each side runs in a process of its own, so neither inherits the other's
//! thread pools or allocator state.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use coe_router::embed::{Embedder, MiniLm};

use super::peer::{json_of, python_with};

#[derive(Args)]
pub struct ClassifyArgs {
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed single-query embeddings per text (p99 needs at least 100).
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Timed batch embeddings; the best is kept.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    #[arg(long, env = "COE_HOME")]
    pub home: Option<PathBuf>,
    /// Internal: measure the coe embedder on this cases file in this process and print JSON.
    #[arg(long, hide = true)]
    pub measure_coe: Option<PathBuf>,
}

/// About 24 tokens with [CLS]/[SEP]: a typical chat query.
const SHORT: &str = "What are the main differences between a process and a thread in operating systems like Linux, macOS and Windows?";

/// About 250 tokens: a long query with context, close to the 256-token truncation.
const LONG: &str =
    "I am building a small web service in Python that receives uploaded CSV files from \
customers, validates every row against a schema, and stores the valid rows in a PostgreSQL \
database. Right now the whole upload is parsed in memory with pandas, which works for files of a \
few megabytes but runs out of memory for the larger files some customers send, which can reach \
two gigabytes. I would like to rewrite the import so that it streams the file in chunks, reports \
the line number and the reason for every invalid row, and commits the valid rows in batches so \
that a failure halfway does not lose everything that was already imported. I also need the \
import to be idempotent, because customers often upload the same file twice by mistake. Could \
you explain which libraries and database features you would use for this, show the structure of \
the code for the streaming parser and the batched inserts, and point out the mistakes people \
usually make with transactions and connection pools in this kind of job? Please also explain how \
you would test it. I use Python 3.12 and PostgreSQL 16 on one small virtual machine.";

const TEXTS_FILE: &str = "embed_texts.json";

/// A file of the repository's bench/ folder (the binary knows where it was built from).
fn script(name: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../bench")
        .join(name);
    path.canonicalize()
        .with_context(|| format!("{} is missing", path.display()))
}

fn cases() -> anyhow::Result<serde_json::Value> {
    // The batch: 32 varied queries, the mix of lengths a router sees under load.
    let path = script(TEXTS_FILE)?;
    let batch: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let batch: Vec<String> = batch.iter().cycle().take(32).cloned().collect();
    Ok(serde_json::json!({ "short": SHORT, "long": LONG, "batch": batch }))
}

pub fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    let home = args.home.clone().unwrap_or_else(coe_fetch::coe_home);
    if let Some(path) = &args.measure_coe {
        println!("{}", measure_coe(&home, path, &args)?);
        return Ok(());
    }
    let cases_path =
        std::env::temp_dir().join(format!("coe-bench-classify-{}.json", std::process::id()));
    std::fs::write(&cases_path, serde_json::to_vec(&cases()?)?)?;
    let result = compare(&home, &cases_path, &args);
    let _ = std::fs::remove_file(&cases_path);
    let (coe, st) = result?;
    print_table(&coe, &st, &args);
    Ok(())
}

fn compare(
    home: &std::path::Path,
    cases: &std::path::Path,
    args: &ClassifyArgs,
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    // Fetches the model if needed; its directory is what sentence-transformers loads too.
    let model_dir = coe_fetch::fetch_model(
        home,
        coe_fetch::Manifest::embedded().model(coe_router::embed::MINILM_MODEL)?,
        &mut |_| {},
    )?;
    let python = python_with(
        home,
        "sentence_transformers",
        &[
            "--extra-index-url",
            "https://download.pytorch.org/whl/cpu",
            "torch",
            "sentence-transformers",
        ],
        &[],
    )?;
    let script = script("st_embed.py")?;
    let threads = args.threads.to_string();
    eprintln!("measuring coe ...");
    let coe = json_of(
        Command::new(std::env::current_exe()?)
            .args(["bench", "classify", "--measure-coe"])
            .arg(cases)
            .args(["--threads", &threads])
            .args(["--samples", &args.samples.to_string()])
            .args(["--repeats", &args.repeats.to_string()])
            .arg("--home")
            .arg(home)
            .env("RAYON_NUM_THREADS", &threads)
            .env("COE_LOG", "warn"),
    )?;
    eprintln!("measuring sentence-transformers ...");
    let st = json_of(
        Command::new(&python)
            .arg(&script)
            .arg("--model-dir")
            .arg(&model_dir)
            .arg("--cases")
            .arg(cases)
            .args(["--threads", &threads])
            .args(["--samples", &args.samples.to_string()])
            .args(["--repeats", &args.repeats.to_string()])
            .env("OMP_NUM_THREADS", &threads),
    )?;
    Ok((coe, st))
}

fn percentile(xs: &mut [f64], q: f64) -> f64 {
    // Linear interpolation, as numpy (and the python side) computes it.
    xs.sort_by(f64::total_cmp);
    let pos = (xs.len() - 1) as f64 * q / 100.0;
    let (lo, hi) = (
        pos.floor() as usize,
        (pos.ceil() as usize).min(xs.len() - 1),
    );
    xs[lo] + (xs[hi] - xs[lo]) * (pos - lo as f64)
}

fn measure_coe(
    home: &std::path::Path,
    cases_path: &std::path::Path,
    args: &ClassifyArgs,
) -> anyhow::Result<serde_json::Value> {
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(cases_path)?)?;
    let text = |k: &str| cases[k].as_str().unwrap_or_default().to_string();
    let batch: Vec<String> = serde_json::from_value(cases["batch"].clone())?;
    let mut model = MiniLm::load(home)?;
    let mut out = serde_json::json!({ "threads": args.threads, "kernel": model.kernel().name() });
    for name in ["short", "long"] {
        let t = text(name);
        for _ in 0..5 {
            model.embed(&[&t])?;
        }
        let mut lat = Vec::with_capacity(args.samples);
        for _ in 0..args.samples.max(1) {
            let started = Instant::now();
            model.embed(&[&t])?;
            lat.push(started.elapsed().as_secs_f64() * 1e3);
        }
        out[format!("{name}_p50_ms")] = percentile(&mut lat, 50.0).into();
        out[format!("{name}_p99_ms")] = percentile(&mut lat, 99.0).into();
        out[format!("{name}_tokens")] = model.tokenize(&[&t])?[0].len().into();
    }
    let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
    model.embed(&refs)?;
    let mut best = f64::INFINITY;
    for _ in 0..args.repeats.max(1) {
        let started = Instant::now();
        model.embed(&refs)?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    out["throughput_texts_per_s"] = (refs.len() as f64 / best).into();
    Ok(out)
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key).and_then(|x| x.as_f64()).unwrap_or(f64::NAN)
}

fn print_table(coe: &serde_json::Value, st: &serde_json::Value, args: &ClassifyArgs) {
    println!(
        "classify benchmark: all-MiniLM-L6-v2, {} threads, {} single-query samples, batch of 32 best of {}",
        args.threads, args.samples, args.repeats
    );
    println!(
        "coe dense kernel: {} (COE_EMBED_KERNEL=amx|avx512|portable picks another)",
        coe.get("kernel").and_then(|k| k.as_str()).unwrap_or("?")
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "metric", "coe", "sent-transf", "ratio"
    );
    let row = |label: String, key: &str| {
        let (c, s) = (num(coe, key), num(st, key));
        println!("{label:<34} {c:>12.3} {s:>12.3} {:>8.3}", c / s);
        c / s
    };
    let tokens = |k: &str| num(coe, &format!("{k}_tokens"));
    let short = row(
        format!("short p50 ms ({} tokens)", tokens("short")),
        "short_p50_ms",
    );
    row(
        format!("short p99 ms ({} tokens)", tokens("short")),
        "short_p99_ms",
    );
    let long = row(
        format!("long p50 ms ({} tokens)", tokens("long")),
        "long_p50_ms",
    );
    row(
        format!("long p99 ms ({} tokens)", tokens("long")),
        "long_p99_ms",
    );
    let throughput = row("batch-32 texts/s".into(), "throughput_texts_per_s");
    println!("(ratio = coe / sentence-transformers; goals: p50 <= 0.33, throughput >= 2)");
    println!(
        "short_p50_ratio={short:.3} long_p50_ratio={long:.3} throughput_ratio={throughput:.3}"
    );
}
