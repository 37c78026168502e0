//! A LLaMA-family `config.json` (Hugging Face), read tolerantly, and the shapes it implies.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The configs shipped with tsd (`data/configs/`), selectable by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("llama-7b", include_str!("../../data/configs/llama-7b.json")),
    (
        "llama2-7b",
        include_str!("../../data/configs/llama2-7b.json"),
    ),
    (
        "llama3-8b",
        include_str!("../../data/configs/llama3-8b.json"),
    ),
];

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn default_ctx() -> usize {
    2048
}

/// The fields of a LLaMA config that tsd needs; unknown fields are ignored (HF configs carry many).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
}

impl LlamaConfig {
    /// Parses a config from JSON, naming `origin` in errors.
    pub fn from_json(value: serde_json::Value, origin: &Path) -> Result<Self> {
        let cfg: LlamaConfig = serde_json::from_value(value).map_err(|e| Error::Config {
            path: origin.to_path_buf(),
            reason: format!("not a LLaMA-family config: {e}"),
        })?;
        if cfg.num_attention_heads == 0
            || cfg.hidden_size % cfg.num_attention_heads != 0 && cfg.head_dim.is_none()
        {
            return Err(Error::Config {
                path: origin.to_path_buf(),
                reason: "hidden_size must split into num_attention_heads heads".into(),
            });
        }
        Ok(cfg)
    }

    /// A built-in config by name (`llama-7b`, `llama2-7b`, `llama3-8b`).
    pub fn builtin(name: &str) -> Option<Self> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(n, text)| {
            let v: serde_json::Value =
                serde_json::from_str(text).expect("shipped configs are valid JSON");
            LlamaConfig::from_json(v, Path::new(n)).expect("shipped configs are valid")
        })
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// `(out, in)` of a per-layer linear module by its short name (`q_proj`, …, `down_proj`).
    pub fn linear_shape(&self, module: &str) -> Option<(usize, usize)> {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.kv_heads() * self.head_dim();
        Some(match module {
            "q_proj" => (q, h),
            "k_proj" | "v_proj" => (kv, h),
            "o_proj" => (h, q),
            "gate_proj" | "up_proj" => (i, h),
            "down_proj" => (h, i),
            _ => return None,
        })
    }

    /// Total parameters of the model: embeddings, every layer's 7 linears and 2 RMSNorms, the final
    /// norm, and the LM head unless tied.
    pub fn total_params(&self) -> u64 {
        let h = self.hidden_size as u64;
        let per_layer: u64 = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .iter()
        .map(|m| {
            let (o, i) = self.linear_shape(m).expect("known module");
            (o * i) as u64
        })
        .sum::<u64>()
            + 2 * h;
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + self.num_hidden_layers as u64 * per_layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_parameter_counts_match_the_published_sizes() {
        assert_eq!(
            LlamaConfig::builtin("llama-7b").unwrap().total_params(),
            6_738_415_616
        );
        assert_eq!(
            LlamaConfig::builtin("llama2-7b").unwrap().total_params(),
            6_738_415_616
        );
        assert_eq!(
            LlamaConfig::builtin("llama3-8b").unwrap().total_params(),
            8_030_261_248
        );
        assert!(LlamaConfig::builtin("gpt2").is_none());
    }
}
