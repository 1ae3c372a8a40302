//! `coe bench decode`: prompt-processing and decode tokens/s of each expert, against llama.cpp
//! (llama-cpp-python) on the same GGUF, prompt length and thread count, in the same run. Each side runs
//! in a process of its own so that peak resident memory is the model's alone.
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use candle_core::quantized::gguf_file;
use clap::Args;
use coe_models::QuantizedModel;

use super::peer::{json_of, llama_cpp_python, peak_rss_bytes};
use crate::models::{gguf_path, DEFAULT_EXPERTS};

#[derive(Args)]
pub struct DecodeArgs {
    /// Experts (manifest names) to measure.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_EXPERTS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub experts: Vec<String>,
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    #[arg(long, env = "COE_HOME")]
    pub home: Option<PathBuf>,
    /// Internal: measure one GGUF in this process and print JSON.
    #[arg(long, hide = true)]
    pub measure_one: Option<PathBuf>,
}

/// Text repeated to make a prompt of any length.
const PROMPT_TEXT: &str = "The history of computing is a story of abstraction: each generation of engineers builds tools that hide the details of the layer below. ";

pub fn run(args: DecodeArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.measure_one {
        let result = measure_coe(path, &args)?;
        println!("{result}");
        return Ok(());
    }
    let home = args.home.clone().unwrap_or_else(coe_fetch::coe_home);
    let python = llama_cpp_python(&home)?;
    let script = bench_script("llama_cpp_decode.py")?;
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for expert in &args.experts {
        let gguf = gguf_path(&home, expert)?;
        eprintln!("measuring {expert} ...");
        let coe = json_of(
            Command::new(&exe)
                .args(["bench", "decode", "--measure-one"])
                .arg(&gguf)
                .args(["--prompt-tokens", &args.prompt_tokens.to_string()])
                .args(["--gen-tokens", &args.gen_tokens.to_string()])
                .args(["--threads", &args.threads.to_string()])
                .args(["--repeats", &args.repeats.to_string()])
                .env("RAYON_NUM_THREADS", args.threads.to_string())
                .env("COE_LOG", "warn"),
        )?;
        let peer = json_of(
            Command::new(&python)
                .arg(&script)
                .arg("--model")
                .arg(&gguf)
                .args(["--prompt-tokens", &args.prompt_tokens.to_string()])
                .args(["--gen-tokens", &args.gen_tokens.to_string()])
                .args(["--threads", &args.threads.to_string()])
                .args(["--repeats", &args.repeats.to_string()]),
        )?;
        rows.push((expert.clone(), coe, peer));
    }
    print_table(&rows, &args);
    Ok(())
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key).and_then(|x| x.as_f64()).unwrap_or(f64::NAN)
}

fn print_table(rows: &[(String, serde_json::Value, serde_json::Value)], args: &DecodeArgs) {
    println!(
        "decode benchmark: {} prompt tokens, {} generated, {} threads, best of {}",
        args.prompt_tokens, args.gen_tokens, args.threads, args.repeats
    );
    println!(
        "{:<30} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7} {:>9} {:>9} {:>6}",
        "expert",
        "pp coe",
        "pp llama",
        "ratio",
        "dec coe",
        "dec llama",
        "ratio",
        "rss coe",
        "rss llama",
        "ratio"
    );
    let mut min_ratio = f64::INFINITY;
    for (expert, coe, peer) in rows {
        let (pp_c, pp_l) = (num(coe, "pp_tok_s"), num(peer, "pp_tok_s"));
        let (dec_c, dec_l) = (num(coe, "decode_tok_s"), num(peer, "decode_tok_s"));
        let (rss_c, rss_l) = (
            num(coe, "peak_rss_bytes") / 1048576.0,
            num(peer, "peak_rss_bytes") / 1048576.0,
        );
        let ratio = dec_c / dec_l;
        min_ratio = min_ratio.min(ratio);
        println!(
            "{:<30} {:>10.1} {:>10.1} {:>7.2} {:>10.1} {:>10.1} {:>7.2} {:>8.0}M {:>8.0}M {:>6.2}",
            expert,
            pp_c,
            pp_l,
            pp_c / pp_l,
            dec_c,
            dec_l,
            ratio,
            rss_c,
            rss_l,
            rss_c / rss_l
        );
    }
    println!("(tokens/s; ratio = coe / llama.cpp; rss = peak resident memory of each process)");
    println!("min_decode_ratio={min_ratio:.3}");
}

fn bench_script(name: &str) -> anyhow::Result<PathBuf> {
    // The scripts live in the repository's bench/ folder; the binary knows where it was built from.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("bench")
        .join(name);
    path.canonicalize()
        .with_context(|| format!("benchmark script {} is missing", path.display()))
}

fn measure_coe(path: &PathBuf, args: &DecodeArgs) -> anyhow::Result<serde_json::Value> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = gguf_file::Content::read(&mut file)?;
    let tokenizer = coe_tokenizer::GgufTokenizer::from_gguf(&content)?;
    let model = QuantizedModel::from_gguf(&content, &mut file, &candle_core::Device::Cpu, 4096)?;
    let mut prompt = tokenizer.encode(&PROMPT_TEXT.repeat(64), false);
    prompt.truncate(args.prompt_tokens);
    let (mut best_pp, mut best_decode) = (0.0f64, 0.0f64);
    for _ in 0..args.repeats.max(1) {
        let mut cache = model.new_cache();
        let started = Instant::now();
        let mut logits = model.forward(&prompt, &mut cache)?;
        best_pp = best_pp.max(prompt.len() as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for _ in 0..args.gen_tokens {
            let token = coe_expert_worker::sampler::argmax(&logits);
            logits = model.forward(&[token], &mut cache)?;
        }
        best_decode = best_decode.max(args.gen_tokens as f64 / started.elapsed().as_secs_f64());
    }
    Ok(serde_json::json!({
        "pp_tok_s": best_pp,
        "decode_tok_s": best_decode,
        "peak_rss_bytes": peak_rss_bytes(),
        "prompt_tokens": prompt.len(),
        "gen_tokens": args.gen_tokens,
    }))
}
