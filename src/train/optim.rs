//! AdamW with PyTorch semantics and a saveable state, the linear warmup/decay schedule, and global
//! gradient-norm clipping. candle-nn's AdamW keeps its moments private, which rules out exact resume.

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use std::collections::HashMap;

/// AdamW hyper-parameters (PyTorch defaults).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Per-variable state: first and second moments and the variable's own step count (a parameter
/// added mid-run, like Dash's Δσ, starts its bias correction at its first update, as in PyTorch).
pub struct Slot {
    pub name: String,
    pub var: Var,
    pub m: Tensor,
    pub v: Tensor,
    pub t: u64,
}

/// AdamW over named variables.
pub struct AdamW {
    pub config: AdamWConfig,
    pub slots: Vec<Slot>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            slots: Vec::new(),
        }
    }

    /// Adds a variable with zero moments.
    /// Elements of every parameter this optimizer updates.
    pub fn trainable_params(&self) -> u64 {
        self.slots.iter().map(|s| s.var.elem_count() as u64).sum()
    }

    pub fn add(&mut self, name: impl Into<String>, var: Var) -> Result<()> {
        let m = var.as_tensor().zeros_like()?;
        self.slots.push(Slot {
            name: name.into(),
            v: m.clone(),
            m,
            var,
            t: 0,
        });
        Ok(())
    }

    /// One update with learning rate `lr` from gradients `grads` scaled by `scale` (clipping ×
    /// accumulation); variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64, scale: f64) -> Result<()> {
        let c = &self.config;
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let g = (g * scale)?;
            s.t += 1;
            s.m = ((&s.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            s.v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let bc1 = 1.0 - c.beta1.powi(s.t as i32);
            let bc2 = 1.0 - c.beta2.powi(s.t as i32);
            let mhat = (&s.m / bc1)?;
            let vhat = (&s.v / bc2)?;
            let mut p = s.var.as_tensor().clone();
            if c.weight_decay > 0.0 {
                p = (&p * (1.0 - lr * c.weight_decay))?;
            }
            let upd = (mhat / (vhat.sqrt()? + c.eps)?)?;
            s.var.set(&(p - (upd * lr)?)?)?;
        }
        Ok(())
    }

    /// Moments as named tensors (`<name>.m`, `<name>.v`) and step counts, for a checkpoint.
    pub fn state(&self) -> (HashMap<String, Tensor>, HashMap<String, u64>) {
        let mut t = HashMap::new();
        let mut steps = HashMap::new();
        for s in &self.slots {
            t.insert(format!("{}.m", s.name), s.m.clone());
            t.insert(format!("{}.v", s.name), s.v.clone());
            steps.insert(s.name.clone(), s.t);
        }
        (t, steps)
    }

    /// Restores moments and step counts saved by [`state`](Self::state). A missing or misshapen
    /// moment is the checkpoint's fault: a user-input error.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: &HashMap<String, u64>,
    ) -> crate::Result<()> {
        for s in &mut self.slots {
            let (Some(m), Some(v)) = (
                tensors.get(&format!("{}.m", s.name)),
                tensors.get(&format!("{}.v", s.name)),
            ) else {
                return Err(crate::Error::MissingTensor {
                    context: "optimizer state".into(),
                    tensor: format!("{}.m / {}.v", s.name, s.name),
                });
            };
            if m.dims() != s.var.dims() || v.dims() != s.var.dims() {
                return Err(crate::Error::shape(
                    format!("optimizer state for `{}`", s.name),
                    format!(
                        "moments {:?} / {:?}, parameter {:?}",
                        m.dims(),
                        v.dims(),
                        s.var.dims()
                    ),
                ));
            }
            let dtype = s.var.dtype();
            s.m = m.to_device(s.var.device())?.to_dtype(dtype)?;
            s.v = v.to_device(s.var.device())?.to_dtype(dtype)?;
            s.t = *steps.get(&s.name).unwrap_or(&0);
        }
        Ok(())
    }
}

/// Learning rate at optimizer step `step` (0-based): linear warmup from 0 over `warmup` steps,
/// then linear decay to 0 at `total` (Hugging Face's `get_linear_schedule_with_warmup`).
pub fn linear_schedule(lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return lr * step as f64 / warmup.max(1) as f64;
    }
    let rest = total.saturating_sub(warmup).max(1);
    lr * (total.saturating_sub(step) as f64 / rest as f64).max(0.0)
}

/// Global L2 norm of the gradients of `vars`.
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut total = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += g
                .to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
    }
    Ok(total.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_a_hand_computed_step_and_round_trips_state() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::new(&[1.0f64, -2.0], &dev)?;
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        });
        opt.add("x", x.clone())?;
        // loss = sum(x²) → g = 2x = [2, -4]; first Adam step moves each coordinate by lr·sign(g).
        let grads = x.as_tensor().sqr()?.sum_all()?.backward()?;
        opt.step(&grads, 0.01, 1.0)?;
        let got = x.as_tensor().to_vec1::<f64>()?;
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) + 0.01];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
        let (t, s) = opt.state();
        let y = Var::new(&[0.0f64, 0.0], &dev)?;
        let mut opt2 = AdamW::new(AdamWConfig::default());
        opt2.add("x", y)?;
        opt2.load_state(&t, &s).unwrap();
        assert_eq!(opt2.slots[0].t, 1);
        assert_eq!(
            opt2.slots[0].m.to_vec1::<f64>()?,
            opt.slots[0].m.to_vec1::<f64>()?
        );
        Ok(())
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(linear_schedule(1.0, 0, 10, 110), 0.0);
        assert!((linear_schedule(1.0, 5, 10, 110) - 0.5).abs() < 1e-12);
        assert!((linear_schedule(1.0, 10, 10, 110) - 1.0).abs() < 1e-12);
        assert!((linear_schedule(1.0, 60, 10, 110) - 0.5).abs() < 1e-12);
        assert_eq!(linear_schedule(1.0, 110, 10, 110), 0.0);
    }
}
