//! `tsd track`: flags → [`TrackPlan`] → open → track → render; [`RunArgs`] (the library's) is
//! shared with `tsd report`.

use anyhow::Result;
use clap::Args;
use tsd::inspect::NullArgs;
use tsd::render::track::{track_csv, track_table};
use tsd::render::{progress_bar, OutputArgs};
use tsd::render::{to_json, Format};
use tsd::run::Run;
use tsd::track::{RunArgs, TrackPlan, TrackReport};

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
