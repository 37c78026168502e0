//! The training loop: data → batches → forward/backward → AdamW, the LoRA-Dash switch, checkpoints
//! that resume exactly, and the run record.
//!
//! Run directory:
//! ```text
//! RUN/config.json                 TrainConfig
//! RUN/record.json                 RunRecord (per-step loss, lr, tokens/s, memory, Dash switch, …)
//! RUN/checkpoints/step-000100/    adapter_config.json + adapter_model.safetensors (PEFT, Dash extras)
//!                                 or model.safetensors + config.json (method full)
//!                                 optimizer.safetensors, trainer_state.json (written last)
//! ```
//! A checkpoint is written to a temporary directory and renamed into place, so a killed run never
//! leaves a half-written one; `--resume` continues from the newest complete checkpoint.

use super::config::{Method, TrainConfig};
use super::data::{self, Batcher, Tokenized};
use super::optim::{grad_norm, linear_schedule, AdamW, AdamWConfig};
use crate::adapter::{self, Adapter, AdapterConfig};
use crate::error::{Error, Result};
use crate::linalg::cache::SvdCache;
use crate::model::{Llama, LlamaConfig};
use crate::nn::adapted::DashSwitch;
use crate::nn::ForwardCtx;
use crate::weights::{self, ModelSpec};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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
struct TrainerState {
    step: usize,
    dash_active: bool,
    optimizer_steps: HashMap<String, u64>,
    elapsed_s: f64,
}

/// What a lower-layer cache depends on: the first adapted layer and every example's token ids.
pub type LowerCacheKey = (usize, Vec<Vec<u32>>);

/// Peak resident memory of this process (`VmHWM`), bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Data files of `--data` entries: a JSON file, or a task directory holding `train.json`.
fn data_files(entries: &[String]) -> Result<Vec<PathBuf>> {
    entries
        .iter()
        .map(|e| {
            let p = PathBuf::from(e);
            let f = if p.is_dir() { p.join("train.json") } else { p };
            if f.is_file() {
                Ok(f)
            } else {
                Err(Error::io(
                    &f,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "training data not found"),
                ))
            }
        })
        .collect()
}

/// A training run in progress.
pub struct Trainer {
    pub config: TrainConfig,
    pub run_dir: PathBuf,
    pub model: Llama,
    train: Vec<Tokenized>,
    val: Vec<Tokenized>,
    batcher: Batcher,
    pad_id: u32,
    opt: AdamW,
    /// Optimizer steps done.
    pub step: usize,
    pub total_steps: usize,
    /// First adapted layer (layers below run without a graph).
    from_layer: usize,
    /// Hidden states entering `from_layer`, one `[T_i, H]` per training example, when cached.
    lower_cache: Option<Vec<Tensor>>,
    pub record: RunRecord,
    cache: SvdCache,
    dash_active: bool,
    elapsed_before: f64,
}

impl Trainer {
    /// Starts a new run in `run_dir` (which must not hold a run already).
    pub fn new(config: TrainConfig, run_dir: &Path) -> Result<Self> {
        config.validate()?;
        if run_dir.join("config.json").exists() {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a run; use --resume to continue it or choose another --out",
                run_dir.display()
            )));
        }
        // Build first: a run that cannot start (bad data, bad model) leaves no run directory behind.
        let t = Self::build(config, run_dir)?;
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        let text = serde_json::to_string_pretty(&t.config).expect("config serialises");
        crate::fsutil::atomic_write(&run_dir.join("config.json"), text.as_bytes())?;
        Ok(t)
    }

    /// Re-opens a run and restores its newest complete checkpoint.
    pub fn resume(run_dir: &Path) -> Result<Self> {
        let config = TrainConfig::load(&run_dir.join("config.json"))?;
        let mut t = Self::build(config, run_dir)?;
        if let Some(step) = latest_checkpoint(run_dir)? {
            t.restore(step)?;
        }
        Ok(t)
    }

    fn build(config: TrainConfig, run_dir: &Path) -> Result<Self> {
        let device = crate::device::device_for(&config.device)?;
        let dtype = crate::device::dtype_for(&config.dtype)?;
        let path = weights::resolve_path(&ModelSpec {
            spec: config.model.clone(),
            revision: config.revision.clone(),
            offline: false,
        })?;
        let src = weights::open_path(&path)?;
        let mut model = Llama::from_source(src.as_ref(), &device, dtype)?;
        let max_pos = model.max_positions();
        if config.cutoff_len > max_pos {
            return Err(Error::InvalidArgument(format!(
                "cutoff_len {} exceeds the model's {max_pos} positions (max_position_embeddings); lower --cutoff-len",
                config.cutoff_len
            )));
        }
        let tok = crate::model::tokenizer::load_tokenizer(&path)?;
        let info = crate::model::tokenizer::load_tokenizer_info(&path)?;
        let eos = info.eos;
        let pad_id = info.pad.unwrap_or(eos);

        let mut examples = Vec::new();
        for f in data_files(&config.data)? {
            let mut ex = data::load_examples(&f)?;
            if let Some(n) = config.max_examples {
                ex.truncate(n);
            }
            examples.extend(ex);
        }
        if examples.len() <= config.val_size {
            return Err(Error::InvalidArgument(format!(
                "{} example(s) cannot leave a training set after a validation split of {}",
                examples.len(),
                config.val_size
            )));
        }
        let (tr_idx, val_idx) = data::split_validation(
            examples.len(),
            config.val_size,
            config.split_seed.unwrap_or(config.seed),
        )?;
        let tokenize = |idx: &[usize]| -> Result<Vec<Tokenized>> {
            idx.iter()
                .map(|&i| {
                    data::tokenize_example(
                        &tok,
                        eos,
                        &examples[i],
                        config.cutoff_len,
                        config.train_on_inputs,
                    )
                })
                .collect()
        };
        let train = tokenize(&tr_idx)?;
        let val = tokenize(&val_idx)?;
        let batcher = Batcher::new(
            train.iter().map(|t| t.input_ids.len()).collect(),
            config.micro_batch_size,
            config.seed,
        )?;
        let accum = config.accumulation();
        let steps_per_epoch = (batcher.batches_per_epoch() / accum).max(1);
        let total_steps = config
            .max_steps
            .unwrap_or(((config.epochs * steps_per_epoch as f64).ceil() as usize).max(1));

        // Adapters on the target modules of the adapted layers.
        let layers = model.layers.len();
        let from_layer = layers - config.top_layers.unwrap_or(layers).min(layers);
        let mut opt = AdamW::new(AdamWConfig {
            weight_decay: config.weight_decay,
            ..Default::default()
        });
        for (li, block) in model.layers.iter_mut().enumerate() {
            if li < from_layer {
                continue;
            }
            for lin in block.linears.iter_mut() {
                let short = lin.module.rsplit('.').next().unwrap_or("").to_string();
                if !config.targets.contains(&short) {
                    continue;
                }
                match config.method {
                    Method::Full => {
                        lin.make_full()?;
                        opt.add(
                            format!("{}.weight", lin.module),
                            lin.full.clone().expect("just made"),
                        )?;
                    }
                    Method::Lora | Method::LoraDash => {
                        lin.add_lora(
                            config.rank,
                            config.alpha(),
                            config.use_rslora,
                            config.seed ^ fnv(&lin.module),
                        )?;
                        let l = lin.lora.as_ref().expect("just added");
                        opt.add(format!("{}.lora_A", lin.module), l.a.clone())?;
                        opt.add(format!("{}.lora_B", lin.module), l.b.clone())?;
                    }
                }
            }
        }
        let trainable: u64 = opt.slots.iter().map(|s| s.var.elem_count() as u64).sum();
        let record = RunRecord {
            tsd_version: env!("CARGO_PKG_VERSION").into(),
            build: env!("TSD_BUILD_VERSIONS").into(),
            config: config.clone(),
            base: src.describe(),
            base_params: src.total_params(),
            trainable_params: trainable,
            total_steps,
            train_examples: train.len(),
            val_examples: val.len(),
            device: config.device.clone(),
            threads: rayon::current_num_threads(),
            steps: Vec::new(),
            val: Vec::new(),
            dash_switch: None,
            checkpoints: Vec::new(),
            lower_cache_seconds: 0.0,
            peak_rss_bytes: 0,
            wall_s: 0.0,
            finished: false,
        };
        Ok(Trainer {
            config,
            run_dir: run_dir.to_path_buf(),
            model,
            lower_cache: None,
            train,
            val,
            batcher,
            pad_id,
            opt,
            step: 0,
            total_steps,
            from_layer,
            record,
            cache: SvdCache::default_location(),
            dash_active: false,
            elapsed_before: 0.0,
        })
    }

    /// Identity of the cached lower-layer states: the first adapted layer and every training and
    /// validation example's token ids (runs that share it can share the cache).
    pub fn lower_cache_key(&self) -> LowerCacheKey {
        (
            self.from_layer,
            self.cached_examples()
                .map(|t| t.input_ids.clone())
                .collect(),
        )
    }

    /// The examples the lower-layer cache holds: training, then validation.
    fn cached_examples(&self) -> impl Iterator<Item = &Tokenized> {
        self.train.iter().chain(self.val.iter())
    }

    /// The cached lower-layer states, once computed (shared storage: cloning is cheap).
    pub fn lower_cache(&self) -> Option<Vec<Tensor>> {
        self.lower_cache.clone()
    }

    /// Reuses lower-layer states computed by another run with the same [`lower_cache_key`](Self::lower_cache_key).
    pub fn set_lower_cache(&mut self, cache: Vec<Tensor>) -> Result<()> {
        if cache.len() != self.train.len() + self.val.len()
            || cache
                .iter()
                .zip(self.cached_examples())
                .any(|(c, t)| c.dim(0).ok() != Some(t.input_ids.len()))
        {
            return Err(Error::InvalidArgument(
                "lower-layer cache does not match this run's examples".into(),
            ));
        }
        self.lower_cache = Some(cache);
        Ok(())
    }

    /// Computes the lower-layer cache if this run adapts only the top layers and has none yet.
    fn ensure_lower_cache(&mut self) -> Result<()> {
        if self.lower_cache.is_none() && self.from_layer > 0 && self.config.cache_lower_layers {
            let t0 = Instant::now();
            let examples: Vec<Tokenized> = self.cached_examples().cloned().collect();
            self.lower_cache = Some(cache_lower(
                &self.model,
                &examples,
                self.from_layer,
                self.pad_id,
            )?);
            self.record.lower_cache_seconds = t0.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// Uses another SVD cache (tests).
    pub fn with_cache(mut self, cache: SvdCache) -> Self {
        self.cache = cache;
        self
    }

    /// `(ids [B, T] u32, labels [B, T] i64)` for a micro-batch.
    fn batch_tensors(&self, idx: &[usize]) -> Result<(Tensor, Vec<i64>, usize, usize)> {
        let items: Vec<&Tokenized> = idx.iter().map(|&i| &self.train[i]).collect();
        self.pad(&items)
    }

    fn pad(&self, items: &[&Tokenized]) -> Result<(Tensor, Vec<i64>, usize, usize)> {
        let (ids, labels, _mask, t) = data::pad_batch(items, self.pad_id);
        let b = items.len();
        let ids = Tensor::from_vec(ids, (b, t), self.model.device())?;
        Ok((ids, labels, b, t))
    }

    /// Mean token cross-entropy of a padded batch (positions with label −100 ignored), computing
    /// logits only where a label exists. Returns `(loss tensor, counted tokens)`.
    fn loss(
        &self,
        ids: &Tensor,
        labels: &[i64],
        b: usize,
        t: usize,
        ctx: &ForwardCtx,
        cached: Option<&[usize]>,
    ) -> Result<(Tensor, usize)> {
        let eval = ForwardCtx::eval();
        let h = match (cached, &self.lower_cache) {
            (Some(idx), Some(cache)) => {
                // Cached lower layers, right-padded with zeros (pads only feed masked positions).
                let hd = self.model.config.hidden_size;
                let rows = idx
                    .iter()
                    .map(|&i| {
                        let c = &cache[i];
                        let n = c.dim(0)?;
                        if n == t {
                            Ok(c.clone())
                        } else {
                            Tensor::cat(
                                &[c, &Tensor::zeros((t - n, hd), c.dtype(), c.device())?],
                                0,
                            )
                        }
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::stack(&rows, 0)?.to_device(self.model.device())?
            }
            _ => {
                let h = self.model.embed(ids)?;
                // Frozen lower layers: no trainable variable, so no graph is recorded here.
                if self.from_layer > 0 {
                    self.model.hidden_range(&h, 0, self.from_layer, &eval)?
                } else {
                    h
                }
            }
        };
        let h = self.model.final_hidden(&h, self.from_layer, ctx)?;
        let hd = h.dim(2)?;
        // Position p predicts label p+1.
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for bi in 0..b {
            for p in 0..t - 1 {
                let l = labels[bi * t + p + 1];
                if l >= 0 {
                    rows.push((bi * t + p) as u32);
                    targets.push(l as u32);
                }
            }
        }
        if rows.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch has no labelled token (cutoff too short?)".into(),
            ));
        }
        let n = rows.len();
        let dev = self.model.device();
        let sel = h
            .reshape((b * t, hd))?
            .index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
        let logits = self.model.logits(&sel)?;
        Ok((crate::nn::loss::cross_entropy(&logits, &targets)?, n))
    }

    /// Validation loss over the held-out examples.
    pub fn validation_loss(&self) -> Result<Option<f64>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let ctx = ForwardCtx::eval();
        let (mut total, mut count) = (0.0, 0usize);
        let first = self.train.len();
        let idx: Vec<usize> = (first..first + self.val.len()).collect();
        for chunk in idx.chunks(self.config.micro_batch_size) {
            let items: Vec<&Tokenized> = chunk.iter().map(|&i| &self.val[i - first]).collect();
            let (ids, labels, b, t) = self.pad(&items)?;
            let (l, n) = self.loss(&ids, &labels, b, t, &ctx, Some(chunk))?;
            total += l.to_scalar::<f32>()? as f64 * n as f64;
            count += n;
        }
        Ok(Some(total / count.max(1) as f64))
    }

    /// LoRA-Dash's switch: TSD identification on every adapted module, Δσ added to the optimizer.
    fn switch_to_dash(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let floor = crate::directions::SigmaFloor {
            relative: self.config.sigma_floor,
        };
        let logs = super::switch::start_dash_all(
            self.model.linears_mut().collect(),
            self.config.dash_s,
            floor,
            &self.cache,
            super::switch::DEFAULT_SVD_BUDGET,
        )?;
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
                if self.step % e == 0 {
                    self.eval_and_log()?;
                }
            }
            if self.step % self.config.save_every == 0 || self.step == self.total_steps {
                self.save_checkpoint(started)?;
            }
            if stop.load(Ordering::SeqCst) {
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

    fn write_record(&mut self) -> Result<()> {
        self.record.peak_rss_bytes = self.record.peak_rss_bytes.max(peak_rss_bytes());
        let text = serde_json::to_string_pretty(&self.record).expect("record serialises");
        crate::fsutil::atomic_write(&self.run_dir.join("record.json"), text.as_bytes())
    }

    /// The adapter as it stands (PEFT format with Dash extras).
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
            config: AdapterConfig {
                r: self.config.rank,
                lora_alpha: self.config.alpha(),
                use_rslora: self.config.use_rslora,
                lora_dropout: self.config.dropout as f64,
                base_model_name_or_path: Some(self.config.model.clone()),
                revision: self.config.revision.clone(),
                target_modules: Some(adapter::config::TargetModules::List(
                    self.config.targets.clone(),
                )),
                ..Default::default()
            },
            modules,
            warnings: Vec::new(),
            unmatched: Vec::new(),
            metadata,
        })
    }

    fn save_checkpoint(&mut self, started: Instant) -> Result<()> {
        let dir = self.run_dir.join("checkpoints");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let final_dir = dir.join(format!("step-{:06}", self.step));
        let tmp = dir.join(format!(".step-{:06}.tmp-{}", self.step, std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
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
        let state = TrainerState {
            step: self.step,
            dash_active: self.dash_active,
            optimizer_steps: steps,
            elapsed_s: self.elapsed_before + started.elapsed().as_secs_f64(),
        };
        let text = serde_json::to_string_pretty(&state).expect("state serialises");
        crate::fsutil::atomic_write(&tmp.join("trainer_state.json"), text.as_bytes())?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
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
        let cfg = serde_json::to_string_pretty(&self.model.config).expect("config serialises");
        crate::fsutil::atomic_write(&dir.join("config.json"), cfg.as_bytes())
    }

    fn restore(&mut self, step: usize) -> Result<()> {
        let dir = self
            .run_dir
            .join("checkpoints")
            .join(format!("step-{step:06}"));
        let state: TrainerState = crate::fsutil::read_json(&dir.join("trainer_state.json"))?;
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
        self.elapsed_before = state.elapsed_s;
        // Steps after the checkpoint will be redone: drop them from the record.
        if let Ok(rec) = crate::fsutil::read_json::<RunRecord>(&self.run_dir.join("record.json")) {
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

    /// Base model configuration.
    pub fn model_config(&self) -> &LlamaConfig {
        &self.model.config
    }
}

/// The newest complete checkpoint step of a run, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<usize>> {
    Ok(list_checkpoints(run_dir)?.into_iter().max())
}

/// Steps of all complete checkpoints (those with `trainer_state.json`), ascending.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<usize>> {
    let dir = run_dir.join("checkpoints");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut steps: Vec<usize> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("trainer_state.json").exists())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("step-"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    steps.sort();
    Ok(steps)
}

/// The directory of a checkpoint.
pub fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join("checkpoints").join(format!("step-{step:06}"))
}

/// Hidden states entering layer `from` for every example (`[T_i, H]` each, on the host),
/// computed in length-sorted, right-padded chunks and cut back to each example's length.
fn cache_lower(
    model: &Llama,
    examples: &[Tokenized],
    from: usize,
    pad_id: u32,
) -> Result<Vec<Tensor>> {
    let ctx = ForwardCtx::eval();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].input_ids.len());
    let mut out: Vec<Option<Tensor>> = vec![None; examples.len()];
    for chunk in order.chunks(8) {
        let items: Vec<&Tokenized> = chunk.iter().map(|&i| &examples[i]).collect();
        let (ids, _labels, _mask, t) = data::pad_batch(&items, pad_id);
        let ids = Tensor::from_vec(ids, (items.len(), t), model.device())?;
        let h = model.hidden_range(&model.embed(&ids)?, 0, from, &ctx)?;
        for (j, &i) in chunk.iter().enumerate() {
            let n = examples[i].input_ids.len();
            // Kept on the host: a GPU holds only the batch in flight.
            let row = h.get(j)?.narrow(0, 0, n)?.contiguous()?;
            out[i] = Some(row.to_device(&candle_core::Device::Cpu)?);
        }
    }
    Ok(out
        .into_iter()
        .map(|x| x.expect("every example cached"))
        .collect())
}
