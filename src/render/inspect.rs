//! The inspect record (`tsd inspect`): its terminal table, CSV and HTML page.

use super::charts;
use super::page::{chart, render};
use super::table::{csv_text, number, right_align, table};
use crate::directions::null::Verdict;
use crate::error::Result;
use crate::inspect::InspectReport;
use crate::linalg::cache::CacheOutcome;
use serde::Serialize;
use std::collections::BTreeSet;

/// `model.layers.3.self_attn.q_proj` → `3.q_proj` (the table's module column); other names as they are.
fn short_module(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.iter().position(|p| *p == "layers") {
        Some(i) if i + 1 < parts.len() && parts[i + 1].parse::<usize>().is_ok() => {
            format!("{}.{}", parts[i + 1], parts[parts.len() - 1])
        }
        _ => name.to_string(),
    }
}

/// The inspect report as an aligned terminal table (modules, then summaries, params, warnings).
pub fn inspect_table(r: &InspectReport) -> String {
    let with_ref = r.reference.is_some();
    // r and the scaling get columns only when modules differ in them; else the header says them.
    let uniform = r
        .modules
        .windows(2)
        .all(|w| w[0].r == w[1].r && w[0].scaling == w[1].scaling);
    let mut h = vec!["module", "shape"];
    if !uniform {
        h.extend(["r", "scale"]);
    }
    h.extend(["‖ΔW‖F", "top i:δ", "σ/σ₁", "amp"]);
    if r.has_dash {
        h.push("max|Δσ|");
    }
    if with_ref {
        h.extend(["rec", "acc", "φ"]);
    }
    let mut t = table(&h);
    for m in &r.modules {
        let top: Vec<String> = m
            .tsd
            .iter()
            .take(2)
            .map(|x| format!("{}:{}", x.index, number(x.delta)))
            .collect();
        let ratio = m.tsd.first().map_or("-".into(), |x| {
            format!("{:.3}{}", x.sigma_ratio, if x.near_null { "!" } else { "" })
        });
        let a = &m.amplification;
        let mut row = vec![
            short_module(&m.module),
            format!("{}x{}", m.shape[0], m.shape[1]),
        ];
        if !uniform {
            row.extend([m.r.to_string(), number(m.scaling)]);
        }
        row.extend([number(m.delta_fro), top.join(" "), ratio, number(a.factor)]);
        if r.has_dash {
            row.push(
                m.dash
                    .as_ref()
                    .map_or("-".into(), |d| number(d.delta_sigma_max_abs)),
            );
        }
        if with_ref {
            match &m.capture {
                Some(c) => row.extend([
                    format!("{:.2}", c.recall.value),
                    format!("{:.2}", c.accuracy.value),
                    format!("{:.2}", c.subspace_similarity),
                ]),
                None => row.extend(["-".into(), "-".into(), "-".into()]),
            }
        }
        t.add_row(row);
    }
    right_align(&mut t, 2);
    // One space between columns instead of two.
    for c in t.column_iter_mut().skip(1) {
        c.set_padding((0, 1));
    }
    let mut out = format!("adapter: {}\nbase:    {}\n", r.adapter, r.base);
    if let (true, Some(m)) = (uniform, r.modules.first()) {
        out += &format!("every module: r {}, scaling {}\n", m.r, number(m.scaling));
    }
    if let Some(rf) = &r.reference {
        out += &format!("reference: {rf}\n");
    }
    out += &inspect_findings(r);
    out += &format!("{t}\n");
    out += "(module: layer.name; top i:δ: the 2 largest change rates δ = |uᵀΔWv|/σ; σ/σ₁ of the\n first, ! = near-null; amp = ‖ΔW‖F / ‖UᵣᵀWVᵣ‖F";
    if with_ref {
        let o = &r.options;
        out += &format!(
            ";\n rec, acc: TSD recall@({},{}) and accuracy@({},{}) against the reference; φ: subspace similarity",
            o.recall_k.0, o.recall_k.1, o.accuracy_k.0, o.accuracy_k.1
        );
    }
    out += ";\n every TSD, the projections, full module names: --json or --csv)\n\n";
    out += "(by module type, by layer: means over the group's modules of the top δ, amp, ‖ΔW‖F and acc;\n max δ: the largest top δ; near-null: picks with σ/σ₁ < 1e-3, summed)\n";
    for (title, groups) in [("by module type", &r.by_type), ("by layer", &r.by_layer)] {
        if groups.is_empty() {
            continue;
        }
        let mut h = vec![
            title,
            "modules",
            "top δ",
            "max δ",
            "amp",
            "‖ΔW‖F",
            "near-null",
        ];
        if with_ref {
            h.push("acc");
        }
        let mut g = table(&h);
        for s in groups.iter() {
            let mut row = vec![
                s.group.clone(),
                s.modules.to_string(),
                number(s.mean_top_delta),
                number(s.max_top_delta),
                number(s.mean_amplification),
                number(s.mean_delta_fro),
                s.near_null_picks.to_string(),
            ];
            if with_ref {
                row.push(s.mean_accuracy.map_or("-".into(), |a| format!("{a:.3}")));
            }
            g.add_row(row);
        }
        right_align(&mut g, 1);
        out += &format!("{g}\n");
    }
    let p = &r.params;
    out += &format!(
        "parameters: trainable {} ({:.4}% of the base's {}), frozen stored {}, stored {}\n",
        p.trainable, p.trainable_pct_of_base, p.base, p.frozen_stored, p.stored
    );
    for t in &r.other_tensors {
        out += &format!(
            "  + {} {} {:?}: {} parameter(s){}, not analysed\n",
            t.kind,
            t.tensor,
            t.shape,
            t.params,
            if t.trainable { " trainable" } else { " frozen" }
        );
    }
    out += &svd_line(r);
    for w in &r.warnings {
        out += &format!("warning: {w}\n");
    }
    out
}

/// The findings that lead the inspect table: capture against its null, enrichment and
/// near-null picks by module type.
fn inspect_findings(r: &InspectReport) -> String {
    let mut out = String::from("\nfindings\n");
    if let Some(n) = &r.null_model {
        if !n.capture.is_empty() {
            out += &format!(
                "TSD capture against its rotation null (accuracy@({},{}); LoRA-Dash: the LoRA part;\nBenjamini–Hochberg at {} over the testable modules; at most {} draws each):\n",
                r.options.accuracy_k.0, r.options.accuracy_k.1, n.alpha, n.capture_draws
            );
            let mut t = table(&[
                "type",
                "modules",
                "above null",
                "not above",
                "untestable",
                "acc",
                "null",
                "κ",
                "type p",
            ]);
            for g in &n.capture {
                t.add_row(vec![
                    g.group.clone(),
                    g.modules.to_string(),
                    g.above_null.to_string(),
                    g.not_above_null.to_string(),
                    g.untestable.to_string(),
                    format!("{:.3}", g.mean_accuracy),
                    format!("{:.3}", g.mean_null_accuracy),
                    g.mean_kappa.map_or("-".into(), |k| format!("{k:.2}")),
                    g.aggregate_p.map_or("-".into(), number),
                ]);
            }
            right_align(&mut t, 1);
            out += &format!("{t}\n");
            out += "(acc, null: mean accuracy and its null mean; untestable: even a perfect overlap is reached\n by the null too often; κ = (acc − null)/(1 − null), mean over modules; type p: the type's\n summed hits against its null)\n";
        }
        out += &format!(
            "enrichment |z| = |uᵀΔWv| / its null sd, above the null's max-|z| {:.0} % quantile (per module):\n",
            100.0 * (1.0 - n.alpha)
        );
        let mut t = table(&[
            "type",
            "modules",
            "with enriched",
            "enriched dirs",
            "expected false",
        ]);
        for g in &n.enrichment {
            t.add_row(vec![
                g.group.clone(),
                g.modules.to_string(),
                g.enriched_modules.to_string(),
                g.enriched_directions.to_string(),
                format!("{:.1}", g.expected_false),
            ]);
        }
        right_align(&mut t, 1);
        out += &format!("{t}\n");
    } else {
        out += "null model off (--no-null): no figure below stands beside its null\n";
    }
    let near: Vec<String> = r
        .by_type
        .iter()
        .filter(|g| g.near_null_picks > 0)
        .map(|g| {
            format!(
                "{} {} of {}",
                g.group,
                g.near_null_picks,
                g.modules * r.options.top_s
            )
        })
        .collect();
    if !near.is_empty() {
        out += &format!(
            "near-null picks (σ/σ₁ < {:.0e}, δ dominated by the division): {}\n",
            crate::directions::NEAR_NULL_RATIO,
            near.join(", ")
        );
    }
    out + "\n"
}

/// What the base SVDs cost: how many were computed and how many came from the cache, each with
/// its time (a cache hit still reads and hashes the weight).
fn svd_line(r: &InspectReport) -> String {
    let (hits, computed): (Vec<_>, Vec<_>) = r
        .modules
        .iter()
        .partition(|m| m.svd_cache == CacheOutcome::Hit);
    let secs = |v: &[&crate::inspect::ModuleReport]| v.iter().map(|m| m.svd_seconds).sum::<f64>();
    let mut parts = Vec::new();
    if !computed.is_empty() {
        parts.push(format!(
            "{} computed ({:.2} s)",
            computed.len(),
            secs(&computed)
        ));
    }
    if !hits.is_empty() {
        parts.push(format!(
            "{} from the cache ({:.2} s to read and check)",
            hits.len(),
            secs(&hits)
        ));
    }
    format!(
        "base SVDs for {} module(s): {}; wall {:.2} s\n",
        r.modules.len(),
        parts.join(", "),
        r.wall_seconds
    )
}

/// The inspect report as CSV, one row per module.
pub fn inspect_csv(r: &InspectReport) -> Result<String> {
    let header = [
        "module",
        "module_type",
        "layer",
        "out",
        "in",
        "r",
        "alpha",
        "scaling",
        "delta_fro",
        "sigma_max",
        "sigma_min",
        "tsd_indices",
        "tsd_delta",
        "tsd_sigma_ratio",
        "near_null_picks",
        "amp_r",
        "amp_factor",
        "proj_delta_basis",
        "proj_w_basis",
        "proj_random",
        "dash_s",
        "dash_indices",
        "dash_delta_sigma",
        "recall",
        "accuracy",
        "subspace_similarity",
        "svd_cache",
        "trainable_params",
        "frozen_stored_params",
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    let join = |xs: Vec<String>| xs.join(" ");
    for m in &r.modules {
        let a = &m.amplification;
        let (ds, di, dv) = match &m.dash {
            Some(d) => (
                d.s.to_string(),
                join(
                    d.indices
                        .iter()
                        .map(|i| i.map_or("?".into(), |i| i.to_string()))
                        .collect(),
                ),
                join(d.delta_sigma.iter().map(|x| format!("{x:e}")).collect()),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        let (rec, acc, phi) = match &m.capture {
            Some(c) => (
                c.recall.value.to_string(),
                c.accuracy.value.to_string(),
                c.subspace_similarity.to_string(),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        rows.push(vec![
            m.module.clone(),
            m.module_type.clone(),
            m.layer.map_or(String::new(), |l| l.to_string()),
            m.shape[0].to_string(),
            m.shape[1].to_string(),
            m.r.to_string(),
            m.alpha.to_string(),
            m.scaling.to_string(),
            m.delta_fro.to_string(),
            m.sigma_max.to_string(),
            m.sigma_min.to_string(),
            join(m.tsd.iter().map(|t| t.index.to_string()).collect()),
            join(m.tsd.iter().map(|t| format!("{:e}", t.delta)).collect()),
            join(
                m.tsd
                    .iter()
                    .map(|t| format!("{:e}", t.sigma_ratio))
                    .collect(),
            ),
            m.near_null_picks.to_string(),
            a.r.to_string(),
            a.factor.to_string(),
            a.proj_delta_basis.to_string(),
            a.proj_w_basis.to_string(),
            a.proj_random.to_string(),
            ds,
            di,
            dv,
            rec,
            acc,
            phi,
            format!("{:?}", m.svd_cache).to_lowercase(),
            m.trainable_params.to_string(),
            m.frozen_stored_params.to_string(),
        ]);
    }
    csv_text(&header, rows)
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
