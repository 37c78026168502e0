//! clap definitions, one file per subcommand.

mod bench;
mod dash_pick;
mod eval;
mod export;
mod fetch;
mod inspect;
mod params;
mod report;
mod reproduce;
mod track;
mod train;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use tsd::device::{DeviceSpec, WeightDtype};
use tsd::render::Format;

/// Task-specific directions (TSD) for LoRA and LoRA-Dash fine-tuning.
#[derive(Parser, Debug)]
#[command(name = "tsd", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// TSD change rates, amplification and parameter counts of a PEFT adapter against its base.
    Inspect(inspect::InspectArgs),
    /// Parameter counts and Params% for LoRA / LoRA-Dash from a model config alone.
    Params(params::ParamsArgs),
    /// Re-write an adapter as a strict PEFT LoRA adapter (optionally folding LoRA-Dash into it).
    Export(export::ExportArgs),
    /// Fine-tune with LoRA, LoRA-Dash or full fine-tuning of the target modules; PEFT checkpoints.
    Train(Box<train::TrainArgs>),
    /// TSD change rates, TSD sets, capture and amplification for every checkpoint of a run.
    Track(track::TrackArgs),
    /// A self-contained HTML report of a training run (curves, throughput, directions over checkpoints).
    Report(report::ReportArgs),
    /// Commonsense accuracy of a model (+ adapter) on LLM-Adapters test sets (generate or loglik).
    Eval(Box<eval::EvalArgs>),
    /// Reproduce the paper: a LoRA / LoRA-Dash grid, evaluated, with the efficiency ratio.
    Reproduce(reproduce::ReproduceArgs),
    /// LoRA-Dash's switch on a saved PEFT LoRA adapter (for trainers outside tsd): writes the picked
    /// Ū, V̄ᵀ, indices with Δσ = 0 as a LoRA-Dash adapter in tsd's layout.
    DashPick(dash_pick::DashPickArgs),
    /// Provision the default model (SmolLM2-135M-Instruct GGUF) into the tsd cache.
    Fetch(fetch::FetchArgs),
    /// Benchmarks; results are written under reproductions/bench/.
    Bench(bench::BenchArgs),
}

/// Where a model comes from (candle-style flags).
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face revision when the model is a hub id: a branch, a tag or a full 40-hex commit
    /// sha [default: main].
    #[arg(long)]
    pub revision: Option<String>,
    /// Never use the network: the Hugging Face cache alone (also HF_HUB_OFFLINE, else
    /// TRANSFORMERS_OFFLINE, set to 1/on/yes/true).
    #[arg(long)]
    pub offline: bool,
}

/// Where to compute and the base weights' precision, shared by `train`, `eval`, `reproduce` and
/// `bench`. Unknown values are refused (exit 2).
#[derive(Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`); for train the
    /// --config file's, for reproduce the preset's when not given [default: cpu]
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceSpec>,
    /// Dtype of the frozen base weights: f32, bf16 or f16; adapter parameters, their optimizer
    /// state and the adapter's arithmetic stay f32; for train the --config file's, for reproduce
    /// the preset's when not given [default: f32]
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<WeightDtype>,
}

impl DeviceArgs {
    /// The candle device and dtype, `cpu`/`f32` where not given; refuses a bad `TSD_COMPOSED`.
    pub fn resolve(&self) -> Result<(candle_core::Device, candle_core::DType)> {
        tsd::device::check_composed_env()?;
        Ok((
            self.device.unwrap_or(DeviceSpec::Cpu).device()?,
            self.dtype.unwrap_or(WeightDtype::F32).dtype(),
        ))
    }
}

/// The null model's flags, shared by `inspect` and `track` (README, Definitions: the null of
/// direction metrics).
#[derive(Args, Debug, Clone)]
pub struct NullArgs {
    /// How TSDs are picked and captures counted: the paper's change rate |uᵀΔWv|/σ, or
    /// enrichment |uᵀΔWv| against its null (spectrum-free)
    #[arg(long, value_enum, default_value = "change-rate")]
    pub tsd_by: TsdBy,
    /// Level of the capture tests (false-discovery rate across modules) and of the enrichment
    /// threshold (family-wise within a module)
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Most Monte-Carlo draws per capture p-value [default: ⌈20·modules/alpha⌉ within 1000–20000]
    #[arg(long)]
    pub null_draws: Option<usize>,
    /// Draws per module for the enrichment threshold
    #[arg(long, default_value_t = 1000)]
    pub enrichment_draws: usize,
    /// Skip the null model (faster; no figure then stands beside its null)
    #[arg(long)]
    pub no_null: bool,
}

/// `--tsd-by`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TsdBy {
    ChangeRate,
    Enrichment,
}

impl TsdBy {
    pub fn ranking(self) -> tsd::directions::Ranking {
        match self {
            TsdBy::ChangeRate => tsd::directions::Ranking::ChangeRate,
            TsdBy::Enrichment => tsd::directions::Ranking::Enrichment,
        }
    }
}

impl NullArgs {
    /// The null's options as given (unvalidated: [`tsd::inspect::InspectOptions::validate`]).
    pub fn options(&self) -> tsd::inspect::NullOptions {
        tsd::inspect::NullOptions {
            enabled: !self.no_null,
            alpha: self.alpha,
            capture_draws: self.null_draws,
            enrichment_draws: self.enrichment_draws,
        }
    }
}

/// Output selection shared by commands that print results.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Print JSON instead of a table.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// Write the output to this file (atomically) instead of stdout [default: stdout]
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl OutputArgs {
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else if self.csv {
            Format::Csv
        } else {
            Format::Table
        }
    }

    /// Prints or writes `text`.
    pub fn emit(&self, text: &str) -> Result<()> {
        match &self.output {
            Some(p) => {
                tsd::fsutil::atomic_write(p, text.as_bytes())?;
                eprintln!("wrote {}", p.display());
            }
            None => print!("{text}"),
        }
        Ok(())
    }
}

/// A bad-input error raised by the CLI itself (exit code 2, one line).
pub fn input_error(msg: impl Into<String>) -> anyhow::Error {
    tsd::Error::InvalidArgument(msg.into()).into()
}

/// Parses `8,4`-style pairs.
pub fn parse_pair(s: &str) -> std::result::Result<(usize, usize), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("`{s}`: expected two numbers like 8,16"))?;
    let p = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("`{x}`: {e}"));
    let (a, b) = (p(a)?, p(b)?);
    if a == 0 || b == 0 {
        return Err("both numbers must be positive".into());
    }
    Ok((a, b))
}

/// A progress bar on stderr (hidden when stderr is not a terminal or when quiet).
pub fn progress_bar(len: u64, msg: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta}) {wide_msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Params(a) => params::run(a),
        Command::Export(a) => export::run(a),
        Command::Fetch(a) => fetch::run(a),
        Command::Train(a) => train::run(*a),
        Command::Track(a) => track::run(a),
        Command::Report(a) => report::run(a),
        Command::Eval(a) => eval::run(*a),
        Command::Reproduce(a) => reproduce::run(a),
        Command::Bench(a) => bench::run(a),
        Command::DashPick(a) => dash_pick::run(a),
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every flag of every subcommand has help text, and every optional value shows its default:
    /// clap's `[default: …]`, or one written in the help where the default is computed.
    #[test]
    fn every_flag_has_help_and_a_default() {
        // Flags that choose a mode or name an input, whose absence is the default.
        let no_default = ["train --resume", "train --config", "train --out"];
        let mut missing = Vec::new();
        let mut stack = vec![(String::new(), Cli::command())];
        while let Some((path, cmd)) = stack.pop() {
            for sub in cmd.get_subcommands() {
                stack.push((format!("{path} {}", sub.get_name()), sub.clone()));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                let name = arg.get_long().map_or(id.to_string(), |l| format!("--{l}"));
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let here = format!("{}{name}", path.trim_start().to_string() + " ");
                if help.trim().is_empty() {
                    missing.push(format!("{here}: no help"));
                    continue;
                }
                let takes_value = arg.get_action().takes_values();
                let optional = !arg.is_required_set() && arg.get_long().is_some();
                if takes_value
                    && optional
                    && arg.get_default_values().is_empty()
                    && !help.contains("[default: ")
                    && !no_default.contains(&here.as_str())
                {
                    missing.push(format!("{here}: no default"));
                }
            }
        }
        assert!(missing.is_empty(), "{missing:#?}");
    }
}
