//! The training loop: batches → forward/backward → AdamW, the LoRA-Dash switch, periodic
//! validation and checkpoints, and the run record. Setting up is in [`super::setup`], forward
//! passes in [`super::forward`], checkpoint I/O in [`super::checkpoint`], the run directory's
//! layout in [`crate::run::layout`].

use super::data::{Batcher, Tokenized};
use super::optim::{grad_norm, linear_schedule, AdamW};
use crate::error::{Error, Result};
use crate::model::{Llama, LlamaConfig};
use crate::names::Method;
use crate::nn::ForwardCtx;
use crate::run::layout;
use crate::run::TrainConfig;
use crate::svd_cache::SvdCache;
use candle_core::Tensor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use super::device::{device_for, dtype_for, peak_rss_bytes};
pub use super::forward::LowerCacheKey;
pub use crate::run::layout::{checkpoint_dir, latest_checkpoint, list_checkpoints};
pub use crate::run::record::{EvalLog, RunRecord, StepLog, SwitchLog};

/// A run's trainable parameters, the one count `tsd train` prints and its record, report and
/// reproduction carry: every parameter that trains at some point — LoRA's A and B (a full
/// fine-tune's target matrices) and, for LoRA-Dash, the `dash_s` Δσ of every adapted matrix,
/// counted from the start although they train only after the switch (as `tsd params --dash-s`
/// and `tsd inspect` count them). Ū and V̄ are frozen and not counted.
pub fn trainable_params(model: &Llama, config: &TrainConfig) -> u64 {
    model
        .linears()
        .map(|l| {
            let lora = l.lora.as_ref().map_or(0, |x| {
                (x.a.elem_count() + x.b.elem_count()) as u64
                    + if config.method == Method::LoraDash {
                        config.dash_s as u64
                    } else {
                        0
                    }
            });
            lora + l.full.as_ref().map_or(0, |w| w.elem_count() as u64)
        })
        .sum()
}

/// A training run in progress.
pub struct Trainer {
    pub config: TrainConfig,
    pub run_dir: PathBuf,
    pub model: Llama,
    pub(super) train: Vec<Tokenized>,
    pub(super) val: Vec<Tokenized>,
    pub(super) batcher: Batcher,
    pub(super) pad_id: u32,
    pub(super) opt: AdamW,
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    /// Optimizer steps per pass over the training examples.
    pub steps_per_epoch: usize,
    /// First adapted layer (layers below run without a graph).
    pub(super) from_layer: usize,
    /// Hidden states entering `from_layer`, one `[T_i, H]` per training example, when cached.
    pub(super) lower_cache: Option<Vec<Tensor>>,
    pub record: RunRecord,
    pub(super) cache: SvdCache,
    pub(super) dash_active: bool,
    pub(super) elapsed_before: f64,
}

impl Trainer {
    /// Starts a new run in `run_dir` (which must not hold a run already).
    pub fn new(config: TrainConfig, run_dir: &Path) -> Result<Self> {
        config.validate()?;
        if run_dir.join(layout::CONFIG_FILE).exists() {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a run; use --resume to continue it or choose another --out",
                run_dir.display()
            )));
        }
        // The config is written first (atomically), so a run killed while it loads the model and
        // tokenizes can be resumed; a run that cannot start (bad data, bad model, a switch past the
        // last step) removes it again and leaves no run directory behind that it created.
        let created = !run_dir.exists();
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        layout::write_config(run_dir, &config)?;
        let built = Self::build(config, run_dir).and_then(|t| {
            if t.config.method == Method::LoraDash && t.config.dash_t >= t.total_steps {
                return Err(Error::InvalidArgument(format!(
                    "--dash-t {} is not below the run's {}: the run would train plain LoRA under a LoRA-Dash label (lower --dash-t, or use --method lora)",
                    t.config.dash_t,
                    t.steps_explained()
                )));
            }
            layout::write_config(run_dir, &t.config)?;
            Ok(t)
        });
        if built.is_err() {
            let _ = std::fs::remove_file(run_dir.join(layout::CONFIG_FILE));
            if created {
                let _ = std::fs::remove_dir(run_dir);
            }
        }
        built
    }

    /// Re-opens a run and restores its newest complete checkpoint.
    pub fn resume(run_dir: &Path) -> Result<Self> {
        let config = layout::read_config(run_dir)?;
        for p in layout::remove_stale_temp_dirs(run_dir)? {
            eprintln!(
                "tsd: removed {}, a checkpoint an interrupted run did not finish writing",
                p.display()
            );
        }
        let mut t = Self::build(config, run_dir)?;
        if let Ok(saved) = layout::read_record(run_dir) {
            check_same_data(saved.data.as_ref(), t.record.data.as_ref(), run_dir)?;
            if let Some(w) =
                kernel_path_warning(saved.kernel_path.as_ref(), &crate::kernels::current())
            {
                eprintln!("tsd: {w}");
            }
        }
        if let Some(step) = latest_checkpoint(run_dir)? {
            t.restore(step)?;
        }
        Ok(t)
    }

    /// The run's length and where it comes from: `12 optimizer steps (--max-steps)`, or
    /// `9 optimizer steps (3 epochs × 3 steps of 16 examples over 58 training examples)`.
    pub fn steps_explained(&self) -> String {
        let c = &self.config;
        if c.max_steps.is_some() {
            return format!("{} optimizer steps (--max-steps)", self.total_steps);
        }
        format!(
            "{} optimizer steps ({} epochs × {} steps of {} examples over {} training examples)",
            self.total_steps,
            c.epochs,
            self.steps_per_epoch,
            c.batch_size,
            self.train.len()
        )
    }

    /// A warning when the linear warm-up is as long as the run or longer: the learning rate then
    /// never reaches `--lr` (HF's schedule: step 1 at 0, `lr·k/warmup` at step k+1, so the last
    /// step runs at `lr·(total−1)/warmup`).
    pub fn warmup_warning(&self) -> Option<String> {
        let c = &self.config;
        if c.warmup_steps < self.total_steps {
            return None;
        }
        let last = self.total_steps.saturating_sub(1);
        let peak = linear_schedule(c.lr, last, c.warmup_steps, self.total_steps);
        Some(format!(
            "--warmup-steps {} is not shorter than the run's {}: the learning rate rises linearly from 0 and peaks at {peak:.3e} ({} of --lr {:e}) at the last step; lower --warmup-steps for a run that reaches --lr",
            c.warmup_steps,
            self.steps_explained(),
            format_args!("{last}/{}", c.warmup_steps),
            c.lr
        ))
    }

    /// Uses another SVD cache (tests).
    pub fn with_cache(mut self, cache: SvdCache) -> Self {
        self.cache = cache;
        self
    }

    /// LoRA-Dash's switch: TSD identification on every adapted module, Δσ added to the optimizer.
    fn switch_to_dash(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let pick = crate::directions::DashPick {
            floor: crate::directions::SigmaFloor {
                relative: self.config.sigma_floor,
            },
            by: self.config.dash_pick,
        };
        let logs = super::switch::start_dash_all(
            self.model.linears_mut().collect(),
            self.config.dash_s,
            pick,
            &self.cache,
            super::switch::DEFAULT_SVD_BUDGET,
        )?;
        crate::faults::pause("dash-switch");
        for lin in self.model.linears() {
            if let Some(d) = &lin.dash {
                self.opt
                    .add(format!("{}.delta_sigma", lin.module), d.delta_sigma.clone())?;
            }
        }
        self.dash_active = true;
        self.record.dash_switch = Some(SwitchLog {
            step: self.step,
            seconds: t0.elapsed().as_secs_f64(),
            modules: logs,
        });
        Ok(())
    }

    /// One optimizer step over `accumulation()` micro-batches. Returns its log.
    fn train_step(&mut self, started: Instant) -> Result<StepLog> {
        let accum = self.config.accumulation();
        let lr = linear_schedule(
            self.config.lr,
            self.step,
            self.config.warmup_steps,
            self.total_steps,
        );
        let vars: Vec<candle_core::Var> = self.opt.slots.iter().map(|s| s.var.clone()).collect();
        let mut grads_acc: Option<candle_core::backprop::GradStore> = None;
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        let t0 = Instant::now();
        for j in 0..accum {
            let (_, idx) = self.batcher.batch_at(self.step * accum + j);
            let (ids, labels, b, t) = self.batch_tensors(&idx)?;
            let ctx = ForwardCtx::train(
                self.config.dropout,
                self.config.seed
                    ^ ((self.step * accum + j) as u64).wrapping_mul(0x9E3779B97F4A7C15),
            );
            let (loss, n) = self.loss(&ids, &labels, b, t, &ctx, Some(&idx))?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            tokens += n;
            let grads = loss.backward()?;
            grads_acc = Some(match grads_acc {
                None => grads,
                Some(mut acc) => {
                    for v in &vars {
                        if let (Some(a), Some(g)) =
                            (acc.get(v.as_tensor()).cloned(), grads.get(v.as_tensor()))
                        {
                            acc.insert(v.as_tensor(), (a + g)?);
                        }
                    }
                    acc
                }
            });
        }
        let grads = grads_acc.expect("accumulation >= 1");
        let norm = grad_norm(&grads, &vars)? / accum as f64;
        let clip = if self.config.max_grad_norm > 0.0 && norm > self.config.max_grad_norm {
            self.config.max_grad_norm / norm
        } else {
            1.0
        };
        self.opt.step(&grads, lr, clip / accum as f64)?;
        self.step += 1;
        let secs = t0.elapsed().as_secs_f64();
        let loss = loss_sum / accum as f64;
        if !loss.is_finite() {
            return Err(Error::Numerical {
                context: format!("training step {}", self.step),
                reason: format!("loss is {loss}; lower the learning rate"),
            });
        }
        Ok(StepLog {
            step: self.step,
            loss,
            lr,
            grad_norm: norm,
            tokens,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            elapsed_s: self.elapsed_before + started.elapsed().as_secs_f64(),
        })
    }

    /// Runs to the end (or until `stop` is set, saving a checkpoint first). `on_step` sees each step.
    pub fn run(&mut self, on_step: &mut dyn FnMut(&StepLog), stop: &AtomicBool) -> Result<()> {
        if self.record.finished {
            return Ok(());
        }
        self.ensure_lower_cache()?;
        let started = Instant::now();
        while self.step < self.total_steps {
            if self.config.method == Method::LoraDash
                && !self.dash_active
                && self.step >= self.config.dash_t
            {
                self.switch_to_dash()?;
            }
            let log = self.train_step(started)?;
            on_step(&log);
            self.record.steps.push(log);
            if let Some(e) = self.config.eval_every {
                if self.step.is_multiple_of(e) {
                    self.eval_and_log()?;
                }
            }
            if self.step.is_multiple_of(self.config.save_every) || self.step == self.total_steps {
                self.save_checkpoint(started)?;
            }
            // A stop during the last step lets the run finish (nothing is left to resume).
            if stop.load(Ordering::SeqCst) && self.step < self.total_steps {
                if self.record.checkpoints.last() != Some(&self.step) {
                    self.save_checkpoint(started)?;
                }
                return Ok(());
            }
        }
        if self.record.val.last().map(|v| v.step) != Some(self.step) {
            self.eval_and_log()?;
        }
        self.record.finished = true;
        self.record.wall_s = self.elapsed_before + started.elapsed().as_secs_f64();
        self.write_record()
    }

    fn eval_and_log(&mut self) -> Result<()> {
        if let Some(loss) = self.validation_loss()? {
            self.record.val.push(EvalLog {
                step: self.step,
                loss,
            });
        }
        Ok(())
    }

    pub(super) fn write_record(&mut self) -> Result<()> {
        self.record.trainable_params = trainable_params(&self.model, &self.config);
        self.record.peak_rss_bytes = self.record.peak_rss_bytes.max(peak_rss_bytes());
        layout::write_record(&self.run_dir, &self.record)
    }

    /// Base model configuration.
    pub fn model_config(&self) -> &LlamaConfig {
        &self.model.config
    }
}

/// A warning when a run resumes on another matrix-kernel path than the one its record names
/// (none for a record written before tsd recorded the path).
pub fn kernel_path_warning(
    saved: Option<&crate::kernels::KernelPath>,
    now: &crate::kernels::KernelPath,
) -> Option<String> {
    let saved = saved?;
    (saved.name != now.name).then(|| {
        format!(
            "warning: this run's record names kernel path {}, this process runs {}: the resumed steps may differ in the last bits (bit-identical resume holds on one kernel path)",
            saved.name, now.name
        )
    })
}

/// Refuses to resume on data whose files changed since the run started (a record written before
/// tsd recorded its data is not checked).
fn check_same_data(
    saved: Option<&crate::run::record::DataRecord>,
    now: Option<&crate::run::record::DataRecord>,
    run_dir: &Path,
) -> Result<()> {
    let (Some(saved), Some(now)) = (saved, now) else {
        return Ok(());
    };
    let shas = |d: &crate::run::record::DataRecord| -> Vec<String> {
        d.manifest.files.iter().map(|f| f.sha256.clone()).collect()
    };
    if shas(saved) == shas(now) {
        return Ok(());
    }
    let files = |d: &crate::run::record::DataRecord| -> Vec<(String, String)> {
        d.manifest
            .files
            .iter()
            .map(|f| (f.path.clone(), f.sha256.clone()))
            .collect()
    };
    Err(Error::InvalidArgument(format!(
        "cannot resume {}: its training data changed since it started (record.json names {:?}, now {:?}); resume needs the same files",
        run_dir.display(),
        files(saved),
        files(now)
    )))
}

#[cfg(test)]
mod tests {
    use crate::kernels::KernelPath;

    #[test]
    fn resume_warns_only_across_kernel_paths() {
        let path = |name: &str| KernelPath {
            name: name.into(),
            features: Vec::new(),
        };
        let w = super::kernel_path_warning;
        assert!(w(None, &path("avx512f")).is_none());
        assert!(w(Some(&path("avx512f")), &path("avx512f")).is_none());
        let msg = w(Some(&path("avx512f")), &path("avx2+fma")).unwrap();
        assert!(msg.contains("avx512f") && msg.contains("avx2+fma"), "{msg}");
        assert!(!msg.contains('\n'));
    }
}
