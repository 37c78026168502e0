//! The subcommands, one file each: parse → plan → call the library → render (flag groups that
//! only feed a library plan derive `clap::Args` beside it).

mod bench;
mod dash_pick;
mod data;
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
use clap::{Parser, Subcommand};

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
    DashPick(tsd::train::pick::DashPickArgs),
    /// Training data as the model sees it: `tsd data preview`.
    Data(data::DataArgs),
    /// Provision the default model (SmolLM2-135M-Instruct GGUF) into the tsd cache.
    Fetch(fetch::FetchArgs),
    /// Benchmarks; results are written under reproductions/bench/.
    Bench(bench::BenchArgs),
}

/// A bad-input error raised by the CLI itself (exit code 2, one line).
pub fn input_error(msg: impl Into<String>) -> anyhow::Error {
    tsd::Error::InvalidArgument(msg.into()).into()
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
        Command::Data(a) => data::run(a),
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
