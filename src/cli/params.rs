use anyhow::Result;
use clap::Args;
use tsd::params::{count, load_config, ParamPlan, ParamsRow};
use tsd::render::params::{params_csv, params_table};
use tsd::render::OutputArgs;
use tsd::render::{to_json, Format};
use tsd::weights::ModelArgs;

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

pub fn run(a: ParamsArgs) -> Result<()> {
    if a.rank.contains(&0) {
        return Err(super::input_error("--rank values must be positive"));
    }
    let mut rows = Vec::new();
    for m in &a.model {
        let cfg = load_config(m, a.src.revision.as_deref(), a.src.offline)?;
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
    Ok(a.out.emit(&text)?)
}
