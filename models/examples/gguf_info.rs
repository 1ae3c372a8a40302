//! Prints a GGUF file's metadata (arrays abbreviated) and tensor table, to see what a model needs.
use candle_core::quantized::gguf_file::{Content, Value};

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: gguf_info FILE.gguf"))?;
    let mut file = std::fs::File::open(&path)?;
    let content = Content::read(&mut file)?;
    let mut keys: Vec<_> = content.metadata.keys().collect();
    keys.sort();
    for key in keys {
        match &content.metadata[key] {
            Value::Array(items) => println!("{key} = [{} items]", items.len()),
            other => println!("{key} = {other:?}"),
        }
    }
    let mut names: Vec<_> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let info = &content.tensor_infos[name];
        println!("{name}: {:?} {:?}", info.ggml_dtype, info.shape.dims());
    }
    Ok(())
}
