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

/// `layers_to_transform`: one layer index or a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LayerIndexes {
    One(usize),
    List(Vec<usize>),
}

/// `layers_pattern`: one name or a list (e.g. `layers`, `h`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Names {
    One(String),
    List(Vec<String>),
}

impl Names {
    fn as_vec(&self) -> Vec<&str> {
        match self {
            Names::One(s) => vec![s.as_str()],
            Names::List(l) => l.iter().map(String::as_str).collect(),
        }
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
fn default_bias() -> String {
    "none".into()
}

/// PEFT's `target_modules` shorthand for every linear layer except the output layer.
pub const ALL_LINEAR: &str = "all-linear";

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
    /// Modules trained and saved whole (`lm_head`, a norm…); a module matches when its path ends
    /// with an entry (PEFT's rule).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Which existing biases were trained: `none`, `all`, `lora_only`.
    #[serde(default = "default_bias")]
    pub bias: String,
    /// Whether `lora_B` has its own bias.
    #[serde(default)]
    pub lora_bias: bool,
    #[serde(default)]
    pub layers_to_transform: Option<LayerIndexes>,
    #[serde(default)]
    pub layers_pattern: Option<Names>,
    /// Names (suffix rule) or one regex (full match) of modules never adapted.
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// Fields that change what an adapter holds or how it applies, which tsd does not implement:
    /// refused when set (see [`REFUSED_FIELDS`]).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Config fields that decide which parameters exist or how the update applies, which tsd does not
/// implement; an adapter that sets one (to anything but null / false / empty) is refused.
pub const REFUSED_FIELDS: &[&str] = &[
    "target_parameters",
    "trainable_token_indices",
    "layer_replication",
    "alora_invocation_tokens",
    "use_qalora",
    "megatron_config",
    "arrow_config",
];

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
            modules_to_save: None,
            bias: default_bias(),
            lora_bias: false,
            layers_to_transform: None,
            layers_pattern: None,
            exclude_modules: None,
            other: BTreeMap::new(),
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

    /// Checks a parsed config (`path` names where it came from in errors).
    pub fn validate(&self, path: &Path) -> Result<()> {
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
        if !["none", "all", "lora_only"].contains(&self.bias.as_str()) {
            return Err(bad(format!(
                "bias `{}` is not one of none, all, lora_only",
                self.bias
            )));
        }
        for field in REFUSED_FIELDS {
            let set = match self.other.get(*field) {
                None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => {
                    false
                }
                Some(serde_json::Value::Array(a)) => !a.is_empty(),
                Some(serde_json::Value::Object(o)) => !o.is_empty(),
                Some(_) => true,
            };
            if set {
                return Err(bad(format!(
                    "`{field}` is set ({}); tsd does not implement it, so it cannot read this adapter right",
                    self.other[*field]
                )));
            }
        }
        for (what, pattern) in [
            ("target_modules", &self.target_modules),
            ("exclude_modules", &self.exclude_modules),
        ] {
            if let Some(TargetModules::Regex(r)) = pattern {
                if r != ALL_LINEAR {
                    regex::Regex::new(&format!("^(?:{r})$"))
                        .map_err(|e| bad(format!("{what} regex `{r}` does not compile: {e}")))?;
                }
            }
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

    /// Whether `module` (an HF module path) is a `modules_to_save` module: its path ends with an
    /// entry (PEFT's `_set_trainable` rule).
    pub fn saves_module(&self, module: &str) -> bool {
        self.modules_to_save
            .iter()
            .flatten()
            .any(|m| module.ends_with(m.as_str()))
    }

    /// Whether PEFT puts a LoRA layer on `module` (an HF module path), following
    /// `check_target_module_exists`: `exclude_modules` first (names by suffix, or one regex, full
    /// match), `modules_to_save` modules never, then `target_modules` (one regex, full match, or
    /// names by suffix; `all-linear` is every module but `lm_head`) with `layers_to_transform` /
    /// `layers_pattern` restricting list targets to those layers. True when no target is known.
    pub fn targets(&self, module: &str) -> bool {
        let by_names = |l: &[String]| {
            l.iter()
                .any(|t| module == t || module.ends_with(&format!(".{t}")))
        };
        let full_match =
            |r: &str| regex::Regex::new(&format!("^(?:{r})$")).is_ok_and(|re| re.is_match(module));
        match &self.exclude_modules {
            Some(TargetModules::Regex(r)) if full_match(r) => return false,
            Some(TargetModules::List(l)) if by_names(l) => return false,
            _ => {}
        }
        if self.modules_to_save.iter().flatten().any(|m| {
            regex::Regex::new(&format!(r"(^|.*\.){m}($|\..*)")).is_ok_and(|re| re.is_match(module))
        }) {
            return false;
        }
        // PEFT expands `all-linear` to the list of every linear's path but the output layer's, so
        // `layers_to_transform` restricts it as it restricts a list.
        let listed = match &self.target_modules {
            None => return true,
            Some(TargetModules::List(l)) if l.is_empty() => return true,
            Some(TargetModules::Regex(r)) if r == ALL_LINEAR => module != "lm_head",
            Some(TargetModules::Regex(r)) => return full_match(r),
            Some(TargetModules::List(l)) => by_names(l),
        };
        if !listed {
            return false;
        }
        let wanted: Vec<usize> = match &self.layers_to_transform {
            None => return true,
            Some(LayerIndexes::List(l)) if l.is_empty() => return true,
            Some(LayerIndexes::List(l)) => l.clone(),
            Some(LayerIndexes::One(i)) => vec![*i],
        };
        let patterns: Vec<String> = match self.layers_pattern.as_ref().map(Names::as_vec) {
            Some(p) if !p.is_empty() => p
                .iter()
                .map(|p| format!(r"^(?:.*?\.)?{p}\.(\d+)\."))
                .collect(),
            _ => vec![r"^.*?\.[^.]*\.(\d+)\.".to_string()],
        };
        let index = patterns.iter().find_map(|p| {
            regex::Regex::new(p)
                .ok()?
                .captures(module)?
                .get(1)?
                .as_str()
                .parse::<usize>()
                .ok()
        });
        index.is_some_and(|i| wanted.contains(&i))
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
            "bias": self.bias,
            "lora_bias": self.lora_bias,
            "modules_to_save": self.modules_to_save,
            "layers_to_transform": self.layers_to_transform,
            "layers_pattern": self.layers_pattern,
            "exclude_modules": self.exclude_modules,
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

    fn cfg(j: &str) -> AdapterConfig {
        let c: AdapterConfig = serde_json::from_str(j).unwrap();
        c.validate(Path::new("adapter_config.json")).unwrap();
        c
    }

    #[test]
    fn targets_follow_peft_check_target_module_exists() {
        let q0 = "model.layers.0.self_attn.q_proj";
        let q1 = "model.layers.1.self_attn.q_proj";
        let d0 = "model.layers.0.mlp.down_proj";
        let c = cfg(r#"{"target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1]}"#);
        assert!(!c.targets(q0) && c.targets(q1) && !c.targets(d0));
        let c = cfg(
            r#"{"target_modules": ["q_proj"], "layers_to_transform": 0, "layers_pattern": "layers"}"#,
        );
        assert!(c.targets(q0) && !c.targets(q1));
        let c = cfg(
            r#"{"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": ["h"]}"#,
        );
        assert!(!c.targets(q0));
        let c = cfg(r#"{"target_modules": ".*\\.layers\\.1\\.self_attn\\.q_proj"}"#);
        assert!(!c.targets(q0) && c.targets(q1));
        // A regex string is matched in full, not searched.
        let c = cfg(r#"{"target_modules": "q_proj"}"#);
        assert!(!c.targets(q0));
        let c = cfg(
            r#"{"target_modules": ["q_proj", "down_proj"], "exclude_modules": ["layers.0.mlp.down_proj"]}"#,
        );
        assert!(c.targets(q0) && !c.targets(d0) && c.targets("model.layers.1.mlp.down_proj"));
        let c = cfg(r#"{"target_modules": ["q_proj"], "exclude_modules": ".*layers\\.1\\..*"}"#);
        assert!(c.targets(q0) && !c.targets(q1));
        let c = cfg(r#"{"target_modules": "all-linear"}"#);
        assert!(c.targets(d0) && !c.targets("lm_head"));
        // Regression: `layers_to_transform` restricts `all-linear` too (PEFT expands it to a list).
        let c = cfg(r#"{"target_modules": "all-linear", "layers_to_transform": [1]}"#);
        assert!(!c.targets(d0) && c.targets(q1) && c.targets("model.layers.1.mlp.down_proj"));
        let c = cfg(r#"{"target_modules": ["q_proj", "lm_head"], "modules_to_save": ["lm_head"]}"#);
        assert!(c.targets(q0) && !c.targets("lm_head") && c.saves_module("lm_head"));
    }

    #[test]
    fn unimplemented_fields_and_bad_values_are_refused() {
        for j in [
            r#"{"target_parameters": ["mlp.experts.gate_up_proj"]}"#,
            r#"{"trainable_token_indices": [1, 2]}"#,
            r#"{"layer_replication": [[0, 2]]}"#,
            r#"{"bias": "some"}"#,
            r#"{"target_modules": "(unclosed"}"#,
        ] {
            let c: AdapterConfig = serde_json::from_str(j).unwrap();
            assert!(c.validate(Path::new("x")).is_err(), "{j}");
        }
        cfg(
            r#"{"target_parameters": null, "layer_replication": null, "use_qalora": false, "trainable_token_indices": null}"#,
        );
    }
}
