//! Rendering reports as terminal tables, JSON and CSV. Reports are plain data; nothing here computes.

use crate::error::{Error, Result};
use crate::inspect::InspectReport;
use crate::params::{pct2, ParamCounts};
use crate::svd_cache::CacheOutcome;
use comfy_table::{presets::UTF8_BORDERS_ONLY, CellAlignment, ContentArrangement, Table};
use serde::Serialize;

/// Output format of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Csv,
}

/// Pretty JSON of any report.
pub fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Error::Internal(format!("serialising JSON: {e}")))
}

/// Terminal tables fit `COLUMNS` when it is set (a positive number), else the terminal when stdout
/// is one; text cells wrap to fit, numeric columns ([`right_align`]) never do. Piped without
/// `COLUMNS`, nothing wraps: every row is one line.
fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let columns = crate::env::columns();
    match columns.or_else(|| t.width()) {
        Some(width) => {
            t.set_width(width)
                .set_content_arrangement(ContentArrangement::Dynamic);
        }
        None => {
            t.set_content_arrangement(ContentArrangement::Disabled);
        }
    }

    t.set_header(header.to_vec());
    t
}

/// Right-aligns the columns from `from` on: numbers, which never wrap (each such column is at
/// least as wide as its widest cell; headers may wrap at spaces). Columns before `from` (text)
/// keep at least 14 characters, or their widest cell when narrower. Call after adding the rows.
fn right_align(t: &mut Table, from: usize) {
    use comfy_table::{ColumnConstraint, Width};
    let n = t.column_count();
    let mut widest = vec![0u16; n];
    for row in t.row_iter() {
        for (i, cell) in row.cell_iter().enumerate().take(n) {
            let w = cell
                .content()
                .lines()
                .map(|l| l.chars().count())
                .max()
                .unwrap_or(0);
            widest[i] = widest[i].max(w.min(u16::MAX as usize) as u16);
        }
    }
    for (i, &w) in widest.iter().enumerate() {
        if let Some(c) = t.column_mut(i) {
            let min = if i >= from {
                c.set_cell_alignment(CellAlignment::Right);
                w
            } else {
                w.min(14)
            };
            // comfy-table's boundaries include the cell padding.
            let pad = c.padding_width();
            c.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(
                min.max(1) + pad,
            )));
        }
    }
}

/// The one number format of tables and reports: 4 decimals in [1e-3, 1e4), else 4 significant
/// digits in scientific notation; `0`, `∞`, `-∞`, `NaN` as such.
pub fn number(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "∞" } else { "-∞" }.into()
    } else if (1e-3..1e4).contains(&x.abs()) {
        format!("{x:.4}")
    } else {
        format!("{x:.3e}")
    }
}

/// A count with thousands separators: `1660080` → `1,660,080`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

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

fn csv_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("writing CSV: {e}"))
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
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
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
    ])
    .map_err(csv_err)?;
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
        w.write_record([
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
        ])
        .map_err(csv_err)?;
    }
    String::from_utf8(w.into_inner().map_err(csv_err)?).map_err(csv_err)
}

/// One row of `tsd params` output.
#[derive(Clone, Debug, Serialize)]
pub struct ParamsRow {
    pub model: String,
    #[serde(flatten)]
    pub counts: ParamCounts,
}

/// `tsd params` as a table: counts and the three percentage conventions.
pub fn params_table(rows: &[ParamsRow]) -> String {
    let mut t = table(&[
        "model",
        "rank",
        "dash s",
        "trainable",
        "  of which Dash",
        "frozen stored",
        "base",
        "% exact",
        "% of nominal",
        "% PEFT-style",
    ]);
    for r in rows {
        let c = &r.counts;
        let s = if c.dash_trainable > 0 {
            (c.dash_trainable / c.adapted_matrices).to_string()
        } else {
            "-".into()
        };
        t.add_row(vec![
            r.model.clone(),
            c.rank.to_string(),
            s,
            c.trainable.to_string(),
            c.dash_trainable.to_string(),
            c.frozen_stored.to_string(),
            c.base_params.to_string(),
            format!("{:.4}", c.pct_exact),
            pct2(c.pct_nominal, false),
            pct2(c.pct_peft, true),
        ]);
    }
    right_align(&mut t, 1);
    format!(
        "{t}\n% exact = trainable/base; % of nominal = trainable/(base rounded to 3 s.f.), rounded; % PEFT-style = trainable/(base+trainable), truncated (PEFT's print_trainable_parameters)\n"
    )
}

/// `tsd params` as CSV.
pub fn params_csv(rows: &[ParamsRow]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "model",
        "rank",
        "targets",
        "adapted_matrices",
        "lora_trainable",
        "dash_trainable",
        "trainable",
        "frozen_stored",
        "stored",
        "base_params",
        "base_nominal",
        "pct_exact",
        "pct_nominal",
        "pct_peft",
    ])
    .map_err(csv_err)?;
    for r in rows {
        let c = &r.counts;
        w.write_record([
            r.model.clone(),
            c.rank.to_string(),
            c.targets.join(" "),
            c.adapted_matrices.to_string(),
            c.lora_trainable.to_string(),
            c.dash_trainable.to_string(),
            c.trainable.to_string(),
            c.frozen_stored.to_string(),
            c.stored.to_string(),
            c.base_params.to_string(),
            c.base_nominal.to_string(),
            c.pct_exact.to_string(),
            c.pct_nominal.to_string(),
            c.pct_peft.to_string(),
        ])
        .map_err(csv_err)?;
    }
    String::from_utf8(w.into_inner().map_err(csv_err)?).map_err(csv_err)
}

/// `tsd track` as a table over checkpoints.
pub fn track_table(r: &crate::track::TrackReport) -> String {
    let opt = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.3}"));
    let mut t = table(&[
        "step",
        "checkpoint",
        "mean top δ",
        "mean ‖ΔW‖F",
        "mean amp",
        "TSD ∩ prev",
        "TSD ∩ final",
        "recall@(8,4)",
        "acc@(8,16)",
        "near-null",
        "mean max|Δσ|",
    ]);
    for p in &r.points {
        t.add_row(vec![
            p.step.to_string(),
            p.checkpoint.clone(),
            number(p.mean_top_delta),
            number(p.mean_delta_fro),
            number(p.mean_amplification),
            opt(p.stability_prev),
            format!("{:.3}", p.stability_final),
            opt(p.mean_recall),
            opt(p.mean_accuracy),
            p.near_null_picks.to_string(),
            p.mean_dash_delta_sigma.map_or("-".into(), number),
        ]);
    }
    right_align(&mut t, 0);
    let mut out = format!("run: {}\n", r.run);
    if !r.base.is_empty() {
        out += &format!("base: {}\n", r.base);
    }
    if let Some(rf) = &r.reference {
        out += &format!("reference: {rf}\n");
    }
    out += &format!(
        "{t}\n(means over modules; TSD ∩ = overlap of the top-s TSD sets, as a fraction of s)\n"
    );
    out
}

/// `tsd track` as CSV, one row per (checkpoint, module).
pub fn track_csv(r: &crate::track::TrackReport) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "step",
        "checkpoint",
        "module",
        "tsd_indices",
        "top_delta",
        "delta_fro",
        "amp_factor",
        "recall",
        "accuracy",
        "dash_max_abs_delta_sigma",
    ])
    .map_err(csv_err)?;
    for (p, rep) in r.points.iter().zip(&r.reports) {
        for m in &rep.modules {
            w.write_record([
                p.step.to_string(),
                p.checkpoint.clone(),
                m.module.clone(),
                m.tsd
                    .iter()
                    .map(|t| t.index.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                m.tsd.first().map_or(String::new(), |t| t.delta.to_string()),
                m.delta_fro.to_string(),
                m.amplification.factor.to_string(),
                m.capture
                    .as_ref()
                    .map_or(String::new(), |c| c.recall.value.to_string()),
                m.capture
                    .as_ref()
                    .map_or(String::new(), |c| c.accuracy.value.to_string()),
                m.dash
                    .as_ref()
                    .map_or(String::new(), |d| d.delta_sigma_max_abs.to_string()),
            ])
            .map_err(csv_err)?;
        }
    }
    String::from_utf8(w.into_inner().map_err(csv_err)?).map_err(csv_err)
}
