//! The inspect record's HTML page (`tsd inspect --html`): heat maps, spectra, the module table
//! by type, the findings and their headline — all from the saved record.

use crate::directions::null::Verdict;
use crate::error::Result;
use crate::inspect::InspectReport;
use crate::render::charts;
use crate::render::page::{chart, render};
use crate::render::table::number;
use serde::Serialize;
use std::collections::BTreeSet;

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

type ModuleReport = crate::inspect::ModuleReport;

/// The strongest change rate of a module (its first TSD), 0 without one.
fn top_delta(m: &ModuleReport) -> f64 {
    m.tsd.first().map_or(0.0, |t| t.delta)
}

/// Whether a module's strongest TSD is a near-null direction.
fn near_null_first(m: &ModuleReport) -> bool {
    m.tsd.first().is_some_and(|t| t.near_null)
}

/// How the amplification's rank is chosen, in words.
fn amp_rank_note(r: &InspectReport) -> String {
    r.options
        .amp_rank
        .map_or("each module's LoRA rank".to_string(), |x| x.to_string())
}

/// The protocol line of the page's header.
fn protocol(r: &InspectReport) -> String {
    let o = &r.options;
    format!(
        "change rates δ_i = |u_iᵀ ΔW v_i| / σ_i over W's SVD ({}), σ floor {} · top-{} TSDs · amplification with r = {} · capture recall@({},{}) / accuracy@({},{})",
        o.precision,
        o.floor.relative,
        o.top_s,
        amp_rank_note(r),
        o.recall_k.0,
        o.recall_k.1,
        o.accuracy_k.0,
        o.accuracy_k.1
    )
}

/// The amplification's projections per module type: the record's per-type means as bars.
fn amp_bars(r: &InspectReport) -> Result<String> {
    let types: Vec<String> = r.by_type.iter().map(|t| t.group.clone()).collect();
    let of = |f: fn(&crate::inspect::GroupSummary) -> f64| r.by_type.iter().map(f).collect();
    chart(charts::grouped_log_bars(
        &types,
        &[
            ("ΔW basis", of(|g| g.mean_proj_delta_basis)),
            ("W basis", of(|g| g.mean_proj_w_basis)),
            ("random", of(|g| g.mean_proj_random)),
        ],
        "‖UᵀWV‖F",
    ))
}

/// One spectrum per module type: its module with the strongest top change rate.
fn spectra(r: &InspectReport, types: &[String]) -> Result<Vec<Spectrum>> {
    let mut spectra = Vec::new();
    for t in types {
        let best = r
            .modules
            .iter()
            .filter(|m| &m.module_type == t && m.sigma.is_some() && m.delta.is_some())
            .max_by(|a, b| top_delta(a).total_cmp(&top_delta(b)));
        let Some(m) = best else { continue };
        spectra.push(spectrum(m, t)?);
    }
    Ok(spectra)
}

/// One module's spectrum with its picks and null.
fn spectrum(m: &ModuleReport, group: &str) -> Result<Spectrum> {
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
    Ok(Spectrum {
        module: m.module.clone(),
        group: group.to_string(),
        picks: format!("{idx:?}"),
        near_null: m.near_null_picks,
        enriched: m.enrichment.as_ref().map(|e| e.enriched_count),
        threshold: m.enrichment.as_ref().map(|e| number(e.null.threshold)),
        svg: chart(charts::spectrum(s, d, &picks, null))?,
    })
}

/// The top four TSDs of a module: `i: δ`, `*` on enriched ones.
fn top_cell(m: &ModuleReport) -> String {
    m.tsd
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
        .join(", ")
}

/// A module's capture cells: recall, accuracy (with the LoRA part), subspace similarity.
fn capture_cells(m: &ModuleReport) -> [String; 3] {
    let Some(c) = m.capture.as_ref() else {
        return ["-".into(), "-".into(), "-".into()];
    };
    let p = c.primary();
    let accuracy = if c.lora_part.is_some() {
        format!("{:.2} (LoRA part {:.2})", c.accuracy.value, p.value)
    } else {
        format!("{:.2}", p.value)
    };
    [
        format!("{:.2}", c.recall.value),
        accuracy,
        format!("{:.2}", c.subspace_similarity),
    ]
}

/// A module's row of the module table.
fn module_row(m: &ModuleReport) -> Row {
    let test = m.capture.as_ref().and_then(|c| c.primary().null.as_ref());
    let [recall, accuracy, phi] = capture_cells(m);
    Row {
        module: m.module.clone(),
        shape: format!("{}×{}", m.shape[0], m.shape[1]),
        r: m.r,
        scaling: number(m.scaling),
        fro: number(m.delta_fro),
        top: top_cell(m),
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
        recall,
        accuracy,
        phi,
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
}

/// The module table by module type (in `types` order), with each group's counts.
fn row_groups(r: &InspectReport, types: &[String]) -> Vec<RowGroup> {
    let verdict_of = |m: &ModuleReport| {
        m.capture
            .as_ref()
            .and_then(|c| c.primary().null.as_ref())
            .map(|n| n.verdict)
    };
    let mut row_groups: Vec<RowGroup> = Vec::new();
    for m in &r.modules {
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
        g.rows.push(module_row(m));
        g.above += usize::from(verdict_of(m) == Some(Verdict::AboveNull));
        g.enriched += usize::from(m.enrichment.as_ref().is_some_and(|e| e.enriched_count > 0));
        g.near_null_first += usize::from(near_null_first(m));
    }
    row_groups.sort_by_key(|g| types.iter().position(|t| *t == g.group));
    row_groups
}

/// Findings by module type, then all modules: the record's null-model summaries.
fn findings(r: &InspectReport, types: &[String]) -> Vec<Finding> {
    let nm = r.null_model.as_ref();
    let mut groups: Vec<String> = types.to_vec();
    groups.push("all".into());
    groups
        .iter()
        .map(|g| {
            let mods: Vec<&ModuleReport> = r
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
        .collect()
}

/// The headline sentence on capture (or why there is none).
fn capture_headline(r: &InspectReport, all: &Finding) -> Option<String> {
    let o = &r.options;
    match (&r.reference, r.null_model.as_ref()) {
        (_, None) => Some(
            "The null model is off in this record (--no-null): no figure below stands beside its null."
                .into(),
        ),
        (Some(_), Some(n)) => all.capture.as_ref().map(|c| {
            format!(
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
            )
        }),
        (None, Some(_)) => Some(
            "No reference was given: capture is not measured, so no capture verdict (pass --reference)."
                .into(),
        ),
    }
}

/// The headline sentences, from the `all` row (the last finding).
fn headline(r: &InspectReport, findings: &[Finding]) -> Vec<String> {
    let all = findings.last().expect("the all row");
    let mut headline: Vec<String> = capture_headline(r, all).into_iter().collect();
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
    headline
}

/// The two layer × module-type heat maps (max δ, amplification) with their notes.
fn heat_maps(r: &InspectReport) -> Result<minijinja::Value> {
    let (rows_l, cols, dvals) = grid(r, top_delta);
    let heat_delta = chart(charts::heatmap(&rows_l, &cols, &dvals, true, "max δ"))?;
    let (_, _, avals) = grid(r, |m| m.amplification.factor);
    let heat_amp = chart(charts::heatmap(
        &rows_l,
        &cols,
        &avals,
        true,
        "amplification",
    ))?;
    Ok(minijinja::context! {
        heat_delta => heat_delta,
        heat_delta_range => range_note(&dvals),
        heat_delta_grey => charts::heatmap_has_grey(&dvals, true),
        heat_amp => heat_amp,
        heat_amp_range => range_note(&avals),
        heat_amp_grey => charts::heatmap_has_grey(&avals, true),
    })
}

/// The `tsd inspect --html` page. The report must carry spectra (`keep_spectrum`).
pub fn inspect_html(r: &InspectReport) -> Result<String> {
    let o = &r.options;
    let types: Vec<String> = r.by_type.iter().map(|t| t.group.clone()).collect();
    let findings = findings(r, &types);
    render(
        "inspect.html",
        minijinja::context! {
            title => "tsd inspect",
            tsd_version => env!("CARGO_PKG_VERSION"),
            build => env!("TSD_BUILD_VERSIONS"),
            r => r,
            protocol => protocol(r),
            protocol_short => format!("SVD {}, σ floor {}", o.precision, o.floor.relative),
            amp_bars => amp_bars(r)?,
            amp_r_note => amp_rank_note(r),
            spectra => spectra(r, &types)?,
            row_groups => row_groups(r, &types),
            headline => headline(r, &findings),
            findings => findings,
            nm => r.null_model.as_ref(),
            ..heat_maps(r)?
        },
    )
}
