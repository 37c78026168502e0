//! `tsd inspect`: flags → [`tsd::inspect::InspectPlan`] → open → run → render.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::inspect::{InspectFlags, NullArgs};
use tsd::render::inspect::{inspect_csv, inspect_html, inspect_table};
use tsd::render::{progress_bar, OutputArgs};
use tsd::render::{to_json, Format};
use tsd::weights::ModelArgs;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    flags: InspectFlags,
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
    let plan = a
        .flags
        .plan(a.html.is_some(), a.no_cache, &a.null, &a.model)?;
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
