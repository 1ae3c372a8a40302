//! The AVX-512 micro-kernel of `Linear`: up to 12 rows x one 32-column weight panel per call, the
//! 24 accumulators living in registers across the whole inner dimension. The rows are packed first
//! (`pack_rows`) so that each step's 12 inputs sit side by side and one pointer walks them all.
//!
//! The weights are stored as f16 and widened in registers: for one query (a dozen to a few dozen
//! rows) the kernel waits on the weights streaming in from L3, not on arithmetic, and f16 halves
//! those bytes. Accumulation stays f32; the embeddings still match sentence-transformers to a
//! cosine above 0.99999.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::linear::PANEL;

/// Rows per micro-kernel call: 12 rows x 2 vectors = 24 accumulators, leaving registers for the two
/// weight vectors and the broadcast.
pub const MR: usize = 12;

pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// Packs `rows` rows of `x` (`k` wide) into blocks of `MR` rows stored step-major:
/// `packed[block][kk][r]`, the last block zero-padded.
pub fn pack_rows(x: &[f32], rows: usize, k: usize, packed: &mut Vec<f32>) {
    let blocks = rows.div_ceil(MR);
    packed.clear();
    packed.resize(blocks * k * MR, 0.0);
    for (r, row) in x.chunks_exact(k).take(rows).enumerate() {
        let block = &mut packed[(r / MR) * k * MR..][..k * MR];
        for (kk, v) in row.iter().enumerate() {
            block[kk * MR + r % MR] = *v;
        }
    }
}

/// `out[r][0..cols] = bias + x[r] · panel` for every row `r < rows`, `out` having row stride `ldc`;
/// `packed` holds the rows as `pack_rows` lays them out, `panel` f16 bit patterns.
///
/// # Safety
/// AVX-512F is available; `packed` holds `rows.div_ceil(MR) * k * MR` floats, `panel` `k * PANEL`,
/// `bias` `PANEL`; `out` points at a buffer where rows `0..rows` x columns `0..cols` (row stride
/// `ldc`) are writable.
#[allow(clippy::too_many_arguments)]
pub unsafe fn panel(
    packed: &[f32],
    rows: usize,
    k: usize,
    panel: &[u16],
    bias: &[f32],
    out: *mut f32,
    ldc: usize,
    cols: usize,
) {
    debug_assert!(packed.len() >= rows.div_ceil(MR) * k * MR);
    debug_assert!(panel.len() >= k * PANEL && bias.len() >= PANEL);
    let mask: u32 = if cols >= 32 {
        u32::MAX
    } else {
        (1u32 << cols) - 1
    };
    let mut r = 0;
    while r < rows {
        let a = packed[(r / MR) * k * MR..].as_ptr();
        let c = out.wrapping_add(r * ldc);
        let n = (rows - r).min(MR);
        // SAFETY: forwarded caller contract; rows r..r+n exist in x and out.
        unsafe {
            match n {
                12 => block::<12>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                11 => block::<11>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                10 => block::<10>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                9 => block::<9>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                8 => block::<8>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                7 => block::<7>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                6 => block::<6>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                5 => block::<5>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                4 => block::<4>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                3 => block::<3>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                2 => block::<2>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
                _ => block::<1>(a, k, panel.as_ptr(), bias.as_ptr(), c, ldc, mask),
            }
        }
        r += n;
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn block<const R: usize>(
    a: *const f32,
    k: usize,
    w: *const u16,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    mask: u32,
) {
    // SAFETY: the caller (`panel`) guarantees k steps of MR packed floats at `a`, k * PANEL
    // floats at `w`, PANEL at `bias`, and the masked columns of R rows at `c` (stride ldc).
    unsafe {
        let b0 = _mm512_loadu_ps(bias);
        let b1 = _mm512_loadu_ps(bias.add(16));
        let mut acc0 = [b0; R];
        let mut acc1 = [b1; R];
        for kk in 0..k {
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(kk * PANEL).cast()));
            let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(w.add(kk * PANEL + 16).cast()));
            for r in 0..R {
                let av = _mm512_set1_ps(*a.add(kk * MR + r));
                acc0[r] = _mm512_fmadd_ps(av, w0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(av, w1, acc1[r]);
            }
        }
        let (m0, m1) = (mask as u16, (mask >> 16) as u16);
        for r in 0..R {
            _mm512_mask_storeu_ps(c.add(r * ldc), m0, acc0[r]);
            _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, acc1[r]);
        }
    }
}
