//! Training curves in one shape, whoever wrote the run: tsd's `record.json` or a Hugging Face
//! Trainer's `trainer_state.json` `log_history`. The report renders this record and nothing else.

use super::record::RunRecord;
use serde::{Deserialize, Serialize};

/// One logged training step. Fields a source does not log are `None`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainPoint {
    /// Optimizer step (Trainer: `global_step`).
    pub step: usize,
    pub epoch: Option<f64>,
    /// Training loss (nats/token; Trainer: mean over the logging interval).
    pub loss: Option<f64>,
    pub learning_rate: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    pub step: usize,
    pub epoch: Option<f64>,
    pub loss: f64,
}

/// A vertical marker on the step axis (LoRA-Dash's switch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMarker {
    pub step: usize,
    pub label: String,
}

/// A run's curves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    /// Where they were read from (`RUN/record.json`, `RUN/checkpoint-6/trainer_state.json`).
    pub source: String,
    pub train: Vec<TrainPoint>,
    pub eval: Vec<EvalPoint>,
    pub marker: Option<StepMarker>,
}

impl Curves {
    /// The curves of a tsd run record.
    pub fn from_record(rec: &RunRecord, source: String) -> Self {
        Curves {
            source,
            train: rec
                .steps
                .iter()
                .map(|s| TrainPoint {
                    step: s.step,
                    epoch: None,
                    loss: Some(s.loss),
                    learning_rate: Some(s.lr),
                    grad_norm: Some(s.grad_norm),
                    tokens_per_s: Some(s.tokens_per_s),
                })
                .collect(),
            eval: rec
                .val
                .iter()
                .map(|v| EvalPoint {
                    step: v.step,
                    epoch: None,
                    loss: v.loss,
                })
                .collect(),
            marker: rec.dash_switch.as_ref().map(|d| StepMarker {
                step: d.step,
                label: "Dash switch".into(),
            }),
        }
    }

    /// The median of the logged tokens/s (the upper one of an even count), if any was logged.
    pub fn median_tokens_per_s(&self) -> Option<f64> {
        let mut v: Vec<f64> = self.train.iter().filter_map(|p| p.tokens_per_s).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    /// `(step, value)` of one training quantity, where logged.
    pub fn series(&self, f: impl Fn(&TrainPoint) -> Option<f64>) -> Vec<(f64, f64)> {
        self.train
            .iter()
            .filter_map(|p| f(p).map(|v| (p.step as f64, v)))
            .collect()
    }
}
