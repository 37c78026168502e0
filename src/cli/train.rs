use super::{progress_bar, DeviceArgs};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tsd::train::{Method, TrainConfig, Trainer};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run directory (config.json, record.json, checkpoints/).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its newest checkpoint.
    #[arg(long, conflicts_with_all = ["out", "config"])]
    resume: Option<PathBuf>,
    /// A JSON TrainConfig; flags given on the command line override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Base model: path, Hugging Face id, or `default`.
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    revision: Option<String>,
    /// Training data: LLM-Adapters JSON files or task directories (comma-separated).
    #[arg(long, value_delimiter = ',')]
    data: Vec<String>,
    /// lora, lora-dash or full.
    #[arg(long)]
    method: Option<Method>,
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA α (default 2·rank).
    #[arg(long)]
    alpha: Option<f64>,
    #[arg(long)]
    rslora: bool,
    #[arg(long)]
    dropout: Option<f32>,
    /// Target modules, comma-separated.
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Adapt only the top K layers.
    #[arg(long)]
    top_layers: Option<usize>,
    /// LoRA-Dash directions per module.
    #[arg(long)]
    dash_s: Option<usize>,
    /// LoRA-Dash switch step (optimizer steps of plain LoRA first).
    #[arg(long)]
    dash_t: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long)]
    epochs: Option<f64>,
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    micro_batch_size: Option<usize>,
    #[arg(long)]
    cutoff_len: Option<usize>,
    /// Loss on the whole sequence (true, the protocol's default) or the response only.
    #[arg(long)]
    train_on_inputs: Option<bool>,
    #[arg(long)]
    val_size: Option<usize>,
    #[arg(long)]
    max_examples: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every N optimizer steps.
    #[arg(long)]
    save_every: Option<usize>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[command(flatten)]
    dev: DeviceArgs,
    /// Shorthand for --device cpu.
    #[arg(long, conflicts_with = "device")]
    cpu: bool,
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
        val_size,
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
    if a.max_examples.is_some() {
        c.max_examples = a.max_examples;
    }
    if a.eval_every.is_some() {
        c.eval_every = a.eval_every;
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
    let mut trainer = match &a.resume {
        Some(dir) => {
            if !dir.join("config.json").exists() {
                bail!("{} holds no run to resume (no config.json)", dir.display());
            }
            Trainer::resume(dir)?
        }
        None => Trainer::new(
            build_config(&a)?,
            a.out.as_ref().expect("clap requires --out"),
        )?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while saving falls through to the default handler only after the save.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("\ntsd: already stopping; the checkpoint is being written");
            } else {
                eprintln!("\ntsd: stopping after this step and saving a checkpoint…");
            }
        });
    }
    eprintln!(
        "tsd train: {} on {} ({} train / {} val examples), {} steps from step {}, trainable {} parameters, run dir {}",
        serde_json::to_string(&trainer.config.method)?.trim_matches('"'),
        trainer.record.base,
        trainer.record.train_examples,
        trainer.record.val_examples,
        trainer.total_steps,
        trainer.step,
        trainer.record.trainable_params,
        trainer.run_dir.display()
    );
    let pb = progress_bar(trainer.total_steps as u64, "train", a.quiet);
    pb.set_position(trainer.step as u64);
    let abort = a.abort_after_step;
    trainer.run(
        &mut |log| {
            pb.set_position(log.step as u64);
            pb.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                log.loss, log.lr, log.tokens_per_s
            ));
            if a.quiet {
                eprintln!(
                    "step {} loss {:.4} lr {:.3e} tok/s {:.0}",
                    log.step, log.loss, log.lr, log.tokens_per_s
                );
            }
            if abort == Some(log.step) {
                std::process::abort();
            }
        },
        &stop,
    )?;
    pb.finish_and_clear();
    let rec = &trainer.record;
    let first = rec.steps.first().map_or(f64::NAN, |s| s.loss);
    let last = rec.steps.last().map_or(f64::NAN, |s| s.loss);
    eprintln!(
        "{} at step {}: loss {first:.4} → {last:.4}{}, peak RSS {:.0} MiB, checkpoints {:?}",
        if rec.finished { "finished" } else { "stopped" },
        trainer.step,
        rec.val
            .last()
            .map_or(String::new(), |v| format!(", val loss {:.4}", v.loss)),
        rec.peak_rss_bytes as f64 / (1 << 20) as f64,
        rec.checkpoints
    );
    Ok(())
}
