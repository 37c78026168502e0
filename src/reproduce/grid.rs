//! The configuration grid: its cells (LoRA and LoRA-Dash ranks × seeds, the full fine-tune
//! reference), the [`Grid`] of one output directory (its training and test files, the setting it
//! records in `OUT/preset.json`) and each run's training configuration.

use super::preset::{Preset, ReferenceKind};
use super::results::Timing;
use crate::error::{Error, Result};
use crate::eval::Evaluator;
use crate::names::Method;
use crate::run::TrainConfig;
use crate::train::trainer::LowerCacheKey;
use candle_core::Tensor;
use std::path::{Path, PathBuf};

/// One grid cell (or the full fine-tune reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub method: Method,
    pub rank: usize,
    pub seed: u64,
}

impl Cell {
    /// `lora-r4-s1`, `dash-r1-s2`, `full-ref-s1`.
    pub fn name(&self) -> String {
        match self.method {
            Method::Lora => format!("lora-r{}-s{}", self.rank, self.seed),
            Method::LoraDash => format!("dash-r{}-s{}", self.rank, self.seed),
            Method::Full => format!("full-ref-s{}", self.seed),
        }
    }
}

/// The grid's cells, seed-major, LoRA ranks then LoRA-Dash ranks.
pub fn cells(p: &Preset) -> Vec<Cell> {
    let mut v = Vec::new();
    for &seed in &p.seeds {
        for &rank in &p.lora_ranks {
            v.push(Cell {
                method: Method::Lora,
                rank,
                seed,
            });
        }
        for &rank in &p.dash_ranks {
            v.push(Cell {
                method: Method::LoraDash,
                rank,
                seed,
            });
        }
    }
    v
}

/// The full fine-tune reference cell, when the preset uses one.
pub fn reference_cell(p: &Preset) -> Option<Cell> {
    (p.reference == ReferenceKind::FullFineTune).then(|| Cell {
        method: Method::Full,
        rank: 0,
        seed: p.seeds.first().copied().unwrap_or(1),
    })
}

/// A whole reproduction in one output directory.
pub(super) struct Grid<'a> {
    pub(super) preset: &'a Preset,
    pub(super) out: &'a Path,
    pub(super) train_files: Vec<String>,
    pub(super) eval_tasks: Vec<String>,
    pub(super) missing: Vec<String>,
    pub(super) data: PathBuf,
    pub(super) log: &'a dyn Fn(&str),
    /// Lower-layer states shared by every run with the same examples.
    pub(super) shared: Option<(LowerCacheKey, Vec<Tensor>)>,
    pub(super) evaluator: Option<Evaluator>,
    pub(super) timing: Timing,
}

impl<'a> Grid<'a> {
    pub(super) fn new(
        preset: &'a Preset,
        data: &Path,
        out: &'a Path,
        log: &'a dyn Fn(&str),
    ) -> Result<Self> {
        let mut train_files = Vec::new();
        for t in &preset.train_tasks {
            let f = data.join(t).join("train.json");
            if f.exists() {
                train_files.push(f.display().to_string());
            }
        }
        if train_files.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "no <task>/train.json for {:?} under {}",
                preset.train_tasks,
                data.display()
            )));
        }
        let eval_tasks: Vec<String> = preset
            .eval_tasks
            .iter()
            .filter(|t| data.join(t).join("test.json").exists())
            .cloned()
            .collect();
        if eval_tasks.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "no <task>/test.json for {:?} under {}",
                preset.eval_tasks,
                data.display()
            )));
        }
        let missing = preset
            .eval_tasks
            .iter()
            .filter(|t| !eval_tasks.contains(t))
            .cloned()
            .collect();
        // One setting per output directory.
        let pj = out.join("preset.json");
        if let Ok(old) = crate::fsutil::read_json::<Preset>(&pj) {
            let (a, b) = (old.run_settings(), preset.run_settings());
            if a != b {
                let differ: Vec<String> = a
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                    .map(|(k, v)| {
                        format!(
                            "{k} {v} there, {} here",
                            b.get(k.as_str()).unwrap_or(&serde_json::Value::Null)
                        )
                    })
                    .collect();
                return Err(Error::InvalidArgument(format!(
                    "{} holds a reproduction with other settings ({}: {}); pass the same flags, leave out --preset to use its own, or use another --out",
                    out.display(),
                    pj.display(),
                    differ.join(", ")
                )));
            }
        }
        crate::fsutil::write_json(&pj, &preset)?;
        Ok(Grid {
            preset,
            out,
            train_files,
            eval_tasks,
            missing,
            data: data.to_path_buf(),
            log,
            shared: None,
            evaluator: None,
            timing: Timing::default(),
        })
    }

    pub(super) fn run_dir(&self, cell: &Cell) -> PathBuf {
        self.out.join("runs").join(cell.name())
    }

    pub(super) fn train_config(&self, cell: &Cell, lr: f64, steps: Option<usize>) -> TrainConfig {
        let p = self.preset;
        let steps = steps.or(p.steps);
        TrainConfig {
            model: p.model.clone(),
            data: self.train_files.clone(),
            method: cell.method,
            rank: cell.rank.max(1),
            alpha: None,
            top_layers: p.top_layers,
            dash_t: p.dash_t,
            lr,
            warmup_steps: steps.map_or(100, |s| (s / 10).max(1)),
            epochs: p.epochs,
            max_steps: steps,
            batch_size: p.batch_size,
            micro_batch_size: p.micro_batch_size,
            cutoff_len: Some(p.cutoff_len),
            train_on_inputs: p.train_on_inputs,
            max_examples: p.max_examples_per_task,
            val_size: Some(p.val_size),
            seed: cell.seed,
            split_seed: Some(0),
            save_every: steps.map_or(p.save_every, |s| p.save_every.min(s)),
            device: p.device.clone(),
            dtype: p.dtype.clone(),
            ..Default::default()
        }
    }
}

/// Checks that `data` holds the preset's train and test sets and that `out` holds no reproduction
/// with other settings, then records the setting in `OUT/preset.json` (what `--emit-jobs` does
/// before writing jobs that would otherwise all fail).
pub fn check_setup(preset: &Preset, data: &Path, out: &Path) -> Result<()> {
    Grid::new(preset, data, out, &|_| {}).map(|_| ())
}

/// The preset an output directory was made with (`OUT/preset.json`), for invocations that name
/// the directory but not the preset.
pub fn read_preset(out: &Path) -> Result<Option<Preset>> {
    let pj = out.join("preset.json");
    if !pj.exists() {
        return Ok(None);
    }
    crate::fsutil::read_json(&pj).map(Some)
}
