//! Running one piece of a grid: training (or resuming) a run with the shared lower-layer cache,
//! evaluating a cell or the base model, the full fine-tune reference and the trained controls.

use super::controls;
use super::grid::{reference_cell, Cell, Grid};
use super::jobs;
use super::lock;
use super::results::{RunResult, Scores};
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::run::TrainConfig;
use crate::train::Trainer;
use candle_core::Tensor;
use std::path::Path;
use std::time::Instant;

impl Grid<'_> {
    /// Trains (or resumes, or skips when finished) the run in `dir`, sharing the lower cache.
    /// SIGINT / SIGTERM (after [`crate::signals::install_exiting`]) stop it after the current
    /// step with a checkpoint saved: [`Error::Stopped`] names `piece` and says that re-running
    /// continues it.
    pub(super) fn train(&mut self, cfg: TrainConfig, dir: &Path, piece: &str) -> Result<Trainer> {
        let mut trainer = if dir.join("config.json").exists() {
            Trainer::resume(dir)?
        } else {
            Trainer::new(cfg, dir)?
        };
        if !trainer.record.finished {
            if let Some((key, cache)) = &self.shared {
                if *key == trainer.lower_cache_key() {
                    trainer.set_lower_cache(cache.clone())?;
                }
            }
            if trainer.lower_cache().is_none() {
                self.timing.lower_cache_s += self.disk_lower_cache(&mut trainer)?;
            }
            // A resumed record carries an earlier invocation's cache time: count it only when
            // this run computed the cache.
            let had_cache = trainer.lower_cache().is_some();
            let t0 = Instant::now();
            {
                let _deferred = crate::signals::defer();
                trainer.run(&mut |_| {}, crate::signals::stop_flag())?;
            }
            let cache_s = if !had_cache && trainer.lower_cache().is_some() {
                trainer.record.lower_cache_seconds
            } else {
                0.0
            };
            self.timing.lower_cache_s += cache_s;
            self.timing.train_s += t0.elapsed().as_secs_f64() - cache_s;
            if self.shared.is_none() {
                self.shared = trainer
                    .lower_cache()
                    .map(|c| (trainer.lower_cache_key(), c));
            }
            if let Some(sig) = crate::signals::received() {
                let at = if trainer.record.finished {
                    format!("as its training finished (step {})", trainer.step)
                } else {
                    format!(
                        "at step {} of {}, checkpoint saved in {}",
                        trainer.step,
                        trainer.total_steps,
                        dir.display()
                    )
                };
                return Err(Error::Stopped {
                    message: format!(
                        "piece {piece} stopped by {} {at}; re-running the same command (or its Slurm task) continues it",
                        sig.name()
                    ),
                    code: sig.exit_code(),
                });
            }
        }
        Ok(trainer)
    }

    /// The lower-layer states shared by every process on this output directory (array tasks):
    /// `OUT/cache/lower-<key>.safetensors`, one tensor `[tokens, hidden]` per example (training
    /// then validation, named by index), keyed by a sha256 of the model, dtype, device, first
    /// adapted layer and every example's token ids. The first process computes it under
    /// `OUT/locks/lower-<key>.lock` and writes it atomically; the others wait and read it (the
    /// same bytes: results do not change). An unreadable file is recomputed. Returns the seconds
    /// spent computing (0 when read or not needed).
    pub(super) fn disk_lower_cache(&self, trainer: &mut Trainer) -> Result<f64> {
        use sha2::Digest;
        let (from, ids) = trainer.lower_cache_key();
        if from == 0 || !trainer.config.cache_lower_layers {
            return Ok(0.0);
        }
        let p = self.preset;
        let mut h = sha2::Sha256::new();
        h.update(format!("{}\0{}\0{}\0{from}\0", p.model, p.dtype, p.device));
        for ex in &ids {
            h.update((ex.len() as u64).to_le_bytes());
            for t in ex {
                h.update(t.to_le_bytes());
            }
        }
        let key: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = format!("lower-{key}");
        let path = self.out.join("cache").join(format!("{name}.safetensors"));
        let _guard = lock::lock(self.out, &name)?;
        if path.exists() {
            let device = crate::train::trainer::device_for(&p.device)?;
            let read = candle_core::safetensors::load(&path, &device)
                .ok()
                .and_then(|mut m| {
                    (0..ids.len())
                        .map(|i| m.remove(&i.to_string()))
                        .collect::<Option<Vec<Tensor>>>()
                })
                .filter(|v| v.len() == ids.len());
            if let Some(v) = read {
                if trainer.set_lower_cache(v).is_ok() {
                    return Ok(0.0);
                }
            }
            (self.log)(&format!("{}: unreadable, recomputing", path.display()));
        }
        let t0 = Instant::now();
        trainer.ensure_lower_cache()?;
        if let Some(c) = trainer.lower_cache() {
            let bytes =
                safetensors::serialize(c.iter().enumerate().map(|(i, t)| (i.to_string(), t)), None)
                    .map_err(|e| Error::Safetensors {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
            crate::fsutil::atomic_write(&path, &bytes)?;
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Trains and evaluates one cell (or reads its earlier result).
    pub(super) fn cell(&mut self, cell: &Cell, lr: f64, label: &str) -> Result<RunResult> {
        let name = cell.name();
        // `[2/3] lora-r4-s1` in a whole run; the bare name for one piece.
        let who = if label.is_empty() {
            name.clone()
        } else {
            format!("{label} {name}")
        };
        let dir = self.run_dir(cell);
        let res_path = dir.join("eval.json");
        if let Ok(r) = crate::fsutil::read_json::<RunResult>(&res_path) {
            (self.log)(&format!("{who}: done earlier"));
            return Ok(r);
        }
        (self.log)(&format!("{who}: training"));
        let cfg = self.train_config(cell, lr, None);
        let trainer = self.train(cfg, &dir, &name)?;
        (self.log)(&format!("{who}: evaluating"));
        let rec = trainer.record.clone();
        let adapter = trainer.adapter()?;
        let mut model = trainer.model;
        for lin in model.linears_mut() {
            lin.merge()?;
        }
        model.use_packed_products()?;
        let (scores, results) = self.evaluate(&model)?;
        crate::fsutil::write_json(&dir.join("predictions.json"), &results)?;
        let dash: Vec<&crate::adapter::DashState> = adapter
            .modules
            .iter()
            .filter_map(|m| m.dash.as_ref())
            .collect();
        let sw = rec.dash_switch.as_ref();
        let picks: Vec<&crate::directions::Tsd> = sw
            .map(|s| s.modules.iter().flat_map(|m| m.tsd.iter()).collect())
            .unwrap_or_default();
        let r = RunResult {
            name: name.clone(),
            method: cell.method,
            rank: cell.rank,
            seed: cell.seed,
            lr,
            trainable_params: rec.trainable_params,
            trainable_pct: 100.0 * (rec.trainable_params as f64) / rec.base_params.max(1) as f64,
            scores,
            final_loss: rec.steps.last().map_or(f64::NAN, |s| s.loss),
            val_loss: rec.val.last().map(|v| v.loss),
            wall_s: rec.wall_s,
            tokens_per_s: rec.steps.iter().map(|s| s.tokens_per_s).sum::<f64>()
                / rec.steps.len().max(1) as f64,
            dash_mean_sigma_ratio: sw.map(|_| {
                picks.iter().map(|t| t.sigma_ratio).sum::<f64>() / picks.len().max(1) as f64
            }),
            dash_near_null_picks: sw.map(|_| picks.iter().filter(|t| t.near_null).count()),
            dash_max_delta_sigma: (!dash.is_empty()).then(|| {
                dash.iter()
                    .flat_map(|d| d.delta_sigma.iter())
                    .fold(0f64, |a, &x| a.max(x.abs() as f64))
            }),
        };
        crate::fsutil::write_json(&res_path, &r)?;
        (self.log)(&format!(
            "{who}: trained {:.0} s, evaluated {:.0} s: average {:.2} %, final loss {:.3}",
            r.wall_s, r.scores.eval_s, r.scores.average, r.final_loss
        ));
        Ok(r)
    }

    /// The base model's scores (no adapter), computed once.
    pub(super) fn base(&mut self) -> Result<Scores> {
        let path = self.out.join("base").join("eval.json");
        if let Ok(s) = crate::fsutil::read_json::<Scores>(&path) {
            return Ok(s);
        }
        (self.log)("base model: evaluating");
        let mp = crate::provision::resolve_path(&crate::weights::ModelSpec::new(
            self.preset.model.clone(),
        ))?;
        let src = crate::weights::open_path(&mp)?;
        let device = crate::device::device_for(&self.preset.device)?;
        let dtype = crate::device::dtype_for(&self.preset.dtype)?;
        let mut model = Llama::from_source(src.as_ref(), &device, dtype)?;
        model.use_packed_products()?;
        let (scores, results) = self.evaluate(&model)?;
        crate::fsutil::write_json(&self.out.join("base").join("predictions.json"), &results)?;
        crate::fsutil::write_json(&path, &scores)?;
        Ok(scores)
    }

    /// Trains the full fine-tune reference (no evaluation: it is a reference update).
    /// Trains the full fine-tune reference. A finished record is enough unless `need_weights`
    /// (`--only full-ref-sN`): then a record kept without its final checkpoint is trained again.
    pub(super) fn reference_run(&mut self, lr: f64, need_weights: bool) -> Result<()> {
        if let Some(cell) = reference_cell(self.preset) {
            let cfg = self.train_config(&cell, lr * self.preset.full_lr_scale, None);
            self.full_ft("reference", &cell.name(), cfg, need_weights)?;
        }
        Ok(())
    }

    /// Trains a control reference (README, Definitions: the null of direction metrics): a full
    /// fine-tune like the reference, on the control's data.
    pub(super) fn control_run(
        &mut self,
        t: controls::Trained,
        lr: f64,
        need_weights: bool,
    ) -> Result<()> {
        let Some(cell) = reference_cell(self.preset) else {
            return Ok(());
        };
        let files =
            controls::training_files(t, self.preset, &self.data, self.out, &self.train_files)?;
        if files.is_empty() {
            let why = "no data for it: no evaluation-only task has enough test examples beyond the scored ones";
            (self.log)(&format!("control {}: {why}", t.piece()));
            let dir = self.out.join("runs").join(t.piece());
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            crate::fsutil::write_json(
                &dir.join("skipped.json"),
                &serde_json::json!({ "skipped": why }),
            )?;
            return Ok(());
        }
        let mut cfg = self.train_config(&cell, lr * self.preset.full_lr_scale, None);
        cfg.data = files;
        self.full_ft("control", t.piece(), cfg, need_weights)
    }

    /// Trains (or resumes, or keeps) the full fine-tune `OUT/runs/<name>`. A finished record
    /// kept without its final checkpoint (a committed reproduction keeps no weights) is trained
    /// again from the start when `need_weights`, and the log says whether every step's loss
    /// equals the kept record's (deterministic on the same host and threads).
    pub(super) fn full_ft(
        &mut self,
        what: &str,
        name: &str,
        cfg: TrainConfig,
        need_weights: bool,
    ) -> Result<()> {
        let dir = self.out.join("runs").join(name);
        let record =
            crate::fsutil::read_json::<crate::train::trainer::RunRecord>(&dir.join("record.json"))
                .ok()
                .filter(|r| r.finished);
        let Some(kept) = record else {
            (self.log)(&format!("{what} {name}: training"));
            self.train(cfg, &dir, name)?;
            return Ok(());
        };
        if !need_weights || jobs::final_checkpoint_present(&dir, &kept) {
            return Ok(());
        }
        (self.log)(&format!(
            "{what} {name}: its record is here but not its final checkpoint: training it again"
        ));
        let stale = dir.with_extension(format!("record-only-{}", std::process::id()));
        std::fs::rename(&dir, &stale).map_err(|e| Error::io(&dir, e))?;
        let again = self.train(cfg, &dir, name)?;
        let same = again.record.steps.len() == kept.steps.len()
            && again
                .record
                .steps
                .iter()
                .zip(&kept.steps)
                .all(|(a, b)| a.loss == b.loss);
        (self.log)(&if same {
            format!("{what} {name}: every step's loss equals the kept record's")
        } else {
            format!(
                "warning: {what} {name}: the losses differ from the kept record's (another host, thread count or code): capture is measured against the new weights"
            )
        });
        std::fs::remove_dir_all(&stale).map_err(|e| Error::io(&stale, e))
    }
}
