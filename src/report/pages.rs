//! Report pages: turn records into template contexts (numbers formatted, charts drawn) and render.

use super::{charts, render};
use crate::directions::null::Verdict;
use crate::error::{Error, Result};
use crate::inspect::InspectReport;
use crate::output::number;
use crate::run::{Curves, RunKind, RunRecord};
use crate::track::TrackReport;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

fn chart(r: std::result::Result<String, String>) -> Result<String> {
    r.map_err(Error::Internal)
}

#[derive(Serialize)]
struct Spectrum {
    module: String,
    group: String,
    picks: String,
    near_null: usize,
    enriched: Option<usize>,
    threshold: Option<String>,
    svg: String,
}

#[derive(Serialize)]
struct Row {
    module: String,
    shape: String,
    r: usize,
    scaling: String,
    fro: String,
    top: String,
    ratio: String,
    amp: String,
    dash: String,
    recall: String,
    accuracy: String,
    phi: String,
    /// z of the first TSD, enriched directions / null threshold, and the capture test.
    z: String,
    enriched: String,
    null_acc: String,
    p: String,
    kappa: String,
    verdict: String,
}

/// One module type's findings: capture against its null, enrichment, near-null picks.
#[derive(Serialize)]
struct Finding {
    group: String,
    modules: usize,
    /// Capture (with a reference and the null on).
    capture: Option<FindingCapture>,
    enriched_directions: Option<usize>,
    enriched_modules: Option<usize>,
    expected_false: Option<String>,
    near_null_picks: usize,
    picks: usize,
    /// Modules whose strongest TSD is a near-null direction.
    near_null_first: usize,
}

#[derive(Serialize)]
struct FindingCapture {
    above: usize,
    not_above: usize,
    untestable: usize,
    mean_accuracy: String,
    mean_null: String,
    kappa: String,
    p: String,
}

/// The module table of one module type (collapsed in `<details>`).
#[derive(Serialize)]
struct RowGroup {
    group: String,
    rows: Vec<Row>,
    above: usize,
    enriched: usize,
    near_null_first: usize,
}

/// Layer × module-type grid of one quantity.
fn grid(
    r: &InspectReport,
    f: impl Fn(&crate::inspect::ModuleReport) -> f64,
) -> (Vec<String>, Vec<String>, Vec<Vec<Option<f64>>>) {
    let types: Vec<String> = r
        .modules
        .iter()
        .map(|m| m.module_type.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let layers: Vec<usize> = r
        .modules
        .iter()
        .filter_map(|m| m.layer)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut vals = vec![vec![None; types.len()]; layers.len().max(1)];
    for m in &r.modules {
        let li = m
            .layer
            .and_then(|l| layers.iter().position(|x| *x == l))
            .unwrap_or(0);
        let ti = types
            .iter()
            .position(|t| *t == m.module_type)
            .expect("collected above");
        vals[li][ti] = Some(f(m));
    }
    let rows = if layers.is_empty() {
        vec!["-".to_string()]
    } else {
        layers.iter().map(|l| l.to_string()).collect()
    };
    (rows, types, vals)
}

fn range_note(vals: &[Vec<Option<f64>>]) -> String {
    let v: Vec<f64> = vals
        .iter()
        .flatten()
        .flatten()
        .cloned()
        .filter(|x| x.is_finite() && *x > 0.0)
        .collect();
    if v.is_empty() {
        return "no data".into();
    }
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(0.0, f64::max);
    format!("dark = {} … bright = {}", number(lo), number(hi))
}

/// The `tsd inspect --html` page. The report must carry spectra (`keep_spectrum`).
pub fn inspect_html(r: &InspectReport) -> Result<String> {
    let o = &r.options;
    let protocol_short = format!("SVD {}, σ floor {}", o.precision, o.floor.relative);
    let protocol = format!(
        "change rates δ_i = |u_iᵀ ΔW v_i| / σ_i over W's SVD ({}), σ floor {} · top-{} TSDs · amplification with r = {} · capture recall@({},{}) / accuracy@({},{})",
        o.precision,
        o.floor.relative,
        o.top_s,
        o.amp_rank.map_or("each module's LoRA rank".to_string(), |x| x.to_string()),
        o.recall_k.0,
        o.recall_k.1,
        o.accuracy_k.0,
        o.accuracy_k.1
    );
    let (rows_l, cols, dvals) = grid(r, |m| m.tsd.first().map_or(0.0, |t| t.delta));
    let heat_delta = chart(charts::heatmap(&rows_l, &cols, &dvals, true, "max δ"))?;
    let (_, _, avals) = grid(r, |m| m.amplification.factor);
    let heat_amp = chart(charts::heatmap(
        &rows_l,
        &cols,
        &avals,
        true,
        "amplification",
    ))?;
    let types: Vec<String> = r.by_type.iter().map(|t| t.group.clone()).collect();
    let mean_of = |t: &str, f: &dyn Fn(&crate::directions::Amplification) -> f64| {
        let v: Vec<f64> = r
            .modules
            .iter()
            .filter(|m| m.module_type == t)
            .map(|m| f(&m.amplification))
            .collect();
        crate::stats::mean(&v).unwrap_or(0.0)
    };
    let amp_bars = chart(charts::grouped_log_bars(
        &types,
        &[
            (
                "ΔW basis",
                types
                    .iter()
                    .map(|t| mean_of(t, &|a| a.proj_delta_basis))
                    .collect(),
            ),
            (
                "W basis",
                types
                    .iter()
                    .map(|t| mean_of(t, &|a| a.proj_w_basis))
                    .collect(),
            ),
            (
                "random",
                types
                    .iter()
                    .map(|t| mean_of(t, &|a| a.proj_random))
                    .collect(),
            ),
        ],
        "‖UᵀWV‖F",
    ))?;
    // One spectrum per module type: its module with the strongest top change rate.
    let top_delta = |m: &crate::inspect::ModuleReport| m.tsd.first().map_or(0.0, |t| t.delta);
    let mut spectra = Vec::new();
    for t in &types {
        let best = r
            .modules
            .iter()
            .filter(|m| &m.module_type == t && m.sigma.is_some() && m.delta.is_some())
            .max_by(|a, b| top_delta(a).total_cmp(&top_delta(b)));
        let Some(m) = best else { continue };
        let (s, d) = (
            m.sigma.as_ref().expect("filtered"),
            m.delta.as_ref().expect("filtered"),
        );
        let picks: Vec<charts::SpectrumPick> = m
            .tsd
            .iter()
            .map(|t| charts::SpectrumPick {
                index: t.index,
                near_null: t.near_null,
                z: t.z,
                enriched: t.enriched,
            })
            .collect();
        let null = m.enrichment.as_ref().map(|e| charts::SpectrumNull {
            coordinate_sd: e.null.coordinate_sd,
            threshold: e.null.threshold,
        });
        let idx: Vec<usize> = m.tsd.iter().map(|t| t.index).collect();
        spectra.push(Spectrum {
            module: m.module.clone(),
            group: t.clone(),
            picks: format!("{idx:?}"),
            near_null: m.near_null_picks,
            enriched: m.enrichment.as_ref().map(|e| e.enriched_count),
            threshold: m.enrichment.as_ref().map(|e| number(e.null.threshold)),
            svg: chart(charts::spectrum(s, d, &picks, null))?,
        });
    }
    let verdict_of = |m: &crate::inspect::ModuleReport| {
        m.capture
            .as_ref()
            .and_then(|c| c.primary().null.as_ref())
            .map(|n| n.verdict)
    };
    let rows: Vec<Row> = r
        .modules
        .iter()
        .map(|m| {
            let test = m.capture.as_ref().and_then(|c| c.primary().null.as_ref());
            Row {
                module: m.module.clone(),
                shape: format!("{}×{}", m.shape[0], m.shape[1]),
                r: m.r,
                scaling: number(m.scaling),
                fro: number(m.delta_fro),
                top: m
                    .tsd
                    .iter()
                    .take(4)
                    .map(|t| {
                        format!(
                            "{}: {}{}",
                            t.index,
                            number(t.delta),
                            if t.enriched == Some(true) { " *" } else { "" }
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                ratio: m.tsd.first().map_or("-".into(), |t| {
                    format!(
                        "{}{}",
                        number(t.sigma_ratio),
                        if t.near_null { " !" } else { "" }
                    )
                }),
                amp: number(m.amplification.factor),
                dash: m
                    .dash
                    .as_ref()
                    .map_or("-".into(), |d| number(d.delta_sigma_max_abs)),
                recall: m
                    .capture
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.2}", c.recall.value)),
                accuracy: m.capture.as_ref().map_or("-".into(), |c| {
                    let p = c.primary();
                    if c.lora_part.is_some() {
                        format!("{:.2} (LoRA part {:.2})", c.accuracy.value, p.value)
                    } else {
                        format!("{:.2}", p.value)
                    }
                }),
                phi: m
                    .capture
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.2}", c.subspace_similarity)),
                z: m.tsd
                    .first()
                    .and_then(|t| t.z)
                    .map_or("-".into(), |z| format!("{z:.2}")),
                enriched: m.enrichment.as_ref().map_or("-".into(), |e| {
                    format!(
                        "{} (max |z| {:.1} / {:.1})",
                        e.enriched_count, e.max_abs_z, e.null.threshold
                    )
                }),
                null_acc: test.map_or("-".into(), |n| {
                    format!("{:.2} / {:.2}", n.null_mean, n.null_p95)
                }),
                p: test.map_or("-".into(), |n| {
                    format!(
                        "{}{}",
                        number(n.p_value),
                        n.q_value
                            .map_or(String::new(), |q| format!(" (q {})", number(q)))
                    )
                }),
                kappa: test
                    .and_then(|n| n.kappa)
                    .map_or("-".into(), |k| format!("{k:.2}")),
                verdict: test.map_or("-".into(), |n| n.verdict.label().to_string()),
            }
        })
        .collect();
    let near_null_first =
        |m: &crate::inspect::ModuleReport| m.tsd.first().is_some_and(|t| t.near_null);
    let mut row_groups: Vec<RowGroup> = Vec::new();
    for (m, row) in r.modules.iter().zip(rows) {
        let i = match row_groups.iter().position(|g| g.group == m.module_type) {
            Some(i) => i,
            None => {
                row_groups.push(RowGroup {
                    group: m.module_type.clone(),
                    rows: Vec::new(),
                    above: 0,
                    enriched: 0,
                    near_null_first: 0,
                });
                row_groups.len() - 1
            }
        };
        let g = &mut row_groups[i];
        g.rows.push(row);
        g.above += usize::from(verdict_of(m) == Some(Verdict::AboveNull));
        g.enriched += usize::from(m.enrichment.as_ref().is_some_and(|e| e.enriched_count > 0));
        g.near_null_first += usize::from(near_null_first(m));
    }
    row_groups.sort_by_key(|g| types.iter().position(|t| *t == g.group));
    // Findings by module type, then all modules: the record's null-model summaries.
    let nm = r.null_model.as_ref();
    let mut groups: Vec<String> = types.clone();
    groups.push("all".into());
    let findings: Vec<Finding> = groups
        .iter()
        .map(|g| {
            let mods: Vec<&crate::inspect::ModuleReport> = r
                .modules
                .iter()
                .filter(|m| g == "all" || &m.module_type == g)
                .collect();
            let cap = nm.and_then(|n| n.capture.iter().find(|c| &c.group == g));
            let enr = nm.and_then(|n| n.enrichment.iter().find(|c| &c.group == g));
            Finding {
                group: g.clone(),
                modules: mods.len(),
                capture: cap.map(|c| FindingCapture {
                    above: c.above_null,
                    not_above: c.not_above_null,
                    untestable: c.untestable,
                    mean_accuracy: format!("{:.3}", c.mean_accuracy),
                    mean_null: format!("{:.3}", c.mean_null_accuracy),
                    kappa: c.mean_kappa.map_or("-".into(), |k| format!("{k:.2}")),
                    p: c.aggregate_p.map_or("-".into(), number),
                }),
                enriched_directions: enr.map(|e| e.enriched_directions),
                enriched_modules: enr.map(|e| e.enriched_modules),
                expected_false: enr.map(|e| format!("{:.1}", e.expected_false)),
                near_null_picks: mods.iter().map(|m| m.near_null_picks).sum(),
                picks: mods.iter().map(|m| m.tsd.len()).sum(),
                near_null_first: mods.iter().filter(|m| near_null_first(m)).count(),
            }
        })
        .collect();
    // The headline sentences, from the `all` row.
    let mut headline: Vec<String> = Vec::new();
    let all = findings.last().expect("the all row");
    match (&r.reference, nm) {
        (_, None) => headline.push(
            "The null model is off in this record (--no-null): no figure below stands beside its null."
                .into(),
        ),
        (Some(_), Some(n)) => {
            if let Some(c) = &all.capture {
                headline.push(format!(
                    "Capture against the reference: {} of {} modules above the rotation null, {} not above, {} untestable ({}); mean accuracy@({},{}) {} against the null's {}, mean κ {}, one test over all modules p = {}.",
                    c.above,
                    all.modules,
                    c.not_above,
                    c.untestable,
                    n.procedure,
                    o.accuracy_k.0,
                    o.accuracy_k.1,
                    c.mean_accuracy,
                    c.mean_null,
                    c.kappa,
                    c.p
                ));
            }
        }
        (None, Some(_)) => headline.push(
            "No reference was given: capture is not measured, so no capture verdict (pass --reference)."
                .into(),
        ),
    }
    if let (Some(d), Some(m), Some(e)) = (
        all.enriched_directions,
        all.enriched_modules,
        &all.expected_false,
    ) {
        headline.push(format!(
            "Enrichment: {d} direction(s) in {m} of {} modules have |z| above their module's null threshold; the null expects {e} such false directions.",
            all.modules
        ));
    }
    if all.picks > 0 {
        let by: Vec<String> = findings
            .iter()
            .filter(|f| f.group != "all" && f.near_null_picks > 0)
            .map(|f| format!("{} {} of {}", f.group, f.near_null_picks, f.picks))
            .collect();
        headline.push(format!(
            "Near-null picks (σ/σ₁ < 10⁻³, δ decided by the division): {} of {} TSDs{}; in {} module(s) the strongest TSD is one.",
            all.near_null_picks,
            all.picks,
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            },
            all.near_null_first
        ));
    }
    render(
        "inspect.html",
        minijinja::context! {
            title => "tsd inspect",
            tsd_version => env!("CARGO_PKG_VERSION"),
            build => env!("TSD_BUILD_VERSIONS"),
            r => r,
            protocol => protocol,
            protocol_short => protocol_short,
            heat_delta => heat_delta,
            heat_delta_range => range_note(&dvals),
            heat_delta_grey => charts::heatmap_has_grey(&dvals, true),
            heat_amp => heat_amp,
            heat_amp_range => range_note(&avals),
            heat_amp_grey => charts::heatmap_has_grey(&avals, true),
            amp_bars => amp_bars,
            amp_r_note => o.amp_rank.map_or("each module's LoRA rank".to_string(), |x| x.to_string()),
            spectra => spectra,
            row_groups => row_groups,
            findings => findings,
            headline => headline,
            nm => nm,
        },
    )
}

#[derive(Serialize)]
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

/// One task's small multiple.
#[derive(Serialize)]
struct TaskPanel {
    task: String,
    svg: String,
    at_chance: bool,
}

fn opt_fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
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
    use crate::names::Method;
    use crate::reproduce::Protocol;
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
                name: m.label().into(),
                colour: charts::method_colour(m),
                side: side(m),
                configs: sm
                    .configs
                    .iter()
                    .filter(|c| c.method == m)
                    .map(|c| charts::ConfigMarks {
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
            label: format!("{} r={}", m.label(), k),
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
