use super::track::RunArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use tsd::render::run::{run_html, RunPage};
use tsd::track::TrackReport;

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    null: super::NullArgs,
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
    let run = a.run.open()?;
    let record = run.record()?;
    let curves = run.curves()?;
    let out = a
        .output
        .clone()
        .unwrap_or_else(|| a.run.run.join("report.html"));
    let track: Option<TrackReport> = if let Some(f) = &a.track {
        let t: TrackReport = tsd::fsutil::read_json(f)?;
        t.check_matches(&run)
            .with_context(|| f.display().to_string())?;
        Some(t)
    } else if a.no_track || run.checkpoints.is_empty() || run.is_full_fine_tune() {
        None
    } else {
        let t = a.run.track(
            &run,
            tsd::inspect::InspectOptions::default().top_s,
            &a.null,
            a.quiet,
        )?;
        let saved = tsd::render::run::track_path_for(&out);
        tsd::fsutil::write_json(&saved, &t)?;
        eprintln!("wrote {}", saved.display());
        Some(t)
    };
    if curves.is_none() && track.is_none() {
        bail!(
            "{}: nothing to report: no curves (record.json, trainer_state.json) and no checkpoint to track",
            run.dir.display()
        );
    }
    let html = run_html(&RunPage {
        run: &a.run.run.display().to_string(),
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
