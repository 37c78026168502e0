//! `tsd eval`: the flags → an [`tsd::eval::EvalPlan`] → [`tsd::eval::evaluate`] → [`tsd::render::eval`].

use anyhow::Result;
use clap::Args;
use tsd::device::DeviceArgs;
use tsd::eval::plan::EvalFlags;
use tsd::render::{Format, OutputArgs};
use tsd::weights::ModelArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    flags: EvalFlags,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    src: ModelArgs,
    #[command(flatten)]
    dev: DeviceArgs,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let plan = a.flags.plan(&a.src, &a.dev)?;
    let bars = tsd::render::eval::Bars::new(a.quiet);
    let record = tsd::eval::evaluate(&plan, &bars)?;
    let text = match a.out.format() {
        Format::Json => tsd::render::eval::json(&record)?,
        Format::Csv => tsd::render::eval::csv(&record)?,
        Format::Table => tsd::render::eval::table(&record),
    };
    Ok(a.out.emit(&text)?)
}
