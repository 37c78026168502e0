//! LoRA and LoRA-Dash adapters: PEFT config and tensor naming, reading (tolerant), writing
//! (strict, atomic), and folding a Dash adapter into a plain rank-(r+s) LoRA.
//!
//! Layouts (PyTorch/PEFT): A `[r, in]`, B `[out, r]`, so `ΔW = scaling·B·A` is `[out, in]`.

pub mod config;
pub mod control;
pub mod naming;
pub mod plan;
pub mod read;
pub mod write;

use crate::directions::Update;
use crate::linalg::Matrix;
use faer::Mat;
use std::collections::BTreeMap;

pub use config::AdapterConfig;
pub use read::{adapter_names, load_adapter, read_adapter};
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

/// A LoRA on an embedding (`lora_embedding_A/B`): `ΔW = scaling·(B·A)ᵀ` on the embedding weight
/// `[vocab, hidden]`. Counted and applied by `tsd eval`; not analysed for TSDs.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingLora {
    /// HF module path, e.g. `model.embed_tokens`.
    pub module: String,
    pub r: usize,
    pub alpha: f64,
    pub scaling: f64,
    /// `lora_embedding_A`, `[r, vocab]`.
    pub a: Matrix,
    /// `lora_embedding_B`, `[hidden, r]`.
    pub b: Matrix,
}

impl EmbeddingLora {
    /// `(vocab, hidden)`, the embedding weight's shape.
    pub fn shape(&self) -> (usize, usize) {
        (self.a.cols, self.b.rows)
    }

    /// `r·(vocab + hidden)`.
    pub fn trainable_params(&self) -> u64 {
        (self.r * (self.a.cols + self.b.rows)) as u64
    }

    /// `ΔW = scaling·(B·A)ᵀ`, `[vocab, hidden]`, accumulated in f64.
    pub fn delta(&self) -> Matrix {
        let (vocab, hidden) = self.shape();
        let mut data = vec![0f32; vocab * hidden];
        for v in 0..vocab {
            for h in 0..hidden {
                let s: f64 = (0..self.r)
                    .map(|k| self.b.at(h, k) as f64 * self.a.at(k, v) as f64)
                    .sum();
                data[v * hidden + h] = (self.scaling * s) as f32;
            }
        }
        Matrix {
            rows: vocab,
            cols: hidden,
            data,
        }
    }
}

/// Why an adapter file holds a whole base-model tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseTensorRole {
    /// A trained copy of a `modules_to_save` module's tensor (trainable).
    ModulesToSave,
    /// A bias trained under `bias = "all" | "lora_only"` (trainable).
    TrainedBias,
    /// A frozen base tensor PEFT saved beside the adapter (e.g. the embedding layer of an
    /// embedding LoRA, or a resized vocabulary); it replaces the base's tensor when applied.
    Saved,
}

/// A whole base-model tensor stored in the adapter, which replaces the base's when applied.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseTensor {
    /// Its Hugging Face name in the base model, e.g. `lm_head.weight`.
    pub name: String,
    /// The key PEFT 0.21 writes for it (with the `base_model.model.` prefix).
    pub key: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub role: BaseTensorRole,
}

impl BaseTensor {
    /// Whether PEFT trains it (counted by `get_nb_trainable_parameters`).
    pub fn trainable(&self) -> bool {
        self.role != BaseTensorRole::Saved
    }

    pub fn numel(&self) -> u64 {
        self.data.len() as u64
    }
}

/// What an adapter holds beyond per-module A/B (and Dash / DoRA).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdapterExtras {
    /// The adapter's name in its directory (`default` for the root, else its subfolder), when read
    /// from disk.
    pub name: Option<String>,
    /// `lora_B.bias` by module path, `[out]`; PEFT adds `scaling·b` to the module's output.
    pub lora_biases: BTreeMap<String, Vec<f32>>,
    /// LoRA on embeddings.
    pub embeddings: Vec<EmbeddingLora>,
    /// Whole base tensors (`modules_to_save` copies, trained biases, saved layers), by name.
    pub base_tensors: Vec<BaseTensor>,
}

impl AdapterExtras {
    /// Trainable parameters PEFT counts beyond the per-module LoRA factors.
    pub fn trainable_params(&self) -> u64 {
        let biases: u64 = self.lora_biases.values().map(|b| b.len() as u64).sum();
        let emb: u64 = self
            .embeddings
            .iter()
            .map(EmbeddingLora::trainable_params)
            .sum();
        let base: u64 = self
            .base_tensors
            .iter()
            .filter(|t| t.trainable())
            .map(BaseTensor::numel)
            .sum();
        biases + emb + base
    }

    /// Stored but frozen parameters beyond the modules' (saved base layers).
    pub fn frozen_stored_params(&self) -> u64 {
        self.base_tensors
            .iter()
            .filter(|t| !t.trainable())
            .map(BaseTensor::numel)
            .sum()
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
    /// Keys tsd does not use: unrecognised names and recognised kinds it does not implement.
    pub unmatched: Vec<String>,
    /// safetensors metadata as stored.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// LoRA biases, embedding LoRA, whole base tensors, and the adapter's name.
    pub extras: AdapterExtras,
}

impl Adapter {
    /// Trainable parameters as PEFT's `get_nb_trainable_parameters` counts them: LoRA factors,
    /// Dash's Δσ, DoRA magnitudes, LoRA biases, embedding LoRA, `modules_to_save` copies and
    /// trained biases.
    pub fn trainable_params(&self) -> u64 {
        self.modules
            .iter()
            .map(ModuleAdapter::trainable_params)
            .sum::<u64>()
            + self.extras.trainable_params()
    }

    /// Frozen parameters stored with the adapter (Dash's Ū, V̄; saved base layers).
    pub fn frozen_stored_params(&self) -> u64 {
        self.modules
            .iter()
            .map(ModuleAdapter::frozen_stored_params)
            .sum::<u64>()
            + self.extras.frozen_stored_params()
    }

    pub fn has_dash(&self) -> bool {
        self.modules.iter().any(|m| m.dash.is_some())
    }
}
