//! The evaluation side of a grid: test examples and their prepared lower-layer states, scoring a
//! model on every evaluated task under both protocols.

use super::grid::Grid;
use super::preset::{Preset, Protocol};
use super::results::{Scores, TaskScore};
use crate::data::Example;
use crate::error::{Error, Result};
use crate::eval::generate::GenConfig;
use crate::eval::prepared::{
    eval_generate_prepared, eval_loglik_prepared, prepare_generate, prepare_loglik,
    PreparedGenerate, PreparedTask,
};
use crate::eval::{eval_generate, task, Task, TaskResult};
use crate::model::tokenizer::Tokenizer;
use crate::model::Llama;
use std::path::Path;
use std::time::Instant;

/// The evaluation side of a grid: test examples, prepared loglik states (computed once, lazily,
/// from the first model evaluated: its layers below the adapted ones carry no adapter).
pub(super) struct Evaluator {
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
            let ex = crate::data::load_examples(&data.join(t).join("test.json"))?;
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

impl Grid<'_> {
    pub(super) fn evaluator(&mut self) -> Result<&mut Evaluator> {
        if self.evaluator.is_none() {
            self.evaluator = Some(Evaluator::new(self.preset, &self.data, &self.eval_tasks)?);
        }
        Ok(self.evaluator.as_mut().expect("just made"))
    }

    /// Evaluates `model` and accounts the time.
    pub(super) fn evaluate(&mut self, model: &Llama) -> Result<(Scores, Vec<TaskResult>)> {
        crate::faults::pause("evaluate");
        let (scores, results, prep_s) = self.evaluator()?.evaluate(model)?;
        self.timing.eval_prepare_s += prep_s;
        self.timing.eval_s += scores.eval_s;
        Ok((scores, results))
    }
}
