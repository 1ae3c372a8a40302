//! Greedy-decodes a prompt with a GGUF model and prints the text, to eyeball a model's output.
//! Usage: generate MODEL.gguf "prompt" [tokens] [--bos]
mod common;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: generate MODEL.gguf PROMPT [N] [--bos]"))?;
    let prompt = args
        .get(2)
        .map_or("The capital of France is", String::as_str);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(24);
    let m = common::load(path, 4096)?;
    let mut ids = Vec::new();
    if args.iter().any(|a| a == "--bos") {
        ids.extend(m.model.config().bos_token_id);
    }
    ids.extend(m.encode(prompt));
    println!("prompt ids {ids:?}");
    let mut cache = m.model.new_cache();
    let mut logits = m.model.forward(&ids, &mut cache)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let next = common::argmax(&logits);
        out.push(next);
        logits = m.model.forward(&[next], &mut cache)?;
    }
    println!("ids {out:?}");
    println!("{}{}", prompt, m.decode(&out));
    Ok(())
}
