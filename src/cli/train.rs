use super::{progress_bar, DeviceArgs};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use tsd::names::Method;
use tsd::run::TrainConfig;
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
    /// Base model: path, Hugging Face id, or `default` (SmolLM2-135M-Instruct) [default: default]
    #[arg(long)]
    model: Option<String>,
    /// Hugging Face revision (branch, tag or commit) when --model is a hub id [default: main]
    #[arg(long)]
    revision: Option<String>,
    /// Training data: LLM-Adapters JSON files or task directories holding train.json, comma-separated [default: --config's data; one is required]
    #[arg(long, value_delimiter = ',')]
    data: Vec<String>,
    /// What is trained: lora, lora-dash or full (the target matrices themselves) [default: lora-dash]
    #[arg(long)]
    method: Option<Method>,
    /// LoRA rank r [default: 8]
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA α; the scaling is α/r (α/√r with --rslora) [default: 2·rank]
    #[arg(long)]
    alpha: Option<f64>,
    /// Scale the LoRA update by α/√r (rsLoRA) instead of α/r
    #[arg(long)]
    rslora: bool,
    /// Dropout on the LoRA input [default: 0.05]
    #[arg(long)]
    dropout: Option<f32>,
    /// Target modules by short name, comma-separated [default: q_proj,k_proj,v_proj,up_proj,down_proj]
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Adapt only the top K layers (the lower ones stay frozen) [default: all layers]
    #[arg(long)]
    top_layers: Option<usize>,
    /// LoRA-Dash: directions frozen per module at the switch [default: 8]
    #[arg(long)]
    dash_s: Option<usize>,
    /// LoRA-Dash: optimizer steps of plain LoRA before the switch; must be below the run's steps [default: 100]
    #[arg(long)]
    dash_t: Option<usize>,
    /// LoRA-Dash: how the switch ranks directions — the paper's change rate |uᵀΔWv|/σ, or
    /// enrichment |uᵀΔWv| (spectrum-free; an ablation) [default: change-rate]
    #[arg(long, value_enum)]
    dash_pick: Option<super::TsdBy>,
    /// Peak learning rate (AdamW) [default: 0.0002]
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW decoupled weight decay [default: 0]
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Linear warm-up from 0 over this many optimizer steps, then linear decay to 0 [default: 100]
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Passes over the training data (ignored with --max-steps) [default: 3]
    #[arg(long)]
    epochs: Option<f64>,
    /// Stop after this many optimizer steps, overriding --epochs [default: from --epochs]
    #[arg(long)]
    max_steps: Option<usize>,
    /// Examples per optimizer step [default: 16]
    #[arg(long)]
    batch_size: Option<usize>,
    /// Examples per forward pass; gradient accumulation = batch / micro batch [default: 4]
    #[arg(long)]
    micro_batch_size: Option<usize>,
    /// Longest tokenized example, in tokens (longer ones are cut) [default: 256]
    #[arg(long)]
    cutoff_len: Option<usize>,
    /// Loss on the whole sequence (true, the protocol's choice) or the response only [default: true]
    #[arg(long)]
    train_on_inputs: Option<bool>,
    /// Examples held out for validation loss; must leave a training example [default: 10 % of the examples, at most 120]
    #[arg(long)]
    val_size: Option<usize>,
    /// Use only the first N examples of each data file [default: all]
    #[arg(long)]
    max_examples: Option<usize>,
    /// Seed for initialisation, shuffling, dropout and the validation split [default: 42]
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every N optimizer steps (and at the end) [default: 100]
    #[arg(long)]
    save_every: Option<usize>,
    /// Validation loss every N optimizer steps [default: at the end only]
    #[arg(long)]
    eval_every: Option<usize>,
    /// Start A and B from this PEFT LoRA adapter directory (same modules, ranks and α) instead of
    /// tsd's seeded initialisation, e.g. one PEFT initialised [default: tsd's initialisation]
    #[arg(long, value_name = "DIR")]
    init_adapter: Option<String>,
    /// JSON file fixing the data order: a list of micro-batches, each a list of indices into the
    /// training examples (after the validation split); batch g is entry g modulo its length
    /// [default: tsd's seeded length-grouped shuffle]
    #[arg(long, value_name = "FILE")]
    data_order: Option<String>,
    #[command(flatten)]
    dev: DeviceArgs,
    /// Shorthand for --device cpu
    #[arg(long, conflicts_with = "device")]
    cpu: bool,
    /// No progress bar; print one line per step instead
    #[arg(long, short)]
    quiet: bool,
    /// Testing aid: abort the process (no cleanup, like a kill) after this step.
    #[arg(long, hide = true)]
    abort_after_step: Option<usize>,
}

fn build_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => tsd::fsutil::read_json::<TrainConfig>(p)?,
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { c.$f = v; } )* };
    }
    if let Some(by) = a.dash_pick {
        c.dash_pick = by.ranking();
    }
    set!(
        model,
        method,
        rank,
        dropout,
        dash_s,
        dash_t,
        lr,
        weight_decay,
        warmup_steps,
        epochs,
        batch_size,
        micro_batch_size,
        cutoff_len,
        train_on_inputs,
        seed,
        save_every
    );
    tsd::device::check_composed_env()?;
    if let Some(d) = a.dev.device {
        c.device = d.to_string();
    }
    if let Some(d) = a.dev.dtype {
        c.dtype = d.to_string();
    }
    if a.revision.is_some() {
        c.revision = a.revision.clone();
    }
    if a.alpha.is_some() {
        c.alpha = a.alpha;
    }
    if a.top_layers.is_some() {
        c.top_layers = a.top_layers;
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
    }
    if a.val_size.is_some() {
        c.val_size = a.val_size;
    }
    if a.max_examples.is_some() {
        c.max_examples = a.max_examples;
    }
    if a.eval_every.is_some() {
        c.eval_every = a.eval_every;
    }
    if a.init_adapter.is_some() {
        c.init_adapter = a.init_adapter.clone();
    }
    if a.data_order.is_some() {
        c.data_order = a.data_order.clone();
    }
    if a.rslora {
        c.use_rslora = true;
    }
    if a.cpu {
        c.device = "cpu".into();
    }
    if !a.data.is_empty() {
        c.data = a.data.clone();
    }
    if !a.targets.is_empty() {
        c.targets = a.targets.clone();
    }
    c.validate()?;
    Ok(c)
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
            build_config(a)?,
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
