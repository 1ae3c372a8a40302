//! x86-64 SIMD kernels: a tile of four weight rows against R int8 activation rows, 32 values per
//! step, so each weight block is unpacked once per R rows (R = 1 when decoding). One body per
//! format, instantiated for plain AVX2 (maddubs) and for VNNI (vpdpbusd, the u8×i8 multiply-add
//! in one instruction); the level is detected once at run time.
use core::arch::x86_64::*;

use half::f16;

use crate::quant::BlockA8;

/// The instruction sets a kernel can be built for, best last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Avx2,
    /// 256-bit vpdpbusd from AVX512-VNNI with AVX512-VL.
    Avx512Vnni,
    /// 256-bit vpdpbusd from AVX-VNNI (VEX encoded).
    AvxVnni,
}

pub(crate) static PF_DIST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub(crate) fn detect() -> Option<Level> {
    PF_DIST.store(
        std::env::var("COE_PF")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    // EVEX-encoded VNNI first: it also gives the compiler 32 vector registers for wider tiles.
    if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
        return Some(Level::Avx512Vnni);
    }
    if is_x86_feature_detected!("avxvnni") {
        return Some(Level::AvxVnni);
    }
    Some(Level::Avx2)
}

const AVX2: u8 = 0;
const AVX512VNNI: u8 = 1;
const AVXVNNI: u8 = 2;

/// Σ of u8×i8 products in groups of four, as eight i32 lanes.
#[inline(always)]
unsafe fn dot_u8_i8<const L: u8>(u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: the caller's target features include the ones of level L.
    unsafe {
        match L {
            AVXVNNI => _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s),
            AVX512VNNI => _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s),
            // maddubs saturates at i16: safe for |u| ≤ 128 and |s| ≤ 127, which all callers meet.
            _ => _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
        }
    }
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller points at two readable bytes.
    f16::from_bits(unsafe { p.cast::<u16>().read_unaligned() }).to_f32()
}

/// The 32 nibbles of 16 bytes as bytes: low nibbles first, then high nibbles (ggml order).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller points at 16 readable bytes.
    unsafe {
        let q = _mm_loadu_si128(p.cast());
        let both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
    }
}

/// Byte j = 0xFF where bit j of `bits` is set, else 0.
#[inline(always)]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    // SAFETY: register-only AVX2 operations.
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

/// The four horizontal sums of `acc`, in order.
#[inline(always)]
unsafe fn hsum4(acc: [__m256; 4]) -> [f32; 4] {
    // SAFETY: register-only AVX operations.
    unsafe {
        let s01 = _mm256_hadd_ps(acc[0], acc[1]);
        let s23 = _mm256_hadd_ps(acc[2], acc[3]);
        let s = _mm256_hadd_ps(s01, s23);
        let r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), r);
        out
    }
}

/// Asks for the weights a few blocks ahead of `p` in each row, beyond what the hardware
/// prefetcher keeps in flight.
#[inline(always)]
unsafe fn prefetch(p: [*const u8; 4]) {
    let dist = PF_DIST.load(std::sync::atomic::Ordering::Relaxed);
    if dist == 0 {
        return;
    }
    for r in p {
        // SAFETY: prefetching is a hint; any address is allowed.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(dist).cast()) };
    }
}

/// Partial sums of a tile: `acc[r][i]` for activation row r and weight row i.
#[inline(always)]
unsafe fn hsum_tile<const R: usize>(acc: [[__m256; 4]; R]) -> [[f32; 4]; R] {
    let mut out = [[0f32; 4]; R];
    for r in 0..R {
        // SAFETY: the caller runs with AVX enabled.
        out[r] = unsafe { hsum4(acc[r]) };
    }
    out
}

#[inline(always)]
unsafe fn q4_1<const L: u8, const R: usize>(
    w: *const u8,
    stride: usize,
    kb: usize,
    a: [*const BlockA8; R],
) -> [[f32; 4]; R] {
    // SAFETY: `w` holds four rows of `kb` Q4_1 blocks `stride` bytes apart; each `a[r]` holds
    // `kb` activation blocks.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let mut off = [[0f32; 4]; R];
        for b in 0..kb {
            let p: [*const u8; 4] = std::array::from_fn(|i| w.add(i * stride + b * 20));
            prefetch(p);
            let q = p.map(|p| nibbles(p.add(4)));
            let d = p.map(|p| f16_at(p));
            let m = p.map(|p| f16_at(p.add(2)));
            for r in 0..R {
                let ab = &*a[r].add(b);
                let av = _mm256_loadu_si256(ab.qs.as_ptr().cast());
                for i in 0..4 {
                    let dot = _mm256_cvtepi32_ps(dot_u8_i8::<L>(q[i], av));
                    acc[r][i] = _mm256_fmadd_ps(dot, _mm256_set1_ps(d[i] * ab.d), acc[r][i]);
                    off[r][i] += m[i] * ab.s;
                }
            }
        }
        let mut s = hsum_tile(acc);
        for r in 0..R {
            for i in 0..4 {
                s[r][i] += off[r][i];
            }
        }
        s
    }
}

#[inline(always)]
unsafe fn q5_0<const L: u8, const R: usize>(
    w: *const u8,
    stride: usize,
    kb: usize,
    a: [*const BlockA8; R],
) -> [[f32; 4]; R] {
    // SAFETY: as for q4_1, with Q5_0 blocks.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        let mut off = [[0f32; 4]; R];
        let bit4 = _mm256_set1_epi8(0x10);
        for b in 0..kb {
            let p: [*const u8; 4] = std::array::from_fn(|i| w.add(i * stride + b * 22));
            prefetch(p);
            let q = p.map(|p| {
                let high = bytes_from_bits(p.add(2).cast::<u32>().read_unaligned());
                _mm256_or_si256(nibbles(p.add(6)), _mm256_and_si256(high, bit4))
            });
            let d = p.map(|p| f16_at(p));
            for r in 0..R {
                let ab = &*a[r].add(b);
                let av = _mm256_loadu_si256(ab.qs.as_ptr().cast());
                for i in 0..4 {
                    let dot = _mm256_cvtepi32_ps(dot_u8_i8::<L>(q[i], av));
                    acc[r][i] = _mm256_fmadd_ps(dot, _mm256_set1_ps(d[i] * ab.d), acc[r][i]);
                    off[r][i] += d[i] * ab.s;
                }
            }
        }
        // Quants are stored +16: Σ d·(q−16)·x = d·Σq·x − 16·d·(d_x·Σx_q).
        let mut s = hsum_tile(acc);
        for r in 0..R {
            for i in 0..4 {
                s[r][i] -= 16.0 * off[r][i];
            }
        }
        s
    }
}

#[inline(always)]
unsafe fn q8_0<const L: u8, const R: usize>(
    w: *const u8,
    stride: usize,
    kb: usize,
    a: [*const BlockA8; R],
) -> [[f32; 4]; R] {
    // SAFETY: as for q4_1, with Q8_0 blocks.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 4]; R];
        for b in 0..kb {
            let p: [*const u8; 4] = std::array::from_fn(|i| w.add(i * stride + b * 34));
            prefetch(p);
            let q = p.map(|p| _mm256_loadu_si256(p.add(2).cast()));
            let abs = q.map(|q| _mm256_sign_epi8(q, q));
            let d = p.map(|p| f16_at(p));
            for r in 0..R {
                let ab = &*a[r].add(b);
                let av = _mm256_loadu_si256(ab.qs.as_ptr().cast());
                for i in 0..4 {
                    // Signed × signed through the unsigned multiply: |w| · (x with w's sign).
                    let dot = dot_u8_i8::<L>(abs[i], _mm256_sign_epi8(av, q[i]));
                    let dot = _mm256_cvtepi32_ps(dot);
                    acc[r][i] = _mm256_fmadd_ps(dot, _mm256_set1_ps(d[i] * ab.d), acc[r][i]);
                }
            }
        }
        hsum_tile(acc)
    }
}

macro_rules! instantiate {
    ($name:ident, $body:ident) => {
        /// Four weight rows starting at `w`, `stride` bytes apart, against each activation row
        /// in `a` (`kb` blocks each); `out[r]` receives the four sums of row `a[r]`.
        ///
        /// # Safety
        /// `w` must hold four rows of `kb` blocks, each `a[r]` `kb` blocks, and the CPU must
        /// support `level`.
        pub(crate) unsafe fn $name(
            level: Level,
            w: *const u8,
            stride: usize,
            kb: usize,
            a: &[*const BlockA8],
            out: &mut [[f32; 4]],
        ) {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2<const R: usize>(
                w: *const u8,
                s: usize,
                kb: usize,
                a: [*const BlockA8; R],
            ) -> [[f32; 4]; R] {
                unsafe { $body::<AVX2, R>(w, s, kb, a) }
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
            unsafe fn avx512vnni<const R: usize>(
                w: *const u8,
                s: usize,
                kb: usize,
                a: [*const BlockA8; R],
            ) -> [[f32; 4]; R] {
                unsafe { $body::<AVX512VNNI, R>(w, s, kb, a) }
            }
            #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
            unsafe fn avxvnni<const R: usize>(
                w: *const u8,
                s: usize,
                kb: usize,
                a: [*const BlockA8; R],
            ) -> [[f32; 4]; R] {
                unsafe { $body::<AVXVNNI, R>(w, s, kb, a) }
            }
            unsafe fn tile<const R: usize>(
                level: Level,
                w: *const u8,
                s: usize,
                kb: usize,
                a: &[*const BlockA8],
            ) -> [[f32; 4]; R] {
                let a: [*const BlockA8; R] = std::array::from_fn(|r| a[r]);
                // SAFETY: forwarded from the caller.
                unsafe {
                    match level {
                        Level::Avx2 => avx2::<R>(w, s, kb, a),
                        Level::Avx512Vnni => avx512vnni::<R>(w, s, kb, a),
                        Level::AvxVnni => avxvnni::<R>(w, s, kb, a),
                    }
                }
            }
            // Tiles as tall as the vector registers allow: 4×4 accumulators need the 32
            // registers of EVEX encoding, 4×2 fit in AVX2's 16.
            let tall = if level == Level::Avx512Vnni { 4 } else { 2 };
            let mut r = 0;
            // SAFETY: forwarded from the caller.
            unsafe {
                while r < a.len() {
                    let left = a.len() - r;
                    if left >= 4 && tall >= 4 {
                        out[r..r + 4].copy_from_slice(&tile::<4>(level, w, stride, kb, &a[r..]));
                        r += 4;
                    } else if left >= 2 {
                        out[r..r + 2].copy_from_slice(&tile::<2>(level, w, stride, kb, &a[r..]));
                        r += 2;
                    } else {
                        out[r] = tile::<1>(level, w, stride, kb, &a[r..])[0];
                        r += 1;
                    }
                }
            }
        }
    };
}

instantiate!(tile_q4_1, q4_1);
instantiate!(tile_q5_0, q5_0);
instantiate!(tile_q8_0, q8_0);
