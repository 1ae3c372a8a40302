//! Reads named tensors out of a GGUF byte stream straight into the buffers the model keeps:
//! one seek and one read per tensor, with conversion only for formats the kernels lack.
use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::GgmlDType;

use crate::quant::{dequantize_ggml, Bytes, QMatrix};
use crate::ModelError;

/// The tensors of one GGUF file, read from `reader` (a file or bytes staged in memory).
pub(crate) struct TensorSource<'a, R> {
    content: &'a Content,
    reader: &'a mut R,
}

impl<'a, R: Read + Seek> TensorSource<'a, R> {
    pub(crate) fn new(content: &'a Content, reader: &'a mut R) -> Self {
        Self { content, reader }
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn info(&self, name: &str) -> Result<&'a TensorInfo, ModelError> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })
    }

    fn read_into(
        &mut self,
        name: &str,
        info: &TensorInfo,
        dst: &mut [u8],
    ) -> Result<(), ModelError> {
        let io = |source| ModelError::Io {
            name: name.into(),
            source,
        };
        let start = self.content.tensor_data_offset + info.offset;
        self.reader.seek(SeekFrom::Start(start)).map_err(io)?;
        self.reader.read_exact(dst).map_err(io)
    }

    fn byte_len(info: &TensorInfo) -> usize {
        let dtype = info.ggml_dtype;
        info.shape.elem_count() / dtype.block_size() * dtype.type_size()
    }

    fn check_shape(name: &str, info: &TensorInfo, expected: &[usize]) -> Result<(), ModelError> {
        if info.shape.dims() != expected {
            return Err(ModelError::ShapeMismatch {
                name: name.into(),
                expected: expected.to_vec(),
                actual: info.shape.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// A `rows × cols` weight matrix (rows = output features).
    pub(crate) fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix, ModelError> {
        let info = self.info(name)?;
        Self::check_shape(name, info, &[rows, cols])?;
        let io = |source| ModelError::Io {
            name: name.into(),
            source,
        };
        let start = self.content.tensor_data_offset + info.offset;
        self.reader.seek(SeekFrom::Start(start)).map_err(io)?;
        let reader = &mut *self.reader;
        QMatrix::load(name, info.ggml_dtype, rows, cols, |dst| {
            reader.read_exact(dst).map_err(io)
        })
    }

    /// A vector of `len` values (norm weights, biases) as f32.
    pub(crate) fn vector(&mut self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let info = self.info(name)?;
        Self::check_shape(name, info, &[len])?;
        let mut raw = Bytes::zeroed(Self::byte_len(info));
        self.read_into(name, info, raw.as_mut_slice())?;
        if info.ggml_dtype == GgmlDType::F32 {
            return Ok(raw
                .as_slice()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect());
        }
        dequantize_ggml(info.ggml_dtype, raw.as_slice(), len)
    }
}
