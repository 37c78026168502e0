//! `tsd reproduce commonsense`: a grid of LoRA and LoRA-Dash runs on the same data and steps, each
//! evaluated, TSD capture along training against a reference update, and the parameter-efficiency
//! ratio the paper claims (LoRA-Dash at rank r matches LoRA at 8–16× r).
//!
//! Layout of `OUT/`: `preset.json` (the setting; a later invocation must agree), `lr-check.json`
//! and `lr-check/<lr>/` (the learning-rate check), `runs/<cell>/` (a `tsd train` run directory
//! plus `eval.json`, `predictions.json`, `capture.json`), `base/eval.json` (the base model),
//! `results.json`/`results.csv`/`report.html`. Resumable piece by piece: a run with `eval.json` is
//! not redone, an interrupted run resumes from its checkpoint, the lr check keeps finished trials.
//! Every number in the results traces to one of these files.

pub mod controls;
pub mod jobs;
pub mod lock;
pub mod preset;
pub mod summary;

pub use preset::{Preset, Protocol, ReferenceKind};

use crate::error::{Error, Result};
use crate::eval::generate::GenConfig;
use crate::eval::prepared::{
    eval_generate_prepared, eval_loglik_prepared, prepare_generate, prepare_loglik,
    PreparedGenerate, PreparedTask,
};
use crate::eval::{eval_generate, task, Task, TaskResult};
use crate::model::tokenizer::Tokenizer;
use crate::model::Llama;
use crate::names::Method;
use crate::run::TrainConfig;
use crate::train::data::Example;
use crate::train::trainer::LowerCacheKey;
use crate::train::Trainer;
use crate::weights::WeightSource;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How often the lr check may extend its range past an edge optimum.
const LR_EXTENSIONS: usize = 3;

/// The paper's LLaMA-7B commonsense table (Si et al. 2025; Params% as in README, Definitions).
pub use crate::paper::TABLE_CSV as PAPER_TABLE;

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

/// Per module type (in order of first appearance) and every Dash pick's Δσ of one checkpoint.
fn type_nulls_and_picks(
    rep: &crate::inspect::InspectReport,
) -> (Vec<TypeNull>, Vec<PickDeltaSigma>) {
    let mut types: Vec<String> = Vec::new();
    for m in &rep.modules {
        if !types.contains(&m.module_type) {
            types.push(m.module_type.clone());
        }
    }
    let by_type = types
        .into_iter()
        .filter_map(|t| {
            let null =
                crate::track::TrackNull::over(rep.modules.iter().filter(|m| m.module_type == t))?;
            Some(TypeNull {
                module_type: t,
                null,
            })
        })
        .collect();
    let picks = rep
        .modules
        .iter()
        .filter_map(|m| m.dash.as_ref().map(|d| (m, d)))
        .flat_map(|(m, d)| {
            d.indices
                .iter()
                .zip(&d.delta_sigma)
                .filter_map(move |(i, ds)| {
                    i.map(|index| PickDeltaSigma {
                        module: m.module.clone(),
                        index,
                        delta_sigma: *ds as f64,
                    })
                })
        })
        .collect();
    (by_type, picks)
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

/// What one invocation does.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only this piece (`lr-check`, `base`, or a cell name such as `lora-r4-s1`), then stop.
    pub only: Option<String>,
    /// Train nothing: gather finished pieces (and compute capture) into the results. Unfinished
    /// pieces are refused, all named at once, unless `allow_partial`.
    pub collect: bool,
    /// With `collect`: gather what has finished and list the rest as deviations.
    pub allow_partial: bool,
}

/// The evaluation side of a grid: test examples, prepared loglik states (computed once, lazily,
/// from the first model evaluated: its layers below the adapted ones carry no adapter).
struct Evaluator {
    tasks: Vec<(Task, Vec<Example>)>,
    top_layers: Option<usize>,
    prepared: Option<Vec<PreparedTask>>,
    /// The same for `generate`: each task's beam-search batches with their lower layers run.
    prepared_gen: Option<Vec<PreparedGenerate>>,
    tok: Tokenizer,
    gen: GenConfig,
    loglik_limit: Option<usize>,
    generate_limit: Option<usize>,
    protocol: Protocol,
}

fn limit(ex: &[Example], l: Option<usize>) -> &[Example] {
    &ex[..l.unwrap_or(ex.len()).min(ex.len())]
}

impl Evaluator {
    fn new(preset: &Preset, data: &Path, eval_tasks: &[String]) -> Result<Self> {
        let path =
            crate::provision::resolve_path(&crate::weights::ModelSpec::new(preset.model.clone()))?;
        let tok = crate::model::tokenizer::load_tokenizer(&path)?;
        let info = crate::model::tokenizer::load_tokenizer_info(&path)?;
        let mut tasks = Vec::new();
        for t in eval_tasks {
            let tk = task(t).ok_or_else(|| Error::InvalidArgument(format!("unknown task {t}")))?;
            let ex = crate::train::data::load_examples(&data.join(t).join("test.json"))?;
            tasks.push((tk, ex));
        }
        Ok(Evaluator {
            tasks,
            top_layers: preset.top_layers,
            prepared: None,
            prepared_gen: None,
            tok,
            gen: GenConfig {
                num_beams: 4,
                max_new_tokens: 32,
                length_penalty: 1.0,
                eos: info.eos,
            },
            loglik_limit: preset.loglik_limit,
            generate_limit: preset.generate_limit,
            protocol: preset.protocol,
        })
    }

    /// Scores `model` (adapter merged or not); returns the per-example results too and the seconds
    /// spent preparing the grid's lower-layer states (first call only; not in `Scores::eval_s`).
    fn evaluate(&mut self, model: &Llama) -> Result<(Scores, Vec<TaskResult>, f64)> {
        let t0 = Instant::now();
        let mut prep_s = 0.0;
        if self.prepared.is_none() && self.loglik_limit != Some(0) {
            let layers = model.num_layers();
            let from = layers - self.top_layers.unwrap_or(layers).min(layers);
            let mut v = Vec::new();
            for (tk, ex) in &self.tasks {
                v.push(prepare_loglik(
                    model,
                    &self.tok,
                    tk,
                    limit(ex, self.loglik_limit),
                    from,
                    &|| {},
                )?);
            }
            self.prepared = Some(v);
            prep_s = t0.elapsed().as_secs_f64();
        }
        if self.prepared_gen.is_none() && self.generate_limit != Some(0) {
            let t1 = Instant::now();
            let layers = model.num_layers();
            let from = layers - self.top_layers.unwrap_or(layers).min(layers);
            let mut v = Vec::new();
            for (tk, ex) in &self.tasks {
                v.push(prepare_generate(
                    model,
                    &self.tok,
                    tk,
                    limit(ex, self.generate_limit),
                    &self.gen,
                    crate::eval::generate::DEFAULT_BATCH,
                    from,
                )?);
            }
            self.prepared_gen = Some(v);
            prep_s += t1.elapsed().as_secs_f64();
        }
        let mut results = Vec::new();
        let mut tasks = Vec::new();
        let (mut g_n, mut g_bad) = (0usize, 0usize);
        for (i, (tk, ex)) in self.tasks.iter().enumerate() {
            let mut s = TaskScore {
                task: tk.name.to_string(),
                loglik: None,
                loglik_examples: 0,
                generate: None,
                generate_examples: 0,
                unparseable: None,
            };
            if let Some(p) = self
                .prepared
                .as_ref()
                .map(|v| &v[i])
                .filter(|p| !p.is_empty())
            {
                let l = eval_loglik_prepared(model, p, &|| {})?;
                s.loglik = Some(100.0 * l.accuracy);
                s.loglik_examples = l.examples;
                results.push(l);
            }
            let gex = limit(ex, self.generate_limit);
            if !gex.is_empty() {
                let g = match self.prepared_gen.as_ref().map(|v| &v[i]) {
                    Some(p) => eval_generate_prepared(model, &self.tok, p, &self.gen, &|| {})?,
                    None => eval_generate(model, &self.tok, tk, gex, &self.gen, &|| {})?,
                };
                s.generate = Some(100.0 * g.accuracy);
                s.generate_examples = g.examples;
                s.unparseable = Some(100.0 * g.unparseable as f64 / g.examples.max(1) as f64);
                g_n += g.examples;
                g_bad += g.unparseable;
                results.push(g);
            }
            tasks.push(s);
        }
        let avg = |f: &dyn Fn(&TaskScore) -> Option<f64>| -> Option<f64> {
            let v: Vec<f64> = tasks.iter().filter_map(f).collect();
            crate::stats::mean(&v)
        };
        let loglik_avg = avg(&|t| t.loglik);
        let generate_avg = avg(&|t| t.generate);
        let average = match self.protocol {
            Protocol::Loglik => loglik_avg,
            Protocol::Generate => generate_avg,
        }
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the headline protocol {:?} scored no example (check the preset's limits)",
                self.protocol
            ))
        })?;
        Ok((
            Scores {
                tasks,
                loglik_avg,
                generate_avg,
                unparseable_rate: (g_n > 0).then(|| 100.0 * g_bad as f64 / g_n as f64),
                average,
                eval_s: t0.elapsed().as_secs_f64() - prep_s,
            },
            results,
            prep_s,
        ))
    }
}

/// A whole reproduction in one output directory.
struct Grid<'a> {
    preset: &'a Preset,
    out: &'a Path,
    train_files: Vec<String>,
    eval_tasks: Vec<String>,
    missing: Vec<String>,
    data: PathBuf,
    log: &'a dyn Fn(&str),
    /// Lower-layer states shared by every run with the same examples.
    shared: Option<(LowerCacheKey, Vec<Tensor>)>,
    evaluator: Option<Evaluator>,
    timing: Timing,
}

impl<'a> Grid<'a> {
    fn new(preset: &'a Preset, data: &Path, out: &'a Path, log: &'a dyn Fn(&str)) -> Result<Self> {
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
        crate::fsutil::write_json(&pj, preset)?;
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

    fn run_dir(&self, cell: &Cell) -> PathBuf {
        self.out.join("runs").join(cell.name())
    }

    fn train_config(&self, cell: &Cell, lr: f64, steps: Option<usize>) -> TrainConfig {
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
            cutoff_len: p.cutoff_len,
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

    /// Trains (or resumes, or skips when finished) the run in `dir`, sharing the lower cache.
    /// SIGINT / SIGTERM (after [`crate::signals::install_exiting`]) stop it after the current
    /// step with a checkpoint saved: [`Error::Stopped`] names `piece` and says that re-running
    /// continues it.
    fn train(&mut self, cfg: TrainConfig, dir: &Path, piece: &str) -> Result<Trainer> {
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
    fn disk_lower_cache(&self, trainer: &mut Trainer) -> Result<f64> {
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

    fn evaluator(&mut self) -> Result<&mut Evaluator> {
        if self.evaluator.is_none() {
            self.evaluator = Some(Evaluator::new(self.preset, &self.data, &self.eval_tasks)?);
        }
        Ok(self.evaluator.as_mut().expect("just made"))
    }

    /// Evaluates `model` and accounts the time.
    fn evaluate(&mut self, model: &Llama) -> Result<(Scores, Vec<TaskResult>)> {
        crate::faults::pause("evaluate");
        let (scores, results, prep_s) = self.evaluator()?.evaluate(model)?;
        self.timing.eval_prepare_s += prep_s;
        self.timing.eval_s += scores.eval_s;
        Ok((scores, results))
    }

    /// The learning rate: the preset's only candidate, or the check's pick (run or read).
    fn lr(&mut self, run_missing: bool) -> Result<(f64, Option<LrCheck>)> {
        let p = self.preset;
        if !p.needs_lr_check() {
            return Ok((p.lr_candidates.first().copied().unwrap_or(2e-4), None));
        }
        let path = self.out.join("lr-check.json");
        if let Ok(c) = crate::fsutil::read_json::<LrCheck>(&path) {
            return Ok((c.chosen, Some(c)));
        }
        if !run_missing {
            return Err(Error::InvalidArgument(format!(
                "{} is missing: run the learning-rate check first (--only lr-check)",
                path.display()
            )));
        }
        let train_before = self.timing.train_s;
        let mut trials: Vec<LrTrial> = Vec::new();
        let mut queue: Vec<f64> = p.lr_candidates.clone();
        let mut extensions = 0;
        loop {
            for lr in std::mem::take(&mut queue) {
                if !trials.iter().any(|t| t.lr == lr) {
                    trials.push(self.lr_trial(lr)?);
                }
            }
            // An optimum at the edge of the tried range says little: extend it by ×2 (≤ 3 times).
            trials.sort_by(|a, b| a.lr.total_cmp(&b.lr));
            let best = trials
                .iter()
                .enumerate()
                .filter_map(|(i, t)| Some((i, t.val_loss?)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            match best {
                Some(i) if extensions < LR_EXTENSIONS && i + 1 == trials.len() => {
                    queue.push(trials[i].lr * 2.0)
                }
                Some(0) if extensions < LR_EXTENSIONS && trials.len() > 1 => {
                    queue.push(trials[0].lr / 2.0)
                }
                _ => break,
            }
            extensions += 1;
        }
        let chosen = trials
            .iter()
            .filter_map(|t| Some((t.lr, t.val_loss?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|t| t.0)
            .ok_or_else(|| Error::Numerical {
                context: "lr check".into(),
                reason: "every candidate diverged".into(),
            })?;
        let check = LrCheck {
            rule: format!(
                "LoRA r={} for {} steps (warmup 10 %, linear decay) at each candidate, seed {}, the same training examples as the grid; the lowest loss on the {} held-out examples wins; an optimum at the edge of the tried range extends it by ×2 (at most {LR_EXTENSIONS} times)",
                p.lr_check_rank,
                p.lr_check_steps,
                p.seeds.first().copied().unwrap_or(1),
                p.val_size
            ),
            trials,
            chosen,
        };
        crate::fsutil::write_json(&path, &check)?;
        // The trials' training time is the check's, not the grid's (the lower cache stays apart).
        self.timing.lr_check_s += self.timing.train_s - train_before;
        self.timing.train_s = train_before;
        Ok((chosen, Some(check)))
    }

    /// One short LoRA run of the lr check.
    fn lr_trial(&mut self, lr: f64) -> Result<LrTrial> {
        let p = self.preset;
        let name = format!("lr-{lr:e}");
        (self.log)(&format!(
            "lr check: LoRA r={} at lr {lr:e}",
            p.lr_check_rank
        ));
        let cell = Cell {
            method: Method::Lora,
            rank: p.lr_check_rank,
            seed: p.seeds.first().copied().unwrap_or(1),
        };
        let cfg = self.train_config(&cell, lr, Some(p.lr_check_steps));
        let dir = self.out.join("lr-check").join(&name);
        let run = format!("lr-check/{name}");
        let trainer = match self.train(cfg, &dir, "lr-check") {
            Ok(t) => t,
            Err(Error::Numerical { reason, .. }) => {
                (self.log)(&format!("lr check: lr {lr:e} diverged ({reason})"));
                return Ok(LrTrial {
                    lr,
                    val_loss: None,
                    final_train_loss: None,
                    run,
                });
            }
            Err(e) => return Err(e),
        };
        let rec = &trainer.record;
        if rec.val.is_empty() {
            return Err(Error::InvalidArgument(
                "the lr check needs a validation split (val_size > 0)".into(),
            ));
        }
        Ok(LrTrial {
            lr,
            val_loss: rec.val.last().map(|v| v.loss).filter(|v| v.is_finite()),
            final_train_loss: rec.steps.last().map(|s| s.loss),
            run,
        })
    }

    /// Trains and evaluates one cell (or reads its earlier result).
    fn cell(&mut self, cell: &Cell, lr: f64, label: &str) -> Result<RunResult> {
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
    fn base(&mut self) -> Result<Scores> {
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
        let model = Llama::from_source(src.as_ref(), &device, dtype)?;
        let (scores, results) = self.evaluate(&model)?;
        crate::fsutil::write_json(&self.out.join("base").join("predictions.json"), &results)?;
        crate::fsutil::write_json(&path, &scores)?;
        Ok(scores)
    }

    /// Trains the full fine-tune reference (no evaluation: it is a reference update).
    /// Trains the full fine-tune reference. A finished record is enough unless `need_weights`
    /// (`--only full-ref-sN`): then a record kept without its final checkpoint is trained again.
    fn reference_run(&mut self, lr: f64, need_weights: bool) -> Result<()> {
        if let Some(cell) = reference_cell(self.preset) {
            let cfg = self.train_config(&cell, lr * self.preset.full_lr_scale, None);
            self.full_ft("reference", &cell.name(), cfg, need_weights)?;
        }
        Ok(())
    }

    /// Trains a control reference (README, Definitions: the null of direction metrics): a full
    /// fine-tune like the reference, on the control's data.
    fn control_run(&mut self, t: controls::Trained, lr: f64, need_weights: bool) -> Result<()> {
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
    fn full_ft(
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

    /// The reference update's run directory and description, if it exists.
    fn reference_dir(&self) -> Option<PathBuf> {
        match self.preset.reference {
            ReferenceKind::FullFineTune => reference_cell(self.preset).map(|c| self.run_dir(&c)),
            ReferenceKind::HighestRankLora => {
                let r = *self.preset.lora_ranks.iter().max()?;
                let seed = *self.preset.seeds.first()?;
                Some(self.run_dir(&Cell {
                    method: Method::Lora,
                    rank: r,
                    seed,
                }))
            }
            ReferenceKind::None => None,
        }
        .filter(|d| jobs::reference_finished(d))
    }

    /// What a cached `capture.json` must have been measured against: the reference's name, its
    /// final step and a sha256 of its `record.json` (a reference trained again, or resumed to
    /// its end, has another record), readable without the reference's weights.
    fn reference_key(ref_dir: &Path) -> Result<(String, usize)> {
        use sha2::Digest;
        let path = ref_dir.join("record.json");
        let bytes = crate::fsutil::read(&path)?;
        let rec: crate::train::trainer::RunRecord =
            serde_json::from_slice(&bytes).map_err(|e| Error::Json {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let step = rec.checkpoints.iter().copied().max().unwrap_or(0);
        let sha: String = sha2::Sha256::digest(&bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let name = ref_dir
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        Ok((format!("{name} step {step} record {sha}"), step))
    }

    /// TSD capture of every run's checkpoints against the reference (cached per run).
    fn capture(&mut self, runs: &[RunResult]) -> Result<(Option<String>, Vec<CaptureSeries>)> {
        let Some(ref_dir) = self.reference_dir() else {
            return Ok((None, Vec::new()));
        };
        // The reference and the base are opened only if a run still needs its capture: a finished
        // reproduction re-renders without them (the reference weights are not kept in git).
        let mut opened: Option<((crate::track::RefSource, String), Box<dyn WeightSource>)> = None;
        let cache = crate::svd_cache::SvdCache::default_location();
        let mut series: Vec<CaptureSeries> = Vec::new();
        let (key, ref_step) = Self::reference_key(&ref_dir)?;
        let key = ranked_key(key, self.preset.tsd_by);
        // Written before reference keys existed: valid only if measured at the reference's
        // final step (a reference since resumed or retrained is measured again).
        let legacy_ok = |s: &CaptureSeries| {
            s.reference_key.is_empty()
                && s.reference.rsplit_once(" step ").is_some_and(|(_, rest)| {
                    rest.split(|c: char| !c.is_ascii_digit()).next() == Some(&ref_step.to_string())
                })
        };
        for r in runs {
            let cell = Cell {
                method: r.method,
                rank: r.rank,
                seed: r.seed,
            };
            let dir = self.run_dir(&cell);
            if dir == ref_dir {
                continue;
            }
            let path = dir.join("capture.json");
            if let Ok(s) = crate::fsutil::read_json::<CaptureSeries>(&path) {
                // Series written before q, k, v capture was measured are measured again.
                // Series written before the null model are measured again too.
                let has_qkv = s.points.iter().all(|p| {
                    p.accuracy.is_none()
                        || (p.accuracy_qkv.is_some() && p.null.is_some() && !p.by_type.is_empty())
                });
                if (s.reference_key == key || legacy_ok(&s)) && has_qkv {
                    series.push(s);
                    continue;
                }
                (self.log)(&if s.reference_key == key || legacy_ok(&s) {
                    format!(
                        "capture: {} was measured by an older tsd (without the null, q, k, v or per-type figures): measuring again",
                        r.name
                    )
                } else {
                    format!(
                        "capture: {} was measured against another reference ({}): measuring again",
                        r.name,
                        if s.reference_key.is_empty() {
                            &s.reference
                        } else {
                            &s.reference_key
                        }
                    )
                });
            }
            (self.log)(&format!("capture: {}", r.name));
            let t0 = Instant::now();
            if opened.is_none() {
                opened = Some((
                    crate::track::open_reference(&ref_dir.display().to_string())?,
                    crate::provision::open_model(&crate::weights::ModelSpec::new(
                        self.preset.model.clone(),
                    ))?,
                ));
            }
            let (reference, base) = opened.as_ref().expect("just opened");
            let tr = crate::track::track(
                &dir,
                Some(base.as_ref()),
                Some(reference),
                &crate::inspect::InspectOptions {
                    tsd_by: self.preset.tsd_by,
                    ..Default::default()
                },
                &cache,
                &|_| {},
            )?;
            let s = CaptureSeries {
                run: r.name.clone(),
                reference: reference.1.clone(),
                reference_key: key.clone(),
                method: r.method,
                rank: r.rank,
                seed: r.seed,
                modules: tr.points.first().map_or(0, |p| p.modules),
                points: tr
                    .points
                    .iter()
                    .zip(&tr.reports)
                    .map(|(p, rep)| {
                        let (accuracy_qkv, recall_qkv) = qkv_capture(rep);
                        let (by_type, delta_sigma) = type_nulls_and_picks(rep);
                        CapturePoint {
                            by_type,
                            delta_sigma,
                            step: p.step,
                            accuracy: p.mean_accuracy,
                            recall: p.mean_recall,
                            stability_final: p.stability_final,
                            accuracy_qkv,
                            recall_qkv,
                            null: p.null.clone(),
                            null_qkv: crate::track::TrackNull::over(
                                rep.modules.iter().filter(|m| is_qkv(&m.module_type)),
                            ),
                        }
                    })
                    .collect(),
            };
            crate::fsutil::write_json(&path, &s)?;
            series.push(s);
            self.timing.capture_s += t0.elapsed().as_secs_f64();
        }
        let desc = match (&opened, series.iter().find(|s| !s.reference.is_empty())) {
            (Some((r, _)), _) => r.1.clone(),
            (None, Some(s)) => s.reference.clone(),
            (None, None) => crate::track::open_reference(&ref_dir.display().to_string())?.1,
        };
        Ok((Some(desc), series))
    }
}

impl Grid<'_> {
    /// Every run's final capture against the empirical controls (`OUT/controls.json`, cached
    /// per run, control and control key): each trained control that has finished and the same
    /// configuration's next seed. Controls whose weights are absent keep their cached entries.
    fn controls(
        &mut self,
        runs: &[RunResult],
    ) -> Result<(Vec<controls::ControlCapture>, Vec<controls::DashPair>)> {
        if controls::pieces(self.preset).is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let cached = controls::Controls::read(self.out);
        let cache = crate::svd_cache::SvdCache::default_location();
        let mut base: Option<Box<dyn WeightSource>> = None;
        let mut out = Vec::new();
        for r in runs {
            let cell = Cell {
                method: r.method,
                rank: r.rank,
                seed: r.seed,
            };
            for (control, dir, key) in self.control_targets(&cell, runs)? {
                if let Some(c) = cached.cached(&cell.name(), &control, &key) {
                    out.push(c.clone());
                    continue;
                }
                let t0 = Instant::now();
                (self.log)(&format!("control: {} against {control}", cell.name()));
                if base.is_none() {
                    base = Some(crate::provision::open_model(
                        &crate::weights::ModelSpec::new(self.preset.model.clone()),
                    )?);
                }
                let c = measure_control(
                    &self.run_dir(&cell),
                    &cell,
                    (&control, &dir, &key),
                    base.as_deref().expect("just opened"),
                    &cache,
                    self.preset.tsd_by,
                )?;
                out.push(c);
                self.timing.capture_s += t0.elapsed().as_secs_f64();
            }
        }
        let pairs = self.dash_pairs(runs, &cached, &cache, &mut base)?;
        crate::fsutil::write_json(
            &controls::Controls::path(self.out),
            &controls::Controls {
                captures: out.clone(),
                dash_pairs: pairs.clone(),
            },
        )?;
        Ok((out, pairs))
    }

    /// Every LoRA-Dash run's picks at its final checkpoint against the LoRA run of the same rank
    /// and seed (cached in `controls.json` by both runs' final steps).
    fn dash_pairs(
        &mut self,
        runs: &[RunResult],
        cached: &controls::Controls,
        cache: &crate::svd_cache::SvdCache,
        base: &mut Option<Box<dyn WeightSource>>,
    ) -> Result<Vec<controls::DashPair>> {
        let mut pairs = Vec::new();
        for r in runs.iter().filter(|r| r.method == Method::LoraDash) {
            let paired = runs
                .iter()
                .any(|x| x.method == Method::Lora && x.rank == r.rank && x.seed == r.seed);
            if !paired {
                continue;
            }
            let cell = |method| Cell {
                method,
                rank: r.rank,
                seed: r.seed,
            };
            let (dash, lora) = (cell(Method::LoraDash), cell(Method::Lora));
            let last = |c: &Cell| -> Result<crate::run::Checkpoint> {
                let run = crate::run::Run::open(&self.run_dir(c), None)?;
                Ok(run
                    .require_checkpoints()?
                    .last()
                    .expect("non-empty")
                    .clone())
            };
            let (dl, ll) = (last(&dash)?, last(&lora)?);
            let key = format!(
                "{} step {} / {} step {}",
                dash.name(),
                dl.step,
                lora.name(),
                ll.step
            );
            if let Some(p) = cached
                .dash_pairs
                .iter()
                .find(|p| p.dash_run == dash.name() && p.key == key)
            {
                pairs.push(p.clone());
                continue;
            }
            let t0 = Instant::now();
            (self.log)(&format!(
                "control: {} picks against {}",
                dash.name(),
                lora.name()
            ));
            if base.is_none() {
                *base = Some(crate::provision::open_model(
                    &crate::weights::ModelSpec::new(self.preset.model.clone()),
                )?);
            }
            let b = base.as_deref().expect("just opened");
            let opts = crate::inspect::InspectOptions {
                keep_spectrum: true,
                ..Default::default()
            };
            let look = |ck: &crate::run::Checkpoint| {
                crate::inspect::inspect(
                    &crate::adapter::load_adapter(&ck.adapter)?,
                    b,
                    None,
                    &opts,
                    cache,
                    &|_| {},
                )
            };
            let picks = controls::pick_pairs(&look(&dl)?, &look(&ll)?);
            pairs.push(controls::DashPair {
                dash_run: dash.name(),
                lora_run: lora.name(),
                rank: r.rank,
                seed: r.seed,
                key,
                picks,
            });
            self.timing.capture_s += t0.elapsed().as_secs_f64();
        }
        Ok(pairs)
    }

    /// `(control, directory, key)` for a run: the finished trained controls, then the same
    /// configuration's next seed (cyclically) when it ran.
    fn control_targets(
        &self,
        cell: &Cell,
        runs: &[RunResult],
    ) -> Result<Vec<(String, PathBuf, String)>> {
        let mut v = Vec::new();
        for t in controls::Trained::ALL {
            let dir = self.out.join("runs").join(t.piece());
            if jobs::reference_finished(&dir) {
                v.push((
                    t.label().to_string(),
                    dir.clone(),
                    ranked_key(Self::reference_key(&dir)?.0, self.preset.tsd_by),
                ));
            }
        }
        let mut seeds: Vec<u64> = runs
            .iter()
            .filter(|r| r.method == cell.method && r.rank == cell.rank)
            .map(|r| r.seed)
            .collect();
        seeds.sort();
        if let Some(i) = seeds
            .iter()
            .position(|&s| s == cell.seed)
            .filter(|_| seeds.len() > 1)
        {
            let other = Cell {
                seed: seeds[(i + 1) % seeds.len()],
                ..*cell
            };
            v.push((
                "seed".to_string(),
                self.run_dir(&other),
                ranked_key(other.name(), self.preset.tsd_by),
            ));
        }
        Ok(v)
    }
}

/// A capture cache key with the ranking it was measured under (none for the paper's change
/// rate, so keys written before the ranking existed stay valid).
fn ranked_key(key: String, by: crate::directions::Ranking) -> String {
    match by {
        crate::directions::Ranking::ChangeRate => key,
        other => format!("{key} by {}", other.label()),
    }
}

/// One run's final checkpoint against one control (a full fine-tune or another run).
fn measure_control(
    run_dir: &Path,
    cell: &Cell,
    (control, dir, key): (&str, &Path, &str),
    base: &dyn WeightSource,
    cache: &crate::svd_cache::SvdCache,
    tsd_by: crate::directions::Ranking,
) -> Result<controls::ControlCapture> {
    let run = crate::run::Run::open(run_dir, None)?;
    let last = run
        .require_checkpoints()?
        .last()
        .expect("non-empty")
        .clone();
    let adapter = crate::adapter::load_adapter(&last.adapter)?;
    let (src, against) = crate::track::open_reference(&dir.display().to_string())?;
    let reference = match &src {
        crate::track::RefSource::Adapter(a) => crate::inspect::Reference::Adapter(a),
        crate::track::RefSource::Model(m) => crate::inspect::Reference::Model(m.as_ref()),
    };
    let rep = crate::inspect::inspect(
        &adapter,
        base,
        Some((&reference, against.clone())),
        &crate::inspect::InspectOptions {
            tsd_by,
            ..Default::default()
        },
        cache,
        &|_| {},
    )?;
    let all = crate::track::TrackNull::over(&rep.modules).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "control {control}: no module of {} has a counterpart in {against}",
            cell.name()
        ))
    })?;
    Ok(controls::ControlCapture {
        run: cell.name(),
        method: cell.method,
        rank: cell.rank,
        seed: cell.seed,
        control: control.to_string(),
        against: crate::fsutil::portable(&against),
        key: key.to_string(),
        step: last.step,
        all,
        qkv: crate::track::TrackNull::over(rep.modules.iter().filter(|m| is_qkv(&m.module_type))),
    })
}

/// Mean accuracy@(8,16) and recall@(8,4) over one checkpoint's q, k and v modules (the paper's
/// module set), `None` when it has none with a capture.
fn qkv_capture(rep: &crate::inspect::InspectReport) -> (Option<f64>, Option<f64>) {
    let caps: Vec<&crate::inspect::CaptureReport> = rep
        .modules
        .iter()
        .filter(|m| is_qkv(&m.module_type))
        .filter_map(|m| m.capture.as_ref())
        .collect();
    let acc: Vec<f64> = caps.iter().map(|c| c.accuracy.value).collect();
    let rec: Vec<f64> = caps.iter().map(|c| c.recall.value).collect();
    (crate::stats::mean(&acc), crate::stats::mean(&rec))
}

/// q, k or v: the paper's module set for capture.
fn is_qkv(module_type: &str) -> bool {
    matches!(module_type, "q_proj" | "k_proj" | "v_proj")
}

/// Takes a piece's lock for this process, refusing when another process runs the piece.
fn hold(out: &Path, piece: &str) -> Result<lock::Lock> {
    lock::try_lock(out, piece)?.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "piece {piece} is being run by another process (it holds {}): wait for it, or stop it first",
            lock::lock_path(out, piece).display()
        ))
    })
}

/// Appends this invocation's timing to `OUT/timing.json` (under a lock: array tasks finish at
/// the same time) when it computed something; returns every invocation so far.
fn record_timing(out: &Path, timing: &Timing) -> Result<Vec<Timing>> {
    let _guard = lock::lock(out, "timing")?;
    let tpath = out.join("timing.json");
    let mut invocations: Vec<Timing> = crate::fsutil::read_json(&tpath).unwrap_or_default();
    let worked = timing.lower_cache_s
        + timing.eval_prepare_s
        + timing.lr_check_s
        + timing.train_s
        + timing.eval_s
        + timing.capture_s
        > 0.0;
    if worked {
        // Only invocations that computed something: a re-render costs nothing worth summing.
        invocations.push(timing.clone());
        crate::fsutil::write_json(&tpath, &invocations)?;
    }
    Ok(invocations)
}

/// Runs (or resumes, or with `opts.collect` only gathers) the reproduction in `out`. With
/// `opts.only` it does that one piece and returns `None`. Each piece runs under its lock in
/// `OUT/locks/`, so two processes (array tasks, a local run) never train the same piece.
pub fn reproduce(
    preset: &Preset,
    data: &Path,
    out: &Path,
    opts: &Options,
    log: &dyn Fn(&str),
) -> Result<Option<Reproduction>> {
    let t0 = Instant::now();
    let mut grid = Grid::new(preset, data, out, log)?;
    let all = cells(preset);
    if let Some(only) = &opts.only {
        let (pre, names) = jobs::pieces(preset);
        if !pre.iter().chain(&names).any(|n| n == only) {
            return Err(Error::InvalidArgument(format!(
                "--only {only}: not a piece of this grid ({})",
                pre.iter()
                    .chain(&names)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let _guard = hold(out, only)?;
        let done = if only == "lr-check" {
            grid.lr(true).map(drop)
        } else if only == "base" {
            grid.base().map(drop)
        } else if reference_cell(preset).is_some_and(|c| c.name() == *only) {
            grid.lr(false)
                .and_then(|(lr, _)| grid.reference_run(lr, true))
        } else if let Some(t) = controls::Trained::from_piece(only) {
            grid.lr(false)
                .and_then(|(lr, _)| grid.control_run(t, lr, true))
        } else {
            let c = all
                .iter()
                .find(|c| c.name() == *only)
                .expect("a piece name");
            grid.lr(false)
                .and_then(|(lr, _)| grid.cell(c, lr, "").map(drop))
        };
        // A piece stopped by a signal still counts the time it spent.
        if let Err(e @ Error::Stopped { .. }) = done {
            let mut timing = grid.timing.clone();
            timing.total_s = t0.elapsed().as_secs_f64();
            record_timing(out, &timing)?;
            return Err(e);
        }
        done?;
        let mut timing = grid.timing.clone();
        timing.total_s = t0.elapsed().as_secs_f64();
        record_timing(out, &timing)?;
        return Ok(None);
    }
    let mut partial: Vec<String> = Vec::new();
    let mut unfinished: Vec<String> = Vec::new();
    if opts.collect {
        let st = jobs::status(preset, out)?;
        let open: Vec<&jobs::PieceStatus> = st
            .iter()
            .filter(|s| s.state != jobs::PieceState::Done)
            .collect();
        if !open.is_empty() && !opts.allow_partial {
            return Err(Error::Unfinished(format!(
                "--collect: {} of {} pieces in {} have not finished: {}. Re-run them: the same command with `--emit-jobs --only-missing`, then {}/jobs/submit.sh (or each with `--only PIECE`); or gather the rest with --allow-partial",
                open.len(),
                st.len(),
                out.display(),
                open.iter().map(|s| s.describe()).collect::<Vec<_>>().join("; "),
                out.display()
            )));
        }
        partial = open
            .iter()
            .map(|s| format!("not finished, left out: {}", s.describe()))
            .collect();
        unfinished = open.iter().map(|s| s.piece.clone()).collect();
    }
    let done = |piece: &str| !unfinished.iter().any(|p| p == piece);
    let (lr, lr_check) = if opts.collect {
        grid.lr(false)?
    } else {
        let _guard = hold(out, "lr-check")?;
        grid.lr(true)?
    };
    let mut runs = Vec::new();
    for (i, c) in all.iter().enumerate() {
        let label = format!("[{}/{}]", i + 1, all.len());
        if opts.collect {
            if done(&c.name()) {
                let p = grid.run_dir(c).join("eval.json");
                runs.push(crate::fsutil::read_json::<RunResult>(&p)?);
            }
        } else {
            let _guard = hold(out, &c.name())?;
            runs.push(grid.cell(c, lr, &label)?);
        }
    }
    let base = if opts.collect {
        done("base")
            .then(|| crate::fsutil::read_json::<Scores>(&out.join("base").join("eval.json")))
            .transpose()?
    } else {
        let _guard = hold(out, "base")?;
        Some(grid.base()?)
    };
    if !opts.collect {
        if let Some(c) = reference_cell(preset) {
            let _guard = hold(out, &c.name())?;
            grid.reference_run(lr, false)?;
        }
        for t in controls::Trained::ALL {
            if controls::pieces(preset).iter().any(|p| p == t.piece()) {
                let _guard = hold(out, t.piece())?;
                grid.control_run(t, lr, false)?;
            }
        }
    }
    let (reference, capture) = grid.capture(&runs)?;
    let (control_captures, dash_pairs) = grid.controls(&runs)?;
    let data: Vec<summary::RunData> = runs
        .iter()
        .map(|r| {
            let cell = Cell {
                method: r.method,
                rank: r.rank,
                seed: r.seed,
            };
            Ok(summary::RunData {
                result: r,
                outcomes: summary::read_outcomes(
                    &grid.run_dir(&cell).join("predictions.json"),
                    preset.protocol,
                )?,
            })
        })
        .collect::<Result<_>>()?;
    let caps: Vec<_> = capture
        .iter()
        .map(|c| (c.method, c.rank, c.points.clone()))
        .collect();
    let summary = summary::summarize(
        preset,
        &data,
        base.as_ref(),
        &caps,
        &control_captures,
        &dash_pairs,
    )?;
    let mut timing = grid.timing.clone();
    timing.total_s = t0.elapsed().as_secs_f64();
    let invocations = record_timing(out, &timing)?;
    let lr_tried: Vec<f64> = lr_check
        .as_ref()
        .map(|c| c.trials.iter().map(|t| t.lr).collect())
        .unwrap_or_default();
    let mut deviations = preset.deviations(&grid.missing, lr, &lr_tried);
    deviations.extend(partial);
    if reference.is_none() && preset.reference != ReferenceKind::None {
        deviations.push("no TSD capture: the reference update has not finished".into());
    }
    if !control_captures.is_empty() {
        deviations.push("not in the paper: empirical controls of TSD capture — full fine-tunes like the reference on other tasks (evaluation-only tasks' test examples beyond every scored one, never scored) and on the runs' training inputs with answers permuted within each task, and each run against the same setting's next seed".into());
    }
    Ok(Some(Reproduction {
        preset: preset.clone(),
        lr,
        lr_check,
        base,
        runs,
        reference,
        capture,
        summary,
        deviations,
        timing,
        invocations,
    }))
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

/// Where results go by default.
pub fn default_out(preset: &str) -> PathBuf {
    PathBuf::from("reproductions/commonsense").join(preset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: Method, rank: usize, seed: u64, avg: f64) -> RunResult {
        RunResult {
            name: Cell { method, rank, seed }.name(),
            method,
            rank,
            seed,
            lr: 1e-3,
            trainable_params: rank as u64 * 1000,
            trainable_pct: 0.0,
            scores: Scores {
                tasks: Vec::new(),
                loglik_avg: Some(avg),
                generate_avg: None,
                unparseable_rate: None,
                average: avg,
                eval_s: 0.0,
            },
            final_loss: 0.0,
            val_loss: None,
            wall_s: 0.0,
            tokens_per_s: 0.0,
            dash_mean_sigma_ratio: None,
            dash_near_null_picks: None,
            dash_max_delta_sigma: None,
        }
    }

    /// Outcomes on 400 boolq examples: example `i` is right when `i % 10 < tenths`.
    fn outcomes(tenths: usize) -> summary::Outcomes {
        let mut o = summary::Outcomes::new();
        o.insert(
            "boolq".into(),
            (0..400)
                .map(|i| {
                    (
                        i,
                        i % 10 < tenths,
                        if i % 2 == 0 { "true" } else { "false" }.into(),
                    )
                })
                .collect(),
        );
        o
    }

    fn summarize_grid(lora: &[(usize, usize)], dash: &[(usize, usize)]) -> summary::Summary {
        let mut p = Preset::named("cpu").unwrap();
        p.lora_ranks = lora.iter().map(|x| x.0).collect();
        p.dash_ranks = dash.iter().map(|x| x.0).collect();
        let mut results = Vec::new();
        let mut outs = Vec::new();
        for seed in [1, 2] {
            for (m, cells) in [(Method::Lora, lora), (Method::LoraDash, dash)] {
                for &(rank, tenths) in cells {
                    let mut r = run(m, rank, seed, 10.0 * tenths as f64);
                    r.scores.tasks.push(TaskScore {
                        task: "boolq".into(),
                        loglik: Some(10.0 * tenths as f64),
                        loglik_examples: 400,
                        generate: None,
                        generate_examples: 0,
                        unparseable: None,
                    });
                    results.push(r);
                    outs.push(outcomes(tenths));
                }
            }
        }
        let data: Vec<summary::RunData> = results
            .iter()
            .zip(outs)
            .map(|(result, outcomes)| summary::RunData { result, outcomes })
            .collect();
        summary::summarize(&p, &data, None, &[], &[], &[]).unwrap()
    }

    #[test]
    fn efficiency_ratio_is_the_smallest_lora_rank_not_significantly_below_dash() {
        // LoRA r1 50 %, r4 60 %, r16 70 %; LoRA-Dash r1 70 %: only LoRA r16 reaches it → 16×.
        let s = summarize_grid(&[(1, 5), (4, 6), (16, 7)], &[(1, 7)]);
        assert_eq!(s.comparisons.len(), 3);
        let e = &s.efficiency[0];
        assert_eq!(
            (e.lora_rank, e.ratio, e.informative),
            (Some(16), Some(16.0), true)
        );
        assert!(s.rank_effect.as_ref().unwrap().diff.lo > 0.0);
        assert!(s.verdict.starts_with("2 of 3 comparisons"), "{}", s.verdict);
        assert!(
            s.verdict.contains("minimum detectable effect"),
            "{}",
            s.verdict
        );
        assert_eq!(s.efficiency_by_task.len(), 1);
        assert!(!s.chance[0].at_chance);
        // Dash above every LoRA rank: no rank reaches it, the ratio is only bounded.
        let s = summarize_grid(&[(1, 5), (4, 6)], &[(1, 8)]);
        assert_eq!(
            (s.efficiency[0].lora_rank, s.efficiency[0].ratio),
            (None, None)
        );
        assert!(
            s.efficiency[0].note.contains("above 4/1"),
            "{}",
            s.efficiency[0].note
        );
    }

    #[test]
    fn a_flat_lora_curve_makes_the_ratio_uninformative_and_chance_tasks_are_named() {
        // Every run at 50 % on a task whose majority answer is right 50 % of the time.
        let s = summarize_grid(&[(1, 5), (16, 5)], &[(1, 5)]);
        assert_eq!(s.efficiency[0].ratio, Some(1.0));
        assert!(!s.efficiency[0].informative);
        assert!(s.verdict.contains("cannot be told apart"), "{}", s.verdict);
        assert!(s.verdict.contains("rank buys nothing"), "{}", s.verdict);
        assert!(s.verdict.contains("At chance in every run") && s.verdict.contains("boolq"));
        assert!(s.chance[0].at_chance && s.efficiency_by_task.is_empty());
    }

    #[test]
    fn presets_differ_only_where_documented() {
        let cpu = Preset::named("cpu").unwrap();
        // A cpu verdict that can decide: ≥ 3 seeds, ≥ 200 loglik and ≥ 20 generate examples per task.
        assert!(cpu.seeds.len() >= 3);
        assert!(cpu.loglik_limit.unwrap() >= 200 && cpu.generate_limit.unwrap() >= 20);
        let span = *cpu.lora_ranks.iter().max().unwrap() / *cpu.lora_ranks.iter().min().unwrap();
        assert!(span >= 16, "LoRA ranks must span at least 16×");
        assert!(
            cpu.steps.unwrap() - cpu.dash_t >= 150,
            "Δσ needs ≥ 150 dash steps"
        );
        let paper = Preset::named("paper").unwrap();
        assert_eq!(paper.lr_candidates, vec![2e-4]);
        assert_eq!((paper.batch_size, paper.epochs), (16, 3.0));
        assert_eq!(paper.protocol, Protocol::Generate);
        // The paper preset's own departures: the capture reference and the single seed
        // (regression: they were not listed).
        let d = paper.deviations(&[], 2e-4, &[]);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("highest-rank LoRA run (r=64)") && d[1].contains("1 seed"));
        // An lr check ending at the edge of its extended range is stated.
        let cpu_d = cpu.deviations(&[], 8e-3, &[1e-3, 4e-3, 8e-3]);
        assert!(cpu_d.iter().any(|x| x.contains("upper edge")), "{cpu_d:?}");
        let inside = cpu.deviations(&[], 4e-3, &[1e-3, 4e-3, 8e-3]);
        assert!(!inside.iter().any(|x| x.contains("edge of the range")));
        assert!(Preset::named("gpu").is_err());
        // The grid's extent does not count as a different setting; the lr rule does.
        let mut more = cpu.clone();
        more.seeds.push(3);
        assert_eq!(more.run_settings(), cpu.run_settings());
        more.lr_check_steps += 1;
        assert_ne!(more.run_settings(), cpu.run_settings());
    }
}
