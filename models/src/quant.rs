//! Quantized weight matrices as the kernels read them. The 32-wide ggml formats are repacked at
//! load into "x4" super-blocks that interleave one block of four consecutive rows, so that one
//! 64-byte vector holds the same 32 columns of four rows; k-quants keep ggml's row layout.
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, BlockQ8K, GgmlType};
use candle_core::quantized::GgmlDType;
use half::f16;

use crate::ModelError;

/// Elements per block of the 32-wide formats.
pub(crate) const QK: usize = 32;
/// Elements per block of the k-quant formats.
pub(crate) const QK_K: usize = 256;
/// Rows per super-block; matrices are padded to a multiple of this.
pub(crate) const ROW_GROUP: usize = 4;

/// Layouts the kernels work on. Per super-block (one 32-column block of four rows):
/// - `Q4_1x4`: d[4] f16, m[4] f16, qs[4][16] nibbles; w = d·q + m (Q4_0 becomes m = −8d).
/// - `Q5_0x4`: d[4] f16, u64 mask of the 5th bits of the low halves (bit 16·row + j), the same
///   for the high halves, qs[4][16] nibbles; w = d·(q − 16).
/// - `Q8_0x4`: d[4] f16, columns 0..16 of the four rows (i8), then columns 16..32.
/// - `Q4K` / `Q6K`: ggml's blocks, rows contiguous (kernels from candle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Q4_1x4,
    Q5_0x4,
    Q8_0x4,
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

    /// Bytes of one block of all four rows of a group.
    pub(crate) fn group_block_bytes(self) -> usize {
        match self {
            Self::Q4_1x4 => 80,
            Self::Q5_0x4 => 88,
            Self::Q8_0x4 => 136,
            Self::Q4K => ROW_GROUP * std::mem::size_of::<BlockQ4K>(),
            Self::Q6K => ROW_GROUP * std::mem::size_of::<BlockQ6K>(),
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
        mut read: impl FnMut(&mut [u8]) -> Result<(), ModelError>,
    ) -> Result<Self, ModelError> {
        let bad_shape = || ModelError::UnsupportedTensorType {
            name: name.into(),
            dtype: format!("{dtype:?} with rows of {cols} values"),
        };
        if cols % dtype.block_size() != 0 {
            return Err(bad_shape());
        }
        let src_row = cols / dtype.block_size() * dtype.type_size();
        let format = match dtype {
            GgmlDType::Q4K => Some(Format::Q4K),
            GgmlDType::Q6K => Some(Format::Q6K),
            _ => None,
        };
        if let Some(format) = format {
            let mut m = Self::zeroed(format, rows, cols);
            read(&mut m.data.as_mut_slice()[..rows * src_row])?;
            return Ok(m);
        }
        if cols % QK != 0 {
            return Err(bad_shape());
        }
        let (format, repack): (Format, fn(&[&[u8]; 4], &mut [u8])) = match dtype {
            GgmlDType::Q4_0 => (Format::Q4_1x4, repack_q4_0),
            GgmlDType::Q4_1 => (Format::Q4_1x4, repack_q4_1),
            GgmlDType::Q5_0 => (Format::Q5_0x4, repack_q5_0),
            _ => (Format::Q8_0x4, repack_q8_0),
        };
        let mut m = Self::zeroed(format, rows, cols);
        let kb = cols / QK;
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
                GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q8_0 => {
                    (chunk, src_row)
                }
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
        let sb = self.format.group_block_bytes();
        let blocks = group
            .chunks_exact(sb)
            .zip(out.chunks_exact_mut(self.format.block_elems()));
        match self.format {
            Format::Q4_1x4 => {
                for (s, out) in blocks {
                    let (d, m) = (f16_at(s, 2 * i), f16_at(s, 8 + 2 * i));
                    for (j, &q) in s[16 + 16 * i..32 + 16 * i].iter().enumerate() {
                        out[j] = d * f32::from(q & 15) + m;
                        out[j + 16] = d * f32::from(q >> 4) + m;
                    }
                }
            }
            Format::Q5_0x4 => {
                for (s, out) in blocks {
                    let d = f16_at(s, 2 * i);
                    let lo = u64::from_le_bytes(s[8..16].try_into().unwrap()) >> (16 * i);
                    let hi = u64::from_le_bytes(s[16..24].try_into().unwrap()) >> (16 * i);
                    for (j, &q) in s[24 + 16 * i..40 + 16 * i].iter().enumerate() {
                        let l = (q & 15) | (((lo >> j) & 1) << 4) as u8;
                        let h = (q >> 4) | (((hi >> j) & 1) << 4) as u8;
                        out[j] = d * (f32::from(l) - 16.0);
                        out[j + 16] = d * (f32::from(h) - 16.0);
                    }
                }
            }
            Format::Q8_0x4 => {
                for (s, out) in blocks {
                    let d = f16_at(s, 2 * i);
                    let lo = &s[8 + 16 * i..24 + 16 * i];
                    let hi = &s[72 + 16 * i..88 + 16 * i];
                    for (o, &q) in out.iter_mut().zip(lo.iter().chain(hi)) {
                        *o = d * f32::from(q as i8);
                    }
                }
            }
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
            }
        }
    }
}

fn repack_q4_1(src: &[&[u8]; 4], dst: &mut [u8]) {
    for (i, s) in src.iter().enumerate() {
        dst[2 * i..2 * i + 2].copy_from_slice(&s[0..2]);
        dst[8 + 2 * i..10 + 2 * i].copy_from_slice(&s[2..4]);
        dst[16 + 16 * i..32 + 16 * i].copy_from_slice(&s[4..20]);
    }
}

fn repack_q4_0(src: &[&[u8]; 4], dst: &mut [u8]) {
    for (i, s) in src.iter().enumerate() {
        // w = d·(q − 8) = d·q + (−8d); scaling an f16 by 8 is exact.
        let d = f16::from_bits(u16::from_le_bytes([s[0], s[1]]));
        let m = f16::from_f32(-8.0 * d.to_f32());
        dst[2 * i..2 * i + 2].copy_from_slice(&s[0..2]);
        dst[8 + 2 * i..10 + 2 * i].copy_from_slice(&m.to_bits().to_le_bytes());
        dst[16 + 16 * i..32 + 16 * i].copy_from_slice(&s[2..18]);
    }
}

fn repack_q5_0(src: &[&[u8]; 4], dst: &mut [u8]) {
    let (mut lo, mut hi) = (0u64, 0u64);
    for (i, s) in src.iter().enumerate() {
        let qh = u32::from_le_bytes([s[2], s[3], s[4], s[5]]);
        lo |= u64::from(qh & 0xffff) << (16 * i);
        hi |= u64::from(qh >> 16) << (16 * i);
        dst[2 * i..2 * i + 2].copy_from_slice(&s[0..2]);
        dst[24 + 16 * i..40 + 16 * i].copy_from_slice(&s[6..22]);
    }
    dst[8..16].copy_from_slice(&lo.to_le_bytes());
    dst[16..24].copy_from_slice(&hi.to_le_bytes());
}

fn repack_q8_0(src: &[&[u8]; 4], dst: &mut [u8]) {
    for (i, s) in src.iter().enumerate() {
        dst[2 * i..2 * i + 2].copy_from_slice(&s[0..2]);
        dst[8 + 16 * i..24 + 16 * i].copy_from_slice(&s[2..18]);
        dst[72 + 16 * i..88 + 16 * i].copy_from_slice(&s[18..34]);
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
    fn quantize(x: &[f32]) -> Self {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        // 127/amax rather than 1/d: the two differ in the last bit, which flips roundings.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(x) {
            // Ties to even, like the AVX path of llama.cpp's quantize_row_q8_0.
            *q = (v * id).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        // llama.cpp stores both scales as f16 (block_q8_0 / block_q8_1); products with the
        // rounded values keep our logits within rounding noise of its.
        Self {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(d * sum as f32).to_f32(),
            qs,
        }
    }
}

/// The quantized form of `rows` activation rows of `cols` values, in the block formats the
/// weights of the next products need; reused between calls to avoid reallocating.
#[derive(Default)]
pub(crate) struct Activations {
    pub(crate) a8: Vec<BlockA8>,
    pub(crate) ak: Vec<BlockQ8K>,
}

impl Activations {
    /// Quantizes `x` (`rows × cols`, row-major); `k_quants` also fills the 256-wide blocks.
    pub(crate) fn quantize(&mut self, x: &[f32], rows: usize, cols: usize, k_quants: bool) {
        debug_assert_eq!(x.len(), rows * cols);
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

    /// Random blocks with small valid f16 scales at byte offsets `scales` of each block.
    pub(crate) fn random_ggml(block: usize, scales: &[usize], rows: usize, cols: usize) -> Vec<u8> {
        let mut s = 7u64;
        let mut raw: Vec<u8> = (0..rows * cols / QK * block)
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
        for (dtype, block, scales) in [
            (GgmlDType::Q4_0, 18, &[0usize][..]),
            (GgmlDType::Q4_1, 20, &[0, 2][..]),
            (GgmlDType::Q5_0, 22, &[0][..]),
            (GgmlDType::Q8_0, 34, &[0][..]),
        ] {
            // 7 rows: the last group is padded.
            let (rows, cols) = (7, 96);
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

    #[test]
    fn activation_blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut a = Activations::default();
        a.quantize(&x, 1, 64, false);
        for (blk, xs) in a.a8.iter().zip(x.chunks_exact(QK)) {
            // d is rounded to f16 after quantizing: up to 127 · 2⁻¹¹ · d on top of half a step.
            for (q, v) in blk.qs.iter().zip(xs) {
                assert!((f32::from(*q) * blk.d - v).abs() <= blk.d * 0.57 + 1e-6);
            }
        }
    }
}
