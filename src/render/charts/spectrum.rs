//! The spectrum chart: δ against singular-value index beside σ, the picks and the null's band.

use super::{
    draw_legend, err, font, integer_label, log_range, num, padded, split_legend, ChartResult,
    Hover, Mark, BAND, LEGEND_W, PALETTE,
};
use plotters::chart::DualCoordChartContext;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// One picked TSD of a spectrum.
#[derive(Clone, Debug)]
pub struct SpectrumPick {
    pub index: usize,
    pub near_null: bool,
    /// Enrichment z of the pick and whether |z| is above the module's null threshold.
    pub z: Option<f64>,
    pub enriched: Option<bool>,
}

/// The rotation null of a spectrum's update: δ_i under the null has `E c_i² = sd²`, so its typical
/// change rate is `sd / σ_i` and a direction is enriched above `threshold · sd / σ_i`.
#[derive(Clone, Copy, Debug)]
pub struct SpectrumNull {
    pub coordinate_sd: f64,
    pub threshold: f64,
}

/// Index × log-value axes (δ on the primary, σ on the secondary).
type LogAxes = Cartesian2d<RangedCoordf64, LogCoord<f64>>;
type SpectrumChart<'a, 'b> = DualCoordChartContext<'a, SVGBackend<'b>, LogAxes, LogAxes>;

/// The null's band of δ per index: `(i, rms sd/σ_i, threshold · sd/σ_i)`.
fn null_band(sigma: &[f64], null: Option<SpectrumNull>) -> Vec<(f64, f64, f64)> {
    null.filter(|n| n.coordinate_sd > 0.0)
        .map(|n| {
            sigma
                .iter()
                .enumerate()
                .filter(|(_, s)| **s > 0.0)
                .map(|(i, s)| {
                    let lo = n.coordinate_sd / s;
                    (i as f64, lo, lo * n.threshold.max(1.0))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// δ against singular-value index (log y), the picked TSDs marked (a ring on near-null ones),
/// σ on a second log axis and, with a null, the band of δ the null produces: from its rms change
/// rate `sd/σ_i` up to the enrichment threshold `threshold·sd/σ_i`.
pub fn spectrum(
    sigma: &[f64],
    delta: &[f64],
    picks: &[SpectrumPick],
    null: Option<SpectrumNull>,
) -> ChartResult {
    let k = delta.len().max(1) as f64;
    let band = null_band(sigma, null);
    let (dlo, dhi) = log_range(
        delta
            .iter()
            .cloned()
            .chain(band.iter().flat_map(|b| [b.1, b.2])),
    );
    let (slo, shi) = log_range(sigma.iter().cloned());
    let (xlo, xhi) = padded(0.0, k - 1.0, 0.04);
    // Narrow enough that two spectra sit side by side in a 1400 px window.
    let w = 460 + LEGEND_W;
    let mut buf = String::new();
    let mut hover = Hover::default();
    {
        let root = SVGBackend::with_string(&mut buf, (w, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot, side) = split_legend(&root, w);
        let mut chart = ChartBuilder::on(&plot)
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(xlo..xhi, (dlo..dhi).log_scale())
            .map_err(err)?
            .set_secondary_coord(xlo..xhi, (slo..shi).log_scale());
        spectrum_axes(&mut chart)?;
        if !band.is_empty() {
            let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2.min(dhi))).collect();
            poly.extend(band.iter().rev().map(|b| (b.0, b.1.max(dlo))));
            chart
                .draw_series(std::iter::once(Polygon::new(poly, BAND.filled())))
                .map_err(err)?;
        }
        let shown: Vec<&SpectrumPick> = picks
            .iter()
            .filter(|p| p.index < delta.len() && delta[p.index] > 0.0)
            .collect();
        draw_spectrum_series(&mut chart, sigma, delta, &shown)?;
        spectrum_hovers(&chart, &mut hover, sigma, delta, &band, &shown);
        draw_legend(&side, 8, &spectrum_legend(&shown, !band.is_empty()))?;
        root.present().map_err(err)?;
    }
    Ok(hover.apply(buf))
}

/// The δ axes and the σ axis (its labels in σ's colour).
fn spectrum_axes(chart: &mut SpectrumChart) -> Result<(), String> {
    chart
        .configure_mesh()
        .label_style(font())
        .axis_desc_style(font())
        .x_desc("singular-value index i (descending σ)")
        .y_desc("change rate δ_i")
        .x_label_formatter(&|v| integer_label(*v))
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(err)?;
    chart
        .configure_secondary_axes()
        .y_desc("σ_i")
        .y_labels(6)
        .label_style(font().color(&PALETTE[1]))
        .axis_desc_style(font())
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(err)
}

/// The δ and σ lines, then the picks (rings on near-null ones under their dots).
fn draw_spectrum_series(
    chart: &mut SpectrumChart,
    sigma: &[f64],
    delta: &[f64],
    shown: &[&SpectrumPick],
) -> Result<(), String> {
    let pts = delta
        .iter()
        .enumerate()
        .filter(|(_, d)| **d > 0.0)
        .map(|(i, d)| (i as f64, *d));
    chart
        .draw_series(LineSeries::new(pts, PALETTE[0].stroke_width(1)))
        .map_err(err)?;
    let spts = sigma
        .iter()
        .enumerate()
        .filter(|(_, s)| **s > 0.0)
        .map(|(i, s)| (i as f64, *s));
    chart
        .draw_secondary_series(LineSeries::new(spts, PALETTE[1].stroke_width(1)))
        .map_err(err)?;
    chart
        .draw_series(
            shown
                .iter()
                .filter(|p| p.near_null)
                .map(|p| Circle::new((p.index as f64, delta[p.index]), 7, BLACK.stroke_width(2))),
        )
        .map_err(err)?;
    chart
        .draw_series(
            shown
                .iter()
                .map(|p| Circle::new((p.index as f64, delta[p.index]), 4, PALETTE[3].filled())),
        )
        .map_err(err)?;
    Ok(())
}

/// `; null δ: rms …, threshold …` at index `i`, when the band has it.
fn band_note(band: &[(f64, f64, f64)], i: usize) -> String {
    band.iter()
        .find(|b| b.0 as usize == i)
        .map_or(String::new(), |b| {
            format!("; null δ: rms {}, threshold {}", num(b.1), num(b.2))
        })
}

/// The tooltip of the `rank`-th pick.
fn pick_title(
    rank: usize,
    p: &SpectrumPick,
    d: f64,
    sigma: &[f64],
    band: &[(f64, f64, f64)],
) -> String {
    let i = p.index;
    let s1 = sigma.first().copied().unwrap_or(0.0);
    let s = sigma.get(i).copied().unwrap_or(0.0);
    let mut t = format!(
        "TSD {}: i = {i}, δ = {}, σ = {}, σ/σ₁ = {}",
        rank + 1,
        num(d),
        num(s),
        num(if s1 > 0.0 { s / s1 } else { 0.0 })
    );
    if p.near_null {
        t.push_str(" (near-null)");
    }
    if let Some(z) = p.z {
        t.push_str(&format!(", z = {}", num(z)));
    }
    if let Some(e) = p.enriched {
        t.push_str(if e { ", enriched" } else { ", not enriched" });
    }
    t + &band_note(band, i)
}

/// Hover targets: every pick, then sparse points along the δ line (every direction of a short
/// spectrum).
fn spectrum_hovers(
    chart: &SpectrumChart,
    hover: &mut Hover,
    sigma: &[f64],
    delta: &[f64],
    band: &[(f64, f64, f64)],
    shown: &[&SpectrumPick],
) {
    for (rank, p) in shown.iter().enumerate() {
        let (i, d) = (p.index, delta[p.index]);
        let t = pick_title(rank, p, d, sigma, band);
        hover.point(chart.backend_coord(&(i as f64, d)), 7, &t);
    }
    let step = (delta.len() / 64).max(1);
    for (i, d) in delta.iter().enumerate().step_by(step) {
        if *d > 0.0 && !shown.iter().any(|p| p.index == i) {
            let mut t = format!("i = {i}: δ = {}", num(*d));
            if let Some(s) = sigma.get(i) {
                t.push_str(&format!(", σ = {}", num(*s)));
            }
            t.push_str(&band_note(band, i));
            hover.point(chart.backend_coord(&(i as f64, *d)), 3, &t);
        }
    }
}

/// The spectrum's legend: δ, σ, picks, and near-null picks and the band where present.
fn spectrum_legend(shown: &[&SpectrumPick], has_band: bool) -> Vec<(String, Mark)> {
    let mut entries = vec![
        ("δ (left axis)".to_string(), Mark::Line(PALETTE[0], 1)),
        ("σ (right axis)".to_string(), Mark::Line(PALETTE[1], 1)),
        ("picked TSD".to_string(), Mark::Dot(PALETTE[3])),
    ];
    if shown.iter().any(|p| p.near_null) {
        entries.push(("near-null pick".to_string(), Mark::Ring(PALETTE[3])));
    }
    if has_band {
        entries.push(("null δ band".to_string(), Mark::Bar(BAND)));
    }
    entries
}
