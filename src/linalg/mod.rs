//! The bridge between stored tensors and faer: a row-major f32 matrix type in PyTorch layout,
//! conversions to faer (column-major, f64 for accumulation), SVDs, and orthonormal bases.
//!
//! Layout contract: [`Matrix`] is row-major `[rows, cols]`, exactly as PyTorch / safetensors store a
//! 2-D tensor, so a linear weight is `[out, in]`, LoRA A is `[r, in]`, LoRA B is `[out, r]`.
//! faer matrices are column-major; the conversions below index by (row, col) so the meaning is kept.

pub mod rows;

pub use rows::{Basis, RowsRef, SvdFactors};

use crate::error::{Error, Result};
use faer::{Mat, MatRef};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use sha2::{Digest, Sha256};

/// A dense f32 matrix, row-major `[rows, cols]` (PyTorch layout).
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols` values, row `i` at `data[i*cols..(i+1)*cols]`.
    pub data: Vec<f32>,
}

impl Matrix {
    /// Builds a matrix, checking that `data.len() == rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        // checked: a lying header's dims can overflow `rows * cols` (found by fuzzing).
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::shape(
                "matrix",
                format!("{} values for a {rows}x{cols} matrix", data.len()),
            ));
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Value at (row, col).
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.cols + j]
    }

    /// The values as a row-major view (no copy).
    pub fn rows_ref(&self) -> RowsRef<'_> {
        RowsRef::f32(&self.data, self.rows, self.cols).expect("Matrix::new checked the length")
    }

    /// faer copy in f64: `[rows, cols]`, same (row, col) meaning.
    pub fn to_f64(&self) -> Mat<f64> {
        Mat::from_fn(self.rows, self.cols, |i, j| self.at(i, j) as f64)
    }

    /// faer copy in f32: `[rows, cols]`.
    pub fn to_f32(&self) -> Mat<f32> {
        Mat::from_fn(self.rows, self.cols, |i, j| self.at(i, j))
    }

    /// Row-major f32 copy of a faer matrix (rounded from f64).
    pub fn from_faer(m: MatRef<'_, f64>) -> Self {
        let (rows, cols) = (m.nrows(), m.ncols());
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(m[(i, j)] as f32);
            }
        }
        Matrix { rows, cols, data }
    }

    /// The transpose, `[cols, rows]`.
    pub fn transpose(&self) -> Matrix {
        let mut data = vec![0f32; self.data.len()];
        for i in 0..self.rows {
            for j in 0..self.cols {
                data[j * self.rows + i] = self.at(i, j);
            }
        }
        Matrix {
            rows: self.cols,
            cols: self.rows,
            data,
        }
    }

    /// Hex sha256 over shape and the little-endian f32 bytes: the identity of a weight for caching.
    pub fn content_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update((self.rows as u64).to_le_bytes());
        h.update((self.cols as u64).to_le_bytes());
        for chunk in self.data.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
            h.update(&bytes);
        }
        crate::fsutil::hex(&h.finalize())
    }
}

/// Floating-point precision an SVD is computed in. Results are always handed out as f64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32, as the official LoRA-Dash code does (`torch.linalg.svd` on f32); ~2x faster.
    #[default]
    F32,
    /// f64 throughout.
    F64,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "f64" => Ok(Precision::F64),
            other => Err(Error::InvalidArgument(format!(
                "precision `{other}`: expected f32 or f64"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        })
    }
}

/// Thin SVD `W = U diag(s) Vᵀ` of an `n×m` matrix, `k = min(n, m)`.
#[derive(Clone, Debug)]
pub struct Svd {
    /// Left singular vectors, `n×k`, columns orthonormal.
    pub u: Mat<f64>,
    /// Singular values, length `k`, non-increasing, non-negative.
    pub s: Vec<f64>,
    /// Right singular vectors, `m×k`, columns orthonormal.
    pub v: Mat<f64>,
}

impl Svd {
    /// `k = min(n, m)`.
    pub fn rank_dim(&self) -> usize {
        self.s.len()
    }
}

/// Host bytes one SVD of an `[out, in]` weight holds at its peak, `k = min(out, in)`: the f32
/// weight, faer's copy and workspace (≈ 2 × 8·out·in) and the f64 factors U `[out, k]`,
/// V `[in, k]`.
pub fn svd_working_bytes(out: usize, inp: usize) -> usize {
    let k = out.min(inp);
    4 * out * inp + 16 * out * inp + 8 * (out + inp) * k
}

/// Thin SVD of a dense matrix `w: [n, m]` in the given precision.
pub fn svd(w: &Matrix, precision: Precision) -> Result<Svd> {
    match precision {
        Precision::F64 => svd_f64(w.to_f64().as_ref()),
        Precision::F32 => {
            let m = w.to_f32();
            let d = m.thin_svd().map_err(|e| Error::Numerical {
                context: "SVD (f32)".into(),
                reason: format!("{e:?}"),
            })?;
            let (u, s, v) = (d.U(), d.S(), d.V());
            let k = s.dim();
            Ok(Svd {
                u: Mat::from_fn(u.nrows(), k, |i, j| u[(i, j)] as f64),
                s: (0..k).map(|i| s[i] as f64).collect(),
                v: Mat::from_fn(v.nrows(), k, |i, j| v[(i, j)] as f64),
            })
        }
    }
}

/// Thin SVD of an f64 faer matrix `[n, m]`.
pub fn svd_f64(w: MatRef<'_, f64>) -> Result<Svd> {
    let d = w.thin_svd().map_err(|e| Error::Numerical {
        context: "SVD (f64)".into(),
        reason: format!("{e:?}"),
    })?;
    let (u, s, v) = (d.U(), d.S(), d.V());
    let k = s.dim();
    Ok(Svd {
        u: u.to_owned(),
        s: (0..k).map(|i| s[i]).collect(),
        v: v.to_owned(),
    })
}

/// Thin SVD of the product `B·A` (`b: [n, q]`, `a: [q, m]`) without forming it:
/// `B = Q_b R_b`, `Aᵀ = Q_a R_a`, SVD of the small `R_b R_aᵀ = P S Qᵀ`, then `U = Q_b P`, `V = Q_a Q`.
/// Returns `q` singular triplets (some may be zero). Cost O((n+m)·q²), never O(n·m).
pub fn low_rank_svd(b: MatRef<'_, f64>, a: MatRef<'_, f64>) -> Result<Svd> {
    let q = b.ncols();
    if a.nrows() != q {
        return Err(Error::shape(
            "low-rank SVD",
            format!(
                "B is {}x{q} but A is {}x{}",
                b.nrows(),
                a.nrows(),
                a.ncols()
            ),
        ));
    }
    if q > b.nrows() || q > a.ncols() {
        // More factors than either dimension: the product is no longer thin; go dense.
        let dense = b * a;
        return svd_f64(dense.as_ref());
    }
    let qb = b.qr();
    let qa = a.transpose().qr();
    let core = qb.thin_R() * qa.thin_R().transpose();
    let small = svd_f64(core.as_ref())?;
    Ok(Svd {
        u: qb.compute_thin_Q() * &small.u,
        s: small.s,
        v: qa.compute_thin_Q() * &small.v,
    })
}

/// A seeded random `n×r` matrix with orthonormal columns (QR of a Gaussian matrix).
pub fn random_orthonormal(n: usize, r: usize, seed: u64) -> Mat<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let g: Mat<f64> = Mat::from_fn(n, r, |_, _| StandardNormal.sample(&mut rng));
    g.qr().compute_thin_Q()
}

/// Frobenius norm of a faer matrix, accumulated in f64.
pub fn fro(m: MatRef<'_, f64>) -> f64 {
    let mut acc = 0.0;
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            acc += m[(i, j)] * m[(i, j)];
        }
    }
    acc.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, m: usize, seed: u64) -> Mat<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Mat::from_fn(n, m, |_, _| StandardNormal.sample(&mut rng))
    }

    #[test]
    fn layout_round_trip_keeps_row_col_meaning() {
        let m = Matrix::new(2, 3, vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let f = m.to_f64();
        assert_eq!(f[(0, 2)], 3.0);
        assert_eq!(f[(1, 0)], 4.0);
        assert_eq!(Matrix::from_faer(f.as_ref()), m);
        let t = m.transpose();
        assert_eq!((t.rows, t.cols), (3, 2));
        assert_eq!(t.at(2, 1), 6.0);
        assert!(Matrix::new(2, 2, vec![0.0; 3]).is_err());
    }

    #[test]
    fn svd_reconstructs_and_is_sorted_in_both_precisions() {
        let w = random(30, 20, 1);
        let m = Matrix::from_faer(w.as_ref());
        for p in [Precision::F32, Precision::F64] {
            let d = svd(&m, p).unwrap();
            assert_eq!(d.s.len(), 20);
            assert!(d.s.windows(2).all(|x| x[0] >= x[1]));
            let rec = &d.u
                * Mat::from_fn(20, 20, |i, j| if i == j { d.s[i] } else { 0.0 })
                * d.v.transpose();
            let err = fro((&rec - &m.to_f64()).as_ref()) / fro(m.to_f64().as_ref());
            let tol = if p == Precision::F32 { 1e-5 } else { 1e-12 };
            assert!(err < tol, "{p}: relative reconstruction error {err}");
        }
    }

    #[test]
    fn low_rank_svd_matches_dense_svd() {
        let b = random(40, 3, 2);
        let a = random(3, 25, 3);
        let fast = low_rank_svd(b.as_ref(), a.as_ref()).unwrap();
        let dense = svd_f64((&b * &a).as_ref()).unwrap();
        for i in 0..3 {
            assert!((fast.s[i] - dense.s[i]).abs() < 1e-10 * dense.s[0]);
            // singular vectors agree up to sign
            let dot: f64 = (0..40).map(|r| fast.u[(r, i)] * dense.u[(r, i)]).sum();
            assert!((dot.abs() - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn random_orthonormal_is_orthonormal_and_seeded() {
        let q = random_orthonormal(50, 6, 7);
        let g = q.transpose() * &q;
        for i in 0..6 {
            for j in 0..6 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((g[(i, j)] - want).abs() < 1e-12);
            }
        }
        assert_eq!(q, random_orthonormal(50, 6, 7));
        assert_ne!(q, random_orthonormal(50, 6, 8));
    }
}
