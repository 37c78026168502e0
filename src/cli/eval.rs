//! `tsd eval`: the flags → an [`EvalPlan`] → [`tsd::eval::evaluate`] → [`tsd::render::eval`].

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::sync::Mutex;
use tsd::data::Protocol;
use tsd::device::DeviceArgs;
use tsd::eval::{AdapterChoice, BeamSettings, EvalPlan, EvalProgress, TaskResult};
use tsd::render::Format;
use tsd::render::{progress_bar, OutputArgs};
use tsd::weights::ModelArgs;
use tsd::weights::ModelSpec;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Base model: path, Hugging Face id, or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// A PEFT LoRA / LoRA-Dash adapter, merged before evaluation (with its modules_to_save
    /// copies, biases and embedding LoRA; what cannot be applied exactly is refused) [default:
    /// none, the base model alone]
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Refuse (exit 2) a --model that cannot be shown to be the --adapter's declared base (by
    /// name or path, or a tsd run record's sha256) instead of warning
    #[arg(long, requires = "adapter")]
    strict_base: bool,
    /// Which adapter of the --adapter directory: `default` (its root) or a PEFT subfolder name
    /// [default: the only one there is]
    #[arg(long, requires = "adapter")]
    adapter_name: Option<String>,
    /// Tasks (comma-separated): boolq, piqa, social_i_qa, hellaswag, winogrande, ARC-Easy, ARC-Challenge, openbookqa.
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Data directory in LLM-Adapters layout (`<task>/test.json`, as the LLM-Adapters repository's
    /// `dataset/` folder holds them) [default: $TSD_DATA, else ../shared/data/commonsense if
    /// present, else — for social_i_qa alone, the one test set tsd can provision — Social IQa
    /// from PyPI's bigbench sdist into $TSD_HOME/data/commonsense, sha256-checked; other tasks
    /// are refused]
    #[arg(long)]
    data: Option<PathBuf>,
    /// `generate` (the LLM-Adapters protocol: beam search, first label in the response) or
    /// `loglik` (label log-likelihood; cheaper, cannot see invalid-label failures).
    #[arg(long, value_enum, default_value_t = Protocol::Generate, hide_possible_values = true)]
    protocol: Protocol,
    /// Beams for `generate`.
    #[arg(long, default_value_t = BeamSettings::LLM_ADAPTERS.num_beams)]
    beams: usize,
    /// New-token budget for `generate`.
    #[arg(long, default_value_t = BeamSettings::LLM_ADAPTERS.max_new_tokens)]
    max_new_tokens: usize,
    /// Examples per batched beam search for `generate` (predictions do not depend on it).
    #[arg(long, default_value_t = tsd::eval::generate::DEFAULT_BATCH)]
    batch_size: usize,
    /// Loglik scoring: `auto` (one batched pass per example group when the labels differ only in
    /// their last token, else the KV-cache path) or `general` (always the KV-cache path; same
    /// scores, for checking and benchmarks).
    #[arg(long, default_value = "auto")]
    loglik_path: String,
    /// Evaluate only the first N examples of each task [default: all]
    #[arg(long)]
    limit: Option<usize>,
    /// Per-example predictions as JSONL into this directory, one file per task; for loglik, every
    /// label's summed log-likelihood, token count and greediness [default: not written]
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    src: ModelArgs,
    #[command(flatten)]
    dev: DeviceArgs,
    #[command(flatten)]
    out: OutputArgs,
}

/// The plan the flags describe.
fn plan(a: &EvalArgs) -> Result<EvalPlan> {
    let loglik_path = a.loglik_path.parse()?;
    let tasks = tsd::data::tasks_named(&a.tasks)?;
    Ok(EvalPlan {
        model: ModelSpec {
            spec: a.model.clone(),
            revision: a.src.revision.clone(),
            offline: a.src.offline,
            local_only: false,
        },
        adapter: a.adapter.as_ref().map(|path| AdapterChoice {
            path: path.clone(),
            name: a.adapter_name.clone(),
            strict_base: a.strict_base,
        }),
        device: a.dev.device,
        dtype: a.dev.dtype,
        data: a.data.clone(),
        tasks,
        protocol: a.protocol,
        beams: BeamSettings {
            num_beams: a.beams,
            max_new_tokens: a.max_new_tokens,
        },
        batch_size: a.batch_size,
        loglik_path,
        limit: a.limit,
        predictions: a.predictions.clone(),
    })
}

/// A progress bar per task, notices and warnings on stderr.
struct Bars {
    quiet: bool,
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl EvalProgress for Bars {
    fn note(&self, msg: &str) {
        eprintln!("tsd eval: {msg}");
    }
    fn warn(&self, msg: &str) {
        eprintln!("warning: {msg}");
    }
    fn task_started(&self, task: &str, examples: usize) {
        let pb = progress_bar(examples as u64, task, self.quiet);
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(pb);
    }
    fn example_done(&self) {
        if let Some(pb) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
            pb.inc(1);
        }
    }
    fn task_finished(&self, _: &TaskResult) -> tsd::Result<()> {
        if let Some(pb) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            pb.finish_and_clear();
        }
        Ok(())
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    let plan = plan(&a)?;
    let bars = Bars {
        quiet: a.quiet,
        bar: Mutex::new(None),
    };
    let record = tsd::eval::evaluate(&plan, &bars)?;
    let text = match a.out.format() {
        Format::Json => tsd::render::eval::json(&record)?,
        Format::Csv => tsd::render::eval::csv(&record)?,
        Format::Table => tsd::render::eval::table(&record),
    };
    Ok(a.out.emit(&text)?)
}
