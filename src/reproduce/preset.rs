//! The settings a reproduction runs under: `paper` (the paper's protocol, for a GPU or a cluster),
//! `cpu` (the documented 2-core scale-down) and `smoke` (the pipeline in minutes, for CI).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How accuracy is scored (README, Definitions: commonsense protocol): the one protocol enum.
pub use crate::data::Protocol;

/// The update that TSD capture along training is measured against (README, Definitions: direction metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReferenceKind {
    /// A full fine-tune of the target modules on the same data and steps (ΔW* = W* − W).
    FullFineTune,
    /// The grid's highest-rank LoRA run of the first seed.
    HighestRankLora,
    None,
}

/// A reproduction setting. Every field that shapes a run is recorded in `OUT/preset.json`; a later
/// invocation on the same output directory must agree with it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Preset {
    pub name: String,
    pub model: String,
    pub train_tasks: Vec<String>,
    pub eval_tasks: Vec<String>,
    pub lora_ranks: Vec<usize>,
    pub dash_ranks: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Optimizer steps per run; `None` = `epochs` over the training set.
    pub steps: Option<usize>,
    pub epochs: f64,
    /// Adapt only the top K layers (lower layers frozen, computed once for the grid).
    pub top_layers: Option<usize>,
    /// One value: the learning rate. Several: a short LoRA run per value (rank
    /// `lr_check_rank`, `lr_check_steps` steps, first seed) and the lowest validation loss wins.
    pub lr_candidates: Vec<f64>,
    pub lr_check_steps: usize,
    pub lr_check_rank: usize,
    /// Full fine-tune reference: its lr as a fraction of the chosen LoRA lr.
    pub full_lr_scale: f64,
    pub batch_size: usize,
    pub micro_batch_size: usize,
    pub cutoff_len: usize,
    /// First N examples of each train set (`None`: all).
    pub max_examples_per_task: Option<usize>,
    /// Held-out examples (fixed split for every run) for validation loss and the lr check.
    pub val_size: usize,
    pub dash_t: usize,
    /// Checkpoint every N steps (TSD capture along training is measured on these).
    pub save_every: usize,
    pub train_on_inputs: bool,
    /// Which protocol's average is the headline (efficiency ratio, verdict).
    pub protocol: Protocol,
    /// First N test examples per task scored by loglik (`Some(0)`: none; `None`: all).
    pub loglik_limit: Option<usize>,
    /// First N test examples per task scored by generate (`Some(0)`: none; `None`: all).
    pub generate_limit: Option<usize>,
    pub reference: ReferenceKind,
    pub device: String,
    pub dtype: String,
    /// Train the empirical controls of TSD capture (a cross-task and a shuffled-answer full
    /// fine-tune) and measure every run against them and against another seed (README,
    /// Definitions: the null of direction metrics). Adds pieces without changing any run.
    #[serde(default)]
    pub controls: bool,
    /// How capture ranks directions (README, Definitions: the null of direction metrics): the
    /// paper's change rate, or enrichment. Changes no run; capture is measured again when it
    /// changes.
    #[serde(default)]
    pub tsd_by: crate::directions::Ranking,
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The eight LLM-Adapters test sets, in the paper's column order.
fn all_eval_tasks() -> Vec<String> {
    names(&[
        "boolq",
        "piqa",
        "social_i_qa",
        "hellaswag",
        "winogrande",
        "ARC-Easy",
        "ARC-Challenge",
        "openbookqa",
    ])
}

impl Preset {
    /// `smoke`, `cpu` or `paper`.
    pub fn named(name: &str) -> Result<Self> {
        match name {
            "smoke" => Ok(Preset::smoke()),
            "cpu" => Ok(Preset::cpu()),
            "paper" => Ok(Preset::paper()),
            o => Err(Error::InvalidArgument(format!(
                "preset `{o}`: expected smoke, cpu or paper"
            ))),
        }
    }

    /// Minutes on the default model: every piece of the grid, none of its statistics.
    fn smoke() -> Self {
        Preset {
            name: "smoke".into(),
            model: "default".into(),
            train_tasks: names(&["ARC-Easy"]),
            eval_tasks: names(&["boolq", "ARC-Easy"]),
            lora_ranks: vec![1, 4],
            dash_ranks: vec![1],
            seeds: vec![1],
            steps: Some(6),
            epochs: 1.0,
            top_layers: Some(2),
            lr_candidates: vec![1e-3, 3e-3],
            lr_check_steps: 3,
            lr_check_rank: 1,
            full_lr_scale: 0.1,
            batch_size: 4,
            micro_batch_size: 4,
            cutoff_len: 128,
            max_examples_per_task: Some(40),
            val_size: 8,
            dash_t: 3,
            save_every: 3,
            train_on_inputs: false,
            protocol: Protocol::Loglik,
            loglik_limit: Some(6),
            generate_limit: Some(2),
            reference: ReferenceKind::FullFineTune,
            device: "cpu".into(),
            dtype: "f32".into(),
            controls: false,
            tsd_by: Default::default(),
        }
    }

    /// The documented 2-core scale-down.
    fn cpu() -> Self {
        Preset {
            name: "cpu".into(),
            model: "default".into(),
            train_tasks: names(&["boolq", "ARC-Easy", "ARC-Challenge", "openbookqa"]),
            eval_tasks: all_eval_tasks(),
            lora_ranks: vec![1, 16],
            dash_ranks: vec![1],
            seeds: vec![1, 2, 3],
            steps: Some(200),
            epochs: 1.0,
            top_layers: Some(2),
            lr_candidates: vec![4e-3, 8e-3, 1.6e-2],
            lr_check_steps: 50,
            lr_check_rank: 4,
            full_lr_scale: 0.1,
            batch_size: 8,
            micro_batch_size: 8,
            cutoff_len: 256,
            max_examples_per_task: Some(150),
            val_size: 48,
            dash_t: 50,
            save_every: 50,
            train_on_inputs: false,
            protocol: Protocol::Loglik,
            loglik_limit: Some(200),
            generate_limit: Some(20),
            reference: ReferenceKind::FullFineTune,
            device: "cpu".into(),
            dtype: "f32".into(),
            controls: true,
            tsd_by: Default::default(),
        }
    }

    /// The paper's protocol (LLaMA-7B, commonsense_170k, 3 epochs), for CUDA machines.
    fn paper() -> Self {
        Preset {
            name: "paper".into(),
            model: "huggyllama/llama-7b".into(),
            train_tasks: names(&["commonsense_170k"]),
            eval_tasks: all_eval_tasks(),
            lora_ranks: vec![4, 8, 16, 32, 64],
            dash_ranks: vec![4, 8, 16, 32, 64],
            seeds: vec![42],
            steps: None,
            epochs: 3.0,
            top_layers: None,
            lr_candidates: vec![2e-4],
            lr_check_steps: 0,
            lr_check_rank: 0,
            full_lr_scale: 0.1,
            batch_size: 16,
            micro_batch_size: 4,
            cutoff_len: 256,
            max_examples_per_task: None,
            val_size: 120,
            dash_t: 100,
            save_every: 1000,
            train_on_inputs: true,
            protocol: Protocol::Generate,
            loglik_limit: Some(0),
            generate_limit: None,
            reference: ReferenceKind::HighestRankLora,
            device: "cuda".into(),
            dtype: "bf16".into(),
            controls: false,
            tsd_by: Default::default(),
        }
    }

    /// The fields that shape each run (everything but the grid's extent): two invocations on one
    /// output directory must agree on these.
    pub fn run_settings(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("preset serialises");
        if let Some(o) = v.as_object_mut() {
            for k in [
                "seeds",
                "lora_ranks",
                "dash_ranks",
                "eval_tasks",
                "controls",
                "tsd_by",
            ] {
                o.remove(k);
            }
        }
        v
    }

    /// Whether the learning rate comes from a check rather than the preset.
    pub fn needs_lr_check(&self) -> bool {
        self.lr_candidates.len() > 1
    }

    /// A deviation when the lr check's chosen rate is the lowest or highest it tried: the check
    /// stopped at the edge of its (extended) range, so a better rate may lie beyond it.
    fn lr_edge(&self, lr: f64, lr_tried: &[f64]) -> Option<String> {
        let lo = lr_tried.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = lr_tried.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (self.needs_lr_check() && lr_tried.len() > 1 && (lr == lo || lr == hi)).then(|| {
            format!(
                "the lr check's optimum {lr:e} is at the {} edge of the range it tried ({lo:e}–{hi:e}, extensions included): a better rate may lie beyond it",
                if lr == hi { "upper" } else { "lower" }
            )
        })
    }

    /// Every way this setting departs from the paper's, for the output and the report.
    /// `lr_tried`: the learning rates the check ran (candidates plus extensions).
    pub fn deviations(&self, missing_eval: &[String], lr: f64, lr_tried: &[f64]) -> Vec<String> {
        if self.name == "paper" {
            let mut d = Vec::new();
            if self.model != "huggyllama/llama-7b" {
                d.push(format!("model {} instead of LLaMA-7B", self.model));
            }
            if self.reference == ReferenceKind::HighestRankLora {
                d.push(format!(
                    "TSD capture reference: the highest-rank LoRA run (r={}) instead of the paper's full fine-tune of LLaMA-7B (a full fine-tune of 6.7 B parameters does not fit the preset's GPU)",
                    self.lora_ranks.iter().max().copied().unwrap_or(0)
                ));
            }
            if self.seeds.len() < 2 {
                d.push(format!(
                    "{} seed ({:?}): no seed-to-seed variation is measured; the intervals resample test examples only",
                    self.seeds.len(),
                    self.seeds
                ));
            }
            d.extend(self.lr_edge(lr, lr_tried));
            for t in missing_eval {
                d.push(format!("{t}: test set not available, not evaluated"));
            }
            return d;
        }
        let lim = |l: Option<usize>| l.map_or("all".to_string(), |n| n.to_string());
        let mut d = vec![
            format!("model {} instead of LLaMA-7B", self.model),
            format!(
                "train sets {} ({} examples each, {} held out for validation) instead of commonsense_170k",
                self.train_tasks.join(", "),
                self.max_examples_per_task.map_or("all".into(), |n| format!("first {n}")),
                self.val_size
            ),
            match self.steps {
                Some(s) => format!("{s} optimizer steps of batch {} instead of 3 epochs of batch 16", self.batch_size),
                None => format!("{} epochs of batch {}", self.epochs, self.batch_size),
            },
            if self.needs_lr_check() {
                format!(
                    "lr {lr:e} chosen by a check (lowest validation loss of {}-step LoRA r={} runs at {}) instead of 2e-4",
                    self.lr_check_steps,
                    self.lr_check_rank,
                    lr_tried
                        .iter()
                        .map(|x| format!("{x:e}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("lr {lr:e}")
            },
        ];
        d.extend(self.lr_edge(lr, lr_tried));
        d.extend([
            format!("LoRA-Dash switch after {} steps instead of 100 ({} steps in the dash phase)", self.dash_t, self.steps.unwrap_or(0).saturating_sub(self.dash_t)),
            format!("cutoff {} tokens", self.cutoff_len),
            format!(
                "headline accuracy from `loglik` on the first {} test examples per task; `generate` (4 beams, ≤ 32 new tokens) on the first {} only",
                lim(self.loglik_limit),
                lim(self.generate_limit)
            ),
            format!("{} seed(s): {:?}", self.seeds.len(), self.seeds),
            format!("LoRA ranks {:?}, LoRA-Dash ranks {:?} (the paper: 4–64 for both)", self.lora_ranks, self.dash_ranks),
        ]);
        if !self.train_on_inputs {
            d.push("loss on the response only (the protocol trains on the whole sequence)".into());
        }
        if let Some(k) = self.top_layers {
            d.push(format!(
                "adapters on q,k,v,up,down of the top {k} layers only (lower layers frozen and computed once)"
            ));
        }
        match self.reference {
            ReferenceKind::FullFineTune => d.push(format!(
                "TSD capture reference: a full fine-tune of the same target modules, same data and steps, lr × {} (the paper: a full fine-tune of LLaMA-7B)",
                self.full_lr_scale
            )),
            ReferenceKind::HighestRankLora => d.push(
                "TSD capture reference: the highest-rank LoRA run (the paper: a full fine-tune)"
                    .into(),
            ),
            ReferenceKind::None => {}
        }
        for t in missing_eval {
            d.push(format!("{t}: test set not available here, not evaluated"));
        }
        d
    }
}

/// The preset a run uses when none is named or recorded.
pub const DEFAULT_PRESET: &str = "cpu";

impl Preset {
    /// The preset an invocation runs: the one recorded in `out` when only `out` is named (then
    /// `true`: read from the directory), else `name` (default [`DEFAULT_PRESET`]).
    pub fn chosen(name: Option<&str>, out: Option<&std::path::Path>) -> Result<(Preset, bool)> {
        let saved = match (name, out) {
            (None, Some(out)) => super::read_preset(out)?,
            _ => None,
        };
        match saved {
            Some(p) => Ok((p, true)),
            None => Ok((Preset::named(name.unwrap_or(DEFAULT_PRESET))?, false)),
        }
    }
}

/// The command line's changes to a preset, each `None` (or empty) where the preset's own holds.
/// [`Overrides::apply`] sets them; `--emit-jobs` repeats them in every job's command
/// ([`super::jobs::emit`]).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub model: Option<String>,
    pub seeds: Vec<u64>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub train_on_inputs: Option<bool>,
    pub controls: Option<bool>,
    pub tsd_by: Option<crate::directions::Ranking>,
}

impl Overrides {
    /// `p` with every given override set.
    pub fn apply(&self, p: &mut Preset) {
        if let Some(m) = &self.model {
            p.model = m.clone();
        }
        if !self.seeds.is_empty() {
            p.seeds = self.seeds.clone();
        }
        if let Some(d) = &self.device {
            p.device = d.clone();
        }
        if let Some(d) = &self.dtype {
            p.dtype = d.clone();
        }
        if let Some(t) = self.train_on_inputs {
            p.train_on_inputs = t;
        }
        if let Some(c) = self.controls {
            p.controls = c;
        }
        if let Some(by) = self.tsd_by {
            p.tsd_by = by;
        }
    }
}

/// `tsd reproduce commonsense`'s flags that change the preset.
#[derive(clap::Args, Debug)]
pub struct OverrideFlags {
    /// Override the preset's base model [default: the preset's]
    #[arg(long)]
    pub model: Option<String>,
    /// Override the preset's seeds, comma-separated [default: the preset's]
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    #[command(flatten)]
    pub dev: crate::device::DeviceArgs,
    /// Override the preset's loss placement: whole sequence (true) or response only (false) [default: the preset's]
    #[arg(long)]
    pub train_on_inputs: Option<bool>,
    /// Also train the empirical controls of TSD capture (a cross-task and a shuffled-answer full
    /// fine-tune) and measure every run against them and against another seed [default: the
    /// preset's: cpu true, smoke and paper false]
    #[arg(long)]
    pub controls: Option<bool>,
    /// How TSD capture ranks directions: the paper's change rate, or enrichment (README,
    /// Definitions: the null of direction metrics) [default: the preset's, change-rate]
    #[arg(long, value_enum)]
    pub tsd_by: Option<crate::directions::TsdBy>,
}

impl OverrideFlags {
    /// The flags that change the preset.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            model: self.model.clone(),
            seeds: self.seeds.clone(),
            device: self.dev.device.map(|d| d.to_string()),
            dtype: self.dev.dtype.map(|d| d.to_string()),
            train_on_inputs: self.train_on_inputs,
            controls: self.controls,
            tsd_by: self.tsd_by.map(|by| by.ranking()),
        }
    }
}
