//! The inspect record (`tsd inspect`): its terminal table and CSV here, its HTML page in [`page`].

pub mod page;

use crate::error::Result;
use crate::inspect::{InspectReport, NullModelReport};
use crate::render::table::{csv_text, number, right_align, table};
use crate::svd_cache::CacheOutcome;

pub use page::inspect_html;

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

/// Whether every module has the same r and scaling (then the header says them, no columns).
fn uniform_r(r: &InspectReport) -> bool {
    r.modules
        .windows(2)
        .all(|w| w[0].r == w[1].r && w[0].scaling == w[1].scaling)
}

/// The module table: one row per module.
fn module_table(r: &InspectReport, uniform: bool) -> comfy_table::Table {
    let with_ref = r.reference.is_some();
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
        t.add_row(module_row(m, uniform, r.has_dash, with_ref));
    }
    right_align(&mut t, 2);
    // One space between columns instead of two.
    for c in t.column_iter_mut().skip(1) {
        c.set_padding((0, 1));
    }
    t
}

/// One module's row of the module table.
fn module_row(
    m: &crate::inspect::ModuleReport,
    uniform: bool,
    has_dash: bool,
    with_ref: bool,
) -> Vec<String> {
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
    if has_dash {
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
    row
}

/// The module table's legend.
fn module_legend(r: &InspectReport) -> String {
    let mut out = String::from("(module: layer.name; top i:δ: the 2 largest change rates δ = |uᵀΔWv|/σ; σ/σ₁ of the\n first, ! = near-null; amp = ‖ΔW‖F / ‖UᵣᵀWVᵣ‖F");
    if r.reference.is_some() {
        let o = &r.options;
        out += &format!(
            ";\n rec, acc: TSD recall@({},{}) and accuracy@({},{}) against the reference; φ: subspace similarity",
            o.recall_k.0, o.recall_k.1, o.accuracy_k.0, o.accuracy_k.1
        );
    }
    out + ";\n every TSD, the projections, full module names: --json or --csv)\n\n"
}

/// The group tables: by module type, by layer.
fn group_tables(r: &InspectReport) -> String {
    let with_ref = r.reference.is_some();
    let mut out = String::from("(by module type, by layer: means over the group's modules of the top δ, amp, ‖ΔW‖F and acc;\n max δ: the largest top δ; near-null: picks with σ/σ₁ < 1e-3, summed)\n");
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
    out
}

/// Parameters, the tensors not analysed, the SVDs' cost and the warnings.
fn inspect_footer(r: &InspectReport) -> String {
    let p = &r.params;
    let mut out = format!(
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

/// The inspect report as an aligned terminal table (modules, then summaries, params, warnings).
pub fn inspect_table(r: &InspectReport) -> String {
    let uniform = uniform_r(r);
    let t = module_table(r, uniform);
    let mut out = format!("adapter: {}\nbase:    {}\n", r.adapter, r.base);
    if let (true, Some(m)) = (uniform, r.modules.first()) {
        out += &format!("every module: r {}, scaling {}\n", m.r, number(m.scaling));
    }
    if let Some(rf) = &r.reference {
        out += &format!("reference: {rf}\n");
    }
    out += &inspect_findings(r);
    out += &format!("{t}\n");
    out += &module_legend(r);
    out += &group_tables(r);
    out + &inspect_footer(r)
}

/// The findings that lead the inspect table: capture against its null, enrichment and
/// near-null picks by module type.
fn inspect_findings(r: &InspectReport) -> String {
    let mut out = String::from("\nfindings\n");
    if let Some(n) = &r.null_model {
        out += &capture_findings(r, n);
        out += &enrichment_findings(n);
    } else {
        out += "null model off (--no-null): no figure below stands beside its null\n";
    }
    out += &near_null_findings(r);
    out + "\n"
}

/// The capture verdicts by module type against the rotation null (with a reference).
fn capture_findings(r: &InspectReport, n: &NullModelReport) -> String {
    let mut out = String::new();
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
    out
}

/// Enrichment by module type.
fn enrichment_findings(n: &NullModelReport) -> String {
    let mut out = String::new();
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
    out
}

/// Near-null picks by module type, when any.
fn near_null_findings(r: &InspectReport) -> String {
    let mut out = String::new();
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
    out
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

/// The columns of the inspect CSV.
const CSV_HEADER: [&str; 29] = [
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

/// One module's CSV row.
fn csv_row(m: &crate::inspect::ModuleReport) -> Vec<String> {
    let join = |xs: Vec<String>| xs.join(" ");
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
    vec![
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
    ]
}

/// The inspect report as CSV, one row per module.
pub fn inspect_csv(r: &InspectReport) -> Result<String> {
    csv_text(&CSV_HEADER, r.modules.iter().map(csv_row))
}
