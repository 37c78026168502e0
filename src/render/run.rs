//! The `tsd report RUN` page: a run's curves, its record's facts and its track over checkpoints.

use super::charts;
use super::page::{chart, opt_fmt, render};
use crate::error::Result;
use crate::run::{Curves, RunKind, RunRecord};
use crate::track::TrackReport;
use std::collections::BTreeMap;

#[derive(serde::Serialize)]
struct TsdRow {
    module: String,
    cells: Vec<String>,
}

/// What the `tsd report RUN` page renders: records only.
pub struct RunPage<'a> {
    /// The run directory, as given.
    pub run: &'a str,
    pub kind: RunKind,
    /// Names of the complete checkpoints, in step order.
    pub checkpoints: Vec<String>,
    /// Directories skipped as half-written or temporary.
    pub skipped: &'a [String],
    /// tsd's run record (a tsd run that has written one).
    pub record: Option<&'a RunRecord>,
    /// Training curves (tsd's record or the Trainer's `log_history`).
    pub curves: Option<&'a Curves>,
    pub track: Option<&'a TrackReport>,
}

fn first_last(xs: &[(f64, f64)]) -> String {
    match (xs.first(), xs.last()) {
        (Some(a), Some(b)) => format!("{:.4} → {:.4}", a.1, b.1),
        _ => "-".into(),
    }
}

/// The `tsd report RUN` page: the run's curves, its record's facts, and the track over checkpoints.
pub fn run_html(page: &RunPage) -> Result<String> {
    let run_dir = page.run;
    let curves = page.curves;
    let marker = curves
        .and_then(|c| c.marker.as_ref())
        .map(|m| (m.step as f64, m.label.as_str()));
    let dash_step = page
        .record
        .and_then(|r| r.dash_switch.as_ref())
        .map(|d| d.step);
    let run_name = std::path::Path::new(run_dir)
        .file_name()
        .map_or(run_dir.to_string(), |n| n.to_string_lossy().to_string());
    let mut ctx = BTreeMap::<&str, minijinja::Value>::new();
    ctx.insert("title", "tsd run report".into());
    ctx.insert("tsd_version", env!("CARGO_PKG_VERSION").into());
    ctx.insert("build", env!("TSD_BUILD_VERSIONS").into());
    ctx.insert("run", run_dir.into());
    ctx.insert("run_name", run_name.into());
    ctx.insert("kind", page.kind.describe().into());
    ctx.insert(
        "checkpoints",
        minijinja::Value::from_serialize(&page.checkpoints),
    );
    ctx.insert("skipped", minijinja::Value::from_serialize(page.skipped));
    ctx.insert("dash_step", minijinja::Value::from_serialize(dash_step));
    if let Some(c) = curves {
        let loss = c.series(|p| p.loss);
        let eval: Vec<(f64, f64)> = c.eval.iter().map(|e| (e.step as f64, e.loss)).collect();
        let mut loss_series = vec![("training loss", loss.clone())];
        if !eval.is_empty() {
            loss_series.push(("evaluation loss", eval.clone()));
        }
        let chart_of = |name: &str, pts: Vec<(f64, f64)>, y: &str| -> Result<Option<String>> {
            if pts.is_empty() {
                return Ok(None);
            }
            chart(charts::lines(
                &[(name, pts)],
                "optimizer step",
                y,
                false,
                marker,
            ))
            .map(Some)
        };
        ctx.insert(
            "loss_svg",
            chart(charts::lines_with(
                &loss_series,
                "optimizer step",
                "loss (nats/token)",
                &charts::LineOpts {
                    marker,
                    points_only: vec![1],
                    ..Default::default()
                },
            ))?
            .into(),
        );
        let lr = chart_of(
            "learning rate",
            c.series(|p| p.learning_rate),
            "learning rate",
        )?;
        let gn = chart_of(
            "gradient norm",
            c.series(|p| p.grad_norm),
            "‖g‖ before clipping",
        )?;
        let tps_pts = c.series(|p| p.tokens_per_s);
        let mut tv: Vec<f64> = tps_pts.iter().map(|p| p.1).collect();
        tv.sort_by(f64::total_cmp);
        let tps = chart_of("tokens/s", tps_pts, "tokens / s")?;
        ctx.insert("lr_svg", minijinja::Value::from_serialize(lr));
        ctx.insert("grad_svg", minijinja::Value::from_serialize(gn));
        ctx.insert("tps_svg", minijinja::Value::from_serialize(tps));
        ctx.insert("curves_source", c.source.clone().into());
        ctx.insert("logged_steps", c.train.len().into());
        ctx.insert("evals", c.eval.len().into());
        ctx.insert("loss_first_last", first_last(&loss).into());
        ctx.insert("eval_first_last", first_last(&eval).into());
        ctx.insert(
            "last_epoch",
            c.train
                .iter()
                .rev()
                .find_map(|p| p.epoch)
                .map_or("-".into(), |e| format!("{e:.3}"))
                .into(),
        );
        ctx.insert(
            "tps",
            tv.get(tv.len() / 2)
                .map_or("-".into(), |m| format!("{m:.0}"))
                .into(),
        );
        ctx.insert("curves", true.into());
    }
    if let Some(rec) = page.record {
        ctx.insert("rec", minijinja::Value::from_serialize(rec));
        ctx.insert(
            "method",
            serde_json::to_value(rec.config.method)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
                .into(),
        );
        ctx.insert("alpha", rec.config.alpha().into());
        ctx.insert("steps_done", rec.steps.last().map_or(0, |s| s.step).into());
        ctx.insert(
            "rss_mib",
            format!("{:.0}", rec.peak_rss_bytes as f64 / (1 << 20) as f64).into(),
        );
        ctx.insert("wall", format!("{:.1}", rec.wall_s).into());
    }
    if let Some(t) = page.track {
        let pts = &t.points;
        let xs = |f: &dyn Fn(&crate::track::TrackPoint) -> Option<f64>| -> Vec<(f64, f64)> {
            pts.iter()
                .filter_map(|p| f(p).map(|v| (p.step as f64, v)))
                .collect()
        };
        let rec_pts = xs(&|p| p.mean_recall);
        let acc_pts = xs(&|p| p.mean_accuracy);
        let nulls: Vec<(&crate::track::TrackPoint, &crate::track::TrackNull)> = pts
            .iter()
            .filter_map(|p| p.null.as_ref().map(|n| (p, n)))
            .collect();
        if !acc_pts.is_empty() {
            let mut series = vec![("recall@(8,4)", rec_pts), ("accuracy@(8,16)", acc_pts)];
            let mut band = None;
            let mut notes = Vec::new();
            if !nulls.is_empty() {
                // The tested statistic (a LoRA-Dash module's LoRA part) when it is not the
                // whole update's accuracy.
                let tested: Vec<(f64, f64)> = nulls
                    .iter()
                    .map(|(p, n)| (p.step as f64, n.mean_accuracy))
                    .collect();
                if nulls.iter().any(|(p, n)| {
                    p.mean_accuracy
                        .is_none_or(|a| (a - n.mean_accuracy).abs() > 1e-9)
                }) {
                    series.push(("tested accuracy", tested));
                }
                series.push((
                    "κ (tested)",
                    nulls
                        .iter()
                        .filter_map(|(p, n)| n.mean_kappa.map(|k| (p.step as f64, k)))
                        .collect(),
                ));
                band = Some((
                    "null: mean to p95",
                    nulls
                        .iter()
                        .map(|(p, n)| (p.step as f64, n.mean_null, n.mean_null_p95))
                        .collect(),
                ));
                notes = nulls
                    .iter()
                    .map(|(p, n)| {
                        (
                            p.step as f64,
                            format!(
                                "modules above null {}, not above {}, untestable {}",
                                n.above_null, n.not_above_null, n.untestable
                            ),
                        )
                    })
                    .collect();
            }
            let svg = chart(charts::lines_with(
                &series,
                "checkpoint step",
                "capture",
                &charts::LineOpts {
                    marker,
                    band,
                    notes,
                    ..Default::default()
                },
            ))?;
            ctx.insert("capture_svg", svg.into());
        }
        let null_rows: Vec<Vec<String>> = nulls
            .iter()
            .map(|(p, n)| {
                vec![
                    match t.kind {
                        Some(RunKind::Adapters) => p.checkpoint.clone(),
                        _ => format!("step {}", p.step),
                    },
                    opt_fmt(p.mean_accuracy, 3),
                    format!("{:.3}", n.mean_accuracy),
                    format!("{:.3}", n.mean_null),
                    format!("{:.3}", n.mean_null_p95),
                    opt_fmt(n.mean_kappa, 2),
                    n.above_null.to_string(),
                    n.not_above_null.to_string(),
                    n.untestable.to_string(),
                ]
            })
            .collect();
        ctx.insert("null_rows", minijinja::Value::from_serialize(&null_rows));
        ctx.insert(
            "null_missing",
            (t.reference.is_some() && nulls.is_empty()).into(),
        );
        let stab = chart(charts::lines(
            &[
                ("∩ previous", xs(&|p| p.stability_prev)),
                ("∩ final", xs(&|p| Some(p.stability_final))),
            ],
            "checkpoint step",
            "overlap of TSD sets",
            false,
            marker,
        ))?;
        let amp = chart(charts::lines(
            &[
                ("mean amplification", xs(&|p| Some(p.mean_amplification))),
                ("mean top δ", xs(&|p| Some(p.mean_top_delta))),
            ],
            "checkpoint step",
            "unitless (log)",
            true,
            marker,
        ))?;
        let track_steps: Vec<usize> = pts.iter().map(|p| p.step).collect();
        let tsd_rows: Vec<TsdRow> = t
            .tsd_sets
            .iter()
            .take(10)
            .map(|(m, v)| TsdRow {
                module: m.clone(),
                cells: track_steps
                    .iter()
                    .map(|s| {
                        v.iter()
                            .find(|(st, _)| st == s)
                            .map_or("-".into(), |(_, i)| format!("{i:?}"))
                    })
                    .collect(),
            })
            .collect();
        ctx.insert("track", true.into());
        ctx.insert(
            "reference",
            t.reference.clone().unwrap_or_else(|| "none".into()).into(),
        );
        ctx.insert(
            "track_note",
            format!(
                "{} checkpoint(s) analysed with tsd track{}; {} module(s); the table shows the first {} modules.",
                pts.len(),
                t.reference.as_ref().map_or(" (no reference: capture not measured)".to_string(), |r| format!(" against {r}")),
                t.tsd_sets.len(),
                tsd_rows.len()
            )
            .into(),
        );
        ctx.insert("stability_svg", stab.into());
        ctx.insert("amp_svg", amp.into());
        ctx.insert("top_s", t.top_s.into());
        let labels: Vec<String> = pts
            .iter()
            .map(|p| match t.kind {
                Some(RunKind::Adapters) => p.checkpoint.clone(),
                _ => format!("step {}", p.step),
            })
            .collect();
        ctx.insert("track_labels", minijinja::Value::from_serialize(&labels));
        ctx.insert("track_base", t.base.clone().into());
        ctx.insert("tsd_rows", minijinja::Value::from_serialize(&tsd_rows));
    }
    render("run.html", ctx)
}

/// One run of the reproduction page's tables.

/// Where `tsd report -o FILE` saves the track record it computed: beside FILE, named after it
/// (`DIR/run-a.html` → `DIR/run-a.track.json`), so reports sharing a directory keep their own.
pub fn track_path_for(report: &std::path::Path) -> std::path::PathBuf {
    let stem = report
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    crate::fsutil::parent_dir(report).join(format!("{stem}.track.json"))
}
