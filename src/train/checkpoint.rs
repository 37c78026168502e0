//! Checkpoints of a tsd run (layout in [`crate::run::layout`]): the PEFT adapter (for LoRA-Dash
//! its fold, with the Dash parametrisation beside it: [`adapter::write_adapter`]) or the full weights, the optimizer moments and the trainer state, written into a
//! temporary directory and renamed; and restoring one exactly for `--resume`.

use super::trainer::Trainer;
use crate::adapter::{self, Adapter};
use crate::error::{Error, Result};
use crate::names::Method;
use crate::run::{layout, TrainerState};
use crate::weights;
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

impl Trainer {
    /// The adapter as it stands (LoRA, with Dash's Ū, V̄ᵀ, Δσ after the switch).
    pub fn adapter(&self) -> Result<Adapter> {
        let mut modules = Vec::new();
        for lin in self.model.linears() {
            if let Some(m) = lin.to_module_adapter()? {
                modules.push(m);
            }
        }
        let mut metadata = std::collections::BTreeMap::new();
        if let Some(sw) = &self.record.dash_switch {
            metadata.insert("tsd_dash_switch_step".into(), sw.step.to_string());
            metadata.insert("tsd_dash_s".into(), self.config.dash_s.to_string());
        }
        Ok(Adapter {
            path: self.run_dir.clone(),
            config: super::setup::adapter_config(&self.config, self.model.layers.len()),
            modules,
            warnings: Vec::new(),
            unmatched: Vec::new(),
            metadata,
            extras: Default::default(),
        })
    }

    pub(super) fn save_checkpoint(&mut self, started: Instant) -> Result<()> {
        let tmp = layout::begin_checkpoint(&self.run_dir, self.step)?;
        match self.config.method {
            Method::Full => self.write_full_weights(&tmp)?,
            _ => adapter::write_adapter(&tmp, &self.adapter()?)?,
        }
        let (moments, steps) = self.opt.state();
        let moments: HashMap<String, Tensor> = moments
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
            .collect::<candle_core::Result<_>>()?;
        let opt_path = tmp.join("optimizer.safetensors");
        candle_core::safetensors::save(&moments, &opt_path)?;
        crate::faults::pause("checkpoint-write");
        let state = TrainerState {
            step: self.step,
            dash_active: self.dash_active,
            optimizer_steps: steps,
            elapsed_s: self.elapsed_before + started.elapsed().as_secs_f64(),
        };
        layout::write_state(&tmp, &state)?;
        layout::commit_checkpoint(&self.run_dir, self.step, &tmp)?;
        if !self.record.checkpoints.contains(&self.step) {
            self.record.checkpoints.push(self.step);
        }
        self.record.wall_s = state.elapsed_s;
        self.write_record()
    }

    /// Method full: the trained target weights (HF names) and the base config, a model directory
    /// that `tsd inspect --reference` reads as W*.
    fn write_full_weights(&self, dir: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for lin in self.model.linears() {
            if let Some(w) = &lin.full {
                tensors.insert(
                    format!("{}.weight", lin.module),
                    w.as_tensor().to_dtype(DType::F32)?,
                );
            }
        }
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
        crate::fsutil::write_json_unterminated(&dir.join("config.json"), &self.model.config)
    }

    pub(super) fn restore(&mut self, step: usize) -> Result<()> {
        let dir = layout::checkpoint_dir(&self.run_dir, step);
        let state = layout::read_state(&dir)?;
        match self.config.method {
            Method::Full => {
                let src = weights::open_path(&dir)?;
                for lin in self.model.linears_mut() {
                    if let Some(w) = &lin.full {
                        let (shape, data) = src.tensor(&format!("{}.weight", lin.module))?;
                        w.set(&Tensor::from_vec(data, shape, w.device())?.to_dtype(w.dtype())?)?;
                    }
                }
            }
            _ => {
                let saved = adapter::load_adapter(&dir)?;
                let by_name: HashMap<&str, &adapter::ModuleAdapter> = saved
                    .modules
                    .iter()
                    .map(|m| (m.module.as_str(), m))
                    .collect();
                for lin in self.model.linears_mut() {
                    if lin.lora.is_none() {
                        continue;
                    }
                    let m =
                        by_name
                            .get(lin.module.as_str())
                            .ok_or_else(|| Error::MissingTensor {
                                context: format!("checkpoint {}", dir.display()),
                                tensor: lin.module.clone(),
                            })?;
                    lin.load_module_adapter(m)?;
                }
                if state.dash_active {
                    let mut names = Vec::new();
                    for lin in self.model.linears() {
                        if let Some(d) = &lin.dash {
                            names.push((
                                format!("{}.delta_sigma", lin.module),
                                d.delta_sigma.clone(),
                            ));
                        }
                    }
                    for (n, v) in names {
                        self.opt.add(n, v)?;
                    }
                }
            }
        }
        let moments =
            candle_core::safetensors::load(dir.join("optimizer.safetensors"), self.model.device())?;
        self.opt.load_state(&moments, &state.optimizer_steps)?;
        self.step = state.step;
        self.dash_active = state.dash_active;
        self.record.trainable_params = super::trainer::trainable_params(&self.model, &self.config);
        self.elapsed_before = state.elapsed_s;
        // Steps after the checkpoint will be redone: drop them from the record.
        if let Ok(rec) = layout::read_record(&self.run_dir) {
            self.record.steps = rec.steps.into_iter().filter(|s| s.step <= step).collect();
            self.record.val = rec.val.into_iter().filter(|v| v.step <= step).collect();
            self.record.dash_switch = rec.dash_switch.filter(|d| d.step <= step);
            self.record.checkpoints = rec.checkpoints.into_iter().filter(|&c| c <= step).collect();
            self.record.peak_rss_bytes = rec.peak_rss_bytes;
            self.record.lower_cache_seconds = rec.lower_cache_seconds;
            // A finished run resumed at its last step stays finished (nothing to redo).
            if rec.finished && step >= self.total_steps {
                self.record.finished = true;
                self.record.wall_s = rec.wall_s;
            }
        }
        Ok(())
    }
}
