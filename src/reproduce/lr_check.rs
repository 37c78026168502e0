//! The learning-rate check: a short LoRA run per candidate, the lowest validation loss wins, the
//! range extended past an edge optimum (`OUT/lr-check.json`, `OUT/lr-check/<lr>/`).

use super::grid::{Cell, Grid};
use super::results::{LrCheck, LrTrial};
use crate::error::{Error, Result};
use crate::names::Method;

/// How often the lr check may extend its range past an edge optimum.
const LR_EXTENSIONS: usize = 3;

impl Grid<'_> {
    /// The learning rate: the preset's only candidate, or the check's pick (run or read).
    pub(super) fn lr(&mut self, run_missing: bool) -> Result<(f64, Option<LrCheck>)> {
        let p = self.preset;
        if !p.needs_lr_check() {
            return Ok((p.lr_candidates.first().copied().unwrap_or(2e-4), None));
        }
        let path = self.out.join("lr-check.json");
        if let Ok(c) = crate::fsutil::read_json::<LrCheck>(&path) {
            return Ok((c.chosen, Some(c)));
        }
        if !run_missing {
            return Err(Error::InvalidArgument(format!(
                "{} is missing: run the learning-rate check first (--only lr-check)",
                path.display()
            )));
        }
        let train_before = self.timing.train_s;
        let mut trials: Vec<LrTrial> = Vec::new();
        let mut queue: Vec<f64> = p.lr_candidates.clone();
        let mut extensions = 0;
        loop {
            for lr in std::mem::take(&mut queue) {
                if !trials.iter().any(|t| t.lr == lr) {
                    trials.push(self.lr_trial(lr)?);
                }
            }
            // An optimum at the edge of the tried range says little: extend it by ×2 (≤ 3 times).
            trials.sort_by(|a, b| a.lr.total_cmp(&b.lr));
            let best = trials
                .iter()
                .enumerate()
                .filter_map(|(i, t)| Some((i, t.val_loss?)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            match best {
                Some(i) if extensions < LR_EXTENSIONS && i + 1 == trials.len() => {
                    queue.push(trials[i].lr * 2.0)
                }
                Some(0) if extensions < LR_EXTENSIONS && trials.len() > 1 => {
                    queue.push(trials[0].lr / 2.0)
                }
                _ => break,
            }
            extensions += 1;
        }
        let chosen = trials
            .iter()
            .filter_map(|t| Some((t.lr, t.val_loss?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|t| t.0)
            .ok_or_else(|| Error::Numerical {
                context: "lr check".into(),
                reason: "every candidate diverged".into(),
            })?;
        let check = LrCheck {
            rule: format!(
                "LoRA r={} for {} steps (warmup 10 %, linear decay) at each candidate, seed {}, the same training examples as the grid; the lowest loss on the {} held-out examples wins; an optimum at the edge of the tried range extends it by ×2 (at most {LR_EXTENSIONS} times)",
                p.lr_check_rank,
                p.lr_check_steps,
                p.seeds.first().copied().unwrap_or(1),
                p.val_size
            ),
            trials,
            chosen,
        };
        crate::fsutil::write_json(&path, &check)?;
        // The trials' training time is the check's, not the grid's (the lower cache stays apart).
        self.timing.lr_check_s += self.timing.train_s - train_before;
        self.timing.train_s = train_before;
        Ok((chosen, Some(check)))
    }

    /// One short LoRA run of the lr check.
    pub(super) fn lr_trial(&mut self, lr: f64) -> Result<LrTrial> {
        let p = self.preset;
        let name = format!("lr-{lr:e}");
        (self.log)(&format!(
            "lr check: LoRA r={} at lr {lr:e}",
            p.lr_check_rank
        ));
        let cell = Cell {
            method: Method::Lora,
            rank: p.lr_check_rank,
            seed: p.seeds.first().copied().unwrap_or(1),
        };
        let cfg = self.train_config(&cell, lr, Some(p.lr_check_steps));
        let dir = self.out.join("lr-check").join(&name);
        let run = format!("lr-check/{name}");
        let trainer = match self.train(cfg, &dir, "lr-check") {
            Ok(t) => t,
            Err(Error::Numerical { reason, .. }) => {
                (self.log)(&format!("lr check: lr {lr:e} diverged ({reason})"));
                return Ok(LrTrial {
                    lr,
                    val_loss: None,
                    final_train_loss: None,
                    run,
                });
            }
            Err(e) => return Err(e),
        };
        let rec = &trainer.record;
        if rec.val.is_empty() {
            return Err(Error::InvalidArgument(
                "the lr check needs a validation split (val_size > 0)".into(),
            ));
        }
        Ok(LrTrial {
            lr,
            val_loss: rec.val.last().map(|v| v.loss).filter(|v| v.is_finite()),
            final_train_loss: rec.steps.last().map(|s| s.loss),
            run,
        })
    }
}
