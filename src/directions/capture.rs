//! TSD capture (README, Definitions: direction metrics): does a predicted update find the TSDs of a reference update?
//! `recall@(8,4) = |top8(δ̂) ∩ top4(δ)| / 4`, `accuracy@(8,16) = |top8(δ̂) ∩ top16(δ)| / 8`;
//! in general `|top_kp(δ̂) ∩ top_kr(δ)| / min(kp, kr)`.

use super::top_k;

/// One capture measurement.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Capture {
    /// How many top predicted directions are compared.
    pub k_pred: usize,
    /// How many top reference directions they are compared with.
    pub k_ref: usize,
    /// `|top_kp(pred) ∩ top_kr(ref)|`.
    pub hits: usize,
    /// `hits / min(k_pred, k_ref)`, in [0, 1].
    pub value: f64,
}

/// Capture of `reference` change rates by `predicted` ones (both over the same W's directions).
pub fn capture(predicted: &[f64], reference: &[f64], k_pred: usize, k_ref: usize) -> Capture {
    let p = top_k(predicted, k_pred);
    let r = top_k(reference, k_ref);
    let hits = p.iter().filter(|i| r.contains(i)).count();
    let denom = k_pred.min(k_ref).min(predicted.len()).max(1);
    Capture {
        k_pred,
        k_ref,
        hits,
        value: hits as f64 / denom as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_and_accuracy_follow_the_paper_definitions() {
        // reference ranks directions 0..20 in order; prediction ranks 0,1,2 then 30..35 then 3..
        let reference: Vec<f64> = (0..40).map(|i| 100.0 - i as f64).collect();
        let mut predicted = vec![0.0; 40];
        for (rank, i) in [0usize, 1, 2, 30, 31, 32, 33, 34, 3].iter().enumerate() {
            predicted[*i] = 50.0 - rank as f64;
        }
        let recall = capture(&predicted, &reference, 8, 4);
        assert_eq!((recall.hits, recall.value), (3, 0.75));
        let acc = capture(&predicted, &reference, 8, 16);
        assert_eq!((acc.hits, acc.value), (3, 3.0 / 8.0));
        let perfect = capture(&reference, &reference, 8, 16);
        assert_eq!(perfect.value, 1.0);
    }
}
