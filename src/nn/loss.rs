//! Mean token cross-entropy as one fused op on the CPU. Composed candle ops (log-softmax, gather)
//! materialise several `[N, V]` tensors (V = 49,152 for the default model) forward and backward;
//! this op makes two read passes forward and writes the gradient `(softmax − onehot)/N` once.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

struct CrossEntropy {
    targets: Arc<Vec<u32>>,
    /// Row-wise log-sum-exp from the forward pass, so that the backward pass is one read of the
    /// logits and one write of the gradient.
    lse: OnceLock<Vec<f32>>,
}

/// Row-wise `(logsumexp(x), logsumexp(x) − x[t])`; exponentials in f32, their sum in f64.
fn row_loss(row: &[f32], t: usize) -> (f32, f64) {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = row
        .chunks(64)
        .map(|c| c.iter().map(|&x| (x - m).exp()).sum::<f32>() as f64)
        .sum();
    let lse = m as f64 + s.ln();
    (lse as f32, lse - row[t] as f64)
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, v) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("cross-entropy: logits must be contiguous")
        };
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("cross-entropy: logits must be f32")
        };
        let x = &data[start..end];
        let rows: Vec<(f32, f64)> = x
            .par_chunks(v)
            .zip(self.targets.par_iter())
            .map(|(row, &ti)| row_loss(row, ti as usize))
            .collect();
        let total: f64 = rows.iter().map(|r| r.1).sum();
        let _ = self.lse.set(rows.iter().map(|r| r.0).collect());
        Ok((
            CpuStorage::F32(vec![(total / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    /// `(softmax(x) − onehot(t)) · g / N`, one pass per row from the stored log-sum-exp.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (n, v) = arg.dims2()?;
        let g = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()? / n as f32;
        let out = crate::nn::fused::with_f32(arg, |x| {
            let Some(lse) = self.lse.get() else {
                candle_core::bail!("cross-entropy: backward before forward")
            };
            let mut out = vec![0f32; x.len()];
            out.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .zip(self.targets.par_iter().zip(lse.par_iter()))
                .for_each(|((o, row), (&ti, &l))| {
                    for (e, &xv) in o.iter_mut().zip(row) {
                        *e = (xv - l).exp() * g;
                    }
                    o[ti as usize] -= g;
                });
            Ok(out)
        })??;
        Ok(Some(Tensor::from_vec(out, (n, v), arg.device())?))
    }
}

/// Mean cross-entropy of `logits: [N, V]` against `targets` (N class indices), a scalar tensor.
/// Fused on the CPU (f32); composed candle ops elsewhere.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n || targets.iter().any(|&t| t as usize >= v) {
        candle_core::bail!(
            "cross-entropy: {} targets for {n} rows of {v} classes",
            targets.len()
        );
    }
    if crate::device::fused_cpu(logits.device(), logits.dtype()) {
        let l = if logits.is_contiguous() {
            logits.clone()
        } else {
            logits.contiguous()?
        };
        return l.apply_op1(CrossEntropy {
            targets: Arc::new(targets.to_vec()),
            lse: OnceLock::new(),
        });
    }
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, 1)?;
    let t = Tensor::from_vec(targets.to_vec(), (n, 1), logits.device())?;
    logp.gather(&t, 1)?.sum_all()? / -(n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_core::Var;

    #[test]
    fn matches_composed_ops_in_value_and_gradient() -> Result<()> {
        let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (7, 11), &Device::Cpu)?))?;
        let t: Vec<u32> = vec![0, 3, 10, 5, 5, 1, 9];
        let fused = cross_entropy(x.as_tensor(), &t)?;
        let gf = fused.backward()?;
        let logp = candle_nn::ops::log_softmax(x.as_tensor(), 1)?;
        let composed = (logp
            .gather(&Tensor::from_vec(t.clone(), (7, 1), &Device::Cpu)?, 1)?
            .sum_all()?
            / -7.0)?;
        let gc = composed.backward()?;
        let (a, b) = (fused.to_scalar::<f32>()?, composed.to_scalar::<f32>()?);
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        let d = gf
            .get(x.as_tensor())
            .unwrap()
            .sub(gc.get(x.as_tensor()).unwrap())?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6, "gradient differs by {d}");
        Ok(())
    }
}
