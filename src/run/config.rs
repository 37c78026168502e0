//! `tsd train`'s configuration (here, below `train`, because runs and training both read it): a serde struct with defaults (README's Definitions: commonsense protocol, recipe where it applies),
//! strict about unknown fields, saved as `config.json` in the run directory.

use crate::error::{Error, Result};
use crate::names::Method;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which tokens of a training sequence carry loss (`--loss-on`). Defaults, as TRL's `SFTTrainer`
/// sets them: `completion` for prompt/completion data, `all` for text and messages; LLM-Adapters
/// data follows `train_on_inputs` (`all` when true).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// Every token.
    All,
    /// The completion (the response, for LLM-Adapters data) only.
    Completion,
    /// The assistant's turns of a conversation only (`{% generation %}` spans of the chat
    /// template, else tsd's prefix rule: README, Training data).
    Assistant,
}

impl LossOn {
    pub fn as_str(self) -> &'static str {
        match self {
            LossOn::All => "all",
            LossOn::Completion => "completion",
            LossOn::Assistant => "assistant",
        }
    }
}

/// LLM-Adapters' `cutoff_len` when the data gives none.
pub const ALPACA_CUTOFF: usize = 256;
/// TRL `SFTConfig.max_length`'s default.
pub const TRL_MAX_LENGTH: usize = 1024;

/// Everything that defines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Base model (path, Hugging Face id, or `default`).
    pub model: String,
    pub revision: Option<String>,
    /// Training data: files (JSON, JSON Lines, Parquet; LLM-Adapters task directories holding
    /// `train.json`) or Hugging Face datasets in the local cache (`hf:ORG/NAME[@rev][/config][:split]`).
    pub data: Vec<String>,
    pub method: Method,
    pub rank: usize,
    /// LoRA α (default 2r, the protocol's choice).
    pub alpha: Option<f64>,
    pub use_rslora: bool,
    pub dropout: f32,
    /// Adapted modules by short name.
    pub targets: Vec<String>,
    /// Adapt only the top K layers (the lower ones stay frozen and run without a graph).
    pub top_layers: Option<usize>,
    /// With `top_layers`: compute the frozen lower layers' output once per training example and
    /// reuse it every epoch (exact: causal attention and right padding make it independent of the
    /// batch; README, Definitions: near-null directions and scale).
    pub cache_lower_layers: bool,
    /// LoRA-Dash: number of directions and the switch step (optimizer steps).
    pub dash_s: usize,
    pub dash_t: usize,
    /// Relative σ floor in δ̂ at the switch (0 = official).
    pub sigma_floor: f64,
    /// How the switch ranks directions: the paper's change rate, or enrichment (an ablation;
    /// README, Definitions: the null of direction metrics).
    pub dash_pick: crate::directions::Ranking,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub epochs: f64,
    /// Stop after this many optimizer steps (overrides epochs).
    pub max_steps: Option<usize>,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Examples per forward pass (gradient accumulation = batch_size / micro_batch_size).
    pub micro_batch_size: usize,
    pub max_grad_norm: f64,
    /// Longest tokenized example; `None`: 256 for LLM-Adapters data (its `cutoff_len`), else
    /// TRL's `max_length` of 1024 (or the model's positions, when fewer).
    pub cutoff_len: Option<usize>,
    /// LLM-Adapters data: loss on the prompt too (`--loss-on all`) or on the response only.
    pub train_on_inputs: bool,
    /// Which tokens carry loss; `None`: the schema's default ([`LossOn`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_on: Option<LossOn>,
    /// A Jinja chat template used instead of the model's, for conversational data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template_file: Option<String>,
    /// Examples held out for validation loss; `None`: [`TrainConfig::auto_val_size`] of the data.
    pub val_size: Option<usize>,
    /// Use only the first N examples of each data file.
    pub max_examples: Option<usize>,
    pub seed: u64,
    /// Seed of the validation split (default: `seed`). A grid fixes it so that every run trains
    /// on the same examples (and can share one lower-layer cache).
    pub split_seed: Option<u64>,
    pub save_every: usize,
    /// Validation loss every N steps (and at the end).
    pub eval_every: Option<usize>,
    /// Start LoRA's A and B from this PEFT adapter directory instead of tsd's initialisation
    /// (same modules, ranks and α; e.g. one PEFT initialised, to compare trajectories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_adapter: Option<String>,
    /// A JSON file fixing the data order: a list of micro-batches, each a list of indices into the
    /// training examples (after the validation split, in data order); batch g of the run is entry
    /// g modulo the list's length. Default: tsd's seeded length-grouped shuffle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_order: Option<String>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Base weights' dtype: `f32`, `bf16` or `f16` (adapters and optimizer state stay f32).
    pub dtype: String,
    /// Precision of the frozen weights' products on the CPU in f32: `f32`, or `bf16` (weights and
    /// activations rounded to bf16, sums in f32; AVX512-BF16 only, [`crate::nn::bf16`]).
    #[serde(
        default,
        skip_serializing_if = "crate::nn::bf16::FrozenProducts::is_f32"
    )]
    pub frozen_products: crate::nn::bf16::FrozenProducts,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "default".into(),
            revision: None,
            data: Vec::new(),
            method: Method::LoraDash,
            rank: 8,
            alpha: None,
            use_rslora: false,
            dropout: 0.05,
            targets: ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
            top_layers: None,
            cache_lower_layers: true,
            dash_s: 8,
            dash_t: 100,
            sigma_floor: 0.0,
            dash_pick: Default::default(),
            lr: 2e-4,
            weight_decay: 0.0,
            warmup_steps: 100,
            epochs: 3.0,
            max_steps: None,
            batch_size: 16,
            micro_batch_size: 4,
            max_grad_norm: 1.0,
            cutoff_len: None,
            train_on_inputs: true,
            loss_on: None,
            template_file: None,
            val_size: None,
            max_examples: None,
            seed: 42,
            split_seed: None,
            save_every: 100,
            eval_every: None,
            init_adapter: None,
            data_order: None,
            device: "cpu".into(),
            dtype: "f32".into(),
            frozen_products: Default::default(),
        }
    }
}

impl TrainConfig {
    /// LoRA α.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(2.0 * self.rank as f64)
    }

    /// The validation split when `val_size` is not given: 10 % of the examples, at most 120 (the
    /// protocol's 120 on a full data set; a 64-example run holds out 6).
    pub fn auto_val_size(n_examples: usize) -> usize {
        (n_examples / 10).min(120)
    }

    /// The validation split of `n_examples`: `val_size`, else [`Self::auto_val_size`]. Refuses a
    /// split that leaves no training example.
    pub fn val_size_for(&self, n_examples: usize) -> Result<usize> {
        match self.val_size {
            None => Ok(Self::auto_val_size(n_examples)),
            Some(v) if v >= n_examples => Err(Error::InvalidArgument(format!(
                "--val-size {v} leaves no training example: the data has {n_examples} example(s){}; lower --val-size (left out, it is 10 % of the examples, at most 120)",
                self.max_examples
                    .map_or(String::new(), |m| format!(" (--max-examples {m} per data file)"))
            ))),
            Some(v) => Ok(v),
        }
    }

    /// Gradient accumulation steps.
    pub fn accumulation(&self) -> usize {
        self.batch_size / self.micro_batch_size.max(1)
    }

    /// Checks values that would otherwise fail deep inside the run.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.data.is_empty() {
            return bad("no training data given (--data FILE_OR_TASK_DIR)".into());
        }
        if self.rank == 0 && self.method != Method::Full {
            return bad("rank must be positive".into());
        }
        if self.micro_batch_size == 0
            || self.batch_size == 0
            || !self.batch_size.is_multiple_of(self.micro_batch_size)
        {
            return bad(format!(
                "batch_size ({}) must be a positive multiple of micro_batch_size ({})",
                self.batch_size, self.micro_batch_size
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout must be in [0, 1)".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr must be positive".into());
        }
        if self.cutoff_len.is_some_and(|c| c < 2) {
            return bad("cutoff_len must be at least 2".into());
        }
        if self.top_layers == Some(0) {
            return bad("top_layers must be positive".into());
        }
        if self.max_steps == Some(0) {
            return bad("max_steps must be positive".into());
        }
        if self.save_every == 0 {
            return bad("save_every must be positive".into());
        }
        if self.method == Method::LoraDash && self.dash_s == 0 {
            return bad("dash_s must be positive".into());
        }
        for t in &self.targets {
            if !crate::names::LINEARS.contains(&t.as_str()) {
                return bad(format!("unknown target module `{t}`"));
            }
        }
        self.dtype.parse::<crate::device::WeightDtype>()?;
        self.device.parse::<crate::device::DeviceSpec>()?;
        if !self.frozen_products.is_f32() && (self.device != "cpu" || self.dtype != "f32") {
            return bad(format!(
                "frozen_products bf16 is a CPU kernel for an f32 model: it needs device cpu and dtype f32, not {} and {}",
                self.device, self.dtype
            ));
        }
        Ok(())
    }

    /// Reads a run's `config.json` (unknown fields are an error: a typo must not pass silently).
    pub fn load(path: &Path) -> Result<Self> {
        let c: TrainConfig = crate::fsutil::read_json(path)?;
        c.validate()?;
        Ok(c)
    }
}

/// `tsd train`'s flags that set a [`TrainConfig`] field. Flags left out take their value from
/// `--config` (when given), else from tsd's defaults, shown as `[default: …]`.
#[derive(clap::Args, Debug)]
pub struct TrainFlags {
    /// Base model: path, Hugging Face id, or `default` (SmolLM2-135M-Instruct) [default: default]
    #[arg(long)]
    pub model: Option<String>,
    /// Hugging Face revision (branch, tag or commit) when --model is a hub id [default: main]
    #[arg(long)]
    pub revision: Option<String>,
    /// Training data: LLM-Adapters JSON files or task directories holding train.json, comma-separated [default: --config's data; one is required]
    #[arg(long, value_delimiter = ',')]
    pub data: Vec<String>,
    /// What is trained: lora, lora-dash or full (the target matrices themselves) [default: lora-dash]
    #[arg(long)]
    pub method: Option<Method>,
    /// LoRA rank r [default: 8]
    #[arg(long)]
    pub rank: Option<usize>,
    /// LoRA α; the scaling is α/r (α/√r with --rslora) [default: 2·rank]
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Scale the LoRA update by α/√r (rsLoRA) instead of α/r
    #[arg(long)]
    pub rslora: bool,
    /// Dropout on the LoRA input [default: 0.05]
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Target modules by short name, comma-separated [default: q_proj,k_proj,v_proj,up_proj,down_proj]
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Adapt only the top K layers (the lower ones stay frozen) [default: all layers]
    #[arg(long)]
    pub top_layers: Option<usize>,
    /// LoRA-Dash: directions frozen per module at the switch [default: 8]
    #[arg(long)]
    pub dash_s: Option<usize>,
    /// LoRA-Dash: optimizer steps of plain LoRA before the switch; must be below the run's steps [default: 100]
    #[arg(long)]
    pub dash_t: Option<usize>,
    /// LoRA-Dash: how the switch ranks directions — the paper's change rate |uᵀΔWv|/σ, or
    /// enrichment |uᵀΔWv| (spectrum-free; an ablation) [default: change-rate]
    #[arg(long, value_enum)]
    pub dash_pick: Option<crate::directions::TsdBy>,
    /// Peak learning rate (AdamW) [default: 0.0002]
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW decoupled weight decay [default: 0]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Linear warm-up from 0 over this many optimizer steps, then linear decay to 0 [default: 100]
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Passes over the training data (ignored with --max-steps) [default: 3]
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Stop after this many optimizer steps, overriding --epochs [default: from --epochs]
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Examples per optimizer step [default: 16]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Examples per forward pass; gradient accumulation = batch / micro batch [default: 4]
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// Longest tokenized example, in tokens; longer ones keep their start (TRL's max_length)
    /// [default: 256 for LLM-Adapters data, else 1024 or the model's positions if fewer]
    #[arg(long)]
    pub cutoff_len: Option<usize>,
    /// LLM-Adapters data: loss on the whole sequence (true, the protocol's choice) or the response
    /// only; the same as --loss-on all / completion [default: true]
    #[arg(long)]
    pub train_on_inputs: Option<bool>,
    /// Tokens that carry loss: all, completion (prompt/completion data; the response of
    /// LLM-Adapters data) or assistant (conversations) [default: completion for prompt/completion
    /// data, else all; LLM-Adapters data: from --train-on-inputs]
    #[arg(long, value_enum)]
    pub loss_on: Option<LossOn>,
    /// A Jinja chat template used instead of the model's for conversational data, e.g. one with
    /// `{% generation %}` markers for --loss-on assistant (TRL's `*_training.jinja`)
    /// [default: the model's own]
    #[arg(long, value_name = "FILE")]
    pub template_file: Option<String>,
    /// Examples held out for validation loss; must leave a training example [default: 10 % of the examples, at most 120]
    #[arg(long)]
    pub val_size: Option<usize>,
    /// Use only the first N examples of each data file [default: all]
    #[arg(long)]
    pub max_examples: Option<usize>,
    /// Seed for initialisation, shuffling, dropout and the validation split [default: 42]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Checkpoint every N optimizer steps (and at the end) [default: 100]
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Validation loss every N optimizer steps [default: at the end only]
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Start A and B from this PEFT LoRA adapter directory (same modules, ranks and α) instead of
    /// tsd's seeded initialisation, e.g. one PEFT initialised [default: tsd's initialisation]
    #[arg(long, value_name = "DIR")]
    pub init_adapter: Option<String>,
    /// JSON file fixing the data order: a list of micro-batches, each a list of indices into the
    /// training examples (after the validation split); batch g is entry g modulo its length
    /// [default: tsd's seeded length-grouped shuffle]
    #[arg(long, value_name = "FILE")]
    pub data_order: Option<String>,
    /// Frozen weights' products on the CPU: f32, or bf16 (weights and activations rounded to bf16,
    /// sums in f32; needs AVX512-BF16 and an f32 model) [default: f32]
    #[arg(long, value_enum)]
    pub frozen_products: Option<crate::nn::bf16::FrozenProducts>,
    #[command(flatten)]
    pub dev: crate::device::DeviceArgs,
    /// Shorthand for --device cpu
    #[arg(long, conflicts_with = "device")]
    pub cpu: bool,
}

impl TrainFlags {
    /// The config `file` (else the defaults) with the flags given laid over it, validated.
    pub fn config(&self, file: Option<&Path>) -> Result<TrainConfig> {
        let mut c = match file {
            Some(p) => crate::fsutil::read_json::<TrainConfig>(p)?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        macro_rules! set_some {
            ($($f:ident),*) => { $( if self.$f.is_some() { c.$f = self.$f.clone(); } )* };
        }
        if let Some(by) = self.dash_pick {
            c.dash_pick = by.ranking();
        }
        set!(
            model,
            method,
            rank,
            dropout,
            dash_s,
            dash_t,
            lr,
            weight_decay,
            warmup_steps,
            epochs,
            batch_size,
            micro_batch_size,
            train_on_inputs,
            seed,
            save_every,
            frozen_products
        );
        crate::device::check_composed_env()?;
        if let Some(d) = self.dev.device {
            c.device = d.to_string();
        }
        if let Some(d) = self.dev.dtype {
            c.dtype = d.to_string();
        }
        set_some!(
            revision,
            alpha,
            top_layers,
            max_steps,
            val_size,
            max_examples,
            eval_every,
            init_adapter,
            data_order,
            cutoff_len,
            loss_on,
            template_file
        );
        if self.rslora {
            c.use_rslora = true;
        }
        if self.cpu {
            c.device = "cpu".into();
        }
        if !self.data.is_empty() {
            c.data = self.data.clone();
        }
        if !self.targets.is_empty() {
            c.targets = self.targets.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused_and_defaults_fill_the_rest() {
        let c: TrainConfig = serde_json::from_str(r#"{"data": ["x.json"], "rank": 4}"#).unwrap();
        assert_eq!((c.rank, c.alpha(), c.dash_t), (4, 8.0, 100));
        assert!(c.validate().is_ok());
        assert!(serde_json::from_str::<TrainConfig>(r#"{"data": ["x"], "rnak": 4}"#).is_err());
        let mut d = c.clone();
        d.micro_batch_size = 3;
        assert!(d.validate().is_err());
    }

    #[test]
    fn the_validation_split_follows_the_data_unless_given() {
        let c = TrainConfig::default();
        assert_eq!(c.val_size_for(64).unwrap(), 6);
        assert_eq!(c.val_size_for(5).unwrap(), 0);
        assert_eq!(c.val_size_for(100_000).unwrap(), 120);
        let given = TrainConfig {
            val_size: Some(120),
            ..TrainConfig::default()
        };
        assert!(given.val_size_for(64).is_err());
        assert_eq!(given.val_size_for(121).unwrap(), 120);
    }
}
