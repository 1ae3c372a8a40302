//! One loaded expert: its GGUF model, the tokenizer and chat template from the file's metadata.
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use coe_core::ChatMessage;
use coe_models::QuantizedModel;
use coe_tokenizer::{ChatTemplate, GgufTokenizer};

use crate::error::WorkerError;

/// The `general.architecture` values the model code implements.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "gemma3"];

/// What a client sees of an expert without touching its model.
#[derive(Clone, Debug)]
pub struct ExpertInfo {
    pub architecture: String,
    pub context_length: usize,
    pub file_bytes: u64,
    pub weight_bytes: u64,
    pub has_chat_template: bool,
}

/// The text side of an expert, shared between the request handlers (encode) and its engine (decode).
pub struct ExpertText {
    pub tokenizer: GgufTokenizer,
    pub template: Option<ChatTemplate>,
}

/// What the worker keeps of an expert in every tier, Storage included: the parsed GGUF header
/// (tensor offsets, metadata), its tokenizer and chat template, and what a client sees of it. Parsed
/// once at registration, so a promotion never parses the header again.
pub struct ExpertHeader {
    pub content: gguf_file::Content,
    pub text: Arc<ExpertText>,
    pub info: ExpertInfo,
}

/// An expert's model built and its text side, ready for an engine thread.
pub struct LoadedExpert {
    pub model: QuantizedModel,
    pub text: Arc<ExpertText>,
    pub info: ExpertInfo,
}

impl ExpertHeader {
    /// Reads and checks a GGUF file's header; every failure names the file and the reason.
    pub fn read(path: &Path, max_context: usize) -> Result<Self, WorkerError> {
        let load_err = |reason: String| WorkerError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| load_err(e.to_string()))?;
        let file_bytes = file.metadata().map_err(|e| load_err(e.to_string()))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        Self::from_reader(path, &mut reader, file_bytes, max_context)
    }

    /// Parses the header from any reader over a GGUF's bytes.
    pub fn from_reader<R: Read + Seek>(
        path: &Path,
        reader: &mut R,
        file_bytes: u64,
        max_context: usize,
    ) -> Result<Self, WorkerError> {
        let load_err = |reason: String| WorkerError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let content = gguf_file::Content::read(reader)
            .map_err(|e| load_err(format!("not a readable GGUF file: {e}")))?;
        let tensor_bytes = |t: &gguf_file::TensorInfo| {
            (t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size()) as u64
        };
        let tensor_end = content
            .tensor_infos
            .values()
            .map(|t| content.tensor_data_offset + t.offset + tensor_bytes(t))
            .max()
            .unwrap_or(0);
        if tensor_end > file_bytes {
            return Err(load_err(format!(
                "the file is truncated: its tensors need {tensor_end} bytes but it has {file_bytes}"
            )));
        }
        let architecture = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string());
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(load_err(format!(
                "unsupported architecture {architecture:?} (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        let tokenizer =
            GgufTokenizer::from_gguf(&content).map_err(|e| load_err(format!("tokenizer: {e}")))?;
        let template = ChatTemplate::from_gguf(&content, &tokenizer)
            .map_err(|e| load_err(format!("chat template: {e}")))?;
        // The model caps its context the same way (coe_models::ModelConfig).
        let trained_context = content
            .metadata
            .get(&format!("{architecture}.context_length"))
            .and_then(|v| v.to_u64().ok())
            .unwrap_or(0) as usize;
        let context_length = trained_context.min(max_context).max(1);
        let info = ExpertInfo {
            architecture,
            context_length,
            file_bytes,
            // The file's tensor bytes until the model is built; then what the repacked model keeps.
            weight_bytes: content.tensor_infos.values().map(tensor_bytes).sum(),
            has_chat_template: template.is_some(),
        };
        Ok(Self {
            content,
            text: Arc::new(ExpertText {
                tokenizer,
                template,
            }),
            info,
        })
    }

    /// Builds the model from the file (Storage -> Host). The file is mapped and the kernel asked to
    /// read it ahead in large sequential reads, so the disk streams while the rows are repacked.
    pub fn build_model(
        &self,
        path: &Path,
        max_context: usize,
    ) -> Result<QuantizedModel, WorkerError> {
        let load_err = |reason: String| WorkerError::Load {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| load_err(e.to_string()))?;
        // SAFETY: the worker only maps verified model files that nothing rewrites while they are
        // hosted; the map lives only for this build.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| load_err(e.to_string()))?;
        let _ = map.advise(memmap2::Advice::Sequential);
        let _ = map.advise(memmap2::Advice::WillNeed);
        self.build_model_from(path, &map, max_context)
    }

    /// Builds the model from a GGUF's bytes already in memory.
    pub fn build_model_from(
        &self,
        path: &Path,
        bytes: &[u8],
        max_context: usize,
    ) -> Result<QuantizedModel, WorkerError> {
        let mut reader = Cursor::new(bytes);
        QuantizedModel::from_gguf(&self.content, &mut reader, &Device::Cpu, max_context).map_err(
            |e| WorkerError::Load {
                path: path.to_path_buf(),
                reason: e.to_string(),
            },
        )
    }
}

impl LoadedExpert {
    /// Loads a GGUF file the way a fresh process would: header, then every tensor from the file.
    pub fn load(path: &Path, max_context: usize) -> Result<Self, WorkerError> {
        let header = ExpertHeader::read(path, max_context)?;
        let model = header.build_model(path, max_context)?;
        Ok(Self::from_parts(&header, model))
    }

    pub fn from_parts(header: &ExpertHeader, model: QuantizedModel) -> Self {
        let mut info = header.info.clone();
        info.context_length = model.config().context_length;
        info.weight_bytes = model.weight_bytes();
        Self {
            model,
            text: header.text.clone(),
            info,
        }
    }
}

impl ExpertText {
    /// The prompt's token ids: a chat rendered with the template, or a base model's plain completion.
    pub fn encode_prompt(
        &self,
        messages: &[ChatMessage],
        raw: &str,
    ) -> Result<Vec<u32>, WorkerError> {
        let (text, parse_special) = if messages.is_empty() {
            // Raw prompts are for clients that format the prompt themselves, markup included, as
            // llama.cpp's server takes them: special tokens written in the text are parsed.
            (raw.to_string(), true)
        } else if let Some(template) = &self.template {
            let text = template.render(messages).map_err(|e| {
                WorkerError::InvalidRequest(format!("cannot render the chat template: {e}"))
            })?;
            (text, true)
        } else {
            // A base model has no chat format: the conversation becomes plain text to complete.
            let text = messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n\n");
            (text, false)
        };
        let mut ids = Vec::new();
        if self.tokenizer.add_bos() {
            if let Some(bos) = self.tokenizer.bos_id() {
                let bos_text = self.tokenizer.token_text(bos).unwrap_or_default();
                // Templates that write the BOS themselves must not get a second one.
                if !(parse_special && !bos_text.is_empty() && text.starts_with(bos_text)) {
                    ids.push(bos);
                }
            }
        }
        ids.extend(self.tokenizer.encode(&text, parse_special));
        Ok(ids)
    }
}
