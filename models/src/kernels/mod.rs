//! Threaded quantized matrix products. The rows of every weight matrix that reads the same
//! activations (q/k/v, gate/up) are split across candle's spinning barrier pool in one dispatch,
//! so a decode step pays one wake-up per fused group instead of one per matrix.
use std::ops::Range;
use std::sync::OnceLock;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, GgmlType};

use crate::quant::{cast_blocks, Activations, BlockA8, Format, QMatrix, QK_K, ROW_GROUP};

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// One product of a fused dispatch: `out[r·n + j] = Σ_k x[r, k] · w[j, k]` for the n rows of `w`.
pub(crate) struct Product<'a> {
    pub(crate) w: &'a QMatrix,
    pub(crate) out: &'a mut [f32],
}

#[cfg(target_arch = "x86_64")]
fn simd_level() -> Option<x86::Level> {
    static LEVEL: OnceLock<Option<x86::Level>> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let level = x86::detect();
        tracing::debug!(?level, "quantized kernel level");
        level
    })
}

/// The SIMD level the kernels run at, for logs and benchmarks.
pub fn kernel_level() -> String {
    #[cfg(target_arch = "x86_64")]
    if let Some(level) = simd_level() {
        return format!("{level:?}");
    }
    "scalar".to_string()
}

/// Most activation rows one kernel call handles; longer batches are split.
const TILE_ROWS: usize = 16;

/// Dot products of rows `4·group .. 4·group+4` of `w` with the activation rows `a` (pointers to
/// their first block, `a.len() ≤ TILE_ROWS`), as `out[r][i]`.
fn dot_tile(
    w: &QMatrix,
    group: usize,
    acts: &Activations,
    rows: Range<usize>,
    a: &[*const BlockA8],
    out: &mut [[f32; 4]],
) {
    let start = group * ROW_GROUP * w.row_bytes;
    let wrows = &w.data.as_slice()[start..start + ROW_GROUP * w.row_bytes];
    if w.format.is_k_quant() {
        let kb = w.cols / QK_K;
        for (o, row) in out.iter_mut().zip(rows) {
            let a = &acts.ak[row * kb..(row + 1) * kb];
            *o = std::array::from_fn(|i| {
                let blocks = &wrows[i * w.row_bytes..(i + 1) * w.row_bytes];
                // SAFETY: k-quant blocks are plain repr(C) data; rows start at multiples of
                // the (even) block size inside 8-byte aligned storage.
                unsafe {
                    match w.format {
                        Format::Q4K => BlockQ4K::vec_dot(w.cols, cast_blocks(blocks), a),
                        _ => BlockQ6K::vec_dot(w.cols, cast_blocks(blocks), a),
                    }
                }
            });
        }
        return;
    }
    let kb = w.blocks_per_row();
    #[cfg(target_arch = "x86_64")]
    if let Some(level) = simd_level() {
        let (p, s) = (wrows.as_ptr(), w.row_bytes);
        // SAFETY: `wrows` holds four rows of `kb` blocks, each `a[r]` points at `kb` blocks
        // of `acts.a8`, and `level` was detected on this CPU.
        unsafe {
            match w.format {
                Format::Q4_1 => x86::tile_q4_1(level, p, s, kb, a, out),
                Format::Q5_0 => x86::tile_q5_0(level, p, s, kb, a, out),
                _ => x86::tile_q8_0(level, p, s, kb, a, out),
            }
        }
        return;
    }
    for (o, row) in out.iter_mut().zip(rows) {
        let a = &acts.a8[row * kb..(row + 1) * kb];
        *o = match w.format {
            Format::Q4_1 => scalar::q4_1(wrows, w.row_bytes, a),
            Format::Q5_0 => scalar::q5_0(wrows, w.row_bytes, a),
            _ => scalar::q8_0(wrows, w.row_bytes, a),
        };
    }
}

/// Multiplies the `rows × cols` activations `x` by every matrix in `products` (all `cols` wide),
/// quantizing `x` once into `scratch`.
pub(crate) fn matmul(x: &[f32], rows: usize, scratch: &mut Activations, products: &mut [Product]) {
    let Some(first) = products.first() else {
        return;
    };
    let cols = first.w.cols;
    debug_assert!(products.iter().all(|p| p.w.cols == cols));
    debug_assert!(products.iter().all(|p| p.out.len() >= rows * p.w.rows));
    let k_quants = products.iter().any(|p| p.w.format.is_k_quant());
    scratch.quantize(x, rows, cols, k_quants);
    let acts = &*scratch;

    // Work items are (product, row group) pairs numbered product by product.
    let mut starts = Vec::with_capacity(products.len() + 1);
    let mut total = 0;
    for p in products.iter() {
        starts.push(total);
        total += p.w.rows.div_ceil(ROW_GROUP);
    }
    starts.push(total);
    let outs: Vec<(usize, &QMatrix)> = products
        .iter_mut()
        .map(|p| (p.out.as_mut_ptr() as usize, p.w))
        .collect();
    let kb = cols / crate::quant::QK;
    // Addresses rather than pointers so the closure below is Sync.
    let a_rows: Vec<usize> = (0..rows)
        .map(|r| acts.a8[r * kb..].as_ptr() as usize)
        .collect();

    let run = |items: Range<usize>| {
        let mut p = 0;
        for item in items {
            while item >= starts[p + 1] {
                p += 1;
            }
            let (out, w) = outs[p];
            let group = item - starts[p];
            let first_row = group * ROW_GROUP;
            let n_valid = ROW_GROUP.min(w.rows - first_row);
            let mut tile = [[0f32; 4]; TILE_ROWS];
            let mut ptrs = [std::ptr::null::<BlockA8>(); TILE_ROWS];
            for r0 in (0..rows).step_by(TILE_ROWS) {
                let n = TILE_ROWS.min(rows - r0);
                for (p, &addr) in ptrs.iter_mut().zip(&a_rows[r0..r0 + n]) {
                    *p = addr as *const BlockA8;
                }
                dot_tile(w, group, acts, r0..r0 + n, &ptrs[..n], &mut tile[..n]);
                for (r, v) in (r0..r0 + n).zip(&tile) {
                    // SAFETY: each (product, group) item writes only its own ≤4 outputs of
                    // each activation row, inside `out`, which is at least rows·w.rows long.
                    unsafe {
                        let dst = (out as *mut f32).add(r * w.rows + first_row);
                        std::ptr::copy_nonoverlapping(v.as_ptr(), dst, n_valid);
                    }
                }
            }
        }
    };
    let pool = candle_core::utils::barrier_pool();
    // Tiny products cost less than waking the pool.
    if total * rows * cols < 16 * 1024 || pool.n_workers() == 0 {
        run(0..total);
    } else {
        pool.execute_chunked(total, run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Activations;
    use candle_core::quantized::GgmlDType;

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect()
    }

    /// Random blocks with small, valid f16 scales at the given byte offsets of each block.
    fn random_matrix(
        dtype: GgmlDType,
        block: usize,
        scales: &[usize],
        rows: usize,
        cols: usize,
    ) -> Vec<u8> {
        let mut raw = random_bytes(rows * cols / 32 * block, 7);
        for (i, blk) in raw.chunks_exact_mut(block).enumerate() {
            for &at in scales {
                let v = half::f16::from_f32(0.01 + (i % 7) as f32 * 0.003 - 0.02 * (at as f32));
                blk[at..at + 2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        let _ = dtype;
        raw
    }

    fn check(dtype: GgmlDType, block: usize, scales: &[usize]) {
        // 7 activation rows exercise the 4-, 2- and 1-row tiles.
        let (rows, cols, m) = (12, 256, 7);
        let raw = random_matrix(dtype, block, scales, rows, cols);
        let w = QMatrix::from_ggml("t", dtype, rows, cols, &raw).unwrap();
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let mut out = vec![0f32; m * rows];
        let mut acts = Activations::default();
        matmul(
            &x,
            m,
            &mut acts,
            &mut [Product {
                w: &w,
                out: &mut out,
            }],
        );
        // Reference: dequantized weights against the dequantized activations.
        let mut row = vec![0f32; cols];
        for r in 0..m {
            let xq: Vec<f32> = acts.a8[r * 8..(r + 1) * 8]
                .iter()
                .flat_map(|b| b.qs.iter().map(move |&q| f32::from(q) * b.d))
                .collect();
            for j in 0..rows {
                w.dequantize_row(j, &mut row);
                let expect: f32 = row.iter().zip(&xq).map(|(a, b)| a * b).sum();
                let got = out[r * rows + j];
                assert!(
                    (got - expect).abs() <= 1e-3 * (1.0 + expect.abs()),
                    "{dtype:?} r{r} j{j}: {got} vs {expect}"
                );
            }
        }
    }

    #[test]
    fn q4_1_product_matches_dequantized_reference() {
        check(GgmlDType::Q4_1, 20, &[0, 2]);
    }

    #[test]
    fn q5_0_product_matches_dequantized_reference() {
        check(GgmlDType::Q5_0, 22, &[0]);
    }

    #[test]
    fn q8_0_product_matches_dequantized_reference() {
        check(GgmlDType::Q8_0, 34, &[0]);
    }

    #[test]
    fn simd_and_scalar_kernels_agree() {
        #[cfg(target_arch = "x86_64")]
        if let Some(level) = simd_level() {
            let kb = 8;
            let x: Vec<f32> = (0..kb * 32)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 5.0)
                .collect();
            let mut acts = Activations::default();
            acts.quantize(&x, 1, kb * 32, false);
            for (dtype, block, scales) in [
                (GgmlDType::Q4_1, 20, &[0usize, 2][..]),
                (GgmlDType::Q5_0, 22, &[0][..]),
                (GgmlDType::Q8_0, 34, &[0][..]),
            ] {
                let raw = random_matrix(dtype, block, scales, 4, kb * 32);
                let stride = kb * block;
                // SAFETY: `raw` holds four rows of `kb` blocks.
                let mut tile = [[0f32; 4]; 1];
                let a = [acts.a8.as_ptr()];
                unsafe {
                    match dtype {
                        GgmlDType::Q4_1 => {
                            x86::tile_q4_1(level, raw.as_ptr(), stride, kb, &a, &mut tile)
                        }
                        GgmlDType::Q5_0 => {
                            x86::tile_q5_0(level, raw.as_ptr(), stride, kb, &a, &mut tile)
                        }
                        _ => x86::tile_q8_0(level, raw.as_ptr(), stride, kb, &a, &mut tile),
                    }
                };
                let simd = tile[0];
                let reference = match dtype {
                    GgmlDType::Q4_1 => scalar::q4_1(&raw, stride, &acts.a8),
                    GgmlDType::Q5_0 => scalar::q5_0(&raw, stride, &acts.a8),
                    _ => scalar::q8_0(&raw, stride, &acts.a8),
                };
                for (s, r) in simd.iter().zip(&reference) {
                    assert!(
                        (s - r).abs() <= 1e-4 * (1.0 + r.abs()),
                        "{dtype:?}: {s} vs {r}"
                    );
                }
            }
        }
    }
}

/// Throughput probe, not a correctness test: `cargo test --release -p coe-models -- --ignored
/// --nocapture kernel_throughput` prints GB/s of weights streamed per format, in cache and not.
#[cfg(test)]
mod throughput {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use std::time::Instant;

    fn probe(dtype: GgmlDType, block: usize, rows: usize, cols: usize) {
        let raw = vec![0x11u8; rows * cols / 32 * block];
        let w = QMatrix::from_ggml("t", dtype, rows, cols, &raw).unwrap();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
        let mut out = vec![0f32; rows];
        let mut acts = Activations::default();
        let reps = (2_000_000_000 / raw.len()).clamp(3, 2000);
        let t = Instant::now();
        for _ in 0..reps {
            matmul(
                &x,
                1,
                &mut acts,
                &mut [Product {
                    w: &w,
                    out: &mut out,
                }],
            );
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{dtype:?} {rows}x{cols} ({:.1} MB): {:.2} GB/s, {:.1} us/call",
            raw.len() as f64 / 1e6,
            (raw.len() * reps) as f64 / s / 1e9,
            s / reps as f64 * 1e6
        );
    }

    #[test]
    #[ignore]
    fn kernel_throughput() {
        println!(
            "threads {}, level {}",
            candle_core::utils::get_num_threads(),
            kernel_level()
        );
        for (dtype, block) in [
            (GgmlDType::Q4_1, 20),
            (GgmlDType::Q5_0, 22),
            (GgmlDType::Q8_0, 34),
        ] {
            probe(dtype, block, 1536, 576);
            probe(dtype, block, 4864, 896);
            probe(dtype, block, 262144, 640);
        }
    }
}
