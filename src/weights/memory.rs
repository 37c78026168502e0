//! An in-memory weight source: for benchmarks and tests built on generated weights.

use super::WeightSource;
use crate::error::{Error, Result};
use crate::linalg::Matrix;
use std::collections::BTreeMap;

/// Named matrices held in memory (HF names, `[out, in]`).
#[derive(Default)]
pub struct InMemoryModel {
    pub tensors: BTreeMap<String, Matrix>,
    pub config: Option<serde_json::Value>,
}

impl WeightSource for InMemoryModel {
    fn describe(&self) -> String {
        format!("in-memory model ({} tensors)", self.tensors.len())
    }
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|m| vec![m.rows, m.cols])
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
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
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
