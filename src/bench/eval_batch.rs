//! `tsd bench eval-batch`: `generate` evaluation seconds per example at several batch sizes,
//! through the one evaluation loop ([`crate::eval::Evaluator`]).

use super::{cpu_name, load_average, process_cpu_seconds};
use crate::error::Result;
use serde::Serialize;
use std::time::Instant;

/// One batch size of [`bench_eval_batch`].
#[derive(Clone, Debug, Serialize)]
pub struct EvalBatchPoint {
    pub batch: usize,
    pub examples: usize,
    pub seconds: f64,
    pub seconds_per_example: f64,
    /// CPU seconds (user + system) of this process for the batch size.
    pub cpu_seconds: f64,
    /// The 1-minute load averages (`/proc/loadavg`) before and after: the machine is shared.
    pub load_average_before: f64,
    pub load_average_after: f64,
    /// Whether every generated text equals the first batch size's (batching must not change them).
    pub same_outputs_as_first: bool,
}

/// `tsd bench eval-batch`: `generate` evaluation time per example at several batch sizes.
#[derive(Clone, Debug, Serialize)]
pub struct EvalBatchBench {
    pub what: &'static str,
    pub model: String,
    pub tasks: Vec<String>,
    pub limit: usize,
    pub num_beams: usize,
    pub max_new_tokens: usize,
    pub threads: usize,
    pub cpu: String,
    pub points: Vec<EvalBatchPoint>,
    /// The batch size with the fewest wall seconds per example.
    pub best_batch: usize,
}

/// Times the `generate` protocol (4 beams, ≤ 32 new tokens) on the first `limit` test examples of
/// each of `tasks` from `data`, once per batch size in `batches`.
pub fn bench_eval_batch(
    model: &str,
    data: &std::path::Path,
    tasks: &[String],
    limit: usize,
    batches: &[usize],
) -> Result<EvalBatchBench> {
    use crate::data::Protocol;
    use crate::eval::{EvalSettings, Evaluator};
    use crate::model::Llama;
    use candle_core::{DType, Device};
    if batches.is_empty() || batches.contains(&0) || limit == 0 {
        return Err(crate::Error::InvalidArgument(
            "bench eval-batch: batch sizes and --limit must be positive".into(),
        ));
    }
    let path = crate::provision::resolve_path(&crate::weights::ModelSpec::new(model))?;
    let src = crate::weights::open_path(&path)?;
    let mut m = Llama::from_source(src.as_ref(), &Device::Cpu, DType::F32)?;
    m.use_packed_products()?;
    let tok = crate::eval::PromptTokenizer::plain(crate::model::tokenizer::load_tokenizer(&path)?);
    let eos = crate::model::tokenizer::load_tokenizer_info(&path)?.eos;
    let sets = crate::eval::plan::load_test_sets(data, &crate::data::tasks_named(tasks)?)?;
    let settings = EvalSettings::one(Protocol::Generate, Some(limit));
    let beams = settings.beams;
    let mut points: Vec<EvalBatchPoint> = Vec::new();
    let mut first: Option<Vec<Option<String>>> = None;
    for &batch in batches {
        let load_before = load_average();
        let (t0, cpu0) = (Instant::now(), process_cpu_seconds());
        let settings = EvalSettings {
            batch_size: batch,
            ..settings.clone()
        };
        let mut eval = Evaluator::new(sets.clone(), tok.clone(), eos, settings);
        let outputs: Vec<Option<String>> = eval
            .evaluate(&m, &())?
            .results
            .into_iter()
            .flat_map(|r| r.predictions.into_iter().map(|p| p.output))
            .collect();
        let seconds = t0.elapsed().as_secs_f64();
        let n = outputs.len();
        let same = first.get_or_insert_with(|| outputs.clone()) == &outputs;
        points.push(EvalBatchPoint {
            batch,
            examples: n,
            seconds,
            seconds_per_example: seconds / n.max(1) as f64,
            cpu_seconds: process_cpu_seconds() - cpu0,
            load_average_before: load_before,
            load_average_after: load_average(),
            same_outputs_as_first: same,
        });
    }
    let best_batch = points
        .iter()
        .min_by(|a, b| a.seconds_per_example.total_cmp(&b.seconds_per_example))
        .map_or(batches[0], |p| p.batch);
    Ok(EvalBatchBench {
        what:
            "tsd eval --protocol generate (4 beams, at most 32 new tokens) per batch size, CPU f32",
        model: model.to_string(),
        tasks: tasks.to_vec(),
        limit,
        num_beams: beams.num_beams,
        max_new_tokens: beams.max_new_tokens,
        threads: rayon::current_num_threads(),
        cpu: cpu_name(),
        points,
        best_batch,
    })
}
