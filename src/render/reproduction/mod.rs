//! The reproduction record (`tsd reproduce commonsense`): its HTML page ([`page`], its charts in
//! [`charts`]), its terminal summary ([`terminal`]) and `results.csv`.

mod charts;
pub mod page;
pub mod terminal;

use crate::error::Result;
use crate::paper;
use crate::render::table::csv_text;
use crate::reproduce::summary::Summary;
use crate::reproduce::Reproduction;
use std::path::{Path, PathBuf};

pub use page::reproduce_html;
pub use terminal::summary;

/// Renders the page of a reproduction's record into `OUT/report.html` (with the runs' saved
/// training curves from `OUT/runs/`): what the grid does at its end and what re-rendering a
/// saved record does. Returns the page's path.
pub fn write_reproduction(r: &Reproduction, out: &Path) -> Result<PathBuf> {
    let curves = crate::reproduce::saved_curves(out, r);
    let html = page::reproduce_html(r, &out.display().to_string(), &curves)?;
    let path = out.join(crate::reproduce::REPORT_FILE);
    crate::fsutil::atomic_write(&path, html.as_bytes())?;
    Ok(path)
}

/// Re-renders `OUT/report.html` from `OUT/results.json` without touching the grid: no data,
/// model or training needed. Returns the record and the page's path.
pub fn render_saved_reproduction(out: &Path) -> Result<(Reproduction, PathBuf)> {
    let r = Reproduction::read(out)?;
    let path = write_reproduction(&r, out)?;
    Ok((r, path))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or(String::new(), |x| format!("{x:.digits$}"))
}

/// One row per run of `results.csv`, from the saved results.
pub fn results_csv(r: &Reproduction) -> Result<Vec<u8>> {
    let tasks: Vec<String> = r
        .runs
        .first()
        .map(|x| x.scores.tasks.iter().map(|t| t.task.clone()).collect())
        .unwrap_or_default();
    let mut header: Vec<String> = [
        "name",
        "method",
        "rank",
        "seed",
        "lr",
        "trainable_params",
        "trainable_pct",
    ]
    .map(String::from)
    .to_vec();
    for t in &tasks {
        header.push(format!("{t}_loglik"));
        header.push(format!("{t}_generate"));
    }
    header.extend(
        [
            "average",
            "loglik_avg",
            "generate_avg",
            "unparseable_rate",
            "final_loss",
            "val_loss",
            "wall_s",
            "tokens_per_s",
            "dash_mean_sigma_ratio",
            "dash_max_delta_sigma",
        ]
        .map(String::from),
    );
    let mut rows = Vec::new();
    for x in &r.runs {
        let mut row = vec![
            x.name.clone(),
            x.method.as_str().to_string(),
            x.rank.to_string(),
            x.seed.to_string(),
            x.lr.to_string(),
            x.trainable_params.to_string(),
            x.trainable_pct.to_string(),
        ];
        for t in &tasks {
            let s = x.scores.tasks.iter().find(|s| &s.task == t);
            row.push(opt(s.and_then(|s| s.loglik), 2));
            row.push(opt(s.and_then(|s| s.generate), 2));
        }
        row.extend([
            format!("{:.3}", x.scores.average),
            opt(x.scores.loglik_avg, 3),
            opt(x.scores.generate_avg, 3),
            opt(x.scores.unparseable_rate, 1),
            format!("{:.4}", x.final_loss),
            opt(x.val_loss, 4),
            format!("{:.1}", x.wall_s),
            format!("{:.1}", x.tokens_per_s),
            opt(x.dash_mean_sigma_ratio, 4),
            x.dash_max_delta_sigma
                .map_or(String::new(), |v| format!("{v:.3e}")),
        ]);
        rows.push(row);
    }
    Ok(csv_text(&header, rows)?.into_bytes())
}

/// The paper's averages behind its efficiency claim (LoRA-Dash at its rank, LoRA at its two),
/// from the record's copy of the paper's table: `75.7 %`, or `-` where the table lacks the row.
fn paper_efficiency_rows(sm: &Summary) -> [String; 3] {
    let avg = |m: &str, k: usize| {
        sm.paper
            .iter()
            .find(|p| p.method == m && p.rank == Some(k))
            .map_or("-".to_string(), |p| format!("{:.1} %", p.avg))
    };
    let [ka, kb] = paper::EFFICIENCY_LORA_RANKS;
    [
        avg("lora-dash", paper::EFFICIENCY_DASH_RANK),
        avg("lora", ka),
        avg("lora", kb),
    ]
}

/// The page's colour of a method (as in its charts).
pub(super) fn colour(m: crate::names::Method) -> String {
    crate::render::charts::css(crate::render::charts::method_colour(m))
}

/// What `--emit-jobs` wrote, and how to submit and gather it.
pub fn print_emitted(e: &crate::reproduce::jobs::Emitted, out: &Path) {
    for piece in &e.running {
        eprintln!("reproduce: {piece} is running in another process: left out");
    }
    if e.pieces.is_empty() {
        println!(
            "every piece in {} has finished; gather them: {}",
            out.display(),
            e.collect
        );
        return;
    }
    println!(
        "wrote {n} array task(s) ({}){} to {d}: jobs.txt, array.sbatch, collect.sbatch{}, submit.sh",
        e.pieces.join(", "),
        if e.prepare {
            " after the lr check"
        } else {
            ""
        },
        if e.prepare { ", prepare.sbatch" } else { "" },
        n = e.pieces.len(),
        d = e.dir.display()
    );
    println!("submit: {}/submit.sh", e.dir.display());
    println!("afterwards (collect.sbatch runs it too): {}", e.collect);
}

/// The record's files in `out`: results.json, results.csv and report.html.
pub fn write_outputs(r: &Reproduction, out: &Path) -> Result<()> {
    crate::fsutil::write_json(&out.join("results.json"), r)?;
    crate::fsutil::atomic_write(&out.join("results.csv"), &results_csv(r)?)?;
    write_reproduction(r, out)?;
    Ok(())
}
