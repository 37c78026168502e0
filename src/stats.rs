//! The one mean the records and reports use, and the false-discovery procedure of the null tests.

/// Arithmetic mean; None for no values (callers say what an empty group shows).
pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// A distribution-free confidence interval for the median of `xs`: the order statistics
/// `[x_(k), x_(n+1-k)]` (1-based, sorted) with the largest `k` whose two-sided binomial(n, ½)
/// coverage is at least `level`; `(lo, hi, coverage)`. None below 6 values (no such interval
/// reaches 95 % there).
pub fn median_interval(xs: &[f64], level: f64) -> Option<(f64, f64, f64)> {
    let n = xs.len();
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    // P(X ≤ j) for X ~ binomial(n, ½), j = 0..n.
    let mut cdf = Vec::with_capacity(n + 1);
    let (mut c, mut acc) = (1.0f64, 0.0f64);
    for j in 0..=n {
        if j > 0 {
            c *= (n + 1 - j) as f64 / j as f64;
        }
        acc += c * 0.5f64.powi(n as i32);
        cdf.push(acc);
    }
    // Coverage of [x_(k), x_(n+1-k)] is 1 − 2·P(X ≤ k−1).
    (1..=n / 2)
        .rev()
        .map(|k| (k, 1.0 - 2.0 * cdf[k - 1]))
        .find(|&(_, cov)| cov >= level)
        .map(|(k, cov)| (v[k - 1], v[n - k], cov))
}

/// Benjamini–Hochberg q-values of `p`, in `p`'s order: `q_(i) = min_{j ≥ i} p_(j)·M/j`, at most 1.
pub fn bh_qvalues(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut q = vec![0.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(p[i] * m as f64 / (rank + 1) as f64);
        q[i] = running;
    }
    q
}

/// Spearman's rank correlation of paired values (average ranks for ties); none for fewer than 3
/// pairs or a constant side.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 3 {
        return None;
    }
    let ranks = |v: &[f64]| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        let mut r = vec![0.0; v.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
                j += 1;
            }
            for k in i..=j {
                r[idx[k]] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    };
    let (rx, ry) = (ranks(x), ranks(y));
    let (mx, my) = (mean(&rx)?, mean(&ry)?);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    (vx > 0.0 && vy > 0.0).then(|| cov / (vx * vy).sqrt())
}

#[cfg(test)]
mod tests {
    #[test]
    fn spearman_of_monotone_reversed_and_tied_pairs() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(super::spearman(&x, &[10.0, 20.0, 25.0, 100.0]), Some(1.0));
        assert_eq!(super::spearman(&x, &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        // Ties get average ranks: ranks (0.5, 0.5, 2, 3) against (0, 1, 2, 3).
        let r = super::spearman(&x, &[1.0, 1.0, 2.0, 3.0]).unwrap();
        assert!((r - 0.9486832980505138).abs() < 1e-12, "{r}");
        assert_eq!(super::spearman(&x, &[1.0; 4]), None);
    }

    #[test]
    fn bh_qvalues_step_up() {
        // p sorted: 0.01, 0.02, 0.03, 0.5 → raw 0.04, 0.04, 0.04, 0.5 → monotone.
        let q = super::bh_qvalues(&[0.5, 0.01, 0.03, 0.02]);
        let want = [0.5, 0.04, 0.04, 0.04];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        assert!(super::bh_qvalues(&[]).is_empty());
    }

    #[test]
    fn mean_of_values_and_of_none() {
        assert_eq!(super::mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(super::mean(&[]), None);
    }
}
