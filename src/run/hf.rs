//! Hugging Face Trainer output directories: `OUTPUT_DIR/checkpoint-N/` (N = global step) holding
//! the adapter at its root, in a named subfolder (`NAME/`, PEFT's layout for a non-default adapter
//! name) or in axolotl's `adapter_model/`, beside `trainer_state.json`. `training_args.bin`,
//! `optimizer.pt`, `scheduler.pt` and `rng_state.pth` are pickles and never read.

use super::curves::{Curves, EvalPoint, TrainPoint};
use crate::adapter::read::{CONFIG_FILE, WEIGHTS_FILE};
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "trainer_state.json";

/// Adapter weight files a PEFT adapter directory may hold (the pickles are refused when read).
const WEIGHT_FILES: [&str; 4] = [
    WEIGHTS_FILE,
    "adapter_model.bin",
    "adapter_model.pt",
    "adapter_model.pth",
];

/// The step of a `checkpoint-N` directory name.
pub fn checkpoint_step(name: &str) -> Option<usize> {
    let n = name.strip_prefix("checkpoint-")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// Whether a directory name is one of the Trainer's checkpoints or a temporary one of its
/// (`tmp-checkpoint-N` while saving, `checkpoint-N.tmp…` of other tools).
pub fn looks_like_checkpoint(name: &str) -> bool {
    name.starts_with("checkpoint-") || name.starts_with("tmp-checkpoint-")
}

/// Whether `dir` holds adapter weights and its config (a complete PEFT adapter directory).
pub fn is_complete_adapter(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file() && WEIGHT_FILES.iter().any(|f| dir.join(f).is_file())
}

/// Whether `dir` looks like an adapter directory at all (a config or weights).
pub fn is_partial_adapter(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).exists() || WEIGHT_FILES.iter().any(|f| dir.join(f).exists())
}

/// Where the adapter of a checkpoint lives: `NAME/` when `adapter_name` is given, else the
/// checkpoint's root, else its only adapter subfolder (a named adapter, or axolotl's
/// `adapter_model/`). `Ok(None)`: no complete adapter (half-written); several subfolders and no
/// name: refused, naming them.
pub fn adapter_in(checkpoint: &Path, adapter_name: Option<&str>) -> Result<Option<PathBuf>> {
    if let Some(n) = adapter_name {
        let d = checkpoint.join(n);
        return Ok(is_complete_adapter(&d).then_some(d));
    }
    if is_complete_adapter(checkpoint) {
        return Ok(Some(checkpoint.to_path_buf()));
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(checkpoint)
        .map_err(|e| Error::io(checkpoint, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && is_complete_adapter(p))
        .collect();
    subs.sort();
    match subs.len() {
        0 => Ok(None),
        1 => Ok(subs.pop()),
        _ => Err(Error::InvalidArgument(format!(
            "{} holds several adapters ({}); choose one with --adapter-name",
            checkpoint.display(),
            subs.iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn number(path: &Path, i: usize, entry: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(v) => Err(Error::Json {
            path: path.to_path_buf(),
            reason: format!("log_history[{i}].{key} is {v}, expected a number"),
        }),
    }
}

/// The curves in a `trainer_state.json`: entries with `loss` are training steps (with
/// `learning_rate`, `grad_norm`, `epoch` when logged), entries with `eval_loss` evaluations; other
/// entries (the final `train_loss` summary, custom metrics) are not curves tsd draws.
pub fn read_curves(state: &Path) -> Result<Curves> {
    let v: Value = crate::fsutil::read_json(state)?;
    let bad = |reason: String| Error::Json {
        path: state.to_path_buf(),
        reason,
    };
    let history = v
        .get("log_history")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no `log_history` array (not a Trainer state?)".into()))?;
    let mut curves = Curves {
        source: state.display().to_string(),
        train: Vec::new(),
        eval: Vec::new(),
        marker: None,
    };
    for (i, e) in history.iter().enumerate() {
        let e = e
            .as_object()
            .ok_or_else(|| bad(format!("log_history[{i}] is not an object")))?;
        let step = e
            .get("step")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad(format!("log_history[{i}] has no integer `step`")))?
            as usize;
        let epoch = number(state, i, e, "epoch")?;
        if let Some(loss) = number(state, i, e, "loss")? {
            curves.train.push(TrainPoint {
                step,
                epoch,
                loss: Some(loss),
                learning_rate: number(state, i, e, "learning_rate")?,
                grad_norm: number(state, i, e, "grad_norm")?,
                tokens_per_s: None,
            });
        }
        if let Some(loss) = number(state, i, e, "eval_loss")? {
            curves.eval.push(EvalPoint { step, epoch, loss });
        }
    }
    Ok(curves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_parse_only_as_the_trainer_writes_them() {
        assert_eq!(checkpoint_step("checkpoint-10"), Some(10));
        assert_eq!(checkpoint_step("checkpoint-"), None);
        assert_eq!(checkpoint_step("checkpoint-10.tmp"), None);
        assert_eq!(checkpoint_step("tmp-checkpoint-10"), None);
        assert!(looks_like_checkpoint("tmp-checkpoint-10"));
    }

    #[test]
    fn log_history_splits_into_train_and_eval_points() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(STATE_FILE);
        std::fs::write(
            &p,
            r#"{"log_history": [
                {"step": 1, "epoch": 0.5, "loss": 2.0, "learning_rate": 0.1, "grad_norm": 3.0},
                {"step": 1, "epoch": 0.5, "eval_loss": 1.5, "eval_runtime": 0.1},
                {"step": 2, "epoch": 1.0, "train_loss": 1.9, "train_runtime": 4.0}
            ]}"#,
        )
        .unwrap();
        let c = read_curves(&p).unwrap();
        assert_eq!(c.train.len(), 1);
        assert_eq!(c.train[0].grad_norm, Some(3.0));
        assert_eq!(
            c.eval,
            [EvalPoint {
                step: 1,
                epoch: Some(0.5),
                loss: 1.5
            }]
        );
        std::fs::write(&p, r#"{"log_history": [{"step": 1, "loss": "x"}]}"#).unwrap();
        assert!(read_curves(&p)
            .unwrap_err()
            .to_string()
            .contains("log_history[0].loss"));
    }
}
