//! The reproduction record (`tsd reproduce commonsense`): its HTML page, terminal summary and
//! `results.csv`.

/// Appends one formatted line to a `String`.
macro_rules! say {
    ($o:expr, $($t:tt)*) => {{
        $o.push_str(&format!($($t)*));
        $o.push('\n');
    }};
}

use super::charts;
use super::page::{chart, opt_fmt, render};
use super::table::number;
use crate::error::Result;
use crate::reproduce::Reproduction;
use crate::train::Method;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
struct ReproRow {
    name: String,
    method: String,
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

/// One configuration's capture along training beside its null, and its controls.
#[derive(Serialize)]
struct CapturePanel {
    label: String,
    colour: String,
    svg: String,
    /// The last step's tested capture and null (q, k, v), as the verdict states it.
    last: String,
    controls: Vec<Vec<String>>,
    /// LoRA-Dash: |Δσ| of every pick over the saved checkpoints, one line per pick.
    delta_sigma_svg: Option<String>,
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
        .filter(|s| s.method == crate::train::Method::LoraDash && s.rank == k)
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

/// One task's small multiple.
#[derive(Serialize)]
struct TaskPanel {
    task: String,
    svg: String,
    at_chance: bool,
}

/// Per task: "loglik (generate)" in %.
fn task_cells(s: &crate::reproduce::Scores) -> Vec<String> {
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

/// A task's headline accuracy in one set of scores.
fn task_score(
    s: &crate::reproduce::Scores,
    task: &str,
    p: crate::reproduce::Protocol,
) -> Option<f64> {
    let t = s.tasks.iter().find(|t| t.task == task)?;
    match p {
        crate::reproduce::Protocol::Loglik => t.loglik,
        crate::reproduce::Protocol::Generate => t.generate,
    }
}

fn null_cells(n: &crate::reproduce::summary::CaptureNull) -> [String; 5] {
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

/// The `tsd reproduce commonsense` page, rendered from the reproduction's record (`results.json`)
/// and its runs' saved training curves; it computes nothing but display averages of recorded
/// numbers (the chance levels over tasks), which it names.
pub fn reproduce_html(
    r: &crate::reproduce::Reproduction,
    out: &str,
    curves: &[crate::reproduce::RunCurves],
) -> Result<String> {
    use crate::reproduce::summary::method_label;
    use crate::reproduce::Protocol;
    use crate::train::Method;
    let colour = |m: Method| charts::css(charts::method_colour(m));
    let tasks: Vec<String> = r
        .runs
        .first()
        .map(|x| x.scores.tasks.iter().map(|t| t.task.clone()).collect())
        .or_else(|| {
            r.base
                .as_ref()
                .map(|b| b.tasks.iter().map(|t| t.task.clone()).collect())
        })
        .unwrap_or_default();
    let mut rows: Vec<ReproRow> = Vec::new();
    if let Some(b) = &r.base {
        rows.push(ReproRow {
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
        });
    }
    for x in &r.runs {
        rows.push(ReproRow {
            name: x.name.clone(),
            method: method_label(x.method).into(),
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
    }
    let sm = &r.summary;
    let proto = match r.preset.protocol {
        Protocol::Loglik => "loglik",
        Protocol::Generate => "generate",
    };
    let config_rows: Vec<ConfigRow> = sm
        .configs
        .iter()
        .map(|c| ConfigRow {
            method: method_label(c.method).into(),
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
        .collect();
    // The headline is a mean over tasks, so its chance levels are the means over tasks of each
    // task's recorded levels (display averages of recorded numbers, named as such on the page).
    let mean_of = |v: Vec<f64>| crate::stats::mean(&v);
    let majority = mean_of(sm.chance.iter().map(|c| c.majority).collect());
    let uniform = mean_of(
        sm.chance
            .iter()
            .filter(|c| c.uniform > 0.0)
            .map(|c| c.uniform)
            .collect(),
    );
    let grey = charts::method_colour(Method::Full);
    let levels_of = |base: Option<f64>, maj: Option<f64>, uni: Option<f64>| {
        let mut v = Vec::new();
        if let Some(y) = base {
            v.push(charts::Level {
                y,
                label: "base model".into(),
                colour: grey,
                dash: None,
            });
        }
        if let Some(y) = maj {
            v.push(charts::Level {
                y,
                label: "majority answer".into(),
                colour: plotters::style::RGBColor(0, 0, 0),
                dash: Some((8, 5)),
            });
        }
        if let Some(y) = uni {
            v.push(charts::Level {
                y,
                label: "uniform chance".into(),
                colour: plotters::style::RGBColor(150, 150, 150),
                dash: Some((2, 4)),
            });
        }
        v
    };
    // One Params % axis for the measured grid and the paper's table.
    let paper_pct = |p: &crate::reproduce::summary::PaperRow| p.params_pct.parse::<f64>().ok();
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
    let x_range = (!all_x.is_empty()).then(|| {
        let lo = all_x.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = all_x.iter().cloned().fold(0.0, f64::max);
        (lo / 10f64.powf(0.35), hi * 10f64.powf(0.25))
    });
    let side = |m: Method| if m == Method::Lora { -1.0 } else { 1.0 };
    let measured_marks = |value: &dyn Fn(&crate::reproduce::RunResult) -> Option<f64>,
                          with_mean: bool|
     -> Vec<charts::MethodMarks> {
        [Method::Lora, Method::LoraDash]
            .into_iter()
            .map(|m| charts::MethodMarks {
                name: method_label(m).into(),
                colour: charts::method_colour(m),
                side: side(m),
                configs: sm
                    .configs
                    .iter()
                    .filter(|c| c.method == m)
                    .map(|c| charts::ConfigMarks {
                        label: format!("{} r={}", method_label(m), c.rank),
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
                            method_label(m),
                            c.rank,
                            c.mean,
                            c.seeds,
                            c.ci.as_ref().map_or(String::new(), |i| format!(
                                " (95 % interval {:.2} … {:.2})",
                                i.lo, i.hi
                            )),
                            number(c.trainable_pct)
                        ),
                    })
                    .collect(),
            })
            .filter(|m| !m.configs.is_empty())
            .collect()
    };
    let accuracy_svg = chart(charts::params_accuracy(
        &measured_marks(&|x| Some(x.average()), true),
        &levels_of(r.base.as_ref().map(|b| b.average), majority, uniform),
        &charts::ParamsOpts {
            x_range,
            y_desc: format!("mean accuracy over tasks (%, {proto})"),
            width: Some(560),
            height: Some(360),
            ..Default::default()
        },
    ))?;
    let paper_marks: Vec<charts::MethodMarks> =
        [("lora", Method::Lora), ("lora-dash", Method::LoraDash)]
            .into_iter()
            .map(|(key, m)| charts::MethodMarks {
                name: format!("{} (paper)", method_label(m)),
                colour: charts::method_colour(m),
                side: side(m),
                configs: sm
                    .paper
                    .iter()
                    .filter(|p| p.method == key)
                    .filter_map(|p| {
                        Some(charts::ConfigMarks {
                            label: format!("{} r={} (paper)", method_label(m), p.rank?),
                            tag: format!("r={}", p.rank?),
                            x: paper_pct(p)?,
                            mean: Some(p.avg),
                            ci: None,
                            seeds: Vec::new(),
                            note: format!(
                                "{} {} r={} (paper): {:.1} %, Params % {}",
                                p.model,
                                method_label(m),
                                p.rank?,
                                p.avg,
                                p.params_pct
                            ),
                        })
                    })
                    .collect(),
            })
            .collect();
    let full_avg = sm.paper.iter().find(|p| p.method == "full").map(|p| p.avg);
    let paper_svg = chart(charts::params_accuracy(
        &paper_marks,
        &full_avg
            .map(|y| {
                vec![charts::Level {
                    y,
                    label: "full fine-tune".into(),
                    colour: grey,
                    dash: None,
                }]
            })
            .unwrap_or_default(),
        &charts::ParamsOpts {
            x_range,
            y_desc: "paper: average accuracy (%)".into(),
            width: Some(440),
            height: Some(360),
            no_legend: true,
            ..Default::default()
        },
    ))?;
    // Per task: every seed's accuracy against the task's chance levels and the base model.
    let mut task_panels = Vec::new();
    for t in &tasks {
        let ch = sm.chance.iter().find(|c| &c.task == t);
        let marks = measured_marks(&|x| task_score(&x.scores, t, r.preset.protocol), false);
        if marks
            .iter()
            .all(|m| m.configs.iter().all(|c| c.seeds.is_empty()))
        {
            continue;
        }
        let svg = chart(charts::params_accuracy(
            &marks,
            &levels_of(
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
        task_panels.push(TaskPanel {
            task: t.clone(),
            svg,
            at_chance: ch.is_some_and(|c| c.at_chance),
        });
    }
    // The grid's loss curves as the runs saved them (log y), one colour per method, one dash
    // per rank, the held-out loss as dots.
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
    let loss_svg = if curves.is_empty() {
        None
    } else {
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
                legend: first.then(|| format!("{} r={}", method_label(c.method), c.rank)),
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
        Some(chart(charts::lines_with(
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
        ))?)
    };
    let loss_missing: Vec<&str> = r
        .runs
        .iter()
        .filter(|x| !curves.iter().any(|c| c.run == x.name))
        .map(|x| x.name.as_str())
        .collect();
    // TSD capture along training per configuration, beside its null and the empirical controls.
    let mut keys: Vec<(Method, usize)> = Vec::new();
    for c in &sm.capture {
        if !keys.contains(&(c.method, c.rank)) {
            keys.push((c.method, c.rank));
        }
    }
    let mut capture_panels = Vec::new();
    for &(m, k) in &keys {
        let pts: Vec<&crate::reproduce::summary::CaptureStats> = sm
            .capture
            .iter()
            .filter(|c| c.method == m && c.rank == k)
            .collect();
        let xy = |f: &dyn Fn(&crate::reproduce::summary::CaptureStats) -> Option<f64>| {
            pts.iter()
                .filter_map(|c| Some((c.step as f64, f(c)?)))
                .collect::<Vec<_>>()
        };
        let mc = charts::method_colour(m);
        let mut series: Vec<(&str, Vec<(f64, f64)>)> = vec![
            ("accuracy@(8,16), q, k, v", xy(&|c| c.qkv)),
            ("accuracy@(8,16), all modules", xy(&|c| c.all)),
        ];
        let mut styles = vec![
            charts::Style {
                colour: mc,
                dash: None,
                legend: Some("q, k, v".into()),
            },
            charts::Style {
                colour: mc,
                dash: Some((8, 5)),
                legend: Some("all modules".into()),
            },
        ];
        let tested = xy(&|c| c.null_qkv.as_ref().map(|n| n.accuracy));
        let differs = pts.iter().any(|c| {
            c.null_qkv
                .as_ref()
                .is_some_and(|n| c.qkv.is_none_or(|q| (q - n.accuracy).abs() > 1e-9))
        });
        if differs {
            series.push(("tested (LoRA part), q, k, v", tested));
            styles.push(charts::Style {
                colour: mc,
                dash: Some((2, 4)),
                legend: Some("tested (LoRA part)".into()),
            });
        }
        let kappa = xy(&|c| c.null_qkv.as_ref().and_then(|n| n.kappa));
        let has_kappa = !kappa.is_empty();
        if has_kappa {
            series.push(("κ, q, k, v", kappa));
            styles.push(charts::Style {
                colour: charts::PALETTE[2],
                dash: None,
                legend: Some("κ (q, k, v)".into()),
            });
        }
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
        let svg = chart(charts::lines_with(
            &series,
            "training step",
            "capture (fraction)",
            &charts::LineOpts {
                marker: (m == Method::LoraDash && r.preset.dash_t > 0)
                    .then_some((r.preset.dash_t as f64, "Dash switch")),
                y_range: Some((ymin.min(0.0), 1.0)),
                x_range: Some((0.0, max_step)),
                hlines: vec![(0.75, "paper: 0.75–0.82"), (0.82, "")],
                band: (!band.is_empty()).then_some(("null (q, k, v): mean to p95", band)),
                notes,
                styles,
                width: Some(520),
                height: Some(300),
                ..Default::default()
            },
        ))?;
        let last = pts
            .iter()
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
            .unwrap_or_else(|| "no null in this record".into());
        // The task's own reference first (the last step's capture), then the controls.
        let mut controls: Vec<Vec<String>> = Vec::new();
        if let Some(c) = pts.iter().max_by_key(|c| c.step) {
            for (n, modules) in [(&c.null_all, "all"), (&c.null_qkv, "q, k, v")] {
                if let Some(n) = n {
                    let mut row = vec!["task reference".to_string(), modules.to_string()];
                    row.extend(null_cells(n));
                    controls.push(row);
                }
            }
            for t in &c.by_type {
                let mut row = vec!["task reference".to_string(), t.module_type.clone()];
                row.extend(null_cells(&t.null));
                controls.push(row);
            }
        }
        let has_reference_rows = !controls.is_empty();
        controls.extend(
            sm.controls
                .iter()
                .filter(|c| c.method == m && c.rank == k)
                .flat_map(|c| {
                    let mut v = Vec::new();
                    let mut row = vec![c.control.clone(), "all".into()];
                    row.extend(null_cells(&c.all));
                    v.push(row);
                    if let Some(q) = &c.qkv {
                        let mut row = vec![c.control.clone(), "q, k, v".into()];
                        row.extend(null_cells(q));
                        v.push(row);
                    }
                    v
                }),
        );
        if !sm.controls.iter().any(|c| c.method == m && c.rank == k) && has_reference_rows {
            controls.clear();
        }
        let delta_sigma_svg = if m == Method::LoraDash {
            delta_sigma_chart(r, k, r.preset.dash_t)?
        } else {
            None
        };
        capture_panels.push(CapturePanel {
            label: format!("{} r={}", method_label(m), k),
            colour: colour(m),
            svg,
            last,
            controls,
            delta_sigma_svg,
        });
    }
    let capture_rows: Vec<Vec<String>> = r
        .capture
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
        .collect();
    let mut header: Vec<String> = ["model", "method", "rank", "params_pct"]
        .map(String::from)
        .to_vec();
    header.extend(sm.paper_tasks.iter().cloned());
    header.push("avg".into());
    header.push("Params% (tsd params)".into());
    let paper_rows: Vec<Vec<String>> = sm
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
    let comparison_rows: Vec<Vec<String>> = sm
        .comparisons
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
        .collect();
    let dash_rows: Vec<&ReproRow> = rows.iter().filter(|x| x.method == "LoRA-Dash").collect();
    let max_lora = r.preset.lora_ranks.iter().max().copied().unwrap_or(0);
    render(
        "reproduce.html",
        minijinja::context! {
            title => "tsd reproduce commonsense",
            tsd_version => env!("CARGO_PKG_VERSION"),
            build => env!("TSD_BUILD_VERSIONS"),
            r => r,
            out => out,
            tasks => tasks,
            rows => rows,
            config_rows => config_rows,
            colours => minijinja::context! {
                lora => colour(Method::Lora),
                dash => colour(Method::LoraDash),
                full => colour(Method::Full),
            },
            base_avg => r.base.as_ref().map(|b| format!("{:.2}", b.average)),
            base_gen => r.base.as_ref().map(|b| opt_fmt(b.generate_avg, 1)),
            majority => majority.map(|v| format!("{v:.2}")),
            uniform => uniform.map(|v| format!("{v:.1}")),
            accuracy_svg => accuracy_svg,
            paper_svg => paper_svg,
            task_panels => task_panels,
            loss_svg => loss_svg,
            loss_missing => loss_missing,
            capture_panels => capture_panels,
            capture_rows => capture_rows,
            dash_rows => dash_rows,
            proto => proto,
            paper_header => header,
            paper_rows => paper_rows,
            comparison_rows => comparison_rows,
            sm => sm,
            max_lora => max_lora,
            total_s => r.invocations.iter().map(|t| t.total_s).sum::<f64>(),
        },
    )
}

/// Renders the page of a reproduction's record into `OUT/report.html` (with the runs' saved
/// training curves from `OUT/runs/`): what the grid does at its end and what re-rendering a
/// saved record does. Returns the page's path.
pub fn write_reproduction(r: &Reproduction, out: &Path) -> Result<PathBuf> {
    let curves = crate::reproduce::saved_curves(out, r);
    let html = reproduce_html(r, &out.display().to_string(), &curves)?;
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

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Lora => "lora",
        Method::LoraDash => "lora-dash",
        Method::Full => "full",
    }
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
    let mut w = csv::Writer::from_writer(Vec::new());
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
    let io = |e: csv::Error| crate::Error::Internal(format!("results.csv: {e}"));
    w.write_record(&header).map_err(io)?;
    for x in &r.runs {
        let mut row = vec![
            x.name.clone(),
            method_name(x.method).to_string(),
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
        w.write_record(&row).map_err(io)?;
    }
    Ok(w.into_inner()
        .map_err(|e| crate::Error::Internal(format!("results.csv: {e}")))?)
}

/// The terminal summary of a reproduction (`tsd reproduce commonsense` prints it).
pub fn summary(r: &Reproduction) -> String {
    let mut out = String::new();
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
    for e in &sm.efficiency {
        say!(
            out,
            "parameter-efficiency, LoRA-Dash r={} ({:.2} %): {} (paper: 8–16×){}",
            e.dash_rank,
            e.dash_mean,
            e.ratio.map_or(
                "no LoRA rank in the grid reaches it".to_string(),
                |v| format!("{v:.0}× (LoRA r={})", e.lora_rank.unwrap_or(0))
            ),
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
    let paper = |m: &str, k: usize| {
        sm.paper
            .iter()
            .find(|p| p.method == m && p.rank == Some(k))
            .map_or("-".to_string(), |p| format!("{:.1} %", p.avg))
    };
    say!(
        out,
        "paper (LLaMA-7B, generate): LoRA-Dash r=4 {} vs LoRA r=32 {}, r=64 {}",
        paper("lora-dash", 4),
        paper("lora", 32),
        paper("lora", 64)
    );
    if let Some(rf) = &r.reference {
        say!(
        out,
            "TSD capture accuracy@(8,16) against {rf}, all adapted modules / q,k,v only (paper: ~0.75–0.82 on q,k,v):"
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
                crate::reproduce::summary::method_label(c.method),
                c.rank,
                c.control,
                c.all.accuracy,
                c.all.null_mean,
                c.all.kappa.map_or("-".into(), |k| format!("{k:+.2}"))
            );
        }
    }
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
    out
}
