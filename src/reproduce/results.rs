//! The reproduction's record: per-run scores and results, the lr check, capture series, timing,
//! and [`Reproduction`] (`OUT/results.json`) with the saved training curves read back for the page.

use super::preset::Preset;
use super::summary;
use crate::error::Result;
use crate::names::Method;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One task's accuracy (%) under each protocol that ran.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: String,
    pub loglik: Option<f64>,
    pub loglik_examples: usize,
    pub generate: Option<f64>,
    pub generate_examples: usize,
    /// % of generate answers with no valid label.
    pub unparseable: Option<f64>,
}

/// Accuracy of one model (base, or base + adapter) on the evaluated tasks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scores {
    pub tasks: Vec<TaskScore>,
    /// Mean over tasks (%).
    pub loglik_avg: Option<f64>,
    pub generate_avg: Option<f64>,
    /// Unparseable generate answers over all generate examples (%).
    pub unparseable_rate: Option<f64>,
    /// The headline protocol's mean (%).
    pub average: f64,
    pub eval_s: f64,
}

/// One grid cell's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub name: String,
    pub method: Method,
    pub rank: usize,
    pub seed: u64,
    pub lr: f64,
    /// Adapter parameters at the end of training (LoRA A and B; plus Δσ for Dash).
    pub trainable_params: u64,
    /// `trainable_params` (the same count, Δσ included) as % of the base model's parameters.
    pub trainable_pct: f64,
    pub scores: Scores,
    pub final_loss: f64,
    pub val_loss: Option<f64>,
    /// Training wall time (s), lower-layer caching excluded.
    pub wall_s: f64,
    /// Labelled tokens per second, mean over steps.
    pub tokens_per_s: f64,
    /// Dash only: the picks' mean σ/σ₁, the picks flagged near-null, the largest |Δσ| at the end.
    pub dash_mean_sigma_ratio: Option<f64>,
    pub dash_near_null_picks: Option<usize>,
    pub dash_max_delta_sigma: Option<f64>,
}

impl RunResult {
    pub fn average(&self) -> f64 {
        self.scores.average
    }
}

/// One learning rate of the check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LrTrial {
    pub lr: f64,
    /// `None`: the run diverged (non-finite loss).
    pub val_loss: Option<f64>,
    pub final_train_loss: Option<f64>,
    pub run: String,
}

/// The learning-rate check: a short LoRA run per candidate, lowest validation loss wins.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LrCheck {
    pub rule: String,
    pub trials: Vec<LrTrial>,
    pub chosen: f64,
}

/// TSD capture of one checkpoint against the reference (means over modules).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CapturePoint {
    pub step: usize,
    /// accuracy@(8,16) and recall@(8,4) (README, Definitions: direction metrics).
    pub accuracy: Option<f64>,
    pub recall: Option<f64>,
    /// |TSD set ∩ the run's final TSD set| / 8.
    pub stability_final: f64,
    /// accuracy@(8,16) and recall@(8,4) over the q, k, v modules only (the paper's set); `None`
    /// in files written before they were measured (then measured again) or without such modules.
    #[serde(default)]
    pub accuracy_qkv: Option<f64>,
    #[serde(default)]
    pub recall_qkv: Option<f64>,
    /// The tested capture beside its rotation null, over all modules and over q, k, v (absent in
    /// files written before the null model: then measured again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null: Option<crate::track::TrackNull>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_qkv: Option<crate::track::TrackNull>,
    /// The same per module type, in the model's module order (empty in files written before it:
    /// then measured again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_type: Vec<TypeNull>,
    /// LoRA-Dash runs: every pick's Δσ at this checkpoint (absent before the switch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delta_sigma: Vec<PickDeltaSigma>,
}

/// One module type's capture beside its null at one checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TypeNull {
    pub module_type: String,
    pub null: crate::track::TrackNull,
}

/// One LoRA-Dash pick's Δσ at one checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PickDeltaSigma {
    pub module: String,
    pub index: usize,
    pub delta_sigma: f64,
}

/// Capture along one run's checkpoints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaptureSeries {
    pub run: String,
    /// What the capture is measured against (the reference update, with its step).
    #[serde(default)]
    pub reference: String,
    /// The reference's name, final step and record hash when measured (empty in files written
    /// before it existed): a cache with another key is measured again.
    #[serde(default)]
    pub reference_key: String,
    pub method: Method,
    pub rank: usize,
    pub seed: u64,
    pub modules: usize,
    pub points: Vec<CapturePoint>,
}

/// Where the time of one invocation went (s).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timing {
    pub lower_cache_s: f64,
    pub eval_prepare_s: f64,
    pub lr_check_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
    pub capture_s: f64,
    pub total_s: f64,
}

/// Everything a reproduction measured: `OUT/results.json`, the record its page renders (read
/// back by [`Reproduction::read`]; fields added later are optional, so older results still read).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reproduction {
    pub preset: Preset,
    pub lr: f64,
    #[serde(default)]
    pub lr_check: Option<LrCheck>,
    #[serde(default)]
    pub base: Option<Scores>,
    pub runs: Vec<RunResult>,
    #[serde(default)]
    pub reference: Option<String>,
    #[serde(default)]
    pub capture: Vec<CaptureSeries>,
    /// Means, intervals, comparisons, efficiency, chance, the paper's table and the verdict.
    pub summary: summary::Summary,
    #[serde(default)]
    pub deviations: Vec<String>,
    /// This invocation.
    #[serde(default)]
    pub timing: Timing,
    /// Every invocation on this output directory so far (`OUT/timing.json`), this one last: their
    /// sum is what the whole reproduction cost.
    #[serde(default)]
    pub invocations: Vec<Timing>,
}

/// The record's file in an output directory.
pub const RESULTS_FILE: &str = "results.json";
/// The page's file in an output directory.
pub const REPORT_FILE: &str = "report.html";

impl Reproduction {
    /// Reads `OUT/results.json`: a reproduction's saved record, as the grid wrote it.
    pub fn read(out: &Path) -> Result<Reproduction> {
        crate::fsutil::read_json(&out.join(RESULTS_FILE))
    }
}

/// One grid run's training curves as its run directory saved them (`OUT/runs/<name>/record.json`:
/// the loss of every step and on the held-out examples), read for the page, not recomputed.
#[derive(Clone, Debug)]
pub struct RunCurves {
    pub run: String,
    pub method: Method,
    pub rank: usize,
    pub seed: u64,
    /// `(step, training loss)`.
    pub train: Vec<(f64, f64)>,
    /// `(step, held-out loss)`.
    pub val: Vec<(f64, f64)>,
}

/// The saved training curves of every run in `r` whose `OUT/runs/<name>/record.json` is there
/// (a committed reproduction keeps them; a moved record may not): runs without one are left out.
pub fn saved_curves(out: &Path, r: &Reproduction) -> Vec<RunCurves> {
    r.runs
        .iter()
        .filter_map(|x| {
            let path = out.join("runs").join(&x.name).join("record.json");
            let rec: crate::train::trainer::RunRecord = crate::fsutil::read_json(&path).ok()?;
            Some(RunCurves {
                run: x.name.clone(),
                method: x.method,
                rank: x.rank,
                seed: x.seed,
                train: rec.steps.iter().map(|s| (s.step as f64, s.loss)).collect(),
                val: rec.val.iter().map(|v| (v.step as f64, v.loss)).collect(),
            })
        })
        .filter(|c| !c.train.is_empty())
        .collect()
}
