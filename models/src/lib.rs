//! Quantized decoder models (llama, qwen2, gemma3) built from GGUF files and run on the CPU
//! with coe's own int8 kernels. One engine thread owns a model; sequences keep their state in
//! [`KvCache`]s made by [`QuantizedModel::new_cache`].
mod attention;
mod cache;
mod config;
mod error;
mod kernels;
mod loader;
mod model;
mod ops;
mod quant;

pub use cache::KvCache;
pub use config::{Architecture, ModelConfig, RopeStyle};
pub use error::ModelError;
pub use kernels::kernel_level;
pub use model::QuantizedModel;
