use super::progress_bar;
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use tsd::inspect::InspectOptions;
use tsd::linalg::cache::SvdCache;
use tsd::track::{open_reference, track};
use tsd::train::RunRecord;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directory written by `tsd train`.
    run: PathBuf,
    /// Reference for TSD capture along training: a run directory, adapter or model [default: none]
    #[arg(long)]
    reference: Option<String>,
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
    let rec: RunRecord = tsd::fsutil::read_json(&a.run.join("record.json"))
        .with_context(|| format!("{} is not a tsd run directory", a.run.display()))?;
    let has_checkpoints = !tsd::train::trainer::list_checkpoints(&a.run)?.is_empty();
    let tr = if a.no_track || !has_checkpoints || rec.config.method == tsd::train::Method::Full {
        None
    } else {
        let reference = a.reference.as_deref().map(open_reference).transpose()?;
        let n = tsd::train::trainer::list_checkpoints(&a.run)?.len();
        let pb = progress_bar(n as u64, "track", a.quiet);
        let t = track(
            &a.run,
            None,
            reference.as_ref(),
            &InspectOptions::default(),
            &SvdCache::default_location(),
            &|_| pb.inc(1),
        )?;
        pb.finish_and_clear();
        let json = tsd::output::to_json(&t.points)? + "\n";
        tsd::fsutil::atomic_write(&a.run.join("track.json"), json.as_bytes())?;
        Some(t)
    };
    let html = tsd::report::pages::run_html(&a.run.display().to_string(), &rec, tr.as_ref())?;
    let out = a.output.unwrap_or_else(|| a.run.join("report.html"));
    tsd::fsutil::atomic_write(&out, html.as_bytes())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
