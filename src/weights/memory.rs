//! An in-memory weight source: for benchmarks and tests built on generated weights.

use super::WeightSource;
use crate::error::{Error, Result};
use crate::linalg::Matrix;
use std::collections::BTreeMap;

/// Named matrices held in memory (HF names, `[out, in]`).
#[derive(Default)]
pub struct InMemoryModel {
    pub tensors: BTreeMap<String, Matrix>,
    /// 1-D tensors (norm weights).
    pub vectors: BTreeMap<String, Vec<f32>>,
    pub config: Option<serde_json::Value>,
}

impl WeightSource for InMemoryModel {
    fn describe(&self) -> String {
        format!("in-memory model ({} tensors)", self.tensors.len())
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.vectors.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors
            .get(name)
            .map(|m| vec![m.rows, m.cols])
            .or_else(|| self.vectors.get(name).map(|v| vec![v.len()]))
    }
    fn matrix(&self, name: &str) -> Result<Matrix> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                context: self.describe(),
                tensor: name.to_string(),
            })
    }
    fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        if let Some(v) = self.vectors.get(name) {
            return Ok((vec![v.len()], v.clone()));
        }
        let m = self.matrix(name)?;
        Ok((vec![m.rows, m.cols], m.data))
    }
    fn names(&self) -> Vec<String> {
        self.tensors
            .keys()
            .chain(self.vectors.keys())
            .cloned()
            .collect()
    }
    fn total_params(&self) -> u64 {
        self.tensors
            .values()
            .map(|m| (m.rows * m.cols) as u64)
            .sum()
    }
    fn config_json(&self) -> Option<serde_json::Value> {
        self.config.clone()
    }
}
