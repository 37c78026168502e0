//! The `tsd params` rows: terminal table and CSV.

use super::table::{csv_text, right_align, table};
use crate::error::Result;
use crate::params::pct2;
pub use crate::params::ParamsRow;

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
    let header = [
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
    ];
    let mut out: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let c = &r.counts;
        out.push(vec![
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
        ]);
    }
    csv_text(&header, out)
}
