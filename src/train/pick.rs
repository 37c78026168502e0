//! `tsd dash-pick`: LoRA-Dash's switch on a saved adapter, for trainers outside tsd (the Python
//! `tsd.LoraDash` callback). The same code as `tsd train`'s switch ([`super::switch`]): every
//! module's base weight in f32, its SVD through the cache, δ̂ of the adapter's `(α/r)·B·A`, the
//! top-s directions; the result is written as a LoRA-Dash adapter in tsd's layout (README,
//! Adapter formats) with Δσ = 0, whose `tsd_dash.safetensors` holds Ū, V̄ᵀ, the indices, σ and δ̂.

use super::switch::{start_dash_all, DEFAULT_SVD_BUDGET};
use crate::adapter::{read_adapter, write_adapter, Adapter};
use crate::directions::DashPick;
use crate::error::{Error, Result};
use crate::nn::adapted::DashSwitch;
use crate::nn::AdaptedLinear;
use crate::run::base::{open_base, DeclaredBase};
use crate::svd_cache::SvdCache;
use crate::weights::{ModelSpec, WeightSource};
use candle_core::{Device, Tensor};
use std::path::PathBuf;

/// Version of `tsd dash-pick --json`'s output.
pub const DASH_PICK_SCHEMA: u32 = 1;

/// What `tsd dash-pick` does, validated by [`pick_dash`].
pub struct DashPickPlan {
    /// The adapter directory (the state at the switch) and which adapter of it.
    pub adapter: PathBuf,
    pub adapter_name: Option<String>,
    /// The base given (`None`: the adapter's declared base) and whether to stay offline.
    pub base: Option<ModelSpec>,
    pub offline: bool,
    /// Directions per module (s) and how they are ranked.
    pub s: usize,
    pub pick: DashPick,
    /// Whether the SVD cache is read and written.
    pub cache: bool,
    /// Where the picks are written, as a LoRA-Dash adapter with Δσ = 0.
    pub out: PathBuf,
}

/// Picks the directions of `plan.adapter` and writes them to `plan.out`; `warn` sees the
/// declared-base warning, if any. Returns each module's switch record.
pub fn pick_dash(plan: &DashPickPlan, warn: &dyn Fn(&str)) -> Result<Vec<DashSwitch>> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    if plan.s == 0 {
        return bad("--dash-s must be positive".into());
    }
    if !(0.0..1.0).contains(&plan.pick.floor.relative) {
        return bad("--sigma-floor must be in [0, 1)".into());
    }
    let mut adapter = read_adapter(&plan.adapter, plan.adapter_name.as_deref())?;
    if adapter.has_dash() {
        let p = plan.adapter.display();
        return bad(format!(
            "{p}: already LoRA-Dash; a loaded adapter is never re-identified"
        ));
    }
    if adapter.config.fan_in_fan_out {
        return bad("fan_in_fan_out adapters are not supported by dash-pick".into());
    }
    let declared = DeclaredBase::of_adapter(&adapter.path, &adapter.config);
    let who = adapter.path.display().to_string();
    let opened = open_base(
        plan.base.as_ref(),
        "--base",
        &who,
        declared.as_ref(),
        false,
        plan.offline,
    )?;
    if let Some(w) = &opened.warning {
        warn(w);
    }
    let mut linears = adapted_linears(&adapter, opened.source.as_ref())?;
    let cache = if plan.cache {
        SvdCache::default_location()
    } else {
        SvdCache::disabled()
    };
    let logs = start_dash_all(
        linears.iter_mut().collect(),
        plan.s,
        plan.pick,
        &cache,
        DEFAULT_SVD_BUDGET,
    )?;
    for (m, lin) in adapter.modules.iter_mut().zip(&linears) {
        m.dash = lin.to_module_adapter()?.expect("LoRA module").dash;
    }
    std::fs::create_dir_all(&plan.out).map_err(|e| Error::io(&plan.out, e))?;
    write_adapter(&plan.out, &adapter)?;
    Ok(logs)
}

/// One frozen linear per module of `adapter`, with its A, B and scaling loaded.
fn adapted_linears(adapter: &Adapter, base: &dyn WeightSource) -> Result<Vec<AdaptedLinear>> {
    let mut linears = Vec::with_capacity(adapter.modules.len());
    for m in &adapter.modules {
        let w = base.matrix(&format!("{}.weight", m.module))?;
        let (out, inp) = m.shape();
        if (w.rows, w.cols) != (out, inp) {
            let (r, c) = (w.rows, w.cols);
            let why = format!(
                "base weight {r}x{c}, adapter implies {out}x{inp}: is this the right base?"
            );
            return Err(Error::shape(&m.module, why));
        }
        let w = Tensor::from_vec(w.data, (out, inp), &Device::Cpu)?;
        let mut lin = AdaptedLinear::frozen(m.module.clone(), w);
        lin.add_lora(m.r, m.alpha, false, 0)?;
        lin.load_module_adapter(m)?;
        // The adapter's own scaling (rsLoRA, patterns), whatever add_lora computed.
        lin.lora.as_mut().expect("just added").scaling = m.scaling;
        linears.push(lin);
    }
    Ok(linears)
}

#[derive(clap::Args, Debug)]
pub struct DashPickArgs {
    /// Adapter directory (PEFT LoRA: adapter_config.json + adapter_model.safetensors), the state
    /// at the switch.
    pub adapter: PathBuf,
    /// Directory to write the picks to, as a LoRA-Dash adapter with Δσ = 0 (tsd_dash.safetensors
    /// beside its fold).
    #[arg(long)]
    pub out: PathBuf,
    /// Which adapter of the directory: `default` (its root) or a PEFT subfolder name [default:
    /// the only one there is]
    #[arg(long)]
    pub adapter_name: Option<String>,
    /// Base model: a directory, .safetensors, .gguf, a Hugging Face id, or `default` [default: the
    /// adapter's base_model_name_or_path, when it resolves locally]
    #[arg(long, alias = "model")]
    pub base: Option<String>,
    /// Directions per module (s), as `tsd train --dash-s`.
    #[arg(long, default_value_t = 8)]
    pub dash_s: usize,
    /// Relative σ floor in δ̂, as `tsd train --sigma-floor` (0 = official).
    #[arg(long, default_value_t = 0.0)]
    pub sigma_floor: f64,
    /// How directions are ranked, as `tsd train --dash-pick`.
    #[arg(long, value_enum, default_value = "change-rate")]
    pub dash_pick: crate::directions::TsdBy,
    /// Do not read or write the SVD cache ($TSD_HOME/svd).
    #[arg(long)]
    pub no_cache: bool,
    /// Print a JSON summary (schema_version, modules, their indices, σ and δ̂) on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: crate::weights::ModelArgs,
}

impl DashPickArgs {
    /// The plan the flags describe (validated by [`pick_dash`]).
    pub fn plan(&self) -> DashPickPlan {
        DashPickPlan {
            adapter: self.adapter.clone(),
            adapter_name: self.adapter_name.clone(),
            base: self.base.as_ref().map(|b| ModelSpec {
                spec: b.clone(),
                revision: self.model.revision.clone(),
                offline: self.model.offline,
                local_only: false,
            }),
            offline: self.model.offline,
            s: self.dash_s,
            pick: crate::directions::DashPick {
                floor: crate::directions::SigmaFloor {
                    relative: self.sigma_floor,
                },
                by: self.dash_pick.ranking(),
            },
            cache: !self.no_cache,
            out: self.out.clone(),
        }
    }
}
