//! `tsd train`'s lines on stderr: the run's description, the Dash switch, a step, the closing line.

use crate::names::Method;
use crate::render::thousands;
use crate::run::StepLog;
use crate::train::Trainer;

/// The run's one-line description.
pub fn announcement(trainer: &Trainer) -> String {
    let (c, rec) = (&trainer.config, &trainer.record);
    let split = if c.val_size.is_none() {
        "; validation split 10 % of the examples, at most 120, without --val-size"
    } else {
        ""
    };
    let dash = if c.method == Method::LoraDash {
        format!(
            " (LoRA A and B, and {} Δσ per adapted matrix, which train from step {})",
            c.dash_s,
            c.dash_t + 1
        )
    } else {
        String::new()
    };
    let data = rec.data.as_ref().map_or(String::new(), |d| {
        let dropped = if d.dropped_examples > 0 {
            format!(
                ", {} dropped with no token with loss after the cut",
                d.dropped_examples
            )
        } else {
            String::new()
        };
        format!(
            "; {} data, loss on {}, cut at {} tokens{dropped}",
            d.manifest.schema.label(),
            d.loss_on.as_str(),
            d.max_length
        )
    });
    format!(
        "tsd train: {} on {} ({} train / {} val examples{split}{data}), {} steps from step {}, trainable {} parameters{dash}, run dir {}",
        c.method.as_str(),
        rec.base,
        rec.train_examples,
        rec.val_examples,
        trainer.total_steps,
        trainer.step,
        thousands(rec.trainable_params),
        trainer.run_dir.display()
    )
}

/// The Dash switch after step `t` with `s` directions per module.
pub fn switch_line(t: usize, s: usize) -> String {
    format!(
        "LoRA-Dash: switched after step {t}: the top {s} task-specific directions of each module are frozen, their Δσ train from step {}",
        t + 1
    )
}

/// The progress bar's message for a step.
pub fn step_message(log: &StepLog) -> String {
    format!(
        "loss {:.4} lr {:.2e} {:.0} tok/s",
        log.loss, log.lr, log.tokens_per_s
    )
}

/// A step's line when there is no progress bar (`--quiet`).
pub fn step_line(log: &StepLog) -> String {
    format!(
        "step {} loss {:.4} lr {:.3e} tok/s {:.0}",
        log.step, log.loss, log.lr, log.tokens_per_s
    )
}

/// The closing line: losses, peak memory, checkpoints.
pub fn closing_line(trainer: &Trainer) -> String {
    let rec = &trainer.record;
    let first = rec.steps.first().map_or(f64::NAN, |s| s.loss);
    let last = rec.steps.last().map_or(f64::NAN, |s| s.loss);
    format!(
        "{} at step {}: loss {first:.4} → {last:.4}{}, peak RSS {:.0} MiB, checkpoints {:?}",
        if rec.finished { "finished" } else { "stopped" },
        trainer.step,
        rec.val
            .last()
            .map_or(String::new(), |v| format!(", val loss {:.4}", v.loss)),
        rec.peak_rss_bytes as f64 / (1 << 20) as f64,
        rec.checkpoints
    )
}
