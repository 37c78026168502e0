use super::{parse_pair, progress_bar, ModelArgs, NullArgs, OutputArgs};
use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};
use tsd::adapter::{load_adapter, read::is_adapter, read_adapter};
use tsd::directions::SigmaFloor;
use tsd::inspect::{inspect, InspectOptions, Reference};
use tsd::linalg::Precision;
use tsd::provision::open_model;
use tsd::render::inspect::{inspect_csv, inspect_html, inspect_table};
use tsd::render::{to_json, Format};
use tsd::svd_cache::SvdCache;
use tsd::weights::ModelSpec;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Adapter directory (adapter_config.json + adapter_model.safetensors).
    adapter: PathBuf,
    /// Which adapter of the directory: `default` (its root) or a PEFT subfolder name [default:
    /// the only one there is]
    #[arg(long)]
    adapter_name: Option<String>,
    /// Base model: a directory, .safetensors, .gguf, a Hugging Face id, or `default` [default: the
    /// adapter's base_model_name_or_path, when it resolves locally]
    #[arg(long, alias = "model")]
    base: Option<String>,
    /// Refuse (exit 2) a --base that cannot be shown to be the adapter's declared base (by name
    /// or path, or a tsd run record's sha256) instead of warning
    #[arg(long, requires = "base")]
    strict_base: bool,
    /// Capture metrics against another adapter (same base) or a fine-tuned model (ΔW* = W* − W) [default: none]
    #[arg(long)]
    reference: Option<String>,
    /// TSDs per module (the top-s by --tsd-by).
    #[arg(long, default_value_t = 8)]
    top_s: usize,
    /// Relative floor f on σ in δ = |uᵀΔWv| / max(σ, f·σ₁) (0 = the official code's choice).
    #[arg(long, default_value_t = 0.0)]
    sigma_floor: f64,
    /// Precision of the base SVD (f32 like the official code, or f64).
    #[arg(long, default_value = "f32")]
    svd_precision: Precision,
    /// r of the amplification factor [default: each module's LoRA rank]
    #[arg(long)]
    amp_rank: Option<usize>,
    /// Seed of the random reference basis.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// (k_pred,k_ref) of the recall metric.
    #[arg(long, default_value = "8,4", value_parser = parse_pair)]
    recall_k: (usize, usize),
    /// (k_pred,k_ref) of the accuracy metric.
    #[arg(long, default_value = "8,16", value_parser = parse_pair)]
    accuracy_k: (usize, usize),
    /// Include σ and δ of every direction in the JSON output.
    #[arg(long)]
    spectrum: bool,
    /// Also write a self-contained HTML report (spectra, heat maps, amplification) to this file [default: none]
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Do not read or write the SVD cache ($TSD_HOME/svd).
    #[arg(long)]
    no_cache: bool,
    /// Force CPU (the analysis always runs on the CPU; accepted for candle-style CLIs).
    #[arg(long)]
    cpu: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    null: NullArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: InspectArgs) -> Result<()> {
    if a.top_s == 0 {
        return Err(super::input_error("--top-s must be positive"));
    }
    if !(0.0..1.0).contains(&a.sigma_floor) {
        return Err(super::input_error("--sigma-floor must be in [0, 1)"));
    }
    let (tsd_by, null) = a.null.plan()?;
    let adapter = read_adapter(&a.adapter, a.adapter_name.as_deref())?;
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
        a.strict_base,
        a.model.offline,
    )?;
    if let Some(w) = &opened.warning {
        eprintln!("warning: {w}");
    }
    let base = opened.source;
    let ref_adapter;
    let ref_model;
    let reference = match &a.reference {
        None => None,
        Some(r) if is_adapter(Path::new(r)) => {
            ref_adapter = load_adapter(Path::new(r))?;
            Some((Reference::Adapter(&ref_adapter), format!("adapter {r}")))
        }
        Some(r) => {
            ref_model = open_model(&ModelSpec {
                spec: r.clone(),
                revision: None,
                offline: a.model.offline,
                local_only: false,
            })?;
            Some((
                Reference::Model(ref_model.as_ref()),
                format!("model {r} (ΔW* = W* − W)"),
            ))
        }
    };
    let opts = InspectOptions {
        top_s: a.top_s,
        floor: SigmaFloor {
            relative: a.sigma_floor,
        },
        precision: a.svd_precision,
        amp_rank: a.amp_rank,
        seed: a.seed,
        recall_k: a.recall_k,
        accuracy_k: a.accuracy_k,
        keep_spectrum: a.spectrum || a.html.is_some(),
        tsd_by,
        null,
    };
    let cache = if a.no_cache {
        SvdCache::disabled()
    } else {
        SvdCache::default_location()
    };
    let pb = progress_bar(adapter.modules.len() as u64, "inspect", a.quiet);
    let report = inspect(
        &adapter,
        base.as_ref(),
        reference.as_ref().map(|(r, n)| (r, n.clone())),
        &opts,
        &cache,
        &|m| {
            pb.set_message(m.to_string());
            pb.inc(1);
        },
    )?;
    pb.finish_and_clear();
    let text = match a.out.format() {
        Format::Json => to_json(&report)? + "\n",
        Format::Csv => inspect_csv(&report)?,
        Format::Table => inspect_table(&report),
    };
    if let Some(h) = &a.html {
        tsd::fsutil::atomic_write(h, inspect_html(&report)?.as_bytes())?;
        eprintln!("wrote {}", h.display());
    }
    if a.out.format() != Format::Table {
        // Tables carry their warnings; machine formats keep stdout clean and warn on stderr.
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    a.out.emit(&text)
}
