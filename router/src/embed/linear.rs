//! A dense layer `y = x W^T + b` over row-major f32 buffers, the only matrix product of the forward.
//!
//! The weights are packed once, at load, into panels of 32 output columns (`[k][32]` each), so the
//! AVX-512 kernel streams them with two loads per step and never repacks per call, which a general
//! GEMM must do on every call and which dominates at the ~24 rows of one query. The AVX-512 kernel
//! keeps them as f16 (see `kernel_avx512`); without AVX-512 f32 panels go through the `gemm` crate.

use gemm::Parallelism;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::kernel_avx512;

/// Output columns per packed panel: two 16-float vectors.
pub const PANEL: usize = 32;

pub struct Linear {
    /// `W^T` in panels of `PANEL` columns, the last one zero-padded: `[panel][in_dim][PANEL]`;
    /// f16 bit patterns for the AVX-512 kernel, else f32.
    packed: Packed,
    /// Zero-padded to a whole number of panels.
    bias: Vec<f32>,
    in_dim: usize,
    out_dim: usize,
}

enum Packed {
    F16(Vec<u16>),
    F32(Vec<f32>),
}

/// The output pointer shared by the threads of one product; each writes only its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: threads given an OutPtr write disjoint column ranges of the buffer it points into, and
// the buffer outlives the parallel section (it is borrowed mutably for the whole call).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl Linear {
    /// `weight` is PyTorch's `[out_dim, in_dim]` row-major layout.
    pub fn new(weight: &[f32], bias: Vec<f32>, out_dim: usize, in_dim: usize) -> Self {
        assert_eq!(weight.len(), out_dim * in_dim);
        assert_eq!(bias.len(), out_dim);
        let panels = out_dim.div_ceil(PANEL);
        let mut packed = vec![0.0; panels * in_dim * PANEL];
        for o in 0..out_dim {
            let (p, c) = (o / PANEL, o % PANEL);
            for i in 0..in_dim {
                packed[(p * in_dim + i) * PANEL + c] = weight[o * in_dim + i];
            }
        }
        let mut bias = bias;
        bias.resize(panels * PANEL, 0.0);
        #[cfg(target_arch = "x86_64")]
        let packed = if kernel_avx512::available() {
            Packed::F16(
                packed
                    .iter()
                    .map(|w| half::f16::from_f32(*w).to_bits())
                    .collect(),
            )
        } else {
            Packed::F32(packed)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let packed = Packed::F32(packed);
        Self {
            packed,
            bias,
            in_dim,
            out_dim,
        }
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `out[rows, out_dim] = x[rows, in_dim] W^T + b`, spread over `threads` by panels. `pack` is
    /// scratch space for the kernel's packed copy of `x`, kept by the caller across calls.
    pub fn forward(&self, x: &[f32], out: &mut [f32], threads: usize, pack: &mut Vec<f32>) {
        let rows = x.len() / self.in_dim;
        assert_eq!(x.len(), rows * self.in_dim);
        assert_eq!(out.len(), rows * self.out_dim);
        #[cfg(target_arch = "x86_64")]
        if kernel_avx512::available() {
            kernel_avx512::pack_rows(x, rows, self.in_dim, pack);
        }
        let pack: &[f32] = pack;
        let panels = self.out_dim.div_ceil(PANEL);
        let ptr = OutPtr(out.as_mut_ptr());
        // Small products are not worth waking a second thread for.
        let tasks = if rows * self.in_dim * self.out_dim < 1 << 18 {
            1
        } else {
            threads.min(panels)
        };
        let run = |t: usize| {
            let (lo, hi) = (panels * t / tasks, panels * (t + 1) / tasks);
            // SAFETY: task t writes columns [lo*PANEL, hi*PANEL) ∩ [0, out_dim) of `out`, which no
            // other task touches; the bounds were asserted above.
            unsafe { self.panels(x, pack, rows, ptr, lo..hi) };
        };
        if tasks == 1 {
            run(0);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    }

    /// # Safety
    /// `out` points at `rows * out_dim` floats, and nothing else writes the columns of `panels`;
    /// with AVX-512, `pack` holds `x` packed by `kernel_avx512::pack_rows`.
    unsafe fn panels(
        &self,
        x: &[f32],
        pack: &[f32],
        rows: usize,
        out: OutPtr,
        panels: std::ops::Range<usize>,
    ) {
        let packed = match &self.packed {
            #[cfg(target_arch = "x86_64")]
            Packed::F16(packed) => {
                // SAFETY: F16 panels exist only when AVX-512 is available (see `new`).
                unsafe { self.panels_avx512(pack, packed, rows, out, panels) };
                return;
            }
            #[cfg(not(target_arch = "x86_64"))]
            Packed::F16(_) => unreachable!("f16 panels are only built for the x86-64 kernel"),
            Packed::F32(packed) => packed,
        };
        for p in panels {
            let cols = PANEL.min(self.out_dim - p * PANEL);
            for r in 0..rows {
                // SAFETY: row r, columns p*PANEL..+cols lie inside `out` (caller contract).
                let row = unsafe {
                    std::slice::from_raw_parts_mut(out.0.add(r * self.out_dim + p * PANEL), cols)
                };
                row.copy_from_slice(&self.bias[p * PANEL..][..cols]);
            }
            // SAFETY: dst is rows x cols with row stride out_dim inside `out`; lhs is x (rows x
            // in_dim, row stride in_dim); rhs is the panel (in_dim x cols, row stride PANEL).
            unsafe {
                gemm::gemm(
                    rows,
                    cols,
                    self.in_dim,
                    out.0.add(p * PANEL),
                    1,
                    self.out_dim as isize,
                    true,
                    x.as_ptr(),
                    1,
                    self.in_dim as isize,
                    packed[p * self.in_dim * PANEL..].as_ptr(),
                    1,
                    PANEL as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                )
            };
        }
    }

    /// # Safety
    /// As `panels`, and AVX-512F is available.
    #[cfg(target_arch = "x86_64")]
    unsafe fn panels_avx512(
        &self,
        pack: &[f32],
        packed: &[u16],
        rows: usize,
        out: OutPtr,
        panels: std::ops::Range<usize>,
    ) {
        for p in panels {
            let cols = PANEL.min(self.out_dim - p * PANEL);
            // SAFETY: the panel holds in_dim * PANEL weights and the bias PANEL from p*PANEL; the
            // caller guarantees AVX-512, `out` and the exclusivity of these columns.
            unsafe {
                kernel_avx512::panel(
                    pack,
                    rows,
                    self.in_dim,
                    &packed[p * self.in_dim * PANEL..][..self.in_dim * PANEL],
                    &self.bias[p * PANEL..][..PANEL],
                    out.0.add(p * PANEL),
                    self.out_dim,
                    cols,
                )
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        rows: usize,
        out_dim: usize,
        in_dim: usize,
    ) -> Vec<f32> {
        let mut y = vec![0.0; rows * out_dim];
        for r in 0..rows {
            for o in 0..out_dim {
                let dot: f64 = (0..in_dim)
                    .map(|i| x[r * in_dim + i] as f64 * w[o * in_dim + i] as f64)
                    .sum();
                y[r * out_dim + o] = dot as f32 + b[o];
            }
        }
        y
    }

    #[test]
    fn matches_a_naive_product_for_ragged_shapes() {
        // Odd row counts exercise every row-block remainder; 70 columns a partial last panel.
        let (out_dim, in_dim) = (70, 45);
        let w: Vec<f32> = (0..out_dim * in_dim)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let b: Vec<f32> = (0..out_dim).map(|i| i as f32 * 0.01).collect();
        let lin = Linear::new(&w, b.clone(), out_dim, in_dim);
        // The reference multiplies by the weights the layer actually stores.
        let w: Vec<f32> = match &lin.packed {
            Packed::F16(_) => w.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
            Packed::F32(_) => w,
        };
        for rows in [1, 5, 12, 13, 31, 100] {
            let x: Vec<f32> = (0..rows * in_dim)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let want = naive(&x, &w, &b, rows, out_dim, in_dim);
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; rows * out_dim];
                lin.forward(&x, &mut got, threads, &mut Vec::new());
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-4, "rows {rows}: {g} vs {w}");
                }
            }
        }
    }
}
