//! Base weights from Hugging Face safetensors: one `model.safetensors`, a sharded checkpoint with
//! `model.safetensors.index.json`, or a single `.safetensors` file. Files are memory-mapped and
//! only the tensors asked for are decoded.

use super::tensor::{decode_f32, decode_matrix, st_error};
use super::WeightSource;
use crate::error::{Error, Result};
use crate::linalg::Matrix;
use memmap2::Mmap;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

/// A safetensors checkpoint (single or sharded), indexed by tensor name.
pub struct SafetensorsModel {
    root: PathBuf,
    shards: Vec<Shard>,
    /// tensor name → (shard index, shape)
    index: BTreeMap<String, (usize, Vec<usize>)>,
    config: Option<serde_json::Value>,
}

fn map_file(path: &Path) -> Result<Mmap> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only; tsd never writes to base checkpoints while reading them.
    unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))
}

impl SafetensorsModel {
    /// Opens a model directory or a single `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self> {
        let (root, files) = if path.is_file() {
            (crate::fsutil::parent_dir(path), vec![path.to_path_buf()])
        } else {
            (path.to_path_buf(), Self::shard_files(path)?)
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for (i, p) in files.iter().enumerate() {
            let mmap = map_file(p)?;
            let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| st_error(p, e))?;
            // Full validation (offsets inside the file, no overlaps) happens here, once per shard.
            SafeTensors::deserialize(&mmap).map_err(|e| st_error(p, e))?;
            for (name, info) in meta.tensors() {
                index.insert(name.clone(), (i, info.shape.clone()));
            }
            shards.push(Shard {
                path: p.clone(),
                mmap,
            });
        }
        let cfg_path = root.join("config.json");
        let config = if cfg_path.exists() {
            Some(crate::fsutil::read_json(&cfg_path)?)
        } else {
            None
        };
        Ok(SafetensorsModel {
            root,
            shards,
            index,
            config,
        })
    }

    pub(crate) fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
        let idx = dir.join("model.safetensors.index.json");
        if idx.exists() {
            let files = shard_names(&idx)?;
            let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
            if let Some(missing) = paths.iter().find(|p| !p.exists()) {
                return Err(Error::Config {
                    path: idx,
                    reason: format!("shard {} is listed but missing", missing.display()),
                });
            }
            return Ok(paths);
        }
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Ok(vec![single]);
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        found.sort();
        if found.is_empty() {
            return Err(Error::ModelNotFound {
                spec: dir.display().to_string(),
                reason: "no model.safetensors, model.safetensors.index.json or *.safetensors in it"
                    .into(),
            });
        }
        Ok(found)
    }
}

/// The shard file names listed by a `model.safetensors.index.json`, sorted and deduplicated.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let parsed: Index = crate::fsutil::read_json(index)?;
    let mut files: Vec<String> = parsed.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    Ok(files)
}

impl SafetensorsModel {
    /// Runs `f` on the memory-mapped view of tensor `name` in its shard.
    fn with_view<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Path, &safetensors::tensor::TensorView<'_>) -> Result<T>,
    ) -> Result<T> {
        let (i, _) = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            context: self.describe(),
            tensor: name.to_string(),
        })?;
        let shard = &self.shards[*i];
        let st = SafeTensors::deserialize(&shard.mmap).map_err(|e| st_error(&shard.path, e))?;
        let view = st.tensor(name).map_err(|e| st_error(&shard.path, e))?;
        f(&shard.path, &view)
    }
}

impl WeightSource for SafetensorsModel {
    fn describe(&self) -> String {
        format!(
            "safetensors model at {} ({} file(s))",
            self.root.display(),
            self.shards.len()
        )
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|(_, s)| s.clone())
    }

    fn matrix(&self, name: &str) -> Result<Matrix> {
        self.with_view(name, |path, view| decode_matrix(path, name, view))
    }

    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.with_view(name, |path, view| {
            Ok((view.shape().to_vec(), decode_f32(path, name, view)?))
        })
    }

    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn total_params(&self) -> u64 {
        self.index
            .values()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum()
    }

    fn config_json(&self) -> Option<serde_json::Value> {
        self.config.clone()
    }
}
