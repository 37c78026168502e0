//! The amplification factor of LoRA (Hu et al. 2021, §7): how strongly ΔW amplifies directions
//! that W itself does not emphasise. With `U_r, V_r` the top-r left/right singular vectors of ΔW,
//! `amp = ‖ΔW‖_F / ‖U_rᵀ W V_r‖_F`. The same projection with W's own top-r basis and with a
//! seeded random orthonormal basis are the two references LoRA's table reports.

use super::Update;
use crate::error::Result;
use crate::linalg::{self, random_orthonormal, RowsRef};
use faer::{Mat, MatRef};

/// LoRA §7 projections for one module, all Frobenius norms.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Amplification {
    /// The r actually used (capped by the rank of ΔW and the shape).
    pub r: usize,
    /// `‖ΔW‖_F`.
    pub delta_fro: f64,
    /// `‖U_rᵀ W V_r‖_F` with U_r, V_r from ΔW.
    pub proj_delta_basis: f64,
    /// `‖U_rᵀ W V_r‖_F` with U_r, V_r from W (= sqrt of the sum of W's top-r σ²).
    pub proj_w_basis: f64,
    /// `‖Q_1ᵀ W Q_2‖_F` with seeded random orthonormal Q_1 `[n, r]`, Q_2 `[m, r]`.
    pub proj_random: f64,
    /// `‖ΔW‖_F / proj_delta_basis` (infinite if ΔW's subspace is orthogonal to W).
    pub factor: f64,
}

/// Amplification of `update` against `w: [n, m]` (row-major, read in place), using `w_sigma`
/// (W's singular values, descending) for the W-basis reference. `r` is capped at the update's
/// rank and `min(n, m)`. Both projections come from one pass over W: `Wᵀ·[U_r | Q_1]` `[m, 2r]`
/// in f64, then `(WᵀU_r)ᵀ V_r` and `(WᵀQ_1)ᵀ Q_2` `[r, r]`.
pub fn amplification(
    w: RowsRef<'_>,
    w_sigma: &[f64],
    update: &Update,
    r: usize,
    seed: u64,
) -> Result<Amplification> {
    let (n, m) = (w.rows, w.cols);
    let d = update.svd()?;
    let r = r.min(d.s.len()).min(n.min(m)).max(1);
    let q1 = random_orthonormal(n, r, seed);
    let q2 = random_orthonormal(m, r, seed.wrapping_add(1));
    let left = Mat::from_fn(
        n,
        2 * r,
        |i, j| {
            if j < r {
                d.u[(i, j)]
            } else {
                q1[(i, j - r)]
            }
        },
    );
    let wt = w.t_mul(left.as_ref()); // [m, 2r]
    let proj = |cols: usize, v: MatRef<'_, f64>| {
        let p = wt.subcols(cols, r).transpose() * v;
        linalg::fro(p.as_ref())
    };
    let proj_delta_basis = proj(0, d.v.subcols(0, r));
    let proj_random = proj(r, q2.as_ref());
    let delta_fro = update.frobenius();
    let proj_w_basis = w_sigma.iter().take(r).map(|s| s * s).sum::<f64>().sqrt();
    let factor = if proj_delta_basis > 0.0 {
        delta_fro / proj_delta_basis
    } else {
        f64::INFINITY
    };
    Ok(Amplification {
        r,
        delta_fro,
        proj_delta_basis,
        proj_w_basis,
        proj_random,
        factor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    /// `‖Uᵀ W V‖_F` for `u: [n, r]`, `w: [n, m]`, `v: [m, r]`, as LoRA §7 writes it.
    fn projection_norm(w: MatRef<'_, f64>, u: MatRef<'_, f64>, v: MatRef<'_, f64>) -> f64 {
        let p = u.transpose() * w * v;
        linalg::fro(p.as_ref())
    }

    #[test]
    fn rank_r_amplification_two_ways_and_planted_case() {
        let (n, m, k) = (30, 20, 20);
        let u = random_orthonormal(n, k, 1);
        let v = random_orthonormal(m, k, 2);
        let sigma: Vec<f64> = (0..k).map(|i| 8.0 * 0.8f64.powi(i as i32)).collect();
        let w = &u * Mat::from_fn(k, k, |i, j| if i == j { sigma[i] } else { 0.0 }) * v.transpose();
        // ΔW = 5·u_15 v_15ᵀ + 2·u_17 v_17ᵀ: its top-2 basis is exactly those directions, so
        // ‖U_rᵀ W V_r‖_F = sqrt(σ_15² + σ_17²) and amp = sqrt(29) / that.
        let b = Mat::from_fn(n, 2, |i, j| {
            if j == 0 {
                5.0 * u[(i, 15)]
            } else {
                2.0 * u[(i, 17)]
            }
        });
        let a = Mat::from_fn(2, m, |j, c| if j == 0 { v[(c, 15)] } else { v[(c, 17)] });
        let low = Update::low_rank(b.clone(), a.clone()).unwrap();
        let dense = Update::Dense(&b * &a);
        let rows: Vec<f64> = (0..n)
            .flat_map(|i| (0..m).map(move |j| (i, j)))
            .map(|(i, j)| w[(i, j)])
            .collect();
        let wr = RowsRef::f64(&rows, n, m).unwrap();
        let x = amplification(wr, &sigma, &low, 2, 9).unwrap();
        let y = amplification(wr, &sigma, &dense, 2, 9).unwrap();
        let want_proj = (sigma[15].powi(2) + sigma[17].powi(2)).sqrt();
        for z in [&x, &y] {
            assert!((z.delta_fro - 29f64.sqrt()).abs() < 1e-10);
            assert!((z.proj_delta_basis - want_proj).abs() < 1e-10);
            assert!((z.factor - 29f64.sqrt() / want_proj).abs() < 1e-8);
            assert!((z.proj_w_basis - (sigma[0].powi(2) + sigma[1].powi(2)).sqrt()).abs() < 1e-10);
        }
        assert!((x.proj_random - y.proj_random).abs() < 1e-12);
        // The one-pass projections are LoRA §7's ‖Q_1ᵀ W Q_2‖_F.
        let (q1, q2) = (random_orthonormal(n, 2, 9), random_orthonormal(m, 2, 10));
        let direct = projection_norm(w.as_ref(), q1.as_ref(), q2.as_ref());
        assert!((x.proj_random - direct).abs() < 1e-12 * direct);
        assert!(x.proj_random < x.proj_w_basis);
    }
}
