//! Writes the embeddings of every training view of a JSONL file for exploration outside Rust:
//! `<out>.f32` (rows x 384, little-endian) and `<out>.jsonl` (one {row, view, category, source} per row).

use std::io::Write;

use coe_router::classify::{load_jsonl, training_views, EmbeddingCache};
use coe_router::embed::MiniLm;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (data, out) = (&args[1], &args[2]);
    let examples = load_jsonl(data.as_ref())?;
    let mut model = MiniLm::load(&coe_fetch::coe_home())?;
    let mut cache = EmbeddingCache::open(&coe_fetch::coe_home().join("router-embeddings"), &model)?;
    let mut texts = Vec::new();
    let mut meta = std::fs::File::create(format!("{out}.jsonl"))?;
    for (i, ex) in examples.iter().enumerate() {
        for (v, t) in training_views(&ex.prompt).into_iter().enumerate() {
            texts.push(t);
            writeln!(
                meta,
                "{}",
                serde_json::json!({"row": i, "view": v, "category": ex.category, "source": ex.source, "text": t})
            )?;
        }
    }
    let start = std::time::Instant::now();
    let vecs = cache.embed_all(&mut model, &texts, 32, &mut |done, total| {
        if done % 640 < 32 || done == total {
            eprintln!("{done}/{total} {:.0}s", start.elapsed().as_secs_f64());
        }
    })?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(format!("{out}.f32"))?);
    for v in vecs {
        for x in v {
            f.write_all(&x.to_le_bytes())?;
        }
    }
    Ok(())
}
