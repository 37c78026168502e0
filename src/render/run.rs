//! The `tsd report RUN` page: a run's curves, its record's facts and its track over checkpoints.

use super::charts;
use super::page::{chart, opt_fmt, render};
use crate::error::Result;
use crate::run::{Curves, RunKind, RunRecord};
use crate::track::{TrackNull, TrackPoint, TrackReport};
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

type Ctx = BTreeMap<&'static str, minijinja::Value>;

/// A vertical marker at the curves' marked step (the Dash switch), if any.
type Marker<'a> = Option<(f64, &'a str)>;

/// The `tsd report RUN` page: the run's curves, its record's facts, and the track over checkpoints.
pub fn run_html(page: &RunPage) -> Result<String> {
    let run_dir = page.run;
    let marker = page
        .curves
        .and_then(|c| c.marker.as_ref())
        .map(|m| (m.step as f64, m.label.as_str()));
    let dash_step = page
        .record
        .and_then(|r| r.dash_switch.as_ref())
        .map(|d| d.step);
    let run_name = std::path::Path::new(run_dir)
        .file_name()
        .map_or(run_dir.to_string(), |n| n.to_string_lossy().to_string());
    let mut ctx = Ctx::new();
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
    ctx.insert("paper_capture", crate::paper::capture_range().into());
    if let Some(c) = page.curves {
        curves_context(&mut ctx, c, marker)?;
    }
    if let Some(rec) = page.record {
        record_context(&mut ctx, rec);
    }
    if let Some(t) = page.track {
        track_context(&mut ctx, t, marker)?;
    }
    render("run.html", ctx)
}

/// One line chart of one series, or none when it has no points.
fn single_chart(
    name: &str,
    pts: Vec<(f64, f64)>,
    y: &str,
    marker: Marker,
) -> Result<Option<String>> {
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
}

/// The training curves: loss (and evaluation loss), learning rate, gradient norm, throughput.
fn curves_context(ctx: &mut Ctx, c: &Curves, marker: Marker) -> Result<()> {
    let loss = c.series(|p| p.loss);
    let eval: Vec<(f64, f64)> = c.eval.iter().map(|e| (e.step as f64, e.loss)).collect();
    let mut loss_series = vec![("training loss", loss.clone())];
    if !eval.is_empty() {
        loss_series.push(("evaluation loss", eval.clone()));
    }
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
    let lr = single_chart(
        "learning rate",
        c.series(|p| p.learning_rate),
        "learning rate",
        marker,
    )?;
    let gn = single_chart(
        "gradient norm",
        c.series(|p| p.grad_norm),
        "‖g‖ before clipping",
        marker,
    )?;
    let tps = single_chart(
        "tokens/s",
        c.series(|p| p.tokens_per_s),
        "tokens / s",
        marker,
    )?;
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
        c.median_tokens_per_s()
            .map_or("-".into(), |m| format!("{m:.0}"))
            .into(),
    );
    ctx.insert("curves", true.into());
    Ok(())
}

/// The run record's facts.
fn record_context(ctx: &mut Ctx, rec: &RunRecord) {
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
    ctx.insert(
        "data_schema",
        rec.data
            .as_ref()
            .map_or("", |d| d.manifest.schema.label())
            .into(),
    );
    ctx.insert("steps_done", rec.steps.last().map_or(0, |s| s.step).into());
    ctx.insert(
        "rss_mib",
        format!("{:.0}", rec.peak_rss_bytes as f64 / (1 << 20) as f64).into(),
    );
    ctx.insert("wall", format!("{:.1}", rec.wall_s).into());
}

/// A checkpoint's label: its name in an adapters directory, else its step.
fn point_label(t: &TrackReport, p: &TrackPoint) -> String {
    match t.kind {
        Some(RunKind::Adapters) => p.checkpoint.clone(),
        _ => format!("step {}", p.step),
    }
}

/// `(step, f(point))` over the track's points where `f` has a value.
fn track_xy(t: &TrackReport, f: &dyn Fn(&TrackPoint) -> Option<f64>) -> Vec<(f64, f64)> {
    t.points
        .iter()
        .filter_map(|p| f(p).map(|v| (p.step as f64, v)))
        .collect()
}

/// The track's points that carry a capture null.
fn track_nulls(t: &TrackReport) -> Vec<(&TrackPoint, &TrackNull)> {
    t.points
        .iter()
        .filter_map(|p| p.null.as_ref().map(|n| (p, n)))
        .collect()
}

/// The capture chart over checkpoints: recall, accuracy, the tested statistic and κ beside the
/// null band; none without capture.
fn capture_chart(t: &TrackReport, marker: Marker) -> Result<Option<String>> {
    let acc_pts = track_xy(t, &|p| p.mean_accuracy);
    if acc_pts.is_empty() {
        return Ok(None);
    }
    let nulls = track_nulls(t);
    let mut series = vec![
        ("recall@(8,4)", track_xy(t, &|p| p.mean_recall)),
        ("accuracy@(8,16)", acc_pts),
    ];
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
    chart(charts::lines_with(
        &series,
        "checkpoint step",
        "capture",
        &charts::LineOpts {
            marker,
            band,
            notes,
            ..Default::default()
        },
    ))
    .map(Some)
}

/// The null table over checkpoints.
fn null_rows(t: &TrackReport) -> Vec<Vec<String>> {
    track_nulls(t)
        .iter()
        .map(|(p, n)| {
            vec![
                point_label(t, p),
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
        .collect()
}

/// The TSD sets of the first 10 modules at each checkpoint.
fn tsd_rows(t: &TrackReport) -> Vec<TsdRow> {
    let track_steps: Vec<usize> = t.points.iter().map(|p| p.step).collect();
    t.tsd_sets
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
        .collect()
}

/// The track over checkpoints: capture and its null, stability, amplification, TSD sets.
fn track_context(ctx: &mut Ctx, t: &TrackReport, marker: Marker) -> Result<()> {
    let pts = &t.points;
    if let Some(svg) = capture_chart(t, marker)? {
        ctx.insert("capture_svg", svg.into());
    }
    ctx.insert("null_rows", minijinja::Value::from_serialize(null_rows(t)));
    ctx.insert(
        "null_missing",
        (t.reference.is_some() && track_nulls(t).is_empty()).into(),
    );
    let stab = chart(charts::lines(
        &[
            ("∩ previous", track_xy(t, &|p| p.stability_prev)),
            ("∩ final", track_xy(t, &|p| Some(p.stability_final))),
        ],
        "checkpoint step",
        "overlap of TSD sets",
        false,
        marker,
    ))?;
    let amp = chart(charts::lines(
        &[
            (
                "mean amplification",
                track_xy(t, &|p| Some(p.mean_amplification)),
            ),
            ("mean top δ", track_xy(t, &|p| Some(p.mean_top_delta))),
        ],
        "checkpoint step",
        "unitless (log)",
        true,
        marker,
    ))?;
    let tsd_rows = tsd_rows(t);
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
    let labels: Vec<String> = pts.iter().map(|p| point_label(t, p)).collect();
    ctx.insert("track_labels", minijinja::Value::from_serialize(&labels));
    ctx.insert("track_base", t.base.clone().into());
    ctx.insert("tsd_rows", minijinja::Value::from_serialize(&tsd_rows));
    Ok(())
}

/// Where `tsd report -o FILE` saves the track record it computed: beside FILE, named after it
/// (`DIR/run-a.html` → `DIR/run-a.track.json`), so reports sharing a directory keep their own.
pub fn track_path_for(report: &std::path::Path) -> std::path::PathBuf {
    let stem = report
        .file_stem()
        .map_or_else(|| "report".into(), |s| s.to_string_lossy().into_owned());
    crate::fsutil::parent_dir(report).join(format!("{stem}.track.json"))
}
