//! `tsd inspect`: flags → [`InspectPlan`] → [`InspectPlan::open`] → run → render.

use super::parse_pair;
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::directions::SigmaFloor;
use tsd::inspect::NullArgs;
use tsd::inspect::{InspectOptions, InspectPlan};
use tsd::linalg::Precision;
use tsd::render::inspect::{inspect_csv, inspect_html, inspect_table};
use tsd::render::{progress_bar, OutputArgs};
use tsd::render::{to_json, Format};
use tsd::weights::ModelArgs;
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
    /// Capture metrics against another adapter (same base), a run directory of any layout (its
    /// newest checkpoint) or a fine-tuned model (ΔW* = W* − W) [default: none]
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

impl InspectArgs {
    /// The validated plan (exit 2 for settings no analysis can run with).
    fn plan(&self) -> Result<InspectPlan> {
        let opts = InspectOptions {
            top_s: self.top_s,
            floor: SigmaFloor {
                relative: self.sigma_floor,
            },
            precision: self.svd_precision,
            amp_rank: self.amp_rank,
            seed: self.seed,
            recall_k: self.recall_k,
            accuracy_k: self.accuracy_k,
            keep_spectrum: self.spectrum || self.html.is_some(),
            tsd_by: self.null.tsd_by.ranking(),
            null: self.null.options(),
        };
        opts.validate()?;
        Ok(InspectPlan {
            adapter: self.adapter.clone(),
            adapter_name: self.adapter_name.clone(),
            base: self.base.as_ref().map(|b| ModelSpec {
                spec: b.clone(),
                revision: self.model.revision.clone(),
                offline: self.model.offline,
                local_only: false,
            }),
            strict_base: self.strict_base,
            offline: self.model.offline,
            reference: self.reference.clone(),
            opts,
            use_cache: !self.no_cache,
        })
    }
}

pub fn run(a: InspectArgs) -> Result<()> {
    let plan = a.plan()?;
    let opened = plan.open(&|w| eprintln!("warning: {w}"))?;
    let pb = progress_bar(opened.adapter.modules.len() as u64, "inspect", a.quiet);
    let report = opened.run(&plan.opts, &|m| {
        pb.set_message(m.to_string());
        pb.inc(1);
    })?;
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
    Ok(a.out.emit(&text)?)
}
