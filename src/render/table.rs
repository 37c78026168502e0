//! The terminal table (`COLUMNS`-aware widths, right-aligned numbers), the one number format,
//! JSON and CSV writers shared by every record's renderer.

use crate::error::{Error, Result};
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
pub(crate) fn table(header: &[&str]) -> Table {
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
pub(crate) fn right_align(t: &mut Table, from: usize) {
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
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn csv_err(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("writing CSV: {e}"))
}

/// CSV text of a header and rows, through the `csv` crate (fields quoted where they need it).
pub(crate) fn csv_text<H, R, I>(header: &[H], rows: R) -> Result<String>
where
    H: AsRef<str>,
    R: IntoIterator<Item = I>,
    I: IntoIterator<Item = String>,
{
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header.iter().map(|h| h.as_ref()))
        .map_err(csv_err)?;
    for row in rows {
        w.write_record(row).map_err(csv_err)?;
    }
    String::from_utf8(w.into_inner().map_err(csv_err)?).map_err(csv_err)
}
