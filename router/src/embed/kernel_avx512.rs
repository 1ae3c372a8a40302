//! The AVX-512 micro-kernel of `Linear`: up to 12 rows x one 32-column weight panel per call, the
//! 24 accumulators living in registers across the whole inner dimension.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::linear::PANEL;

/// Rows per micro-kernel call: 12 rows x 2 vectors = 24 accumulators, leaving registers for the two
/// weight vectors and the broadcast.
const MR: usize = 12;

pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

/// `out[r][0..cols] = bias + x[r] · panel` for every row `r < rows`, `out` having row stride `ldc`.
///
/// # Safety
/// AVX-512F is available; `x` holds `rows * k` floats, `panel` `k * PANEL`, `bias` `PANEL`; `out`
/// points at a buffer where rows `0..rows` x columns `0..cols` (row stride `ldc`) are writable.
#[allow(clippy::too_many_arguments)]
pub unsafe fn panel(
    x: &[f32],
    rows: usize,
    k: usize,
    panel: &[f32],
    bias: &[f32],
    out: *mut f32,
    ldc: usize,
    cols: usize,
) {
    debug_assert!(x.len() >= rows * k && panel.len() >= k * PANEL && bias.len() >= PANEL);
    let mask: u32 = if cols >= 32 {
        u32::MAX
    } else {
        (1u32 << cols) - 1
    };
    let mut r = 0;
    while r < rows {
        let a = x[r * k..].as_ptr();
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
    w: *const f32,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    mask: u32,
) {
    // SAFETY: the caller (`panel`) guarantees R rows of k floats at `a` (stride k), k * PANEL
    // floats at `w`, PANEL at `bias`, and the masked columns of R rows at `c` (stride ldc).
    unsafe {
        let b0 = _mm512_loadu_ps(bias);
        let b1 = _mm512_loadu_ps(bias.add(16));
        let mut acc0 = [b0; R];
        let mut acc1 = [b1; R];
        for kk in 0..k {
            let w0 = _mm512_loadu_ps(w.add(kk * PANEL));
            let w1 = _mm512_loadu_ps(w.add(kk * PANEL + 16));
            for r in 0..R {
                let av = _mm512_set1_ps(*a.add(r * k + kk));
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
