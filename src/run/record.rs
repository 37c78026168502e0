//! tsd's own run record (`record.json`) and the per-checkpoint trainer state (`trainer_state.json`).
//! Their on-disk format is what every committed run under `reproductions/` holds: fields are only
//! ever added, with `#[serde(default)]`.

use super::config::TrainConfig;
use crate::error::{Error, Result};
use crate::nn::adapted::DashSwitch;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One optimizer step, as logged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Non-padding tokens in this step.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
}

/// A validation measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalLog {
    pub step: usize,
    pub loss: f64,
}

/// The Dash switch, when it happened.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SwitchLog {
    pub step: usize,
    pub seconds: f64,
    pub modules: Vec<DashSwitch>,
}

/// The training data of a run as it was read: its files with their sizes and sha256, the schema,
/// and how it was tokenized (which tokens carry loss, the length cut, the chat template used).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    #[serde(flatten)]
    pub manifest: crate::data::DataManifest,
    pub loss_on: super::config::LossOn,
    /// Tokens kept of each example (the start; TRL's `keep_start`).
    pub max_length: usize,
    /// Examples left with no label by the cut, and so not trained on (TRL drops them too).
    pub dropped_examples: usize,
    /// Where the chat template came from, for conversational data.
    pub chat_template: Option<String>,
}

/// The machine-readable record of a run (`record.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub tsd_version: String,
    /// Versions of the numerical dependencies and of rustc this binary was built with.
    #[serde(default)]
    pub build: String,
    pub config: TrainConfig,
    pub base: String,
    /// The training data (absent in records written before tsd recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataRecord>,
    /// The base model's content: every weight file it was loaded from, by sha256 (empty in
    /// records written before tsd recorded it).
    #[serde(default)]
    pub base_files: Vec<WeightFile>,
    pub base_params: u64,
    /// Parameters the optimizer updates now: LoRA A and B (or the full weights), plus Δσ once the
    /// LoRA-Dash switch has run (updated at the switch and on resume).
    pub trainable_params: u64,
    pub total_steps: usize,
    pub train_examples: usize,
    pub val_examples: usize,
    pub device: String,
    pub threads: usize,
    /// The matrix-kernel path of the process that wrote the record (absent in records written
    /// before tsd recorded it): results are bit-identical only on one path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<crate::kernels::KernelPath>,
    pub steps: Vec<StepLog>,
    pub val: Vec<EvalLog>,
    pub dash_switch: Option<SwitchLog>,
    pub checkpoints: Vec<usize>,
    /// Seconds spent caching the frozen lower layers' outputs (0 without `top_layers`).
    #[serde(default)]
    pub lower_cache_seconds: f64,
    pub peak_rss_bytes: u64,
    pub wall_s: f64,
    pub finished: bool,
}

/// What a run knows of itself when it starts: [`RunRecord::start`].
pub struct RunStart {
    pub config: TrainConfig,
    pub data: DataRecord,
    pub base_files: Vec<WeightFile>,
    pub base_params: u64,
    pub trainable_params: u64,
    pub total_steps: usize,
    pub train_examples: usize,
    pub val_examples: usize,
}

impl RunRecord {
    /// The record of a run about to take its first step: this build's versions, the base as the
    /// user gave it (`model@revision`, not the resolved path, which names this machine), the
    /// config's device, the current thread count, and no steps yet.
    pub fn start(s: RunStart) -> Self {
        RunRecord {
            tsd_version: env!("CARGO_PKG_VERSION").into(),
            build: env!("TSD_BUILD_VERSIONS").into(),
            base: match &s.config.revision {
                Some(r) => format!("{}@{r}", s.config.model),
                None => s.config.model.clone(),
            },
            device: s.config.device.clone(),
            data: Some(s.data),
            config: s.config,
            base_files: s.base_files,
            base_params: s.base_params,
            trainable_params: s.trainable_params,
            total_steps: s.total_steps,
            train_examples: s.train_examples,
            val_examples: s.val_examples,
            threads: rayon::current_num_threads(),
            kernel_path: Some(crate::kernels::current()),
            steps: Vec::new(),
            val: Vec::new(),
            dash_switch: None,
            checkpoints: Vec::new(),
            lower_cache_seconds: 0.0,
            peak_rss_bytes: 0,
            wall_s: 0.0,
            finished: false,
        }
    }
}

/// Saved with each checkpoint, written last (its presence marks the checkpoint complete).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub dash_active: bool,
    pub optimizer_steps: HashMap<String, u64>,
    pub elapsed_s: f64,
}

/// One weight file of a base model, named by content rather than by where it lies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightFile {
    /// Its name relative to the model directory (the file name for a single-file model).
    pub file: String,
    pub bytes: u64,
    /// sha256 of its bytes, hex.
    pub sha256: String,
}

/// The weight files a model path is loaded from, as [`crate::weights::open_path`] picks them: the
/// file itself; a directory's safetensors (the index's shards, `model.safetensors`, or every
/// `*.safetensors`); else every `*.gguf` in it (sorted).
fn weight_files(path: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    if path.is_file() {
        return Ok((crate::fsutil::parent_dir(path), vec![path.to_path_buf()]));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let ext = |q: &Path, e: &str| q.extension().is_some_and(|x| x == e);
    let files = if entries
        .iter()
        .any(|q| ext(q, "safetensors") || q.ends_with("model.safetensors.index.json"))
    {
        crate::weights::SafetensorsModel::shard_files(path)?
    } else {
        entries.into_iter().filter(|q| ext(q, "gguf")).collect()
    };
    Ok((path.to_path_buf(), files))
}

/// A hash remembered for a file of this size and modification time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CachedHash {
    bytes: u64,
    mtime_ns: u128,
    sha256: String,
}

/// Where remembered hashes live: `$TSD_HOME/sha256-cache.json`, keyed by canonical path.
fn hash_cache_path() -> PathBuf {
    crate::env::tsd_home().join("sha256-cache.json")
}

/// sha256 of every weight file of the model at `path` (a file or directory). Each file is hashed
/// once and remembered by (canonical path, size, mtime): a multi-GB base costs its read once, and
/// a file rewritten since is hashed again. An unreadable cache is ignored and rewritten.
pub fn base_files(path: &Path) -> Result<Vec<WeightFile>> {
    let (root, files) = weight_files(path)?;
    let cache_path = hash_cache_path();
    let mut cache: BTreeMap<String, CachedHash> = std::fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut changed = false;
    let mut out = Vec::with_capacity(files.len());
    for f in &files {
        let meta = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let key = std::fs::canonicalize(f)
            .map_err(|e| Error::io(f, e))?
            .display()
            .to_string();
        let sha256 = match cache.get(&key) {
            Some(c) if c.bytes == meta.len() && c.mtime_ns == mtime_ns && mtime_ns != 0 => {
                c.sha256.clone()
            }
            _ => {
                let h = crate::fsutil::sha256_file(f)?;
                cache.insert(
                    key,
                    CachedHash {
                        bytes: meta.len(),
                        mtime_ns,
                        sha256: h.clone(),
                    },
                );
                changed = true;
                h
            }
        };
        let name = f.strip_prefix(&root).unwrap_or(f);
        out.push(WeightFile {
            file: name.display().to_string(),
            bytes: meta.len(),
            sha256,
        });
    }
    if changed {
        crate::fsutil::write_json_unterminated(&cache_path, &cache)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written before `base_files` and `data` existed still loads.
    #[test]
    fn old_records_without_base_files_load() {
        let data = DataRecord {
            manifest: crate::data::DataManifest {
                spec: vec!["t.jsonl".into()],
                schema: crate::data::Schema::Text,
                files: vec![],
            },
            loss_on: super::super::config::LossOn::All,
            max_length: 1024,
            dropped_examples: 0,
            chat_template: None,
        };
        let mut v = serde_json::to_value(RunRecord::start(RunStart {
            config: TrainConfig::default(),
            data,
            base_files: vec![WeightFile {
                file: "m.gguf".into(),
                bytes: 1,
                sha256: "00".into(),
            }],
            base_params: 0,
            trainable_params: 0,
            total_steps: 0,
            train_examples: 0,
            val_examples: 0,
        }))
        .unwrap();
        assert_eq!(v["data"]["schema"], "text");
        v.as_object_mut().unwrap().remove("base_files");
        v.as_object_mut().unwrap().remove("data");
        let r: RunRecord = serde_json::from_value(v).unwrap();
        assert!(r.base_files.is_empty() && r.data.is_none());
    }
}
