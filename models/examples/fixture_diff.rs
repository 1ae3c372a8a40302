//! Compares a model's logits with a llama.cpp greedy fixture step by step (teacher-forced):
//! prints, per step, llama.cpp's top-1 logit and margin next to ours, to locate numeric drift.
//! Usage: fixture_diff MODEL.gguf FIXTURE.json [case]
mod common;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (path, fixture) = (&args[1], &args[2]);
    let only: Option<usize> = args.get(3).and_then(|s| s.parse().ok());
    let quiet = std::env::var("QUIET").is_ok();
    let (mut sq, mut n_steps, mut worst, mut flips) = (0f64, 0usize, 0f64, 0usize);
    let m = common::load(path, 4096)?;
    let fx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture)?)?;
    for (n, case) in fx["cases"].as_array().unwrap().iter().enumerate() {
        if only.is_some_and(|o| o != n) {
            continue;
        }
        let ids = |f: &str| -> Vec<u32> {
            case[f]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, greedy) = (ids("prompt_ids"), ids("greedy_ids"));
        let mut cache = m.model.new_cache();
        let mut logits = m.model.forward(&prompt, &mut cache)?;
        if !quiet {
            println!("case {n}: {} prompt tokens", prompt.len());
        }
        for (step, &want) in greedy.iter().enumerate().take(16) {
            let mut idx: Vec<usize> = (0..logits.len()).collect();
            idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let dev = f64::from(logits[want as usize])
                - case["top1_logits"][step].as_f64().unwrap_or(f64::NAN);
            sq += dev * dev;
            n_steps += 1;
            worst = worst.max(dev.abs());
            flips += usize::from(idx[0] != want as usize);
            if !quiet {
                println!(
                "  step {step:2}: want {want:6} ({:8.4} margin {:.4}) | ours {:6} {:8.4} 2nd {:6} {:8.4} margin {:.4} | our logit for want {:8.4}",
                case["top1_logits"][step].as_f64().unwrap_or(f64::NAN),
                case["margins"][step].as_f64().unwrap_or(f64::NAN),
                idx[0], logits[idx[0]], idx[1], logits[idx[1]], logits[idx[0]] - logits[idx[1]], logits[want as usize]
            );
            }
            logits = m.model.forward(&[want], &mut cache)?;
        }
    }
    println!("{n_steps} steps: rms deviation of our logit for llama.cpp's token from its top-1 logit {:.4}, worst {:.4}, argmax differs at {flips} steps", (sq / n_steps as f64).sqrt(), worst);
    Ok(())
}
