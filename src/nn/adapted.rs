//! The linear layer that adapters wrap (README, Definitions: LoRA-Dash):
//! `h = W x + s·B A·drop(x) [+ Ū diag(Δσ) V̄ᵀ·drop(x)]`, with `W` frozen (or trainable under full
//! fine-tuning), `A: [r, in]` Kaiming-uniform, `B: [out, r]` zero, `s = α/r` (or `α/√r`).
//!
//! Mixed precision as PEFT does it: `W` is held in the model's dtype (f32, bf16 or f16), every
//! trainable parameter (A, B, Δσ, a fully fine-tuned W) and the frozen Ū, V̄ in f32
//! ([`adapter_dtype`]); the adapter's input is cast to f32, its product computed in f32 and added
//! to the base output in f32, and the sum cast back once. In bf16 a Δσ of 0.1 cannot move by a
//! 2e-4 step (half of bf16's spacing there is 2.4e-4); in f32 it can.

use crate::adapter::{DashNaming, DashState, ModuleAdapter};
use crate::directions::{change_rates, Tsd, Update};
use crate::linalg::{Matrix, Svd};
use crate::nn::frozen::matmul_2d;
use crate::nn::FrozenLinear;
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::cell::Cell;

/// The dtype of adapter parameters, their optimizer state and the adapter's arithmetic over a
/// base in `base`: f32, or f64 over an f64 base (the finite-difference tests).
pub fn adapter_dtype(base: DType) -> DType {
    if base == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Per-forward settings: training mode and a seeded dropout stream (deterministic on CPU).
pub struct ForwardCtx {
    pub train: bool,
    pub dropout: f32,
    seed: u64,
    /// Dropout calls so far in this forward pass; each call's mask has its own stream.
    calls: Cell<u64>,
}

impl ForwardCtx {
    /// Inference: no dropout.
    pub fn eval() -> Self {
        ForwardCtx {
            train: false,
            dropout: 0.0,
            seed: 0,
            calls: Cell::new(0),
        }
    }

    /// Training with dropout probability `p` on the adapter input, masks drawn from `seed`.
    pub fn train(p: f32, seed: u64) -> Self {
        ForwardCtx {
            train: true,
            dropout: p,
            seed,
            calls: Cell::new(0),
        }
    }

    /// `x` with inverted dropout applied (training only). On the CPU the mask comes from
    /// [`dropout_mask`]'s parallel blocks (bit-identical whatever the thread count or the op
    /// path); elsewhere it is drawn on the device from its generator, re-seeded per call with the
    /// same `(seed, call)` stream (deterministic for a given device and candle version).
    fn drop(&self, x: &Tensor) -> Result<Tensor> {
        if !self.train || self.dropout <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.dropout;
        let call = self.calls.replace(self.calls.get() + 1);
        if matches!(x.device(), Device::Cpu) {
            let mask = dropout_mask(x.elem_count(), keep, self.seed, call);
            return crate::nn::fused::dropout_with_mask(x, mask, keep);
        }
        x.device()
            .set_seed(self.seed ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15))?;
        let u = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
        let mask = (u.lt(keep as f64)?.to_dtype(x.dtype())? * (1.0 / keep as f64))?;
        x.mul(&mask)
    }
}

/// A keep-mask of `n` bytes (1 = keep, with probability `keep`), drawn in parallel: block `c` of
/// [`MASK_BLOCK`] elements comes from its own generator seeded by `(seed, call, c)`, so the mask
/// depends on neither the thread count nor the order the blocks run in.
pub fn dropout_mask(n: usize, keep: f32, seed: u64, call: u64) -> Vec<u8> {
    use rayon::prelude::*;
    // P(u32 < threshold) = keep; keep = 1 gives 2³², which every draw is below.
    let threshold = (keep.clamp(0.0, 1.0) as f64 * 4_294_967_296.0) as u64;
    let mut mask = vec![0u8; n];
    mask.par_chunks_mut(MASK_BLOCK)
        .enumerate()
        .for_each(|(c, block)| {
            let stream = seed
                ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (c as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            let mut rng = rand::rngs::SmallRng::seed_from_u64(stream);
            for m in block.iter_mut() {
                *m = ((rng.random::<u32>() as u64) < threshold) as u8;
            }
        });
    mask
}

/// Elements per independently seeded block of a dropout mask.
pub const MASK_BLOCK: usize = 1 << 14;

/// LoRA factors of one module.
pub struct LoraLayer {
    /// `[r, in]`.
    pub a: Var,
    /// `[out, r]`.
    pub b: Var,
    pub r: usize,
    pub alpha: f64,
    pub scaling: f64,
}

/// LoRA-Dash's extra term: frozen `Ū [out, s]`, `V̄ᵀ [s, in]`, trainable `Δσ [s]` (unscaled).
pub struct DashLayer {
    pub u: Tensor,
    pub vt: Tensor,
    pub delta_sigma: Var,
    pub indices: Vec<usize>,
    /// σ_I of W at the switch.
    pub sigma: Vec<f32>,
    /// δ̂_I at the switch.
    pub delta_hat: Vec<f32>,
}

/// What the switch picked in one module.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DashSwitch {
    pub module: String,
    pub tsd: Vec<Tsd>,
}

/// A linear layer with its adapter.
pub struct AdaptedLinear {
    /// HF module path.
    pub module: String,
    base: FrozenLinear,
    /// Full fine-tuning: the weight itself is trainable (then `base` is W₀ for ΔW = W − W₀).
    pub full: Option<Var>,
    pub lora: Option<LoraLayer>,
    pub dash: Option<DashLayer>,
    merged: bool,
}

fn to_matrix(t: &Tensor) -> Result<Matrix> {
    let (r, c) = t.dims2()?;
    let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Matrix::new(r, c, data).map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// A `[rows, cols]` tensor on `dev` in `dtype`.
fn from_matrix(m: &Matrix, dev: &Device, dtype: DType) -> Result<Tensor> {
    Tensor::from_vec(m.data.clone(), (m.rows, m.cols), dev)?.to_dtype(dtype)
}

impl AdaptedLinear {
    /// A frozen linear without adapter; `weight: [out, in]`.
    pub fn frozen(module: impl Into<String>, weight: Tensor) -> Self {
        AdaptedLinear {
            module: module.into(),
            base: FrozenLinear::new(weight),
            full: None,
            lora: None,
            dash: None,
            merged: false,
        }
    }

    /// The base weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        self.base.weight()
    }

    /// Opt-in bf16 products for the frozen base ([`FrozenLinear::with_bf16_products`]); false
    /// where they are not available. A later [`Self::merge`] makes a new f32 base.
    pub fn use_bf16_products(&mut self) -> Result<bool> {
        self.base.with_bf16_products()
    }

    /// Back to f32 products for the frozen base.
    pub fn drop_bf16_products(&mut self) {
        self.base.without_bf16_products()
    }

    /// Opt-in packed f32 forward products for the frozen base
    /// ([`FrozenLinear::with_packed_products`]: the same bits, the weight's bytes again); false
    /// where they are not available. A later [`Self::merge`] makes a new base without them.
    pub fn use_packed_products(&mut self) -> Result<bool> {
        self.base.with_packed_products()
    }

    /// The frozen base's f32 bytes as [`Self::use_packed_products`] packs them.
    pub fn packed_bytes(&self) -> usize {
        self.base.packed_bytes()
    }

    /// `(out, in)`.
    pub fn shape(&self) -> Result<(usize, usize)> {
        self.weight().dims2()
    }

    /// Adds LoRA: A Kaiming-uniform (a = √5, i.e. U(±1/√in)), B zero, both f32 whatever the
    /// base dtype; `seed` makes it reproducible.
    pub fn add_lora(&mut self, r: usize, alpha: f64, use_rslora: bool, seed: u64) -> Result<()> {
        let (out, inp) = self.shape()?;
        let dev = self.weight().device().clone();
        let bound = 1.0 / (inp as f32).sqrt();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let a: Vec<f32> = (0..r * inp)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let ad = adapter_dtype(self.weight().dtype());
        let a = Var::from_tensor(&Tensor::from_vec(a, (r, inp), &dev)?.to_dtype(ad)?)?;
        let b = Var::from_tensor(&Tensor::zeros((out, r), ad, &dev)?)?;
        let scaling = if use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        self.lora = Some(LoraLayer {
            a,
            b,
            r,
            alpha,
            scaling,
        });
        Ok(())
    }

    /// Makes W itself trainable (full fine-tuning of this module), as an f32 master copy.
    pub fn make_full(&mut self) -> Result<()> {
        self.full = Some(Var::from_tensor(
            &self
                .weight()
                .to_dtype(adapter_dtype(self.weight().dtype()))?
                .copy()?,
        )?);
        Ok(())
    }

    /// Trainable variables of this layer.
    pub fn vars(&self) -> Vec<Var> {
        let mut v = Vec::new();
        if let Some(w) = &self.full {
            v.push(w.clone());
        }
        if let Some(l) = &self.lora {
            v.push(l.a.clone());
            v.push(l.b.clone());
        }
        if let Some(d) = &self.dash {
            v.push(d.delta_sigma.clone());
        }
        v
    }

    /// The current LoRA update `s·B·A` (f64 factors) for TSD identification.
    pub fn lora_update(&self) -> Result<Option<Update>> {
        let Some(l) = &self.lora else { return Ok(None) };
        let a = to_matrix(l.a.as_tensor())?;
        let b = to_matrix(l.b.as_tensor())?;
        let bs = faer::Mat::from_fn(b.rows, b.cols, |i, j| l.scaling * b.at(i, j) as f64);
        Ok(Some(Update::LowRank {
            b: bs,
            a: a.to_f64(),
        }))
    }

    /// LoRA-Dash identification (README, Definitions: LoRA-Dash, the switch): δ̂ from the current `s·B·A` against W's SVD,
    /// top-`s` directions frozen as Ū, V̄ᵀ, and `s` new Δσ initialised to zero, so the output is
    /// unchanged at the switch.
    pub fn start_dash(
        &mut self,
        s: usize,
        svd: &Svd,
        pick: crate::directions::DashPick,
    ) -> Result<DashSwitch> {
        let update = self.lora_update()?.ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: LoRA-Dash needs a LoRA adapter", self.module))
        })?;
        let (coords, rates) = change_rates(&update, svd, pick.floor);
        let scores = pick.by.scores(&coords, &svd.s, pick.floor);
        let tsd = Tsd::select_by(&coords, &rates, &scores, &svd.s, s);
        let (out, inp) = self.shape()?;
        let idx: Vec<usize> = tsd.iter().map(|t| t.index).collect();
        let k = idx.len();
        let u: Vec<f32> = (0..out * k)
            .map(|x| svd.u[(x / k, idx[x % k])] as f32)
            .collect();
        let vt: Vec<f32> = (0..k * inp)
            .map(|x| svd.v[(x % inp, idx[x / inp])] as f32)
            .collect();
        let dev = self.weight().device().clone();
        let ad = adapter_dtype(self.weight().dtype());
        self.dash = Some(DashLayer {
            u: Tensor::from_vec(u, (out, k), &dev)?.to_dtype(ad)?,
            vt: Tensor::from_vec(vt, (k, inp), &dev)?.to_dtype(ad)?,
            delta_sigma: Var::from_tensor(&Tensor::zeros(k, ad, &dev)?)?,
            indices: idx,
            sigma: tsd.iter().map(|t| t.sigma as f32).collect(),
            delta_hat: tsd.iter().map(|t| t.delta as f32).collect(),
        });
        Ok(DashSwitch {
            module: self.module.clone(),
            tsd,
        })
    }

    /// `W + s·B·A + Ū diag(Δσ) V̄ᵀ`, `[out, in]` (or the trained W under full fine-tuning),
    /// summed in f32 and cast once to the base dtype.
    pub fn merged_weight(&self) -> Result<Tensor> {
        let dtype = self.weight().dtype();
        let mut w = match &self.full {
            Some(v) => v.as_tensor().detach(),
            None => self.weight().to_dtype(adapter_dtype(dtype))?,
        };
        if let Some(l) = &self.lora {
            w = (w + (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scaling)?)?;
        }
        if let Some(d) = &self.dash {
            w = (w + d
                .u
                .broadcast_mul(&d.delta_sigma.as_tensor().unsqueeze(0)?)?
                .matmul(&d.vt)?)?;
        }
        w.detach().to_dtype(dtype)?.contiguous()
    }

    /// Folds the adapter into the base weight for inference (one way: in bf16 the cast of the
    /// merged weight cannot be undone exactly).
    pub fn merge(&mut self) -> Result<()> {
        if !self.merged && (self.lora.is_some() || self.full.is_some()) {
            let w = self.merged_weight()?;
            self.base = FrozenLinear::new(w);
            self.merged = true;
        }
        Ok(())
    }

    /// The PEFT view of this module's adapter (None without LoRA).
    pub fn to_module_adapter(&self) -> Result<Option<ModuleAdapter>> {
        let Some(l) = &self.lora else { return Ok(None) };
        let dash = match &self.dash {
            None => None,
            Some(d) => Some(DashState {
                u: to_matrix(&d.u)?,
                vt: to_matrix(&d.vt)?,
                delta_sigma: d.delta_sigma.as_tensor().to_dtype(DType::F32)?.to_vec1()?,
                indices: Some(d.indices.clone()),
                sigma_at_switch: Some(d.sigma.clone()),
                delta_hat_at_switch: Some(d.delta_hat.clone()),
                naming: DashNaming::Tsd,
            }),
        };
        Ok(Some(ModuleAdapter {
            module: self.module.clone(),
            r: l.r,
            alpha: l.alpha,
            scaling: l.scaling,
            a: to_matrix(l.a.as_tensor())?,
            b: to_matrix(l.b.as_tensor())?,
            dora_magnitude: None,
            dash,
        }))
    }

    /// Loads saved adapter values (a resumed run, an evaluated adapter); shapes must agree. A
    /// mismatch is the saved adapter's fault, so it is a user-input error.
    pub fn load_module_adapter(&mut self, m: &ModuleAdapter) -> crate::Result<()> {
        let dev = self.weight().device().clone();
        let ad = adapter_dtype(self.weight().dtype());
        let module = self.module.clone();
        let l = self.lora.as_mut().ok_or_else(|| {
            crate::Error::InvalidArgument(format!("{module}: no LoRA layer to load into"))
        })?;
        if l.a.dims() != [m.a.rows, m.a.cols] || l.b.dims() != [m.b.rows, m.b.cols] {
            return Err(crate::Error::shape(
                &module,
                format!(
                    "saved LoRA A {}×{}, B {}×{}; the model's A {:?}, B {:?}",
                    m.a.rows,
                    m.a.cols,
                    m.b.rows,
                    m.b.cols,
                    l.a.dims(),
                    l.b.dims()
                ),
            ));
        }
        l.a.set(&from_matrix(&m.a, &dev, ad)?)?;
        l.b.set(&from_matrix(&m.b, &dev, ad)?)?;
        self.dash = match &m.dash {
            None => None,
            Some(d) => Some(DashLayer {
                u: from_matrix(&d.u, &dev, ad)?,
                vt: from_matrix(&d.vt, &dev, ad)?,
                delta_sigma: Var::from_tensor(
                    &Tensor::from_vec(d.delta_sigma.clone(), d.s(), &dev)?.to_dtype(ad)?,
                )?,
                indices: d.indices.clone().unwrap_or_default(),
                sigma: d.sigma_at_switch.clone().unwrap_or_default(),
                delta_hat: d.delta_hat_at_switch.clone().unwrap_or_default(),
            }),
        };
        Ok(())
    }

    /// `x: [.., in]` → `[.., out]`, both in the base dtype.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let dtype = x.dtype();
        let ad = adapter_dtype(dtype);
        let mut y = match &self.full {
            Some(w) if !self.merged => {
                matmul_2d(&x.to_dtype(ad)?, &w.as_tensor().t()?)?.to_dtype(dtype)?
            }
            _ => self.base.forward(x)?,
        };
        if self.merged {
            return Ok(y);
        }
        if let Some(l) = &self.lora {
            // LoRA and the Dash term as one low-rank product, so that Dash adds no pass over the
            // activations: y += (drop(x)·Lᵀ)·Rᵀ with L = [A; V̄ᵀ] `[r+s, in]` and
            // R = [s·B, Ū·diag(Δσ)] `[out, r+s]`. Ū, V̄ are constants (no gradient); A, B and Δσ
            // get theirs through the small concatenations.
            let xd = ctx.drop(&x.to_dtype(ad)?)?;
            let sb = (l.b.as_tensor() * l.scaling)?;
            let (left, right) = match &self.dash {
                None => (l.a.as_tensor().clone(), sb),
                Some(d) => (
                    Tensor::cat(&[l.a.as_tensor(), &d.vt], 0)?,
                    Tensor::cat(&[&sb, &d.u.broadcast_mul(d.delta_sigma.as_tensor())?], 1)?,
                ),
            };
            let delta = matmul_2d(&matmul_2d(&xd, &left.t()?)?, &right.t()?)?;
            y = (y.to_dtype(ad)? + delta)?.to_dtype(dtype)?;
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::svd_f64;

    fn layer(dtype: DType) -> Result<AdaptedLinear> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f64, 1.0, (6, 5), &dev)?.to_dtype(dtype)?;
        let mut l = AdaptedLinear::frozen("m", w);
        l.add_lora(2, 4.0, false, 1)?;
        // a non-zero B so that every path carries signal
        let b = Tensor::randn(0f64, 0.5, (6, 2), &dev)?.to_dtype(dtype)?;
        l.lora.as_ref().unwrap().b.set(&b)?;
        Ok(l)
    }

    fn w_svd(l: &AdaptedLinear) -> Svd {
        let w = l.weight().to_dtype(DType::F64).unwrap();
        let (r, c) = w.dims2().unwrap();
        let v = w.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        svd_f64(faer::Mat::from_fn(r, c, |i, j| v[i * c + j]).as_ref()).unwrap()
    }

    #[test]
    fn dropout_masks_keep_the_rate_and_do_not_depend_on_threads() {
        let n = 3 * MASK_BLOCK + 123;
        let m = dropout_mask(n, 0.95, 7, 3);
        let kept = m.iter().filter(|&&b| b == 1).count() as f64 / n as f64;
        // binomial sd at n ≈ 49k is 0.001
        assert!((kept - 0.95).abs() < 0.005, "kept {kept}");
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(one.install(|| dropout_mask(n, 0.95, 7, 3)), m);
        assert_ne!(
            dropout_mask(n, 0.95, 7, 4),
            m,
            "each call draws its own mask"
        );
        assert_ne!(
            dropout_mask(n, 0.95, 8, 3),
            m,
            "each seed draws its own mask"
        );
        assert!(dropout_mask(1000, 1.0, 1, 1).iter().all(|&b| b == 1));
        assert!(dropout_mask(1000, 0.0, 1, 1).iter().all(|&b| b == 0));
    }

    #[test]
    fn gradients_match_finite_differences_in_f64() -> Result<()> {
        let mut l = layer(DType::F64)?;
        let svd = w_svd(&l);
        l.start_dash(3, &svd, crate::directions::DashPick::default())?;
        l.dash
            .as_ref()
            .unwrap()
            .delta_sigma
            .set(&Tensor::new(&[0.3f64, -0.2, 0.1], &Device::Cpu)?)?;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (4, 5), &Device::Cpu)?)?;
        let ctx = ForwardCtx::eval();
        let loss = |l: &AdaptedLinear, x: &Tensor| -> Result<f64> {
            l.forward(x, &ctx)?.sqr()?.sum_all()?.to_scalar::<f64>()
        };
        let grads = l
            .forward(x.as_tensor(), &ctx)?
            .sqr()?
            .sum_all()?
            .backward()?;
        let mut vars: Vec<Var> = l.vars();
        vars.push(x.clone());
        for v in &vars {
            let g = grads
                .get(v.as_tensor())
                .expect("every trainable variable gets a gradient");
            let g = g.flatten_all()?.to_vec1::<f64>()?;
            let base = v.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            assert!(g.iter().any(|x| x.abs() > 1e-8), "zero gradient");
            for i in 0..base.len() {
                let h = 1e-6;
                let mut p = base.clone();
                p[i] += h;
                v.set(&Tensor::from_vec(p.clone(), v.shape(), &Device::Cpu)?)?;
                let up = loss(&l, x.as_tensor())?;
                p[i] -= 2.0 * h;
                v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu)?)?;
                let down = loss(&l, x.as_tensor())?;
                v.set(&Tensor::from_vec(base.clone(), v.shape(), &Device::Cpu)?)?;
                let fd = (up - down) / (2.0 * h);
                assert!(
                    (fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "fd {fd} vs autograd {}",
                    g[i]
                );
            }
        }
        Ok(())
    }

    /// `--dash-pick enrichment` picks the largest |uᵀΔWv|, the change rate the largest
    /// |uᵀΔWv|/σ; each matches a direct ranking of the same coordinates.
    #[test]
    fn dash_pick_ranks_by_change_rate_or_enrichment() -> Result<()> {
        use crate::directions::{DashPick, Ranking};
        let mut l = layer(DType::F32)?;
        let svd = w_svd(&l);
        let update = l.lora_update()?.unwrap();
        let (coords, rates) = change_rates(&update, &svd, Default::default());
        let top = |v: &[f64]| crate::directions::top_k(v, 3);
        let abs: Vec<f64> = coords.iter().map(|c| c.abs()).collect();
        for (by, want) in [
            (Ranking::ChangeRate, top(&rates)),
            (Ranking::Enrichment, top(&abs)),
        ] {
            l.dash = None;
            let pick = DashPick {
                by,
                ..Default::default()
            };
            let got: Vec<usize> = l
                .start_dash(3, &svd, pick)?
                .tsd
                .iter()
                .map(|t| t.index)
                .collect();
            assert_eq!(got, want, "{by:?}");
        }
        Ok(())
    }

    #[test]
    fn dash_switch_is_continuous_and_merge_round_trips() -> Result<()> {
        let mut l = layer(DType::F32)?;
        let w0 = l.weight().clone();
        let x = Tensor::randn(0f32, 1.0, (3, 5), &Device::Cpu)?;
        let ctx = ForwardCtx::eval();
        let before = l.forward(&x, &ctx)?;
        let svd = w_svd(&l);
        let sw = l.start_dash(3, &svd, crate::directions::DashPick::default())?;
        assert_eq!(sw.tsd.len(), 3);
        let after = l.forward(&x, &ctx)?;
        assert_eq!(
            before.to_vec2::<f32>()?,
            after.to_vec2::<f32>()?,
            "output must not jump at the switch"
        );
        l.dash
            .as_ref()
            .unwrap()
            .delta_sigma
            .set(&Tensor::new(&[0.5f32, 0.25, -1.0], &Device::Cpu)?)?;
        let unmerged = l.forward(&x, &ctx)?;
        l.merge()?;
        let merged = l.forward(&x, &ctx)?;
        assert!(
            unmerged
                .sub(&merged)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?
                < 1e-5
        );
        // Ū, V̄ are W's singular vectors at the picked indices.
        let d = l.dash.as_ref().unwrap();
        let u = d.u.to_vec2::<f32>()?;
        for (j, &i) in d.indices.iter().enumerate() {
            let dot: f64 = (0..6).map(|r| u[r][j] as f64 * svd.u[(r, i)]).sum();
            assert!((dot.abs() - 1.0).abs() < 1e-5);
        }
        // save → load round trip
        let m = l.to_module_adapter()?.unwrap();
        let mut l2 = AdaptedLinear::frozen("m", w0);
        l2.add_lora(2, 4.0, false, 99)?;
        l2.load_module_adapter(&m).unwrap();
        let again = l2.forward(&x, &ctx)?;
        assert!(unmerged.sub(&again)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6);
        Ok(())
    }

    /// PEFT's mixed precision: over a bf16 base, A, B and Δσ are f32, so small AdamW steps on a
    /// Δσ of 0.1 accumulate; the same per-step updates applied to a bf16 Δσ round away (bf16's
    /// spacing at 0.1 is 2⁻¹¹ ≈ 4.9e-4, so a step under 2.4e-4 is lost).
    #[test]
    fn bf16_base_keeps_dash_updates_that_bf16_parameters_would_round_away() -> Result<()> {
        use crate::train::optim::{AdamW, AdamWConfig};
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (16, 12), &dev)?.to_dtype(DType::BF16)?;
        let mut l = AdaptedLinear::frozen("m", w);
        l.add_lora(2, 4.0, false, 1)?;
        let b = Tensor::randn(0f32, 0.5, (16, 2), &dev)?;
        l.lora.as_ref().unwrap().b.set(&b)?;
        let svd = w_svd(&l);
        l.start_dash(3, &svd, crate::directions::DashPick::default())?;
        let (lora, d) = (l.lora.as_ref().unwrap(), l.dash.as_ref().unwrap());
        for v in [&lora.a, &lora.b, &d.delta_sigma] {
            assert_eq!(v.dtype(), DType::F32, "adapter parameters are f32");
        }
        d.delta_sigma
            .set(&Tensor::new(&[0.1f32, 0.1, 0.1], &dev)?)?;
        let mut opt = AdamW::new(AdamWConfig::default());
        opt.add("ds", d.delta_sigma.clone())?;
        let x = Tensor::randn(0f32, 1.0, (8, 12), &dev)?.to_dtype(DType::BF16)?;
        let (lr, k) = (1e-4, 5);
        let mut prev = d.delta_sigma.as_tensor().to_vec1::<f32>()?;
        let mut pure_bf16 = [half::bf16::from_f32(0.1); 3];
        for _ in 0..k {
            let y = l.forward(&x, &ForwardCtx::eval())?;
            assert_eq!(y.dtype(), DType::BF16, "output in the base dtype");
            let loss = y.to_dtype(DType::F32)?.sqr()?.sum_all()?;
            opt.step(&loss.backward()?, lr, 1.0)?;
            let now = d.delta_sigma.as_tensor().to_vec1::<f32>()?;
            assert_eq!(opt.slots[0].m.dtype(), DType::F32, "optimizer state is f32");
            for j in 0..3 {
                // the same update applied to a bf16 parameter, rounded as bf16 storage would
                let step = now[j] - prev[j];
                pure_bf16[j] = half::bf16::from_f32(pure_bf16[j].to_f32() + step);
            }
            prev = now;
        }
        for j in 0..3 {
            let moved = (prev[j] - 0.1).abs() as f64;
            assert!(moved > 0.5 * k as f64 * lr, "f32 Δσ moved only {moved}");
            assert_eq!(
                pure_bf16[j],
                half::bf16::from_f32(0.1),
                "bf16 Δσ would not move"
            );
        }
        Ok(())
    }
}
