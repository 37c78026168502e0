//! Parameter counts from a model config alone (README, Definitions: LoRA-Dash; Params%).
//!
//! LoRA trains `r·(in+out)` per adapted matrix; LoRA-Dash adds `s` trainable Δσ per matrix and stores
//! `s·(in+out)` frozen values (Ū, V̄). Three percentage conventions exist in the literature, and the
//! paper's Params% column mixes them:
//! - `exact`: trainable / base parameters;
//! - `nominal`: trainable / base rounded to 3 significant figures ("6.74 B") — reproduces the
//!   paper's LLaMA-7B column (0.10 / 0.21 / 0.42 / 0.83 / 1.66) exactly;
//! - `peft`: trainable / (base + trainable), what PEFT's `print_trainable_parameters` prints —
//!   truncated to two decimals it reproduces the LLaMA2-7B (0.41 / 0.82) and LLaMA3-8B
//!   (0.35 / 0.70) rows, which the paper takes from DoRA.

use crate::error::{Error, Result};
use crate::model::LlamaConfig;
use serde::Serialize;
use std::path::Path;

/// What is adapted: rank, target module short names, optional Dash directions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamPlan {
    pub rank: usize,
    pub targets: Vec<String>,
    /// LoRA-Dash's s (None: plain LoRA).
    pub dash_s: Option<usize>,
}

/// Counts and percentages for one plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamCounts {
    pub rank: usize,
    pub targets: Vec<String>,
    pub adapted_matrices: u64,
    /// LoRA's `Σ r·(in+out)`.
    pub lora_trainable: u64,
    /// Dash's extra trainable Δσ (`s` per matrix).
    pub dash_trainable: u64,
    pub trainable: u64,
    /// Frozen values stored with the adapter (Dash's Ū, V̄).
    pub frozen_stored: u64,
    /// Everything the adapter file holds.
    pub stored: u64,
    pub base_params: u64,
    /// Base rounded to 3 significant figures.
    pub base_nominal: u64,
    pub pct_exact: f64,
    pub pct_nominal: f64,
    pub pct_peft: f64,
}

/// One row of `tsd params` output.
#[derive(Clone, Debug, Serialize)]
pub struct ParamsRow {
    pub model: String,
    #[serde(flatten)]
    pub counts: ParamCounts,
}

/// Rounds to `sig` significant figures.
pub fn round_sig(x: u64, sig: u32) -> u64 {
    if x == 0 {
        return 0;
    }
    let digits = (x as f64).log10().floor() as i32 + 1;
    let scale = 10f64.powi(digits - sig as i32);
    ((x as f64 / scale).round() * scale) as u64
}

/// A percentage shown with two decimals, rounded (`round`) or truncated.
pub fn pct2(p: f64, truncate: bool) -> String {
    let v = if truncate {
        (p * 100.0 + 1e-9).floor() / 100.0
    } else {
        (p * 100.0).round() / 100.0
    };
    format!("{v:.2}")
}

/// Parameter counts for a plan on a config. Unknown target names are an error.
pub fn count(cfg: &LlamaConfig, plan: &ParamPlan) -> crate::Result<ParamCounts> {
    let mut lora = 0u64;
    let mut dash = 0u64;
    let mut frozen = 0u64;
    let mut matrices = 0u64;
    for t in &plan.targets {
        let (o, i) = cfg.linear_shape(t).ok_or_else(|| {
            crate::Error::InvalidArgument(format!(
                "unknown target module `{t}` (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
            ))
        })?;
        let layers = cfg.num_hidden_layers as u64;
        matrices += layers;
        lora += layers * (plan.rank * (o + i)) as u64;
        if let Some(s) = plan.dash_s {
            dash += layers * s as u64;
            frozen += layers * (s * (o + i)) as u64;
        }
    }
    let trainable = lora + dash;
    let base = cfg.total_params();
    let nominal = round_sig(base, 3);
    Ok(ParamCounts {
        rank: plan.rank,
        targets: plan.targets.clone(),
        adapted_matrices: matrices,
        lora_trainable: lora,
        dash_trainable: dash,
        trainable,
        frozen_stored: frozen,
        stored: trainable + frozen,
        base_params: base,
        base_nominal: nominal,
        pct_exact: 100.0 * trainable as f64 / base as f64,
        pct_nominal: 100.0 * trainable as f64 / nominal as f64,
        pct_peft: 100.0 * trainable as f64 / (base + trainable) as f64,
    })
}

/// A model's config for counting: a built-in name (`llama-7b`, …), a `config.json` (or a
/// directory holding one), a Hugging Face id (its `config.json` alone is fetched), or a model
/// tsd opens (its config). `revision` and `offline` apply to hub ids.
pub fn load_config(spec: &str, revision: Option<&str>, offline: bool) -> Result<LlamaConfig> {
    if let Some(c) = LlamaConfig::builtin(spec) {
        return Ok(c);
    }
    let p = Path::new(spec);
    let json_path = if p.is_dir() {
        p.join("config.json")
    } else {
        p.to_path_buf()
    };
    if json_path.is_file() && json_path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value = crate::fsutil::read_json(&json_path)?;
        return LlamaConfig::from_json(v, &json_path);
    }
    if !p.exists() && spec != "default" && crate::provision::hub::looks_like_repo_id(spec) {
        let f = crate::provision::hub::fetch_file(spec, revision, offline, "config.json")?;
        let v: serde_json::Value = crate::fsutil::read_json(&f)?;
        return LlamaConfig::from_json(v, &f);
    }
    let m = crate::provision::open_model(&crate::weights::ModelSpec {
        spec: spec.to_string(),
        revision: revision.map(str::to_string),
        offline,
        local_only: false,
    })?;
    let v = m
        .config_json()
        .ok_or_else(|| Error::InvalidArgument(format!("{spec}: no config.json found")))?;
    LlamaConfig::from_json(v, p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rank: usize, dash: Option<usize>) -> ParamPlan {
        ParamPlan {
            rank,
            targets: ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
            dash_s: dash,
        }
    }

    #[test]
    fn reproduces_the_papers_params_column() {
        let l1 = LlamaConfig::builtin("llama-7b").unwrap();
        let got: Vec<String> = [4, 8, 16, 32, 64]
            .iter()
            .map(|&r| pct2(count(&l1, &plan(r, None)).unwrap().pct_nominal, false))
            .collect();
        assert_eq!(got, ["0.10", "0.21", "0.42", "0.83", "1.66"]);
        let d = count(&l1, &plan(32, Some(8))).unwrap();
        assert_eq!(d.dash_trainable, 1280);
        assert_eq!(d.frozen_stored, d.lora_trainable / 32 * 8);
        let l2 = LlamaConfig::builtin("llama2-7b").unwrap();
        let l3 = LlamaConfig::builtin("llama3-8b").unwrap();
        let peft = |c: &LlamaConfig, r| pct2(count(c, &plan(r, None)).unwrap().pct_peft, true);
        assert_eq!([peft(&l2, 16), peft(&l2, 32)], ["0.41", "0.82"]);
        assert_eq!([peft(&l3, 16), peft(&l3, 32)], ["0.35", "0.70"]);
    }

    #[test]
    fn rounding_helpers() {
        assert_eq!(round_sig(6_738_415_616, 3), 6_740_000_000);
        assert_eq!(round_sig(8_030_261_248, 3), 8_030_000_000);
        assert_eq!(pct2(1.66504, false), "1.67");
        assert_eq!(pct2(0.8256, true), "0.82");
    }

    #[test]
    fn unknown_targets_are_refused() {
        let l1 = LlamaConfig::builtin("llama-7b").unwrap();
        let mut p = plan(4, None);
        p.targets.push("attn".into());
        assert!(count(&l1, &p).is_err());
    }
}
