//! The one task loop of commonsense evaluation, shared by `tsd eval` (through
//! [`super::plan::evaluate`]), the reproduction's grid and the benchmarks: an [`Evaluator`] holds
//! the test examples of each task, the tokenizer and the [`EvalSettings`], and scores any model
//! given to it — one protocol or both per task, every example limit, the beam settings, and
//! (for a grid of adapters on one base) the lower-layer states computed once and reused.

use super::generate::{GenConfig, DEFAULT_BATCH};
use super::prepared::{
    eval_generate_prepared, eval_loglik_prepared, prepare_generate, prepare_loglik,
    PreparedGenerate, PreparedTask,
};
use super::PromptTokenizer;
use super::{eval_generate_batched, eval_loglik, eval_loglik_general, TaskResult};
use crate::data::{Example, Protocol, Task};
use crate::error::{Error, Result};
use crate::model::Llama;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Beam-search settings of the `generate` protocol. [`BeamSettings::LLM_ADAPTERS`] is the
/// protocol's (4 beams, at most 32 new tokens, length penalty 1): the one place these numbers
/// live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeamSettings {
    pub num_beams: usize,
    pub max_new_tokens: usize,
}

impl BeamSettings {
    /// LLM-Adapters' `commonsense_evaluate.py` settings.
    pub const LLM_ADAPTERS: BeamSettings = BeamSettings {
        num_beams: 4,
        max_new_tokens: 32,
    };

    /// The beam search configuration for a tokenizer whose end-of-sequence token is `eos`.
    pub fn config(self, eos: u32) -> GenConfig {
        GenConfig {
            num_beams: self.num_beams,
            max_new_tokens: self.max_new_tokens,
            length_penalty: 1.0,
            eos,
        }
    }
}

impl Default for BeamSettings {
    fn default() -> Self {
        BeamSettings::LLM_ADAPTERS
    }
}

/// How the loglik protocol is computed (the scores agree; see [`super::prepared`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoglikPath {
    /// One batched pass per example group when the labels differ only in their last token, else
    /// the KV-cache path.
    #[default]
    Auto,
    /// Always the KV-cache path.
    General,
}

impl std::str::FromStr for LoglikPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(LoglikPath::Auto),
            "general" => Ok(LoglikPath::General),
            _ => Err(Error::InvalidArgument(format!(
                "--loglik-path `{s}`: expected auto or general"
            ))),
        }
    }
}

/// One protocol to score, on the first `limit` test examples of each task (`None`: all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolRun {
    pub protocol: Protocol,
    pub limit: Option<usize>,
}

/// Whether the layers below the adapted ones are recomputed for every model or computed once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LowerLayers {
    /// Every model runs every layer (one model, or adapters anywhere).
    #[default]
    Recompute,
    /// The first model evaluated (which must carry no adapter below its top `top_layers` layers;
    /// `None`: all layers are adapted) gives every prompt's states entering the adapted layers;
    /// later models run only those (a grid of adapters on one base).
    Reuse { top_layers: Option<usize> },
}

/// What an [`Evaluator`] scores and how.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    /// The protocols, in the order each task's results come out.
    pub runs: Vec<ProtocolRun>,
    pub beams: BeamSettings,
    /// Examples per batched beam search for `generate` (predictions do not depend on it).
    pub batch_size: usize,
    pub loglik_path: LoglikPath,
    pub lower_layers: LowerLayers,
    /// A protocol left with no example of a task (after its limit) leaves no result for it (the
    /// reproduction's rule), instead of a result of 0 examples (`tsd eval`'s).
    pub skip_empty: bool,
}

impl EvalSettings {
    /// One protocol on the first `limit` examples, the LLM-Adapters beams, [`DEFAULT_BATCH`],
    /// every layer recomputed, empty tasks reported.
    pub fn one(protocol: Protocol, limit: Option<usize>) -> Self {
        EvalSettings {
            runs: vec![ProtocolRun { protocol, limit }],
            beams: BeamSettings::LLM_ADAPTERS,
            batch_size: DEFAULT_BATCH,
            loglik_path: LoglikPath::Auto,
            lower_layers: LowerLayers::Recompute,
            skip_empty: false,
        }
    }
}

/// A task with its test examples.
#[derive(Clone, Debug)]
pub struct TaskSet {
    pub task: Task,
    pub examples: Vec<Example>,
}

/// Hooks for what the caller shows while an evaluation runs; every one does nothing by default.
pub trait EvalProgress {
    /// A notice (what is about to be downloaded, …).
    fn note(&self, _msg: &str) {}
    /// A warning (a base that may not be the adapter's, an adapter part ignored, …).
    fn warn(&self, _msg: &str) {}
    /// A protocol starts on a task's `examples` examples.
    fn task_started(&self, _task: &str, _examples: usize) {}
    fn example_done(&self) {}
    /// A task's result, as soon as it is there.
    fn task_finished(&self, _result: &TaskResult) -> Result<()> {
        Ok(())
    }
}

/// No progress shown.
impl EvalProgress for () {}

/// What one [`Evaluator::evaluate`] call gives.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Per task, one result per protocol of [`EvalSettings::runs`], in that order.
    pub results: Vec<TaskResult>,
    /// Seconds spent computing the reused lower-layer states (the first call only).
    pub prepare_s: f64,
    /// Seconds spent scoring, preparation excluded.
    pub eval_s: f64,
}

/// Scores models on a fixed set of tasks under fixed settings.
pub struct Evaluator {
    tasks: Vec<TaskSet>,
    tok: PromptTokenizer,
    gen: GenConfig,
    settings: EvalSettings,
    prepared_loglik: Option<Vec<PreparedTask>>,
    prepared_gen: Option<Vec<PreparedGenerate>>,
}

/// The first `limit` examples (all with `None`).
fn limited(ex: &[Example], limit: Option<usize>) -> &[Example] {
    &ex[..limit.unwrap_or(ex.len()).min(ex.len())]
}

impl Evaluator {
    /// `eos`: the tokenizer's end-of-sequence id (beam search stops on it).
    pub fn new(
        tasks: Vec<TaskSet>,
        tok: PromptTokenizer,
        eos: u32,
        settings: EvalSettings,
    ) -> Self {
        Evaluator {
            tasks,
            tok,
            gen: settings.beams.config(eos),
            settings,
            prepared_loglik: None,
            prepared_gen: None,
        }
    }

    pub fn settings(&self) -> &EvalSettings {
        &self.settings
    }

    pub fn tasks(&self) -> &[TaskSet] {
        &self.tasks
    }

    /// Scores `model` (adapter merged or not) on every task under every protocol run.
    pub fn evaluate(&mut self, model: &Llama, progress: &dyn EvalProgress) -> Result<Evaluation> {
        let t0 = Instant::now();
        let prepare_s = self.prepare(model)?;
        let mut results = Vec::new();
        for i in 0..self.tasks.len() {
            for &run in &self.settings.runs {
                let examples = limited(&self.tasks[i].examples, run.limit);
                if examples.is_empty() && self.settings.skip_empty {
                    continue;
                }
                progress.task_started(self.tasks[i].task.name, examples.len());
                let r = self.score(model, i, run.protocol, examples, &|| {
                    progress.example_done()
                })?;
                progress.task_finished(&r)?;
                results.push(r);
            }
        }
        Ok(Evaluation {
            results,
            prepare_s,
            eval_s: t0.elapsed().as_secs_f64() - prepare_s,
        })
    }

    /// Task `i` under `protocol` on `examples` (its limited examples).
    fn score(
        &self,
        model: &Llama,
        i: usize,
        protocol: Protocol,
        examples: &[Example],
        progress: &dyn Fn(),
    ) -> Result<TaskResult> {
        let (tok, task) = (&self.tok, &self.tasks[i].task);
        match protocol {
            Protocol::Loglik => match (&self.prepared_loglik, self.settings.loglik_path) {
                (Some(p), _) => eval_loglik_prepared(model, &p[i], progress),
                (None, LoglikPath::Auto) => eval_loglik(model, tok, task, examples, progress),
                (None, LoglikPath::General) => {
                    eval_loglik_general(model, tok, task, examples, progress)
                }
            },
            Protocol::Generate => match &self.prepared_gen {
                Some(p) => eval_generate_prepared(model, tok, &p[i], &self.gen, progress),
                None => {
                    let batch = self.settings.batch_size;
                    eval_generate_batched(model, tok, task, examples, &self.gen, batch, progress)
                }
            },
        }
    }

    /// With [`LowerLayers::Reuse`], computes the lower-layer states from `model` once (loglik
    /// first, then generate); returns the seconds it took (0 when already done or not asked).
    fn prepare(&mut self, model: &Llama) -> Result<f64> {
        let LowerLayers::Reuse { top_layers } = self.settings.lower_layers else {
            return Ok(0.0);
        };
        let layers = model.num_layers();
        let from = layers - top_layers.unwrap_or(layers).min(layers);
        let mut seconds = 0.0;
        let run = |p: Protocol| self.settings.runs.iter().find(|r| r.protocol == p).copied();
        let (loglik, generate) = (run(Protocol::Loglik), run(Protocol::Generate));
        if let (None, Some(r)) = (&self.prepared_loglik, loglik) {
            let t = Instant::now();
            let v = self
                .tasks
                .iter()
                .map(|s| {
                    let ex = limited(&s.examples, r.limit);
                    prepare_loglik(model, &self.tok, &s.task, ex, from, &|| {})
                })
                .collect::<Result<Vec<_>>>()?;
            self.prepared_loglik = Some(v);
            seconds += t.elapsed().as_secs_f64();
        }
        if let (None, Some(r)) = (&self.prepared_gen, generate) {
            let t = Instant::now();
            let batch = self.settings.batch_size;
            let v = self
                .tasks
                .iter()
                .map(|s| {
                    let ex = limited(&s.examples, r.limit);
                    prepare_generate(model, &self.tok, &s.task, ex, &self.gen, batch, from)
                })
                .collect::<Result<Vec<_>>>()?;
            self.prepared_gen = Some(v);
            seconds += t.elapsed().as_secs_f64();
        }
        Ok(seconds)
    }
}
