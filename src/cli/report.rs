//! `tsd report`: flags → [`ReportPlan`] → the run's curves and track → the HTML page.

use super::track::{track, warn};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use tsd::inspect::InspectOptions;
use tsd::render::run::{run_html, RunPage};
use tsd::track::RunArgs;
use tsd::track::{read_saved_track, ReportPlan, ReportTrack};

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    null: tsd::inspect::NullArgs,
    /// Render this saved track record (`tsd track RUN --json -o FILE`) instead of tracking the
    /// run's checkpoints [default: track them and save the record beside the report as
    /// FILE.track.json, named after the report (report.track.json for report.html)]
    #[arg(long, value_name = "FILE", conflicts_with = "no_track")]
    track: Option<PathBuf>,
    /// Skip the per-checkpoint direction analysis (curves only).
    #[arg(long)]
    no_track: bool,
    /// Output file [default: RUN/report.html]
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: ReportArgs) -> Result<()> {
    let plan = ReportPlan {
        track: a.run.plan(InspectOptions::default().top_s, &a.null),
        saved_track: a.track.clone(),
        no_track: a.no_track,
        output: a.output.clone(),
    };
    let run = plan.track.open_run(&warn)?;
    let record = run.record()?;
    let curves = run.curves()?;
    let out = plan.output();
    let track = match plan.track_source(&run) {
        ReportTrack::Saved(f) => Some(read_saved_track(&f, &run)?),
        ReportTrack::Skip => None,
        ReportTrack::Track => {
            let t = track(&plan.track, &run, a.quiet)?;
            let saved = tsd::render::run::track_path_for(&out);
            tsd::fsutil::write_json(&saved, &t)?;
            eprintln!("wrote {}", saved.display());
            Some(t)
        }
    };
    if curves.is_none() && track.is_none() {
        bail!(
            "{}: nothing to report: no curves (record.json, trainer_state.json) and no checkpoint to track",
            run.dir.display()
        );
    }
    let html = run_html(&RunPage {
        run: &plan.track.run.display().to_string(),
        kind: run.kind,
        checkpoints: run.checkpoints.iter().map(|c| c.name.clone()).collect(),
        skipped: &run.skipped,
        record: record.as_ref(),
        curves: curves.as_ref(),
        track: track.as_ref(),
    })?;
    tsd::fsutil::atomic_write(&out, html.as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
