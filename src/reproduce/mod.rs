//! `tsd reproduce commonsense`: a grid of LoRA and LoRA-Dash runs on the same data and steps, each
//! evaluated, TSD capture along training against a reference update, and the parameter-efficiency
//! ratio the paper claims (LoRA-Dash at rank r matches LoRA at 8–16× r).
//!
//! Layout of `OUT/`: `preset.json` (the setting; a later invocation must agree), `lr-check.json`
//! and `lr-check/<lr>/` (the learning-rate check), `runs/<cell>/` (a `tsd train` run directory
//! plus `eval.json`, `predictions.json`, `capture.json`), `base/eval.json` (the base model),
//! `results.json`/`results.csv`/`report.html`. Resumable piece by piece: a run with `eval.json` is
//! not redone, an interrupted run resumes from its checkpoint, the lr check keeps finished trials.
//! Every number in the results traces to one of these files.
//!
//! Files: `grid` (cells and the grid of one output directory), `pieces` (training and evaluating
//! one piece), `evaluator`, `lr_check`, `capture` (capture along training), `control_capture`
//! (against the empirical controls), `runner` (the whole reproduction, locks, timing), `results`
//! (the record), `summary` (statistics and verdict), `preset`, `controls`, `jobs` (Slurm), `lock`.

mod capture;
mod control_capture;
pub mod controls;
mod evaluator;
mod grid;
pub mod jobs;
pub mod lock;
mod lr_check;
mod pieces;
pub mod preset;
mod results;
mod runner;
pub mod summary;
#[cfg(test)]
mod tests;

pub use grid::{cells, check_setup, read_preset, reference_cell, Cell};
pub use preset::{Overrides, Preset, Protocol, ReferenceKind, DEFAULT_PRESET};
pub use results::{
    saved_curves, CapturePoint, CaptureSeries, LrCheck, LrTrial, PickDeltaSigma, Reproduction,
    RunCurves, RunResult, Scores, TaskScore, Timing, TypeNull, REPORT_FILE, RESULTS_FILE,
};
pub use runner::{default_out, reproduce, Options};

/// The paper's LLaMA-7B commonsense table (Si et al. 2025; Params% as in README, Definitions).
pub use crate::paper::TABLE_CSV as PAPER_TABLE;
