//! LoRA §7's normalised subspace similarity between two sets of orthonormal columns:
//! `φ(U_1, U_2, i, j) = ‖U_{1,:i}ᵀ U_{2,:j}‖_F² / min(i, j)`, in [0, 1].

use faer::MatRef;

/// φ between the first `i` columns of `u1: [d, ≥i]` and the first `j` columns of `u2: [d, ≥j]`.
/// Columns are assumed orthonormal (singular vectors). `i`, `j` are capped at the column counts.
pub fn subspace_similarity(u1: MatRef<'_, f64>, u2: MatRef<'_, f64>, i: usize, j: usize) -> f64 {
    let i = i.min(u1.ncols());
    let j = j.min(u2.ncols());
    if i == 0 || j == 0 || u1.nrows() != u2.nrows() {
        return 0.0;
    }
    let g = u1.subcols(0, i).transpose() * u2.subcols(0, j);
    let f2 = crate::linalg::fro(g.as_ref()).powi(2);
    f2 / i.min(j) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::random_orthonormal;

    #[test]
    fn identical_nested_and_orthogonal_subspaces() {
        let q = random_orthonormal(40, 12, 3);
        assert!((subspace_similarity(q.as_ref(), q.as_ref(), 8, 8) - 1.0).abs() < 1e-12);
        // top-4 is contained in top-12: φ = 1
        assert!((subspace_similarity(q.as_ref(), q.as_ref(), 4, 12) - 1.0).abs() < 1e-12);
        // disjoint column blocks of one orthonormal matrix are orthogonal: φ = 0
        let a = q.subcols(0, 6);
        let b = q.subcols(6, 6);
        assert!(subspace_similarity(a, b, 6, 6).abs() < 1e-12);
        // random subspaces of dimension 2 in R^40: φ ≈ 2/40 on average, far from 1
        let r = random_orthonormal(40, 2, 99);
        assert!(subspace_similarity(q.as_ref(), r.as_ref(), 2, 2) < 0.5);
    }
}
