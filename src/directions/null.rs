//! The rotation null of direction metrics (README, Definitions: the null of direction metrics).
//!
//! Under the null an update keeps its singular values `s` (length r) but its singular vectors are
//! Haar-random relative to W's: `ΔW₀ = R₁ ΔW R₂ᵀ`. Its coordinates on W's core directions are then
//! exactly `c_i = Σ_j s_j G_ij H_ij`, with G and H the first k rows of two independent Haar frames
//! (`n×r` and `m×r`: orthonormalised Gaussians, thin QR with a positive R diagonal). Only n, m, k
//! and s enter, never U or V; a draw costs O((n+m)·r²). `E c_i = 0`, `E c_i² = Σ s² / (n·m)`.
//!
//! On top of the sampler:
//! - [`capture_test`]: is a prediction's capture of a reference's top set above what its own
//!   spectrum gives at random? A Monte-Carlo p-value (Besag–Clifford sequential, +1 corrected),
//!   its mid-p, the smallest attainable p, κ, the null's mean and 95th percentile.
//! - [`enrichment_null`]: the 95 % quantile of `max_i |z_i|`, `z_i = c_i / √E c_i²`, and the
//!   expected number of directions above it under the null.

use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// The rotation null of one update against one base weight `[n, m]` with `k = min(n, m)` core
/// directions.
#[derive(Clone, Debug)]
pub struct RotationNull {
    n: usize,
    m: usize,
    k: usize,
    /// The update's non-zero singular values (at most `min(n, m)` of them).
    s: Vec<f64>,
}

impl RotationNull {
    /// The null of an update `[n, m]` with singular values `s` (zeros and non-finite values are
    /// dropped: they contribute nothing to any coordinate).
    pub fn new(n: usize, m: usize, s: &[f64]) -> Self {
        let k = n.min(m);
        let mut s: Vec<f64> = s
            .iter()
            .copied()
            .filter(|x| x.is_finite() && *x > 0.0)
            .collect();
        s.sort_by(|a, b| b.total_cmp(a));
        s.truncate(k);
        RotationNull { n, m, k, s }
    }

    /// Number of core directions `k = min(n, m)`.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The update's rank under test (non-zero singular values).
    pub fn rank(&self) -> usize {
        self.s.len()
    }

    /// `√E c_i² = ‖ΔW‖_F / √(n·m)`, the same for every direction; 0 for a zero update.
    pub fn coordinate_sd(&self) -> f64 {
        let e: f64 = self.s.iter().map(|x| x * x).sum();
        (e / (self.n as f64 * self.m as f64)).sqrt()
    }

    /// Effective rank `(Σ s²)² / Σ s⁴` (1 for one direction, r for r equal ones).
    pub fn effective_rank(&self) -> f64 {
        let s2: f64 = self.s.iter().map(|x| x * x).sum();
        let s4: f64 = self.s.iter().map(|x| x.powi(4)).sum();
        if s4 > 0.0 {
            s2 * s2 / s4
        } else {
            0.0
        }
    }

    /// A seeded sampler of null coordinate vectors.
    pub fn sampler(&self, seed: u64) -> NullSampler<'_> {
        let r = self.s.len();
        NullSampler {
            null: self,
            rng: SmallRng::seed_from_u64(seed),
            g: vec![0.0; self.n * r],
            h: vec![0.0; self.m * r],
            c: vec![0.0; self.k],
        }
    }
}

/// Draws null coordinate vectors `c` (length k) one at a time, reusing its buffers.
pub struct NullSampler<'a> {
    null: &'a RotationNull,
    rng: SmallRng,
    /// Column-major `n×r` and `m×r` frames.
    g: Vec<f64>,
    h: Vec<f64>,
    c: Vec<f64>,
}

impl NullSampler<'_> {
    /// One draw of `c_i = Σ_j s_j G_ij H_ij`, `i < k`.
    pub fn draw(&mut self) -> &[f64] {
        let (n, m, k, r) = (self.null.n, self.null.m, self.null.k, self.null.s.len());
        haar_frame(&mut self.g, n, r, &mut self.rng);
        haar_frame(&mut self.h, m, r, &mut self.rng);
        self.c.iter_mut().for_each(|x| *x = 0.0);
        for (j, &sj) in self.null.s.iter().enumerate() {
            let (gj, hj) = (&self.g[j * n..j * n + k], &self.h[j * m..j * m + k]);
            for ((c, &g), &h) in self.c.iter_mut().zip(gj).zip(hj) {
                *c += sj * g * h;
            }
        }
        &self.c
    }
}

/// Fills `q` (column-major `rows×r`) with a Haar-distributed orthonormal frame: a Gaussian matrix
/// orthonormalised by Gram–Schmidt with re-orthogonalisation, which is the thin QR's Q with a
/// positive R diagonal (the sign choice that makes Q exactly Haar).
fn haar_frame(q: &mut [f64], rows: usize, r: usize, rng: &mut SmallRng) {
    for x in q.iter_mut() {
        *x = StandardNormal.sample(rng);
    }
    for j in 0..r {
        let (done, rest) = q.split_at_mut(j * rows);
        let col = &mut rest[..rows];
        for _pass in 0..2 {
            for i in 0..j {
                let qi = &done[i * rows..(i + 1) * rows];
                let dot: f64 = qi.iter().zip(col.iter()).map(|(a, b)| a * b).sum();
                col.iter_mut().zip(qi).for_each(|(c, a)| *c -= dot * a);
            }
        }
        let norm = col.iter().map(|x| x * x).sum::<f64>().sqrt();
        col.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Indices of the `kp` largest `|c_i|·w_i`, written into `top` (largest first, ties by the smaller
/// index, as [`super::top_k`] orders them).
fn top_scores(c: &[f64], w: &[f64], kp: usize, top: &mut Vec<(f64, usize)>) {
    top.clear();
    for (i, (x, wi)) in c.iter().zip(w).enumerate() {
        let score = x.abs() * wi;
        if top.len() == kp && score <= top[kp - 1].0 {
            continue;
        }
        let pos = top.partition_point(|&(s, _)| s >= score);
        top.insert(pos, (score, i));
        top.truncate(kp);
    }
}

/// Monte-Carlo settings of the null tests.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NullDraws {
    /// Draws always made (the null's mean and percentiles, secondary statistics, aggregates).
    pub min: usize,
    /// The most draws the sequential p-value may take (its smallest p is `1/(max+1)`).
    pub max: usize,
    /// Besag–Clifford: stop once this many draws reached the observed statistic.
    pub stop_after: usize,
    pub seed: u64,
}

impl Default for NullDraws {
    fn default() -> Self {
        NullDraws {
            min: 1000,
            max: 20_000,
            stop_after: 20,
            seed: 0,
        }
    }
}

impl NullDraws {
    /// Enough draws for a false-discovery procedure over `tests` tests at level `alpha` to reject:
    /// `max = ⌈20·tests/α⌉`, at least `min`.
    pub fn for_tests(tests: usize, alpha: f64, seed: u64) -> Self {
        let d = NullDraws::default();
        let max = ((20.0 * tests.max(1) as f64 / alpha).ceil() as usize).max(d.min);
        NullDraws { max, seed, ..d }
    }
}

/// One capture statistic to test: the prediction's top `k_pred` against a reference top set.
pub struct CaptureStatistic<'a> {
    /// The reference's top indices (e.g. its top 16 for accuracy@(8,16)).
    pub reference_top: &'a [usize],
    pub k_pred: usize,
    /// Observed `|top_kp(prediction) ∩ reference_top|`.
    pub observed_hits: usize,
}

impl CaptureStatistic<'_> {
    /// The statistic's largest value: `min(k_pred, |reference_top|)`.
    pub fn max_hits(&self) -> usize {
        self.k_pred.min(self.reference_top.len())
    }
}

/// A capture statistic against its null.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NullTest {
    /// Mean of the statistic (hits / max hits) under the null.
    pub null_mean: f64,
    /// 95th percentile of the statistic under the null.
    pub null_p95: f64,
    /// Monte-Carlo p-value of `P₀(hits ≥ observed)`, valid (never below the truth in expectation):
    /// `(1 + #≥)/(L + 1)` or, stopped early at the `stop_after`-th draw reaching it, `stop_after/L`.
    pub p_value: f64,
    /// `(#> + ½(#= + 1)) / (L + 1)`: the mid-p, less conservative for a discrete statistic.
    pub mid_p: f64,
    /// The p a perfect overlap would get: `max(P̂₀(hits = max), 1/(max draws + 1))`.
    pub min_p: f64,
    /// Chance-corrected capture `κ = (A − A₀)/(1 − A₀)`; none when `A₀ = 1`.
    pub kappa: Option<f64>,
    /// `min_p ≤ α`: even a perfect overlap could otherwise not be told from the null.
    pub testable: bool,
    /// Draws behind `p_value` (L).
    pub draws: usize,
    /// Benjamini–Hochberg q-value over the testable modules of one analysis (set afterwards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q_value: Option<f64>,
    /// The verdict after the false-discovery procedure: `above_null`, `not_above_null`, `untestable`.
    #[serde(default)]
    pub verdict: Verdict,
    /// `verdict == above_null`, for readers that want a flag.
    #[serde(default)]
    pub above_null: bool,
    /// Null hit counts of the first `min` draws (aggregate tests add them across modules).
    #[serde(skip)]
    pub null_hits: Vec<u8>,
}

/// A test's outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    AboveNull,
    #[default]
    NotAboveNull,
    Untestable,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::AboveNull => "above null",
            Verdict::NotAboveNull => "not above null",
            Verdict::Untestable => "untestable",
        }
    }
}

/// Tests every statistic against the rotation null of the prediction: each draw ranks the null
/// coordinates by `|c_i|·weight_i` (the ranking the observed statistic used: `1/σ_i` for change
/// rates, 1 for enrichment) and counts its top `k_pred` in each reference set. The first
/// statistic is the primary one: its p-value is sequential (Besag–Clifford, stopping after
/// `stop_after` draws at or above the observation, or at `max` draws). The others use the first
/// `min` draws. `alpha` decides `testable`. Returns none for a zero update.
pub fn capture_test(
    null: &RotationNull,
    weight: &[f64],
    stats: &[CaptureStatistic<'_>],
    draws: NullDraws,
    alpha: f64,
) -> Option<Vec<NullTest>> {
    if null.rank() == 0 || stats.is_empty() || weight.len() != null.k() {
        return None;
    }
    let k = null.k();
    let masks: Vec<Vec<bool>> = stats
        .iter()
        .map(|st| {
            let mut m = vec![false; k];
            st.reference_top
                .iter()
                .filter(|&&i| i < k)
                .for_each(|&i| m[i] = true);
            m
        })
        .collect();
    let kp_max = stats.iter().map(|s| s.k_pred).max().unwrap_or(0).min(k);
    let mut sampler = null.sampler(draws.seed);
    let mut top = Vec::with_capacity(kp_max + 1);
    let mut hits: Vec<Vec<u8>> = vec![Vec::with_capacity(draws.min); stats.len()];
    let obs0 = stats[0].observed_hits;
    let (mut ge0, mut gt0, mut eq0, mut l0, mut stopped) = (0usize, 0usize, 0usize, 0usize, false);
    let max = draws.max.max(draws.min).max(1);
    for b in 0..max {
        if stopped && b >= draws.min {
            break;
        }
        let c = sampler.draw();
        top_scores(c, weight, kp_max, &mut top);
        for (si, st) in stats.iter().enumerate() {
            if si > 0 && b >= draws.min {
                continue;
            }
            let h = top[..st.k_pred.min(top.len())]
                .iter()
                .filter(|(_, i)| masks[si][*i])
                .count();
            if b < draws.min {
                hits[si].push(h as u8);
            }
            if si == 0 && !stopped {
                l0 += 1;
                ge0 += usize::from(h >= obs0);
                gt0 += usize::from(h > obs0);
                eq0 += usize::from(h == obs0);
                stopped = ge0 >= draws.stop_after;
            }
        }
    }
    let mut out = Vec::with_capacity(stats.len());
    for (si, st) in stats.iter().enumerate() {
        let (p, mid, l) = if si == 0 {
            let p = if stopped {
                ge0 as f64 / l0 as f64
            } else {
                (1 + ge0) as f64 / (l0 + 1) as f64
            };
            let mid = (gt0 as f64 + 0.5 * (eq0 + 1) as f64) / (l0 + 1) as f64;
            (p, mid, l0)
        } else {
            let hs = &hits[si];
            let obs = st.observed_hits;
            let ge = hs.iter().filter(|&&h| h as usize >= obs).count();
            let gt = hs.iter().filter(|&&h| h as usize > obs).count();
            let l = hs.len();
            (
                (1 + ge) as f64 / (l + 1) as f64,
                (gt as f64 + 0.5 * (ge - gt + 1) as f64) / (l + 1) as f64,
                l,
            )
        };
        out.push(summarise(
            st,
            std::mem::take(&mut hits[si]),
            p,
            mid,
            l,
            max,
            alpha,
        ));
    }
    Some(out)
}

fn summarise(
    st: &CaptureStatistic<'_>,
    null_hits: Vec<u8>,
    p_value: f64,
    mid_p: f64,
    draws: usize,
    max_draws: usize,
    alpha: f64,
) -> NullTest {
    let denom = st.max_hits().max(1) as f64;
    let n = null_hits.len().max(1) as f64;
    let null_mean = null_hits.iter().map(|&h| h as f64).sum::<f64>() / n / denom;
    let mut sorted = null_hits.clone();
    sorted.sort_unstable();
    let p95 = sorted
        .get(((0.95 * sorted.len() as f64).ceil() as usize).saturating_sub(1))
        .map_or(0.0, |&h| h as f64 / denom);
    let at_max = null_hits
        .iter()
        .filter(|&&h| h as usize >= st.max_hits())
        .count() as f64
        / n;
    let min_p = at_max.max(1.0 / (max_draws + 1) as f64);
    let value = st.observed_hits as f64 / denom;
    let testable = min_p <= alpha;
    NullTest {
        null_mean,
        null_p95: p95,
        p_value,
        mid_p,
        min_p,
        kappa: (null_mean < 1.0).then(|| (value - null_mean) / (1.0 - null_mean)),
        testable,
        draws,
        q_value: None,
        verdict: if testable {
            Verdict::NotAboveNull
        } else {
            Verdict::Untestable
        },
        above_null: false,
        null_hits,
    }
}

/// The enrichment null of one update: `z_i = c_i / √E c_i²`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EnrichmentNull {
    /// `√E c_i²` (the unit of z).
    pub coordinate_sd: f64,
    /// 95 % quantile of `max_i |z_i|` under the exact null: a direction above it is enriched at a
    /// family-wise 5 % level within its module.
    pub threshold: f64,
    /// Expected number of directions of this module above `threshold` under the null (at least;
    /// counted among each draw's 8 largest |z|).
    pub expected_false: f64,
    /// The update's effective rank `(Σs²)²/Σs⁴`, on which the null's tails depend.
    pub effective_rank: f64,
    pub draws: usize,
}

/// The enrichment threshold and false count of `null` from `draws` seeded draws; none for a zero
/// update.
pub fn enrichment_null(null: &RotationNull, draws: usize, seed: u64) -> Option<EnrichmentNull> {
    let sd = null.coordinate_sd();
    if sd <= 0.0 || draws == 0 {
        return None;
    }
    let ones = vec![1.0; null.k()];
    let keep = 8.min(null.k());
    let mut sampler = null.sampler(seed);
    let mut top = Vec::with_capacity(keep + 1);
    let mut tops: Vec<Vec<f64>> = Vec::with_capacity(draws);
    for _ in 0..draws {
        top_scores(sampler.draw(), &ones, keep, &mut top);
        tops.push(top.iter().map(|(s, _)| s / sd).collect());
    }
    let mut maxes: Vec<f64> = tops.iter().map(|t| t[0]).collect();
    maxes.sort_by(|a, b| a.total_cmp(b));
    let threshold = maxes[((0.95 * draws as f64).ceil() as usize).saturating_sub(1)];
    let exceed: usize = tops
        .iter()
        .map(|t| t.iter().filter(|&&z| z > threshold).count())
        .sum();
    Some(EnrichmentNull {
        coordinate_sd: sd,
        threshold,
        expected_false: exceed as f64 / draws as f64,
        effective_rank: null.effective_rank(),
        draws,
    })
}

/// The p-value of a sum of hits over independent modules (one module type) against the sum of
/// their null hit samples, draw by draw: `(1 + #{Σ null ≥ Σ observed}) / (B + 1)` with B the
/// shortest sample. None when no module has samples.
pub fn aggregate_p(observed: &[usize], null_hits: &[&[u8]]) -> Option<f64> {
    let b = null_hits.iter().map(|h| h.len()).min()?;
    if b == 0 {
        return None;
    }
    let obs: usize = observed.iter().sum();
    let ge = (0..b)
        .filter(|&i| null_hits.iter().map(|h| h[i] as usize).sum::<usize>() >= obs)
        .count();
    Some((1 + ge) as f64 / (b + 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::random_orthonormal;
    use faer::Mat;

    /// A Haar-random orthogonal `n×n` matrix: QR of a Gaussian with the columns' signs fixed by
    /// R's diagonal (Mezzadri 2007), built independently of the sampler.
    fn haar(n: usize, seed: u64) -> Mat<f64> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let g: Mat<f64> = Mat::from_fn(n, n, |_, _| StandardNormal.sample(&mut rng));
        let qr = g.qr();
        let (q, r) = (qr.compute_thin_Q(), qr.thin_R());
        Mat::from_fn(n, n, |i, j| q[(i, j)] * r[(j, j)].signum())
    }

    /// The null by its definition: a fixed update `ΔW = P diag(s) Qᵀ` rotated as `R₁ ΔW R₂ᵀ` with
    /// explicit Haar rotations, its coordinates on W's core directions taken as the standard basis
    /// (`c_i = (R₁ ΔW R₂ᵀ)_ii`; the null is invariant to W's U and V).
    fn explicit_draw(n: usize, m: usize, s: &[f64], seed: u64) -> Vec<f64> {
        let r = s.len();
        let p = random_orthonormal(n, r, 1);
        let q = random_orthonormal(m, r, 2);
        let d = &p * Mat::from_fn(r, r, |i, j| if i == j { s[i] } else { 0.0 }) * q.transpose();
        let rot = haar(n, seed) * d * haar(m, seed + 7_777_777).transpose();
        (0..n.min(m)).map(|i| rot[(i, i)]).collect()
    }

    fn quantile(mut xs: Vec<f64>, q: f64) -> f64 {
        xs.sort_by(|a, b| a.total_cmp(b));
        xs[((q * xs.len() as f64).ceil() as usize).saturating_sub(1)]
    }

    #[test]
    fn frames_are_orthonormal() {
        let mut rng = SmallRng::seed_from_u64(3);
        let (n, r) = (40, 40);
        let mut q = vec![0.0; n * r];
        haar_frame(&mut q, n, r, &mut rng);
        for a in 0..r {
            for b in 0..r {
                let dot: f64 = (0..n).map(|i| q[a * n + i] * q[b * n + i]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "({a},{b}) {dot}");
            }
        }
    }

    #[test]
    fn coordinate_variance_is_the_frobenius_share() {
        let s = [3.0, 1.0, 0.5];
        let null = RotationNull::new(30, 20, &s);
        let want = (9.0 + 1.0 + 0.25) / 600.0;
        assert!((null.coordinate_sd().powi(2) - want).abs() < 1e-15);
        let mut sm = null.sampler(1);
        let (mut acc, mut cnt) = (0.0, 0usize);
        for _ in 0..20_000 {
            for x in sm.draw() {
                acc += x * x;
                cnt += 1;
            }
        }
        let var = acc / cnt as f64;
        assert!((var / want - 1.0).abs() < 0.02, "{var} vs {want}");
    }

    /// The sampler against explicit Haar rotations, in the tail: quantiles of max|z| for rank 1,
    /// rank 4 and a full-rank update on small shapes.
    #[test]
    fn sampler_matches_explicit_rotations_in_the_tail() {
        let cases: [(usize, usize, Vec<f64>); 3] = [
            (24, 16, vec![2.0]),
            (24, 16, vec![4.0, 2.0, 1.0, 0.5]),
            (16, 12, (0..12).map(|i| 1.0 / (1.0 + i as f64)).collect()),
        ];
        let b = 6000;
        for (n, m, s) in cases {
            let null = RotationNull::new(n, m, &s);
            let sd = null.coordinate_sd();
            let mut sm = null.sampler(11);
            let fast: Vec<f64> = (0..b)
                .map(|_| sm.draw().iter().fold(0.0f64, |a, x| a.max(x.abs())) / sd)
                .collect();
            let slow: Vec<f64> = (0..b)
                .map(|i| {
                    explicit_draw(n, m, &s, 1000 + i as u64)
                        .iter()
                        .fold(0.0f64, |a, x| a.max(x.abs()))
                        / sd
                })
                .collect();
            for q in [0.5, 0.9, 0.95, 0.99] {
                let (a, e) = (quantile(fast.clone(), q), quantile(slow.clone(), q));
                // Monte-Carlo error of a 0.99 quantile from 6,000 draws is a few per cent.
                assert!(
                    (a / e - 1.0).abs() < 0.06,
                    "n={n} m={m} r={} q={q}: sampler {a:.3} vs explicit {e:.3}",
                    s.len()
                );
            }
        }
    }

    /// The pmf of the capture statistic under the sampler equals the pmf under explicit rotations.
    #[test]
    fn capture_pmf_matches_explicit_rotations() {
        let (n, m) = (24, 20);
        let sigma: Vec<f64> = (0..20).map(|i| 10.0 * 0.7f64.powi(i)).collect();
        let w: Vec<f64> = sigma.iter().map(|s| 1.0 / s).collect();
        let reference: Vec<usize> = vec![1, 5, 9, 13, 16, 17];
        for s in [vec![1.0], vec![1.0, 0.8, 0.3, 0.1]] {
            let null = RotationNull::new(n, m, &s);
            let b = 8000;
            let mut pmf_fast = [0f64; 5];
            let mut pmf_slow = [0f64; 5];
            let mut sm = null.sampler(5);
            let mut top = Vec::new();
            for i in 0..b {
                top_scores(sm.draw(), &w, 4, &mut top);
                pmf_fast[top.iter().filter(|(_, j)| reference.contains(j)).count()] += 1.0;
                let c = explicit_draw(n, m, &s, 50_000 + i as u64);
                top_scores(&c, &w, 4, &mut top);
                pmf_slow[top.iter().filter(|(_, j)| reference.contains(j)).count()] += 1.0;
            }
            for h in 0..5 {
                let (a, e) = (pmf_fast[h] / b as f64, pmf_slow[h] / b as f64);
                let se = (e * (1.0 - e) / b as f64).sqrt().max(1e-3);
                assert!(
                    (a - e).abs() < 5.0 * se,
                    "r={} hits={h}: {a:.4} vs {e:.4}",
                    s.len()
                );
            }
        }
    }

    /// PAPER §7: for rank 1 and k = 576 the family-wise 5 % threshold of |z| is about 8, far
    /// above a Gaussian's 3.9.
    #[test]
    fn rank_one_threshold_is_heavy_tailed() {
        let null = RotationNull::new(576, 576, &[1.0]);
        let e = enrichment_null(&null, 2000, 9).unwrap();
        assert!(e.threshold > 7.0 && e.threshold < 9.5, "{}", e.threshold);
        assert!(
            (0.04..0.08).contains(&e.expected_false),
            "{}",
            e.expected_false
        );
        let wide = RotationNull::new(576, 576, &vec![1.0; 64]);
        let g = enrichment_null(&wide, 2000, 9).unwrap();
        assert!(g.threshold > 3.6 && g.threshold < 4.4, "{}", g.threshold);
    }

    /// Unrelated predictions: the p-value is uniform enough (P(p ≤ α) ≤ α + 3 SE); related ones
    /// (the reference's own top directions) are detected.
    #[test]
    fn capture_test_is_calibrated_and_has_power() {
        let (n, m) = (48, 40);
        let sigma: Vec<f64> = (0..40).map(|i| 5.0 * 0.85f64.powi(i)).collect();
        let w: Vec<f64> = sigma.iter().map(|s| 1.0 / s).collect();
        let s = [1.0, 0.6, 0.3];
        let null = RotationNull::new(n, m, &s);
        let reference: Vec<usize> = vec![2, 7, 11, 19, 23, 28, 31, 35];
        let draws = NullDraws {
            min: 300,
            max: 2000,
            stop_after: 20,
            seed: 0,
        };
        let trials = 400;
        let mut rejected = 0;
        let mut sm = null.sampler(12345);
        let mut top = Vec::new();
        for t in 0..trials {
            // An observation drawn from the null itself.
            top_scores(sm.draw(), &w, 4, &mut top);
            let hits = top.iter().filter(|(_, j)| reference.contains(j)).count();
            let st = [CaptureStatistic {
                reference_top: &reference,
                k_pred: 4,
                observed_hits: hits,
            }];
            let r = capture_test(&null, &w, &st, NullDraws { seed: t, ..draws }, 0.05).unwrap();
            rejected += usize::from(r[0].p_value <= 0.05);
        }
        let rate = rejected as f64 / trials as f64;
        let se = (0.05f64 * 0.95 / trials as f64).sqrt();
        assert!(rate <= 0.05 + 3.0 * se, "false-positive rate {rate}");
        let st = [CaptureStatistic {
            reference_top: &reference,
            k_pred: 4,
            observed_hits: 4,
        }];
        let r = capture_test(&null, &w, &st, draws, 0.05).unwrap();
        assert!(r[0].testable && r[0].p_value < 0.01, "{:?}", r[0]);
        assert!(r[0].kappa.unwrap() > 0.9);
    }

    #[test]
    fn a_statistic_the_null_always_reaches_is_untestable() {
        // One spectrum direction dominates 1/σ: every draw picks it.
        let sigma = [10.0, 9.0, 8.0, 1e-9];
        let w: Vec<f64> = sigma.iter().map(|s| 1.0 / s).collect();
        let null = RotationNull::new(4, 4, &[1.0, 1.0]);
        let st = [CaptureStatistic {
            reference_top: &[3],
            k_pred: 1,
            observed_hits: 1,
        }];
        let r = capture_test(&null, &w, &st, NullDraws::default(), 0.05).unwrap();
        assert!(!r[0].testable && r[0].verdict == Verdict::Untestable);
        assert!(r[0].kappa.is_none() || r[0].null_mean > 0.99);
    }

    #[test]
    fn zero_update_has_no_null() {
        let null = RotationNull::new(8, 8, &[0.0]);
        assert!(enrichment_null(&null, 10, 0).is_none());
        let st = [CaptureStatistic {
            reference_top: &[0],
            k_pred: 1,
            observed_hits: 0,
        }];
        assert!(capture_test(&null, &[1.0; 8], &st, NullDraws::default(), 0.05).is_none());
    }

    #[test]
    fn aggregate_p_adds_modules_draw_by_draw() {
        let a: Vec<u8> = vec![0, 1, 0, 2];
        let b: Vec<u8> = vec![1, 1, 0, 0];
        // sums 1, 2, 0, 2; observed 2 → #≥ = 2 → (1+2)/5.
        assert_eq!(aggregate_p(&[1, 1], &[&a, &b]), Some(0.6));
        assert_eq!(aggregate_p(&[1], &[]), None);
    }
}
