//! x86-64 SIMD kernels for the x4 super-block formats: four weight rows against a tile of R
//! activation rows. Each super-block is unpacked once per tile (R = 1 when decoding) and its
//! four rows are multiplied with one instruction stream; the instruction set is detected once at
//! run time: AVX512-VNNI (one 64-byte vector per super-block), AVX-VNNI or plain AVX2 (two
//! 32-byte halves).
use crate::quant::BlockA8;

mod avx2;
mod avx512;

/// The instruction sets a kernel can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Avx2,
    AvxVnni,
    Avx512Vnni,
}

pub(crate) fn detect() -> Option<Level> {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
    {
        return Some(Level::Avx512Vnni);
    }
    if is_x86_feature_detected!("avxvnni") {
        return Some(Level::AvxVnni);
    }
    Some(Level::Avx2)
}

/// How far ahead of the super-block being read the kernels prefetch. Decoding streams every
/// weight once per token; the hardware prefetcher alone left 2 cores at ~10 GB/s, prefetching
/// this far ahead reached ~19 GB/s on the target machine (plateau between 6 and 12 KiB).
pub(super) const PREFETCH_BYTES: usize = 8192;

/// The weight formats with SIMD kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Q4_1,
    Q5_0,
    Q8_0,
    /// Repacked k-quants: AVX512 only (the loader keeps ggml's layout on other CPUs).
    Q4K,
    Q6K,
}

/// Multiplies the four rows of one weight group (`kb` super-blocks at `w`) with each activation
/// row in `a` (pointers to `kb` blocks each); `out[r][i]` receives row i against `a[r]`.
///
/// # Safety
/// `w` must hold `kb` super-blocks of `kind`, each `a[r]` `kb` blocks, `out` must be as long
/// as `a`, and the CPU must support `level`.
pub(crate) unsafe fn tile(
    level: Level,
    kind: Kind,
    w: *const u8,
    kb: usize,
    a: &[*const BlockA8],
    out: &mut [[f32; 4]],
) {
    if level != Level::Avx512Vnni {
        assert!(
            !matches!(kind, Kind::Q4K | Kind::Q6K),
            "repacked k-quants are only loaded on AVX512 CPUs"
        );
        // 256-bit registers hold the accumulators of one activation row only.
        for (o, &a) in out.iter_mut().zip(a) {
            // SAFETY: forwarded from the caller.
            *o = unsafe { avx2::row(level == Level::AvxVnni, kind, w, kb, a) };
        }
        return;
    }
    // Four activation rows per pass: eight accumulators fit the 32 AVX512 registers.
    let mut r = 0;
    while r < a.len() {
        let n = (a.len() - r).min(4);
        let (a, out) = (&a[r..r + n], &mut out[r..r + n]);
        // SAFETY: forwarded from the caller.
        unsafe {
            match n {
                4 => out.copy_from_slice(&avx512::tile::<4>(kind, w, kb, a)),
                3 => out.copy_from_slice(&avx512::tile::<3>(kind, w, kb, a)),
                2 => out.copy_from_slice(&avx512::tile::<2>(kind, w, kb, a)),
                _ => out.copy_from_slice(&avx512::tile::<1>(kind, w, kb, a)),
            }
        }
        r += n;
    }
}

/// Every level this CPU supports, for tests that compare them.
#[cfg(test)]
pub(crate) fn supported_levels() -> Vec<Level> {
    match detect() {
        None => vec![],
        Some(Level::Avx2) => vec![Level::Avx2],
        Some(_) => {
            let mut v = vec![Level::Avx2];
            if is_x86_feature_detected!("avxvnni") {
                v.push(Level::AvxVnni);
            }
            if detect() == Some(Level::Avx512Vnni) {
                v.push(Level::Avx512Vnni);
            }
            v
        }
    }
}
