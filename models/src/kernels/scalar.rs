//! Portable reference kernels: four weight rows against one activation row, block by block.
//! They run where no SIMD kernel applies and are the yardstick the SIMD kernels are tested with.
use half::f16;

use crate::quant::{BlockA8, QK};

fn f16_at(w: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([w[at], w[at + 1]])).to_f32()
}

/// Σ over blocks of one row: `q(byte j)` yields the unsigned quant of element j, `scale`
/// and `offset` the block's d and its additive term (per unit of the activation's d·Σq).
fn row_dot(row: &[u8], bytes: usize, a: &[BlockA8], f: impl Fn(&[u8], &BlockA8) -> f32) -> f32 {
    row.chunks_exact(bytes)
        .zip(a)
        .map(|(blk, ab)| f(blk, ab))
        .sum()
}

pub(crate) fn q4_1(w: &[u8], row_bytes: usize, a: &[BlockA8]) -> [f32; 4] {
    std::array::from_fn(|r| {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        row_dot(row, 20, a, |blk, ab| {
            let mut isum = 0i32;
            for j in 0..QK / 2 {
                isum += i32::from(blk[4 + j] & 15) * i32::from(ab.qs[j]);
                isum += i32::from(blk[4 + j] >> 4) * i32::from(ab.qs[j + 16]);
            }
            f16_at(blk, 0) * ab.d * isum as f32 + f16_at(blk, 2) * ab.s
        })
    })
}

pub(crate) fn q5_0(w: &[u8], row_bytes: usize, a: &[BlockA8]) -> [f32; 4] {
    std::array::from_fn(|r| {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        row_dot(row, 22, a, |blk, ab| {
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            let mut isum = 0i32;
            for j in 0..QK / 2 {
                let lo = i32::from(blk[6 + j] & 15) | (((qh >> j) & 1) << 4) as i32;
                let hi = i32::from(blk[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4) as i32;
                isum += lo * i32::from(ab.qs[j]) + hi * i32::from(ab.qs[j + 16]);
            }
            let d = f16_at(blk, 0);
            d * ab.d * isum as f32 - 16.0 * d * ab.s
        })
    })
}

pub(crate) fn q8_0(w: &[u8], row_bytes: usize, a: &[BlockA8]) -> [f32; 4] {
    std::array::from_fn(|r| {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        row_dot(row, 34, a, |blk, ab| {
            let isum: i32 = blk[2..]
                .iter()
                .zip(&ab.qs)
                .map(|(&q, &x)| i32::from(q as i8) * i32::from(x))
                .sum();
            f16_at(blk, 0) * ab.d * isum as f32
        })
    })
}
