//! SVG charts drawn with plotters' SVG backend (no fonts, no network): strings ready to inline.
//! Labels here are generic (axes, legends); user strings (module names, paths) stay in the HTML,
//! where the template escapes them.

use plotters::prelude::*;

type ChartResult = Result<String, String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("chart: {e:?}")
}

/// A qualitative palette (Okabe–Ito, colour-blind friendly, yellow replaced by grey and purple).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(117, 112, 179),
    RGBColor(90, 90, 90),
];

/// Where a line chart puts its legend.
#[derive(Clone, Copy, Debug, Default)]
pub enum Legend {
    #[default]
    UpperRight,
    LowerLeft,
    LowerRight,
}

/// Options of [`lines_with`].
#[derive(Clone, Debug, Default)]
pub struct LineOpts<'a> {
    pub log_y: bool,
    /// A vertical marker (e.g. the Dash switch step), drawn in black.
    pub marker: Option<(f64, &'a str)>,
    /// Fixed y range (linear axes only), e.g. `(0, 1)` for a fraction.
    pub y_range: Option<(f64, f64)>,
    /// Fixed x range (default: the data's).
    pub x_range: Option<(f64, f64)>,
    /// Horizontal reference lines (e.g. a paper's values), grey and dashed; an empty label keeps
    /// a line out of the legend.
    pub hlines: Vec<(f64, &'a str)>,
    pub legend: Legend,
    /// Indices of series drawn as points only, without a line (e.g. sparse evaluations).
    pub points_only: Vec<usize>,
    /// Size in pixels (default 640 × 280).
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Viridis-like colour for `t` in [0, 1] (linear interpolation between five anchors).
fn viridis(t: f64) -> RGBColor {
    const A: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let x = t.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f64;
    let (a, b) = (A[i], A[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Category label at the centre of cell `i` (`x = i + 0.5`); empty elsewhere.
fn centre_label(cats: &[String], x: f64) -> String {
    if (x.fract() - 0.5).abs() < 1e-6 {
        cats.get(x.floor() as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.filter(|x| x.is_finite() && *x > 0.0).collect();
    let hi = v.iter().cloned().fold(f64::MIN_POSITIVE, f64::max);
    let lo = v.iter().cloned().fold(hi, f64::min).max(hi * 1e-12);
    (lo / 1.5, hi * 1.5)
}

/// δ against singular-value index (log y), the picked TSDs marked, σ on a second log axis.
pub fn spectrum(sigma: &[f64], delta: &[f64], picks: &[usize]) -> ChartResult {
    let k = delta.len().max(1) as f64;
    let (dlo, dhi) = log_range(delta.iter().cloned());
    let (slo, shi) = log_range(sigma.iter().cloned());
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (640, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .right_y_label_area_size(64)
            .build_cartesian_2d(0f64..k, (dlo..dhi).log_scale())
            .map_err(err)?
            .set_secondary_coord(0f64..k, (slo..shi).log_scale());
        chart
            .configure_mesh()
            .x_desc("singular-value index i (descending σ)")
            .y_desc("change rate δ_i")
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(err)?;
        chart
            .configure_secondary_axes()
            .y_desc("σ_i")
            .y_labels(6)
            .label_style(("sans-serif", 12).into_font().color(&PALETTE[1]))
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(err)?;
        let pts = delta
            .iter()
            .enumerate()
            .filter(|(_, d)| **d > 0.0)
            .map(|(i, d)| (i as f64, *d));
        chart
            .draw_series(LineSeries::new(pts, PALETTE[0].stroke_width(1)))
            .map_err(err)?
            .label("δ")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], PALETTE[0]));
        let spts = sigma
            .iter()
            .enumerate()
            .filter(|(_, s)| **s > 0.0)
            .map(|(i, s)| (i as f64, *s));
        chart
            .draw_secondary_series(LineSeries::new(spts, PALETTE[1].stroke_width(1)))
            .map_err(err)?
            .label("σ (right axis)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], PALETTE[1]));
        chart
            .draw_series(
                picks
                    .iter()
                    .filter(|&&i| i < delta.len() && delta[i] > 0.0)
                    .map(|&i| Circle::new((i as f64, delta[i]), 4, PALETTE[3].filled())),
            )
            .map_err(err)?
            .label("picked TSDs")
            .legend(|(x, y)| Circle::new((x + 8, y), 4, PALETTE[3].filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// Grouped bars on a log y axis: `categories` on x, one bar per series (non-positive values skipped).
pub fn grouped_log_bars(
    categories: &[String],
    series: &[(&str, Vec<f64>)],
    y_desc: &str,
) -> ChartResult {
    let n = categories.len().max(1);
    let (lo, hi) = log_range(series.iter().flat_map(|s| s.1.iter().cloned()));
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (640, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let cats = categories.to_vec();
        let width = 1.0 / (series.len() as f64 + 1.0);
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(2 * n + 1)
            .x_label_formatter(&|x| centre_label(&cats, *x))
            .y_desc(y_desc)
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(err)?;
        for (si, (name, vals)) in series.iter().enumerate() {
            let c = PALETTE[si % PALETTE.len()];
            chart
                .draw_series(
                    vals.iter()
                        .enumerate()
                        .filter(|(_, v)| **v > 0.0)
                        .map(|(i, v)| {
                            let x0 = i as f64 + width * (si as f64 + 0.5);
                            Rectangle::new([(x0, lo), (x0 + width, *v)], c.filled())
                        }),
                )
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

/// A heat map: rows × columns of optional values, colour by value (linear or log10), with the
/// scale's ends printed.
pub fn heatmap(
    rows: &[String],
    cols: &[String],
    values: &[Vec<Option<f64>>],
    log: bool,
    legend: &str,
) -> ChartResult {
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
    let span = if hi > lo { hi - lo } else { 1.0 };
    let (nr, nc) = (rows.len().max(1), cols.len().max(1));
    let height = (60 + 16 * nr).clamp(200, 900) as u32;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (640, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (rs, cs) = (rows.to_vec(), cols.to_vec());
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .caption(legend, ("sans-serif", 14))
            .build_cartesian_2d(0f64..nc as f64, 0f64..nr as f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(2 * nc + 1)
            .y_labels(2 * nr + 1)
            .x_label_formatter(&|x| centre_label(&cs, *x))
            .y_label_formatter(&|y| centre_label(&rs, *y))
            .y_desc("layer")
            .draw()
            .map_err(err)?;
        let mut cells = Vec::new();
        for (r, row) in values.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let colour = match v {
                    Some(v) if v.is_finite() && (!log || *v > 0.0) => {
                        let t = ((tf(*v) - lo) / span).clamp(0.0, 1.0);
                        viridis(t)
                    }
                    _ => RGBColor(235, 235, 235),
                };
                cells.push(Rectangle::new(
                    [(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)],
                    colour.filled(),
                ));
            }
        }
        chart.draw_series(cells).map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(buf)
}

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

/// Lines over x with the options of [`LineOpts`].
pub fn lines_with(
    series: &[(&str, Vec<(f64, f64)>)],
    x_desc: &str,
    y_desc: &str,
    opts: &LineOpts,
) -> ChartResult {
    let (log_y, marker) = (opts.log_y, opts.marker);
    let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let (xlo, xhi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    let (xlo, xhi) = if let Some(r) = opts.x_range {
        r
    } else if xlo.is_finite() && xhi > xlo {
        (xlo, xhi)
    } else {
        (0.0, 1.0)
    };
    let ys = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(
            &mut buf,
            (opts.width.unwrap_or(640), opts.height.unwrap_or(280)),
        )
        .into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut cb = ChartBuilder::on(&root);
        cb.margin(8)
            .margin_right(20)
            .x_label_area_size(36)
            .y_label_area_size(64);
        macro_rules! body {
            ($chart:expr, $ylo:expr, $yhi:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .y_labels(6)
                    .draw()
                    .map_err(err)?;
                for (si, (name, pts)) in series.iter().enumerate() {
                    let c = PALETTE[si % PALETTE.len()];
                    let pts: Vec<(f64, f64)> = pts
                        .iter()
                        .cloned()
                        .filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0))
                        .collect();
                    if opts.points_only.contains(&si) {
                        chart
                            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))
                            .map_err(err)?
                            .label(*name)
                            .legend(move |(x, y)| Circle::new((x + 8, y), 4, c.filled()));
                        continue;
                    }
                    chart
                        .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                        .map_err(err)?
                        .label(*name)
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                        });
                    if pts.len() <= 40 {
                        chart
                            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
                            .map_err(err)?;
                    }
                }
                let grey = RGBColor(120, 120, 120);
                for &(y, label) in &opts.hlines {
                    let drawn = chart
                        .draw_series(DashedLineSeries::new(
                            vec![(xlo, y), (xhi, y)],
                            6,
                            4,
                            grey.stroke_width(2),
                        ))
                        .map_err(err)?;
                    if !label.is_empty() {
                        drawn.label(label).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 16, y)], grey.stroke_width(2))
                        });
                    }
                }
                if let Some((x, label)) = marker {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(x, $ylo), (x, $yhi)],
                            BLACK.stroke_width(1),
                        )))
                        .map_err(err)?
                        .label(label)
                        .legend(|(x, y)| {
                            PathElement::new(vec![(x, y), (x + 16, y)], BLACK.stroke_width(1))
                        });
                }
                chart
                    .configure_series_labels()
                    .position(match opts.legend {
                        Legend::UpperRight => SeriesLabelPosition::UpperRight,
                        Legend::LowerLeft => SeriesLabelPosition::LowerLeft,
                        Legend::LowerRight => SeriesLabelPosition::LowerRight,
                    })
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(err)?;
            }};
        }
        if log_y {
            let (lo, hi) = log_range(ys);
            body!(
                cb.build_cartesian_2d(xlo..xhi, (lo..hi).log_scale())
                    .map_err(err)?,
                lo,
                hi
            );
        } else {
            let v: Vec<f64> = ys
                .chain(opts.hlines.iter().map(|h| h.0))
                .filter(|y| y.is_finite())
                .collect();
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if let Some(r) = opts.y_range {
                r
            } else if lo.is_finite() && hi > lo {
                (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
            } else {
                (lo.min(0.0) - 1.0, hi.max(0.0) + 1.0)
            };
            body!(
                cb.build_cartesian_2d(xlo..xhi, lo..hi).map_err(err)?,
                lo,
                hi
            );
        }
        root.present().map_err(err)?;
    }
    Ok(buf)
}
