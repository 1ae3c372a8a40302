//! An on-disk cache of embeddings keyed by text, so retraining and evaluation embed each distinct
//! text once per embedder (about ten minutes for the shipped data on two cores) rather than every run.
//!
//! The file is a sequence of records `[u64 text hash][dim x f32]`, little-endian, appended to; a
//! torn last record (an interrupted run) is ignored on load.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::embed::{EmbedError, Embedder};

use super::ClassifyError;

pub struct EmbeddingCache {
    path: Option<PathBuf>,
    dim: usize,
    vectors: HashMap<u64, Vec<f32>>,
}

/// FNV-1a: stable across runs and platforms, unlike `DefaultHasher`.
fn text_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl EmbeddingCache {
    /// A cache that lives only in memory.
    pub fn in_memory(dim: usize) -> Self {
        Self {
            path: None,
            dim,
            vectors: HashMap::new(),
        }
    }

    /// Opens (or starts) the cache file for the embedder with this identity under `dir`.
    pub fn open(dir: &Path, embedder: &dyn Embedder) -> Result<Self, ClassifyError> {
        let id = embedder.identity();
        let path = dir.join(format!(
            "{}-{}.bin",
            id.model,
            &id.weights_sha256[..16.min(id.weights_sha256.len())]
        ));
        let io = |e| ClassifyError::Io {
            path: path.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let record = 8 + 4 * id.dim;
        let mut vectors = HashMap::with_capacity(bytes.len() / record);
        for rec in bytes.chunks_exact(record) {
            let hash = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
            let v = rec[8..]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            vectors.insert(hash, v);
        }
        Ok(Self {
            path: Some(path),
            dim: id.dim,
            vectors,
        })
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Embeddings of `texts`, computing (in batches of `batch`) and recording only the missing ones.
    pub fn embed_all(
        &mut self,
        embedder: &mut dyn Embedder,
        texts: &[&str],
        batch: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, ClassifyError> {
        let mut missing: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|t| !self.vectors.contains_key(&text_hash(t)))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        // Similar lengths together keep the batches' cost even, so progress reads steadily.
        missing.sort_by_key(|t| t.len());
        let mut writer = match &self.path {
            Some(p) if !missing.is_empty() => Some(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| ClassifyError::Io {
                        path: p.display().to_string(),
                        source: e,
                    })?,
            )),
            _ => None,
        };
        let total = missing.len();
        for (i, chunk) in missing.chunks(batch.max(1)).enumerate() {
            let vecs = embedder.embed(chunk)?;
            for (text, v) in chunk.iter().zip(vecs) {
                if v.len() != self.dim {
                    return Err(EmbedError::Tokenize(format!(
                        "the embedder returned {} floats, expected {}",
                        v.len(),
                        self.dim
                    ))
                    .into());
                }
                let hash = text_hash(text);
                if let Some(w) = writer.as_mut() {
                    let mut rec = Vec::with_capacity(8 + 4 * self.dim);
                    rec.extend_from_slice(&hash.to_le_bytes());
                    v.iter()
                        .for_each(|x| rec.extend_from_slice(&x.to_le_bytes()));
                    w.write_all(&rec).map_err(|e| ClassifyError::Io {
                        path: format!("{:?}", self.path),
                        source: e,
                    })?;
                }
                self.vectors.insert(hash, v);
            }
            progress(((i + 1) * batch).min(total), total);
        }
        if let Some(mut w) = writer {
            w.flush().map_err(|e| ClassifyError::Io {
                path: format!("{:?}", self.path),
                source: e,
            })?;
        }
        Ok(texts
            .iter()
            .map(|t| self.vectors[&text_hash(t)].clone())
            .collect())
    }
}
