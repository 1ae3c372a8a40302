//! The x4 super-block layouts: how one block of four consecutive rows is laid out so that one
//! 64-byte vector holds the same 32 columns of all four rows, the repacking from ggml's blocks,
//! and the dequantization of one row back (embedding lookups, tests).
//!
//! Byte offsets per super-block (quant bytes: row i's 16 bytes at 16·i; nibble byte k holds
//! column k in its low half and column k + 16 in its high half):
//! - `Q4_1x4` (80 B / 32 columns): d[4] f16, m[4] f16, nibbles[64]; w = d·q + m.
//! - `Q5_0x4` (88 B): d[4], u64 fifth bits of columns 0..16 (bit 16·row + k), u64 of columns
//!   16..32, nibbles[64]; w = d·(q − 16).
//! - `Q8_0x4` (136 B): d[4], i8 columns 0..16 of the rows [64], columns 16..32 [64]; w = d·q.
//! - `Q4Kx4` (592 B / 256 columns): d[4], dmin[4], scales[8 sub-blocks][4 rows] u8,
//!   mins[8][4] u8, then per sub-block nibbles[64]; w = d·sc·q − dmin·m.
//! - `Q6Kx4` (840 B / 256 columns): d[4], then per sub-block the i8 scales of columns 0..16
//!   [4] and 16..32 [4] (64 B), then per sub-block nibbles[64] of the low four bits and two
//!   16-byte planes of the top two bits (byte k: bits 2·row.. of column k, resp. k + 16);
//!   w = d·sc·(q − 32).
use half::f16;

pub(super) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// Packs 32 values below 16 into 16 bytes: byte k = v[k] | v[k + 16] << 4.
fn pack_nibbles(v: &[u8], dst: &mut [u8]) {
    for k in 0..16 {
        dst[k] = (v[k] & 15) | (v[k + 16] << 4);
    }
}

pub(super) fn repack_q4_1(src: &[&[u8]; 4], dst: &mut [u8]) {
    for (i, s) in src.iter().enumerate() {
        dst[2 * i..2 * i + 2].copy_from_slice(&s[0..2]);
        dst[8 + 2 * i..10 + 2 * i].copy_from_slice(&s[2..4]);
        dst[16 + 16 * i..32 + 16 * i].copy_from_slice(&s[4..20]);
    }
}

pub(super) fn repack_q4_0(src: &[&[u8]; 4], dst: &mut [u8]) {
    for (i, s) in src.iter().enumerate() {
        // w = d·(q − 8) = d·q + (−8d); scaling an f16 by 8 is exact.
        let d = f16::from_bits(u16::from_le_bytes([s[0], s[1]]));
        let m = f16::from_f32(-8.0 * d.to_f32());
        dst[2 * i..2 * i + 2].copy_from_slice(&s[0..2]);
        dst[8 + 2 * i..10 + 2 * i].copy_from_slice(&m.to_bits().to_le_bytes());
        dst[16 + 16 * i..32 + 16 * i].copy_from_slice(&s[2..18]);
    }
}

pub(super) fn repack_q5_0(src: &[&[u8]; 4], dst: &mut [u8]) {
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

pub(super) fn repack_q8_0(src: &[&[u8]; 4], dst: &mut [u8]) {
    for (i, s) in src.iter().enumerate() {
        dst[2 * i..2 * i + 2].copy_from_slice(&s[0..2]);
        dst[8 + 16 * i..24 + 16 * i].copy_from_slice(&s[2..18]);
        dst[72 + 16 * i..88 + 16 * i].copy_from_slice(&s[18..34]);
    }
}

/// ggml's 6-bit (scale, min) pair `j` of a Q4_K block's 12 packed bytes.
fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Four ggml Q4_K blocks (144 B each: d, dmin, scales[12], qs[128]) into one `Q4Kx4` block.
pub(super) fn repack_q4k(src: &[&[u8]; 4], dst: &mut [u8]) {
    for (i, s) in src.iter().enumerate() {
        dst[2 * i..2 * i + 2].copy_from_slice(&s[0..2]);
        dst[8 + 2 * i..10 + 2 * i].copy_from_slice(&s[2..4]);
        let qs = &s[16..144];
        for j in 0..8 {
            let (sc, m) = q4k_scale_min(j, &s[4..16]);
            dst[16 + 4 * j + i] = sc;
            dst[48 + 4 * j + i] = m;
            // Sub-block j: the low (j even) or high (j odd) nibbles of qs[32·(j/2)..][..32].
            let shift = 4 * (j % 2);
            let v: Vec<u8> = qs[32 * (j / 2)..32 * (j / 2) + 32]
                .iter()
                .map(|b| (b >> shift) & 15)
                .collect();
            pack_nibbles(&v, &mut dst[80 + 64 * j + 16 * i..][..16]);
        }
    }
}

/// The 6-bit quants (0..63) of one ggml Q6_K block (ql[128], qh[64], scales[16], d).
fn q6k_quants(s: &[u8]) -> [u8; 256] {
    let (ql, qh) = (&s[..128], &s[128..192]);
    let mut q = [0u8; 256];
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        for l in 0..32 {
            let base = 128 * half + l;
            q[base] = (ql[l] & 0xf) | ((qh[l] & 3) << 4);
            q[base + 32] = (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4);
            q[base + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            q[base + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    q
}

/// Four ggml Q6_K blocks (210 B each) into one `Q6Kx4` block.
pub(super) fn repack_q6k(src: &[&[u8]; 4], dst: &mut [u8]) {
    for (i, s) in src.iter().enumerate() {
        dst[2 * i..2 * i + 2].copy_from_slice(&s[208..210]);
        let q = q6k_quants(s);
        for j in 0..8 {
            // ggml scales cover 16 columns: sub-block j uses scales 2j (low half), 2j+1.
            dst[8 + 8 * j + i] = s[192 + 2 * j];
            dst[12 + 8 * j + i] = s[193 + 2 * j];
            let v = &q[32 * j..32 * j + 32];
            let at = 72 + 96 * j;
            pack_nibbles(
                &v.iter().map(|x| x & 15).collect::<Vec<_>>(),
                &mut dst[at + 16 * i..][..16],
            );
            for k in 0..16 {
                dst[at + 64 + k] |= (v[k] >> 4) << (2 * i);
                dst[at + 80 + k] |= (v[k + 16] >> 4) << (2 * i);
            }
        }
    }
}

/// The 32 values of nibble bytes `q` (16 bytes) as `f(column, value)` calls.
fn nibbles(q: &[u8], mut f: impl FnMut(usize, u8)) {
    for (k, &b) in q.iter().enumerate() {
        f(k, b & 15);
        f(k + 16, b >> 4);
    }
}

/// Row `i` of super-block `s` of `Q4_1x4` into `out` (32 values).
pub(super) fn dequant_q4_1(s: &[u8], i: usize, out: &mut [f32]) {
    let (d, m) = (f16_at(s, 2 * i), f16_at(s, 8 + 2 * i));
    nibbles(&s[16 + 16 * i..32 + 16 * i], |k, q| {
        out[k] = d * f32::from(q) + m
    });
}

pub(super) fn dequant_q5_0(s: &[u8], i: usize, out: &mut [f32]) {
    let d = f16_at(s, 2 * i);
    let lo = u64::from_le_bytes(s[8..16].try_into().expect("8 bytes")) >> (16 * i);
    let hi = u64::from_le_bytes(s[16..24].try_into().expect("8 bytes")) >> (16 * i);
    nibbles(&s[24 + 16 * i..40 + 16 * i], |k, q| {
        let bit = if k < 16 {
            (lo >> k) & 1
        } else {
            (hi >> (k - 16)) & 1
        };
        out[k] = d * (f32::from(q | (bit as u8) << 4) - 16.0);
    });
}

pub(super) fn dequant_q8_0(s: &[u8], i: usize, out: &mut [f32]) {
    let d = f16_at(s, 2 * i);
    let (lo, hi) = (&s[8 + 16 * i..24 + 16 * i], &s[72 + 16 * i..88 + 16 * i]);
    for (o, &q) in out.iter_mut().zip(lo.iter().chain(hi)) {
        *o = d * f32::from(q as i8);
    }
}

/// Row `i` of a `Q4Kx4` super-block into `out` (256 values), as ggml computes it.
pub(super) fn dequant_q4k(s: &[u8], i: usize, out: &mut [f32]) {
    let (d, dmin) = (f16_at(s, 2 * i), f16_at(s, 8 + 2 * i));
    for j in 0..8 {
        let d1 = d * f32::from(s[16 + 4 * j + i]);
        let m1 = dmin * f32::from(s[48 + 4 * j + i]);
        let out = &mut out[32 * j..32 * j + 32];
        nibbles(&s[80 + 64 * j + 16 * i..][..16], |k, q| {
            out[k] = d1 * f32::from(q) - m1
        });
    }
}

/// Row `i` of a `Q6Kx4` super-block into `out` (256 values), as ggml computes it.
pub(super) fn dequant_q6k(s: &[u8], i: usize, out: &mut [f32]) {
    let d = f16_at(s, 2 * i);
    for j in 0..8 {
        let sc = [s[8 + 8 * j + i] as i8, s[12 + 8 * j + i] as i8];
        let at = 72 + 96 * j;
        let out = &mut out[32 * j..32 * j + 32];
        nibbles(&s[at + 16 * i..][..16], |k, q| {
            let plane = if k < 16 {
                at + 64 + k
            } else {
                at + 80 + k - 16
            };
            let q = q | ((s[plane] >> (2 * i)) & 3) << 4;
            out[k] = d * f32::from(sc[k / 16]) * f32::from(i16::from(q) - 32);
        });
    }
}
