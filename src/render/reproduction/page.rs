//! The reproduction's HTML page: its tables (runs, configurations, capture, the paper's rows,
//! comparisons) and the template context; the charts are in [`super::charts`].

use super::charts::{
    accuracy_chart, capture_panels, loss_chart, paper_chart, params_x_range, task_panels,
};
use super::colour;
use crate::error::Result;
use crate::names::Method;
use crate::paper;
use crate::render::page::{opt_fmt, render};
use crate::reproduce::summary::Summary;
use crate::reproduce::{Protocol, Reproduction, RunCurves, Scores};
use serde::Serialize;

/// One run of the reproduction page's tables.
#[derive(Serialize)]
pub(super) struct ReproRow {
    name: String,
    pub(super) method: String,
    colour: String,
    rank: String,
    seed: String,
    trainable: u64,
    pct: String,
    acc: Vec<String>,
    avg: String,
    loglik: String,
    gen: String,
    unparse: String,
    loss: String,
    val: String,
    wall: String,
    ratio: String,
    near_null: String,
    ds: String,
}

/// One configuration of the page's first table (from the record's `ConfigStats`).
#[derive(Serialize)]
struct ConfigRow {
    method: String,
    colour: String,
    rank: usize,
    pct: String,
    params: String,
    seeds: String,
    mean: String,
    ci: String,
    spread: String,
    generate: String,
    unparse: String,
}

/// Per task: "loglik (generate)" in %.
fn task_cells(s: &Scores) -> Vec<String> {
    s.tasks
        .iter()
        .map(|t| match (t.loglik, t.generate) {
            (Some(l), Some(g)) => format!("{l:.1} ({g:.0})"),
            (Some(l), None) => format!("{l:.1}"),
            (None, Some(g)) => format!("({g:.1})"),
            _ => "-".into(),
        })
        .collect()
}

/// The tasks of the record, in its runs' (or the base model's) order.
fn task_names(r: &Reproduction) -> Vec<String> {
    r.runs
        .first()
        .map(|x| x.scores.tasks.iter().map(|t| t.task.clone()).collect())
        .or_else(|| {
            r.base
                .as_ref()
                .map(|b| b.tasks.iter().map(|t| t.task.clone()).collect())
        })
        .unwrap_or_default()
}

/// The base model's row of the runs table.
fn base_row(b: &Scores) -> ReproRow {
    ReproRow {
        name: "base model".into(),
        method: "none".into(),
        colour: colour(Method::Full),
        rank: "-".into(),
        seed: "-".into(),
        trainable: 0,
        pct: "0".into(),
        acc: task_cells(b),
        avg: format!("{:.2}", b.average),
        loglik: opt_fmt(b.loglik_avg, 2),
        gen: opt_fmt(b.generate_avg, 1),
        unparse: opt_fmt(b.unparseable_rate, 0),
        loss: "-".into(),
        val: "-".into(),
        wall: "-".into(),
        ratio: "-".into(),
        near_null: "-".into(),
        ds: "-".into(),
    }
}

/// The runs table: the base model (when evaluated), then every run.
fn run_rows(r: &Reproduction) -> Vec<ReproRow> {
    let runs = r.runs.iter().map(|x| ReproRow {
        name: x.name.clone(),
        method: x.method.label().into(),
        colour: colour(x.method),
        rank: x.rank.to_string(),
        seed: x.seed.to_string(),
        trainable: x.trainable_params,
        pct: format!("{:.3}", x.trainable_pct),
        acc: task_cells(&x.scores),
        avg: format!("{:.2}", x.average()),
        loglik: opt_fmt(x.scores.loglik_avg, 2),
        gen: opt_fmt(x.scores.generate_avg, 1),
        unparse: opt_fmt(x.scores.unparseable_rate, 0),
        loss: format!("{:.3}", x.final_loss),
        val: opt_fmt(x.val_loss, 3),
        wall: format!("{:.0}", x.wall_s),
        ratio: opt_fmt(x.dash_mean_sigma_ratio, 3),
        near_null: x.dash_near_null_picks.map_or("-".into(), |n| n.to_string()),
        ds: x
            .dash_max_delta_sigma
            .map_or("-".into(), |v| format!("{v:.2e}")),
    });
    r.base.iter().map(base_row).chain(runs).collect()
}

/// The configurations table (the record's `ConfigStats`).
fn config_rows(sm: &Summary) -> Vec<ConfigRow> {
    sm.configs
        .iter()
        .map(|c| ConfigRow {
            method: c.method.label().into(),
            colour: colour(c.method),
            rank: c.rank,
            pct: format!("{:.4}", c.trainable_pct),
            params: format!("{:.0}", c.trainable_params),
            seeds: c
                .seeds
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            mean: format!("{:.2}", c.mean),
            ci: c
                .ci
                .as_ref()
                .map_or("-".into(), |i| format!("{:.2} … {:.2}", i.lo, i.hi)),
            spread: format!("±{:.2}", c.spread),
            generate: opt_fmt(c.generate_mean, 1),
            unparse: opt_fmt(c.unparseable_mean, 0),
        })
        .collect()
}

/// Each run's capture series: `step: accuracy / q,k,v accuracy (recall)`.
fn capture_rows(r: &Reproduction) -> Vec<Vec<String>> {
    r.capture
        .iter()
        .map(|s| {
            let mut row = vec![s.run.clone(), s.modules.to_string()];
            row.extend(s.points.iter().map(|p| {
                format!(
                    "{}: {} / {} ({})",
                    p.step,
                    opt_fmt(p.accuracy, 2),
                    opt_fmt(p.accuracy_qkv, 2),
                    opt_fmt(p.recall, 2)
                )
            }));
            row
        })
        .collect()
}

/// The paper's table as the record keeps it: header and rows.
fn paper_table(sm: &Summary) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header: Vec<String> = ["model", "method", "rank", "params_pct"]
        .map(String::from)
        .to_vec();
    header.extend(sm.paper_tasks.iter().cloned());
    header.push("avg".into());
    header.push("Params% (tsd params)".into());
    let rows = sm
        .paper
        .iter()
        .map(|p| {
            let mut row = vec![
                p.model.clone(),
                p.method.clone(),
                p.rank.map_or(String::new(), |k| k.to_string()),
                p.params_pct.clone(),
            ];
            row.extend(p.tasks.iter().map(|t| opt_fmt(*t, 1)));
            row.push(format!("{:.1}", p.avg));
            row.push(p.params_pct_tsd.clone().unwrap_or_else(|| "-".into()));
            row
        })
        .collect();
    (header, rows)
}

/// The paired comparisons (methods, the rank effect, per task).
fn comparison_rows(sm: &Summary) -> Vec<Vec<String>> {
    sm.comparisons
        .iter()
        .chain(sm.rank_effect.iter())
        .chain(sm.task_comparisons.iter())
        .map(|c| {
            vec![
                c.label(),
                c.task.clone().unwrap_or_else(|| "average".into()),
                format!("{:+.2}", c.diff.estimate),
                format!("{:+.2} … {:+.2}", c.diff.lo, c.diff.hi),
                format!("{:.2}", c.diff.se),
                format!("{:.1}", c.mde),
                format!("{} × {}", c.examples, c.seeds),
                if c.diff.excludes_zero() {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect()
}

/// The paper's claims as the page words them, from [`crate::paper`] and the record's copy of
/// the paper's table.
fn paper_claims(sm: &Summary) -> minijinja::Value {
    let [dash, lora_a, lora_b] = super::paper_efficiency_rows(sm);
    let [ka, kb] = paper::EFFICIENCY_LORA_RANKS;
    minijinja::context! {
        capture => paper::capture_range(),
        efficiency => paper::efficiency_range(),
        efficiency_example => format!(
            "LoRA-Dash r = {} at {dash} vs LoRA r = {ka} at {lora_a} and r = {kb} at {lora_b}",
            paper::EFFICIENCY_DASH_RANK
        ),
    }
}

/// The `tsd reproduce commonsense` page, rendered from the reproduction's record (`results.json`)
/// and its runs' saved training curves; it computes nothing but display averages of recorded
/// numbers (the chance levels over tasks), which it names.
pub fn reproduce_html(r: &Reproduction, out: &str, curves: &[RunCurves]) -> Result<String> {
    let sm = &r.summary;
    let proto = match r.preset.protocol {
        Protocol::Loglik => "loglik",
        Protocol::Generate => "generate",
    };
    let tasks = task_names(r);
    let rows = run_rows(r);
    let (majority, uniform) = sm.chance_means();
    let x_range = params_x_range(r);
    let (paper_header, paper_rows) = paper_table(sm);
    let dash_rows: Vec<&ReproRow> = rows.iter().filter(|x| x.method == "LoRA-Dash").collect();
    let charts = minijinja::context! {
        accuracy_svg => accuracy_chart(r, proto, x_range)?,
        paper_svg => paper_chart(sm, x_range)?,
        task_panels => task_panels(r, &tasks, proto)?,
        loss_svg => loss_chart(r, curves)?,
        capture_panels => capture_panels(r)?,
    };
    render(
        "reproduce.html",
        minijinja::context! {
            title => "tsd reproduce commonsense",
            tsd_version => env!("CARGO_PKG_VERSION"),
            build => env!("TSD_BUILD_VERSIONS"),
            r => r,
            out => out,
            tasks => tasks,
            dash_rows => dash_rows,
            rows => rows,
            config_rows => config_rows(sm),
            colours => minijinja::context! {
                lora => colour(Method::Lora),
                dash => colour(Method::LoraDash),
                full => colour(Method::Full),
            },
            base_avg => r.base.as_ref().map(|b| format!("{:.2}", b.average)),
            base_gen => r.base.as_ref().map(|b| opt_fmt(b.generate_avg, 1)),
            majority => majority.map(|v| format!("{v:.2}")),
            uniform => uniform.map(|v| format!("{v:.1}")),
            loss_missing => r
                .runs
                .iter()
                .filter(|x| !curves.iter().any(|c| c.run == x.name))
                .map(|x| x.name.as_str())
                .collect::<Vec<_>>(),
            capture_rows => capture_rows(r),
            proto => proto,
            paper_header => paper_header,
            paper_rows => paper_rows,
            paper => paper_claims(sm),
            comparison_rows => comparison_rows(sm),
            sm => sm,
            max_lora => r.preset.lora_ranks.iter().max().copied().unwrap_or(0),
            total_s => r.invocations.iter().map(|t| t.total_s).sum::<f64>(),
            ..charts
        },
    )
}
