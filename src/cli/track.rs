//! `tsd track`: flags → [`TrackPlan`] → open → track → render; [`RunArgs`] is shared with
//! `tsd report`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::inspect::InspectOptions;
use tsd::inspect::NullArgs;
use tsd::render::track::{track_csv, track_table};
use tsd::render::{progress_bar, OutputArgs};
use tsd::render::{to_json, Format};
use tsd::run::Run;
use tsd::track::{TrackPlan, TrackReport};
use tsd::weights::ModelSpec;

/// Where a run is and what to analyse it against (shared by `track` and `report`).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run directory: `tsd train`'s, a Hugging Face Trainer output directory (checkpoint-N/), or a
    /// directory of adapter directories.
    pub run: PathBuf,
    /// Base model [default: the run's declared base — tsd's --model, else the adapters'
    /// base_model_name_or_path and revision — when it resolves locally]
    #[arg(long)]
    pub base: Option<String>,
    /// Hugging Face revision of --base when it is a hub id [default: main]
    #[arg(long, requires = "base")]
    pub revision: Option<String>,
    /// Refuse (exit 2) a --base that cannot be shown to be the run's declared base (by the run
    /// record's sha256, else by name or path) instead of warning
    #[arg(long, requires = "base")]
    pub strict_base: bool,
    /// The adapter subfolder to read in each checkpoint (PEFT's folder for a named adapter)
    /// [default: the checkpoint's root, else its only adapter subfolder]
    #[arg(long)]
    pub adapter_name: Option<String>,
    /// Reference for capture metrics: a run directory of any layout (its newest checkpoint; a tsd
    /// full fine-tune gives ΔW* = W* − W), an adapter, or a model [default: none]
    #[arg(long)]
    pub reference: Option<String>,
}

impl RunArgs {
    /// The track plan with TSD sets of `top_s` (the null's flags are checked when it opens).
    pub fn plan(&self, top_s: usize, null: &NullArgs) -> TrackPlan {
        TrackPlan {
            run: self.run.clone(),
            adapter_name: self.adapter_name.clone(),
            base: self.base.as_ref().map(|b| ModelSpec {
                spec: b.clone(),
                revision: self.revision.clone(),
                offline: false,
                local_only: false,
            }),
            strict_base: self.strict_base,
            reference: self.reference.clone(),
            opts: InspectOptions {
                top_s,
                tsd_by: null.tsd_by.ranking(),
                null: null.options(),
                ..Default::default()
            },
        }
    }
}

/// Tracks an opened run by `plan`, warnings on stderr (progress bar unless `quiet`).
pub fn track(plan: &TrackPlan, run: &Run, quiet: bool) -> Result<TrackReport> {
    let opened = plan.open(run, &warn)?;
    let pb = progress_bar(run.checkpoints.len() as u64, "track", quiet);
    let rep = opened.run(run, &|step| {
        pb.set_message(format!("step {step}"));
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    // Checkpoints that vanished while they were read (the rest was warned about at open).
    for w in rep.skipped.iter().skip(run.skipped.len()) {
        warn(w);
    }
    Ok(rep)
}

/// A warning on stderr.
pub fn warn(w: &str) {
    eprintln!("warning: {w}");
}

#[derive(Args, Debug)]
pub struct TrackArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Size s of the TSD sets (top-s per module by --tsd-by).
    #[arg(long, default_value_t = 8)]
    top_s: usize,
    #[command(flatten)]
    null: NullArgs,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: TrackArgs) -> Result<()> {
    if a.top_s == 0 {
        anyhow::bail!("--top-s must be positive");
    }
    let plan = a.run.plan(a.top_s, &a.null);
    let run = plan.open_run(&warn)?;
    let rep = track(&plan, &run, a.quiet)?;
    let text = match a.out.format() {
        Format::Json => to_json(&rep)? + "\n",
        Format::Csv => track_csv(&rep)?,
        Format::Table => track_table(&rep),
    };
    Ok(a.out.emit(&text)?)
}
