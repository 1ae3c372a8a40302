//! all-MiniLM-L6-v2 as sentence-transformers runs it: BERT tokenisation truncated at 256 tokens,
//! the encoder, mean pooling over the tokens, L2 normalisation.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use super::bert::{Bert, BertConfig, Scratch};
use super::{DenseKernel, EmbedError, Embedder, EmbedderIdentity};

/// The manifest name of the router's embedding model.
pub const MINILM_MODEL: &str = "all-minilm-l6-v2";
/// sentence-transformers' `max_seq_length` for this model (tokenizer.json says 128; the model was
/// trained with 256 and that is what sentence-transformers uses).
pub const MAX_SEQ_LEN: usize = 256;
const WEIGHTS_FILE: &str = "model.safetensors";
/// all-MiniLM-L6-v2's hidden size; `from_dir` takes the real value from config.json.
const DIM: usize = 384;

fn weights_sha256(entry: &coe_fetch::ModelEntry) -> Result<String, EmbedError> {
    entry
        .files
        .iter()
        .find(|f| f.name == WEIGHTS_FILE)
        .map(|f| f.sha256.clone())
        .ok_or_else(|| EmbedError::Weights {
            path: WEIGHTS_FILE.into(),
            reason: format!("the manifest entry {MINILM_MODEL} lists no {WEIGHTS_FILE}"),
        })
}

pub struct MiniLm {
    tokenizer: Tokenizer,
    bert: Bert,
    scratch: Scratch,
    identity: EmbedderIdentity,
    /// The forward pass runs inside this pool so that the thread calling `embed` is one of its
    /// workers: the two dozen parallel products per query then hand work over between spinning
    /// workers instead of waking a sleeping pool from outside each time.
    pool: rayon::ThreadPool,
}

impl MiniLm {
    /// Loads the model from the coe cache under `home`, fetching it first if it is missing, to
    /// run on the fastest kernel this machine has (`DenseKernel::best`).
    pub fn load(home: &Path) -> Result<Self, EmbedError> {
        Self::load_with_kernel(home, DenseKernel::best())
    }

    /// As `load`, on the given kernel (which must be available).
    pub fn load_with_kernel(home: &Path, kernel: DenseKernel) -> Result<Self, EmbedError> {
        let manifest = coe_fetch::Manifest::embedded();
        let entry = manifest.model(MINILM_MODEL)?;
        let sha = weights_sha256(entry)?;
        let dir = coe_fetch::fetch_model(home, entry, &mut |_| {})?;
        Self::from_dir(&dir, sha, kernel)
    }

    /// The kernel the forward pass runs on.
    pub fn kernel(&self) -> DenseKernel {
        self.bert.kernel()
    }

    /// The identity `load` will report, from the manifest alone (nothing is read or fetched).
    pub fn manifest_identity() -> Result<EmbedderIdentity, EmbedError> {
        let manifest = coe_fetch::Manifest::embedded();
        Ok(EmbedderIdentity {
            model: MINILM_MODEL.to_string(),
            weights_sha256: weights_sha256(manifest.model(MINILM_MODEL)?)?,
            dim: DIM,
        })
    }

    /// Loads `model.safetensors`, `tokenizer.json` and `config.json` from `dir`; `weights_sha256`
    /// becomes part of the embedder's identity (the caller vouches for it).
    pub fn from_dir(
        dir: &Path,
        weights_sha256: String,
        kernel: DenseKernel,
    ) -> Result<Self, EmbedError> {
        let tok_path = dir.join("tokenizer.json");
        let tok_err = |reason: String| EmbedError::Tokenizer {
            path: tok_path.display().to_string(),
            reason,
        };
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| tok_err(e.to_string()))?;
        // tokenizer.json pads every input to 128; the forward pass packs sequences instead.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_SEQ_LEN,
                ..Default::default()
            }))
            .map_err(|e| tok_err(e.to_string()))?;

        let cfg_path = dir.join("config.json");
        let cfg: BertConfig = std::fs::read(&cfg_path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|reason| EmbedError::Weights {
                path: cfg_path.display().to_string(),
                reason,
            })?;
        if tokenizer.get_vocab_size(true) > cfg.vocab_size
            || cfg.max_position_embeddings < MAX_SEQ_LEN
        {
            return Err(tok_err(format!(
                "tokenizer vocabulary {} or positions {} do not fit the model",
                tokenizer.get_vocab_size(true),
                cfg.max_position_embeddings
            )));
        }
        let bert = Bert::load(&dir.join(WEIGHTS_FILE), cfg, kernel)?;
        tracing::debug!(kernel = kernel.name(), "MiniLM loaded");
        let identity = EmbedderIdentity {
            model: MINILM_MODEL.to_string(),
            weights_sha256,
            dim: bert.config().hidden_size,
        };
        // 0 threads means rayon's default: $RAYON_NUM_THREADS, else one per core.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(0)
            .thread_name(|i| format!("coe-embed-{i}"))
            .build()
            .map_err(|e| EmbedError::Weights {
                path: dir.display().to_string(),
                reason: format!("could not start the embedding threads: {e}"),
            })?;
        Ok(Self {
            tokenizer,
            bert,
            scratch: Scratch::default(),
            identity,
            pool,
        })
    }

    /// Token ids with `[CLS]`/`[SEP]`, truncated at 256.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, EmbedError> {
        let encodings = if texts.len() == 1 {
            vec![self.tokenizer.encode_fast(texts[0], true)]
        } else {
            texts
                .iter()
                .map(|t| self.tokenizer.encode_fast(*t, true))
                .collect()
        };
        encodings
            .into_iter()
            .map(|e| {
                e.map(|e| e.get_ids().to_vec())
                    .map_err(|e| EmbedError::Tokenize(e.to_string()))
            })
            .collect()
    }
}

impl Embedder for MiniLm {
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.tokenize(texts)?;
        let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let (bert, scratch) = (&self.bert, &mut self.scratch);
        Ok(self.pool.install(|| bert.embed(&seqs, scratch)))
    }

    fn identity(&self) -> &EmbedderIdentity {
        &self.identity
    }
}
