//! tsd's own run directory, written by `tsd train` and read by `track`, `report`, `--resume`:
//! ```text
//! RUN/config.json                 TrainConfig
//! RUN/record.json                 RunRecord (per-step loss, lr, tokens/s, memory, Dash switch, …)
//! RUN/checkpoints/step-000100/    adapter_config.json + adapter_model.safetensors (PEFT; after a
//!                                 Dash switch the folded rank-(r+s) LoRA) and, after the switch,
//!                                 tsd_dash.safetensors (the Dash parametrisation tsd resumes from)
//!                                 or model.safetensors + config.json (method full)
//!                                 optimizer.safetensors, trainer_state.json (written last)
//! ```
//! A checkpoint is written into `checkpoints/.step-000100.tmp-PID/` and renamed into place, so a
//! killed run leaves a temporary directory (never listed) rather than a half-written checkpoint.

use super::config::TrainConfig;
use super::record::{RunRecord, TrainerState};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const RECORD_FILE: &str = "record.json";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
pub const STATE_FILE: &str = "trainer_state.json";

/// Whether `dir` holds a tsd run (a `config.json` beside `checkpoints/` or `record.json`).
pub fn is_tsd_run(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
        && (dir.join(CHECKPOINTS_DIR).is_dir() || dir.join(RECORD_FILE).is_file())
}

/// The directory of a checkpoint.
pub fn checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir
        .join(CHECKPOINTS_DIR)
        .join(format!("step-{step:06}"))
}

/// Where a checkpoint is written before it is renamed to [`checkpoint_dir`].
pub fn temp_checkpoint_dir(run_dir: &Path, step: usize) -> PathBuf {
    run_dir
        .join(CHECKPOINTS_DIR)
        .join(format!(".step-{step:06}.tmp-{}", std::process::id()))
}

/// Removes the temporary checkpoint directories (`.step-N.tmp-PID`) that processes no longer alive
/// left behind — a run killed inside a checkpoint write leaves a partial one, for `--method full`
/// a partial copy of the weights. A directory whose PID is this process or still running is kept
/// (another writer may own it). Returns the removed paths, for a warning.
pub fn remove_stale_temp_dirs(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let e = e.map_err(|e| Error::io(&dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(".step-")
            .and_then(|r| r.split_once(".tmp-"))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && e.path().is_dir() {
            std::fs::remove_dir_all(e.path()).map_err(|err| Error::io(e.path(), err))?;
            removed.push(e.path());
        }
    }
    removed.sort();
    Ok(removed)
}

/// Complete checkpoints (those with `trainer_state.json`) ascending by step, and a warning for each
/// directory under `checkpoints/` that is not one (a temporary or half-written directory).
pub fn scan_checkpoints(run_dir: &Path) -> Result<(Vec<usize>, Vec<String>)> {
    let dir = run_dir.join(CHECKPOINTS_DIR);
    if !dir.exists() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut steps = Vec::new();
    let mut skipped = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let e = e.map_err(|e| Error::io(&dir, e))?;
        if !e.path().is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().to_string();
        let step = name.strip_prefix("step-").and_then(|n| n.parse().ok());
        match step {
            Some(s) if e.path().join(STATE_FILE).is_file() => steps.push(s),
            Some(_) => skipped.push(format!(
                "{}: no {STATE_FILE} (a half-written checkpoint); skipped",
                e.path().display()
            )),
            None => skipped.push(format!(
                "{}: not a checkpoint (a temporary directory of an interrupted save?); skipped",
                e.path().display()
            )),
        }
    }
    steps.sort_unstable();
    Ok((steps, skipped))
}

/// Steps of all complete checkpoints, ascending.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<usize>> {
    Ok(scan_checkpoints(run_dir)?.0)
}

/// The newest complete checkpoint step of a run, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<usize>> {
    Ok(list_checkpoints(run_dir)?.into_iter().max())
}

/// Reads `RUN/config.json`.
pub fn read_config(run_dir: &Path) -> Result<TrainConfig> {
    TrainConfig::load(&run_dir.join(CONFIG_FILE))
}

/// Writes `RUN/config.json` atomically.
pub fn write_config(run_dir: &Path, config: &TrainConfig) -> Result<()> {
    crate::fsutil::write_json_unterminated(&run_dir.join(CONFIG_FILE), config)
}

/// Reads `RUN/record.json`.
pub fn read_record(run_dir: &Path) -> Result<RunRecord> {
    crate::fsutil::read_json(&run_dir.join(RECORD_FILE))
}

/// Writes `RUN/record.json` atomically.
pub fn write_record(run_dir: &Path, record: &RunRecord) -> Result<()> {
    crate::fsutil::write_json_unterminated(&run_dir.join(RECORD_FILE), record)
}

/// Reads a checkpoint's trainer state.
pub fn read_state(checkpoint: &Path) -> Result<TrainerState> {
    crate::fsutil::read_json(&checkpoint.join(STATE_FILE))
}

/// Writes a checkpoint's trainer state (last: its presence marks the checkpoint complete).
pub fn write_state(checkpoint: &Path, state: &TrainerState) -> Result<()> {
    crate::fsutil::write_json_unterminated(&checkpoint.join(STATE_FILE), state)
}

/// A fresh temporary directory for the checkpoint of `step`.
pub fn begin_checkpoint(run_dir: &Path, step: usize) -> Result<PathBuf> {
    let tmp = temp_checkpoint_dir(run_dir, step);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok(tmp)
}

/// Renames a finished temporary checkpoint into place (replacing an older one of the same step).
pub fn commit_checkpoint(run_dir: &Path, step: usize, tmp: &Path) -> Result<()> {
    let final_dir = checkpoint_dir(run_dir, step);
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
    }
    std::fs::rename(tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_checkpoints_are_listed_and_the_rest_is_named() {
        let d = tempfile::tempdir().unwrap();
        for s in [10, 9, 100] {
            let c = checkpoint_dir(d.path(), s);
            std::fs::create_dir_all(&c).unwrap();
            std::fs::write(c.join(STATE_FILE), "{}").unwrap();
        }
        std::fs::create_dir_all(checkpoint_dir(d.path(), 11)).unwrap();
        std::fs::create_dir_all(d.path().join("checkpoints/.step-000012.tmp-7")).unwrap();
        let (steps, skipped) = scan_checkpoints(d.path()).unwrap();
        assert_eq!(steps, [9, 10, 100]);
        assert_eq!(skipped.len(), 2);
        assert!(skipped.iter().any(|w| w.contains("step-000011")));
        assert!(skipped.iter().any(|w| w.contains(".step-000012.tmp-7")));
    }

    /// Temporary checkpoints of dead processes are removed; this process's and a live one's stay.
    #[test]
    fn stale_temp_dirs_of_dead_processes_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let ck = d.path().join("checkpoints");
        let dead = ck.join(".step-000004.tmp-999999999");
        let ours = temp_checkpoint_dir(d.path(), 6);
        let live = ck.join(".step-000008.tmp-1");
        for p in [&dead, &ours, &live] {
            std::fs::create_dir_all(p).unwrap();
            std::fs::write(p.join("optimizer.safetensors"), b"partial").unwrap();
        }
        assert_eq!(
            remove_stale_temp_dirs(d.path()).unwrap(),
            vec![dead.clone()]
        );
        assert!(!dead.exists() && ours.exists() && live.exists());
        assert!(remove_stale_temp_dirs(d.path()).unwrap().is_empty());
    }
}
