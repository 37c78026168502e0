//! Base-weight sources behind one lookup by Hugging Face tensor name
//! (`model.layers.3.self_attn.q_proj.weight`): a safetensors directory (single or sharded, e.g. a
//! Hugging Face cache snapshot) or a GGUF file (the default model), opened from a local path.
//! Finding or downloading that path is [`crate::provision`]'s.

pub mod gguf;
pub mod memory;
pub mod safetensors_dir;
pub mod serialize;
pub mod tensor;

use crate::error::{Error, Result};
use crate::linalg::Matrix;
use std::path::Path;

pub use gguf::GgufModel;
pub use safetensors_dir::SafetensorsModel;

/// A read-only collection of named base weights.
pub trait WeightSource: Send + Sync {
    /// One line naming the source, for messages and reports.
    fn describe(&self) -> String;
    /// Whether a tensor of this HF name exists.
    fn has(&self, name: &str) -> bool;
    /// Its shape as stored (PyTorch layout) without reading data.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// A 2-D weight as f32 `[out, in]`, HF layout, finite-checked. Reads only this tensor.
    fn matrix(&self, name: &str) -> Result<Matrix>;
    /// Any float tensor (e.g. a 1-D norm weight) as `(shape, f32 values)`, HF layout, finite-checked.
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)>;
    /// All tensor names (HF names).
    fn names(&self) -> Vec<String>;
    /// Total parameter count of the checkpoint.
    fn total_params(&self) -> u64;
    /// The model's `config.json` (synthesised for GGUF).
    fn config_json(&self) -> Option<serde_json::Value>;
}

/// Where a model comes from (candle-style flags).
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face revision when the model is a hub id: a branch, a tag or a full 40-hex commit
    /// sha [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// Never use the network: the Hugging Face cache alone (also HF_HUB_OFFLINE, else
    /// TRANSFORMERS_OFFLINE, set to 1/on/yes/true).
    #[arg(long)]
    pub offline: bool,
}

/// How to find a model: a path, a Hugging Face id, or `default`.
#[derive(Clone, Debug, Default)]
pub struct ModelSpec {
    /// Path to a directory / `.safetensors` / `.gguf`, a Hugging Face model id, or `default`.
    pub spec: String,
    /// Hugging Face revision (branch, tag or commit) for ids.
    pub revision: Option<String>,
    /// Never touch the network (also set by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// A base an adapter or run declares: looked up locally only (never downloaded), and an
    /// error says so rather than blaming `--offline`.
    pub local_only: bool,
}

impl ModelSpec {
    pub fn new(spec: impl Into<String>) -> Self {
        ModelSpec {
            spec: spec.into(),
            ..Default::default()
        }
    }
}

/// Opens a local path: a `.gguf` or `.safetensors` file, or a directory holding either.
pub fn open_path(p: &Path) -> Result<Box<dyn WeightSource>> {
    let ext = |q: &Path, e: &str| q.extension().is_some_and(|x| x == e);
    if p.is_file() {
        if ext(p, "gguf") {
            return Ok(Box::new(GgufModel::open(p)?));
        }
        if ext(p, "safetensors") {
            return Ok(Box::new(SafetensorsModel::open(p)?));
        }
        return Err(Error::ModelNotFound {
            spec: p.display().to_string(),
            reason: "a model file must end in .safetensors or .gguf".into(),
        });
    }
    let entries: Vec<_> = std::fs::read_dir(p)
        .map_err(|e| Error::io(p, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if entries
        .iter()
        .any(|q| ext(q, "safetensors") || q.ends_with("model.safetensors.index.json"))
    {
        return Ok(Box::new(SafetensorsModel::open(p)?));
    }
    if let Some(g) = entries.iter().find(|q| ext(q, "gguf")) {
        return Ok(Box::new(GgufModel::open(g)?));
    }
    let mut pickle: Vec<String> = entries
        .iter()
        .filter(|q| ext(q, "bin") || ext(q, "pt") || ext(q, "pth"))
        .filter_map(|q| q.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if !pickle.is_empty() {
        pickle.sort();
        return Err(Error::PickleWeights {
            spec: p.display().to_string(),
            files: pickle.join(", "),
        });
    }
    Err(Error::ModelNotFound {
        spec: p.display().to_string(),
        reason: "the directory holds no .safetensors or .gguf weights".into(),
    })
}
