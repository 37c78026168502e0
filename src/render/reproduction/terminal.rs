//! The reproduction's terminal summary: runs, comparisons, efficiency, capture, verdict, time.

use super::{opt, paper_efficiency_rows};
use crate::paper;
use crate::reproduce::summary::Summary;
use crate::reproduce::Reproduction;

/// Appends one formatted line to a `String`.
macro_rules! say {
    ($o:expr, $($t:tt)*) => {{
        $o.push_str(&format!($($t)*));
        $o.push('\n');
    }};
}

/// The terminal summary of a reproduction (`tsd reproduce commonsense` prints it).
pub fn summary(r: &Reproduction) -> String {
    let mut out = String::new();
    summary_header(&mut out, r);
    summary_runs(&mut out, r);
    summary_comparisons(&mut out, r);
    summary_capture(&mut out, r);
    summary_footer(&mut out, r);
    out
}

/// The preset line and the lr check's trials.
fn summary_header(out: &mut String, r: &Reproduction) {
    let p = &r.preset;
    let proto = format!("{:?}", p.protocol).to_lowercase();
    say!(
        out,
        "preset {} · model {} · {} runs · lr {:e}{} · headline accuracy: {proto}",
        p.name,
        p.model,
        r.runs.len(),
        r.lr,
        if r.lr_check.is_some() {
            " (from the lr check)"
        } else {
            ""
        }
    );
    if let Some(c) = &r.lr_check {
        for t in &c.trials {
            say!(
                out,
                "  lr check {:>8.1e}: validation loss {}{}",
                t.lr,
                t.val_loss.map_or("diverged".into(), |v| format!("{v:.4}")),
                if t.lr == c.chosen { "  ← chosen" } else { "" }
            );
        }
    }
}

/// One line per run, the base model first.
fn summary_runs(out: &mut String, r: &Reproduction) {
    say!(
        out,
        "{:<14} {:>5} {:>5} {:>10} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "run",
        "rank",
        "seed",
        "trainable",
        "avg %",
        "loglik",
        "generate",
        "unparse %",
        "val loss",
        "wall s"
    );
    if let Some(b) = &r.base {
        say!(
            out,
            "{:<14} {:>5} {:>5} {:>10} {:>8.2} {:>8} {:>8} {:>9} {:>8} {:>8}",
            "base model",
            "-",
            "-",
            0,
            b.average,
            opt(b.loglik_avg, 2),
            opt(b.generate_avg, 1),
            opt(b.unparseable_rate, 0),
            "",
            ""
        );
    }
    for x in &r.runs {
        say!(
            out,
            "{:<14} {:>5} {:>5} {:>10} {:>8.2} {:>8} {:>8} {:>9} {:>8} {:>8.0}",
            x.name,
            x.rank,
            x.seed,
            x.trainable_params,
            x.scores.average,
            opt(x.scores.loglik_avg, 2),
            opt(x.scores.generate_avg, 1),
            opt(x.scores.unparseable_rate, 0),
            opt(x.val_loss, 3),
            x.wall_s
        );
    }
}

/// The paired comparisons, the rank effect, the efficiency ratios, chance and the paper's rows.
fn summary_comparisons(out: &mut String, r: &Reproduction) {
    let sm = &r.summary;
    say!(out, "{}", sm.bootstrap);
    for c in &sm.comparisons {
        say!(
            out,
            "  {:<26} {:>24} points   MDE {:.1}   ({} examples × {} seeds)",
            c.label(),
            c.diff.describe(),
            c.mde,
            c.examples,
            c.seeds
        );
    }
    if let Some(e) = &sm.rank_effect {
        say!(
            out,
            "  {:<26} {:>24} points   MDE {:.1}   (does LoRA rank buy accuracy?)",
            e.label(),
            e.diff.describe(),
            e.mde
        );
    }
    summary_efficiency(out, sm);
    let chance: Vec<String> = sm
        .chance
        .iter()
        .map(|c| {
            format!(
                "{} {}/{} runs above {:.0} %",
                c.task, c.runs_above, c.runs, c.majority
            )
        })
        .collect();
    say!(
        out,
        "above chance (Wilson 95 % lower bound > majority answer): {}",
        chance.join(", ")
    );
    let [dash, lora_a, lora_b] = paper_efficiency_rows(sm);
    let [ka, kb] = paper::EFFICIENCY_LORA_RANKS;
    say!(
        out,
        "paper (LLaMA-7B, generate): LoRA-Dash r={} {dash} vs LoRA r={ka} {lora_a}, r={kb} {lora_b}",
        paper::EFFICIENCY_DASH_RANK,
    );
}

/// The parameter-efficiency ratios, overall and per task.
fn summary_efficiency(out: &mut String, sm: &Summary) {
    for e in &sm.efficiency {
        say!(
            out,
            "parameter-efficiency, LoRA-Dash r={} ({:.2} %): {} (paper: {}){}",
            e.dash_rank,
            e.dash_mean,
            e.ratio.map_or(
                "no LoRA rank in the grid reaches it".to_string(),
                |v| format!("{v:.0}× (LoRA r={})", e.lora_rank.unwrap_or(0))
            ),
            paper::efficiency_range(),
            if e.informative {
                ""
            } else {
                " — not informative"
            }
        );
    }
    for e in &sm.efficiency_by_task {
        say!(
            out,
            "  on {:<14} LoRA-Dash r={}: {}{}",
            e.task.as_deref().unwrap_or(""),
            e.dash_rank,
            e.ratio
                .map_or("no LoRA rank reaches it".to_string(), |v| format!(
                    "{v:.0}×"
                )),
            if e.informative {
                ""
            } else {
                " (not informative)"
            }
        );
    }
}

/// TSD capture along training per run, and against the empirical controls.
fn summary_capture(out: &mut String, r: &Reproduction) {
    if let Some(rf) = &r.reference {
        say!(
            out,
            "TSD capture accuracy@(8,16) against {rf}, all adapted modules / q,k,v only (paper: ~{} on q,k,v):",
            paper::capture_range()
        );
        for s in &r.capture {
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|p| {
                    let null = p.null_qkv.as_ref().map_or(String::new(), |n| {
                        format!(
                            " (q,k,v tested {:.2} vs null {:.2})",
                            n.mean_accuracy, n.mean_null
                        )
                    });
                    format!(
                        "{}: {}/{}{null}",
                        p.step,
                        opt(p.accuracy, 2),
                        opt(p.accuracy_qkv, 2)
                    )
                })
                .collect();
            say!(out, "  {:<14} {}", s.run, pts.join("  "));
        }
    }
    if !r.summary.controls.is_empty() {
        say!(out, "TSD capture at the final checkpoint against the empirical controls, all modules, mean over seeds (tested accuracy / null / κ):");
        for c in &r.summary.controls {
            say!(
                out,
                "  {:<10} r={:<3} {:<17} {:.2} / {:.2} / {}",
                c.method.label(),
                c.rank,
                c.control,
                c.all.accuracy,
                c.all.null_mean,
                c.all.kappa.map_or("-".into(), |k| format!("{k:+.2}"))
            );
        }
    }
}

/// The verdict, the deviations and the time.
fn summary_footer(out: &mut String, r: &Reproduction) {
    say!(out, "verdict: {}", r.summary.verdict);
    for d in &r.deviations {
        say!(out, "deviation: {d}");
    }
    let t = &r.timing;
    say!(
        out,
        "time: {:.0} s (lower-layer cache {:.0}, eval preparation {:.0}, lr check {:.0}, training {:.0}, evaluation {:.0}, capture {:.0}); {:.0} s over {} invocation(s) on this directory",
        t.total_s,
        t.lower_cache_s,
        t.eval_prepare_s,
        t.lr_check_s,
        t.train_s,
        t.eval_s,
        t.capture_s,
        r.invocations.iter().map(|t| t.total_s).sum::<f64>(),
        r.invocations.len()
    );
}
