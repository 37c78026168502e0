//! `tsd dash-pick`: its flags; the work is [`tsd::train::pick`]'s.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::directions::TsdBy;
use tsd::train::pick::{pick_dash, DashPickPlan, DASH_PICK_SCHEMA};
use tsd::weights::ModelArgs;
use tsd::weights::ModelSpec;

#[derive(Args, Debug)]
pub struct DashPickArgs {
    /// Adapter directory (PEFT LoRA: adapter_config.json + adapter_model.safetensors), the state
    /// at the switch.
    adapter: PathBuf,
    /// Directory to write the picks to, as a LoRA-Dash adapter with Δσ = 0 (tsd_dash.safetensors
    /// beside its fold).
    #[arg(long)]
    out: PathBuf,
    /// Which adapter of the directory: `default` (its root) or a PEFT subfolder name [default:
    /// the only one there is]
    #[arg(long)]
    adapter_name: Option<String>,
    /// Base model: a directory, .safetensors, .gguf, a Hugging Face id, or `default` [default: the
    /// adapter's base_model_name_or_path, when it resolves locally]
    #[arg(long, alias = "model")]
    base: Option<String>,
    /// Directions per module (s), as `tsd train --dash-s`.
    #[arg(long, default_value_t = 8)]
    dash_s: usize,
    /// Relative σ floor in δ̂, as `tsd train --sigma-floor` (0 = official).
    #[arg(long, default_value_t = 0.0)]
    sigma_floor: f64,
    /// How directions are ranked, as `tsd train --dash-pick`.
    #[arg(long, value_enum, default_value = "change-rate")]
    dash_pick: TsdBy,
    /// Do not read or write the SVD cache ($TSD_HOME/svd).
    #[arg(long)]
    no_cache: bool,
    /// Print a JSON summary (schema_version, modules, their indices, σ and δ̂) on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(a: DashPickArgs) -> Result<()> {
    let plan = DashPickPlan {
        adapter: a.adapter.clone(),
        adapter_name: a.adapter_name.clone(),
        base: a.base.as_ref().map(|b| ModelSpec {
            spec: b.clone(),
            revision: a.model.revision.clone(),
            offline: a.model.offline,
            local_only: false,
        }),
        offline: a.model.offline,
        s: a.dash_s,
        pick: tsd::directions::DashPick {
            floor: tsd::directions::SigmaFloor {
                relative: a.sigma_floor,
            },
            by: a.dash_pick.ranking(),
        },
        cache: !a.no_cache,
        out: a.out.clone(),
    };
    let logs = pick_dash(&plan, &super::track::warn)?;
    eprintln!(
        "picked {} direction(s) in each of {} module(s); wrote {}",
        a.dash_s,
        logs.len(),
        a.out.display()
    );
    if a.json {
        let v = serde_json::json!({
            "schema_version": DASH_PICK_SCHEMA,
            "s": a.dash_s,
            "out": a.out,
            "modules": logs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
