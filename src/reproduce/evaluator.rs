//! The evaluation side of a grid: the one task loop ([`crate::eval::Evaluator`]) set up for the
//! grid (both protocols, the preset's limits, the lower-layer states computed once from the first
//! model), and its results summed into the grid's [`Scores`].

use super::grid::Grid;
use super::preset::{Preset, Protocol};
use super::results::{Scores, TaskScore};
use crate::error::{Error, Result};
use crate::eval::{
    BeamSettings, EvalSettings, Evaluation, Evaluator, LoglikPath, LowerLayers, ProtocolRun,
    TaskResult,
};
use crate::model::Llama;
use std::path::Path;

/// The grid's evaluator: loglik then generate per task (a limit of 0 leaves a protocol out), the
/// LLM-Adapters beams, lower layers reused across the grid's adapters.
pub(super) fn grid_evaluator(preset: &Preset, data: &Path, tasks: &[String]) -> Result<Evaluator> {
    let path =
        crate::provision::resolve_path(&crate::weights::ModelSpec::new(preset.model.clone()))?;
    let tok = crate::model::tokenizer::load_tokenizer(&path)?;
    let eos = crate::model::tokenizer::load_tokenizer_info(&path)?.eos;
    let sets = crate::eval::plan::load_test_sets(data, &crate::data::tasks_named(tasks)?)?;
    let runs = [
        (Protocol::Loglik, preset.loglik_limit),
        (Protocol::Generate, preset.generate_limit),
    ]
    .into_iter()
    .filter(|(_, limit)| *limit != Some(0))
    .map(|(protocol, limit)| ProtocolRun { protocol, limit })
    .collect();
    let settings = EvalSettings {
        runs,
        beams: BeamSettings::LLM_ADAPTERS,
        batch_size: crate::eval::generate::DEFAULT_BATCH,
        loglik_path: LoglikPath::Auto,
        lower_layers: LowerLayers::Reuse {
            top_layers: preset.top_layers,
        },
        skip_empty: true,
    };
    Ok(Evaluator::new(
        sets,
        crate::eval::PromptTokenizer::plain(tok),
        eos,
        settings,
    ))
}

/// Per task its loglik and generate accuracies (%), the averages and the headline `protocol`'s
/// average; `eval_s` as measured.
pub(super) fn scores(
    tasks: &[&str],
    results: &[TaskResult],
    protocol: Protocol,
    eval_s: f64,
) -> Result<Scores> {
    let mut scores = Vec::new();
    let (mut g_n, mut g_bad) = (0usize, 0usize);
    for &task in tasks {
        let mut s = TaskScore {
            task: task.to_string(),
            loglik: None,
            loglik_examples: 0,
            generate: None,
            generate_examples: 0,
            unparseable: None,
        };
        for r in results.iter().filter(|r| r.task == task) {
            match r.protocol {
                Protocol::Loglik => {
                    s.loglik = Some(100.0 * r.accuracy);
                    s.loglik_examples = r.examples;
                }
                Protocol::Generate => {
                    s.generate = Some(100.0 * r.accuracy);
                    s.generate_examples = r.examples;
                    s.unparseable = Some(100.0 * r.unparseable as f64 / r.examples.max(1) as f64);
                    g_n += r.examples;
                    g_bad += r.unparseable;
                }
            }
        }
        scores.push(s);
    }
    let avg = |f: &dyn Fn(&TaskScore) -> Option<f64>| -> Option<f64> {
        let v: Vec<f64> = scores.iter().filter_map(f).collect();
        crate::stats::mean(&v)
    };
    let loglik_avg = avg(&|t| t.loglik);
    let generate_avg = avg(&|t| t.generate);
    let average = match protocol {
        Protocol::Loglik => loglik_avg,
        Protocol::Generate => generate_avg,
    }
    .ok_or_else(|| {
        Error::InvalidArgument(format!(
            "the headline protocol {protocol:?} scored no example (check the preset's limits)"
        ))
    })?;
    Ok(Scores {
        tasks: scores,
        loglik_avg,
        generate_avg,
        unparseable_rate: (g_n > 0).then(|| 100.0 * g_bad as f64 / g_n as f64),
        average,
        eval_s,
    })
}

impl Grid<'_> {
    pub(super) fn evaluator(&mut self) -> Result<&mut Evaluator> {
        if self.evaluator.is_none() {
            self.evaluator = Some(grid_evaluator(self.preset, &self.data, &self.eval_tasks)?);
        }
        Ok(self.evaluator.as_mut().expect("just made"))
    }

    /// Evaluates `model` and accounts the time.
    pub(super) fn evaluate(&mut self, model: &Llama) -> Result<(Scores, Vec<TaskResult>)> {
        crate::faults::pause("evaluate");
        let protocol = self.preset.protocol;
        let evaluator = self.evaluator()?;
        let Evaluation {
            results,
            prepare_s,
            eval_s,
        } = evaluator.evaluate(model, &())?;
        let tasks: Vec<&str> = evaluator.tasks().iter().map(|s| s.task.name).collect();
        let scores = scores(&tasks, &results, protocol, eval_s)?;
        self.timing.eval_prepare_s += prepare_s;
        self.timing.eval_s += scores.eval_s;
        Ok((scores, results))
    }
}
