//! PEFT `adapter_config.json`, read tolerantly (unknown fields ignored, missing ones defaulted, as
//! PEFT itself does) and written strictly. Per-module rank and alpha follow PEFT's `rank_pattern` /
//! `alpha_pattern` rule: the first pattern `p` for which the module name equals `p` or matches the
//! regex `(.*\.)?(p)$` wins.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// `target_modules`: a list of names or one regex string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl Default for TargetModules {
    fn default() -> Self {
        TargetModules::List(Vec::new())
    }
}

/// `init_lora_weights`: `true`/`false` or a named scheme (`"gaussian"`, `"pissa"`, `"olora"`, …).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    Bool(bool),
    Named(String),
}

impl Default for InitLoraWeights {
    fn default() -> Self {
        InitLoraWeights::Bool(true)
    }
}

impl InitLoraWeights {
    /// Init schemes that change the base weights themselves, so the stored base is not the W the
    /// adapter's ΔW was trained against.
    pub fn modifies_base(&self) -> Option<&str> {
        match self {
            InitLoraWeights::Named(n) => {
                let l = n.to_ascii_lowercase();
                ["pissa", "olora", "corda", "loftq"]
                    .into_iter()
                    .any(|p| l.starts_with(p))
                    .then_some(n.as_str())
            }
            InitLoraWeights::Bool(_) => None,
        }
    }
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}

/// The fields of a PEFT LoRA config that tsd uses. Unknown fields are ignored when reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    #[serde(default)]
    pub peft_type: Option<String>,
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub init_lora_weights: InitLoraWeights,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub lora_dropout: f64,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        AdapterConfig {
            peft_type: Some("LORA".into()),
            r: default_r(),
            lora_alpha: default_alpha(),
            use_rslora: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            fan_in_fan_out: false,
            target_modules: None,
            use_dora: false,
            init_lora_weights: InitLoraWeights::default(),
            base_model_name_or_path: None,
            revision: None,
            task_type: Some("CAUSAL_LM".into()),
            lora_dropout: 0.0,
        }
    }
}

/// PEFT's pattern lookup: exact name, else regex `(.*\.)?(pattern)$` (a pattern that is not a
/// valid regex is compared literally as a dotted suffix).
pub fn pattern_matches(pattern: &str, module: &str) -> bool {
    if pattern == module {
        return true;
    }
    match regex::Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$")) {
        Ok(re) => re.is_match(module),
        Err(_) => module.ends_with(&format!(".{pattern}")),
    }
}

impl AdapterConfig {
    /// Reads and validates `adapter_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let cfg: AdapterConfig = crate::fsutil::read_json(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(t) = &self.peft_type {
            if !t.eq_ignore_ascii_case("LORA") {
                return Err(bad(format!(
                    "peft_type `{t}` is not LORA; tsd analyses LoRA adapters (and LoRA-Dash)"
                )));
            }
        }
        if self.r == 0 {
            return Err(bad("r must be positive".into()));
        }
        if !self.lora_alpha.is_finite() {
            return Err(bad("lora_alpha is not finite".into()));
        }
        Ok(())
    }

    /// Rank for a module (HF module path), honouring `rank_pattern`.
    pub fn rank_for(&self, module: &str) -> usize {
        self.rank_pattern
            .iter()
            .find(|(p, _)| pattern_matches(p, module))
            .map(|(_, r)| *r)
            .unwrap_or(self.r)
    }

    /// Alpha for a module, honouring `alpha_pattern`.
    pub fn alpha_for(&self, module: &str) -> f64 {
        self.alpha_pattern
            .iter()
            .find(|(p, _)| pattern_matches(p, module))
            .map(|(_, a)| *a)
            .unwrap_or(self.lora_alpha)
    }

    /// The LoRA scaling PEFT applies: `α/r`, or `α/√r` with rsLoRA.
    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Whether a module name is targeted (true when no target list is known).
    pub fn targets(&self, module: &str) -> bool {
        match &self.target_modules {
            None => true,
            Some(TargetModules::List(l)) if l.is_empty() => true,
            Some(TargetModules::List(l)) => l
                .iter()
                .any(|t| module == t || module.ends_with(&format!(".{t}"))),
            Some(TargetModules::Regex(r)) => regex::Regex::new(&format!("^(?:{r})$"))
                .map(|re| re.is_match(module))
                .unwrap_or(false),
        }
    }

    /// The JSON PEFT writes for a LoRA config (every field PEFT's `LoraConfig` needs to load it).
    pub fn to_peft_json(&self) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": self.task_type.clone().unwrap_or_else(|| "CAUSAL_LM".into()),
            "base_model_name_or_path": self.base_model_name_or_path,
            "revision": self.revision,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules.clone().unwrap_or_default(),
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": self.alpha_pattern,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "fan_in_fan_out": self.fan_in_fan_out,
            "init_lora_weights": self.init_lora_weights,
            "bias": "none",
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "inference_mode": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_parse_with_defaults_and_unknown_fields() {
        let j = r#"{"r": 4, "lora_alpha": 8, "some_future_field": [1,2], "target_modules": "q_proj|v_proj",
                    "init_lora_weights": "pissa_niter_4"}"#;
        let c: AdapterConfig = serde_json::from_str(j).unwrap();
        assert_eq!(c.r, 4);
        assert_eq!(c.scaling(4, 8.0), 2.0);
        assert_eq!(c.init_lora_weights.modifies_base(), Some("pissa_niter_4"));
        let d: AdapterConfig = serde_json::from_str("{}").unwrap();
        assert_eq!((d.r, d.lora_alpha), (8, 8.0));
    }

    #[test]
    fn patterns_follow_peft() {
        let mut c = AdapterConfig::default();
        c.rank_pattern.insert("v_proj".into(), 2);
        c.alpha_pattern
            .insert(r"layers\.1\.mlp\.down_proj".into(), 3.0);
        c.use_rslora = true;
        assert_eq!(c.rank_for("model.layers.0.self_attn.v_proj"), 2);
        assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 8);
        assert_eq!(c.alpha_for("model.layers.1.mlp.down_proj"), 3.0);
        assert_eq!(c.alpha_for("model.layers.11.mlp.down_proj"), 8.0);
        assert!((c.scaling(4, 8.0) - 4.0).abs() < 1e-12);
        assert!(!pattern_matches("proj", "model.layers.0.self_attn.q_proj"));
    }
}
