//! The one mean the records and reports use, and the false-discovery procedure of the null tests.

/// Arithmetic mean; None for no values (callers say what an empty group shows).
pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
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

#[cfg(test)]
mod tests {
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
