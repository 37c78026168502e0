//! Mean token cross-entropy as one fused op on the CPU. Composed candle ops (log-softmax, gather)
//! materialise several `[N, V]` tensors (V = 49,152 for the default model) forward and backward;
//! this op makes two read passes forward and writes the gradient `(softmax − onehot)/N` once.
//! [`head_cross_entropy`] goes further and fuses the LM head into it, a block of rows at a time,
//! so that neither the `[N, V]` logits nor their gradient ever exist whole.

use crate::nn::exp::exp_shifted;
use crate::nn::frozen::FrozenLinear;
use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
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
    let mut e = [0f32; 64];
    let s: f64 = row
        .chunks(64)
        .map(|c| {
            let e = &mut e[..c.len()];
            exp_shifted(c, m, e);
            e.iter().sum::<f32>() as f64
        })
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
                    exp_shifted(row, l, o);
                    for e in o.iter_mut() {
                        *e *= g;
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

/// Rows of logits computed at once by [`head_cross_entropy`]: 128 × 49,152 f32 = 25 MB for the
/// default model, against 100 MB for the whole `[512, V]` logits of a 4 × 128 batch (and as much
/// again for their gradient).
pub(crate) const HEAD_CHUNK_ROWS: usize = 128;

/// The LM head and the cross-entropy as one op on `h: [N, H]`: forward computes, a block of
/// [`HEAD_CHUNK_ROWS`] rows at a time, the logits `h·Wᵀ`, the rows' losses and (when `h` is in a
/// graph) the input gradient `(softmax − onehot)/N · W`, which backward hands on. Every logit,
/// loss and gradient element is computed by the same products and formulas as the unfused
/// `FrozenLinear` + [`CrossEntropy`] pair, in the same order, so the results are bit-identical.
struct HeadCrossEntropy {
    /// The head, weight `[V, H]` f32 (its products: [`FrozenLinear::product`] and
    /// [`FrozenLinear::input_grad`], bf16 where the head opted in).
    head: FrozenLinear,
    targets: Arc<Vec<u32>>,
    /// Whether to compute the input gradient (only when `h` tracks a graph).
    with_grad: bool,
    /// `d loss / d h` for an upstream gradient of 1: `[N, H]`.
    grad: OnceLock<Tensor>,
}

/// `(start, len)` of near-equal blocks of at most [`HEAD_CHUNK_ROWS`] rows covering `0..n`. Equal
/// sizes rather than a short last block: `gemm` computes products of very few rows (one; or ≤ 64
/// against ≤ 64 columns) by other kernels whose last bits differ from the whole product's.
pub(crate) fn row_blocks(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = n.div_ceil(HEAD_CHUNK_ROWS).max(1);
    let (base, extra) = (n / count, n % count);
    (0..count).scan(0, move |start, i| {
        let len = base + usize::from(i < extra);
        let block = (*start, len);
        *start += len;
        Some(block)
    })
}

impl HeadCrossEntropy {
    /// `(per-row losses, gradient rows [len, H])` of rows `x: [len, H]` whose targets are `t`.
    fn block(&self, x: &Tensor, t: &[u32], inv_n: f32) -> Result<(Vec<f64>, Option<Tensor>)> {
        let logits = self.head.product(x)?;
        let v = logits.dim(1)?;
        crate::nn::fused::with_f32(&logits, |lg| {
            let losses: Vec<(f32, f64)> = lg
                .par_chunks(v)
                .zip(t.par_iter())
                .map(|(row, &ti)| row_loss(row, ti as usize))
                .collect();
            let grad = if self.with_grad {
                let mut g = vec![0f32; lg.len()];
                g.par_chunks_mut(v)
                    .zip(lg.par_chunks(v))
                    .zip(t.par_iter().zip(losses.par_iter()))
                    .for_each(|((o, row), (&ti, &(lse, _)))| {
                        exp_shifted(row, lse, o);
                        for e in o.iter_mut() {
                            *e *= inv_n;
                        }
                        o[ti as usize] -= inv_n;
                    });
                let g = Tensor::from_vec(g, (t.len(), v), x.device())?;
                Some(self.head.input_grad(&g)?)
            } else {
                None
            };
            Ok((losses.into_iter().map(|l| l.1).collect(), grad))
        })?
    }
}

impl CustomOp1 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-head-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, _) = layout.shape().dims2()?;
        if !(layout.is_contiguous() && layout.start_offset() == 0) {
            candle_core::bail!("head cross-entropy: non-contiguous input")
        }
        let x = Tensor::from_storage(
            Storage::Cpu(storage.try_clone(layout)?),
            layout.shape().clone(),
            BackpropOp::none(),
            false,
        );
        // As `CrossEntropy::bwd` scales for an upstream gradient of 1.
        let inv_n = 1.0 / n as f32;
        let (mut losses, mut grads) = (Vec::with_capacity(n), Vec::new());
        for (start, len) in row_blocks(n) {
            let t = &self.targets[start..start + len];
            let (l, g) = self.block(&x.narrow(0, start, len)?, t, inv_n)?;
            losses.extend(l);
            grads.extend(g);
        }
        if self.with_grad {
            let _ = self.grad.set(Tensor::cat(&grads, 0)?);
        }
        let total: f64 = losses.iter().sum();
        Ok((
            CpuStorage::F32(vec![(total / n as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let Some(grad) = self.grad.get() else {
            candle_core::bail!("head cross-entropy: backward of a forward without gradient")
        };
        let g = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        Ok(Some(if g == 1.0 {
            grad.clone()
        } else {
            (grad * g as f64)?
        }))
    }
}

/// Mean cross-entropy of the logits `head(h)` (`h: [N, H]`) against `targets` (N class indices),
/// a scalar tensor. On the CPU in f32 the head and the loss are one op that never holds the whole
/// `[N, V]` logits; elsewhere the head's output goes to [`cross_entropy`].
pub fn head_cross_entropy(h: &Tensor, head: &FrozenLinear, targets: &[u32]) -> Result<Tensor> {
    use candle_core::Module;
    let (n, _) = h.dims2()?;
    let (v, _) = head.weight().dims2()?;
    let fused = crate::device::fused_cpu(h.device(), h.dtype())
        && head.weight().dtype() == DType::F32
        && head.weight().is_contiguous();
    if !fused {
        return cross_entropy(&head.forward(h)?, targets);
    }
    if targets.len() != n || targets.iter().any(|&t| t as usize >= v) {
        candle_core::bail!(
            "cross-entropy: {} targets for {n} rows of {v} classes",
            targets.len()
        );
    }
    let x = if h.is_contiguous() && h.layout().start_offset() == 0 {
        h.clone()
    } else {
        h.affine(1.0, 0.0)?
    };
    x.apply_op1(HeadCrossEntropy {
        head: head.clone(),
        targets: Arc::new(targets.to_vec()),
        with_grad: h.track_op(),
        grad: OnceLock::new(),
    })
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

    /// The fused head + loss gives the unfused pair's loss and input gradient bit for bit, over
    /// several row blocks (the last one short), and scales by an upstream gradient other than 1.
    #[test]
    fn fused_head_matches_the_unfused_pair_bit_for_bit() -> Result<()> {
        use candle_core::Module;
        let dev = Device::Cpu;
        let (n, h, v) = (2 * HEAD_CHUNK_ROWS + 44, 64, 1000);
        let w = Tensor::randn(0f32, 0.5, (v, h), &dev)?;
        let head = FrozenLinear::new(w);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, h), &dev)?)?;
        let t: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % v as u32).collect();
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|f| f.to_bits())
                .collect())
        };
        let fused = head_cross_entropy(x.as_tensor(), &head, &t)?;
        let plain = cross_entropy(&head.forward(x.as_tensor())?, &t)?;
        assert_eq!(bits(&fused)?, bits(&plain)?);
        let gf = fused.backward()?;
        let gp = plain.backward()?;
        let grad = |g: &candle_core::backprop::GradStore| g.get(x.as_tensor()).unwrap().clone();
        let (a, b) = (bits(&grad(&gf))?, bits(&grad(&gp))?);
        let diff = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        let md = (grad(&gf) - grad(&gp))?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(
            diff,
            0,
            "{diff} of {} gradient elements differ, by up to {md}",
            a.len()
        );
        let scaled = (head_cross_entropy(x.as_tensor(), &head, &t)? * 3.0)?.backward()?;
        let d = (grad(&scaled) - (grad(&gp) * 3.0)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-9, "{d}");
        // Without a graph only the loss is computed.
        let eval = head_cross_entropy(&x.as_tensor().detach(), &head, &t)?;
        assert_eq!(bits(&eval)?, bits(&plain)?);
        // The head packed once, as training runs it (`Llama::use_packed_head`): the same bits.
        let mut packed = head.clone();
        if packed.with_packed_products()? {
            let l = head_cross_entropy(x.as_tensor(), &packed, &t)?;
            assert_eq!(bits(&l)?, bits(&plain)?);
            assert_eq!(bits(&grad(&l.backward()?))?, b);
        } else {
            assert!(!crate::nn::packed::available());
        }
        Ok(())
    }

    #[test]
    fn row_blocks_cover_every_row_in_near_equal_blocks() {
        for n in [0, 1, 127, 128, 129, 300, 512, 513] {
            let b: Vec<(usize, usize)> = row_blocks(n).collect();
            assert_eq!(b.iter().map(|x| x.1).sum::<usize>(), n);
            assert!(b.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
            let (lo, hi) = (b.iter().map(|x| x.1).min(), b.iter().map(|x| x.1).max());
            assert!(hi.unwrap_or(0) <= HEAD_CHUNK_ROWS && hi.unwrap_or(0) - lo.unwrap_or(0) <= 1);
        }
    }
}
