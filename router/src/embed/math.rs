//! Element-wise maths of the BERT forward pass, written so the compiler vectorises the loops:
//! libm's `expf`/`erff` are scalar calls, and GELU alone runs over 1,536 values per token per layer.
//! The hot loops (GELU and the attention softmax) have AVX-512 versions the CPU takes when it has
//! it: 16 lanes instead of the build baseline's 8.

/// e^x with a relative error of about 2e-7 (the Cephes `expf` polynomial), branch-free.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r + 1.0);
    // 2^n built from n's bits: adding 1.5 * 2^23 leaves the integer n in the low mantissa bits.
    // (`n as i32` would do, but its saturating semantics keep the loop from vectorising.)
    let n_bits = (n + 12_582_912.0).to_bits();
    let scale = f32::from_bits(n_bits.wrapping_add(127).wrapping_sub(0x4b40_0000) << 23);
    y * scale
}

/// erf(x) to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// Whether the AVX-512 copies of the hot loops can run.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Runs `$body` (an expression over `$xs`) compiled for AVX-512 when the CPU has it.
macro_rules! with_avx512 {
    ($xs:ident, $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn wide($xs: &mut [f32]) {
                $body
            }
            if avx512() {
                // SAFETY: AVX-512F is available (checked at run time).
                unsafe { wide($xs) };
                return;
            }
        }
        $body
    }};
}

/// BERT's GELU, the exact (erf) form rather than the tanh approximation, in place.
pub fn gelu_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is available (checked at run time).
        unsafe { gelu_avx512(xs) };
        return;
    }
    gelu_loop(xs)
}

/// `gelu_loop` written out for AVX-512: the compiled loop divides for erf's `t` (a `vdivps`, about
/// as slow as the rest of the formula together); here a reciprocal estimate refined by one Newton
/// step replaces it (relative error about 1e-8 after the step, so erf keeps its 1.5e-7), and
/// `vscalefps` builds exp's 2^n.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(xs: &mut [f32]) {
    use std::arch::x86_64::*;
    let gelu16 = |x: __m512| -> __m512 {
        let z = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let a = _mm512_abs_ps(z);
        let d = _mm512_fmadd_ps(a, _mm512_set1_ps(0.327_591_1), _mm512_set1_ps(1.0));
        let t0 = _mm512_rcp14_ps(d);
        // Newton: t = t0 * (2 - d * t0).
        let t = _mm512_mul_ps(t0, _mm512_fnmadd_ps(d, t0, _mm512_set1_ps(2.0)));
        let mut poly = _mm512_set1_ps(1.061_405_4);
        for c in [-1.453_152, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
            poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(c));
        }
        poly = _mm512_mul_ps(poly, t);
        let e = exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), a), a));
        let y = _mm512_fnmadd_ps(poly, e, _mm512_set1_ps(1.0));
        // erf = y with z's sign; gelu = 0.5 x (1 + erf).
        let sign = _mm512_and_si512(_mm512_castps_si512(z), _mm512_set1_epi32(i32::MIN));
        let erf = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
        _mm512_mul_ps(
            _mm512_mul_ps(x, _mm512_set1_ps(0.5)),
            _mm512_add_ps(erf, _mm512_set1_ps(1.0)),
        )
    };
    let n = xs.len();
    let p = xs.as_mut_ptr();
    let mut i = 0;
    // SAFETY: every load and store covers indices < n (the tail masked).
    unsafe {
        while i + 16 <= n {
            _mm512_storeu_ps(p.add(i), gelu16(_mm512_loadu_ps(p.add(i))));
            i += 16;
        }
        if i < n {
            let mask = (1u16 << (n - i)) - 1;
            let v = gelu16(_mm512_maskz_loadu_ps(mask, p.add(i)));
            _mm512_mask_storeu_ps(p.add(i), mask, v);
        }
    }
}

/// `exp` on 16 lanes: the same range reduction and polynomial, 2^n by `vscalefps`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    // y = p r^2 + r + 1
    let y = _mm512_fmadd_ps(
        _mm512_mul_ps(p, r),
        r,
        _mm512_add_ps(r, _mm512_set1_ps(1.0)),
    );
    _mm512_scalef_ps(y, n)
}

#[inline(always)]
fn gelu_loop(xs: &mut [f32]) {
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    for x in xs {
        *x = 0.5 * *x * (1.0 + erf(*x * FRAC_1_SQRT_2));
    }
}

/// `row = LayerNorm(row + residual)` with the biased variance, as PyTorch computes it.
pub fn add_layer_norm(row: &mut [f32], residual: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    for (x, r) in row.iter_mut().zip(residual) {
        *x += r;
    }
    layer_norm(row, gamma, beta, eps);
}

/// A sum in 16 independent lanes: a plain `iter().sum()` must add in order, which keeps the
/// compiler from vectorising it.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest element, in 16 lanes for the same reason as `sum`.
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l = if *x > *l { *x } else { *l };
        }
    }
    lanes.iter().copied().fold(tail, f32::max)
}

pub fn layer_norm(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let mut lanes = [0.0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|x| (x - mean) * (x - mean))
        .sum();
    for c in chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *l += (x - mean) * (x - mean);
        }
    }
    let var = (lanes.iter().sum::<f32>() + tail) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *x = (*x - mean) * inv * g + b;
    }
}

/// Softmax in place, max-subtracted for stability.
pub fn softmax_in_place(xs: &mut [f32]) {
    with_avx512!(xs, softmax_loop(xs))
}

#[inline(always)]
fn softmax_loop(xs: &mut [f32]) {
    let inv = 1.0 / exp_shifted_loop(xs);
    for x in xs {
        *x *= inv;
    }
}

/// `x = e^(x - max)` in place, returning the sum: a softmax without its division, for callers
/// that divide something smaller afterwards (the attention divides its context rows).
pub fn exp_shifted_in_place(xs: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is available (checked at run time).
        return unsafe { exp_shifted_avx512(xs) };
    }
    exp_shifted_loop(xs)
}

/// `exp_shifted_loop` written out for AVX-512 around `exp16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_avx512(xs: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let max = _mm512_set1_ps(self::max(xs));
    let n = xs.len();
    let p = xs.as_mut_ptr();
    let mut sum = _mm512_setzero_ps();
    let mut i = 0;
    // SAFETY: every load and store covers indices < n (the tail masked).
    unsafe {
        while i + 16 <= n {
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
            _mm512_storeu_ps(p.add(i), e);
            sum = _mm512_add_ps(sum, e);
            i += 16;
        }
        if i < n {
            let mask = (1u16 << (n - i)) - 1;
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p.add(i)), max));
            _mm512_mask_storeu_ps(p.add(i), mask, e);
            sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, e));
        }
    }
    _mm512_reduce_add_ps(sum)
}

#[inline(always)]
fn exp_shifted_loop(xs: &mut [f32]) -> f32 {
    let max = max(xs);
    // The sum in 16 lanes (see `sum`), in the same pass as the exponentials.
    let mut lanes = [0.0f32; 16];
    let mut chunks = xs.chunks_exact_mut(16);
    for c in &mut chunks {
        for (l, x) in lanes.iter_mut().zip(c) {
            *x = exp(*x - max);
            *l += *x;
        }
    }
    let mut tail = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        tail += *x;
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        let mut x = -80.0f32;
        while x < 80.0 {
            let (ours, libm) = (exp(x), x.exp());
            assert!(
                ((ours - libm) / libm).abs() < 1e-6,
                "exp({x}) = {ours}, libm {libm}"
            );
            x += 0.37;
        }
    }

    #[test]
    fn the_avx512_gelu_matches_the_portable_loop() {
        let xs: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.0037).collect();
        let mut wide = xs.clone();
        gelu_in_place(&mut wide);
        let mut plain = xs.clone();
        gelu_loop(&mut plain);
        for ((x, w), p) in xs.iter().zip(&wide).zip(&plain) {
            assert!(
                (w - p).abs() <= 2e-6 * (1.0 + p.abs()),
                "gelu({x}): {w} vs {p}"
            );
        }
    }

    #[test]
    fn the_avx512_exponentials_match_the_portable_loop() {
        for len in [1, 15, 16, 17, 243] {
            let xs: Vec<f32> = (0..len)
                .map(|i| ((i * 37) % 23) as f32 * 0.9 - 8.0)
                .collect();
            let mut wide = xs.clone();
            let wide_sum = exp_shifted_in_place(&mut wide);
            let mut plain = xs.clone();
            let plain_sum = exp_shifted_loop(&mut plain);
            assert!(
                (wide_sum - plain_sum).abs() <= 1e-5 * plain_sum,
                "sum of {len}"
            );
            for (w, p) in wide.iter().zip(&plain) {
                assert!((w - p).abs() <= 1e-6 * p.max(1e-30), "{w} vs {p}");
            }
        }
    }

    #[test]
    fn erf_matches_the_series() {
        // erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)), exact enough in f64 for |x| <= 3.
        for i in -60..=60 {
            let x = i as f64 * 0.05;
            let (mut term, mut sum) = (x, x);
            for n in 1..80 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            let series = sum * 2.0 / std::f64::consts::PI.sqrt();
            assert!((erf(x as f32) as f64 - series).abs() < 3e-7, "erf({x})");
        }
    }
}
