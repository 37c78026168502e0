//! The reproduction page's charts: accuracy against Params % (measured, the paper's, per task),
//! the loss curves, and TSD capture per configuration beside its null and controls.

use super::colour;
use crate::error::Result;
use crate::names::Method;
use crate::paper;
use crate::render::charts;
use crate::render::page::{chart, opt_fmt};
use crate::render::table::number;
use crate::reproduce::summary::{CaptureNull, CaptureStats, PaperRow, Summary};
use crate::reproduce::{Protocol, Reproduction, RunCurves, RunResult, Scores};
use plotters::style::RGBColor;
use serde::Serialize;

/// One configuration's capture along training beside its null, and its controls.
#[derive(Serialize)]
pub(super) struct CapturePanel {
    label: String,
    colour: String,
    svg: String,
    /// The last step's tested capture and null (q, k, v), as the verdict states it.
    last: String,
    controls: Vec<Vec<String>>,
    /// LoRA-Dash: |Δσ| of every pick over the saved checkpoints, one line per pick.
    delta_sigma_svg: Option<String>,
}

/// A named line of a chart.
type Series = (&'static str, Vec<(f64, f64)>);

/// One task's small multiple.
#[derive(Serialize)]
pub(super) struct TaskPanel {
    task: String,
    svg: String,
    at_chance: bool,
}

/// |Δσ| of every pick of the LoRA-Dash runs of rank `k` at each saved checkpoint (from the
/// capture series in the record), one line per (seed, module, direction); none when the record
/// keeps no Δσ per pick.
fn delta_sigma_chart(
    r: &crate::reproduce::Reproduction,
    k: usize,
    dash_t: usize,
) -> Result<Option<String>> {
    use std::collections::BTreeMap;
    let mut lines: BTreeMap<(u64, String, usize), Vec<(f64, f64)>> = BTreeMap::new();
    for s in r
        .capture
        .iter()
        .filter(|s| s.method == crate::names::Method::LoraDash && s.rank == k)
    {
        for p in &s.points {
            for d in &p.delta_sigma {
                lines
                    .entry((s.seed, d.module.clone(), d.index))
                    .or_default()
                    .push((p.step as f64, d.delta_sigma.abs()));
            }
        }
    }
    if lines.is_empty() {
        return Ok(None);
    }
    let seeds: Vec<u64> = {
        let mut v: Vec<u64> = lines.keys().map(|k| k.0).collect();
        v.dedup();
        v
    };
    let names: Vec<String> = lines
        .keys()
        .map(|(seed, module, i)| format!("seed {seed} {module} direction {i}"))
        .collect();
    let series: Vec<(&str, Vec<(f64, f64)>)> = names
        .iter()
        .zip(lines.values())
        .map(|(n, v)| (n.as_str(), v.clone()))
        .collect();
    let mut listed = std::collections::HashSet::new();
    let styles = lines
        .keys()
        .map(|(seed, _, _)| {
            let i = seeds.iter().position(|s| s == seed).unwrap_or(0);
            charts::Style {
                colour: charts::PALETTE[(i + 1) % charts::PALETTE.len()],
                dash: None,
                legend: listed.insert(*seed).then(|| format!("seed {seed}")),
            }
        })
        .collect();
    let svg = chart(charts::lines_with(
        &series,
        "training step",
        "|Δσ| of a pick",
        &charts::LineOpts {
            marker: (dash_t > 0).then_some((dash_t as f64, "Dash switch")),
            styles,
            width: Some(520),
            height: Some(300),
            ..Default::default()
        },
    ))?;
    Ok(Some(svg))
}

/// A task's headline accuracy in one set of scores.
fn task_score(s: &Scores, task: &str, p: Protocol) -> Option<f64> {
    let t = s.tasks.iter().find(|t| t.task == task)?;
    match p {
        Protocol::Loglik => t.loglik,
        Protocol::Generate => t.generate,
    }
}

fn null_cells(n: &CaptureNull) -> [String; 5] {
    [
        format!("{:.2}", n.accuracy),
        format!("{:.2}", n.null_mean),
        format!("{:.2}", n.null_p95),
        opt_fmt(n.kappa, 2),
        format!(
            "{} / {}",
            n.above_null,
            n.above_null + n.not_above_null + n.untestable
        ),
    ]
}

/// Horizontal levels of an accuracy chart: the base model, the majority answer, uniform chance.
fn levels(base: Option<f64>, majority: Option<f64>, uniform: Option<f64>) -> Vec<charts::Level> {
    let mut v = Vec::new();
    if let Some(y) = base {
        v.push(charts::Level {
            y,
            label: "base model".into(),
            colour: charts::method_colour(Method::Full),
            dash: None,
        });
    }
    if let Some(y) = majority {
        v.push(charts::Level {
            y,
            label: "majority answer".into(),
            colour: RGBColor(0, 0, 0),
            dash: Some((8, 5)),
        });
    }
    if let Some(y) = uniform {
        v.push(charts::Level {
            y,
            label: "uniform chance".into(),
            colour: RGBColor(150, 150, 150),
            dash: Some((2, 4)),
        });
    }
    v
}

fn paper_pct(p: &PaperRow) -> Option<f64> {
    p.params_pct.parse::<f64>().ok()
}

/// One Params % axis for the measured grid and the paper's table.
pub(super) fn params_x_range(r: &Reproduction) -> Option<(f64, f64)> {
    let sm = &r.summary;
    let all_x: Vec<f64> = sm
        .configs
        .iter()
        .map(|c| c.trainable_pct)
        .chain(r.runs.iter().map(|x| x.trainable_pct))
        .chain(
            sm.paper
                .iter()
                .filter(|p| p.method != "full")
                .filter_map(paper_pct),
        )
        .filter(|x| *x > 0.0 && x.is_finite())
        .collect();
    (!all_x.is_empty()).then(|| {
        let lo = all_x.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = all_x.iter().cloned().fold(0.0, f64::max);
        (lo / 10f64.powf(0.35), hi * 10f64.powf(0.25))
    })
}

/// LoRA a little left of its Params %, LoRA-Dash a little right.
fn side(m: Method) -> f64 {
    if m == Method::Lora {
        -1.0
    } else {
        1.0
    }
}

/// One configuration's marks: its mean and interval (`with_mean`) and every seed's `value`.
fn config_marks(
    r: &Reproduction,
    m: Method,
    c: &crate::reproduce::summary::ConfigStats,
    value: &dyn Fn(&RunResult) -> Option<f64>,
    with_mean: bool,
) -> charts::ConfigMarks {
    charts::ConfigMarks {
        label: format!("{} r={}", m.label(), c.rank),
        // Small multiples: no tags (Params% places each rank as above).
        tag: if with_mean {
            format!("r={}", c.rank)
        } else {
            String::new()
        },
        x: c.trainable_pct,
        mean: with_mean.then_some(c.mean),
        ci: if with_mean {
            c.ci.as_ref().map(|i| (i.lo, i.hi))
        } else {
            None
        },
        seeds: r
            .runs
            .iter()
            .filter(|x| x.method == m && x.rank == c.rank)
            .filter_map(|x| Some((x.name.clone(), x.trainable_pct, value(x)?)))
            .collect(),
        note: format!(
            "{} r={}: mean {:.2} % over seeds {:?}{}, Params % {}",
            m.label(),
            c.rank,
            c.mean,
            c.seeds,
            c.ci.as_ref().map_or(String::new(), |i| format!(
                " (95 % interval {:.2} … {:.2})",
                i.lo, i.hi
            )),
            number(c.trainable_pct)
        ),
    }
}

/// The measured grid's marks per method (LoRA, LoRA-Dash), each seed at `value`.
fn measured_marks(
    r: &Reproduction,
    value: &dyn Fn(&RunResult) -> Option<f64>,
    with_mean: bool,
) -> Vec<charts::MethodMarks> {
    [Method::Lora, Method::LoraDash]
        .into_iter()
        .map(|m| charts::MethodMarks {
            name: m.label().into(),
            colour: charts::method_colour(m),
            side: side(m),
            configs: r
                .summary
                .configs
                .iter()
                .filter(|c| c.method == m)
                .map(|c| config_marks(r, m, c, value, with_mean))
                .collect(),
        })
        .filter(|m| !m.configs.is_empty())
        .collect()
}

/// Mean accuracy over tasks against Params %, beside the base model and chance.
pub(super) fn accuracy_chart(
    r: &Reproduction,
    proto: &str,
    x_range: Option<(f64, f64)>,
) -> Result<String> {
    let (majority, uniform) = r.summary.chance_means();
    chart(charts::params_accuracy(
        &measured_marks(r, &|x| Some(x.average()), true),
        &levels(r.base.as_ref().map(|b| b.average), majority, uniform),
        &charts::ParamsOpts {
            x_range,
            y_desc: format!("mean accuracy over tasks (%, {proto})"),
            width: Some(560),
            height: Some(360),
            ..Default::default()
        },
    ))
}

/// The paper's marks of one method (`key`: its name in the paper's table).
fn paper_marks(sm: &Summary, key: &str, m: Method) -> charts::MethodMarks {
    charts::MethodMarks {
        name: format!("{} (paper)", m.label()),
        colour: charts::method_colour(m),
        side: side(m),
        configs: sm
            .paper
            .iter()
            .filter(|p| p.method == key)
            .filter_map(|p| {
                Some(charts::ConfigMarks {
                    label: format!("{} r={} (paper)", m.label(), p.rank?),
                    tag: format!("r={}", p.rank?),
                    x: paper_pct(p)?,
                    mean: Some(p.avg),
                    ci: None,
                    seeds: Vec::new(),
                    note: format!(
                        "{} {} r={} (paper): {:.1} %, Params % {}",
                        p.model,
                        m.label(),
                        p.rank?,
                        p.avg,
                        p.params_pct
                    ),
                })
            })
            .collect(),
    }
}

/// The paper's table on the measured chart's axes, its full fine-tune as a level.
pub(super) fn paper_chart(sm: &Summary, x_range: Option<(f64, f64)>) -> Result<String> {
    let marks = [
        paper_marks(sm, "lora", Method::Lora),
        paper_marks(sm, "lora-dash", Method::LoraDash),
    ];
    let full_avg = sm.paper.iter().find(|p| p.method == "full").map(|p| p.avg);
    let full = full_avg.map(|y| charts::Level {
        y,
        label: "full fine-tune".into(),
        colour: charts::method_colour(Method::Full),
        dash: None,
    });
    chart(charts::params_accuracy(
        &marks,
        &full.into_iter().collect::<Vec<_>>(),
        &charts::ParamsOpts {
            x_range,
            y_desc: "paper: average accuracy (%)".into(),
            width: Some(440),
            height: Some(360),
            no_legend: true,
            ..Default::default()
        },
    ))
}

/// Per task: every seed's accuracy against the task's chance levels and the base model.
pub(super) fn task_panels(
    r: &Reproduction,
    tasks: &[String],
    proto: &str,
) -> Result<Vec<TaskPanel>> {
    let sm = &r.summary;
    let mut panels = Vec::new();
    for t in tasks {
        let ch = sm.chance.iter().find(|c| &c.task == t);
        let marks = measured_marks(r, &|x| task_score(&x.scores, t, r.preset.protocol), false);
        if marks
            .iter()
            .all(|m| m.configs.iter().all(|c| c.seeds.is_empty()))
        {
            continue;
        }
        let svg = chart(charts::params_accuracy(
            &marks,
            &levels(
                r.base
                    .as_ref()
                    .and_then(|b| task_score(b, t, r.preset.protocol)),
                ch.map(|c| c.majority),
                ch.map(|c| c.uniform).filter(|u| *u > 0.0),
            ),
            &charts::ParamsOpts {
                y_desc: format!("accuracy (%, {proto})"),
                caption: Some(t.clone()),
                width: Some(312),
                height: Some(250),
                no_legend: true,
                ..Default::default()
            },
        ))?;
        panels.push(TaskPanel {
            task: t.clone(),
            svg,
            at_chance: ch.is_some_and(|c| c.at_chance),
        });
    }
    Ok(panels)
}

/// The grid's loss curves as the runs saved them (log y), one colour per method, one dash per
/// rank, the held-out loss as dots; none without saved curves.
pub(super) fn loss_chart(r: &Reproduction, curves: &[RunCurves]) -> Result<Option<String>> {
    if curves.is_empty() {
        return Ok(None);
    }
    let ranks_of = |m: Method| -> Vec<usize> {
        let mut v: Vec<usize> = curves
            .iter()
            .filter(|c| c.method == m)
            .map(|c| c.rank)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut styles = Vec::new();
    let mut points_only = Vec::new();
    let mut listed: Vec<(Method, usize)> = Vec::new();
    for c in curves {
        let ri = ranks_of(c.method)
            .iter()
            .position(|k| *k == c.rank)
            .unwrap_or(0);
        let first = !listed.contains(&(c.method, c.rank));
        listed.push((c.method, c.rank));
        series.push((format!("{} training loss", c.run), c.train.clone()));
        styles.push(charts::Style {
            colour: charts::method_colour(c.method),
            dash: charts::rank_dash(ri),
            legend: first.then(|| format!("{} r={}", c.method.label(), c.rank)),
        });
    }
    for c in curves.iter().filter(|c| !c.val.is_empty()) {
        points_only.push(series.len());
        series.push((format!("{} held-out loss", c.run), c.val.clone()));
        styles.push(charts::Style {
            colour: charts::method_colour(c.method),
            dash: None,
            legend: (points_only.len() == 1).then(|| "held-out loss (dots)".to_string()),
        });
    }
    let refs: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(n, p)| (n.as_str(), p.clone()))
        .collect();
    Ok(Some(chart(charts::lines_with(
        &refs,
        "optimizer step",
        "loss (nats/token, log)",
        &charts::LineOpts {
            log_y: true,
            marker: (r.preset.dash_t > 0).then_some((r.preset.dash_t as f64, "Dash switch")),
            points_only,
            styles,
            width: Some(900),
            height: Some(340),
            ..Default::default()
        },
    ))?))
}

/// TSD capture along training per configuration, beside its null and the empirical controls.
pub(super) fn capture_panels(r: &Reproduction) -> Result<Vec<CapturePanel>> {
    let mut keys: Vec<(Method, usize)> = Vec::new();
    for c in &r.summary.capture {
        if !keys.contains(&(c.method, c.rank)) {
            keys.push((c.method, c.rank));
        }
    }
    keys.into_iter()
        .map(|(m, k)| capture_panel(r, m, k))
        .collect()
}

fn capture_panel(r: &Reproduction, m: Method, k: usize) -> Result<CapturePanel> {
    let pts: Vec<&CaptureStats> = r
        .summary
        .capture
        .iter()
        .filter(|c| c.method == m && c.rank == k)
        .collect();
    let delta_sigma_svg = if m == Method::LoraDash {
        delta_sigma_chart(r, k, r.preset.dash_t)?
    } else {
        None
    };
    Ok(CapturePanel {
        label: format!("{} r={}", m.label(), k),
        colour: colour(m),
        svg: capture_chart(r, m, &pts)?,
        last: capture_last(&pts),
        controls: capture_controls(&r.summary, m, k, &pts),
        delta_sigma_svg,
    })
}

/// The series of one configuration's capture chart with their styles: accuracy on q, k, v and
/// on all modules, the tested statistic where it differs, κ.
fn capture_series(m: Method, pts: &[&CaptureStats]) -> (Vec<Series>, Vec<charts::Style>) {
    let xy = |f: &dyn Fn(&CaptureStats) -> Option<f64>| {
        pts.iter()
            .filter_map(|c| Some((c.step as f64, f(c)?)))
            .collect::<Vec<_>>()
    };
    let mc = charts::method_colour(m);
    let style = |dash, legend: &str| charts::Style {
        colour: mc,
        dash,
        legend: Some(legend.into()),
    };
    let mut series = vec![
        ("accuracy@(8,16), q, k, v", xy(&|c| c.qkv)),
        ("accuracy@(8,16), all modules", xy(&|c| c.all)),
    ];
    let mut styles = vec![style(None, "q, k, v"), style(Some((8, 5)), "all modules")];
    let tested = xy(&|c| c.null_qkv.as_ref().map(|n| n.accuracy));
    let differs = pts.iter().any(|c| {
        c.null_qkv
            .as_ref()
            .is_some_and(|n| c.qkv.is_none_or(|q| (q - n.accuracy).abs() > 1e-9))
    });
    if differs {
        series.push(("tested (LoRA part), q, k, v", tested));
        styles.push(style(Some((2, 4)), "tested (LoRA part)"));
    }
    let kappa = xy(&|c| c.null_qkv.as_ref().and_then(|n| n.kappa));
    if !kappa.is_empty() {
        series.push(("κ, q, k, v", kappa));
        styles.push(charts::Style {
            colour: charts::PALETTE[2],
            dash: None,
            legend: Some("κ (q, k, v)".into()),
        });
    }
    (series, styles)
}

/// One configuration's capture chart: its series, the null band, the paper's range.
fn capture_chart(r: &Reproduction, m: Method, pts: &[&CaptureStats]) -> Result<String> {
    let (series, styles) = capture_series(m, pts);
    let band: Vec<charts::BandPoint> = pts
        .iter()
        .filter_map(|c| {
            let n = c.null_qkv.as_ref()?;
            Some((c.step as f64, n.null_mean, n.null_p95))
        })
        .collect();
    let notes: Vec<(f64, String)> = pts
        .iter()
        .filter_map(|c| {
            let n = c.null_qkv.as_ref()?;
            Some((
                c.step as f64,
                format!(
                    "q, k, v modules above null {}, not above {}, untestable {} (summed over {} seed(s))",
                    n.above_null, n.not_above_null, n.untestable, n.seeds
                ),
            ))
        })
        .collect();
    let ymin = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(0.0, f64::min);
    let max_step = pts.iter().map(|c| c.step).max().unwrap_or(0) as f64;
    let paper_label = format!("paper: {}", paper::capture_range());
    chart(charts::lines_with(
        &series,
        "training step",
        "capture (fraction)",
        &charts::LineOpts {
            marker: (m == Method::LoraDash && r.preset.dash_t > 0)
                .then_some((r.preset.dash_t as f64, "Dash switch")),
            y_range: Some((ymin.min(0.0), 1.0)),
            x_range: Some((0.0, max_step)),
            hlines: vec![
                (paper::CAPTURE_QKV.0, paper_label.as_str()),
                (paper::CAPTURE_QKV.1, ""),
            ],
            band: (!band.is_empty()).then_some(("null (q, k, v): mean to p95", band)),
            notes,
            styles,
            width: Some(520),
            height: Some(300),
            ..Default::default()
        },
    ))
}

/// The last step's tested capture against its null, as the verdict states it.
fn capture_last(pts: &[&CaptureStats]) -> String {
    pts.iter()
        .max_by_key(|c| c.step)
        .and_then(|c| {
            let n = c.null_qkv.as_ref()?;
            Some(format!(
                "step {}: tested {:.2} against a null of {:.2} (p95 {:.2}), κ {}",
                c.step,
                n.accuracy,
                n.null_mean,
                n.null_p95,
                opt_fmt(n.kappa, 2)
            ))
        })
        .unwrap_or_else(|| "no null in this record".into())
}

/// The task's own reference first (the last step's capture), then the controls; none when the
/// configuration has no controls.
fn capture_controls(sm: &Summary, m: Method, k: usize, pts: &[&CaptureStats]) -> Vec<Vec<String>> {
    if !sm.controls.iter().any(|c| c.method == m && c.rank == k) {
        return Vec::new();
    }
    let row = |who: &str, modules: &str, n: &CaptureNull| {
        let mut row = vec![who.to_string(), modules.to_string()];
        row.extend(null_cells(n));
        row
    };
    let mut controls: Vec<Vec<String>> = Vec::new();
    if let Some(c) = pts.iter().max_by_key(|c| c.step) {
        for (n, modules) in [(&c.null_all, "all"), (&c.null_qkv, "q, k, v")] {
            if let Some(n) = n {
                controls.push(row("task reference", modules, n));
            }
        }
        for t in &c.by_type {
            controls.push(row("task reference", &t.module_type, &t.null));
        }
    }
    for c in sm.controls.iter().filter(|c| c.method == m && c.rank == k) {
        controls.push(row(&c.control, "all", &c.all));
        if let Some(q) = &c.qkv {
            controls.push(row(&c.control, "q, k, v", q));
        }
    }
    controls
}
