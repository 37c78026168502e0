//! The one mean the records and reports use.

/// Arithmetic mean; None for no values (callers say what an empty group shows).
pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mean_of_values_and_of_none() {
        assert_eq!(super::mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(super::mean(&[]), None);
    }
}
