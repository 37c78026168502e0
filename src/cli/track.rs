use super::{progress_bar, NullArgs, OutputArgs};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::inspect::InspectOptions;
use tsd::linalg::cache::SvdCache;
use tsd::output::{to_json, track_csv, track_table, Format};
use tsd::run::Run;
use tsd::track::{open_reference, track_run};
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
    /// Opens the run, warning about skipped directories on stderr.
    pub fn open(&self) -> Result<Run> {
        let run = Run::open(&self.run, self.adapter_name.as_deref())?;
        for w in &run.skipped {
            eprintln!("warning: {w}");
        }
        Ok(run)
    }

    /// Tracks an opened run's checkpoints with TSD sets of `top_s` (progress bar unless `quiet`).
    pub fn track(
        &self,
        run: &Run,
        top_s: usize,
        null: &NullArgs,
        quiet: bool,
    ) -> Result<tsd::track::TrackReport> {
        let (tsd_by, null) = null.plan()?;
        run.require_checkpoints()?;
        // Listed, not yet read: where tests/trainer_rotation.rs deletes a checkpoint as a Trainer's
        // save_total_limit does.
        tsd::faults::pause("track-read");
        let spec = self.base.as_ref().map(|b| ModelSpec {
            spec: b.clone(),
            revision: self.revision.clone(),
            offline: false,
            local_only: false,
        });
        let opened = run.open_base(spec.as_ref(), self.strict_base)?;
        if let Some(w) = &opened.warning {
            eprintln!("warning: {w}");
        }
        let base = opened.source;
        let reference = self.reference.as_deref().map(open_reference).transpose()?;
        let pb = progress_bar(run.checkpoints.len() as u64, "track", quiet);
        let opts = InspectOptions {
            top_s,
            tsd_by,
            null,
            ..Default::default()
        };
        let rep = track_run(
            run,
            base.as_ref(),
            reference.as_ref(),
            &opts,
            &SvdCache::default_location(),
            &|step| {
                pb.set_message(format!("step {step}"));
                pb.inc(1);
            },
        )?;
        pb.finish_and_clear();
        // Checkpoints that vanished while they were read (the rest was warned about at open).
        for w in rep.skipped.iter().skip(run.skipped.len()) {
            eprintln!("warning: {w}");
        }
        Ok(rep)
    }
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
    let run = a.run.open()?;
    let rep = a.run.track(&run, a.top_s, &a.null, a.quiet)?;
    let text = match a.out.format() {
        Format::Json => to_json(&rep)? + "\n",
        Format::Csv => track_csv(&rep)?,
        Format::Table => track_table(&rep),
    };
    a.out.emit(&text)
}
