//! Threaded quantized matrix products. The rows of every weight matrix that reads the same
//! activations (q/k/v, gate/up) are split across candle's spinning barrier pool in one dispatch,
//! so a decode step pays one wake-up per fused group instead of one per matrix.
use std::ops::Range;
use std::sync::OnceLock;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, GgmlType};

use crate::quant::{cast_blocks, Activations, BlockA8, Format, QMatrix, ROW_GROUP};

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Which repacked format a SIMD or scalar kernel reads.
#[cfg(target_arch = "x86_64")]
use x86::Kind as x86_kind;
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy)]
enum x86_kind {
    Q4_1,
    Q5_0,
    Q8_0,
}

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

/// Dot products of the four rows of group `group` of `w` with activation rows `rows` (whose
/// first blocks `a` points at), as `out[r][i]`.
fn dot_tile(
    w: &QMatrix,
    group: usize,
    acts: &Activations,
    rows: Range<usize>,
    a: &[*const BlockA8],
    out: &mut [[f32; 4]],
) {
    let g = w.group(group);
    let kb = w.blocks_per_row();
    let kind = match w.format {
        Format::Q4_1x4 => x86_kind::Q4_1,
        Format::Q5_0x4 => x86_kind::Q5_0,
        Format::Q8_0x4 => x86_kind::Q8_0,
        Format::Q4K | Format::Q6K => {
            let row_bytes = w.group_bytes / ROW_GROUP;
            for (o, row) in out.iter_mut().zip(rows) {
                let a = &acts.ak[row * kb..(row + 1) * kb];
                *o = std::array::from_fn(|i| {
                    let blocks = &g[i * row_bytes..(i + 1) * row_bytes];
                    // SAFETY: k-quant blocks are plain repr(C) data; rows start at multiples
                    // of the (even) block size inside 8-byte aligned storage.
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
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(level) = simd_level() {
        // SAFETY: `g` holds `kb` super-blocks of `kind`, each `a[r]` points at `kb` blocks of
        // `acts.a8`, and `level` was detected on this CPU.
        unsafe { x86::tile(level, kind, g.as_ptr(), kb, a, out) };
        return;
    }
    for (o, row) in out.iter_mut().zip(rows) {
        let a = &acts.a8[row * kb..(row + 1) * kb];
        *o = match kind {
            x86_kind::Q4_1 => scalar::q4_1(g, a),
            x86_kind::Q5_0 => scalar::q5_0(g, a),
            x86_kind::Q8_0 => scalar::q8_0(g, a),
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
        total += p.w.groups();
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
    use crate::quant::tests::random_ggml;
    use candle_core::quantized::GgmlDType;

    fn load(dtype: GgmlDType, rows: usize, cols: usize, raw: &[u8]) -> QMatrix {
        let mut at = 0;
        QMatrix::load("t", dtype, rows, cols, |dst| {
            dst.copy_from_slice(&raw[at..at + dst.len()]);
            at += dst.len();
            Ok(())
        })
        .unwrap()
    }

    fn check(dtype: GgmlDType, block: usize, scales: &[usize]) {
        // 7 activation rows exercise every tile height; 10 weight rows a padded group.
        let (rows, cols, m) = (10, 256, 7);
        let raw = random_ggml(block, scales, rows, cols);
        let w = load(dtype, rows, cols, &raw);
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
    #[cfg(target_arch = "x86_64")]
    fn every_simd_level_agrees_with_the_scalar_kernels() {
        let (kb, m) = (8, 5);
        let x: Vec<f32> = (0..m * kb * 32)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 5.0)
            .collect();
        let mut acts = Activations::default();
        acts.quantize(&x, m, kb * 32, false);
        let a: Vec<*const BlockA8> = (0..m).map(|r| acts.a8[r * kb..].as_ptr()).collect();
        for (dtype, block, scales, kind) in [
            (GgmlDType::Q4_1, 20, &[0usize, 2][..], x86_kind::Q4_1),
            (GgmlDType::Q5_0, 22, &[0][..], x86_kind::Q5_0),
            (GgmlDType::Q8_0, 34, &[0][..], x86_kind::Q8_0),
        ] {
            let w = load(dtype, 4, kb * 32, &random_ggml(block, scales, 4, kb * 32));
            for level in x86::supported_levels() {
                let mut out = vec![[0f32; 4]; m];
                // SAFETY: one group of `kb` super-blocks, `m` rows of `kb` blocks, and only
                // levels this CPU supports.
                unsafe { x86::tile(level, kind, w.group(0).as_ptr(), kb, &a, &mut out) };
                for (r, got) in out.iter().enumerate() {
                    let want = match kind {
                        x86_kind::Q4_1 => scalar::q4_1(w.group(0), &acts.a8[r * kb..(r + 1) * kb]),
                        x86_kind::Q5_0 => scalar::q5_0(w.group(0), &acts.a8[r * kb..(r + 1) * kb]),
                        x86_kind::Q8_0 => scalar::q8_0(w.group(0), &acts.a8[r * kb..(r + 1) * kb]),
                    };
                    // Same operations in the same order: the results must be identical.
                    assert_eq!(got, &want, "{level:?} {kind:?} row {r}");
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
        let w = QMatrix::load("t", dtype, rows, cols, |dst| {
            dst.fill(0x11);
            Ok(())
        })
        .unwrap();
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
