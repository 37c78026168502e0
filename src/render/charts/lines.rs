//! Line charts over steps: optional log y, a marker, reference lines, a null band, dots on
//! short series and a tooltip on every drawn point.

use super::{
    draw_legend, err, font, integer_label, integral, log_range, num, padded, split_legend,
    BandPoint, ChartResult, Hover, Mark, BAND, LEGEND_W, PALETTE,
};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Options of [`lines_with`].
#[derive(Clone, Debug, Default)]
pub struct LineOpts<'a> {
    pub log_y: bool,
    /// A vertical marker (e.g. the Dash switch step), drawn in black.
    pub marker: Option<(f64, &'a str)>,
    /// Fixed y range (linear axes only), e.g. `(0, 1)` for a fraction; drawn 3 % wider.
    pub y_range: Option<(f64, f64)>,
    /// Fixed x range (default: the data's).
    pub x_range: Option<(f64, f64)>,
    /// Horizontal reference lines (e.g. a paper's values), grey and dashed; an empty label keeps
    /// a line out of the legend.
    pub hlines: Vec<(f64, &'a str)>,
    /// Indices of series drawn as points only, without a line (e.g. sparse evaluations).
    pub points_only: Vec<usize>,
    /// Size in pixels of the plot without the legend column (default 640 × 280).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// A shaded band `(x, low, high)` behind the series (e.g. a null's mean to its 95th
    /// percentile), with its legend label.
    pub band: Option<(&'a str, Vec<BandPoint>)>,
    /// Extra tooltip text per x (e.g. the verdict counts of a checkpoint), added to every
    /// point's title at that x.
    pub notes: Vec<(f64, String)>,
    /// Per series (by index): its colour, dash and legend entry. Empty: the palette in order and
    /// every series in the legend; given: only the series with a legend label are listed.
    pub styles: Vec<Style>,
}

/// How [`lines_with`] draws one series.
#[derive(Clone, Debug)]
pub struct Style {
    pub colour: RGBColor,
    /// `(dash, gap)` in pixels; `None`: solid.
    pub dash: Option<(u32, u32)>,
    /// The legend's label; `None`: not listed (e.g. a second seed of a listed configuration).
    pub legend: Option<String>,
}

/// A line chart with x over `f64` and y of scale `Y` (linear or log).
type LineChart<'a, 'b, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>;

/// The grey of reference lines.
const HLINE_GREY: RGBColor = RGBColor(120, 120, 120);

/// Lines over x, optional log y, an optional vertical marker (e.g. the Dash switch step).
pub fn lines(
    series: &[(&str, Vec<(f64, f64)>)],
    x_desc: &str,
    y_desc: &str,
    log_y: bool,
    marker: Option<(f64, &str)>,
) -> ChartResult {
    lines_with(
        series,
        x_desc,
        y_desc,
        &LineOpts {
            log_y,
            marker,
            ..Default::default()
        },
    )
}

/// What one [`lines_with`] call draws, with the x extent settled.
struct Plan<'a> {
    series: &'a [(&'a str, Vec<(f64, f64)>)],
    x_desc: &'a str,
    y_desc: &'a str,
    opts: &'a LineOpts<'a>,
    integer_x: bool,
    xlo: f64,
    xhi: f64,
    band: &'a [BandPoint],
}

impl<'a> Plan<'a> {
    fn new(
        series: &'a [(&'a str, Vec<(f64, f64)>)],
        x_desc: &'a str,
        y_desc: &'a str,
        opts: &'a LineOpts<'a>,
    ) -> Self {
        let marker = opts.marker;
        let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
        let integer_x = integral(xs.clone().chain(marker.map(|m| m.0)));
        let (xlo, xhi) = xs
            .chain(marker.map(|m| m.0))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(x), b.max(x))
            });
        let (xlo, xhi) = if let Some((a, b)) = opts.x_range {
            padded(a, b, 0.04)
        } else if xlo.is_finite() && xhi > xlo {
            padded(xlo, xhi, 0.04)
        } else if xlo.is_finite() {
            (xlo - 1.0, xlo + 1.0)
        } else {
            (0.0, 1.0)
        };
        let band: &[BandPoint] = opts.band.as_ref().map_or(&[], |b| b.1.as_slice());
        Self {
            series,
            x_desc,
            y_desc,
            opts,
            integer_x,
            xlo,
            xhi,
            band,
        }
    }

    fn colour(&self, si: usize) -> RGBColor {
        self.opts
            .styles
            .get(si)
            .map_or(PALETTE[si % PALETTE.len()], |s| s.colour)
    }

    fn dash(&self, si: usize) -> Option<(u32, u32)> {
        self.opts.styles.get(si).and_then(|s| s.dash)
    }

    fn points_only(&self, si: usize) -> bool {
        self.opts.points_only.contains(&si)
    }

    /// Every y the chart shows: the series' and the band's.
    fn ys(&self) -> impl Iterator<Item = f64> + '_ {
        self.series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .chain(self.band.iter().flat_map(|b| [b.1, b.2]))
    }

    /// The tooltip note at x, if any.
    fn note_at(&self, x: f64) -> String {
        self.opts
            .notes
            .iter()
            .find(|n| (n.0 - x).abs() < 1e-9)
            .map_or(String::new(), |n| format!("; {}", n.1))
    }

    fn xfmt(&self, x: f64) -> String {
        if self.integer_x {
            format!("{x:.0}")
        } else {
            num(x)
        }
    }

    /// The legend: the listed series, the band, the labelled reference lines, the marker.
    fn legend(&self) -> Vec<(String, Mark)> {
        let opts = self.opts;
        let mut entries: Vec<(String, Mark)> = Vec::new();
        for (si, (name, _)) in self.series.iter().enumerate() {
            let c = self.colour(si);
            let label = if opts.styles.is_empty() {
                Some(name.to_string())
            } else {
                opts.styles.get(si).and_then(|s| s.legend.clone())
            };
            let Some(label) = label else { continue };
            entries.push((
                label,
                if self.points_only(si) {
                    Mark::Dot(c)
                } else if self.dash(si).is_some() {
                    Mark::Dashed(c)
                } else {
                    Mark::Line(c, 2)
                },
            ));
        }
        if let Some((label, _)) = &opts.band {
            entries.push((label.to_string(), Mark::Bar(BAND)));
        }
        for &(_, label) in &opts.hlines {
            if !label.is_empty() {
                entries.push((label.to_string(), Mark::Dashed(HLINE_GREY)));
            }
        }
        if let Some((_, label)) = opts.marker {
            entries.push((label.to_string(), Mark::Line(BLACK, 1)));
        }
        entries
    }

    /// The linear y range: the fixed one (3 % wider), else the data's and the reference lines'
    /// with a 5 % margin.
    fn linear_y(&self) -> (f64, f64) {
        let v: Vec<f64> = self
            .ys()
            .chain(self.opts.hlines.iter().map(|h| h.0))
            .filter(|y| y.is_finite())
            .collect();
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if let Some(r) = self.opts.y_range {
            // A point at the range's end (accuracy 1, 100 %) stays off the frame.
            padded(r.0, r.1, 0.03)
        } else if lo.is_finite() && hi > lo {
            (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        } else {
            (lo.min(0.0) - 1.0, hi.max(0.0) + 1.0)
        }
    }
}

/// Lines over x with the options of [`LineOpts`]. The x range gets a 4 % margin (a marker at the
/// first step does not sit on the y axis); all-integer x (steps) get integer labels; series of up
/// to 40 points get dots, drawn after every line so that no line covers them.
pub fn lines_with(
    series: &[(&str, Vec<(f64, f64)>)],
    x_desc: &str,
    y_desc: &str,
    opts: &LineOpts,
) -> ChartResult {
    let plan = Plan::new(series, x_desc, y_desc, opts);
    let entries = plan.legend();
    let w = opts.width.unwrap_or(640) + LEGEND_W;
    let mut buf = String::new();
    let mut hover = Hover::default();
    {
        let root =
            SVGBackend::with_string(&mut buf, (w, opts.height.unwrap_or(280))).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot, side) = split_legend(&root, w);
        let mut cb = ChartBuilder::on(&plot);
        cb.margin(8)
            .margin_right(12)
            .x_label_area_size(40)
            .y_label_area_size(76);
        let (xlo, xhi) = (plan.xlo, plan.xhi);
        if opts.log_y {
            let (lo, hi) = log_range(plan.ys());
            let chart = cb
                .build_cartesian_2d(xlo..xhi, (lo..hi).log_scale())
                .map_err(err)?;
            draw_lines(chart, &plan, (lo, hi), &mut hover)?;
        } else {
            let (lo, hi) = plan.linear_y();
            let chart = cb.build_cartesian_2d(xlo..xhi, lo..hi).map_err(err)?;
            draw_lines(chart, &plan, (lo, hi), &mut hover)?;
        }
        draw_legend(&side, 8, &entries)?;
        root.present().map_err(err)?;
    }
    Ok(hover.apply(buf))
}

/// Draws the chart's body in order: mesh, band, lines, reference lines, marker, dots, tooltips.
fn draw_lines<Y>(
    mut chart: LineChart<'_, '_, Y>,
    plan: &Plan,
    (ylo, yhi): (f64, f64),
    hover: &mut Hover,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut mesh = chart.configure_mesh();
    mesh.label_style(font())
        .axis_desc_style(font())
        .x_desc(plan.x_desc)
        .y_desc(plan.y_desc)
        .y_labels(6);
    if plan.integer_x {
        mesh.x_label_formatter(&|v| integer_label(*v));
    }
    // plotters' default labels keep one decimal: a learning rate of 6e-6 read "0.0" on every tick.
    if !plan.opts.log_y && ylo.abs().max(yhi.abs()) < 1e-2 && yhi > ylo {
        mesh.y_label_formatter(&|v| format!("{v:.1e}"));
    }
    mesh.draw().map_err(err)?;
    let log_y = plan.opts.log_y;
    let kept: Vec<Vec<(f64, f64)>> = plan
        .series
        .iter()
        .map(|(_, pts)| {
            pts.iter()
                .cloned()
                .filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0))
                .collect()
        })
        .collect();
    draw_band(&mut chart, plan, hover)?;
    draw_series_lines(&mut chart, plan, &kept)?;
    for &(y, _) in &plan.opts.hlines {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(plan.xlo, y), (plan.xhi, y)],
                6,
                4,
                HLINE_GREY.stroke_width(2),
            ))
            .map_err(err)?;
    }
    if let Some((x, _)) = plan.opts.marker {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, ylo), (x, yhi)],
                BLACK.stroke_width(1),
            )))
            .map_err(err)?;
    }
    draw_dots(&mut chart, plan, &kept)?;
    for (si, pts) in kept.iter().enumerate() {
        let step = (pts.len() / 400).max(1);
        for p in pts.iter().step_by(step) {
            hover.point(
                chart.backend_coord(p),
                5,
                &format!(
                    "{}, {} {}: {}{}",
                    plan.series[si].0,
                    plan.x_desc,
                    plan.xfmt(p.0),
                    num(p.1),
                    plan.note_at(p.0)
                ),
            );
        }
    }
    Ok(())
}

/// The null band behind the series (a short bar around a single checkpoint), with tooltips on
/// its edges.
fn draw_band<Y>(
    chart: &mut LineChart<'_, '_, Y>,
    plan: &Plan,
    hover: &mut Hover,
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let band = plan.band;
    if band.is_empty() {
        return Ok(());
    }
    let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2)).collect();
    poly.extend(band.iter().rev().map(|b| (b.0, b.1)));
    if band.len() == 1 {
        // One checkpoint: a short bar around it.
        let (x, lo, hi) = band[0];
        let d = 0.02 * (plan.xhi - plan.xlo);
        poly = vec![(x - d, hi), (x + d, hi), (x + d, lo), (x - d, lo)];
    }
    chart
        .draw_series(std::iter::once(Polygon::new(poly, BAND.filled())))
        .map_err(err)?;
    let name = plan.opts.band.as_ref().map_or("", |b| b.0);
    for &(x, lo, hi) in band {
        for (y, what) in [(lo, "low"), (hi, "high")] {
            hover.point(
                chart.backend_coord(&(x, y)),
                4,
                &format!(
                    "{name} ({what} edge), {} {}: {}{}",
                    plan.x_desc,
                    plan.xfmt(x),
                    num(y),
                    plan.note_at(x)
                ),
            );
        }
    }
    Ok(())
}

/// Every series drawn as a line (solid or dashed), except the points-only ones.
fn draw_series_lines<Y>(
    chart: &mut LineChart<'_, '_, Y>,
    plan: &Plan,
    kept: &[Vec<(f64, f64)>],
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    for (si, pts) in kept.iter().enumerate() {
        let c = plan.colour(si);
        if plan.points_only(si) {
            continue;
        }
        if let Some((d, g)) = plan.dash(si) {
            chart
                .draw_series(DashedLineSeries::new(pts.clone(), d, g, c.stroke_width(2)))
                .map_err(err)?;
        } else {
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Dots on short series (up to 40 points) and points-only series, ringed in white.
fn draw_dots<Y>(
    chart: &mut LineChart<'_, '_, Y>,
    plan: &Plan,
    kept: &[Vec<(f64, f64)>],
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    for (si, pts) in kept.iter().enumerate() {
        let c = plan.colour(si);
        if pts.len() <= 40 || plan.points_only(si) {
            let r = if pts.len() <= 3 || plan.points_only(si) {
                5
            } else {
                3
            };
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, r + 1, WHITE.filled())))
                .map_err(err)?;
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, r, c.filled())))
                .map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Regression: small values (a warm-up learning rate) got "0.0" on every y tick.
    #[test]
    fn small_values_get_distinct_y_labels() {
        let pts: Vec<(f64, f64)> = (1..=4).map(|i| (i as f64, 2e-6 * i as f64)).collect();
        let svg = super::lines(&[("learning rate", pts)], "step", "lr", false, None).unwrap();
        assert!(svg.contains("e-6"), "no scientific y labels");
        assert!(!svg.contains(">0.0<"), "a tick still reads 0.0");
    }
}
