//! 256-bit kernels (AVX2, optionally AVX-VNNI): a super-block's four rows are read as two
//! 32-byte halves of two rows each, each multiplied with the activation halves broadcast to
//! both 128-bit lanes.
use core::arch::x86_64::*;

use super::{Kind, PREFETCH_BYTES};
use crate::quant::BlockA8;

/// Byte j = 0xFF where bit j of `bits` is set, else 0.
#[inline(always)]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    // SAFETY: register-only AVX2 operations; the caller enables them.
    unsafe {
        let shuf = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
        let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
        _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
    }
}

/// The i32 lanes of Σ u8×i8 over groups of four bytes (vpdpbusd, or maddubs + madd).
#[inline(always)]
unsafe fn dot<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: the caller enables AVX2, and AVX-VNNI when VNNI is set.
    unsafe {
        if VNNI {
            _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
        } else {
            // |u| ≤ 128 and |s| ≤ 127 keep each i16 pair sum below saturation.
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
        }
    }
}

/// Per 128-bit lane (row) of `lo + hi`, ggml's `hsum_float_8` order: (v0 + v2) + (v1 + v3),
/// left in the lane's first element.
#[inline(always)]
unsafe fn lane_sums(lo: __m256, hi: __m256) -> __m256 {
    // SAFETY: register-only AVX operations; the caller enables them.
    unsafe {
        let v = _mm256_add_ps(hi, lo);
        let t = _mm256_add_ps(v, _mm256_permute_ps::<0b01_00_11_10>(v));
        _mm256_add_ps(t, _mm256_permute_ps::<0b10_11_00_01>(t))
    }
}

#[inline(always)]
unsafe fn body<const VNNI: bool>(
    kind: Kind,
    w: *const u8,
    kb: usize,
    a: *const BlockA8,
) -> [f32; 4] {
    // SAFETY: `w` holds `kb` super-blocks of `kind` and `a` `kb` activation blocks.
    unsafe {
        let nib = _mm256_set1_epi8(0x0f);
        let high = _mm256_set1_epi8(0xf0u8 as i8);
        // Rows (0, 1) occupy the first half of a super-block's quants, rows (2, 3) the second.
        let spread = [
            _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
            _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
        ];
        let size = match kind {
            Kind::Q4_1 => 80,
            Kind::Q5_0 => 88,
            _ => 136,
        };
        let mut acc = [[_mm256_setzero_ps(); 2]; 2];
        let mut summs = _mm_setzero_ps();
        for b in 0..kb {
            let s = w.add(b * size);
            _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(PREFETCH_BYTES).cast());
            let ab = &*a.add(b);
            let alo = _mm256_broadcastsi128_si256(_mm_loadu_si128(ab.qs.as_ptr().cast()));
            let ahi = _mm256_broadcastsi128_si256(_mm_loadu_si128(ab.qs.as_ptr().add(16).cast()));
            let d = _mm256_castps128_ps256(_mm_mul_ps(
                _mm_cvtph_ps(_mm_loadl_epi64(s.cast())),
                _mm_set1_ps(ab.d),
            ));
            for h in 0..2 {
                // q[0]: columns 0..16 of rows 2h, 2h+1; q[1]: columns 16..32.
                let q = match kind {
                    Kind::Q4_1 | Kind::Q5_0 => {
                        let at = if kind == Kind::Q4_1 { 16 } else { 24 };
                        let v = _mm256_loadu_si256(s.add(at + 32 * h).cast());
                        let mut q = [
                            _mm256_and_si256(v, nib),
                            _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib),
                        ];
                        if kind == Kind::Q5_0 {
                            // ggml's trick: OR 0xF0 where the fifth bit is clear gives q − 16.
                            for (part, mask_at) in [(0, 8), (1, 16)] {
                                let bits = s.add(mask_at + 4 * h).cast::<u32>().read_unaligned();
                                q[part] = _mm256_or_si256(
                                    q[part],
                                    _mm256_andnot_si256(bytes_from_bits(bits), high),
                                );
                            }
                        }
                        q
                    }
                    _ => [
                        _mm256_loadu_si256(s.add(8 + 32 * h).cast()),
                        _mm256_loadu_si256(s.add(72 + 32 * h).cast()),
                    ],
                };
                let scale = _mm256_permutevar8x32_ps(d, spread[h]);
                for (part, av) in [(0, alo), (1, ahi)] {
                    let lanes = match kind {
                        Kind::Q4_1 => dot::<VNNI>(q[part], av),
                        // Signed × signed through the unsigned multiply: |w| · (x with w's sign).
                        _ => dot::<VNNI>(
                            _mm256_sign_epi8(q[part], q[part]),
                            _mm256_sign_epi8(av, q[part]),
                        ),
                    };
                    acc[h][part] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), scale, acc[h][part]);
                }
            }
            if kind == Kind::Q4_1 {
                let mins = _mm_cvtph_ps(_mm_loadl_epi64(s.add(8).cast()));
                summs = _mm_fmadd_ps(mins, _mm_set1_ps(ab.s), summs);
            }
        }
        // Row sums sit in elements 0 (row 2h) and 4 (row 2h+1) of each half's lane sums.
        let pick = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4);
        let s01 = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(
            lane_sums(acc[0][0], acc[0][1]),
            pick,
        ));
        let s23 = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(
            lane_sums(acc[1][0], acc[1][1]),
            pick,
        ));
        let sums = _mm_movelh_ps(s01, s23);
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), _mm_add_ps(sums, summs));
        out
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2(kind: Kind, w: *const u8, kb: usize, a: *const BlockA8) -> [f32; 4] {
    // SAFETY: forwarded from `tile`'s caller.
    unsafe {
        match kind {
            Kind::Q4_1 => body::<false>(Kind::Q4_1, w, kb, a),
            Kind::Q5_0 => body::<false>(Kind::Q5_0, w, kb, a),
            Kind::Q8_0 => body::<false>(Kind::Q8_0, w, kb, a),
            Kind::Q4K | Kind::Q6K => unreachable!("checked by super::tile"),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn run_vnni(kind: Kind, w: *const u8, kb: usize, a: *const BlockA8) -> [f32; 4] {
    // SAFETY: forwarded from `tile`'s caller.
    unsafe {
        match kind {
            Kind::Q4_1 => body::<true>(Kind::Q4_1, w, kb, a),
            Kind::Q5_0 => body::<true>(Kind::Q5_0, w, kb, a),
            Kind::Q8_0 => body::<true>(Kind::Q8_0, w, kb, a),
            Kind::Q4K | Kind::Q6K => unreachable!("checked by super::tile"),
        }
    }
}

/// One activation row against one group.
///
/// # Safety
/// As for [`super::tile`], with an AVX2 CPU (AVX-VNNI too when `vnni`).
pub(super) unsafe fn row(
    vnni: bool,
    kind: Kind,
    w: *const u8,
    kb: usize,
    a: *const BlockA8,
) -> [f32; 4] {
    // SAFETY: forwarded from the caller.
    unsafe {
        match vnni {
            true => run_vnni(kind, w, kb, a),
            false => run_avx2(kind, w, kb, a),
        }
    }
}
