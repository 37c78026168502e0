use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::names::Method;
use tsd::render::progress_bar;
use tsd::run::TrainFlags;
use tsd::train::Trainer;

/// Flags left out take their value from `--config` (when given), else from tsd's defaults, shown
/// as `[default: …]` (a test checks them against `TrainConfig::default()`).
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run directory to create (config.json, record.json, checkpoints/).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint (its config.json decides).
    #[arg(long, conflicts_with_all = ["out", "config"])]
    resume: Option<PathBuf>,
    /// A JSON TrainConfig; flags given on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: TrainFlags,
    /// No progress bar; print one line per step instead
    #[arg(long, short)]
    quiet: bool,
    /// Testing aid: abort the process (no cleanup, like a kill) after this step.
    #[arg(long, hide = true)]
    abort_after_step: Option<usize>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let mut trainer = open_trainer(&a)?;
    // SIGINT (Ctrl-C) and SIGTERM stop the run after the current step with a checkpoint saved.
    tsd::signals::install()?;
    announce(&trainer)?;
    let pb = progress_bar(trainer.total_steps as u64, "train", a.quiet);
    pb.set_position(trainer.step as u64);
    let abort = a.abort_after_step;
    // The switch happens before the first step after `dash_t`; announce it with that step.
    let dash_switch = (trainer.config.method == Method::LoraDash
        && trainer.step <= trainer.config.dash_t)
        .then_some((trainer.config.dash_t, trainer.config.dash_s));
    trainer.run(
        &mut |log| {
            if let Some((t, s)) = dash_switch.filter(|&(t, _)| log.step == t + 1) {
                // `suspend`, not `println`: a hidden bar (-q, no terminal) would drop the line.
                pb.suspend(|| eprintln!("{}", tsd::render::train::switch_line(t, s)));
            }
            pb.set_position(log.step as u64);
            pb.set_message(tsd::render::train::step_message(log));
            if a.quiet {
                eprintln!("{}", tsd::render::train::step_line(log));
            }
            if abort == Some(log.step) {
                std::process::abort();
            }
        },
        tsd::signals::stop_flag(),
    )?;
    pb.finish_and_clear();
    finish(&trainer)
}

/// A new run from the flags, or the run `--resume` names.
fn open_trainer(a: &TrainArgs) -> Result<Trainer> {
    Ok(match &a.resume {
        Some(dir) => {
            if !dir.join("config.json").exists() {
                return Err(super::input_error(format!(
                    "{} holds no run to resume (no config.json)",
                    dir.display()
                )));
            }
            Trainer::resume(dir)?
        }
        None => Trainer::new(
            a.flags.config(a.config.as_deref())?,
            a.out.as_ref().expect("clap requires --out"),
        )?,
    })
}

/// The run's one-line description (and the warmup warning) on stderr.
fn announce(trainer: &Trainer) -> Result<()> {
    eprintln!("{}", tsd::render::train::announcement(trainer));
    if let Some(w) = trainer.warmup_warning() {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// The closing line on stderr; a run stopped by a signal is an error with the signal's exit code.
fn finish(trainer: &Trainer) -> Result<()> {
    let rec = &trainer.record;
    eprintln!("{}", tsd::render::train::closing_line(trainer));
    if !rec.finished {
        if let Some(sig) = tsd::signals::received() {
            return Err(tsd::Error::Stopped {
                message: format!(
                    "stopped by {} at step {} of {}, checkpoint saved; continue with `tsd train --resume {}`",
                    sig.name(),
                    trainer.step,
                    trainer.total_steps,
                    trainer.run_dir.display()
                ),
                code: sig.exit_code(),
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command};
    use tsd::run::TrainConfig;

    /// Every `[default: X]` that names a value must be `TrainConfig::default()`'s.
    #[test]
    fn help_defaults_are_the_config_defaults() {
        let cmd = TrainArgs::augment_args(Command::new("train"));
        let defaults = serde_json::to_value(TrainConfig::default()).unwrap();
        let mut checked = 0;
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if arg.is_hide_set() {
                continue;
            }
            assert!(!help.is_empty(), "--{long} has no help text");
            let Some(shown) = help
                .split_once("[default: ")
                .and_then(|(_, r)| r.strip_suffix(']'))
            else {
                continue;
            };
            let want = match &defaults[long.replace('-', "_")] {
                serde_json::Value::Number(n) => {
                    let Ok(x) = shown.parse::<f64>() else {
                        continue;
                    };
                    assert_eq!(x as f32, n.as_f64().unwrap() as f32, "--{long}");
                    checked += 1;
                    continue;
                }
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Array(v) if !v.is_empty() => v
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
                _ => continue,
            };
            assert_eq!(shown, want, "--{long}");
            checked += 1;
        }
        assert!(checked >= 18, "only {checked} defaults checked");
    }
}
