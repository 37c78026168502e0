//! Row-major matrices read in place — a weight's f32 values, or the singular vectors of a
//! memory-mapped SVD-cache entry — and the one product inspect needs from them, `Xᵀ·Y` with a thin
//! `Y`, computed in f64 without widening or copying X.
//!
//! Why: a warm inspect of a LLaMA-7B adapter reads ~29 GB of cached U and V and ~18 GB of weights.
//! Converting each into a faer f64 matrix first cost more than everything else together (a profile
//! of a warm run: ~40 % in the conversion and its page faults); the metrics only ever need
//! `Uᵀ·B`, `Vᵀ·Aᵀ` (q = r columns) and `Wᵀ·[U_r | Q_1]` (2r columns).

use faer::{Mat, MatRef};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

/// Row-major values, `rows * cols` of them, in the precision they were stored in.
#[derive(Clone, Copy, Debug)]
pub enum Values<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

/// A borrowed row-major `[rows, cols]` matrix.
#[derive(Clone, Copy, Debug)]
pub struct RowsRef<'a> {
    pub values: Values<'a>,
    pub rows: usize,
    pub cols: usize,
}

/// Rows per partial sum of [`RowsRef::t_mul`]. Fixed, so that the order of every sum (and so the
/// result, bit for bit) does not depend on the number of threads.
const ROW_BLOCK: usize = 256;
/// Columns of X per accumulator tile.
const TILE: usize = 256;

impl<'a> RowsRef<'a> {
    /// `data` row-major `[rows, cols]`; `None` when the length disagrees.
    pub fn f32(data: &'a [f32], rows: usize, cols: usize) -> Option<Self> {
        (rows.checked_mul(cols) == Some(data.len())).then_some(RowsRef {
            values: Values::F32(data),
            rows,
            cols,
        })
    }

    /// `data` row-major `[rows, cols]`; `None` when the length disagrees.
    pub fn f64(data: &'a [f64], rows: usize, cols: usize) -> Option<Self> {
        (rows.checked_mul(cols) == Some(data.len())).then_some(RowsRef {
            values: Values::F64(data),
            rows,
            cols,
        })
    }

    /// Value at (row, col), widened to f64.
    pub fn at(&self, i: usize, j: usize) -> f64 {
        match self.values {
            Values::F32(d) => d[i * self.cols + j] as f64,
            Values::F64(d) => d[i * self.cols + j],
        }
    }

    /// A faer f64 copy `[rows, cols]` (for the dense paths that need a full product).
    pub fn to_f64(&self) -> Mat<f64> {
        Mat::from_fn(self.rows, self.cols, |i, j| self.at(i, j))
    }

    /// `Xᵀ·Y` for this `X: [n, k]` and `y: [n, q]`: `[k, q]`, every product and sum in f64.
    /// One pass over X; blocks of rows in parallel, their partial sums added in block order.
    pub fn t_mul(&self, y: MatRef<'_, f64>) -> Mat<f64> {
        assert_eq!(y.nrows(), self.rows, "Xᵀ·Y needs as many rows in Y as in X");
        let (n, k, q) = (self.rows, self.cols, y.ncols());
        let blocks: Vec<Range<usize>> = (0..n.div_ceil(ROW_BLOCK))
            .map(|b| b * ROW_BLOCK..((b + 1) * ROW_BLOCK).min(n))
            .collect();
        let partials: Vec<Vec<f64>> = blocks
            .into_par_iter()
            .map(|rows| {
                let yb: Vec<f64> = rows
                    .clone()
                    .flat_map(|r| (0..q).map(move |j| y[(r, j)]))
                    .collect();
                match self.values {
                    Values::F32(d) => block(d, k, q, &yb, rows),
                    Values::F64(d) => block(d, k, q, &yb, rows),
                }
            })
            .collect();
        let mut acc = vec![0.0f64; q * k];
        for p in &partials {
            for (a, x) in acc.iter_mut().zip(p) {
                *a += x;
            }
        }
        Mat::from_fn(k, q, |i, j| acc[j * k + i])
    }
}

/// Partial `Xᵀ·Y` over `rows`: `[q][k]` (j-major), `yb` the block's rows of Y, `[rows][q]`.
fn block<T: Copy + Into<f64>>(
    x: &[T],
    k: usize,
    q: usize,
    yb: &[f64],
    rows: Range<usize>,
) -> Vec<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { block_avx2(x, k, q, yb, rows) };
    }
    block_body(x, k, q, yb, rows)
}

/// The same loop compiled for AVX2. Multiplications and additions stay separate (Rust never
/// fuses them), so the result is bit-identical to the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2<T: Copy + Into<f64>>(
    x: &[T],
    k: usize,
    q: usize,
    yb: &[f64],
    rows: Range<usize>,
) -> Vec<f64> {
    block_body(x, k, q, yb, rows)
}

#[inline(always)]
fn block_body<T: Copy + Into<f64>>(
    x: &[T],
    k: usize,
    q: usize,
    yb: &[f64],
    rows: Range<usize>,
) -> Vec<f64> {
    // Column tiles: the q accumulator slices of a tile (q × TILE f64) stay in L1 while the
    // block's rows stream by.
    let mut acc = vec![0.0f64; q * k];
    for c0 in (0..k).step_by(TILE) {
        let c1 = (c0 + TILE).min(k);
        for (ri, r) in rows.clone().enumerate() {
            let xr = &x[r * k + c0..r * k + c1];
            for (j, &yv) in yb[ri * q..(ri + 1) * q].iter().enumerate() {
                for (a, &xv) in acc[j * k + c0..j * k + c1].iter_mut().zip(xr) {
                    *a += xv.into() * yv;
                }
            }
        }
    }
    acc
}

/// Where a [`Basis`]'s values live.
#[derive(Debug)]
enum Store {
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Inside a memory-mapped file: f32 or f64 values at a byte range, aligned (checked when made).
    Mapped {
        map: Arc<memmap2::Mmap>,
        bytes: Range<usize>,
        f64: bool,
    },
}

/// Singular vectors `[rows, k]`, row-major, in the SVD's precision: owned, or read in place from a
/// memory-mapped cache entry.
#[derive(Debug)]
pub struct Basis {
    store: Store,
    pub rows: usize,
    pub cols: usize,
}

impl Basis {
    /// Row-major copy of a faer matrix, rounded to f32 (exact for an f32 SVD widened to f64).
    pub fn f32_from(m: MatRef<'_, f64>) -> Self {
        let data = (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)] as f32))
            .collect();
        Basis {
            store: Store::F32(data),
            rows: m.nrows(),
            cols: m.ncols(),
        }
    }

    /// Row-major copy of a faer matrix in f64.
    pub fn f64_from(m: MatRef<'_, f64>) -> Self {
        let data = (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
            .collect();
        Basis {
            store: Store::F64(data),
            rows: m.nrows(),
            cols: m.ncols(),
        }
    }

    /// Little-endian values of `[rows, cols]` at `bytes` of `map`, read in place when the host is
    /// little-endian and the range is aligned for the type, else decoded into an owned copy.
    /// `None` when the range does not hold exactly `rows * cols` values.
    pub fn mapped(
        map: &Arc<memmap2::Mmap>,
        bytes: Range<usize>,
        f64: bool,
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        let size = if f64 { 8 } else { 4 };
        let raw = map.get(bytes.clone())?;
        if rows.checked_mul(cols)?.checked_mul(size)? != raw.len() {
            return None;
        }
        let align = if f64 {
            std::mem::align_of::<f64>()
        } else {
            std::mem::align_of::<f32>()
        };
        let store =
            if cfg!(target_endian = "little") && (raw.as_ptr() as usize).is_multiple_of(align) {
                Store::Mapped {
                    map: map.clone(),
                    bytes,
                    f64,
                }
            } else if f64 {
                Store::F64(
                    raw.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                )
            } else {
                Store::F32(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect(),
                )
            };
        Some(Basis { store, rows, cols })
    }

    /// The values as a row-major view.
    pub fn rows_ref(&self) -> RowsRef<'_> {
        let values = match &self.store {
            Store::F32(d) => Values::F32(d),
            Store::F64(d) => Values::F64(d),
            Store::Mapped { map, bytes, f64 } => {
                let raw = &map[bytes.clone()];
                let n = self.rows * self.cols;
                // SAFETY: `mapped` checked the length, the alignment and the host's byte order;
                // the map lives as long as `self`, and entries are replaced only by rename, never
                // written in place.
                unsafe {
                    if *f64 {
                        Values::F64(std::slice::from_raw_parts(raw.as_ptr().cast::<f64>(), n))
                    } else {
                        Values::F32(std::slice::from_raw_parts(raw.as_ptr().cast::<f32>(), n))
                    }
                }
            }
        };
        RowsRef {
            values,
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Whether every value is finite.
    pub fn all_finite(&self) -> bool {
        // A fold rather than `all`: no early exit, so the loop vectorises.
        match self.rows_ref().values {
            Values::F32(d) => d
                .chunks(4096)
                .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite())),
            Values::F64(d) => d
                .chunks(4096)
                .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite())),
        }
    }
}

/// A weight's SVD as inspect reads it: σ (f64) and U `[n, k]`, V `[m, k]` as [`Basis`]es.
#[derive(Debug)]
pub struct SvdFactors {
    pub s: Vec<f64>,
    pub u: Basis,
    pub v: Basis,
}

impl SvdFactors {
    /// The factors of a computed SVD, stored in its precision (f32 values are exact: the SVD was
    /// computed in f32), so that a fresh SVD and its cache entry give bit-identical metrics.
    pub fn from_svd(d: &super::Svd, precision: super::Precision) -> Self {
        let basis = |m: MatRef<'_, f64>| match precision {
            super::Precision::F32 => Basis::f32_from(m),
            super::Precision::F64 => Basis::f64_from(m),
        };
        SvdFactors {
            s: d.s.clone(),
            u: basis(d.u.as_ref()),
            v: basis(d.v.as_ref()),
        }
    }

    /// The f64 faer form (U and V widened: `8·(n + m)·k` bytes).
    pub fn to_svd(&self) -> super::Svd {
        super::Svd {
            u: self.u.rows_ref().to_f64(),
            s: self.s.clone(),
            v: self.v.rows_ref().to_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    fn random(n: usize, m: usize, seed: u64) -> Mat<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Mat::from_fn(n, m, |_, _| StandardNormal.sample(&mut rng))
    }

    /// Xᵀ·Y against faer's product, across block and tile edges, for f32 and f64 storage; and
    /// the same bits whatever the thread count.
    #[test]
    fn t_mul_matches_the_dense_product_and_ignores_the_thread_count() {
        let (n, k, q) = (ROW_BLOCK * 2 + 37, TILE + 19, 5);
        let x = random(n, k, 1);
        let y = random(n, q, 2);
        let want = x.transpose() * &y;
        let b64 = Basis::f64_from(x.as_ref());
        let b32 = Basis::f32_from(x.as_ref());
        let x32 = b32.rows_ref().to_f64();
        let want32 = x32.transpose() * &y;
        let got64 = b64.rows_ref().t_mul(y.as_ref());
        let got32 = b32.rows_ref().t_mul(y.as_ref());
        for i in 0..k {
            for j in 0..q {
                let s = 1.0 + want[(i, j)].abs();
                assert!((got64[(i, j)] - want[(i, j)]).abs() < 1e-11 * s);
                assert!((got32[(i, j)] - want32[(i, j)]).abs() < 1e-11 * s);
            }
        }
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| b32.rows_ref().t_mul(y.as_ref()));
        assert_eq!(one, got32);
    }

    #[test]
    fn mapped_values_read_in_place_equal_the_owned_copy() {
        let x = random(9, 4, 3);
        let b = Basis::f32_from(x.as_ref());
        let Values::F32(vals) = b.rows_ref().values else {
            unreachable!()
        };
        let mut bytes = vec![0u8; 8];
        bytes.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::write(&p, &bytes).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
        let m = Basis::mapped(&map, 8..bytes.len(), false, 9, 4).unwrap();
        assert!(matches!(m.store, Store::Mapped { .. }));
        assert_eq!(m.rows_ref().to_f64(), b.rows_ref().to_f64());
        // Misaligned: decoded into a copy, same values.
        let mut shifted = vec![0u8; 9];
        shifted.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(&p, &shifted).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
        let c = Basis::mapped(&map, 9..shifted.len(), false, 9, 4).unwrap();
        assert!(matches!(c.store, Store::F32(_)));
        assert_eq!(c.rows_ref().to_f64(), b.rows_ref().to_f64());
        assert!(Basis::mapped(&map, 9..shifted.len(), false, 9, 5).is_none());
        assert!(c.all_finite());
    }
}
