//! The layer × module-type heat map with its colour bar.

use super::{centre_label, err, font, num, viridis, ChartResult, Hover, GREY_CELL};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

type Cells<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Whether a heat map of these values has grey (missing or non-plottable) cells.
pub fn heatmap_has_grey(values: &[Vec<Option<f64>>], log: bool) -> bool {
    values
        .iter()
        .flatten()
        .any(|v| !matches!(v, Some(v) if v.is_finite() && (!log || *v > 0.0)))
}

/// How a heat map maps values to colours: `tf(v)` (log10 or as is) from `lo` over `span`.
#[derive(Clone, Copy)]
struct Scale {
    log: bool,
    lo: f64,
    span: f64,
}

impl Scale {
    fn of(values: &[Vec<Option<f64>>], log: bool) -> Self {
        let tf = |v: f64| if log { v.max(1e-300).log10() } else { v };
        let flat: Vec<f64> = values
            .iter()
            .flatten()
            .flatten()
            .cloned()
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .collect();
        let lo = flat.iter().cloned().map(tf).fold(f64::INFINITY, f64::min);
        let hi = flat
            .iter()
            .cloned()
            .map(tf)
            .fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let span = if hi > lo { hi - lo } else { 1.0 };
        Self { log, lo, span }
    }

    fn tf(&self, v: f64) -> f64 {
        if self.log {
            v.max(1e-300).log10()
        } else {
            v
        }
    }

    /// A cell's colour: viridis over the scale, grey without a plottable value.
    fn colour(&self, v: Option<f64>) -> RGBColor {
        match v {
            Some(v) if v.is_finite() && (!self.log || v > 0.0) => {
                viridis(((self.tf(v) - self.lo) / self.span).clamp(0.0, 1.0))
            }
            _ => GREY_CELL,
        }
    }
}

/// A heat map: rows × columns of optional values, colour by value (linear or log10), with a
/// colour bar beside it; missing values are grey.
pub fn heatmap(
    rows: &[String],
    cols: &[String],
    values: &[Vec<Option<f64>>],
    log: bool,
    legend: &str,
) -> ChartResult {
    let scale = Scale::of(values, log);
    let (nr, nc) = (rows.len().max(1), cols.len().max(1));
    let height = (60 + 16 * nr).clamp(200, 900) as u32;
    let bar_w = 150;
    let w = 640 + bar_w;
    let mut buf = String::new();
    let mut hover = Hover::default();
    {
        let root = SVGBackend::with_string(&mut buf, (w, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot, side) = root.split_horizontally(640);
        let (rs, cs) = (rows.to_vec(), cols.to_vec());
        let mut chart = ChartBuilder::on(&plot)
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .caption(legend, ("sans-serif", 18))
            .build_cartesian_2d(0f64..nc as f64, 0f64..nr as f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .label_style(font())
            .axis_desc_style(font())
            .disable_mesh()
            .x_labels(2 * nc + 1)
            .y_labels(2 * nr + 1)
            .x_label_formatter(&|x| centre_label(&cs, *x))
            .y_label_formatter(&|y| centre_label(&rs, *y))
            .y_desc("layer")
            .draw()
            .map_err(err)?;
        draw_cells(&mut chart, &mut hover, (rows, cols), values, scale, legend)?;
        draw_colour_bar(&side, scale, legend)?;
        root.present().map_err(err)?;
    }
    Ok(hover.apply(buf))
}

/// The cells, each with its tooltip.
fn draw_cells(
    chart: &mut Cells,
    hover: &mut Hover,
    (rows, cols): (&[String], &[String]),
    values: &[Vec<Option<f64>>],
    scale: Scale,
    legend: &str,
) -> Result<(), String> {
    let mut cells = Vec::new();
    for (r, row) in values.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            hover.rect(
                chart.backend_coord(&(c as f64, r as f64 + 1.0)),
                chart.backend_coord(&(c as f64 + 1.0, r as f64)),
                &format!(
                    "layer {}, {}: {legend} = {}",
                    rows.get(r).map_or("-", |s| s.as_str()),
                    cols.get(c).map_or("-", |s| s.as_str()),
                    match v {
                        Some(v) => num(*v),
                        None => "not adapted".into(),
                    }
                ),
            );
            cells.push(Rectangle::new(
                [(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)],
                scale.colour(*v).filled(),
            ));
        }
    }
    chart.draw_series(cells).map_err(err)?;
    Ok(())
}

/// The colour bar: the scale from lo (bottom) to hi (top), five labelled values, and its title
/// (what the colours measure, and the scale).
fn draw_colour_bar(
    side: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    scale: Scale,
    legend: &str,
) -> Result<(), String> {
    let Scale { log, lo, span } = scale;
    let mut bar = ChartBuilder::on(side)
        .margin_top(30)
        .margin_bottom(38)
        .margin_left(8)
        .margin_right(8)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..1.0, lo..lo + span)
        .map_err(err)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .label_style(font())
        .y_labels(5)
        .y_label_formatter(&|v| {
            if log {
                crate::render::number(10f64.powf(*v))
            } else {
                crate::render::number(*v)
            }
        })
        .draw()
        .map_err(err)?;
    let steps = 64;
    bar.draw_series((0..steps).map(|i| {
        let a = lo + span * i as f64 / steps as f64;
        let b = lo + span * (i + 1) as f64 / steps as f64;
        Rectangle::new(
            [(0.0, a), (1.0, b)],
            viridis((i as f64 + 0.5) / steps as f64).filled(),
        )
    }))
    .map_err(err)?;
    side.draw(&Text::new(
        format!("{legend}{}", if log { " (log)" } else { "" }),
        (4, 8),
        font(),
    ))
    .map_err(err)?;
    Ok(())
}
