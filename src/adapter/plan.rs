//! The adapter plan: which module of a LLaMA-family model gets which adapter. One place turns a
//! target spec (a PEFT [`AdapterConfig`]: `target_modules` as names, a regex or `all-linear`,
//! `layers_to_transform`, `exclude_modules`, `rank_pattern`, `alpha_pattern`) into per-module
//! adapters, and module paths into typed names (layer index + [`LinearKind`]), so that training,
//! inspect and export decide and name modules the same way.

use super::config::{LayerIndexes, TargetModules};
use super::AdapterConfig;
use crate::error::{Error, Result};
use crate::names::{LinearKind, LinearName, Method};
use std::collections::{BTreeMap, BTreeSet};

/// The adapter one module gets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedAdapter {
    pub method: Method,
    pub r: usize,
    pub alpha: f64,
    /// PEFT's scaling, `α/r` or `α/√r` with rsLoRA.
    pub scaling: f64,
}

/// For each linear of a model, which adapter it gets (modules absent from the plan stay frozen).
#[derive(Clone, Debug)]
pub struct AdapterPlan {
    /// The PEFT config the plan was made from (and that checkpoints are written with).
    pub config: AdapterConfig,
    modules: BTreeMap<LinearName, PlannedAdapter>,
}

impl AdapterPlan {
    /// The plan for a model with `num_layers` layers: a linear is adapted when `config` selects
    /// it as PEFT's `check_target_module_exists` does, with its `rank_pattern` / `alpha_pattern`
    /// rank and alpha. A config that selects no module is bad input.
    pub fn new(config: AdapterConfig, method: Method, num_layers: usize) -> Result<Self> {
        let mut modules = BTreeMap::new();
        for layer in 0..num_layers {
            for kind in LinearKind::ALL {
                let name = LinearName { layer, kind };
                let path = name.path();
                if !config.targets(&path) {
                    continue;
                }
                let (r, alpha) = (config.rank_for(&path), config.alpha_for(&path));
                modules.insert(
                    name,
                    PlannedAdapter {
                        method,
                        r,
                        alpha,
                        scaling: config.scaling(r, alpha),
                    },
                );
            }
        }
        if modules.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the targets ({}) select none of the model's {num_layers} layers' linears",
                serde_json::to_string(&config.target_modules).unwrap_or_default()
            )));
        }
        Ok(AdapterPlan { config, modules })
    }

    /// The adapter for this module, if it gets one.
    pub fn get(&self, name: LinearName) -> Option<&PlannedAdapter> {
        self.modules.get(&name)
    }

    /// Every adapted module in model order (layer, then HF order within a layer).
    pub fn modules(&self) -> impl Iterator<Item = (LinearName, &PlannedAdapter)> {
        self.modules.iter().map(|(n, a)| (*n, a))
    }
}

/// PEFT `target_modules` (and `layers_to_transform`) that select exactly `paths`: the kinds'
/// names restricted to the layers when the modules are every listed kind in every listed layer,
/// else one regex naming each path (full match). Used for an adapter that has no target spec.
pub fn targets_selecting<'a>(
    paths: impl IntoIterator<Item = &'a str>,
) -> (TargetModules, Option<LayerIndexes>) {
    let paths: BTreeSet<&str> = paths.into_iter().collect();
    let names: Option<BTreeSet<LinearName>> = paths.iter().map(|p| LinearName::parse(p)).collect();
    if let Some(names) = names.filter(|n| !n.is_empty()) {
        let kinds: BTreeSet<LinearKind> = names.iter().map(|n| n.kind).collect();
        let layers: BTreeSet<usize> = names.iter().map(|n| n.layer).collect();
        if kinds.len() * layers.len() == names.len() {
            let mut short: Vec<String> = kinds.iter().map(|k| k.as_str().to_string()).collect();
            short.sort();
            return (
                TargetModules::List(short),
                Some(LayerIndexes::List(layers.into_iter().collect())),
            );
        }
    }
    let alternatives: Vec<String> = paths.iter().map(|p| regex::escape(p)).collect();
    (TargetModules::Regex(alternatives.join("|")), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(j: &str) -> AdapterConfig {
        serde_json::from_str(j).unwrap()
    }

    fn paths(plan: &AdapterPlan) -> Vec<String> {
        plan.modules().map(|(n, _)| n.path()).collect()
    }

    /// q and v in the top 2 of 4 layers, as `tsd train --targets q_proj,v_proj --top-layers 2`.
    #[test]
    fn names_and_top_layers() {
        let c = cfg(
            r#"{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": [2, 3]}"#,
        );
        let plan = AdapterPlan::new(c, Method::Lora, 4).unwrap();
        assert_eq!(
            paths(&plan),
            [
                "model.layers.2.self_attn.q_proj",
                "model.layers.2.self_attn.v_proj",
                "model.layers.3.self_attn.q_proj",
                "model.layers.3.self_attn.v_proj",
            ]
        );
        let a = plan
            .get(LinearName {
                layer: 3,
                kind: LinearKind::V,
            })
            .unwrap();
        assert_eq!((a.r, a.alpha, a.scaling), (4, 8.0, 2.0));
        assert!(plan
            .get(LinearName {
                layer: 1,
                kind: LinearKind::Q
            })
            .is_none());
    }

    #[test]
    fn regex_targets_with_patterns() {
        let c = cfg(
            r#"{"r": 8, "lora_alpha": 16, "target_modules": ".*\\.layers\\.[01]\\.mlp\\.(up|down)_proj",
                "rank_pattern": {"down_proj": 2}, "alpha_pattern": {"layers.1.mlp.up_proj": 4}}"#,
        );
        let plan = AdapterPlan::new(c, Method::Full, 3).unwrap();
        assert_eq!(
            paths(&plan),
            [
                "model.layers.0.mlp.up_proj",
                "model.layers.0.mlp.down_proj",
                "model.layers.1.mlp.up_proj",
                "model.layers.1.mlp.down_proj",
            ]
        );
        let get = |layer, kind| *plan.get(LinearName { layer, kind }).unwrap();
        assert_eq!(get(0, LinearKind::Down).r, 2);
        assert_eq!(get(0, LinearKind::Up).r, 8);
        assert_eq!(get(1, LinearKind::Up).alpha, 4.0);
        assert_eq!(get(0, LinearKind::Up).method, Method::Full);
    }

    #[test]
    fn layers_to_transform_and_exclude() {
        let c = cfg(
            r#"{"target_modules": "all-linear", "layers_to_transform": 1, "exclude_modules": ["o_proj"]}"#,
        );
        let plan = AdapterPlan::new(c, Method::Lora, 2).unwrap();
        assert_eq!(plan.modules().count(), 6);
        assert!(plan
            .modules()
            .all(|(n, _)| n.kind != LinearKind::O && n.layer == 1));
        let c = cfg(r#"{"target_modules": ["down_proj"], "layers_to_transform": [1]}"#);
        let plan = AdapterPlan::new(c, Method::Lora, 2).unwrap();
        assert_eq!(paths(&plan), ["model.layers.1.mlp.down_proj"]);
        let c = cfg(r#"{"target_modules": ["q_proj"], "layers_to_transform": [5]}"#);
        assert!(AdapterPlan::new(c, Method::Lora, 2).is_err());
    }

    #[test]
    fn derived_targets_select_exactly_the_modules() {
        let grid = [
            "model.layers.2.self_attn.q_proj",
            "model.layers.2.self_attn.v_proj",
            "model.layers.3.self_attn.q_proj",
            "model.layers.3.self_attn.v_proj",
        ];
        let ragged = &grid[..3];
        let other = ["transformer.h.0.attn.c_attn"];
        for set in [&grid[..], ragged, &other[..]] {
            let (targets, layers) = targets_selecting(set.iter().copied());
            let c = AdapterConfig {
                target_modules: Some(targets),
                layers_to_transform: layers,
                ..Default::default()
            };
            for layer in 0..4 {
                for kind in LinearKind::ALL {
                    let p = kind.path(layer);
                    assert_eq!(c.targets(&p), set.contains(&p.as_str()), "{p} of {set:?}");
                }
            }
            for p in set {
                assert!(c.targets(p), "{p}");
            }
        }
        let (t, l) = targets_selecting(grid.iter().copied());
        assert_eq!(
            t,
            TargetModules::List(vec!["q_proj".into(), "v_proj".into()])
        );
        assert_eq!(l, Some(LayerIndexes::List(vec![2, 3])));
    }
}
