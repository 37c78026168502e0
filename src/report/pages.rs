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

#[derive(Serialize)]
struct ReproRow {
    name: String,
    method: String,
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

/// The `tsd reproduce commonsense` page.
pub fn reproduce_html(r: &crate::reproduce::Reproduction, out: &str) -> Result<String> {
    use crate::reproduce::Protocol;
    use crate::train::Method;
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
            method: if x.method == Method::Lora {
                "LoRA".into()
            } else {
                "LoRA-Dash".into()
            },
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
    // Per method and rank, from the summary: (log2 mean trainable parameters, value).
    let by_rank = |m: Method,
                   f: &dyn Fn(&crate::reproduce::summary::ConfigStats) -> Option<f64>|
     -> Vec<(f64, f64)> {
        sm.configs
            .iter()
            .filter(|c| c.method == m)
            .filter_map(|c| Some((c.trainable_params.max(1.0).log2(), f(c)?)))
            .collect()
    };
    let proto = match r.preset.protocol {
        Protocol::Loglik => "loglik",
        Protocol::Generate => "generate",
    };
    let measured_svg = chart(charts::lines_with(
        &[
            ("LoRA", by_rank(Method::Lora, &|c| Some(c.mean))),
            ("LoRA-Dash", by_rank(Method::LoraDash, &|c| Some(c.mean))),
        ],
        "log2 trainable parameters",
        &format!("mean accuracy (%, {proto})"),
        &charts::LineOpts {
            ..Default::default()
        },
    ))?;
    let generate_svg = if sm.configs.iter().any(|c| c.unparseable_mean.is_some()) {
        Some(chart(charts::lines_with(
            &[
                ("LoRA", by_rank(Method::Lora, &|c| c.unparseable_mean)),
                (
                    "LoRA-Dash",
                    by_rank(Method::LoraDash, &|c| c.unparseable_mean),
                ),
            ],
            "log2 trainable parameters",
            "unparseable answers (%, generate)",
            &charts::LineOpts {
                y_range: Some((0.0, 100.0)),
                ..Default::default()
            },
        ))?)
    } else {
        None
    };
    // TSD capture along training on q, k, v (the paper's set): mean over seeds per method and rank.
    let mut capture_series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for c in &sm.capture {
        let label = format!(
            "{} r={}",
            crate::reproduce::summary::method_label(c.method),
            c.rank
        );
        if capture_series.last().is_none_or(|s| s.0 != label) {
            capture_series.push((label, Vec::new()));
        }
        if let (Some(v), Some(s)) = (c.qkv, capture_series.last_mut()) {
            s.1.push((c.step as f64, v));
        }
    }
    let capture_svg = if capture_series.iter().any(|s| !s.1.is_empty()) {
        let max_step = capture_series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.0))
            .fold(0.0, f64::max);
        let series: Vec<(&str, Vec<(f64, f64)>)> = capture_series
            .iter()
            .map(|(n, p)| (n.as_str(), p.clone()))
            .collect();
        Some(chart(charts::lines_with(
            &series,
            "training step",
            "accuracy@(8,16), q, k, v",
            &charts::LineOpts {
                marker: (r.preset.dash_t > 0).then_some((r.preset.dash_t as f64, "Dash switch")),
                y_range: Some((0.0, 1.0)),
                x_range: Some((0.0, max_step)),
                hlines: vec![(0.75, "paper: 0.75–0.82"), (0.82, "")],
                width: Some(960),
                height: Some(380),
                ..Default::default()
            },
        ))?)
    } else {
        None
    };
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
    let paper_pts = |m: &str| -> Vec<(f64, f64)> {
        sm.paper
            .iter()
            .filter(|p| p.method == m)
            .filter_map(|p| Some(((p.params_pct.parse::<f64>().ok()? * 100.0).log2(), p.avg)))
            .collect()
    };
    let paper_svg = chart(charts::lines_with(
        &[
            ("LoRA (paper)", paper_pts("lora")),
            ("LoRA-Dash (paper)", paper_pts("lora-dash")),
        ],
        "log2 (Params% x 100)",
        "average accuracy (%)",
        &charts::LineOpts {
            ..Default::default()
        },
    ))?;
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
            measured_svg => measured_svg,
            generate_svg => generate_svg,
            capture_svg => capture_svg,
            capture_rows => capture_rows,
            proto => proto,
            paper_svg => paper_svg,
            paper_header => header,
            paper_rows => paper_rows,
            comparison_rows => comparison_rows,
            sm => sm,
            max_lora => max_lora,
            total_s => r.invocations.iter().map(|t| t.total_s).sum::<f64>(),
        },
    )
}
