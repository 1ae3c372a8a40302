//! Quantized decoder models built from GGUF files.
