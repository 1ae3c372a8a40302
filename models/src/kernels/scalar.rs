//! Portable reference kernels for the x4 super-block formats: four weight rows against one
//! activation row. They follow ggml's AVX2 dot products operation for operation (eight i32
//! lanes of four products, one f32 FMA per lane and block, the same final reduction), so the
//! SIMD kernels must reproduce them bit for bit and both match llama.cpp's rounding.
use half::f16;

use crate::quant::BlockA8;

fn f16_at(w: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([w[at], w[at + 1]])).to_f32()
}

fn u64_at(w: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(w[at..at + 8].try_into().expect("8 bytes"))
}

/// ggml's `hsum_float_8` of eight lanes.
pub(crate) fn hsum8(acc: &[f32; 8]) -> f32 {
    let v: [f32; 4] = std::array::from_fn(|l| acc[l + 4] + acc[l]);
    (v[0] + v[2]) + (v[1] + v[3])
}

/// Runs `lanes(super_block, activation_block, row)` (the eight i32 lane sums of one row's
/// block) through ggml's accumulation for each of the four rows; `min` adds Q4_1's m·s term.
fn accumulate(
    group: &[u8],
    size: usize,
    a: &[BlockA8],
    lanes: impl Fn(&[u8], &BlockA8, usize) -> [i32; 8],
    min: Option<usize>,
) -> [f32; 4] {
    std::array::from_fn(|i| {
        let mut acc = [0f32; 8];
        let mut summs = 0f32;
        for (s, ab) in group.chunks_exact(size).zip(a) {
            let d = f16_at(s, 2 * i) * ab.d;
            for (acc, lane) in acc.iter_mut().zip(lanes(s, ab, i)) {
                *acc = (lane as f32).mul_add(d, *acc);
            }
            if let Some(at) = min {
                summs = f16_at(s, at + 2 * i).mul_add(ab.s, summs);
            }
        }
        hsum8(&acc) + summs
    })
}

/// Lane l sums the products of elements 4l..4l+4 (l < 4: the low half, else the high half).
fn lanes_of(w: impl Fn(usize) -> i32, ab: &BlockA8) -> [i32; 8] {
    std::array::from_fn(|l| (4 * l..4 * l + 4).map(|e| w(e) * i32::from(ab.qs[e])).sum())
}

pub(crate) fn q4_1(group: &[u8], a: &[BlockA8]) -> [f32; 4] {
    let lanes = |s: &[u8], ab: &BlockA8, i: usize| {
        let qs = &s[16 + 16 * i..32 + 16 * i];
        lanes_of(
            |e| i32::from(if e < 16 { qs[e] & 15 } else { qs[e - 16] >> 4 }),
            ab,
        )
    };
    accumulate(group, 80, a, lanes, Some(8))
}

pub(crate) fn q5_0(group: &[u8], a: &[BlockA8]) -> [f32; 4] {
    let lanes = |s: &[u8], ab: &BlockA8, i: usize| {
        let (lo, hi) = (u64_at(s, 8) >> (16 * i), u64_at(s, 16) >> (16 * i));
        let qs = &s[24 + 16 * i..40 + 16 * i];
        lanes_of(
            |e| {
                let (nib, bit) = match e < 16 {
                    true => (qs[e] & 15, (lo >> e) & 1),
                    false => (qs[e - 16] >> 4, (hi >> (e - 16)) & 1),
                };
                i32::from(nib) + 16 * bit as i32 - 16
            },
            ab,
        )
    };
    accumulate(group, 88, a, lanes, None)
}

pub(crate) fn q8_0(group: &[u8], a: &[BlockA8]) -> [f32; 4] {
    let lanes = |s: &[u8], ab: &BlockA8, i: usize| {
        let (lo, hi) = (&s[8 + 16 * i..24 + 16 * i], &s[72 + 16 * i..88 + 16 * i]);
        lanes_of(
            |e| i32::from(if e < 16 { lo[e] } else { hi[e - 16] } as i8),
            ab,
        )
    };
    accumulate(group, 136, a, lanes, None)
}

/// Lane l's integer sum over columns 4l..4l+4 of the low half and, when `hi` is given, the
/// same columns of the high half (one vpdpbusd chain).
fn lane(
    l: usize,
    lo: impl Fn(usize) -> i32,
    hi: Option<&dyn Fn(usize) -> i32>,
    ab: &BlockA8,
) -> i32 {
    (4 * l..4 * l + 4)
        .map(|k| lo(k) * i32::from(ab.qs[k]) + hi.map_or(0, |h| h(k) * i32::from(ab.qs[k + 16])))
        .sum()
}

/// The 32 values of nibble byte k of `q` (16 bytes): low half column k, high half k + 16.
fn nib(q: &[u8], k: usize) -> i32 {
    i32::from(if k < 16 { q[k] & 15 } else { q[k - 16] >> 4 })
}

/// `Q4Kx4` against Q8_K-rounded activation blocks, in the SIMD kernel's order.
pub(crate) fn q4k(group: &[u8], a: &[BlockA8]) -> [f32; 4] {
    std::array::from_fn(|i| {
        let (mut acc, mut mins) = ([0f32; 4], 0f32);
        for (s, ab) in group.chunks_exact(592).zip(a.chunks_exact(8)) {
            let (d, dmin) = (f16_at(s, 2 * i), f16_at(s, 8 + 2 * i));
            let mut tmp = [0f32; 4];
            for (j, ab) in ab.iter().enumerate() {
                let q = &s[80 + 64 * j + 16 * i..][..16];
                let scale = d * f32::from(s[16 + 4 * j + i]);
                for (l, t) in tmp.iter_mut().enumerate() {
                    let hi = |k: usize| nib(q, k + 16);
                    *t = (lane(l, |k| nib(q, k), Some(&hi), ab) as f32).mul_add(scale, *t);
                }
                mins = (dmin * f32::from(s[48 + 4 * j + i])).mul_add(ab.s, mins);
            }
            for (acc, t) in acc.iter_mut().zip(tmp) {
                *acc = t.mul_add(ab[0].d, *acc);
            }
        }
        ((acc[0] + acc[2]) + (acc[1] + acc[3])) - mins
    })
}

/// `Q6Kx4` against Q8_K-rounded activation blocks, in the SIMD kernel's order.
pub(crate) fn q6k(group: &[u8], a: &[BlockA8]) -> [f32; 4] {
    std::array::from_fn(|i| {
        let mut acc = [0f32; 4];
        for (s, ab) in group.chunks_exact(840).zip(a.chunks_exact(8)) {
            let d = f16_at(s, 2 * i);
            let mut tmp = [0f32; 4];
            for (j, ab) in ab.iter().enumerate() {
                let at = 72 + 96 * j;
                let q = |k: usize| {
                    let plane = if k < 16 {
                        at + 64 + k
                    } else {
                        at + 80 + k - 16
                    };
                    nib(&s[at + 16 * i..][..16], k) + (i32::from((s[plane] >> (2 * i)) & 3) << 4)
                        - 32
                };
                let scales = [s[8 + 8 * j + i] as i8, s[12 + 8 * j + i] as i8];
                for (l, t) in tmp.iter_mut().enumerate() {
                    let lo = lane(l, q, None, ab) as f32;
                    let hi = (4 * l..4 * l + 4)
                        .map(|k| q(k + 16) * i32::from(ab.qs[k + 16]))
                        .sum::<i32>() as f32;
                    *t = lo.mul_add(d * f32::from(scales[0]), *t);
                    *t = hi.mul_add(d * f32::from(scales[1]), *t);
                }
            }
            for (acc, t) in acc.iter_mut().zip(tmp) {
                *acc = t.mul_add(ab[0].d, *acc);
            }
        }
        (acc[0] + acc[2]) + (acc[1] + acc[3])
    })
}
