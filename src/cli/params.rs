use super::{ModelArgs, OutputArgs};
use anyhow::Result;
use clap::Args;
use std::path::Path;
use tsd::model::LlamaConfig;
use tsd::output::{params_csv, params_table, to_json, Format, ParamsRow};
use tsd::params::{count, ParamPlan};

#[derive(Args, Debug)]
pub struct ParamsArgs {
    /// A built-in config (llama-7b, llama2-7b, llama3-8b), a config.json, a model directory or
    /// file, a Hugging Face id, or `default`. Repeatable.
    #[arg(long, required = true, num_args = 1..)]
    model: Vec<String>,
    /// LoRA rank(s), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32,64")]
    rank: Vec<usize>,
    /// Adapted modules (short names), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,up_proj,down_proj"
    )]
    targets: Vec<String>,
    /// Also count LoRA-Dash with this many directions per matrix [default: LoRA only]
    #[arg(long)]
    dash_s: Option<usize>,
    #[command(flatten)]
    src: ModelArgs,
    #[command(flatten)]
    out: OutputArgs,
}

fn load_config(spec: &str, src: &ModelArgs) -> Result<LlamaConfig> {
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
        let v: serde_json::Value = tsd::fsutil::read_json(&json_path)?;
        return Ok(LlamaConfig::from_json(v, &json_path)?);
    }
    if !p.exists() && spec != "default" && tsd::provision::hub::looks_like_repo_id(spec) {
        let f = tsd::provision::hub::fetch_file(
            spec,
            src.revision.as_deref(),
            src.offline,
            "config.json",
        )?;
        let v: serde_json::Value = tsd::fsutil::read_json(&f)?;
        return Ok(LlamaConfig::from_json(v, &f)?);
    }
    let m = tsd::provision::open_model(&tsd::weights::ModelSpec {
        spec: spec.to_string(),
        revision: src.revision.clone(),
        offline: src.offline,
        local_only: false,
    })?;
    let v = m
        .config_json()
        .ok_or_else(|| super::input_error(format!("{spec}: no config.json found")))?;
    Ok(LlamaConfig::from_json(v, p)?)
}

pub fn run(a: ParamsArgs) -> Result<()> {
    if a.rank.contains(&0) {
        return Err(super::input_error("--rank values must be positive"));
    }
    let mut rows = Vec::new();
    for m in &a.model {
        let cfg = load_config(m, &a.src)?;
        for &r in &a.rank {
            let plan = ParamPlan {
                rank: r,
                targets: a.targets.clone(),
                dash_s: None,
            };
            rows.push(ParamsRow {
                model: m.clone(),
                counts: count(&cfg, &plan)?,
            });
            if let Some(s) = a.dash_s {
                rows.push(ParamsRow {
                    model: format!("{m} +Dash"),
                    counts: count(
                        &cfg,
                        &ParamPlan {
                            dash_s: Some(s),
                            ..plan
                        },
                    )?,
                });
            }
        }
    }
    let text = match a.out.format() {
        Format::Json => to_json(&rows)? + "\n",
        Format::Csv => params_csv(&rows)?,
        Format::Table => params_table(&rows),
    };
    a.out.emit(&text)
}
