//! `tsd dash-pick`: LoRA-Dash's switch on a saved adapter, for trainers outside tsd (the Python
//! `tsd.LoraDash` callback). The same code as `tsd train`'s switch ([`tsd::train::switch`]): every
//! module's base weight in f32, its SVD through the cache, δ̂ of the adapter's `(α/r)·B·A`, the
//! top-s directions; the result is written as a LoRA-Dash adapter in tsd's layout (README,
//! Adapter formats) with Δσ = 0, whose `tsd_dash.safetensors` holds Ū, V̄ᵀ, the indices, σ and δ̂.

use super::{ModelArgs, TsdBy};
use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;
use std::path::PathBuf;
use tsd::adapter::{read_adapter, write_adapter};
use tsd::nn::AdaptedLinear;
use tsd::svd_cache::SvdCache;
use tsd::weights::ModelSpec;

/// Version of `tsd dash-pick --json`'s output.
pub const DASH_PICK_SCHEMA: u32 = 1;

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
    if a.dash_s == 0 {
        return Err(super::input_error("--dash-s must be positive"));
    }
    if !(0.0..1.0).contains(&a.sigma_floor) {
        return Err(super::input_error("--sigma-floor must be in [0, 1)"));
    }
    let mut adapter = read_adapter(&a.adapter, a.adapter_name.as_deref())?;
    if adapter.has_dash() {
        return Err(super::input_error(format!(
            "{}: already LoRA-Dash; a loaded adapter is never re-identified",
            a.adapter.display()
        )));
    }
    if adapter.config.fan_in_fan_out {
        return Err(super::input_error(
            "fan_in_fan_out adapters are not supported by dash-pick",
        ));
    }
    let given = a.base.as_ref().map(|b| ModelSpec {
        spec: b.clone(),
        revision: a.model.revision.clone(),
        offline: a.model.offline,
        local_only: false,
    });
    let opened = tsd::run::base::open_base(
        given.as_ref(),
        "--base",
        &adapter.path.display().to_string(),
        tsd::run::base::DeclaredBase::of_adapter(&adapter.path, &adapter.config).as_ref(),
        false,
        a.model.offline,
    )?;
    if let Some(w) = &opened.warning {
        eprintln!("warning: {w}");
    }
    // One frozen linear per module with the adapter's A and B loaded, then tsd train's switch.
    let mut linears = Vec::with_capacity(adapter.modules.len());
    for m in &adapter.modules {
        let w = opened.source.matrix(&format!("{}.weight", m.module))?;
        let (out, inp) = m.shape();
        if (w.rows, w.cols) != (out, inp) {
            return Err(tsd::Error::shape(
                &m.module,
                format!(
                    "base weight {}x{}, adapter implies {out}x{inp}: is this the right base?",
                    w.rows, w.cols
                ),
            )
            .into());
        }
        let mut lin = AdaptedLinear::frozen(
            m.module.clone(),
            Tensor::from_vec(w.data, (out, inp), &Device::Cpu)?,
        );
        lin.add_lora(m.r, m.alpha, false, 0)?;
        lin.load_module_adapter(m)?;
        // The adapter's own scaling (rsLoRA, patterns), whatever add_lora computed.
        lin.lora.as_mut().expect("just added").scaling = m.scaling;
        linears.push(lin);
    }
    let cache = if a.no_cache {
        SvdCache::disabled()
    } else {
        SvdCache::default_location()
    };
    let pick = tsd::directions::DashPick {
        floor: tsd::directions::SigmaFloor {
            relative: a.sigma_floor,
        },
        by: a.dash_pick.ranking(),
    };
    let logs = tsd::train::switch::start_dash_all(
        linears.iter_mut().collect(),
        a.dash_s,
        pick,
        &cache,
        tsd::train::switch::DEFAULT_SVD_BUDGET,
    )?;
    for (m, lin) in adapter.modules.iter_mut().zip(&linears) {
        let picked = lin.to_module_adapter()?.expect("LoRA module");
        m.dash = picked.dash;
    }
    std::fs::create_dir_all(&a.out)?;
    write_adapter(&a.out, &adapter)?;
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
