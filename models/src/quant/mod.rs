//! Quantized weight matrices as the kernels read them. ggml's blocks are repacked at load into
//! "x4" super-blocks that interleave one block of four consecutive rows (see [`layout`]), so
//! that one 64-byte vector holds the same columns of four rows. Without AVX512 the k-quants
//! keep ggml's row layout and candle's kernels.
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, GgmlType};
use candle_core::quantized::GgmlDType;
use half::f16;

use crate::ModelError;

mod activations;
mod layout;

pub(crate) use activations::{Activations, BlockA8, Needs};

/// Elements per block of the 32-wide formats.
pub(crate) const QK: usize = 32;
/// Elements per block of the k-quant formats.
pub(crate) const QK_K: usize = 256;
/// Rows per super-block; matrices are padded to a multiple of this.
pub(crate) const ROW_GROUP: usize = 4;

/// Layouts the kernels work on (see [`layout`] for the x4 super-blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Q4_1x4,
    Q5_0x4,
    Q8_0x4,
    Q4Kx4,
    Q6Kx4,
    /// ggml's Q4_K blocks, rows contiguous (candle's kernels).
    Q4K,
    /// ggml's Q6_K blocks, rows contiguous (candle's kernels).
    Q6K,
}

impl Format {
    pub(crate) fn block_elems(self) -> usize {
        match self {
            Self::Q4_1x4 | Self::Q5_0x4 | Self::Q8_0x4 => QK,
            _ => QK_K,
        }
    }

    /// Bytes of one block of all four rows of a group.
    pub(crate) fn group_block_bytes(self) -> usize {
        match self {
            Self::Q4_1x4 => 80,
            Self::Q5_0x4 => 88,
            Self::Q8_0x4 => 136,
            Self::Q4Kx4 => 592,
            Self::Q6Kx4 => 840,
            Self::Q4K => ROW_GROUP * std::mem::size_of::<BlockQ4K>(),
            Self::Q6K => ROW_GROUP * std::mem::size_of::<BlockQ6K>(),
        }
    }

    /// The activation rounding this format's kernels read.
    pub(crate) fn needs(self) -> Needs {
        let none = Needs::default();
        match self {
            Self::Q4_1x4 | Self::Q5_0x4 | Self::Q8_0x4 => Needs { a8: true, ..none },
            Self::Q4Kx4 | Self::Q6Kx4 => Needs { k8: true, ..none },
            Self::Q4K | Self::Q6K => Needs { ak: true, ..none },
        }
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

/// A `rows × cols` weight matrix (rows = output features), stored as groups of four rows.
pub(crate) struct QMatrix {
    pub(crate) format: Format,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Bytes of one group of four rows.
    pub(crate) group_bytes: usize,
    /// `groups() * group_bytes` bytes; padding rows are zero.
    pub(crate) data: Bytes,
}

/// Packs one block of four rows (ggml blocks) into a super-block.
type Repack = fn(&[&[u8]; 4], &mut [u8]);

/// Rows repacked per read while loading: bounds the staging buffer.
const LOAD_CHUNK_ROWS: usize = 256;

impl QMatrix {
    fn zeroed(format: Format, rows: usize, cols: usize) -> Self {
        let group_bytes = cols / format.block_elems() * format.group_block_bytes();
        Self {
            format,
            rows,
            cols,
            group_bytes,
            data: Bytes::zeroed(rows.div_ceil(ROW_GROUP) * group_bytes),
        }
    }

    pub(crate) fn groups(&self) -> usize {
        self.rows.div_ceil(ROW_GROUP)
    }

    /// Bytes of weights held, padding included.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len
    }

    pub(crate) fn blocks_per_row(&self) -> usize {
        self.cols / self.format.block_elems()
    }

    /// The bytes of group `g` (rows 4g..4g+4).
    pub(crate) fn group(&self, g: usize) -> &[u8] {
        &self.data.as_slice()[g * self.group_bytes..(g + 1) * self.group_bytes]
    }

    /// Builds a matrix from a ggml tensor whose bytes `read` delivers in order (each call fills
    /// the whole buffer it is given), staging at most a few hundred rows at a time.
    pub(crate) fn load(
        name: &str,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        read: impl FnMut(&mut [u8]) -> Result<(), ModelError>,
    ) -> Result<Self, ModelError> {
        let repack_k = crate::kernels::repack_k_quants();
        Self::load_as(name, dtype, rows, cols, repack_k, read)
    }

    /// [`QMatrix::load`] with the k-quant layout chosen by the caller (`repack_k`: x4 blocks
    /// for coe's AVX512 kernels, else ggml's rows for candle's).
    pub(crate) fn load_as(
        name: &str,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        repack_k: bool,
        mut read: impl FnMut(&mut [u8]) -> Result<(), ModelError>,
    ) -> Result<Self, ModelError> {
        let bad_shape = || ModelError::UnsupportedTensorType {
            name: name.into(),
            dtype: format!("{dtype:?} with rows of {cols} values"),
        };
        if !cols.is_multiple_of(dtype.block_size()) {
            return Err(bad_shape());
        }
        let src_row = cols / dtype.block_size() * dtype.type_size();
        let format = match dtype {
            GgmlDType::Q4K if !repack_k => Some(Format::Q4K),
            GgmlDType::Q6K if !repack_k => Some(Format::Q6K),
            _ => None,
        };
        if let Some(format) = format {
            let mut m = Self::zeroed(format, rows, cols);
            read(&mut m.data.as_mut_slice()[..rows * src_row])?;
            return Ok(m);
        }
        if !cols.is_multiple_of(QK) {
            return Err(bad_shape());
        }
        let (format, repack): (Format, Repack) = match dtype {
            GgmlDType::Q4_0 => (Format::Q4_1x4, layout::repack_q4_0),
            GgmlDType::Q4_1 => (Format::Q4_1x4, layout::repack_q4_1),
            GgmlDType::Q5_0 => (Format::Q5_0x4, layout::repack_q5_0),
            GgmlDType::Q4K => (Format::Q4Kx4, layout::repack_q4k),
            GgmlDType::Q6K => (Format::Q6Kx4, layout::repack_q6k),
            _ => (Format::Q8_0x4, layout::repack_q8_0),
        };
        let mut m = Self::zeroed(format, rows, cols);
        let kb = cols / format.block_elems();
        let sb = format.group_block_bytes();
        let group_bytes = m.group_bytes;
        let dst = m.data.as_mut_slice();
        let mut stage = Bytes::zeroed(LOAD_CHUNK_ROWS * src_row);
        let mut requantized = Vec::new();
        for first in (0..rows).step_by(LOAD_CHUNK_ROWS) {
            let n = LOAD_CHUNK_ROWS.min(rows - first);
            let chunk = &mut stage.as_mut_slice()[..n * src_row];
            read(chunk)?;
            // Formats without a kernel go through f32 to ggml's Q8_0 row layout first.
            let (src, row_bytes): (&[u8], usize) = match dtype {
                GgmlDType::Q4_0
                | GgmlDType::Q4_1
                | GgmlDType::Q5_0
                | GgmlDType::Q8_0
                | GgmlDType::Q4K
                | GgmlDType::Q6K => (chunk, src_row),
                _ => {
                    let values = dequantize_ggml(dtype, chunk, n * cols)?;
                    requantized.clear();
                    requantized.resize(n * kb * 34, 0u8);
                    for (x, blk) in values
                        .chunks_exact(QK)
                        .zip(requantized.chunks_exact_mut(34))
                    {
                        quantize_q8_0_block(x, blk);
                    }
                    (&requantized[..], kb * 34)
                }
            };
            let src_block = row_bytes / kb;
            for g in (0..n).step_by(ROW_GROUP) {
                let zero = vec![0u8; src_block];
                let group = &mut dst[(first + g) / ROW_GROUP * group_bytes..][..group_bytes];
                for b in 0..kb {
                    let rows4: [&[u8]; 4] = std::array::from_fn(|i| match g + i < n {
                        true => &src[(g + i) * row_bytes + b * src_block..][..src_block],
                        false => &zero[..],
                    });
                    repack(&rows4, &mut group[b * sb..(b + 1) * sb]);
                }
            }
        }
        Ok(m)
    }

    /// Dequantizes row `row` (an embedding lookup) into `out` (`cols` long).
    pub(crate) fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let (g, i) = (row / ROW_GROUP, row % ROW_GROUP);
        let group = self.group(g);
        let f: fn(&[u8], usize, &mut [f32]) = match self.format {
            Format::Q4_1x4 => layout::dequant_q4_1,
            Format::Q5_0x4 => layout::dequant_q5_0,
            Format::Q8_0x4 => layout::dequant_q8_0,
            Format::Q4Kx4 => layout::dequant_q4k,
            Format::Q6Kx4 => layout::dequant_q6k,
            Format::Q4K | Format::Q6K => {
                let row_bytes = self.group_bytes / ROW_GROUP;
                let bytes = &group[i * row_bytes..(i + 1) * row_bytes];
                // SAFETY: the k-quant blocks are plain repr(C) data and `data` is 8-byte
                // aligned with row_bytes a multiple of the (even) block size.
                unsafe {
                    match self.format {
                        Format::Q4K => BlockQ4K::to_float(cast_blocks(bytes), out),
                        _ => BlockQ6K::to_float(cast_blocks(bytes), out),
                    }
                }
                return;
            }
        };
        let sb = self.format.group_block_bytes();
        let blocks = group.chunks_exact(sb);
        for (s, out) in blocks.zip(out.chunks_exact_mut(self.format.block_elems())) {
            f(s, i, out);
        }
    }
}

/// Dequantizes any ggml tensor to f32 through candle's reference code.
pub(crate) fn dequantize_ggml(
    dtype: GgmlDType,
    raw: &[u8],
    elems: usize,
) -> Result<Vec<f32>, ModelError> {
    // candle views the bytes as blocks, which needs their alignment: copy into aligned storage.
    let mut aligned = Bytes::zeroed(raw.len());
    aligned.as_mut_slice().copy_from_slice(raw);
    let t = candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        aligned.as_slice(),
        vec![elems],
        &candle_core::Device::Cpu,
    )?;
    Ok(t.dequantize(&candle_core::Device::Cpu)?.to_vec1::<f32>()?)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn load(dtype: GgmlDType, rows: usize, cols: usize, raw: &[u8]) -> QMatrix {
        let mut at = 0;
        QMatrix::load("t", dtype, rows, cols, |dst| {
            dst.copy_from_slice(&raw[at..at + dst.len()]);
            at += dst.len();
            Ok(())
        })
        .unwrap()
    }

    /// Random blocks (`block` bytes per 32 values, or per 256 when over 100 bytes) with small
    /// valid f16 scales at byte offsets `scales` of each block.
    pub(crate) fn random_ggml(block: usize, scales: &[usize], rows: usize, cols: usize) -> Vec<u8> {
        let per = if block > 100 { QK_K } else { QK };
        let mut s = 7u64;
        let mut raw: Vec<u8> = (0..rows * cols / per * block)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect();
        for (i, blk) in raw.chunks_exact_mut(block).enumerate() {
            for &at in scales {
                let v = f16::from_f32(0.01 + (i % 7) as f32 * 0.003 - 0.02 * at as f32);
                blk[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        raw
    }

    #[test]
    fn repacked_rows_dequantize_like_ggml() {
        for (dtype, block, scales, cols) in [
            (GgmlDType::Q4_0, 18, &[0usize][..], 96),
            (GgmlDType::Q4_1, 20, &[0, 2][..], 96),
            (GgmlDType::Q5_0, 22, &[0][..], 96),
            (GgmlDType::Q8_0, 34, &[0][..], 96),
            (GgmlDType::Q4K, 144, &[0, 2][..], 512),
            (GgmlDType::Q6K, 210, &[208][..], 512),
        ] {
            // 7 rows: the last group is padded.
            let rows = 7;
            let raw = random_ggml(block, scales, rows, cols);
            let m = load(dtype, rows, cols, &raw);
            let expected = dequantize_ggml(dtype, &raw, rows * cols).unwrap();
            let mut out = vec![0f32; cols];
            for r in 0..rows {
                m.dequantize_row(r, &mut out);
                assert_eq!(out, expected[r * cols..(r + 1) * cols], "{dtype:?} row {r}");
            }
        }
    }
}
