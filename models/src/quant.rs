//! Quantized weight matrices as the kernels read them: the block formats kept from GGUF, the
//! conversions applied at load for the others, embedding-row lookup, and activation quantization.
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, BlockQ8K, GgmlType};
use candle_core::quantized::GgmlDType;
use half::f16;

use crate::ModelError;

/// Elements per block of the 32-wide formats.
pub(crate) const QK: usize = 32;
/// Elements per block of the k-quant formats.
pub(crate) const QK_K: usize = 256;
/// Kernels produce four output rows at a time; matrices are padded to a multiple of this.
pub(crate) const ROW_GROUP: usize = 4;

/// Block layouts the kernels work on directly (all byte-identical to ggml's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// f16 scale d, f16 min m, 32 nibbles: w = d·q + m.
    Q4_1,
    /// f16 scale d, 32 high bits, 32 nibbles: w = d·(q − 16).
    Q5_0,
    /// f16 scale d, 32 signed bytes: w = d·q.
    Q8_0,
    Q4K,
    Q6K,
}

impl Format {
    pub(crate) fn block_elems(self) -> usize {
        match self {
            Self::Q4K | Self::Q6K => QK_K,
            _ => QK,
        }
    }

    pub(crate) fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4K => std::mem::size_of::<BlockQ4K>(),
            Self::Q6K => std::mem::size_of::<BlockQ6K>(),
        }
    }

    /// Whether activations must be quantized to 256-wide `BlockQ8K` for this format.
    pub(crate) fn is_k_quant(self) -> bool {
        matches!(self, Self::Q4K | Self::Q6K)
    }
}

/// Zero-initialised bytes with 8-byte alignment, so block structs can be viewed in place.
/// Backed by `Vec<u64>` because `vec![0u64; n]` maps fresh zero pages instead of writing them.
pub(crate) struct Bytes {
    words: Vec<u64>,
    len: usize,
}

impl Bytes {
    pub(crate) fn zeroed(len: usize) -> Self {
        Self {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }
}

/// Views `bytes` as a slice of ggml block structs.
///
/// # Safety
/// `T` must be a `repr(C)` block of plain integers/f16 for which every bit pattern is valid.
pub(crate) unsafe fn cast_blocks<T>(bytes: &[u8]) -> &[T] {
    assert_eq!(bytes.len() % std::mem::size_of::<T>(), 0);
    assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    // SAFETY: size and alignment checked above; validity is the caller's promise.
    unsafe {
        std::slice::from_raw_parts(
            bytes.as_ptr().cast(),
            bytes.len() / std::mem::size_of::<T>(),
        )
    }
}

/// A `rows × cols` weight matrix (rows = output features), one run of blocks per row.
pub(crate) struct QMatrix {
    pub(crate) format: Format,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_bytes: usize,
    /// `padded_rows() * row_bytes` bytes; padding rows are zero.
    pub(crate) data: Bytes,
}

impl QMatrix {
    /// An all-zero matrix with room for the padding rows; fill it through `data`.
    pub(crate) fn zeroed(format: Format, rows: usize, cols: usize) -> Self {
        let row_bytes = cols / format.block_elems() * format.block_bytes();
        let padded = rows.div_ceil(ROW_GROUP) * ROW_GROUP;
        Self {
            format,
            rows,
            cols,
            row_bytes,
            data: Bytes::zeroed(padded * row_bytes),
        }
    }

    /// Bytes of weights held, padding included.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len
    }

    pub(crate) fn blocks_per_row(&self) -> usize {
        self.cols / self.format.block_elems()
    }

    /// Dequantizes row `row` (an embedding lookup) into `out` (`cols` long).
    pub(crate) fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let bytes = &self.data.as_slice()[row * self.row_bytes..(row + 1) * self.row_bytes];
        match self.format {
            Format::Q4_1 => {
                for (blk, out) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
                    let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                    for (j, &q) in blk[4..].iter().enumerate() {
                        out[j] = d * f32::from(q & 15) + m;
                        out[j + 16] = d * f32::from(q >> 4) + m;
                    }
                }
            }
            Format::Q5_0 => {
                for (blk, out) in bytes.chunks_exact(22).zip(out.chunks_exact_mut(QK)) {
                    let d = f16_at(blk, 0);
                    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                    for (j, &q) in blk[6..].iter().enumerate() {
                        let lo = (q & 15) | (((qh >> j) & 1) << 4) as u8;
                        let hi = (q >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
                        out[j] = d * (f32::from(lo) - 16.0);
                        out[j + 16] = d * (f32::from(hi) - 16.0);
                    }
                }
            }
            Format::Q8_0 => {
                for (blk, out) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
                    let d = f16_at(blk, 0);
                    for (o, &q) in out.iter_mut().zip(&blk[2..]) {
                        *o = d * f32::from(q as i8);
                    }
                }
            }
            // SAFETY: the k-quant blocks are plain repr(C) data and `data` is 8-byte aligned
            // with row_bytes a multiple of the (even) block size.
            Format::Q4K => BlockQ4K::to_float(unsafe { cast_blocks(bytes) }, out),
            Format::Q6K => BlockQ6K::to_float(unsafe { cast_blocks(bytes) }, out),
        }
    }

    /// Builds a matrix from raw ggml tensor bytes, keeping formats the kernels read and
    /// converting the rest (Q4_0 → Q4_1 exactly, anything else → Q8_0 via f32).
    pub(crate) fn from_ggml(
        name: &str,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        raw: &[u8],
    ) -> Result<Self, ModelError> {
        let native = match dtype {
            GgmlDType::Q4_1 => Some(Format::Q4_1),
            GgmlDType::Q5_0 => Some(Format::Q5_0),
            GgmlDType::Q8_0 => Some(Format::Q8_0),
            GgmlDType::Q4K => Some(Format::Q4K),
            GgmlDType::Q6K => Some(Format::Q6K),
            _ => None,
        };
        if let Some(format) = native {
            let mut m = Self::zeroed(format, rows, cols);
            m.data.as_mut_slice()[..raw.len()].copy_from_slice(raw);
            return Ok(m);
        }
        if cols % QK != 0 {
            return Err(ModelError::UnsupportedTensorType {
                name: name.into(),
                dtype: format!("{dtype:?} with rows of {cols} (not a multiple of 32)"),
            });
        }
        if dtype == GgmlDType::Q4_0 {
            let mut m = Self::zeroed(Format::Q4_1, rows, cols);
            for (src, dst) in raw
                .chunks_exact(18)
                .zip(m.data.as_mut_slice().chunks_exact_mut(20))
            {
                // w = d·(q − 8) = d·q + (−8d); scaling an f16 by 8 is exact.
                let d = f16::from_bits(u16::from_le_bytes([src[0], src[1]]));
                let m_ = f16::from_f32(-8.0 * d.to_f32());
                dst[..2].copy_from_slice(&src[..2]);
                dst[2..4].copy_from_slice(&m_.to_bits().to_le_bytes());
                dst[4..].copy_from_slice(&src[2..]);
            }
            return Ok(m);
        }
        let values = dequantize_ggml(dtype, raw, rows * cols)?;
        let mut m = Self::zeroed(Format::Q8_0, rows, cols);
        for (x, dst) in values
            .chunks_exact(QK)
            .zip(m.data.as_mut_slice().chunks_exact_mut(34))
        {
            quantize_q8_0_block(x, dst);
        }
        Ok(m)
    }
}

/// Dequantizes any ggml tensor to f32 through candle's reference code.
pub(crate) fn dequantize_ggml(
    dtype: GgmlDType,
    raw: &[u8],
    elems: usize,
) -> Result<Vec<f32>, ModelError> {
    let t = candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        raw,
        vec![elems],
        &candle_core::Device::Cpu,
    )?;
    Ok(t.dequantize(&candle_core::Device::Cpu)?.to_vec1::<f32>()?)
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// ggml's reference Q8_0 quantization of one 32-value block into `dst` (34 bytes).
fn quantize_q8_0_block(x: &[f32], dst: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    dst[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    for (q, v) in dst[2..].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

/// One 32-value block of an activation row, quantized to int8 for the integer kernels.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct BlockA8 {
    pub(crate) d: f32,
    /// d · Σqs, which folds the offset/min term of asymmetric weight formats into one product.
    pub(crate) s: f32,
    pub(crate) qs: [i8; QK],
}

impl BlockA8 {
    const ZERO: Self = Self {
        d: 0.0,
        s: 0.0,
        qs: [0; QK],
    };

    fn quantize(x: &[f32]) -> Self {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut b = Self { d, ..Self::ZERO };
        let mut sum = 0i32;
        for (q, v) in b.qs.iter_mut().zip(x) {
            // Ties to even, like the AVX path of llama.cpp's quantize_row_q8_0.
            *q = (v * id).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        b.s = d * sum as f32;
        b
    }
}

/// The quantized form of `rows` activation rows of `cols` values, in the block formats the
/// weights of the next products need; reused between calls to avoid reallocating.
#[derive(Default)]
pub(crate) struct Activations {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) a8: Vec<BlockA8>,
    pub(crate) ak: Vec<BlockQ8K>,
}

impl Activations {
    /// Quantizes `x` (`rows × cols`, row-major); `k_quants` also fills the 256-wide blocks.
    pub(crate) fn quantize(&mut self, x: &[f32], rows: usize, cols: usize, k_quants: bool) {
        debug_assert_eq!(x.len(), rows * cols);
        self.rows = rows;
        self.cols = cols;
        self.a8.clear();
        self.a8.extend(x.chunks_exact(QK).map(BlockA8::quantize));
        self.ak.clear();
        if k_quants && cols % QK_K == 0 {
            self.ak.resize(rows * cols / QK_K, BlockQ8K::zeros());
            BlockQ8K::from_float(x, &mut self.ak);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_converts_to_q4_1_exactly() {
        let mut raw = vec![0u8; 18];
        raw[..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        for (j, b) in raw[2..].iter_mut().enumerate() {
            *b = (j as u8 & 15) | ((15 - j as u8 & 15) << 4);
        }
        let expected = dequantize_ggml(GgmlDType::Q4_0, &raw, 32).unwrap();
        let m = QMatrix::from_ggml("t", GgmlDType::Q4_0, 1, 32, &raw).unwrap();
        let mut out = vec![0f32; 32];
        m.dequantize_row(0, &mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn activation_blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = Activations::default();
        a.quantize(&x, 1, 64, false);
        for (blk, xs) in a.a8.iter().zip(x.chunks_exact(QK)) {
            for (q, v) in blk.qs.iter().zip(xs) {
                assert!((f32::from(*q) * blk.d - v).abs() <= blk.d * 0.5 + 1e-6);
            }
        }
    }
}
