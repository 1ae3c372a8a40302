//! AVX512-VNNI kernels: a super-block's four rows fill one 64-byte vector (16 bytes per row per
//! half-block), so two vpdpbusd against the activation halves broadcast to all four lanes give
//! the 128 products of four rows. Each 128-bit lane then holds exactly the i32 lanes ggml's
//! AVX2 dot product computes for that row, and they are accumulated and reduced in its order.
use core::arch::x86_64::*;

use super::{Kind, PREFETCH_BYTES};
use crate::quant::BlockA8;

#[inline(always)]
unsafe fn load_u64(p: *const u8) -> u64 {
    // SAFETY: the caller points at 8 readable bytes.
    unsafe { p.cast::<u64>().read_unaligned() }
}

/// Per 128-bit lane (row) of `lo + hi`, ggml's `hsum_float_8` order: (v0 + v2) + (v1 + v3).
#[inline(always)]
unsafe fn row_sums(lo: __m512, hi: __m512) -> __m128 {
    // SAFETY: register-only AVX512F operations; the caller enables them.
    unsafe {
        let v = _mm512_add_ps(hi, lo);
        let t = _mm512_add_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
        let u = _mm512_add_ps(t, _mm512_permute_ps::<0b10_11_00_01>(t));
        let first = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
        _mm512_castps512_ps128(_mm512_permutexvar_ps(first, u))
    }
}

#[inline(always)]
unsafe fn body<const R: usize>(
    kind: Kind,
    w: *const u8,
    kb: usize,
    a: [*const BlockA8; R],
) -> [[f32; 4]; R] {
    // SAFETY: `w` holds `kb` super-blocks of `kind` and each a[r] `kb` activation blocks.
    unsafe {
        let nib = _mm512_set1_epi8(0x0f);
        let c16 = _mm512_set1_epi8(16);
        let zero = _mm512_setzero_si512();
        // Spreads the four row scales over their four lanes each.
        let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        let size = match kind {
            Kind::Q4_1 => 80,
            Kind::Q5_0 => 88,
            _ => 136,
        };
        let mut acc_lo = [_mm512_setzero_ps(); R];
        let mut acc_hi = [_mm512_setzero_ps(); R];
        let mut summs = [_mm_setzero_ps(); R];
        for b in 0..kb {
            let s = w.add(b * size);
            _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(PREFETCH_BYTES).cast());
            let d = _mm_cvtph_ps(_mm_loadl_epi64(s.cast()));
            let dz = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(d));
            // Unsigned quants for Q4_1; |w| and the masks of negative w for the signed formats,
            // whose products go through |w| · (x with w's sign) like ggml's.
            let (lo, hi, neg_lo, neg_hi) = match kind {
                Kind::Q4_1 => {
                    let q = _mm512_loadu_si512(s.add(16).cast());
                    let lo = _mm512_and_si512(q, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), nib);
                    (lo, hi, 0, 0)
                }
                Kind::Q5_0 => {
                    let q = _mm512_loadu_si512(s.add(24).cast());
                    let lo = _mm512_and_si512(q, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), nib);
                    // w = q − 16 is negative exactly where the fifth bit is clear.
                    let (neg_lo, neg_hi) = (!load_u64(s.add(8)), !load_u64(s.add(16)));
                    let lo = _mm512_mask_sub_epi8(lo, neg_lo, lo, c16);
                    let hi = _mm512_mask_sub_epi8(hi, neg_hi, hi, c16);
                    (_mm512_abs_epi8(lo), _mm512_abs_epi8(hi), neg_lo, neg_hi)
                }
                _ => {
                    let lo = _mm512_loadu_si512(s.add(8).cast());
                    let hi = _mm512_loadu_si512(s.add(72).cast());
                    let (neg_lo, neg_hi) = (_mm512_movepi8_mask(lo), _mm512_movepi8_mask(hi));
                    (_mm512_abs_epi8(lo), _mm512_abs_epi8(hi), neg_lo, neg_hi)
                }
            };
            let mins = match kind {
                Kind::Q4_1 => _mm_cvtph_ps(_mm_loadl_epi64(s.add(8).cast())),
                _ => _mm_setzero_ps(),
            };
            for r in 0..R {
                let ab = &*a[r].add(b);
                let mut alo = _mm512_broadcast_i32x4(_mm_loadu_si128(ab.qs.as_ptr().cast()));
                let mut ahi =
                    _mm512_broadcast_i32x4(_mm_loadu_si128(ab.qs.as_ptr().add(16).cast()));
                if kind != Kind::Q4_1 {
                    alo = _mm512_mask_sub_epi8(alo, neg_lo, zero, alo);
                    ahi = _mm512_mask_sub_epi8(ahi, neg_hi, zero, ahi);
                }
                let dlo = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, lo, alo));
                let dhi = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, hi, ahi));
                let scale = _mm512_mul_ps(dz, _mm512_set1_ps(ab.d));
                acc_lo[r] = _mm512_fmadd_ps(dlo, scale, acc_lo[r]);
                acc_hi[r] = _mm512_fmadd_ps(dhi, scale, acc_hi[r]);
                if kind == Kind::Q4_1 {
                    summs[r] = _mm_fmadd_ps(mins, _mm_set1_ps(ab.s), summs[r]);
                }
            }
        }
        let mut out = [[0f32; 4]; R];
        for r in 0..R {
            let v = _mm_add_ps(row_sums(acc_lo[r], acc_hi[r]), summs[r]);
            _mm_storeu_ps(out[r].as_mut_ptr(), v);
        }
        out
    }
}

/// Four f32 built from the four bytes at `p` (u8, or i8 when `signed`).
#[inline(always)]
unsafe fn bytes_to_f32<const SIGNED: bool>(p: *const u8) -> __m128 {
    // SAFETY: the caller points at 4 readable bytes and enables SSE4.1.
    unsafe {
        let v = _mm_cvtsi32_si128(p.cast::<i32>().read_unaligned());
        _mm_cvtepi32_ps(if SIGNED {
            _mm_cvtepi8_epi32(v)
        } else {
            _mm_cvtepu8_epi32(v)
        })
    }
}

/// Repacked k-quants (`Q4Kx4`, or `Q6Kx4` when `Q6`) against Q8_K-rounded activations: the
/// 32-column sub-blocks go through the same vpdpbusd pattern with their integer scales applied
/// in f32, each 256-column super-block's sum is then scaled by the activations' shared d.
#[inline(always)]
unsafe fn body_k<const R: usize, const Q6: bool>(
    w: *const u8,
    kb: usize,
    a: [*const BlockA8; R],
) -> [[f32; 4]; R] {
    // SAFETY: `w` holds `kb` super-blocks and each a[r] `8·kb` activation blocks.
    unsafe {
        let nib = _mm512_set1_epi8(0x0f);
        let three = _mm512_set1_epi8(3);
        let c32 = _mm512_set1_epi8(32);
        let zero = _mm512_setzero_si512();
        let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        // Row i's two top bits sit at bits 2i..2i+2 of the broadcast plane bytes.
        let shifts = _mm512_set_epi64(
            0x0006_0006_0006_0006,
            0x0006_0006_0006_0006,
            0x0004_0004_0004_0004,
            0x0004_0004_0004_0004,
            0x0002_0002_0002_0002,
            0x0002_0002_0002_0002,
            0,
            0,
        );
        let size = if Q6 { 840 } else { 592 };
        let spread4 = |v: __m128| _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(v));
        let mut acc = [_mm512_setzero_ps(); R];
        let mut mins = [_mm_setzero_ps(); R];
        for sb in 0..kb {
            let s = w.add(sb * size);
            let d = _mm_cvtph_ps(_mm_loadl_epi64(s.cast()));
            let mut tmp = [_mm512_setzero_ps(); R];
            for line in (0..size).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(line + PREFETCH_BYTES).cast());
            }
            for j in 0..8 {
                if Q6 {
                    let at = s.add(72 + 96 * j);
                    let q = _mm512_loadu_si512(at.cast());
                    let top = |plane: *const u8| {
                        let p = _mm512_broadcast_i32x4(_mm_loadu_si128(plane.cast()));
                        _mm512_slli_epi16::<4>(_mm512_and_si512(
                            _mm512_srlv_epi16(p, shifts),
                            three,
                        ))
                    };
                    let lo = _mm512_or_si512(_mm512_and_si512(q, nib), top(at.add(64)));
                    let hi = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(q), nib),
                        top(at.add(80)),
                    );
                    let (lo, hi) = (_mm512_sub_epi8(lo, c32), _mm512_sub_epi8(hi, c32));
                    let (neg_lo, neg_hi) = (_mm512_movepi8_mask(lo), _mm512_movepi8_mask(hi));
                    let (lo, hi) = (_mm512_abs_epi8(lo), _mm512_abs_epi8(hi));
                    let slo = spread4(_mm_mul_ps(d, bytes_to_f32::<true>(s.add(8 + 8 * j))));
                    let shi = spread4(_mm_mul_ps(d, bytes_to_f32::<true>(s.add(12 + 8 * j))));
                    for r in 0..R {
                        let ab = &*a[r].add(8 * sb + j);
                        let alo = _mm512_broadcast_i32x4(_mm_loadu_si128(ab.qs.as_ptr().cast()));
                        let ahi =
                            _mm512_broadcast_i32x4(_mm_loadu_si128(ab.qs.as_ptr().add(16).cast()));
                        let alo = _mm512_mask_sub_epi8(alo, neg_lo, zero, alo);
                        let ahi = _mm512_mask_sub_epi8(ahi, neg_hi, zero, ahi);
                        let dlo = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, lo, alo));
                        let dhi = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, hi, ahi));
                        tmp[r] = _mm512_fmadd_ps(dlo, slo, tmp[r]);
                        tmp[r] = _mm512_fmadd_ps(dhi, shi, tmp[r]);
                    }
                } else {
                    let q = _mm512_loadu_si512(s.add(80 + 64 * j).cast());
                    let lo = _mm512_and_si512(q, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), nib);
                    let scale = spread4(_mm_mul_ps(d, bytes_to_f32::<false>(s.add(16 + 4 * j))));
                    let dmin = _mm_cvtph_ps(_mm_loadl_epi64(s.add(8).cast()));
                    let m = _mm_mul_ps(dmin, bytes_to_f32::<false>(s.add(48 + 4 * j)));
                    for r in 0..R {
                        let ab = &*a[r].add(8 * sb + j);
                        let alo = _mm512_broadcast_i32x4(_mm_loadu_si128(ab.qs.as_ptr().cast()));
                        let ahi =
                            _mm512_broadcast_i32x4(_mm_loadu_si128(ab.qs.as_ptr().add(16).cast()));
                        let dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, alo), hi, ahi);
                        tmp[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, tmp[r]);
                        mins[r] = _mm_fmadd_ps(m, _mm_set1_ps(ab.s), mins[r]);
                    }
                }
            }
            for r in 0..R {
                let da = (*a[r].add(8 * sb)).d;
                acc[r] = _mm512_fmadd_ps(tmp[r], _mm512_set1_ps(da), acc[r]);
            }
        }
        let mut out = [[0f32; 4]; R];
        for r in 0..R {
            let v = _mm_sub_ps(row_sums(acc[r], _mm512_setzero_ps()), mins[r]);
            _mm_storeu_ps(out[r].as_mut_ptr(), v);
        }
        out
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
unsafe fn run<const R: usize>(
    kind: Kind,
    w: *const u8,
    kb: usize,
    a: [*const BlockA8; R],
) -> [[f32; 4]; R] {
    // SAFETY: forwarded from `tile`'s caller.
    unsafe {
        match kind {
            // Separate instantiations let the compiler drop the other formats' branches.
            Kind::Q4_1 => body::<R>(Kind::Q4_1, w, kb, a),
            Kind::Q5_0 => body::<R>(Kind::Q5_0, w, kb, a),
            Kind::Q8_0 => body::<R>(Kind::Q8_0, w, kb, a),
            Kind::Q4K => body_k::<R, false>(w, kb, a),
            Kind::Q6K => body_k::<R, true>(w, kb, a),
        }
    }
}

/// # Safety
/// As for [`super::tile`], with an AVX512-VNNI CPU and `a.len() == R`.
pub(super) unsafe fn tile<const R: usize>(
    kind: Kind,
    w: *const u8,
    kb: usize,
    a: &[*const BlockA8],
) -> [[f32; 4]; R] {
    // SAFETY: forwarded from the caller.
    unsafe { run::<R>(kind, w, kb, std::array::from_fn(|r| a[r])) }
}
