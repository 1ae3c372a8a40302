//! A dense layer `y = x W^T + b` over row-major f32 buffers, the only matrix product of the forward.
//!
//! The weights are packed once, at load, into panels of 32 output columns (`[k][32]` each), so the
//! AVX-512 kernel streams them with two loads per step and never repacks per call, which a general
//! GEMM must do on every call and which dominates at the ~24 rows of one query. The AVX-512 kernel
//! keeps them as f16 (see `kernel_avx512`); without AVX-512 f32 panels go through the `gemm` crate.
//! Where the CPU has AMX (see `kernel_amx`), the weights are bf16 tiles instead and the tile unit
//! computes the products.

use gemm::Parallelism;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::{kernel_amx, kernel_avx512};

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
    /// bf16 tiles for the AMX kernel (`kernel_amx::pack_weights`).
    Bf16Tiles(Vec<u16>),
    F16(Vec<u16>),
    F32(Vec<f32>),
}

/// Which kernel computes the dense products (and, for AMX, attention) of an embedder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseKernel {
    /// Intel AMX tiles, bf16 inputs and f32 accumulation (`kernel_amx`).
    AmxBf16,
    /// AVX-512 FMA over f16 weights, f32 activations (`kernel_avx512`).
    Avx512F16,
    /// f32 through the `gemm` crate: any CPU.
    Portable,
}

impl DenseKernel {
    pub fn name(self) -> &'static str {
        match self {
            Self::AmxBf16 => "amx-bf16",
            Self::Avx512F16 => "avx512-f16",
            Self::Portable => "gemm-f32",
        }
    }

    /// Whether this CPU (and, for AMX, the operating system) can run the kernel.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::AmxBf16 => kernel_amx::supported(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512F16 => kernel_avx512::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::AmxBf16 | Self::Avx512F16 => false,
            Self::Portable => true,
        }
    }

    /// Every kernel this machine can run, fastest first.
    pub fn all_available() -> Vec<Self> {
        [Self::AmxBf16, Self::Avx512F16, Self::Portable]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }

    /// The fastest available kernel, or the one `COE_EMBED_KERNEL` (`amx`, `avx512`, `portable`)
    /// names when it is available.
    pub fn best() -> Self {
        let all = Self::all_available();
        let wanted = std::env::var("COE_EMBED_KERNEL").unwrap_or_default();
        let named = match wanted.as_str() {
            "amx" => Some(Self::AmxBf16),
            "avx512" => Some(Self::Avx512F16),
            "portable" => Some(Self::Portable),
            _ => None,
        };
        match named {
            Some(k) if all.contains(&k) => k,
            Some(k) => {
                tracing::warn!(
                    wanted = k.name(),
                    using = all[0].name(),
                    "COE_EMBED_KERNEL names a kernel this machine cannot run"
                );
                all[0]
            }
            None => all[0],
        }
    }
}

/// Scratch space for the kernels' packed copies of a layer's input, kept by the caller across
/// calls so that a query allocates nothing here.
#[derive(Default)]
pub struct PackBuffers {
    f32: Vec<f32>,
    bf16: Vec<u16>,
}

/// The output pointer shared by the threads of one product; each writes only its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: threads given an OutPtr write disjoint column ranges of the buffer it points into, and
// the buffer outlives the parallel section (it is borrowed mutably for the whole call).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so that closures capture the whole `OutPtr` (which is `Sync`), not its field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl Linear {
    /// `weight` is PyTorch's `[out_dim, in_dim]` row-major layout. AMX needs dimensions in whole
    /// tiles; a layer that has not gets the AVX-512 kernel (every AMX CPU has AVX-512).
    pub fn new(
        weight: &[f32],
        bias: Vec<f32>,
        out_dim: usize,
        in_dim: usize,
        kernel: DenseKernel,
    ) -> Self {
        assert!(kernel.available(), "{} is not available", kernel.name());
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
        let packed = if kernel == DenseKernel::AmxBf16 && kernel_amx::fits(in_dim, out_dim) {
            Packed::Bf16Tiles(kernel_amx::pack_weights(weight, out_dim, in_dim))
        } else if kernel != DenseKernel::Portable {
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

    /// The number of 32-column pairs of weight tiles when the weights are AMX tiles, else `None`.
    #[cfg(target_arch = "x86_64")]
    pub fn amx_pairs(&self) -> Option<usize> {
        match self.packed {
            Packed::Bf16Tiles(_) => Some(self.out_dim / kernel_amx::BLOCK_N),
            _ => None,
        }
    }

    /// The columns of `pairs` of `out[rows, out_dim] = x W^T + b` on the tile unit, `x` already
    /// packed by `kernel_amx::pack_row` for `in_dim`.
    ///
    /// # Safety
    /// `amx_pairs()` is `Some(n)` with `pairs.end <= n`; `packed_x` holds `rows` rows (padded to
    /// whole `BLOCK_M` blocks) packed for `in_dim`; `out` points at `rows * out_dim` floats of
    /// which nothing else accesses the columns of `pairs` during the call.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn forward_amx_pairs(
        &self,
        packed_x: &[u16],
        rows: usize,
        out: *mut f32,
        pairs: std::ops::Range<usize>,
    ) {
        let Packed::Bf16Tiles(tiles) = &self.packed else {
            unreachable!("the caller checked amx_pairs")
        };
        // SAFETY: the caller's contract is `kernel_amx::pairs`'s, for these weights.
        unsafe {
            kernel_amx::pairs(
                packed_x,
                rows,
                self.in_dim,
                tiles,
                &self.bias,
                out,
                self.out_dim,
                pairs,
            )
        }
    }

    /// `out[rows, out_dim] = x[rows, in_dim] W^T + b`, spread over `threads` by panels.
    pub fn forward(&self, x: &[f32], out: &mut [f32], threads: usize, pack: &mut PackBuffers) {
        let rows = x.len() / self.in_dim;
        assert_eq!(x.len(), rows * self.in_dim);
        assert_eq!(out.len(), rows * self.out_dim);
        #[cfg(target_arch = "x86_64")]
        if let Packed::Bf16Tiles(_) = &self.packed {
            kernel_amx::pack_rows(x, rows, self.in_dim, &mut pack.bf16);
            self.forward_amx(&pack.bf16, rows, out, threads);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Packed::F16(_) = &self.packed {
            kernel_avx512::pack_rows(x, rows, self.in_dim, &mut pack.f32);
        }
        let pack: &[f32] = &pack.f32;
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

    /// The AMX path of `forward`: threads split the output's column pairs.
    #[cfg(target_arch = "x86_64")]
    fn forward_amx(&self, packed_x: &[u16], rows: usize, out: &mut [f32], threads: usize) {
        let pairs = self.out_dim / kernel_amx::BLOCK_N;
        let ptr = OutPtr(out.as_mut_ptr());
        // The tile unit finishes a small product before a second thread would wake up.
        let tasks = if rows * self.in_dim * self.out_dim < 1 << 22 {
            1
        } else {
            threads.min(pairs)
        };
        let run = |t: usize| {
            let range = pairs * t / tasks..pairs * (t + 1) / tasks;
            // SAFETY: these are Bf16Tiles (`forward` matched them); `packed_x` was packed for
            // these rows; task t writes only the columns of its pairs, and `out` holds
            // rows * out_dim floats (asserted in `forward`).
            unsafe { self.forward_amx_pairs(packed_x, rows, ptr.get(), range) };
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
                // SAFETY: F16 panels exist only for the AMX and AVX-512 kernels, whose CPUs have
                // AVX-512 (see `new`).
                unsafe { self.panels_avx512(pack, packed, rows, out, panels) };
                return;
            }
            #[cfg(not(target_arch = "x86_64"))]
            Packed::F16(_) => unreachable!("f16 panels are only built for the x86-64 kernel"),
            Packed::Bf16Tiles(_) => unreachable!("bf16 tiles go through forward_amx"),
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
        for kernel in DenseKernel::all_available() {
            check_ragged(&w, &b, out_dim, in_dim, kernel);
        }
    }

    fn check_ragged(w: &[f32], b: &[f32], out_dim: usize, in_dim: usize, kernel: DenseKernel) {
        let lin = Linear::new(w, b.to_vec(), out_dim, in_dim, kernel);
        // The reference multiplies by the weights the layer actually stores.
        let w: Vec<f32> = match &lin.packed {
            Packed::F16(_) => w.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
            Packed::F32(_) | Packed::Bf16Tiles(_) => w.to_vec(),
        };
        for rows in [1, 5, 12, 13, 31, 100] {
            let x: Vec<f32> = (0..rows * in_dim)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let want = naive(&x, &w, b, rows, out_dim, in_dim);
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; rows * out_dim];
                lin.forward(&x, &mut got, threads, &mut PackBuffers::default());
                for (g, w) in got.iter().zip(&want) {
                    let k = kernel.name();
                    assert!((g - w).abs() < 1e-4, "{k} rows {rows}: {g} vs {w}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_amx_kernel_matches_a_naive_product_of_bf16_inputs() {
        if !DenseKernel::AmxBf16.available() {
            eprintln!("skipped: this CPU or operating system offers no AMX-BF16");
            return;
        }
        // 96 deep (3 tile steps), 64 wide (2 column pairs); row counts around the 16/32 blocks.
        let (out_dim, in_dim) = (64, 96);
        let w: Vec<f32> = (0..out_dim * in_dim)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let b: Vec<f32> = (0..out_dim).map(|i| i as f32 * 0.01).collect();
        let lin = Linear::new(&w, b.clone(), out_dim, in_dim, DenseKernel::AmxBf16);
        assert!(matches!(lin.packed, Packed::Bf16Tiles(_)));
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|x| half::bf16::from_f32(*x).to_f32())
                .collect()
        };
        for rows in [1, 15, 16, 17, 32, 33, 100] {
            let x: Vec<f32> = (0..rows * in_dim)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let want = naive(&round(&x), &round(&w), &b, rows, out_dim, in_dim);
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; rows * out_dim];
                lin.forward(&x, &mut got, threads, &mut PackBuffers::default());
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() < 1e-3, "rows {rows}: {g} vs {w}");
                }
            }
        }
    }
}
