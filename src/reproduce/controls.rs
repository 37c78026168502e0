//! Empirical controls for TSD capture (README, Definitions: the null of direction metrics). The
//! rotation null says "not random"; "task-specific" needs updates that should *not* share the
//! runs' directions, and one that should share them as far as training noise allows:
//! - `control-cross-s1`: a full fine-tune like the reference, on other tasks (the evaluation-only
//!   tasks' test examples *after* every example any run is scored on);
//! - `control-shuffled-s1`: a full fine-tune on the runs' own training inputs with the answers
//!   permuted within each task (seeded);
//! - seed: each run against the same configuration's next seed (a ceiling).
//!
//! Every run's final checkpoint is measured against each, beside the rotation null of its own
//! update (LoRA-Dash: its LoRA part), into `OUT/controls.json`.

use super::Preset;
use crate::data::{load_examples, Example};
use crate::error::Result;
use crate::names::Method;
use crate::track::TrackNull;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A trained control reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trained {
    CrossTask,
    Shuffled,
}

impl Trained {
    pub const ALL: [Trained; 2] = [Trained::CrossTask, Trained::Shuffled];

    /// The piece's name, which is also its run directory under `OUT/runs/`.
    pub fn piece(self) -> &'static str {
        match self {
            Trained::CrossTask => "control-cross-s1",
            Trained::Shuffled => "control-shuffled-s1",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Trained::CrossTask => "cross-task",
            Trained::Shuffled => "shuffled answers",
        }
    }

    pub fn from_piece(piece: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.piece() == piece)
    }
}

/// The control pieces of a preset (none unless it asks for controls and has a full fine-tune
/// reference to mirror).
pub fn pieces(p: &Preset) -> Vec<String> {
    if p.controls && p.reference == super::preset::ReferenceKind::FullFineTune {
        Trained::ALL.iter().map(|t| t.piece().to_string()).collect()
    } else {
        Vec::new()
    }
}

/// The tasks a cross-task control trains on: evaluated, not trained on, with a test set.
fn cross_tasks(p: &Preset, data: &Path) -> Vec<String> {
    p.eval_tasks
        .iter()
        .filter(|t| !p.train_tasks.contains(t))
        .filter(|t| data.join(t.as_str()).join("test.json").exists())
        .cloned()
        .collect()
}

/// Writes `examples` as an LLM-Adapters JSON file.
fn write_examples(path: &Path, examples: &[Example]) -> Result<String> {
    crate::fsutil::write_json(path, &examples)?;
    Ok(path.display().to_string())
}

/// The control's training files under `OUT/controls/<piece>/`, written from the data (one file
/// per task, so the preset's per-task example limit applies as it does to the runs). Cross-task:
/// each evaluation-only task's test examples from the first one no run is scored on. Shuffled:
/// the runs' training files with `output` and `answer` permuted within each task.
pub fn training_files(
    t: Trained,
    p: &Preset,
    data: &Path,
    out: &Path,
    train_files: &[String],
) -> Result<Vec<String>> {
    let dir = out.join("controls").join(t.piece());
    std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
    let per_task = p.max_examples_per_task.unwrap_or(usize::MAX);
    let mut files = Vec::new();
    match t {
        Trained::CrossTask => {
            let skip = p
                .loglik_limit
                .unwrap_or(usize::MAX)
                .max(p.generate_limit.unwrap_or(usize::MAX));
            for task in cross_tasks(p, data) {
                let ex = load_examples(&data.join(&task).join("test.json"))?;
                let rest: Vec<Example> = ex.into_iter().skip(skip).take(per_task).collect();
                if rest.len() > p.val_size {
                    files.push(write_examples(&dir.join(format!("{task}.json")), &rest)?);
                }
            }
        }
        Trained::Shuffled => {
            for (i, f) in train_files.iter().enumerate() {
                let mut ex: Vec<Example> = load_examples(Path::new(f))?;
                ex.truncate(per_task);
                let mut answers: Vec<(String, Option<String>)> = ex
                    .iter()
                    .map(|e| (e.output.clone(), e.answer.clone()))
                    .collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(0x5_4ff1e + i as u64);
                answers.shuffle(&mut rng);
                for (e, (o, a)) in ex.iter_mut().zip(answers) {
                    e.output = o;
                    e.answer = a;
                }
                files.push(write_examples(&dir.join(format!("train-{i}.json")), &ex)?);
            }
        }
    }
    Ok(files)
}

/// One run's final capture against one control, beside its null.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlCapture {
    pub run: String,
    pub method: Method,
    pub rank: usize,
    pub seed: u64,
    /// `reference`, `seed`, `cross-task` or `shuffled answers`.
    pub control: String,
    /// What it was measured against (a run or a reference, with its step).
    pub against: String,
    /// A key of the control's record (trained controls) or the other run's name (seed): a
    /// cached entry with another key is measured again.
    pub key: String,
    pub step: usize,
    pub all: TrackNull,
    pub qkv: Option<TrackNull>,
}

/// `OUT/controls.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Controls {
    pub captures: Vec<ControlCapture>,
    /// Every LoRA-Dash run's picks against its paired LoRA run (absent in older files).
    #[serde(default)]
    pub dash_pairs: Vec<DashPair>,
}

impl Controls {
    pub fn path(out: &Path) -> PathBuf {
        out.join("controls.json")
    }

    pub fn read(out: &Path) -> Self {
        crate::fsutil::read_json(&Self::path(out)).unwrap_or_default()
    }

    pub fn cached(&self, run: &str, control: &str, key: &str) -> Option<&ControlCapture> {
        self.captures
            .iter()
            .find(|c| c.run == run && c.control == control && c.key == key)
    }
}

/// One LoRA-Dash pick beside the paired LoRA run's coordinate on the same core direction: is
/// what Dash amplifies something the plain LoRA of the same seed also moved? (README,
/// Definitions: the null of direction metrics; LoRA-Dash is not its own evidence.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PickPair {
    pub module: String,
    pub index: usize,
    pub sigma_ratio: f64,
    /// Δσ at the Dash run's final checkpoint.
    pub delta_sigma: f64,
    /// |z| of the Dash run's own LoRA part on this direction, and that module's threshold.
    pub z_dash_lora: f64,
    pub threshold_dash: f64,
    /// |z| of the paired LoRA run's update on this direction, and that module's threshold.
    pub z_lora: f64,
    pub threshold_lora: f64,
}

/// A LoRA-Dash run's picks against the LoRA run of the same rank and seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DashPair {
    pub dash_run: String,
    pub lora_run: String,
    pub rank: usize,
    pub seed: u64,
    /// Both runs' final steps; a cached pair with other steps is measured again.
    pub key: String,
    pub picks: Vec<PickPair>,
}

/// The picks of `dash` (an inspection of the Dash run's final checkpoint) against `lora` (of the
/// paired LoRA run's, with `keep_spectrum`). Modules without Dash indices or enrichment are
/// skipped.
pub fn pick_pairs(
    dash: &crate::inspect::InspectReport,
    lora: &crate::inspect::InspectReport,
) -> Vec<PickPair> {
    let mut out = Vec::new();
    for m in &dash.modules {
        let (Some(d), Some(e)) = (&m.dash, &m.enrichment) else {
            continue;
        };
        let Some(l) = lora.modules.iter().find(|x| x.module == m.module) else {
            continue;
        };
        let (Some(le), Some(rates), Some(sigma)) = (&l.enrichment, &l.delta, &l.sigma) else {
            continue;
        };
        for (j, idx) in d.indices.iter().enumerate() {
            let (Some(i), Some(lr), Some(ratio)) = (*idx, d.lora_rate[j], d.sigma_ratio[j]) else {
                continue;
            };
            // |c_i| = δ_i · σ_i (no σ floor in the reproduction's analysis).
            let s = ratio * m.sigma_max;
            out.push(PickPair {
                module: m.module.clone(),
                index: i,
                sigma_ratio: ratio,
                delta_sigma: d.delta_sigma[j] as f64,
                z_dash_lora: lr * s / e.null.coordinate_sd,
                threshold_dash: e.null.threshold,
                z_lora: rates[i] * sigma[i] / le.null.coordinate_sd,
                threshold_lora: le.null.threshold,
            });
        }
    }
    out
}
