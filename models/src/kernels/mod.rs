//! Threaded quantized matrix products. The rows of every weight matrix that reads the same
//! activations (q/k/v, gate/up) are split across candle's spinning barrier pool in one dispatch,
//! so a decode step pays one wake-up per fused group instead of one per matrix.
use std::ops::Range;
use std::sync::OnceLock;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, GgmlType};

use crate::quant::{cast_blocks, Activations, BlockA8, Format, Needs, QMatrix, QK, ROW_GROUP};

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Which repacked format a SIMD or scalar kernel reads.
#[cfg(target_arch = "x86_64")]
use x86::Kind;
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy)]
enum Kind {
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
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

/// Whether k-quants are repacked for coe's kernels (AVX512-VNNI) rather than kept in ggml's
/// layout for candle's, which read every row separately with 256-bit vectors.
pub(crate) fn repack_k_quants() -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == Some(x86::Level::Avx512Vnni) {
        return true;
    }
    false
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
        Format::Q4_1x4 => Kind::Q4_1,
        Format::Q5_0x4 => Kind::Q5_0,
        Format::Q8_0x4 => Kind::Q8_0,
        Format::Q4Kx4 => Kind::Q4K,
        Format::Q6Kx4 => Kind::Q6K,
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
    // Only reached without SIMD; k-quants are repacked on AVX512 machines only.
    let per_row = cols_blocks(w);
    for (o, row) in out.iter_mut().zip(rows) {
        *o = match kind {
            Kind::Q4_1 => scalar::q4_1(g, &acts.a8[row * per_row..(row + 1) * per_row]),
            Kind::Q5_0 => scalar::q5_0(g, &acts.a8[row * per_row..(row + 1) * per_row]),
            Kind::Q8_0 => scalar::q8_0(g, &acts.a8[row * per_row..(row + 1) * per_row]),
            Kind::Q4K => scalar::q4k(g, &acts.k8[row * per_row..(row + 1) * per_row]),
            Kind::Q6K => scalar::q6k(g, &acts.k8[row * per_row..(row + 1) * per_row]),
        };
    }
}

/// 32-value activation blocks per row of `w`.
fn cols_blocks(w: &QMatrix) -> usize {
    w.cols / QK
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
    let needs = products.iter().fold(Needs::default(), |n, p| {
        let f = p.w.format.needs();
        Needs {
            a8: n.a8 || f.a8,
            k8: n.k8 || f.k8,
            ak: n.ak || f.ak,
        }
    });
    scratch.quantize(x, rows, cols, needs);
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
    let kb = cols / QK;
    // Addresses rather than pointers so the closure below is Sync.
    let row_starts = |blocks: &[BlockA8]| -> Vec<usize> {
        match blocks.is_empty() {
            true => Vec::new(),
            false => (0..rows)
                .map(|r| blocks[r * kb..].as_ptr() as usize)
                .collect(),
        }
    };
    let (a8_rows, k8_rows) = (row_starts(&acts.a8), row_starts(&acts.k8));

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
            let a_rows = match w.format.needs().k8 {
                true => &k8_rows,
                false => &a8_rows,
            };
            let mut tile = [[0f32; 4]; TILE_ROWS];
            let mut ptrs = [std::ptr::null::<BlockA8>(); TILE_ROWS];
            for r0 in (0..rows).step_by(TILE_ROWS) {
                let n = TILE_ROWS.min(rows - r0);
                // k-quants in ggml's layout read `acts.ak` by row and have no pointers.
                for (p, &addr) in ptrs.iter_mut().zip(a_rows.get(r0..r0 + n).unwrap_or(&[])) {
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
    use candle_core::quantized::k_quants::BlockQ8K;
    use candle_core::quantized::GgmlDType;

    fn load(dtype: GgmlDType, rows: usize, cols: usize, raw: &[u8]) -> QMatrix {
        load_as(dtype, rows, cols, raw, repack_k_quants())
    }

    fn load_as(dtype: GgmlDType, rows: usize, cols: usize, raw: &[u8], repack_k: bool) -> QMatrix {
        let mut at = 0;
        QMatrix::load_as("t", dtype, rows, cols, repack_k, |dst| {
            dst.copy_from_slice(&raw[at..at + dst.len()]);
            at += dst.len();
            Ok(())
        })
        .unwrap()
    }

    fn check(dtype: GgmlDType, block: usize, scales: &[usize]) {
        check_as(dtype, block, scales, repack_k_quants());
    }

    fn check_as(dtype: GgmlDType, block: usize, scales: &[usize], repack_k: bool) {
        // 7 activation rows exercise every tile height; 10 weight rows a padded group.
        let (rows, cols, m) = (10, 512, 7);
        let raw = random_ggml(block, scales, rows, cols);
        let w = load_as(dtype, rows, cols, &raw, repack_k);
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
            let needs = w.format.needs();
            let xq: Vec<f32> = match (needs.k8, needs.ak) {
                (true, _) => acts.k8[r * 16..(r + 1) * 16]
                    .iter()
                    .flat_map(dequant_a8)
                    .collect(),
                (_, true) => {
                    let mut x = vec![0f32; cols];
                    BlockQ8K::to_float(&acts.ak[r * 2..(r + 1) * 2], &mut x);
                    x
                }
                _ => acts.a8[r * 16..(r + 1) * 16]
                    .iter()
                    .flat_map(dequant_a8)
                    .collect(),
            };
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
    fn q4k_product_matches_dequantized_reference() {
        check(GgmlDType::Q4K, 144, &[0, 2]);
    }

    #[test]
    fn q6k_product_matches_dequantized_reference() {
        check(GgmlDType::Q6K, 210, &[208]);
    }

    #[test]
    fn k_quants_in_ggml_layout_match_the_dequantized_reference() {
        // The layout CPUs without AVX512 load, whatever this one supports.
        check_as(GgmlDType::Q4K, 144, &[0, 2], false);
        check_as(GgmlDType::Q6K, 210, &[208], false);
    }

    fn dequant_a8(b: &BlockA8) -> impl Iterator<Item = f32> + '_ {
        b.qs.iter().map(move |&q| f32::from(q) * b.d)
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_simd_level_agrees_with_the_scalar_kernels() {
        let (cols, m) = (512, 5);
        let kb = cols / QK;
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 5.0)
            .collect();
        let mut acts = Activations::default();
        let all = Needs {
            a8: true,
            k8: true,
            ak: false,
        };
        acts.quantize(&x, m, cols, all);
        let a8: Vec<*const BlockA8> = (0..m).map(|r| acts.a8[r * kb..].as_ptr()).collect();
        let k8: Vec<*const BlockA8> = (0..m).map(|r| acts.k8[r * kb..].as_ptr()).collect();
        for (dtype, block, scales, kind) in [
            (GgmlDType::Q4_1, 20, &[0usize, 2][..], Kind::Q4_1),
            (GgmlDType::Q5_0, 22, &[0][..], Kind::Q5_0),
            (GgmlDType::Q8_0, 34, &[0][..], Kind::Q8_0),
            (GgmlDType::Q4K, 144, &[0, 2][..], Kind::Q4K),
            (GgmlDType::Q6K, 210, &[208][..], Kind::Q6K),
        ] {
            let w = load(dtype, 4, cols, &random_ggml(block, scales, 4, cols));
            let k_quant = matches!(kind, Kind::Q4K | Kind::Q6K);
            if k_quant && !repack_k_quants() {
                continue;
            }
            let a = if k_quant { &k8 } else { &a8 };
            for level in x86::supported_levels() {
                if k_quant && level != x86::Level::Avx512Vnni {
                    continue;
                }
                let mut out = vec![[0f32; 4]; m];
                // SAFETY: one group of `kb` blocks of `kind`, `m` rows of activation blocks,
                // and only levels this CPU supports.
                unsafe {
                    x86::tile(
                        level,
                        kind,
                        w.group(0).as_ptr(),
                        w.blocks_per_row(),
                        a,
                        &mut out,
                    )
                };
                for (r, got) in out.iter().enumerate() {
                    let (a8, k8) = (
                        &acts.a8[r * kb..(r + 1) * kb],
                        &acts.k8[r * kb..(r + 1) * kb],
                    );
                    let want = match kind {
                        Kind::Q4_1 => scalar::q4_1(w.group(0), a8),
                        Kind::Q5_0 => scalar::q5_0(w.group(0), a8),
                        Kind::Q8_0 => scalar::q8_0(w.group(0), a8),
                        Kind::Q4K => scalar::q4k(w.group(0), k8),
                        Kind::Q6K => scalar::q6k(w.group(0), k8),
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

    fn probe(dtype: GgmlDType, rows: usize, cols: usize, repack_k: bool) {
        let w = QMatrix::load_as("t", dtype, rows, cols, repack_k, |dst| {
            dst.fill(0x11);
            Ok(())
        })
        .unwrap();
        let x: Vec<f32> = (0..cols).map(|i| (i as f32).sin()).collect();
        let mut out = vec![0f32; rows];
        let mut acts = Activations::default();
        let reps = (2_000_000_000 / w.bytes()).clamp(3, 2000);
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
            "{:?} {rows}x{cols} ({:.1} MB): {:.2} GB/s, {:.1} us/call",
            w.format,
            w.bytes() as f64 / 1e6,
            (w.bytes() * reps) as f64 / s / 1e9,
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
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            probe(dtype, 1536, 576, true);
            probe(dtype, 4864, 896, true);
            probe(dtype, 262144, 640, true);
        }
        for dtype in [GgmlDType::Q4K, GgmlDType::Q6K] {
            for repack_k in [true, false] {
                probe(dtype, 896, 4864, repack_k);
                probe(dtype, 65536, 1536, repack_k);
            }
        }
    }
}
