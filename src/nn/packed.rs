//! An f32 matrix product for frozen weights packed once: `Y[m, n] = X[m, k] · Wᵀ` with `W [n, k]`
//! a constant matrix ([`PackedF32`]), giving the same bits as candle's matmul through `gemm`'s
//! AVX-512F kernels.
//!
//! Why: `gemm` repacks `Wᵀ` on every call, reading `W` across its rows (a gather along the long
//! inner dimension). On a decode step (64 rows: beams × batch) that repacking costs as much as the
//! arithmetic: the default model's 64-row products ran at 123–331 GFLOP/s through the bare `gemm`
//! and at 420–474 packed once (`tsd bench roofline`, AMD Zen 5, 2 threads,
//! `reproductions/bench/hosts/amd-f26m2-2c/roofline.json`). Evaluation packs its weights once ([`crate::model::Llama::use_packed_products`]);
//! training packs only the LM head ([`crate::model::Llama::use_packed_head`]: the fused head
//! loss multiplies by all of it for every 128-row block), since every copy counts against the
//! step's peak memory.
//!
//! Same bits: each output element is `gemm`'s sum — a chain of FMAs over the inner index in order,
//! from zero, in the inner-dimension blocks `gemm` uses for this shape (`kc`, from
//! `gemm_common::cache::kernel_params` for its AVX-512F f32 kernel: 64 × 6 registers), each
//! block's chain added to the output once (`y = acc` for the first, `y = y + acc` after, the
//! rounding of `gemm`'s `beta·acc + dst` with `beta = 1`). `gemm` takes other paths for 1-row
//! products (gemv), tiny ones (`m·n ≤ 256`, horizontal kernels) and `k ≤ 2` ([`takes_general_path`]
//! says which it takes); callers keep `gemm` there. Tests compare bits with candle's matmul.
//!
//! Layout: `W` in groups of [`GROUP`] output columns (the last may be narrower, in whole 16-lane
//! panels, zero-padded past `n`): a group holds, for each inner index, its columns' values next to
//! each other (`[k][width]`), what one step of the register-blocked kernel loads. A call packs `X`
//! into 6-row tiles (`[k][6]` within each inner block) so the kernel's broadcasts read one stream.
//!
//! Only on x86-64 where `gemm` runs its AVX-512F kernels ([`available`]); elsewhere [`matmul`]
//! returns an error and callers keep candle's matmul.

use candle_core::{bail, Result};
use rayon::prelude::*;

/// Output columns per group: four 16-lane registers, `gemm`'s AVX-512F `MR` (64).
pub const GROUP: usize = 64;
/// Rows per register tile: `gemm`'s AVX-512F `NR` (6); 4 × 6 accumulators of 32 registers.
const TILE: usize = 6;

/// Whether this process's `gemm` runs its AVX-512F f32 kernels, the ones [`matmul`] matches
/// (decided once: every product asks).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| crate::kernels::current().name == "avx512f")
}

/// Whether `gemm` computes `x·Wᵀ` (`m` rows, `n` outputs, inner `k`, `W` read as a `[k, n]`
/// view) with its general blocked kernels, the path [`matmul`] reproduces: not a gemv (one row),
/// not its horizontal kernels (`m·n ≤ 256`), not `k ≤ 2`.
pub fn takes_general_path(m: usize, n: usize, k: usize) -> bool {
    m >= 2 && k > 2 && m * n > 256
}

/// The inner-dimension block `gemm` uses for an `[m, k] · [k, n]` product on its AVX-512F path
/// (its dispatch computes the transposed product: `n` of its `m`, `m` of its `n`).
fn gemm_kc(m: usize, n: usize, k: usize) -> usize {
    if n <= 64 && m <= 64 {
        k.min(512)
    } else {
        gemm_common::cache::kernel_params(n, m, k, GROUP, TILE, std::mem::size_of::<f32>()).kc
    }
}

/// A constant `W [n, k]` packed for [`matmul`] (see the module's doc for the layout).
#[derive(Clone)]
pub struct PackedF32 {
    n: usize,
    k: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32 [{}, {}]", self.n, self.k)
    }
}

impl PackedF32 {
    /// Packs `w`, row-major `[n, k]` (a linear's `[out, in]` weight).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Result<Self> {
        if w.len() != n * k {
            bail!("packed f32: {} values for [{n}, {k}]", w.len())
        }
        Ok(Self::pack_with(n, k, |j, i| w[j * k + i]))
    }

    /// Packs `W [n, k]` given as its transpose `wt`, row-major `[k, n]` (a weight stored
    /// transposed, as `FrozenLinear` keeps `down_proj`).
    pub fn pack_transposed(wt: &[f32], n: usize, k: usize) -> Result<Self> {
        if wt.len() != n * k {
            bail!("packed f32: {} values for [{k}, {n}]", wt.len())
        }
        Ok(Self::pack_with(n, k, |j, i| wt[i * n + j]))
    }

    /// Packs the `[n, k]` matrix whose `(j, i)` value is `at(j, i)`, one group per task (≤ 64 × k
    /// values: in L2).
    fn pack_with(n: usize, k: usize, at: impl Fn(usize, usize) -> f32 + Sync) -> Self {
        let mut data = vec![0f32; Self::bytes_for(n, k) / std::mem::size_of::<f32>()];
        data.par_chunks_mut((GROUP * k).max(1))
            .enumerate()
            .for_each(|(g, group)| {
                let width = group.len() / k.max(1);
                let live = width.min(n.saturating_sub(g * GROUP));
                for (i, line) in group.chunks_mut(width).enumerate() {
                    for (j, v) in line[..live].iter_mut().enumerate() {
                        *v = at(g * GROUP + j, i);
                    }
                }
            });
        PackedF32 { n, k, data }
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inner dimension.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes of the packed matrix.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }

    /// Bytes a packed `[n, k]` matrix takes: `n` padded to whole 16-lane panels.
    pub fn bytes_for(n: usize, k: usize) -> usize {
        n.div_ceil(16) * 16 * k * std::mem::size_of::<f32>()
    }
}

/// `y = x · Wᵀ` for `x: [m, k]` and `y: [m, n]` (both row-major f32; `y` is overwritten), `W` =
/// `p`. Errors on sizes that do not match `p`, on a shape `gemm` takes another path for
/// ([`takes_general_path`]) and where [`available`] is false.
pub fn matmul(x: &[f32], m: usize, p: &PackedF32, y: &mut [f32]) -> Result<()> {
    let (n, k) = (p.n, p.k);
    if x.len() != m * k || y.len() != m * n {
        bail!(
            "packed f32 matmul: x has {} values for [{m}, {k}], y {} for [{m}, {n}]",
            x.len(),
            y.len()
        )
    }
    if !takes_general_path(m, n, k) {
        bail!("packed f32 matmul: [{m}, {k}]·[{k}, {n}] is not on gemm's general path")
    }
    if !available() {
        bail!("packed f32 matmul: gemm does not run its AVX-512F kernels here")
    }
    #[cfg(target_arch = "x86_64")]
    x86::matmul(x, m, p, y, gemm_kc(m, n, k));
    Ok(())
}

// The AVX-512 intrinsics are stable since Rust 1.89, the crate's `rust-version`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PackedF32, GROUP, TILE};
    use rayon::prelude::*;
    use std::arch::x86_64::*;

    /// `y`'s base pointer shared by the tasks, each writing its own rectangle of `y`.
    #[derive(Clone, Copy)]
    struct Out(*mut f32);
    // SAFETY: the tasks of one `matmul` write disjoint rectangles (column group × row tiles) of
    // the `y` it borrows mutably for the whole parallel section; nothing reads what another writes.
    unsafe impl Send for Out {}
    unsafe impl Sync for Out {}
    impl Out {
        fn get(self) -> *mut f32 {
            self.0
        }
    }

    /// One product's operands and shape, shared by its tasks.
    struct Job<'a> {
        /// `x` in 6-row tiles: tile `t` at `t·6·k`, its inner blocks one after another, each
        /// `[kb][6]`.
        xt: &'a [f32],
        p: &'a PackedF32,
        m: usize,
        kc: usize,
    }

    pub(super) fn matmul(x: &[f32], m: usize, p: &PackedF32, y: &mut [f32], kc: usize) {
        let k = p.k;
        let tiles = m.div_ceil(TILE);
        let mut xt = vec![0f32; tiles * TILE * k];
        xt.par_chunks_mut(TILE * k)
            .enumerate()
            .for_each(|(t, dst)| pack_tile(x, m, k, kc, t, dst));
        let job = Job { xt: &xt, p, m, kc };
        let groups = p.n.div_ceil(GROUP);
        let chunks = rayon::current_num_threads().clamp(1, tiles);
        let out = Out(y.as_mut_ptr());
        (0..groups * chunks).into_par_iter().for_each(|task| {
            let (g, c) = (task / chunks, task % chunks);
            let t = (tiles * c / chunks, tiles * (c + 1) / chunks);
            // SAFETY: `matmul` runs only where `available()` saw AVX-512F; the task writes rows
            // of tiles `t` × the columns of group `g` of `y` (`[m, n]`), disjoint from every
            // other task's; `xt` and `p.data` hold what `group` reads (see `Job`, `PackedF32`).
            unsafe { group(&job, g, t, out.get()) }
        });
    }

    /// Rows `6t..6t+6` of `x` (`[m, k]`) into `dst`, `[kb][6]` per inner block of `kc`.
    fn pack_tile(x: &[f32], m: usize, k: usize, kc: usize, t: usize, dst: &mut [f32]) {
        for k0 in (0..k).step_by(kc) {
            let kb = kc.min(k - k0);
            let blk = &mut dst[k0 * TILE..(k0 + kb) * TILE];
            for r in 0..TILE.min(m - t * TILE) {
                let row = (t * TILE + r) * k;
                for (i, v) in x[row + k0..row + k0 + kb].iter().enumerate() {
                    blk[i * TILE + r] = *v;
                }
            }
        }
    }

    /// Column group `g` of `y` for row tiles `t.0..t.1`, inner block by inner block.
    #[target_feature(enable = "avx512f")]
    unsafe fn group(job: &Job, g: usize, t: (usize, usize), y: *mut f32) {
        let (p, k, n) = (job.p, job.p.k, job.p.n);
        let panels = (n.div_ceil(16) - 4 * g).min(4);
        let width = 16 * panels;
        let cols = (n - g * GROUP).min(width);
        for k0 in (0..k).step_by(job.kc) {
            let kb = job.kc.min(k - k0);
            let w = p.data.as_ptr().add(g * GROUP * k + k0 * width);
            for tile in t.0..t.1 {
                let rows = (job.m - tile * TILE).min(TILE);
                let s = Step {
                    x: job.xt.as_ptr().add(tile * TILE * k + k0 * TILE),
                    w,
                    width,
                    kb,
                    y: y.add(tile * TILE * n + g * GROUP),
                    ldy: n,
                    cols,
                    first: k0 == 0,
                };
                match panels {
                    1 => rows_of::<1>(s, rows),
                    2 => rows_of::<2>(s, rows),
                    3 => rows_of::<3>(s, rows),
                    _ => rows_of::<4>(s, rows),
                }
            }
        }
    }

    /// One register tile's operands: `kb` inner steps of packed `x` (`[kb][6]`) and `W`
    /// (`[kb][width]`), into `y` (row stride `ldy`, `cols` valid columns).
    #[derive(Clone, Copy)]
    struct Step {
        x: *const f32,
        w: *const f32,
        width: usize,
        kb: usize,
        y: *mut f32,
        ldy: usize,
        cols: usize,
        first: bool,
    }

    #[inline(always)]
    unsafe fn rows_of<const P: usize>(s: Step, rows: usize) {
        match rows {
            1 => tile::<P, 1>(s),
            2 => tile::<P, 2>(s),
            3 => tile::<P, 3>(s),
            4 => tile::<P, 4>(s),
            5 => tile::<P, 5>(s),
            _ => tile::<P, 6>(s),
        }
    }

    /// `R` rows × `P` panels: per inner step, `acc = fma(w, x, acc)` (gemm's order), then the
    /// block's sums stored (`first`) or added to `y`.
    #[inline(always)]
    unsafe fn tile<const P: usize, const R: usize>(s: Step) {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let mut wv = [_mm512_setzero_ps(); P];
        for i in 0..s.kb {
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(s.w.add(i * s.width + p * 16));
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*s.x.add(i * TILE + r));
                for p in 0..P {
                    a[p] = _mm512_fmadd_ps(wv[p], b, a[p]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (p, v) in a.iter().enumerate() {
                let live = s.cols.saturating_sub(p * 16).min(16);
                if live == 0 {
                    continue;
                }
                let mask: __mmask16 = ((1u32 << live) - 1) as u16;
                let dst = s.y.add(r * s.ldy + p * 16);
                let sum = if s.first {
                    *v
                } else {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), *v)
                };
                _mm512_mask_storeu_ps(dst, mask, sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn skip() -> bool {
        if available() {
            return false;
        }
        eprintln!("skipped: gemm does not run its AVX-512F kernels on this CPU");
        true
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }

    /// `x·Wᵀ` both ways: (candle's matmul, the packed kernel's).
    fn both(m: usize, n: usize, k: usize, transposed_w: bool) -> Result<(Vec<f32>, Vec<f32>)> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let wt = if transposed_w {
            w.t()?.contiguous()?
        } else {
            w.t()?
        };
        let reference = x.matmul(&wt)?.flatten_all()?.to_vec1::<f32>()?;
        let p = PackedF32::pack(&w.flatten_all()?.to_vec1::<f32>()?, n, k)?;
        let mut y = vec![f32::NAN; m * n];
        matmul(&x.flatten_all()?.to_vec1::<f32>()?, m, &p, &mut y)?;
        Ok((reference, y))
    }

    /// The same bits as candle's matmul on the default model's shapes (one and several inner
    /// blocks), ragged tiles, groups and panels, and either weight layout.
    #[test]
    fn the_same_bits_as_candle_matmul() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let shapes = [
            (64, 576, 576, false),
            (64, 192, 576, false),
            (64, 576, 1536, true),
            (13, 1536, 576, false),
            (61, 577, 1025, false),
            (7, 100, 300, true),
            (2, 129, 3, false),
            (300, 48, 2049, false),
            (33, 8, 40, false),
        ];
        for (m, n, k, t) in shapes {
            let (reference, y) = both(m, n, k, t)?;
            assert_eq!(bits(&y), bits(&reference), "[{m}, {k}]·[{k}, {n}]");
        }
        Ok(())
    }

    /// The same bits on one thread and on several.
    #[test]
    fn the_same_bits_on_one_and_two_threads() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let (m, n, k) = (37, 200, 700);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 997.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729) % 1000) as f32 / 991.0)
            .collect();
        let p = PackedF32::pack(&w, n, k)?;
        let run = |threads: usize| -> Result<Vec<f32>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let mut y = vec![0f32; m * n];
            pool.install(|| matmul(&x, m, &p, &mut y))?;
            Ok(y)
        };
        assert_eq!(bits(&run(1)?), bits(&run(2)?));
        Ok(())
    }

    /// A weight packed from its transpose is the same packed matrix.
    #[test]
    fn packing_from_the_transpose_is_the_same() -> Result<()> {
        let (n, k) = (70, 33);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let wt: Vec<f32> = (0..k * n).map(|t| w[(t % n) * k + t / n]).collect();
        let (a, b) = (
            PackedF32::pack(&w, n, k)?,
            PackedF32::pack_transposed(&wt, n, k)?,
        );
        assert_eq!(bits(&a.data), bits(&b.data));
        assert_eq!(a.data.len(), 80 * k);
        Ok(())
    }

    /// Shapes `gemm` takes another path for, and wrong sizes, are refused.
    #[test]
    fn other_paths_and_sizes_are_refused() -> Result<()> {
        assert!(!takes_general_path(1, 4096, 576));
        assert!(!takes_general_path(4, 64, 576));
        assert!(!takes_general_path(64, 576, 2));
        assert!(takes_general_path(2, 129, 3));
        let p = PackedF32::pack(&[0.0; 12], 3, 4)?;
        assert!(matmul(&[0.0; 8], 2, &p, &mut [0.0; 6]).is_err());
        assert!(PackedF32::pack(&[0.0; 11], 3, 4).is_err());
        Ok(())
    }
}
