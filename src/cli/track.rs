use super::{progress_bar, OutputArgs};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::inspect::InspectOptions;
use tsd::linalg::cache::SvdCache;
use tsd::output::{to_json, track_csv, track_table, Format};
use tsd::track::{open_reference, track};

#[derive(Args, Debug)]
pub struct TrackArgs {
    /// Run directory written by `tsd train`.
    run: PathBuf,
    /// Reference for capture metrics: a run directory (its newest checkpoint; a full fine-tune gives
    /// ΔW* = W* − W), an adapter, or a model [default: none, no capture metrics]
    #[arg(long)]
    reference: Option<String>,
    /// Base model [default: the run's own]
    #[arg(long)]
    base: Option<String>,
    /// TSDs per module (the top-s change rates).
    #[arg(long, default_value_t = 8)]
    top_s: usize,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: TrackArgs) -> Result<()> {
    let base = a
        .base
        .as_ref()
        .map(|b| tsd::weights::open_model(&tsd::weights::ModelSpec::new(b)))
        .transpose()?;
    let reference = a.reference.as_deref().map(open_reference).transpose()?;
    let n = tsd::train::trainer::list_checkpoints(&a.run)?.len();
    let pb = progress_bar(n as u64, "track", a.quiet);
    let opts = InspectOptions {
        top_s: a.top_s,
        ..Default::default()
    };
    let rep = track(
        &a.run,
        base.as_deref(),
        reference.as_ref(),
        &opts,
        &SvdCache::default_location(),
        &|step| {
            pb.set_message(format!("step {step}"));
            pb.inc(1);
        },
    )?;
    pb.finish_and_clear();
    let text = match a.out.format() {
        Format::Json => to_json(&rep)? + "\n",
        Format::Csv => track_csv(&rep)?,
        Format::Table => track_table(&rep),
    };
    a.out.emit(&text)
}
