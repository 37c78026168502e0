//! A weight update ΔW of shape `[n, m]`, kept factored when it is low-rank.

use crate::error::{Error, Result};
use crate::linalg::{self, Svd, SvdFactors};
use faer::{Mat, MatRef};

/// ΔW, `[n, m]` (out × in).
#[derive(Clone, Debug)]
pub enum Update {
    /// `ΔW = B·A`, with any scaling already folded into `b`: `b` is `[n, q]`, `a` is `[q, m]`.
    /// A LoRA update is `b = (α/r)·B`, `a = A`; a LoRA-Dash update appends `Ū diag(Δσ)` to `b`
    /// and `V̄ᵀ` to `a` (README, Definitions: LoRA-Dash, merged).
    LowRank { b: Mat<f64>, a: Mat<f64> },
    /// A dense ΔW `[n, m]`, e.g. `W* − W` from full fine-tuning.
    Dense(Mat<f64>),
}

impl Update {
    /// A low-rank update from factors, checking that `b: [n, q]` and `a: [q, m]` agree.
    pub fn low_rank(b: Mat<f64>, a: Mat<f64>) -> Result<Self> {
        if b.ncols() != a.nrows() {
            return Err(Error::shape(
                "low-rank update",
                format!(
                    "B is {}x{} but A is {}x{}",
                    b.nrows(),
                    b.ncols(),
                    a.nrows(),
                    a.ncols()
                ),
            ));
        }
        Ok(Update::LowRank { b, a })
    }

    /// `(n, m)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            Update::LowRank { b, a } => (b.nrows(), a.ncols()),
            Update::Dense(d) => (d.nrows(), d.ncols()),
        }
    }

    /// Inner dimension of the factors (`q`), or `min(n, m)` for a dense update.
    pub fn factor_rank(&self) -> usize {
        match self {
            Update::LowRank { b, .. } => b.ncols(),
            Update::Dense(d) => d.nrows().min(d.ncols()),
        }
    }

    /// The dense matrix `[n, m]` (O(n·m) memory; avoid for large low-rank updates).
    pub fn to_dense(&self) -> Mat<f64> {
        match self {
            Update::LowRank { b, a } => b * a,
            Update::Dense(d) => d.clone(),
        }
    }

    /// `‖ΔW‖_F`. Low-rank: `sqrt(trace((BᵀB)(AAᵀ)))`, never forming ΔW.
    pub fn frobenius(&self) -> f64 {
        match self {
            Update::LowRank { b, a } => {
                let btb = b.transpose() * b;
                let aat = a * a.transpose();
                let q = btb.nrows();
                let mut t = 0.0;
                for i in 0..q {
                    for j in 0..q {
                        t += btb[(i, j)] * aat[(j, i)];
                    }
                }
                t.max(0.0).sqrt()
            }
            Update::Dense(d) => linalg::fro(d.as_ref()),
        }
    }

    /// Coordinates on a basis pair: `p_i = u_iᵀ ΔW v_i` for each column `i` of `u: [n, k]`, `v: [m, k]`.
    ///
    /// Low-rank: `p = rowsum((UᵀB) ∘ (AV))`, cost O(q·(n+m)·k); dense: `rowsum((UᵀΔW) ∘ Vᵀ)`.
    /// All accumulation is in f64.
    pub fn coordinates(&self, u: MatRef<'_, f64>, v: MatRef<'_, f64>) -> Vec<f64> {
        let k = u.ncols();
        match self {
            Update::LowRank { b, a } => {
                let utb = u.transpose() * b; // [k, q]
                let av = a * v; // [q, k]
                (0..k)
                    .map(|i| (0..b.ncols()).map(|j| utb[(i, j)] * av[(j, i)]).sum())
                    .collect()
            }
            Update::Dense(d) => {
                let utd = u.transpose() * d; // [k, m]
                (0..k)
                    .map(|i| (0..d.ncols()).map(|c| utd[(i, c)] * v[(c, i)]).sum())
                    .collect()
            }
        }
    }

    /// [`Update::coordinates`] on a weight's [`SvdFactors`]: `p_i = u_iᵀ ΔW v_i` for `i < k`.
    ///
    /// Low-rank: `p = rowsum((UᵀB) ∘ (VᵀAᵀ))` with both products read straight from the stored
    /// U `[n, k]` and V `[m, k]` (one pass each, f64 products and sums): O((n+m)·k·q), no f64 copy
    /// of U or V and no `[k, k]` or `[n, m]` intermediate. Dense: U and V widened, then as above.
    pub fn coordinates_on(&self, f: &SvdFactors) -> Vec<f64> {
        match self {
            Update::LowRank { b, a } => {
                let utb = f.u.rows_ref().t_mul(b.as_ref()); // [k, q]
                let vtat = f.v.rows_ref().t_mul(a.transpose()); // [k, q]
                (0..utb.nrows())
                    .map(|i| (0..b.ncols()).map(|j| utb[(i, j)] * vtat[(i, j)]).sum())
                    .collect()
            }
            Update::Dense(_) => {
                let (u, v) = (f.u.rows_ref().to_f64(), f.v.rows_ref().to_f64());
                self.coordinates(u.as_ref(), v.as_ref())
            }
        }
    }

    /// The top singular triplets of ΔW (at most `factor_rank` for low-rank updates).
    pub fn svd(&self) -> Result<Svd> {
        match self {
            Update::LowRank { b, a } => linalg::low_rank_svd(b.as_ref(), a.as_ref()),
            Update::Dense(d) => linalg::svd_f64(d.as_ref()),
        }
    }
}
