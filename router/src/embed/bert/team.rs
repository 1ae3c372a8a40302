//! The AMX forward pass, run by every thread of the embedder's pool at once.
//!
//! The general forward pass parallelises each product and attention separately, so a 243-token
//! query goes through two dozen fork/join points, with the layer norms and the bf16 packing of
//! each product's input serial in between; on two cores the second thread spent about a quarter
//! of the pass parked or waking up (2 threads: 13.7 ms against 18.4 ms on one). Here each thread
//! of the pool runs the whole pass (`rayon::broadcast`) on its share of every step, and the
//! threads meet at a spinning barrier between steps, six per layer:
//!
//! 1. rows: embeddings and their layer norm, packed as the first product's input (once);
//! 2. columns: the fused query/key/value product;
//! 3. heads: attention, each head's context packed straight into the tiles of its 32 columns;
//! 4. columns: the attention output product;
//! 5. rows: residual and layer norm, packed as the next input;
//! 6. columns: the intermediate product, with GELU and packing on the thread's own columns;
//! 7. columns: the output product;
//! 8. rows: residual and layer norm, packed as the next layer's input.
//!
//! Threads split rows by whole 16-row tiles and columns by 32-column pairs, which are exactly the
//! tiles of the next product's input, so no step writes where another thread works.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Bert, Layer, Scratch};
use crate::embed::kernel_amx::{self, ATTENTION_HEAD_DIM, BLOCK_M, BLOCK_N, ROWS_PER_TILE};
use crate::embed::linear::Linear;
use crate::embed::math::{add_layer_norm, exp_shifted_in_place, gelu_in_place};

/// A barrier whose waiters spin: the steps between two waits last microseconds to a millisecond,
/// far less than parking and waking a thread costs. A waiter yields its core after a while, so a
/// descheduled partner on a busy machine gets to run.
struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(threads: usize) -> Self {
        Self {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    fn wait(&self) {
        if self.threads == 1 {
            return;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// A buffer the team shares. Between two barrier waits, each thread either reads it whole while
/// nobody writes it, or writes a part no other thread touches in that step.
#[derive(Clone, Copy)]
struct Shared<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: the pass's steps (see the module docs) give each thread disjoint parts to write and
// separate writes from reads with a barrier; the buffers outlive the broadcast that uses them.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    fn new(buf: &mut [T]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// # Safety
    /// No thread writes the buffer until the next barrier.
    unsafe fn all(&self) -> &[T] {
        // SAFETY: `ptr` and `len` come from a live slice (see `new`); no writer (contract).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// # Safety
    /// No other thread accesses `range` until the next barrier.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, range: Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted); exclusive for this step (contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

/// Thread `t` of `n`'s share of `items`.
fn share(items: usize, t: usize, n: usize) -> Range<usize> {
    items * t / n..items * (t + 1) / n
}

/// Packs `values` (32 floats: row `r`, tile column `kb` of a matrix `k` wide), or zeros for a
/// padding row, into their place in `packed`.
///
/// # Safety
/// No other thread accesses that place until the next barrier.
unsafe fn pack_columns(
    packed: &Shared<u16>,
    values: Option<&[f32]>,
    r: usize,
    kb: usize,
    k: usize,
) {
    let at = kernel_amx::packed_offset(r, kb, k);
    // SAFETY: exclusive for this step (contract).
    let dst = unsafe { packed.part(at..at + kernel_amx::TILE_K) };
    match values {
        Some(values) => kernel_amx::to_bf16(values, dst),
        None => dst.fill(0),
    }
}

/// The buffers of one pass and its shape.
struct Pass {
    lens: Vec<usize>,
    /// `(token id, position)` of every row.
    tokens: Vec<(usize, usize)>,
    total: usize,
    padded: usize,
    hidden: Shared<f32>,
    qkv: Shared<f32>,
    by_head: Shared<f32>,
    proj: Shared<f32>,
    inter: Shared<f32>,
    /// Packed bf16 input of the products that read `hidden` wide rows (`hidden_size`).
    packed: Shared<u16>,
    /// Packed bf16 input of the output product (`intermediate_size` wide).
    packed_wide: Shared<u16>,
}

impl Bert {
    /// Whether `encode_amx` can run this model: every product on tiles, heads one tile deep.
    pub(super) fn amx_team_fits(&self) -> bool {
        let d = self.cfg.hidden_size / self.cfg.num_attention_heads;
        d == ATTENTION_HEAD_DIM
            && self.layers.iter().all(|l| {
                [&l.qkv, &l.attn_out, &l.intermediate, &l.output]
                    .iter()
                    .all(|lin| lin.amx_pairs().is_some())
            })
    }

    /// The encoder on every thread of the current rayon pool; leaves the last hidden states of
    /// all rows in `s.hidden`. Only when `amx_team_fits()`.
    pub(super) fn encode_amx(&self, seqs: &[&[u32]], s: &mut Scratch) {
        let h = self.cfg.hidden_size;
        let wide = self.cfg.intermediate_size;
        let total: usize = seqs.iter().map(|q| q.len()).sum();
        let padded = total.div_ceil(BLOCK_M) * BLOCK_M;
        let tokens = seqs
            .iter()
            .flat_map(|q| q.iter().enumerate().map(|(pos, &id)| (id as usize, pos)))
            .collect();
        s.packed_in.resize(padded * h, 0);
        s.packed_wide.resize(padded * wide, 0);
        let pass = Pass {
            lens: seqs.iter().map(|q| q.len()).collect(),
            tokens,
            total,
            padded,
            hidden: Shared::new(super::resize(&mut s.hidden, total * h)),
            qkv: Shared::new(super::resize(&mut s.qkv, total * 3 * h)),
            by_head: Shared::new(super::resize(&mut s.ctx_by_head, total * h)),
            proj: Shared::new(super::resize(&mut s.proj, total * h)),
            inter: Shared::new(super::resize(&mut s.inter, total * wide)),
            packed: Shared::new(&mut s.packed_in[..padded * h]),
            packed_wide: Shared::new(&mut s.packed_wide[..padded * wide]),
        };
        let barrier = SpinBarrier::new(rayon::current_num_threads());
        rayon::broadcast(|ctx| {
            // SAFETY: every thread of the pool runs this with its own index (broadcast), the
            // barrier counts them all, and the steps keep to the sharing rules of `Shared`.
            unsafe { self.encode_amx_thread(&pass, ctx.index(), ctx.num_threads(), &barrier) }
        });
    }

    /// Thread `t` of `n`'s part of the pass (see the module docs for the steps).
    ///
    /// # Safety
    /// All `n` threads run this at once on the same `pass` and `barrier`, AMX is available and
    /// `amx_team_fits()`.
    unsafe fn encode_amx_thread(&self, pass: &Pass, t: usize, n: usize, barrier: &SpinBarrier) {
        let h = self.cfg.hidden_size;
        let eps = self.cfg.layer_norm_eps as f32;
        let total = pass.total;
        // Whole 16-row tiles of this thread, and the rows (real and padding) they hold.
        let tiles = share(pass.padded / ROWS_PER_TILE, t, n);
        let rows = tiles.start * ROWS_PER_TILE..tiles.end * ROWS_PER_TILE;

        // 1. Embeddings, layer norm, packed for the first product.
        {
            // SAFETY: the rows of this thread's tiles are its own in `hidden` and `packed`.
            let hidden = unsafe {
                pass.hidden
                    .part(rows.start.min(total) * h..rows.end.min(total) * h)
            };
            let packed = unsafe { pass.packed.part(rows.start * h..rows.end * h) };
            for r in rows.clone() {
                if r >= total {
                    kernel_amx::pack_row(None, r, h, tiles.start, packed);
                    continue;
                }
                let (id, pos) = pass.tokens[r];
                let row = &mut hidden[(r - rows.start) * h..][..h];
                self.embed_token(row, id, pos, eps);
                kernel_amx::pack_row(Some(row), r, h, tiles.start, packed);
            }
        }
        barrier.wait();

        for layer in &self.layers {
            // SAFETY (for the whole layer): each step reads buffers nobody writes in it and
            // writes only this thread's columns, heads or rows, with a barrier after it.
            unsafe { self.layer_amx_thread(layer, pass, t, n, barrier, &tiles, eps) };
        }
    }

    /// One encoder layer's steps 2 to 8 on thread `t` of `n`.
    ///
    /// # Safety
    /// As `encode_amx_thread`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn layer_amx_thread(
        &self,
        layer: &Layer,
        pass: &Pass,
        t: usize,
        n: usize,
        barrier: &SpinBarrier,
        tiles: &Range<usize>,
        eps: f32,
    ) {
        let h = self.cfg.hidden_size;
        let wide = self.cfg.intermediate_size;
        let heads = self.cfg.num_attention_heads;
        const D: usize = ATTENTION_HEAD_DIM;
        let total = pass.total;
        let columns = |lin: &Linear| share(lin.amx_pairs().expect("amx_team_fits"), t, n);

        unsafe {
            // 2. Query, key and value.
            layer.qkv.forward_amx_pairs(
                pass.packed.all(),
                total,
                pass.qkv.ptr,
                columns(&layer.qkv),
            );
            barrier.wait();

            // 3. Attention per head; the context goes straight into the next product's tiles
            // (head `hd`'s 32 columns are tile column `hd`).
            let scale = 1.0 / (D as f32).sqrt();
            let qkv = pass.qkv.all();
            for head in share(heads, t, n) {
                let slab = pass.by_head.part(head * total * D..(head + 1) * total * D);
                super::AMX_SCRATCH.with_borrow_mut(|scratch| {
                    kernel_amx::attention_head(
                        qkv,
                        &pass.lens,
                        h,
                        head,
                        scale,
                        exp_shifted_in_place,
                        slab,
                        scratch,
                    )
                });
                for r in 0..pass.padded {
                    let context = (r < total).then(|| &slab[r * D..][..D]);
                    pack_columns(&pass.packed, context, r, head, h);
                }
            }
            barrier.wait();

            // 4 and 5. Attention output, residual and layer norm, packed for the intermediate.
            self.dense_add_norm(
                pass,
                (&layer.attn_out, &pass.packed),
                &pass.proj,
                (&pass.hidden, &layer.attn_norm),
                (t, n, barrier, tiles),
                eps,
            );

            // 6. Intermediate, then GELU and packing on this thread's own columns.
            let pairs = columns(&layer.intermediate);
            layer.intermediate.forward_amx_pairs(
                pass.packed.all(),
                total,
                pass.inter.ptr,
                pairs.clone(),
            );
            for r in 0..pass.padded {
                for p in pairs.clone() {
                    let activations = (r < total).then(|| {
                        let x = pass
                            .inter
                            .part(r * wide + p * BLOCK_N..r * wide + (p + 1) * BLOCK_N);
                        gelu_in_place(x);
                        &*x
                    });
                    pack_columns(&pass.packed_wide, activations, r, p, wide);
                }
            }
            barrier.wait();

            // 7 and 8. Output, residual and layer norm, packed for the next layer.
            self.dense_add_norm(
                pass,
                (&layer.output, &pass.packed_wide),
                &pass.hidden,
                (&pass.proj, &layer.out_norm),
                (t, n, barrier, tiles),
                eps,
            );
        }
    }

    /// `out = LayerNorm(input W^T + b + residual)`: the product on this thread's columns, then
    /// (after a barrier) the norm on its rows, packed into `pass.packed`; a barrier after each.
    ///
    /// # Safety
    /// As `encode_amx_thread`; `out`, `residual` and the product's input are different buffers.
    unsafe fn dense_add_norm(
        &self,
        pass: &Pass,
        (linear, input): (&Linear, &Shared<u16>),
        out: &Shared<f32>,
        (residual, norm): (&Shared<f32>, &super::Norm),
        (t, n, barrier, tiles): (usize, usize, &SpinBarrier, &Range<usize>),
        eps: f32,
    ) {
        let pairs = share(linear.amx_pairs().expect("amx_team_fits"), t, n);
        let rows = tiles.start * ROWS_PER_TILE..tiles.end * ROWS_PER_TILE;
        unsafe {
            linear.forward_amx_pairs(input.all(), pass.total, out.ptr, pairs);
            barrier.wait();
            self.norm_rows(pass, out, residual, norm, &rows, tiles.start, eps);
            barrier.wait();
        }
    }

    /// `x = LayerNorm(x + residual)` on the rows of this thread's tiles, each packed into
    /// `pass.packed` (padding rows as zeros).
    ///
    /// # Safety
    /// `rows` are this thread's; nobody writes `residual` or reads `x` and `pass.packed` in these
    /// rows during the step.
    #[allow(clippy::too_many_arguments)]
    unsafe fn norm_rows(
        &self,
        pass: &Pass,
        x: &Shared<f32>,
        residual: &Shared<f32>,
        norm: &super::Norm,
        rows: &Range<usize>,
        first_tile: usize,
        eps: f32,
    ) {
        let h = self.cfg.hidden_size;
        let total = pass.total;
        unsafe {
            let packed = pass.packed.part(rows.start * h..rows.end * h);
            let residual = residual.all();
            for r in rows.clone() {
                if r >= total {
                    kernel_amx::pack_row(None, r, h, first_tile, packed);
                    continue;
                }
                let row = x.part(r * h..(r + 1) * h);
                add_layer_norm(row, &residual[r * h..][..h], &norm.gamma, &norm.beta, eps);
                kernel_amx::pack_row(Some(row), r, h, first_tile, packed);
            }
        }
    }
}
