//! The track record (`tsd track`): terminal table and CSV over checkpoints.

use super::table::{csv_text, number, right_align, table};
use crate::error::Result;

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
    let header = [
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
    ];
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (p, rep) in r.points.iter().zip(&r.reports) {
        for m in &rep.modules {
            rows.push(vec![
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
            ]);
        }
    }
    csv_text(&header, rows)
}
