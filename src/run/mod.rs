//! Run directories: what a run holds, which checkpoints it has (in step order) and its curves, for
//! three layouts — tsd's own runs ([`layout`]), Hugging Face Trainer output directories ([`hf`])
//! and any directory of adapter directories. `tsd train` writes through [`layout`]; `track`,
//! `report` and `--reference` read every layout through [`Run`].

pub mod base;
pub mod config;
pub mod curves;
pub mod hf;
pub mod layout;
pub mod record;

pub use config::{TrainConfig, TrainFlags};
pub use curves::Curves;
pub use record::{EvalLog, RunRecord, StepLog, SwitchLog, TrainerState};

use crate::error::{Error, Result};
use crate::weights::ModelSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which writer laid out a run directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    /// `tsd train`: `config.json`, `record.json`, `checkpoints/step-N/`.
    Tsd,
    /// Hugging Face Trainer: `checkpoint-N/` with `trainer_state.json`.
    HfTrainer,
    /// Adapter directories side by side, in natural name order.
    Adapters,
}

impl RunKind {
    /// Words for messages and reports.
    pub fn describe(self) -> &'static str {
        match self {
            RunKind::Tsd => "tsd train run",
            RunKind::HfTrainer => "Hugging Face Trainer run",
            RunKind::Adapters => "directory of adapters",
        }
    }
}

/// One complete checkpoint.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Optimizer step (tsd, Trainer) or 1-based position (a directory of adapters).
    pub step: usize,
    /// The checkpoint directory's name (`step-000100`, `checkpoint-100`, the adapter's folder).
    pub name: String,
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The adapter directory inside it (the model directory for a tsd full fine-tune).
    pub adapter: PathBuf,
}

/// An opened run directory.
#[derive(Debug)]
pub struct Run {
    pub dir: PathBuf,
    pub kind: RunKind,
    /// Complete checkpoints, ascending by step.
    pub checkpoints: Vec<Checkpoint>,
    /// One line per thing that looked like a checkpoint but was skipped (half-written, temporary,
    /// an adapter without a step).
    pub skipped: Vec<String>,
    /// The training config of a tsd run.
    pub config: Option<TrainConfig>,
}

/// `checkpoint-9` < `checkpoint-10`: digit runs compare as numbers.
fn natural_key(name: &str) -> Vec<(u8, u128, String)> {
    let mut out = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (part, tail) = if digits > 0 {
            rest.split_at(digits)
        } else {
            rest.split_at(
                rest.find(|c: char| c.is_ascii_digit())
                    .unwrap_or(rest.len()),
            )
        };
        out.push(if digits > 0 {
            (1, part.parse().unwrap_or(u128::MAX), part.to_string())
        } else {
            (0, 0, part.to_string())
        });
        rest = tail;
    }
    out
}

fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if e.path().is_dir() {
            v.push((e.file_name().to_string_lossy().to_string(), e.path()));
        }
    }
    Ok(v)
}

/// A temporary directory's name (`.x`, `tmp-…`, `….tmp…`).
fn is_temporary(name: &str) -> bool {
    name.starts_with('.') || name.starts_with("tmp-") || name.contains(".tmp")
}

impl Run {
    /// Opens a run directory of any of the three layouts. `adapter_name` picks a named adapter
    /// subfolder inside each Trainer checkpoint (or each adapter directory).
    pub fn open(dir: &Path, adapter_name: Option<&str>) -> Result<Run> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "run directory not found"),
            ));
        }
        if layout::is_tsd_run(dir) {
            return Self::open_tsd(dir);
        }
        let subs = subdirs(dir)?;
        if subs
            .iter()
            .any(|(n, _)| hf::checkpoint_step(n).is_some() || hf::looks_like_checkpoint(n))
        {
            let mut run = Self::open_hf(dir, subs, adapter_name)?;
            if hf::is_partial_adapter(dir) {
                run.skipped.push(format!(
                    "{}: the adapter at the run's root (Trainer.save_model's final one) has no step; tracked are the checkpoint-N/ directories",
                    dir.display()
                ));
            }
            return Ok(run);
        }
        if hf::is_partial_adapter(dir) {
            return Err(Error::InvalidArgument(format!(
                "{} is one adapter, not a run of checkpoints; use `tsd inspect` on it",
                dir.display()
            )));
        }
        Self::open_adapters(dir, subs, adapter_name)
    }

    fn open_tsd(dir: &Path) -> Result<Run> {
        let config = layout::read_config(dir)?;
        let (steps, skipped) = layout::scan_checkpoints(dir)?;
        let checkpoints = steps
            .into_iter()
            .map(|step| {
                let d = layout::checkpoint_dir(dir, step);
                Checkpoint {
                    step,
                    name: d.file_name().unwrap_or_default().to_string_lossy().into(),
                    adapter: d.clone(),
                    dir: d,
                }
            })
            .collect();
        Ok(Run {
            dir: dir.to_path_buf(),
            kind: RunKind::Tsd,
            checkpoints,
            skipped,
            config: Some(config),
        })
    }

    fn open_hf(
        dir: &Path,
        subs: Vec<(String, PathBuf)>,
        adapter_name: Option<&str>,
    ) -> Result<Run> {
        let mut checkpoints = Vec::new();
        let mut skipped = Vec::new();
        for (name, path) in subs {
            let Some(step) = hf::checkpoint_step(&name) else {
                if hf::looks_like_checkpoint(&name) || is_temporary(&name) {
                    skipped.push(format!(
                        "{}: a temporary checkpoint directory (an interrupted save?); skipped",
                        path.display()
                    ));
                }
                continue;
            };
            // The Trainer writes trainer_state.json last: a checkpoint without it is being
            // written (or was cut short), and its adapter files may be incomplete.
            if !path.join(hf::STATE_FILE).is_file() {
                if path.is_dir() {
                    skipped.push(format!(
                        "{}: no {} (the Trainer writes it last: a checkpoint being written or cut short); skipped",
                        path.display(),
                        hf::STATE_FILE
                    ));
                }
                continue;
            }
            let found = match hf::adapter_in(&path, adapter_name) {
                // Deleted since it was listed (a Trainer's save_total_limit): not a checkpoint now.
                Err(_) if !path.is_dir() => continue,
                found => found?,
            };
            match found {
                Some(adapter) => checkpoints.push(Checkpoint {
                    step,
                    name,
                    dir: path,
                    adapter,
                }),
                None => skipped.push(format!(
                    "{}: no adapter weights{} (a half-written checkpoint?); skipped",
                    path.display(),
                    adapter_name.map_or(String::new(), |n| format!(" in `{n}/`"))
                )),
            }
        }
        checkpoints.sort_by_key(|c| c.step);
        Ok(Run {
            dir: dir.to_path_buf(),
            kind: RunKind::HfTrainer,
            checkpoints,
            skipped,
            config: None,
        })
    }

    fn open_adapters(
        dir: &Path,
        mut subs: Vec<(String, PathBuf)>,
        adapter_name: Option<&str>,
    ) -> Result<Run> {
        subs.sort_by_cached_key(|(n, _)| natural_key(n));
        let mut checkpoints = Vec::new();
        let mut skipped = Vec::new();
        for (name, path) in subs {
            let adapter = adapter_name.map_or(path.clone(), |n| path.join(n));
            let temporary = is_temporary(&name);
            if hf::is_complete_adapter(&adapter) && !temporary {
                checkpoints.push(Checkpoint {
                    step: checkpoints.len() + 1,
                    name,
                    dir: path,
                    adapter,
                });
            } else if temporary || hf::is_partial_adapter(&adapter) || hf::is_partial_adapter(&path)
            {
                skipped.push(format!(
                    "{}: {}; skipped",
                    path.display(),
                    if temporary {
                        "a temporary directory".to_string()
                    } else if let Some(n) =
                        adapter_name.filter(|_| !hf::is_partial_adapter(&adapter))
                    {
                        format!("no adapter `{n}/` in it")
                    } else {
                        "an incomplete adapter (no config or no weights; half-written?)".to_string()
                    }
                ));
            }
        }
        Ok(Run {
            dir: dir.to_path_buf(),
            kind: RunKind::Adapters,
            checkpoints,
            skipped,
            config: None,
        })
    }

    /// Whether `dir` is a run of any layout (cheap: names only, nothing parsed).
    pub fn detect(dir: &Path) -> bool {
        dir.is_dir()
            && !hf::is_partial_adapter(dir)
            && (layout::is_tsd_run(dir)
                || subdirs(dir).is_ok_and(|s| {
                    s.iter()
                        .any(|(n, p)| hf::checkpoint_step(n).is_some() || hf::is_partial_adapter(p))
                }))
    }

    /// The run's checkpoints, or an error when it has none (naming what was skipped).
    pub fn require_checkpoints(&self) -> Result<&[Checkpoint]> {
        if self.checkpoints.is_empty() && self.kind == RunKind::Adapters && self.skipped.is_empty()
        {
            return Err(Error::InvalidArgument(format!(
                "{} is not a run directory: it holds no checkpoints/ (tsd train), no checkpoint-N/ (Hugging Face Trainer) and no adapter directories",
                self.dir.display()
            )));
        }
        if self.checkpoints.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} ({}) has no complete checkpoint{}",
                self.dir.display(),
                self.kind.describe(),
                if self.skipped.is_empty() {
                    String::new()
                } else {
                    format!(" ({} skipped)", self.skipped.len())
                }
            )));
        }
        Ok(&self.checkpoints)
    }

    /// Whether this is a tsd full fine-tune (checkpoints are models, not adapters).
    pub fn is_full_fine_tune(&self) -> bool {
        self.config
            .as_ref()
            .is_some_and(|c| c.method == crate::names::Method::Full)
    }

    /// The tsd run record, for a tsd run that has written one.
    pub fn record(&self) -> Result<Option<RunRecord>> {
        match self.kind {
            RunKind::Tsd if self.dir.join(layout::RECORD_FILE).is_file() => {
                layout::read_record(&self.dir).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The run's curves: tsd's record, or the newest Trainer checkpoint's `log_history` (it holds
    /// every earlier entry). `None` for a directory of adapters or a run without a record yet.
    pub fn curves(&self) -> Result<Option<Curves>> {
        match self.kind {
            RunKind::Tsd => Ok(self.record()?.map(|r| {
                Curves::from_record(&r, self.dir.join(layout::RECORD_FILE).display().to_string())
            })),
            RunKind::HfTrainer => self
                .checkpoints
                .iter()
                .rev()
                .map(|c| c.dir.join(hf::STATE_FILE))
                .find(|p| p.is_file())
                .map(|p| hf::read_curves(&p))
                .transpose(),
            RunKind::Adapters => Ok(None),
        }
    }

    /// The base the run declares: tsd's `--model` (and `--revision`, with the record's weight
    /// hashes), else the first checkpoint's `base_model_name_or_path` (and `revision`), relative
    /// paths tried against the adapter's directory, the checkpoint's and the run's.
    pub fn declared_base(&self) -> Result<Option<base::DeclaredBase>> {
        let source = format!("{} {}", self.kind.describe(), self.dir.display());
        if let Some(c) = &self.config {
            return Ok(Some(base::DeclaredBase {
                source,
                spec: c.model.clone(),
                revision: c.revision.clone(),
                // tsd's `--model` was relative to the working directory.
                roots: Vec::new(),
                files: self.record()?.map(|r| r.base_files).unwrap_or_default(),
            }));
        }
        // The first checkpoint whose config is still there: a Trainer with save_total_limit may
        // delete the oldest ones while the run is read.
        let mut found = None;
        for (i, c) in self.checkpoints.iter().enumerate() {
            let path = c.adapter.join(crate::adapter::read::CONFIG_FILE);
            match crate::adapter::AdapterConfig::load(&path) {
                Ok(cfg) => {
                    found = Some((c, cfg));
                    break;
                }
                Err(_) if !path.exists() && i + 1 < self.checkpoints.len() => continue,
                Err(e) => return Err(e),
            }
        }
        let Some((first, cfg)) = found else {
            return Ok(None);
        };
        Ok(cfg
            .base_model_name_or_path
            .filter(|b| !b.is_empty())
            .map(|spec| base::DeclaredBase {
                source,
                spec,
                revision: cfg.revision,
                roots: vec![first.adapter.clone(), first.dir.clone(), self.dir.clone()],
                files: Vec::new(),
            }))
    }

    /// The base model: `base` when given (checked against the declared one: a warning, or with
    /// `strict` an error, when it cannot be shown to be it), else the declared one if it resolves
    /// locally ([`base::open_base`]).
    pub fn open_base(&self, given: Option<&ModelSpec>, strict: bool) -> Result<base::OpenedBase> {
        base::open_base(
            given,
            "--base",
            &self.dir.display().to_string(),
            self.declared_base()?.as_ref(),
            strict,
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_compares_numbers_as_numbers() {
        let mut v = ["run-10", "run-9", "run-100", "a", "run-9b"];
        v.sort_by_key(|n| natural_key(n));
        assert_eq!(v, ["a", "run-9", "run-9b", "run-10", "run-100"]);
    }
}
