//! Empirical controls for direction metrics (README, Definitions: the null of direction metrics):
//! an adapter with the same modules, shapes and per-tensor norms as a real one, whose factors are
//! Gaussian. Its update `B·A` is rotation-invariant in law, so it follows the rotation null exactly
//! given its spectrum: "what would random give?" answered with a real adapter file.

use super::Adapter;
use crate::linalg::Matrix;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// `m`'s shape and Frobenius norm, Gaussian entries.
fn noise_like(m: &Matrix, rng: &mut StdRng) -> Matrix {
    let fro = |d: &[f32]| d.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let g: Vec<f32> = (0..m.rows * m.cols)
        .map(|_| StandardNormal.sample(rng))
        .collect();
    let scale = (fro(&m.data) / fro(&g).max(1e-30)) as f32;
    Matrix {
        rows: m.rows,
        cols: m.cols,
        data: g.into_iter().map(|x| x * scale).collect(),
    }
}

/// A seeded random control of `adapter`: every module's A and B replaced by Gaussian matrices of
/// the same shapes and Frobenius norms. LoRA-Dash tensors, biases and other tensors are dropped
/// (the control is a plain LoRA); config and names are kept.
pub fn randomised(adapter: &Adapter, seed: u64) -> Adapter {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = adapter.clone();
    for m in &mut out.modules {
        m.a = noise_like(&m.a, &mut rng);
        m.b = noise_like(&m.b, &mut rng);
        m.dash = None;
        m.dora_magnitude = None;
    }
    out.extras = Default::default();
    out.extras.name = adapter.extras.name.clone();
    let c = &mut out.config;
    c.use_dora = false;
    c.modules_to_save = None;
    c.bias = "none".into();
    c.lora_bias = false;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_keeps_shape_and_norm() {
        let m = Matrix::new(3, 4, (0..12).map(|i| i as f32).collect()).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let n = noise_like(&m, &mut rng);
        let fro = |d: &[f32]| d.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert_eq!((n.rows, n.cols), (3, 4));
        assert!((fro(&n.data) / fro(&m.data) - 1.0).abs() < 1e-6);
        assert_ne!(n.data, m.data);
    }
}
