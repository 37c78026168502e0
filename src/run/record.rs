//! tsd's own run record (`record.json`) and the per-checkpoint trainer state (`trainer_state.json`).
//! Their on-disk format is what every committed run under `reproductions/` holds: fields are only
//! ever added, with `#[serde(default)]`.

use crate::nn::adapted::DashSwitch;
use crate::train::config::TrainConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One optimizer step, as logged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Non-padding tokens in this step.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// A validation measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalLog {
    pub step: usize,
    pub loss: f64,
}

/// The Dash switch, when it happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwitchLog {
    pub step: usize,
    pub seconds: f64,
    pub modules: Vec<DashSwitch>,
}

/// The machine-readable record of a run (`record.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub tsd_version: String,
    /// Versions of the numerical dependencies and of rustc this binary was built with.
    #[serde(default)]
    pub build: String,
    pub config: TrainConfig,
    pub base: String,
    pub base_params: u64,
    /// Parameters the optimizer updates now: LoRA A and B (or the full weights), plus Δσ once the
    /// LoRA-Dash switch has run (updated at the switch and on resume).
    pub trainable_params: u64,
    pub total_steps: usize,
    pub train_examples: usize,
    pub val_examples: usize,
    pub device: String,
    pub threads: usize,
    pub steps: Vec<StepLog>,
    pub val: Vec<EvalLog>,
    pub dash_switch: Option<SwitchLog>,
    pub checkpoints: Vec<usize>,
    /// Seconds spent caching the frozen lower layers' outputs (0 without `top_layers`).
    #[serde(default)]
    pub lower_cache_seconds: f64,
    pub peak_rss_bytes: u64,
    pub wall_s: f64,
    pub finished: bool,
}

/// Saved with each checkpoint, written last (its presence marks the checkpoint complete).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub dash_active: bool,
    pub optimizer_steps: HashMap<String, u64>,
    pub elapsed_s: f64,
}
