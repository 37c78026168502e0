//! `tsd reproduce commonsense`: a grid of LoRA and LoRA-Dash runs on the same data and steps,
//! each evaluated, and the parameter-efficiency ratio the paper claims (LoRA-Dash at rank r matches
//! LoRA at 8–16× r). Resumable: a run with a finished record is not retrained, an evaluated run is
//! not re-evaluated, an interrupted run resumes from its checkpoint. Every number traces to
//! `OUT/runs/<name>/` (record.json, eval.json).

use crate::error::{Error, Result};
use crate::eval::generate::GenConfig;
use crate::eval::{eval_generate, eval_loglik, task, TaskResult};
use crate::train::{Method, TrainConfig, Trainer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// The paper's LLaMA-7B commonsense table (PAPER.md §5).
pub const PAPER_TABLE: &str = include_str!("../../reproductions/paper/commonsense_llama7b.csv");

/// A scaled-down (or full) setting.
#[derive(Clone, Debug, Serialize)]
pub struct Preset {
    pub name: String,
    pub model: String,
    pub train_tasks: Vec<String>,
    pub eval_tasks: Vec<String>,
    pub lora_ranks: Vec<usize>,
    pub dash_ranks: Vec<usize>,
    pub seeds: Vec<u64>,
    pub steps: usize,
    pub top_layers: Option<usize>,
    pub lr: f64,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub cutoff_len: usize,
    pub max_examples_per_task: usize,
    pub dash_t: usize,
    pub loglik_limit: usize,
    pub generate_limit: usize,
    pub train_on_inputs: bool,
}

impl Preset {
    /// `smoke` (the pipeline on a tiny subset, minutes) or `cpu` (the documented scale-down).
    pub fn named(name: &str) -> Result<Self> {
        let tasks = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let train = tasks(&["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"]);
        let eval = tasks(&[
            "boolq",
            "piqa",
            "social_i_qa",
            "hellaswag",
            "winogrande",
            "ARC-Easy",
            "ARC-Challenge",
            "openbookqa",
        ]);
        match name {
            "smoke" => Ok(Preset {
                name: name.into(),
                model: "default".into(),
                train_tasks: tasks(&["ARC-Easy"]),
                eval_tasks: tasks(&["boolq", "ARC-Easy"]),
                lora_ranks: vec![1, 4],
                dash_ranks: vec![1],
                seeds: vec![1],
                steps: 6,
                top_layers: Some(2),
                lr: 1e-3,
                batch_size: 4,
                micro_batch_size: 4,
                cutoff_len: 128,
                max_examples_per_task: 48,
                dash_t: 3,
                loglik_limit: 6,
                generate_limit: 2,
                train_on_inputs: true,
            }),
            "cpu" => Ok(Preset {
                name: name.into(),
                model: "default".into(),
                train_tasks: train,
                eval_tasks: eval,
                lora_ranks: vec![1, 2, 4, 8, 16, 32, 64],
                dash_ranks: vec![1, 2, 4, 8],
                seeds: vec![1, 2],
                steps: 250,
                top_layers: Some(4),
                lr: 1e-3,
                batch_size: 8,
                micro_batch_size: 8,
                cutoff_len: 256,
                max_examples_per_task: 600,
                dash_t: 100,
                loglik_limit: 200,
                generate_limit: 20,
                train_on_inputs: true,
            }),
            o => Err(Error::InvalidArgument(format!(
                "preset `{o}`: expected smoke or cpu"
            ))),
        }
    }

    /// Every way this setting departs from the paper's, for the output and the report.
    pub fn deviations(&self, missing_eval: &[String]) -> Vec<String> {
        let mut d = vec![
            format!("model {} instead of LLaMA-7B", self.model),
            format!("train sets {} (capped at {} examples each) instead of commonsense_170k", self.train_tasks.join(", "), self.max_examples_per_task),
            format!("{} optimizer steps of batch {} instead of 3 epochs of batch 16", self.steps, self.batch_size),
            format!("lr {} instead of 2e-4 (2e-4 barely teaches the format at this scale, PAPER.md §6)", self.lr),
            format!("LoRA-Dash switch after {} steps instead of 100 (t is in optimizer steps)", self.dash_t),
            format!("cutoff {} tokens", self.cutoff_len),
            format!("accuracy from `loglik` on the first {} test examples per task; `generate` (4 beams) on the first {} only", self.loglik_limit, self.generate_limit),
            format!("{} seed(s)", self.seeds.len()),
        ];
        if let Some(k) = self.top_layers {
            d.push(format!(
                "adapters on the top {k} layers only (lower layers frozen and cached)"
            ));
        }
        for t in missing_eval {
            d.push(format!("{t}: test set not available here, not evaluated"));
        }
        d
    }
}

/// One grid cell's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub name: String,
    pub method: Method,
    pub rank: usize,
    pub seed: u64,
    pub trainable_params: u64,
    pub trainable_pct: f64,
    /// loglik accuracy per task (%), in `eval_tasks` order.
    pub accuracy: Vec<(String, f64)>,
    pub average: f64,
    /// generate-protocol accuracy (%) and unparseable rate (%) over the generate subset.
    pub generate_accuracy: f64,
    pub unparseable_rate: f64,
    pub final_loss: f64,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    /// Dash only: picked indices' mean σ/σ₁ and the largest |Δσ| at the end.
    pub dash_mean_sigma_ratio: Option<f64>,
    pub dash_max_delta_sigma: Option<f64>,
}

/// The parameter-efficiency ratio for one Dash rank.
#[derive(Clone, Debug, Serialize)]
pub struct Efficiency {
    pub dash_rank: usize,
    pub dash_mean: f64,
    pub dash_spread: f64,
    /// Smallest LoRA rank whose mean average reaches `dash_mean − dash_spread`.
    pub lora_rank: Option<usize>,
    pub ratio: Option<f64>,
}

/// Everything a reproduction measured.
#[derive(Clone, Debug, Serialize)]
pub struct Reproduction {
    pub preset: Preset,
    pub runs: Vec<RunResult>,
    pub efficiency: Vec<Efficiency>,
    pub deviations: Vec<String>,
    pub verdict: String,
}

fn mean_spread(xs: &[f64]) -> (f64, f64) {
    let m = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
    let spread = if xs.len() > 1 {
        (xs.iter().cloned().fold(f64::MIN, f64::max) - xs.iter().cloned().fold(f64::MAX, f64::min))
            / 2.0
    } else {
        0.0
    };
    (m, spread)
}

/// The efficiency ratios from run results (means over seeds).
pub fn efficiency(runs: &[RunResult], preset: &Preset) -> Vec<Efficiency> {
    let avg = |m: Method, r: usize| -> Vec<f64> {
        runs.iter()
            .filter(|x| x.method == m && x.rank == r)
            .map(|x| x.average)
            .collect()
    };
    preset
        .dash_ranks
        .iter()
        .map(|&r| {
            let (dm, ds) = mean_spread(&avg(Method::LoraDash, r));
            let lora_rank = preset.lora_ranks.iter().copied().find(|&lr| {
                let v = avg(Method::Lora, lr);
                !v.is_empty() && mean_spread(&v).0 >= dm - ds
            });
            Efficiency {
                dash_rank: r,
                dash_mean: dm,
                dash_spread: ds,
                lora_rank,
                ratio: lora_rank.map(|l| l as f64 / r as f64),
            }
        })
        .collect()
}

/// Runs (or resumes) the whole grid in `out`.
pub fn reproduce(
    preset: &Preset,
    data: &Path,
    out: &Path,
    log: &dyn Fn(&str),
) -> Result<Reproduction> {
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
    let missing: Vec<String> = preset
        .eval_tasks
        .iter()
        .filter(|t| !eval_tasks.contains(t))
        .cloned()
        .collect();
    let mut cells: Vec<(Method, usize, u64)> = Vec::new();
    for &s in &preset.seeds {
        for &r in &preset.lora_ranks {
            cells.push((Method::Lora, r, s));
        }
        for &r in &preset.dash_ranks {
            cells.push((Method::LoraDash, r, s));
        }
    }
    let mut runs = Vec::new();
    // Every cell trains on the same examples with the same frozen lower layers: compute their
    // outputs once for the grid (keyed by the examples' token ids and the first adapted layer).
    let mut shared: Option<(
        crate::train::trainer::LowerCacheKey,
        Vec<candle_core::Tensor>,
    )> = None;
    for (i, &(method, rank, seed)) in cells.iter().enumerate() {
        let name = format!(
            "{}-r{rank}-s{seed}",
            if method == Method::Lora {
                "lora"
            } else {
                "dash"
            }
        );
        let dir = out.join("runs").join(&name);
        let res_path = dir.join("eval.json");
        if let Ok(r) = crate::fsutil::read_json::<RunResult>(&res_path) {
            log(&format!("[{}/{}] {name}: done earlier", i + 1, cells.len()));
            runs.push(r);
            continue;
        }
        log(&format!("[{}/{}] {name}: training", i + 1, cells.len()));
        let mut trainer = if dir.join("config.json").exists() {
            Trainer::resume(&dir)?
        } else {
            let cfg = TrainConfig {
                model: preset.model.clone(),
                data: train_files.clone(),
                method,
                rank,
                alpha: None,
                top_layers: preset.top_layers,
                dash_t: preset.dash_t,
                lr: preset.lr,
                warmup_steps: (preset.steps / 10).max(1),
                max_steps: Some(preset.steps),
                batch_size: preset.batch_size,
                micro_batch_size: preset.micro_batch_size,
                cutoff_len: preset.cutoff_len,
                train_on_inputs: preset.train_on_inputs,
                max_examples: Some(preset.max_examples_per_task),
                val_size: 0,
                seed,
                save_every: preset.steps,
                ..Default::default()
            };
            Trainer::new(cfg, &dir)?
        };
        if !trainer.record.finished {
            if let Some((key, cache)) = &shared {
                if *key == trainer.lower_cache_key() {
                    trainer.set_lower_cache(cache.clone())?;
                }
            }
            trainer.run(&mut |_| {}, &AtomicBool::new(false))?;
            if shared.is_none() {
                shared = trainer
                    .lower_cache()
                    .map(|c| (trainer.lower_cache_key(), c));
            }
        }
        log(&format!("[{}/{}] {name}: evaluating", i + 1, cells.len()));
        let rec = trainer.record.clone();
        let adapter = trainer.adapter()?;
        let mut model = trainer.model;
        for lin in model.linears_mut() {
            lin.merge()?;
        }
        let path =
            crate::weights::resolve_path(&crate::weights::ModelSpec::new(preset.model.clone()))?;
        let tok = crate::model::tokenizer::load_tokenizer(&path)?;
        let info = crate::model::tokenizer::load_tokenizer_info(&path)?;
        let gen = GenConfig {
            num_beams: 4,
            max_new_tokens: 32,
            length_penalty: 1.0,
            eos: info.eos,
        };
        let mut accuracy = Vec::new();
        let (mut g_ok, mut g_n, mut g_bad) = (0usize, 0usize, 0usize);
        let mut task_results: Vec<TaskResult> = Vec::new();
        for t in &eval_tasks {
            let tk = task(t).ok_or_else(|| Error::InvalidArgument(format!("unknown task {t}")))?;
            let ex = crate::train::data::load_examples(&data.join(t).join("test.json"))?;
            let l = eval_loglik(
                &model,
                &tok,
                &tk,
                &ex[..ex.len().min(preset.loglik_limit)],
                &|| {},
            )?;
            accuracy.push((t.clone(), 100.0 * l.accuracy));
            let g = eval_generate(
                &model,
                &tok,
                &tk,
                &ex[..ex.len().min(preset.generate_limit)],
                &gen,
                &|| {},
            )?;
            g_ok += g.correct;
            g_n += g.examples;
            g_bad += g.unparseable;
            task_results.push(l);
            task_results.push(g);
        }
        let text = crate::output::to_json(&task_results)? + "\n";
        crate::fsutil::atomic_write(&dir.join("predictions.json"), text.as_bytes())?;
        let dash: Vec<&crate::adapter::DashState> = adapter
            .modules
            .iter()
            .filter_map(|m| m.dash.as_ref())
            .collect();
        let sw = rec.dash_switch.as_ref();
        let r = RunResult {
            name: name.clone(),
            method,
            rank,
            seed,
            trainable_params: rec.trainable_params + dash.iter().map(|d| d.s() as u64).sum::<u64>(),
            trainable_pct: 100.0 * (rec.trainable_params as f64) / rec.base_params.max(1) as f64,
            average: accuracy.iter().map(|a| a.1).sum::<f64>() / accuracy.len().max(1) as f64,
            accuracy,
            generate_accuracy: 100.0 * g_ok as f64 / g_n.max(1) as f64,
            unparseable_rate: 100.0 * g_bad as f64 / g_n.max(1) as f64,
            final_loss: rec.steps.last().map_or(f64::NAN, |s| s.loss),
            wall_s: rec.wall_s,
            tokens_per_s: rec.steps.iter().map(|s| s.tokens_per_s).sum::<f64>()
                / rec.steps.len().max(1) as f64,
            dash_mean_sigma_ratio: sw.map(|s| {
                let v: Vec<f64> = s
                    .modules
                    .iter()
                    .flat_map(|m| m.tsd.iter().map(|t| t.sigma_ratio))
                    .collect();
                v.iter().sum::<f64>() / v.len().max(1) as f64
            }),
            dash_max_delta_sigma: (!dash.is_empty()).then(|| {
                dash.iter()
                    .flat_map(|d| d.delta_sigma.iter())
                    .fold(0f64, |a, &x| a.max(x.abs() as f64))
            }),
        };
        let text = crate::output::to_json(&r)? + "\n";
        crate::fsutil::atomic_write(&res_path, text.as_bytes())?;
        runs.push(r);
    }
    let eff = efficiency(&runs, preset);
    let best_lora = runs
        .iter()
        .filter(|r| r.method == Method::Lora)
        .map(|r| r.average)
        .fold(f64::MIN, f64::max);
    let best_dash = runs
        .iter()
        .filter(|r| r.method == Method::LoraDash)
        .map(|r| r.average)
        .fold(f64::MIN, f64::max);
    let spread = runs.iter().map(|r| r.average).fold(f64::MIN, f64::max)
        - runs.iter().map(|r| r.average).fold(f64::MAX, f64::min);
    let verdict = if preset.seeds.len() < 2 {
        format!("one seed: no spread, so these numbers cannot separate the methods (best LoRA {best_lora:.1} %, best LoRA-Dash {best_dash:.1} %)")
    } else if best_dash > best_lora {
        format!("best LoRA-Dash average {best_dash:.1} % vs best LoRA {best_lora:.1} % (all runs within {spread:.1} points)")
    } else {
        format!("LoRA-Dash does not beat LoRA at this scale: best LoRA-Dash {best_dash:.1} % vs best LoRA {best_lora:.1} % (all runs within {spread:.1} points)")
    };
    Ok(Reproduction {
        preset: preset.clone(),
        runs,
        efficiency: eff,
        deviations: preset.deviations(&missing),
        verdict,
    })
}

/// Where results go by default.
pub fn default_out(preset: &str) -> PathBuf {
    PathBuf::from("reproductions/commonsense").join(preset)
}
