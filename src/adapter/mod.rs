//! LoRA and LoRA-Dash adapters: PEFT config and tensor naming, reading (tolerant), writing
//! (strict, atomic), and folding a Dash adapter into a plain rank-(r+s) LoRA.
//!
//! Layouts (PyTorch/PEFT): A `[r, in]`, B `[out, r]`, so `ΔW = scaling·B·A` is `[out, in]`.

pub mod config;
pub mod naming;
pub mod read;
pub mod write;

use crate::directions::Update;
use crate::linalg::Matrix;
use faer::Mat;

pub use config::AdapterConfig;
pub use read::load_adapter;
pub use write::{fold_dash, write_adapter};

/// Which naming a LoRA-Dash module was stored with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DashNaming {
    Tsd,
    Official,
}

/// The LoRA-Dash part of one module (README, Definitions: LoRA-Dash): `Ū diag(Δσ) V̄ᵀ`, added unscaled.
#[derive(Clone, Debug, PartialEq)]
pub struct DashState {
    /// Ū, `[out, s]`.
    pub u: Matrix,
    /// V̄ᵀ, `[s, in]`.
    pub vt: Matrix,
    /// Δσ, length s.
    pub delta_sigma: Vec<f32>,
    /// Indices I into W's singular values, when stored (tsd) or recovered (official).
    pub indices: Option<Vec<usize>>,
    /// σ_I at the switch (tsd only).
    pub sigma_at_switch: Option<Vec<f32>>,
    /// δ̂_I at the switch (tsd only).
    pub delta_hat_at_switch: Option<Vec<f32>>,
    pub naming: DashNaming,
}

impl DashState {
    /// s, the number of directions.
    pub fn s(&self) -> usize {
        self.delta_sigma.len()
    }
}

/// One adapted linear module.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleAdapter {
    /// HF module path, e.g. `model.layers.3.self_attn.q_proj`.
    pub module: String,
    pub r: usize,
    pub alpha: f64,
    /// PEFT's scaling for this module (`α/r`, or `α/√r` with rsLoRA).
    pub scaling: f64,
    /// A, `[r, in]`.
    pub a: Matrix,
    /// B, `[out, r]`.
    pub b: Matrix,
    /// DoRA magnitude `[out]`, if present (tsd analyses only the LoRA direction part then).
    pub dora_magnitude: Option<Vec<f32>>,
    pub dash: Option<DashState>,
}

impl ModuleAdapter {
    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.b.rows, self.a.cols)
    }

    /// ΔW in factored form: `[scaling·B | Ū diag(Δσ)] · [A ; V̄ᵀ]` (f64).
    pub fn update(&self) -> Update {
        let (out, inp) = self.shape();
        let s = self.dash.as_ref().map_or(0, DashState::s);
        let q = self.r + s;
        let b = Mat::from_fn(out, q, |i, j| {
            if j < self.r {
                self.scaling * self.b.at(i, j) as f64
            } else {
                let d = self
                    .dash
                    .as_ref()
                    .expect("dash columns only exist with dash");
                d.u.at(i, j - self.r) as f64 * d.delta_sigma[j - self.r] as f64
            }
        });
        let a = Mat::from_fn(q, inp, |i, j| {
            if i < self.r {
                self.a.at(i, j) as f64
            } else {
                self.dash
                    .as_ref()
                    .expect("dash rows only exist with dash")
                    .vt
                    .at(i - self.r, j) as f64
            }
        });
        Update::LowRank { b, a }
    }

    /// The plain LoRA part only, `scaling·B·A`.
    pub fn lora_update(&self) -> Update {
        let b = Mat::from_fn(self.b.rows, self.r, |i, j| {
            self.scaling * self.b.at(i, j) as f64
        });
        Update::LowRank {
            b,
            a: self.a.to_f64(),
        }
    }

    /// Trainable parameters: `r·(in+out)` (+ s for Dash's Δσ, + out for a DoRA magnitude).
    pub fn trainable_params(&self) -> u64 {
        let (out, inp) = self.shape();
        let mut n = (self.r * (out + inp)) as u64;
        if let Some(d) = &self.dash {
            n += d.s() as u64;
        }
        if let Some(m) = &self.dora_magnitude {
            n += m.len() as u64;
        }
        n
    }

    /// Frozen parameters stored with the adapter: Dash's Ū and V̄, `s·(in+out)`.
    pub fn frozen_stored_params(&self) -> u64 {
        let (out, inp) = self.shape();
        self.dash
            .as_ref()
            .map_or(0, |d| (d.s() * (out + inp)) as u64)
    }
}

/// A loaded adapter: config, modules by HF path, and what the loader noticed.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub path: std::path::PathBuf,
    pub config: AdapterConfig,
    /// Sorted by module path.
    pub modules: Vec<ModuleAdapter>,
    /// Things a user should know (DoRA, base-modifying init, unsupported tensors…).
    pub warnings: Vec<String>,
    /// Keys that matched no known adapter tensor name.
    pub unmatched: Vec<String>,
    /// safetensors metadata as stored.
    pub metadata: std::collections::BTreeMap<String, String>,
}

impl Adapter {
    pub fn trainable_params(&self) -> u64 {
        self.modules
            .iter()
            .map(ModuleAdapter::trainable_params)
            .sum()
    }

    pub fn frozen_stored_params(&self) -> u64 {
        self.modules
            .iter()
            .map(ModuleAdapter::frozen_stored_params)
            .sum()
    }

    pub fn has_dash(&self) -> bool {
        self.modules.iter().any(|m| m.dash.is_some())
    }
}
