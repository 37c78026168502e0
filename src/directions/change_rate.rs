//! Change rates and TSD selection (README, Definitions: change rates and TSDs): `δ_i = |u_iᵀ ΔW v_i| / σ_i` for every core
//! direction `u_i v_iᵀ` of the base weight `W = U Σ Vᵀ`.

use super::Update;
use crate::linalg::{Svd, SvdFactors};

/// Picks whose `σ_i / σ_1` is below this are flagged as near-null directions (README, Definitions: near-null directions and scale).
pub const NEAR_NULL_RATIO: f64 = 1e-3;

/// How `σ_i` is guarded in the denominator of `δ_i`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SigmaFloor {
    /// The denominator is `max(σ_i, floor·σ_1) + 1e-12·σ_1`. `0.0` is the official code's choice
    /// (no floor; the `1e-12·σ_1` term only prevents division by zero).
    pub relative: f64,
}

impl Default for SigmaFloor {
    fn default() -> Self {
        SigmaFloor { relative: 0.0 }
    }
}

/// Change rates for all `k` core directions: `δ_i = |p_i| / (max(σ_i, f·σ_1) + 1e-12·σ_1)`
/// with `p_i = u_iᵀ ΔW v_i`. `svd` is the SVD of the base W `[n, m]`.
pub fn change_rates(update: &Update, svd: &Svd, floor: SigmaFloor) -> (Vec<f64>, Vec<f64>) {
    let coords = update.coordinates(svd.u.as_ref(), svd.v.as_ref());
    let rates = rates_from_coordinates(&coords, &svd.s, floor);
    (coords, rates)
}

/// [`change_rates`] on a weight's [`SvdFactors`] (U and V read in place; see
/// [`Update::coordinates_on`]).
pub fn change_rates_on(update: &Update, f: &SvdFactors, floor: SigmaFloor) -> (Vec<f64>, Vec<f64>) {
    let coords = update.coordinates_on(f);
    let rates = rates_from_coordinates(&coords, &f.s, floor);
    (coords, rates)
}

/// `δ_i` from coordinates `p_i` and singular values `σ_i` (descending).
pub fn rates_from_coordinates(coords: &[f64], sigma: &[f64], floor: SigmaFloor) -> Vec<f64> {
    let s1 = sigma.first().copied().unwrap_or(0.0);
    coords
        .iter()
        .zip(sigma)
        .map(|(p, s)| {
            let denom = s.max(floor.relative * s1) + 1e-12 * s1;
            if denom > 0.0 {
                p.abs() / denom
            } else {
                0.0
            }
        })
        .collect()
}

/// `--tsd-by` / `--dash-pick`: the command-line names of [`Ranking`].
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TsdBy {
    ChangeRate,
    Enrichment,
}

impl TsdBy {
    pub fn ranking(self) -> Ranking {
        match self {
            TsdBy::ChangeRate => Ranking::ChangeRate,
            TsdBy::Enrichment => Ranking::Enrichment,
        }
    }
}

/// How core directions are ranked when TSDs are picked and captures counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ranking {
    /// The paper's change rate `δ_i = |c_i| / σ_i` (README, Definitions: change rates and TSDs).
    #[default]
    ChangeRate,
    /// Enrichment `|z_i| ∝ |c_i|`: the coordinate against its null, spectrum-free (README,
    /// Definitions: the null of direction metrics).
    Enrichment,
}

impl Ranking {
    /// Per-direction weights `w_i` with score `|c_i|·w_i`: `1/denom_i` of [`rates_from_coordinates`]
    /// for change rates, 1 for enrichment.
    pub fn weights(self, sigma: &[f64], floor: SigmaFloor) -> Vec<f64> {
        match self {
            Ranking::ChangeRate => rates_from_coordinates(&vec![1.0; sigma.len()], sigma, floor),
            Ranking::Enrichment => vec![1.0; sigma.len()],
        }
    }

    /// Scores `|c_i|·w_i` of coordinates `c`.
    pub fn scores(self, coords: &[f64], sigma: &[f64], floor: SigmaFloor) -> Vec<f64> {
        match self {
            Ranking::ChangeRate => rates_from_coordinates(coords, sigma, floor),
            Ranking::Enrichment => coords.iter().map(|c| c.abs()).collect(),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Ranking::ChangeRate => "change rate",
            Ranking::Enrichment => "enrichment",
        }
    }
}

/// How LoRA-Dash picks its directions at the switch: the σ floor of δ and the ranking (the
/// paper's change rate by default; enrichment as an ablation, `tsd train --dash-pick`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DashPick {
    pub floor: SigmaFloor,
    pub by: Ranking,
}

impl From<SigmaFloor> for DashPick {
    fn from(floor: SigmaFloor) -> Self {
        DashPick {
            floor,
            by: Ranking::ChangeRate,
        }
    }
}

/// Indices of the `k` largest values, largest first; ties broken by the smaller index.
/// Non-finite values sort last.
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let key = |i: usize| {
        if values[i].is_finite() {
            values[i]
        } else {
            f64::NEG_INFINITY
        }
    };
    idx.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// One picked task-specific direction.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Tsd {
    /// Index into W's singular values (0-based, descending order).
    pub index: usize,
    pub sigma: f64,
    /// `σ_i / σ_1`.
    pub sigma_ratio: f64,
    /// Coordinate `u_iᵀ ΔW v_i`.
    pub coordinate: f64,
    /// Change rate `δ_i`.
    pub delta: f64,
    /// `σ_i / σ_1 < NEAR_NULL_RATIO`: δ is then dominated by the division (README, Definitions: near-null directions and scale).
    pub near_null: bool,
    /// Enrichment `z_i = c_i / √E₀ c_i²`: the coordinate in units of its null standard deviation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub z: Option<f64>,
    /// `|z_i|` above the module's null max-|z| 95 % threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enriched: Option<bool>,
}

impl Tsd {
    /// The top-`s` TSDs from coordinates, rates and σ, ranked by the change rate.
    pub fn select(coords: &[f64], rates: &[f64], sigma: &[f64], s: usize) -> Vec<Tsd> {
        Self::select_by(coords, rates, rates, sigma, s)
    }

    /// The top-`s` directions by `scores` (change rates or enrichment), each with its change rate.
    pub fn select_by(
        coords: &[f64],
        rates: &[f64],
        scores: &[f64],
        sigma: &[f64],
        s: usize,
    ) -> Vec<Tsd> {
        let s1 = sigma.first().copied().unwrap_or(0.0);
        top_k(scores, s)
            .into_iter()
            .map(|i| {
                let ratio = if s1 > 0.0 { sigma[i] / s1 } else { 0.0 };
                Tsd {
                    index: i,
                    sigma: sigma[i],
                    sigma_ratio: ratio,
                    coordinate: coords[i],
                    delta: rates[i],
                    near_null: ratio < NEAR_NULL_RATIO,
                    z: None,
                    enriched: None,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::{random_orthonormal, Matrix, Precision};
    use faer::Mat;

    /// W = U diag(σ) Vᵀ with known U, V, σ.
    fn planted(n: usize, m: usize, seed: u64) -> (Mat<f64>, Vec<f64>, Mat<f64>, Mat<f64>) {
        let k = n.min(m);
        let u = random_orthonormal(n, k, seed);
        let v = random_orthonormal(m, k, seed + 1);
        let sigma: Vec<f64> = (0..k).map(|i| 10.0 / (1.0 + i as f64)).collect();
        let w = &u * Mat::from_fn(k, k, |i, j| if i == j { sigma[i] } else { 0.0 }) * v.transpose();
        (u, sigma, v, w)
    }

    #[test]
    fn update_on_chosen_directions_gives_exactly_those_indices_and_rates() {
        let (n, m) = (24, 16);
        let (u, sigma, v, w) = planted(n, m, 11);
        // ΔW = Σ_j c_j u_{i_j} v_{i_j}ᵀ on chosen directions: δ_{i_j} = |c_j| / σ_{i_j}, others 0.
        let chosen = [(13usize, 0.9f64), (2, -3.0), (9, 0.5)];
        let mut b = Mat::<f64>::zeros(n, chosen.len());
        let mut a = Mat::<f64>::zeros(chosen.len(), m);
        for (j, &(i, c)) in chosen.iter().enumerate() {
            for r in 0..n {
                b[(r, j)] = c * u[(r, i)];
            }
            for col in 0..m {
                a[(j, col)] = v[(col, i)];
            }
        }
        let svd = crate::linalg::svd_f64(w.as_ref()).unwrap();
        for upd in [
            Update::low_rank(b.clone(), a.clone()).unwrap(),
            Update::Dense(&b * &a),
        ] {
            let (coords, rates) = change_rates(&upd, &svd, SigmaFloor::default());
            let mut expect: Vec<(usize, f64)> = chosen
                .iter()
                .map(|&(i, c)| (i, c.abs() / sigma[i]))
                .collect();
            expect.sort_by(|x, y| y.1.total_cmp(&x.1));
            let tsd = Tsd::select(&coords, &rates, &svd.s, 3);
            for (t, (i, d)) in tsd.iter().zip(&expect) {
                assert_eq!(t.index, *i);
                assert!((t.delta - d).abs() < 1e-9 * d, "{} vs {}", t.delta, d);
            }
            for (i, r) in rates.iter().enumerate() {
                if !chosen.iter().any(|c| c.0 == i) {
                    assert!(r.abs() < 1e-9, "direction {i} should not move, δ = {r}");
                }
            }
        }
    }

    #[test]
    fn rates_are_invariant_under_orthogonal_transforms() {
        // (QWRᵀ, QΔWRᵀ) has the same σ and the same δ as (W, ΔW) for orthogonal Q, R.
        let (n, m) = (20, 12);
        let (_, _, _, w) = planted(n, m, 3);
        let b = random_orthonormal(n, 2, 40) * Mat::from_fn(2, 2, |i, j| (i + 2 * j) as f64 - 1.0);
        let a = random_orthonormal(m, 2, 41).transpose().to_owned();
        let q = random_orthonormal(n, n, 50);
        let r = random_orthonormal(m, m, 51);
        let s1 = crate::linalg::svd_f64(w.as_ref()).unwrap();
        let s2 = crate::linalg::svd_f64((&q * &w * r.transpose()).as_ref()).unwrap();
        let (_, d1) = change_rates(
            &Update::low_rank(b.clone(), a.clone()).unwrap(),
            &s1,
            SigmaFloor::default(),
        );
        let (_, d2) = change_rates(
            &Update::low_rank(&q * &b, &a * r.transpose()).unwrap(),
            &s2,
            SigmaFloor::default(),
        );
        for (x, y) in d1.iter().zip(&d2) {
            assert!((x - y).abs() < 1e-9 * (1.0 + x.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn f32_svd_path_agrees_with_f64() {
        let (n, m) = (48, 32);
        let (_, _, _, w) = planted(n, m, 5);
        let wm = Matrix::from_faer(w.as_ref());
        let b = random_orthonormal(n, 4, 60) * 0.3;
        let a = random_orthonormal(m, 4, 61).transpose().to_owned();
        let upd = Update::low_rank(b, a).unwrap();
        let (_, r64) = change_rates(
            &upd,
            &crate::linalg::svd(&wm, Precision::F64).unwrap(),
            SigmaFloor::default(),
        );
        let (_, r32) = change_rates(
            &upd,
            &crate::linalg::svd(&wm, Precision::F32).unwrap(),
            SigmaFloor::default(),
        );
        let scale = r64.iter().cloned().fold(0.0, f64::max);
        for (x, y) in r64.iter().zip(&r32) {
            assert!((x - y).abs() < 1e-4 * scale, "{x} vs {y}");
        }
        assert_eq!(top_k(&r64, 8), top_k(&r32, 8));
    }

    #[test]
    fn floor_and_zero_sigma_are_guarded() {
        let sigma = [4.0, 1.0, 1e-6, 0.0];
        let coords = [1.0, 1.0, 1.0, 1.0];
        let r0 = rates_from_coordinates(&coords, &sigma, SigmaFloor::default());
        assert!(r0.iter().all(|x| x.is_finite()));
        assert!((r0[1] - 1.0).abs() < 1e-9);
        let r1 = rates_from_coordinates(&coords, &sigma, SigmaFloor { relative: 1e-3 });
        assert!((r1[2] - 1.0 / (4e-3 + 4e-12)).abs() < 1e-3);
        let t = Tsd::select(&coords, &r0, &sigma, 2);
        assert!(t[0].near_null && t[0].index == 3);
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, f64::NAN, 2.0], 3), vec![1, 2, 4]);
        assert_eq!(top_k(&[1.0], 5), vec![0]);
    }
}
