//! `tsd eval` as a library call: an [`EvalPlan`] (model, adapter, tasks, protocol, beams, batch
//! size, limit, …) goes in, an [`EvalRecord`] (the per-task results with what produced them)
//! comes out. [`evaluate`] resolves the data, the model and the adapter, then runs the one task
//! loop ([`super::evaluator::Evaluator`]).

use super::evaluator::{BeamSettings, EvalProgress, EvalSettings, Evaluator, LoglikPath, TaskSet};
use super::merge::adapted_model;
use super::{PromptTokenizer, TaskResult};
use crate::data::{load_examples, test_file, Protocol, Task, TASKS};
use crate::device::{DeviceArgs, DeviceSpec, WeightDtype};
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::provision::resolve_path;
use crate::weights::{open_path, ModelArgs, ModelSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The adapter merged into the model before evaluation.
#[derive(Clone, Debug)]
pub struct AdapterChoice {
    pub path: PathBuf,
    /// Which adapter of the directory (`default` or a PEFT subfolder); `None`: the only one.
    pub name: Option<String>,
    /// Refuse a model that cannot be shown to be the adapter's declared base (else a warning).
    pub strict_base: bool,
}

/// One evaluation of one model.
#[derive(Clone, Debug)]
pub struct EvalPlan {
    /// The base model as given (a path, a Hugging Face id or `default`), its revision and
    /// whether the network may be used.
    pub model: ModelSpec,
    pub adapter: Option<AdapterChoice>,
    /// `None`: cpu and f32.
    pub device: Option<DeviceSpec>,
    pub dtype: Option<WeightDtype>,
    /// Data directory in the LLM-Adapters layout; `None`: `$TSD_DATA`, the shared data, else
    /// Social IQa provisioned (the one test set tsd can fetch).
    pub data: Option<PathBuf>,
    pub tasks: Vec<Task>,
    pub protocol: Protocol,
    pub beams: BeamSettings,
    pub batch_size: usize,
    pub loglik_path: LoglikPath,
    /// The first N examples of each task (`None`: all).
    pub limit: Option<usize>,
    /// Directory for per-example predictions as JSONL, one file per task.
    pub predictions: Option<PathBuf>,
    /// Wrap each prompt in the model's chat template as one user turn.
    pub chat_template: bool,
}

/// The saved record of an evaluation: what was evaluated, how, and every task's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalRecord {
    /// The model as given.
    pub model: String,
    pub adapter: Option<PathBuf>,
    pub protocol: Protocol,
    pub beams: BeamSettings,
    /// Where the chat template came from when the prompts were wrapped in it (`--chat-template`);
    /// `None`: the LLM-Adapters prompt as plain text (the protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    pub results: Vec<TaskResult>,
}

impl EvalRecord {
    /// The mean accuracy over tasks (0 with no task).
    pub fn mean_accuracy(&self) -> f64 {
        self.results.iter().map(|r| r.accuracy).sum::<f64>() / self.results.len().max(1) as f64
    }
}

/// Runs `plan`: resolves the data directory (provisioning Social IQa where that is the one way),
/// loads every task's test set, builds the model with the adapter merged, and scores each task.
/// Predictions are written as each task finishes.
pub fn evaluate(plan: &EvalPlan, progress: &dyn EvalProgress) -> Result<EvalRecord> {
    let data = data_dir(plan, progress)?;
    let sets = load_test_sets(&data, &plan.tasks)?;
    let path = resolve_path(&plan.model)?;
    let model = load_model(plan, &path, progress)?;
    let tok = prompt_tokenizer(&path, plan.chat_template)?;
    let chat_template = tok
        .chat_template()
        .map(|t| crate::fsutil::portable(t.origin()));
    let eos = crate::model::tokenizer::load_tokenizer_info(&path)?.eos;
    let settings = EvalSettings {
        beams: plan.beams,
        batch_size: plan.batch_size,
        loglik_path: plan.loglik_path,
        ..EvalSettings::one(plan.protocol, plan.limit)
    };
    let writer = PredictionWriter {
        inner: progress,
        dir: plan.predictions.as_deref(),
    };
    let results = Evaluator::new(sets, tok, eos, settings)
        .evaluate(&model, &writer)?
        .results;
    Ok(EvalRecord {
        model: plan.model.spec.clone(),
        adapter: plan.adapter.as_ref().map(|a| a.path.clone()),
        protocol: plan.protocol,
        beams: plan.beams,
        chat_template,
        results,
    })
}

/// The model's tokenizer with the prompt format `--chat-template` asks for; a model without a
/// chat template is refused then.
fn prompt_tokenizer(path: &std::path::Path, chat: bool) -> Result<PromptTokenizer> {
    let tok = crate::model::tokenizer::load_tokenizer(path)?;
    if !chat {
        return Ok(PromptTokenizer::plain(tok));
    }
    match crate::model::chat_template::ChatTemplate::load(path)? {
        Some(t) => Ok(PromptTokenizer::chat(tok, t)),
        None => Err(Error::InvalidArgument(format!(
            "--chat-template: {} has no chat template (tokenizer_config.json `chat_template`, chat_template.jinja or GGUF tokenizer.chat_template)",
            path.display()
        ))),
    }
}

/// The plan's data directory, or Social IQa provisioned when none is set and only it is asked.
fn data_dir(plan: &EvalPlan, progress: &dyn EvalProgress) -> Result<PathBuf> {
    if let Some(d) = crate::env::data_dir(plan.data.as_deref()) {
        return Ok(d);
    }
    let names: Vec<&str> = plan.tasks.iter().map(|t| t.name).collect();
    if crate::provision::check_provisionable(&names)? {
        progress.note(
            "no data directory (--data, TSD_DATA); provisioning Social IQa, the one commonsense test set a package registry ships",
        );
    }
    crate::provision::provision_social_iqa(plan.model.offline)
}

/// Every task's test set from `data` (`<task>/test.json`); a missing one is refused (exit 2),
/// naming the tasks that are there.
pub fn load_test_sets(data: &Path, tasks: &[Task]) -> Result<Vec<TaskSet>> {
    tasks
        .iter()
        .map(|t| {
            let file = test_file(data, t.name);
            if !file.exists() {
                return Err(missing_test_set(data, &file));
            }
            Ok(TaskSet {
                task: *t,
                examples: load_examples(&file)?,
            })
        })
        .collect()
}

fn missing_test_set(data: &Path, file: &Path) -> Error {
    let present: Vec<&str> = TASKS
        .iter()
        .filter(|k| test_file(data, k.name).exists())
        .map(|k| k.name)
        .collect();
    Error::InvalidArgument(format!(
        "{}: test set not found (present in {}: {}); {}",
        file.display(),
        data.display(),
        if present.is_empty() {
            "none".to_string()
        } else {
            present.join(", ")
        },
        crate::provision::LLM_ADAPTERS_DATA
    ))
}

/// The model at `path` on the plan's device, with the plan's adapter merged (its base checked
/// against the model given, its warnings passed on), its products packed for inference
/// ([`Llama::use_packed_products`]).
fn load_model(plan: &EvalPlan, path: &Path, progress: &dyn EvalProgress) -> Result<Llama> {
    let adapter = plan
        .adapter
        .as_ref()
        .map(|a| crate::adapter::read_adapter(&a.path, a.name.as_deref()).map(|ad| (a, ad)))
        .transpose()?;
    if let Some((choice, adapter)) = &adapter {
        let given = ModelSpec {
            revision: plan.model.revision.clone(),
            ..ModelSpec::new(plan.model.spec.clone())
        };
        let declared = crate::run::base::DeclaredBase::of_adapter(&adapter.path, &adapter.config);
        let check = crate::run::base::check_given(
            &given,
            path,
            "--model",
            declared.as_ref(),
            choice.strict_base,
        )?;
        if let Some(w) = check {
            progress.warn(&w);
        }
    }
    let src = open_path(path)?;
    crate::device::check_composed_env()?;
    let dev = plan.device.unwrap_or(DeviceSpec::Cpu).device()?;
    let dtype = plan.dtype.unwrap_or(WeightDtype::F32).dtype();
    let mut model = match &adapter {
        Some((_, adapter)) => {
            for w in &adapter.warnings {
                progress.warn(w);
            }
            adapted_model(src.as_ref(), adapter, &dev, dtype)?
        }
        None => Llama::from_source(src.as_ref(), &dev, dtype)?,
    };
    // Inference only from here: weights packed once where that is faster (the same bits).
    model.use_packed_products()?;
    Ok(model)
}

/// Passes every hook on and writes each task's predictions as JSONL once it is scored.
struct PredictionWriter<'a> {
    inner: &'a dyn EvalProgress,
    dir: Option<&'a Path>,
}

impl EvalProgress for PredictionWriter<'_> {
    fn note(&self, msg: &str) {
        self.inner.note(msg)
    }
    fn warn(&self, msg: &str) {
        self.inner.warn(msg)
    }
    fn task_started(&self, task: &str, examples: usize) {
        self.inner.task_started(task, examples)
    }
    fn example_done(&self) {
        self.inner.example_done()
    }
    fn task_finished(&self, r: &TaskResult) -> Result<()> {
        self.inner.task_finished(r)?;
        let Some(dir) = self.dir else {
            return Ok(());
        };
        let lines: Vec<String> = r
            .predictions
            .iter()
            .map(serde_json::to_string)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Internal(format!("serialising a prediction: {e}")))?;
        let text = lines.join("\n") + "\n";
        crate::fsutil::atomic_write(&dir.join(format!("{}.jsonl", r.task)), text.as_bytes())
    }
}

/// `tsd eval`'s flags that describe the plan.
#[derive(clap::Args, Debug)]
pub struct EvalFlags {
    /// Base model: path, Hugging Face id, or `default`.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// A PEFT LoRA / LoRA-Dash adapter, merged before evaluation (with its modules_to_save
    /// copies, biases and embedding LoRA; what cannot be applied exactly is refused) [default:
    /// none, the base model alone]
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Refuse (exit 2) a --model that cannot be shown to be the --adapter's declared base (by
    /// name or path, or a tsd run record's sha256) instead of warning
    #[arg(long, requires = "adapter")]
    pub strict_base: bool,
    /// Which adapter of the --adapter directory: `default` (its root) or a PEFT subfolder name
    /// [default: the only one there is]
    #[arg(long, requires = "adapter")]
    pub adapter_name: Option<String>,
    /// Tasks (comma-separated): boolq, piqa, social_i_qa, hellaswag, winogrande, ARC-Easy, ARC-Challenge, openbookqa.
    #[arg(long, value_delimiter = ',', required = true)]
    pub tasks: Vec<String>,
    /// Data directory in LLM-Adapters layout (`<task>/test.json`, as the LLM-Adapters repository's
    /// `dataset/` folder holds them) [default: $TSD_DATA, else ../shared/data/commonsense if
    /// present, else — for social_i_qa alone, the one test set tsd can provision — Social IQa
    /// from PyPI's bigbench sdist into $TSD_HOME/data/commonsense, sha256-checked; other tasks
    /// are refused]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// `generate` (the LLM-Adapters protocol: beam search, first label in the response) or
    /// `loglik` (label log-likelihood; cheaper, cannot see invalid-label failures).
    #[arg(long, value_enum, default_value_t = Protocol::Generate, hide_possible_values = true)]
    pub protocol: Protocol,
    /// Beams for `generate`.
    #[arg(long, default_value_t = BeamSettings::LLM_ADAPTERS.num_beams)]
    pub beams: usize,
    /// New-token budget for `generate`.
    #[arg(long, default_value_t = BeamSettings::LLM_ADAPTERS.max_new_tokens)]
    pub max_new_tokens: usize,
    /// Examples per batched beam search for `generate` (predictions do not depend on it).
    #[arg(long, default_value_t = super::generate::DEFAULT_BATCH)]
    pub batch_size: usize,
    /// Loglik scoring: `auto` (one batched pass per example group when the labels differ only in
    /// their last token, else the KV-cache path) or `general` (always the KV-cache path; same
    /// scores, for checking and benchmarks).
    #[arg(long, default_value = "auto")]
    pub loglik_path: String,
    /// Evaluate only the first N examples of each task [default: all]
    #[arg(long)]
    pub limit: Option<usize>,
    /// Per-example predictions as JSONL into this directory, one file per task; for loglik, every
    /// label's summed log-likelihood, token count and greediness [default: not written]
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Wrap each LLM-Adapters prompt in the model's chat template as one user turn, with the
    /// generation prompt (for Instruct models; not the paper's protocol, and every output says so)
    #[arg(long)]
    pub chat_template: bool,
}

impl EvalFlags {
    /// The plan the flags describe.
    pub fn plan(&self, src: &ModelArgs, dev: &DeviceArgs) -> Result<EvalPlan> {
        let loglik_path = self.loglik_path.parse()?;
        let tasks = crate::data::tasks_named(&self.tasks)?;
        Ok(EvalPlan {
            model: ModelSpec {
                spec: self.model.clone(),
                revision: src.revision.clone(),
                offline: src.offline,
                local_only: false,
            },
            adapter: self.adapter.as_ref().map(|path| AdapterChoice {
                path: path.clone(),
                name: self.adapter_name.clone(),
                strict_base: self.strict_base,
            }),
            device: dev.device,
            dtype: dev.dtype,
            data: self.data.clone(),
            tasks,
            protocol: self.protocol,
            beams: BeamSettings {
                num_beams: self.beams,
                max_new_tokens: self.max_new_tokens,
            },
            batch_size: self.batch_size,
            loglik_path,
            limit: self.limit,
            predictions: self.predictions.clone(),
            chat_template: self.chat_template,
        })
    }
}
