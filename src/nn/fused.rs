//! Fused CPU ops with hand-written backward passes, so that a training step keeps one tensor per
//! op instead of every intermediate of a composed expression (RMSNorm, softmax, dropout). On other
//! devices, in other dtypes, or with `TSD_COMPOSED=1` the composed candle expressions are used
//! (RMSNorm and softmax computed in f32 and cast back, as transformers does); tests compare the two.

use crate::nn::exp::{exp_negated, exp_shifted_in_place};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, D,
};
use rayon::prelude::*;
use std::sync::Arc;

/// The f32 values of a contiguous CPU storage (a custom op's input), in row-major order.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let Some((s, e)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what}: input must be contiguous")
    };
    match storage {
        CpuStorage::F32(d) => Ok(&d[s..e]),
        _ => candle_core::bail!("{what}: input must be f32"),
    }
}

/// Runs `f` on the f32 values of a CPU tensor in row-major order, without a copy when the tensor
/// is contiguous (a strided one is copied first).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = contiguous(t)?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => candle_core::bail!("expected a CPU f32 tensor, got {:?}", t.dtype()),
    }
}

fn fused_ok(x: &Tensor) -> bool {
    crate::device::fused_cpu(x.device(), x.dtype())
}

fn contiguous(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() && x.layout().start_offset() == 0 {
        Ok(x.clone())
    } else {
        x.affine(1.0, 0.0)
    }
}

struct RmsNorm {
    weight: Arc<Vec<f32>>,
    eps: f32,
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "rms-norm")?;
        let h = self.weight.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h)
            .zip(x.par_chunks(h))
            .for_each(|(yr, xr)| {
                let ms = xr.iter().map(|v| v * v).sum::<f32>() / h as f32;
                let r = 1.0 / (ms + self.eps).sqrt();
                for ((o, v), w) in yr.iter_mut().zip(xr).zip(self.weight.iter()) {
                    *o = v * r * w;
                }
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    /// `dx_j = r·gw_j − r³·x_j·(Σ_i gw_i x_i)/H` with `gw = g ∘ w`, `r = (mean(x²)+ε)^(−1/2)`.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let h = self.weight.len();
        let mut g = grad_res.flatten_all()?.to_vec1::<f32>()?;
        with_f32(arg, |x| {
            g.par_chunks_mut(h)
                .zip(x.par_chunks(h))
                .for_each(|(gr, xr)| {
                    let ms = xr.iter().map(|v| v * v).sum::<f32>() / h as f32;
                    let r = 1.0 / (ms + self.eps).sqrt();
                    let dot: f32 = gr
                        .iter()
                        .zip(self.weight.iter())
                        .zip(xr)
                        .map(|((g, w), x)| g * w * x)
                        .sum();
                    let c = r * r * r * dot / h as f32;
                    for ((gv, w), xv) in gr.iter_mut().zip(self.weight.iter()).zip(xr) {
                        *gv = r * *gv * w - c * xv;
                    }
                })
        })?;
        Ok(Some(Tensor::from_vec(g, arg.shape(), arg.device())?))
    }
}

/// `x / sqrt(mean(x²) + eps) · w` over the last dim; `w` is frozen (no gradient).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_ok(x) && x.track_op() {
        let weight = Arc::new(w.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        return contiguous(x)?.apply_op1(RmsNorm {
            weight,
            eps: eps as f32,
        });
    }
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    xf.broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(x.dtype())?
        .broadcast_mul(w)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "softmax")?;
        let n = *layout.shape().dims().last().unwrap_or(&1);
        let mut y = x.to_vec();
        y.par_chunks_mut(n).for_each(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            exp_shifted_in_place(row, m);
            let mut s = 0f32;
            for v in row.iter() {
                s += *v;
            }
            for v in row.iter_mut() {
                *v /= s;
            }
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    /// `dx = y ∘ (g − Σ g∘y)` row-wise.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let n = res.dim(D::Minus1)?;
        let mut g = grad_res.flatten_all()?.to_vec1::<f32>()?;
        with_f32(res, |y| {
            g.par_chunks_mut(n)
                .zip(y.par_chunks(n))
                .for_each(|(gr, yr)| {
                    let dot: f32 = gr.iter().zip(yr).map(|(a, b)| a * b).sum();
                    for (gv, yv) in gr.iter_mut().zip(yr) {
                        *gv = yv * (*gv - dot);
                    }
                })
        })?;
        Ok(Some(Tensor::from_vec(g, res.shape(), res.device())?))
    }
}

/// Softmax over the last dim.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if fused_ok(x) && x.track_op() {
        return contiguous(x)?.apply_op1(Softmax);
    }
    candle_nn::ops::softmax(&x.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(x.dtype())
}

/// Rows of at most this many elements per rayon task in the elementwise ops below.
const CHUNK: usize = 1 << 14;

struct SwiGlu;

/// `(silu(g), σ(g))` from `e = exp(−g)` (computed a slice at a time by [`exp_negated`]).
fn silu_and_sigmoid(g: f32, e: f32) -> (f32, f32) {
    let sig = 1.0 / (1.0 + e);
    (g * sig, sig)
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_slice(s1, l1, "swiglu")?, f32_slice(s2, l2, "swiglu")?);
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?}", l1.shape(), l2.shape())
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
            .for_each(|(yc, (gc, uc))| {
                // `yc` holds exp(−g) first; each element reads its own before overwriting it.
                exp_negated(gc, yc);
                for ((o, &gv), &uv) in yc.iter_mut().zip(gc).zip(uc) {
                    *o = silu_and_sigmoid(gv, *o).0 * uv;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// `du = dy·silu(g)`, `dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))`.
    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut dg = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut du = vec![0f32; dg.len()];
        with_f32(g, |gv| {
            with_f32(u, |uv| {
                dg.par_chunks_mut(CHUNK)
                    .zip(du.par_chunks_mut(CHUNK))
                    .zip(gv.par_chunks(CHUNK).zip(uv.par_chunks(CHUNK)))
                    .for_each(|((dgc, duc), (gc, uc))| {
                        // `duc` holds exp(−g) until each element's `du` replaces it.
                        exp_negated(gc, duc);
                        for (((dgv, duv), &x), &up) in
                            dgc.iter_mut().zip(duc.iter_mut()).zip(gc).zip(uc)
                        {
                            let (silu, sig) = silu_and_sigmoid(x, *duv);
                            let dy = *dgv;
                            *duv = dy * silu;
                            *dgv = dy * up * sig * (1.0 + x * (1.0 - sig));
                        }
                    })
            })
        })??;
        Ok((
            Some(Tensor::from_vec(dg, g.shape(), g.device())?),
            Some(Tensor::from_vec(du, u.shape(), u.device())?),
        ))
    }
}

/// SwiGLU's gating `silu(g) ∘ u` for `g, u: [.., I]`: one fused op on the CPU in f32 (one pass
/// forward, one backward, nothing kept but the inputs), composed candle ops elsewhere.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if fused_ok(g) && u.dtype() == DType::F32 {
        return contiguous(g)?.apply_op2(&contiguous(u)?, SwiGlu);
    }
    g.silu()? * u
}

struct Dropout {
    /// 1 = keep.
    mask: Arc<Vec<u8>>,
    scale: f32,
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "dropout")?;
        Ok((CpuStorage::F32(self.apply(x)), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let d = with_f32(grad_res, |g| self.apply(g))?;
        Ok(Some(Tensor::from_vec(
            d,
            grad_res.shape(),
            grad_res.device(),
        )?))
    }
}

impl Dropout {
    /// `x ∘ mask · scale`, in parallel blocks (forward and backward are the same map).
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(self.mask.par_chunks(CHUNK)))
            .for_each(|(yc, (xc, mc))| {
                for ((o, &v), &m) in yc.iter_mut().zip(xc).zip(mc) {
                    *o = if m == 1 { v * self.scale } else { 0.0 };
                }
            });
        y
    }
}

/// Inverted dropout with a given keep-mask (1 = keep, length = `x.elem_count()`), scale `1/keep`.
/// The mask is kept as bytes, not as an f32 tensor.
pub fn dropout_with_mask(x: &Tensor, mask: Vec<u8>, keep: f32) -> Result<Tensor> {
    if mask.len() != x.elem_count() {
        candle_core::bail!(
            "dropout: mask of {} for {} values",
            mask.len(),
            x.elem_count()
        );
    }
    if fused_ok(x) {
        return contiguous(x)?.apply_op1(Dropout {
            mask: Arc::new(mask),
            scale: 1.0 / keep,
        });
    }
    let m: Vec<f32> = mask
        .iter()
        .map(|&b| if b == 1 { 1.0 / keep } else { 0.0 })
        .collect();
    x.mul(&Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;
    use candle_core::Var;

    /// Largest absolute elementwise difference.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn check(
        f_fused: impl Fn(&Tensor) -> Result<Tensor>,
        f_ref: impl Fn(&Tensor) -> Result<Tensor>,
        shape: (usize, usize, usize),
    ) -> Result<()> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?)?;
        let probe = Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?;
        let a = f_fused(x.as_tensor())?;
        let b = f_ref(x.as_tensor())?;
        assert!(
            max_diff(&a, &b) < 1e-5,
            "forward differs by {}",
            max_diff(&a, &b)
        );
        let ga = (a * &probe)?.sum_all()?.backward()?;
        let gb = (b * &probe)?.sum_all()?.backward()?;
        let d = max_diff(
            ga.get(x.as_tensor()).unwrap(),
            gb.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-4, "gradient differs by {d}");
        Ok(())
    }

    #[test]
    fn rms_norm_matches_the_composed_expression() -> Result<()> {
        let w = Tensor::randn(1f32, 0.3, 6, &Device::Cpu)?;
        check(
            |x| rms_norm(x, &w, 1e-5),
            |x| {
                let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
                x.broadcast_div(&(ms + 1e-5)?.sqrt()?)?.broadcast_mul(&w)
            },
            (2, 3, 6),
        )
    }

    #[test]
    fn softmax_matches_candle_nn() -> Result<()> {
        check(
            softmax_last,
            |x| candle_nn::ops::softmax(x, D::Minus1),
            (2, 4, 5),
        )
    }

    #[test]
    fn swiglu_matches_the_composed_expression() -> Result<()> {
        let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 40_000), &Device::Cpu)?)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 40_000), &Device::Cpu)?;
        check(
            |g| swiglu(g, u.as_tensor()),
            |g| g.silu()? * u.as_tensor(),
            (2, 3, 40_000),
        )?;
        // and the gradient reaching `u`
        let g = Tensor::randn(0f32, 2.0, (2, 3, 40_000), &Device::Cpu)?;
        let a = (swiglu(&g, u.as_tensor())? * &probe)?
            .sum_all()?
            .backward()?;
        let b = ((g.silu()? * u.as_tensor())? * &probe)?
            .sum_all()?
            .backward()?;
        let d = max_diff(a.get(u.as_tensor()).unwrap(), b.get(u.as_tensor()).unwrap());
        assert!(d < 1e-5, "du differs by {d}");
        Ok(())
    }

    #[test]
    fn dropout_matches_a_float_mask() -> Result<()> {
        let mask: Vec<u8> = (0..24).map(|i| (i % 3 != 0) as u8).collect();
        let m2 = mask.clone();
        check(
            move |x| dropout_with_mask(x, mask.clone(), 0.8),
            move |x| {
                let m: Vec<f32> = m2.iter().map(|&b| b as f32 / 0.8).collect();
                x.mul(&Tensor::from_vec(m, x.shape(), x.device())?)
            },
            (2, 3, 4),
        )
    }
}
