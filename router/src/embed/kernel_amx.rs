//! The AMX kernel of `Linear` (Intel Advanced Matrix Extensions, Sapphire Rapids and later): bf16
//! inputs, f32 accumulation, one `tdpbf16ps` multiplying a 16x32 block of rows by a 32x16 block of
//! weights (8,192 multiply-adds) per instruction.
//!
//! The AVX-512 kernel is bound by f32 FMA throughput (a 243-token query is 5.2 GFLOP of dense
//! products); the tile unit does about 16 times as many multiply-adds per cycle. Rounding the
//! inputs of the products to bf16 moves the embeddings by less than the fixture allows (lowest
//! cosine to sentence-transformers 0.99997 with both weights and activations in bf16, against
//! 0.9999 required); everything outside the products stays f32.
//!
//! Layouts. The weights are packed once into 1 KiB tiles in the VNNI order `tdpbf16ps` reads:
//! tile `(n_block, k_block)` holds `w[n_block*16 + c][k_block*32 + 2*r + i]` at `[r][c][i]`. The
//! rows of `x` are rounded to bf16 and cut into tiles the same way (16 rows x 32 columns, zero rows
//! up to a multiple of 32), so every tile load reads 1 KiB of contiguous bytes. Each call covers
//! whole 32-column pairs of weight tiles, so threads split the output columns as the AVX-512
//! kernel does.
//!
//! Rust has no stable AMX intrinsics, so the instructions are inline assembly. The tile registers
//! are invisible to the compiler, which never uses them: their contents survive between the `asm!`
//! blocks of one call. Each call loads its tile configuration and releases the tiles at the end, so
//! the state is per call and per thread, as the architecture requires.

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;
use std::sync::OnceLock;

/// bf16 values per tile row (64 bytes), the depth of one `tdpbf16ps`.
pub const TILE_K: usize = 32;
/// Output columns per weight tile.
pub const TILE_N: usize = 16;
/// Rows per activation tile.
const TILE_M: usize = 16;
/// Rows per block: two activation tiles against two weight tiles fill the four accumulators.
pub const BLOCK_M: usize = 2 * TILE_M;
/// Output columns per block (a pair of weight tiles).
pub const BLOCK_N: usize = 2 * TILE_N;
/// u16 values per packed weight tile.
const TILE_WORDS: usize = TILE_K * TILE_N;

/// Whether the tile unit can be used: the CPU has AMX-TILE and AMX-BF16 and the operating system
/// granted this process the tile state.
pub fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| cpu_has_amx_bf16() && request_tile_state())
}

/// Whether `Linear` dimensions suit the tiles: whole 32-deep steps and whole column pairs.
pub fn fits(in_dim: usize, out_dim: usize) -> bool {
    in_dim.is_multiple_of(TILE_K) && out_dim.is_multiple_of(BLOCK_N)
}

fn cpu_has_amx_bf16() -> bool {
    // Leaf 7 is read only when leaf 0 reports it.
    if __cpuid_count(0, 0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    const AMX_BF16: u32 = 1 << 22;
    const AMX_TILE: u32 = 1 << 24;
    edx & AMX_BF16 != 0 && edx & AMX_TILE != 0
}

/// Linux enables the 8 KiB tile state per process on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`);
/// without the grant the first tile instruction faults.
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it only changes which CPU state this
    // process may use.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

/// f32 to bf16 bits, rounding to nearest even (the inputs are finite).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// `dst[i] = bf16(src[i])`, 16 at a time with AVX512-BF16's converting instruction (which rounds
/// to nearest even too) when the CPU has it, as every AMX-BF16 CPU does.
pub fn to_bf16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len());
    static WIDE: OnceLock<bool> = OnceLock::new();
    if *WIDE.get_or_init(|| is_x86_feature_detected!("avx512bf16")) {
        // SAFETY: AVX512-BF16 (and with it AVX-512F) is available; the lengths are equal.
        unsafe { to_bf16_avx512(src, dst) };
    } else {
        for (d, v) in dst.iter_mut().zip(src) {
            *d = bf16_bits(*v);
        }
    }
}

#[target_feature(enable = "avx512bf16,avx512f")]
unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len();
    let mut i = 0;
    // SAFETY: every load and store covers indices < n of the equal-length slices (the tail masked).
    unsafe {
        while i + 16 <= n {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_si256(
                dst.as_mut_ptr().add(i).cast(),
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
            i += 16;
        }
        if i < n {
            let mask = (1u16 << (n - i)) - 1;
            let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, src.as_ptr().add(i)));
            _mm256_mask_storeu_epi16(
                dst.as_mut_ptr().add(i).cast(),
                mask,
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
        }
    }
}

/// PyTorch's `[out_dim, in_dim]` weights as bf16 tiles (see the module docs for the order).
pub fn pack_weights(weight: &[f32], out_dim: usize, in_dim: usize) -> Vec<u16> {
    assert!(fits(in_dim, out_dim));
    let k_blocks = in_dim / TILE_K;
    let mut packed = vec![0u16; out_dim * in_dim];
    for o in 0..out_dim {
        let (nb, c) = (o / TILE_N, o % TILE_N);
        for (i, w) in weight[o * in_dim..][..in_dim].iter().enumerate() {
            let (kb, kk) = (i / TILE_K, i % TILE_K);
            let tile = (nb * k_blocks + kb) * TILE_WORDS;
            packed[tile + (kk / 2) * 2 * TILE_N + c * 2 + kk % 2] = bf16_bits(*w);
        }
    }
    packed
}

/// The first `rows` rows of `x` (`k` wide) rounded to bf16 and cut into 1 KiB tiles of 16 rows x
/// 32 columns, stored `[row_tile][k_block]` so that each tile load reads contiguous bytes; rows
/// past `rows` are zero up to a multiple of `BLOCK_M`.
pub fn pack_rows(x: &[f32], rows: usize, k: usize, packed: &mut Vec<u16>) {
    let padded = rows.div_ceil(BLOCK_M) * BLOCK_M;
    let k_blocks = k / TILE_K;
    packed.clear();
    packed.resize(padded * k, 0);
    for (r, row) in x.chunks_exact(k).take(rows).enumerate() {
        let tiles = &mut packed[(r / TILE_M) * k_blocks * TILE_WORDS..];
        for (kb, chunk) in row.chunks_exact(TILE_K).enumerate() {
            to_bf16(
                chunk,
                &mut tiles[kb * TILE_WORDS + (r % TILE_M) * TILE_K..][..TILE_K],
            );
        }
    }
}

/// Row `r` of an activation matrix `k` wide, rounded to bf16 into its place among tiles laid out
/// as `pack_rows` lays them out; `packed` starts at row tile `first_tile` (so that threads can
/// pack disjoint row tiles into one buffer). `row == None` writes the zeros of a padding row.
pub fn pack_row(row: Option<&[f32]>, r: usize, k: usize, first_tile: usize, packed: &mut [u16]) {
    let k_blocks = k / TILE_K;
    let tiles = &mut packed[(r / TILE_M - first_tile) * k_blocks * TILE_WORDS..];
    for kb in 0..k_blocks {
        let dst = &mut tiles[kb * TILE_WORDS + (r % TILE_M) * TILE_K..][..TILE_K];
        match row {
            Some(row) => to_bf16(&row[kb * TILE_K..][..TILE_K], dst),
            None => dst.fill(0),
        }
    }
}

/// Where row `r`, columns `kb * 32..kb * 32 + 32`, of an activation matrix `k` wide lie in its
/// packed tiles (`pack_rows` layout): the offset of those 32 bf16 values.
pub fn packed_offset(r: usize, kb: usize, k: usize) -> usize {
    ((r / TILE_M) * (k / TILE_K) + kb) * TILE_WORDS + (r % TILE_M) * TILE_K
}

/// Rows per activation tile, the unit threads split rows by when they pack.
pub const ROWS_PER_TILE: usize = TILE_M;

/// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    const fn all_16x64() -> Self {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        let mut t = 0;
        while t < 8 {
            // colsb[t] (u16, little endian) at 16 + 2t, rows[t] at 48 + t.
            cfg[16 + 2 * t] = 64;
            cfg[48 + t] = TILE_M as u8;
            t += 1;
        }
        Self(cfg)
    }
}

static CONFIG: TileConfig = TileConfig::all_16x64();

/// `out[r][c] = bias[c] + x[r] · w[c]` for every row `r < rows` and the columns of the column
/// pairs `pairs` (`BLOCK_N` columns each), `out` having row stride `ldc`.
///
/// # Safety
/// `supported()` returned true; `packed_x` holds `rows` rows packed by `pack_rows` for this `k`;
/// `w` holds the tiles of `pack_weights` for `in_dim == k`; `bias` covers the columns of `pairs`;
/// `out` points at a buffer where rows `0..rows` of those columns (row stride `ldc`) are writable.
#[allow(clippy::too_many_arguments)]
pub unsafe fn pairs(
    packed_x: &[u16],
    rows: usize,
    k: usize,
    w: &[u16],
    bias: &[f32],
    out: *mut f32,
    ldc: usize,
    pairs: std::ops::Range<usize>,
) {
    let k_blocks = k / TILE_K;
    debug_assert!(packed_x.len() >= rows.div_ceil(BLOCK_M) * BLOCK_M * k);
    debug_assert!(w.len() >= pairs.end * 2 * k_blocks * TILE_WORDS);
    // The accumulators start from the bias (two tiles of it repeated on 16 rows), and a tile
    // whose 16 rows all exist is stored straight into `out`; only a block's ragged last rows go
    // through `partial`.
    let mut bias_tiles = [0.0f32; 2 * TILE_M * TILE_N];
    let mut partial = [0.0f32; BLOCK_M * BLOCK_N];
    // SAFETY: tiles are enabled for this process (`supported`); the configuration is valid.
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
    for p in pairs {
        let w0 = w[2 * p * k_blocks * TILE_WORDS..].as_ptr();
        let w1 = w[(2 * p + 1) * k_blocks * TILE_WORDS..].as_ptr();
        for (t, tile) in bias_tiles.chunks_exact_mut(TILE_M * TILE_N).enumerate() {
            for row in tile.chunks_exact_mut(TILE_N) {
                row.copy_from_slice(&bias[p * BLOCK_N + t * TILE_N..][..TILE_N]);
            }
        }
        let (b0, b1) = (bias_tiles.as_ptr(), bias_tiles[TILE_M * TILE_N..].as_ptr());
        for m in (0..rows).step_by(BLOCK_M) {
            let here = (rows - m).min(BLOCK_M);
            let both = here > TILE_M;
            // Row tiles m/16 and m/16 + 1, each k_blocks tiles long.
            let x0 = packed_x[m * k..].as_ptr();
            // SAFETY: every load reads 16 rows of 64 bytes inside `packed_x` (padded to whole
            // blocks), a weight tile or `bias_tiles`.
            unsafe {
                asm!(
                    "tileloadd tmm0, [{b0} + {bs}*1]",
                    "tileloadd tmm1, [{b1} + {bs}*1]",
                    b0 = in(reg) b0,
                    b1 = in(reg) b1,
                    bs = in(reg) 64usize,
                    options(nostack, readonly),
                );
                if both {
                    asm!(
                        "tileloadd tmm2, [{b0} + {bs}*1]",
                        "tileloadd tmm3, [{b1} + {bs}*1]",
                        b0 = in(reg) b0,
                        b1 = in(reg) b1,
                        bs = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                }
                for kb in 0..k_blocks {
                    let xa = x0.add(kb * TILE_WORDS);
                    let wa = w0.add(kb * TILE_WORDS);
                    let wb = w1.add(kb * TILE_WORDS);
                    asm!(
                        "tileloadd tmm4, [{xa} + {ws}*1]",
                        "tileloadd tmm6, [{wa} + {ws}*1]",
                        "tileloadd tmm7, [{wb} + {ws}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        xa = in(reg) xa,
                        wa = in(reg) wa,
                        wb = in(reg) wb,
                        ws = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                    if both {
                        asm!(
                            "tileloadd tmm5, [{xb} + {ws}*1]",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            xb = in(reg) xa.add(TILE_M * k),
                            ws = in(reg) 64usize,
                            options(nostack, readonly),
                        );
                    }
                }
            }
            // Each 16-row half goes to `out` directly when all its rows exist, else to `partial`.
            let direct = |half: usize| here >= (half + 1) * TILE_M;
            let partial_ptr = partial.as_mut_ptr();
            let dst = |half: usize| -> (*mut f32, usize) {
                if direct(half) {
                    (
                        out.wrapping_add((m + half * TILE_M) * ldc + p * BLOCK_N),
                        ldc * 4,
                    )
                } else {
                    (
                        partial_ptr.wrapping_add(half * TILE_M * BLOCK_N),
                        BLOCK_N * 4,
                    )
                }
            };
            let (d0, s0) = dst(0);
            // SAFETY: a direct store writes 16 whole rows (all < rows) of this pair's 32 columns
            // in `out` (contract); otherwise it writes 16 rows of 128 bytes inside `partial`.
            unsafe {
                asm!(
                    "tilestored [{c0} + {cs}*1], tmm0",
                    "tilestored [{c1} + {cs}*1], tmm1",
                    c0 = in(reg) d0,
                    c1 = in(reg) d0.add(TILE_N),
                    cs = in(reg) s0,
                    options(nostack),
                );
                if both {
                    let (d1, s1) = dst(1);
                    asm!(
                        "tilestored [{c2} + {cs}*1], tmm2",
                        "tilestored [{c3} + {cs}*1], tmm3",
                        c2 = in(reg) d1,
                        c3 = in(reg) d1.add(TILE_N),
                        cs = in(reg) s1,
                        options(nostack),
                    );
                }
            }
            for half in 0..here.div_ceil(TILE_M) {
                if direct(half) {
                    continue;
                }
                for r in half * TILE_M..here {
                    // SAFETY: row m + r < rows; columns p*BLOCK_N..+BLOCK_N are writable.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.add((m + r) * ldc + p * BLOCK_N),
                            BLOCK_N,
                        )
                    };
                    row.copy_from_slice(&partial[r * BLOCK_N..][..BLOCK_N]);
                }
            }
        }
    }
    // SAFETY: releases this thread's tile state; no tile is used after this.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// Buffers of `attention_head`, reused across calls by one thread.
#[derive(Default)]
pub struct AttentionScratch {
    q: Vec<u16>,
    k_tiles: Vec<u16>,
    v_tiles: Vec<u16>,
    scores: Vec<f32>,
    probs: Vec<u16>,
    ctx: Vec<f32>,
}

/// Head dimension the attention kernel handles: one tile step deep.
pub const ATTENTION_HEAD_DIM: usize = TILE_K;

/// One head of self-attention over each sequence, on the tile unit: `Q K^T` and `P V` with bf16
/// inputs and f32 accumulation, the softmax in f32 (`exp_shifted` turns the scores of one query over
/// its sequence's keys, which `scale` multiplies first, into `e^(s - max)` and returns their sum;
/// the context row is divided by that sum, 32 divisions instead of one per key).
///
/// `qkv` is `[tokens][3 * hidden]` (query, key, value side by side); `lens` are the sequence
/// lengths, packed back to back; `out` receives this head's context, `[tokens][ATTENTION_HEAD_DIM]`.
///
/// # Safety
/// `supported()` returned true; `qkv` holds `sum(lens)` rows of `3 * hidden` floats, `head`'s
/// columns inside them; `out` holds `sum(lens) * ATTENTION_HEAD_DIM` floats.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_head(
    qkv: &[f32],
    lens: &[usize],
    hidden: usize,
    head: usize,
    scale: f32,
    exp_shifted: impl Fn(&mut [f32]) -> f32,
    out: &mut [f32],
    s: &mut AttentionScratch,
) {
    const D: usize = ATTENTION_HEAD_DIM;
    let row = 3 * hidden;
    let (q_off, k_off, v_off) = (head * D, hidden + head * D, 2 * hidden + head * D);
    // SAFETY: tiles are enabled for this process (`supported`); the configuration is valid.
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
    let mut start = 0;
    for &len in lens {
        // Queries padded to whole 16-row tiles; keys to whole 32-key steps of `P V`.
        let q_rows = len.div_ceil(TILE_M) * TILE_M;
        let keys = len.div_ceil(TILE_K) * TILE_K;
        let seq = &qkv[start * row..(start + len) * row];

        s.q.clear();
        s.q.resize(q_rows * D, 0);
        s.k_tiles.clear();
        s.k_tiles.resize(keys * D, 0);
        s.v_tiles.clear();
        s.v_tiles.resize(keys * D, 0);
        let mut scaled = [0.0f32; D];
        let mut key = [0u16; D];
        for (j, r) in seq.chunks_exact(row).enumerate() {
            // The queries carry the 1/sqrt(d) scale.
            for (q, v) in scaled.iter_mut().zip(&r[q_off..q_off + D]) {
                *q = v * scale;
            }
            to_bf16(&scaled, &mut s.q[j * D..][..D]);
            // K^T tiles of 16 keys: [dd / 2][key % 16][dd % 2]; each pair of dims moves as one.
            to_bf16(&r[k_off..k_off + D], &mut key);
            let kt = (j / TILE_N) * TILE_WORDS + (j % TILE_N) * 2;
            for (pair, dims) in key.chunks_exact(2).enumerate() {
                let at = kt + pair * 2 * TILE_N;
                s.k_tiles[at..at + 2].copy_from_slice(dims);
            }
            // V tiles of 32 keys x 16 dims, two per step: [key % 32 / 2][dd % 16][key % 2].
            let vt = (j / TILE_K) * 2 * TILE_WORDS + ((j % TILE_K) / 2) * 2 * TILE_N + j % 2;
            for (dd, v) in r[v_off..v_off + D].iter().enumerate() {
                s.v_tiles[vt + (dd / TILE_N) * TILE_WORDS + (dd % TILE_N) * 2] = bf16_bits(*v);
            }
        }
        s.scores.resize(TILE_M * keys, 0.0);
        s.probs.resize(TILE_M * keys, 0);
        s.ctx.resize(TILE_M * D, 0.0);
        let scores_stride = keys * 4;
        let probs_stride = keys * 2;

        for qb in (0..len).step_by(TILE_M) {
            // SAFETY: loads read 16 rows of 64 bytes inside `s.q`, a K tile, `s.probs` (16 rows of
            // `keys` bf16) or a V tile; stores write 16 rows of 64 bytes inside `s.scores` (16 rows
            // of `keys` floats; key blocks of 16 stay below `keys`) or `s.ctx` (16 x 32 floats).
            unsafe {
                asm!(
                    "tileloadd tmm4, [{q} + {qs}*1]",
                    q = in(reg) s.q.as_ptr().add(qb * D),
                    qs = in(reg) D * 2,
                    options(nostack, readonly),
                );
                for jb in 0..len.div_ceil(TILE_N) {
                    asm!(
                        "tilezero tmm0",
                        "tileloadd tmm6, [{k} + {ks}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tilestored [{sc} + {ss}*1], tmm0",
                        k = in(reg) s.k_tiles.as_ptr().add(jb * TILE_WORDS),
                        ks = in(reg) 64usize,
                        sc = in(reg) s.scores.as_mut_ptr().add(jb * TILE_N),
                        ss = in(reg) scores_stride,
                        options(nostack),
                    );
                }
            }
            let q_here = (len - qb).min(TILE_M);
            let mut inv_sums = [0.0f32; TILE_M];
            for (r, inv_sum) in inv_sums.iter_mut().enumerate() {
                let probs = &mut s.probs[r * keys..][..keys];
                if r < q_here {
                    let sc = &mut s.scores[r * keys..][..len];
                    *inv_sum = 1.0 / exp_shifted(sc);
                    to_bf16(sc, &mut probs[..len]);
                    probs[len..].fill(0);
                } else {
                    probs.fill(0);
                }
            }
            // SAFETY: as above.
            unsafe {
                asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
                for kb in 0..keys / TILE_K {
                    asm!(
                        "tileloadd tmm4, [{p} + {ps}*1]",
                        "tileloadd tmm6, [{v0} + {vs}*1]",
                        "tileloadd tmm7, [{v1} + {vs}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        p = in(reg) s.probs.as_ptr().add(kb * TILE_K),
                        ps = in(reg) probs_stride,
                        v0 = in(reg) s.v_tiles.as_ptr().add(kb * 2 * TILE_WORDS),
                        v1 = in(reg) s.v_tiles.as_ptr().add((kb * 2 + 1) * TILE_WORDS),
                        vs = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                }
                asm!(
                    "tilestored [{c0} + {cs}*1], tmm0",
                    "tilestored [{c1} + {cs}*1], tmm1",
                    c0 = in(reg) s.ctx.as_mut_ptr(),
                    c1 = in(reg) s.ctx.as_mut_ptr().add(TILE_N),
                    cs = in(reg) D * 4,
                    options(nostack),
                );
            }
            let rows = out[(start + qb) * D..][..q_here * D].chunks_exact_mut(D);
            for ((o, c), inv_sum) in rows.zip(s.ctx.chunks_exact(D)).zip(inv_sums) {
                for (o, c) in o.iter_mut().zip(c) {
                    *o = c * inv_sum;
                }
            }
        }
        start += len;
    }
    // SAFETY: releases this thread's tile state; no tile is used after this.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
