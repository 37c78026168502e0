//! SVG charts drawn with plotters' SVG backend (no fonts, no network): strings ready to inline.
//! Labels here are generic (axes, legends); user strings (module names, paths) stay in the HTML,
//! where the template escapes them.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

type ChartResult = Result<String, String>;

fn err<E: std::fmt::Debug>(e: E) -> String {
    format!("chart: {e:?}")
}

/// plotters' font size of every chart text. Its SVG backend writes `font-size = size / 1.24`, so
/// 14 renders at 11.3 px: no label under 11 px in a page shown at its natural size.
pub const TEXT: u32 = 14;

fn font() -> FontDesc<'static> {
    ("sans-serif", TEXT).into_font()
}

/// Escapes text for an SVG `<title>`.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Transparent hover targets drawn over a finished chart: each carries a `<title>` with the
/// values of the point or cell under it (browsers show it as a tooltip; no script needed).
#[derive(Default)]
struct Hover(Vec<String>);

impl Hover {
    fn point(&mut self, (x, y): (i32, i32), r: u32, text: &str) {
        self.0.push(format!(
            r##"<circle cx="{x}" cy="{y}" r="{r}" fill="#000000" fill-opacity="0"><title>{}</title></circle>"##,
            esc(text)
        ));
    }

    fn rect(&mut self, (x0, y0): (i32, i32), (x1, y1): (i32, i32), text: &str) {
        let (x, y) = (x0.min(x1), y0.min(y1));
        let (w, h) = ((x1 - x0).abs().max(1), (y1 - y0).abs().max(1));
        self.0.push(format!(
            r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="#000000" fill-opacity="0"><title>{}</title></rect>"##,
            esc(text)
        ));
    }

    /// Inserts the targets before the SVG's closing tag (on top of everything drawn).
    fn apply(self, svg: String) -> String {
        if self.0.is_empty() {
            return svg;
        }
        match svg.rfind("</svg>") {
            Some(i) => format!("{}{}\n{}", &svg[..i], self.0.join("\n"), &svg[i..]),
            None => svg,
        }
    }
}

/// A number for a tooltip: the report's one number format.
fn num(v: f64) -> String {
    crate::render::number(v)
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

/// Width of the legend column to the right of every plotting area: legends never cover data.
const LEGEND_W: u32 = 200;

/// How a legend entry shows its series.
#[derive(Clone, Copy, Debug)]
enum Mark {
    Line(RGBColor, u32),
    Dashed(RGBColor),
    Bar(RGBColor),
    Dot(RGBColor),
    /// A dot with a black ring (a flagged point, e.g. a near-null pick).
    Ring(RGBColor),
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Splits a `w × h` canvas into the plotting side and the legend column on its right.
fn split_legend<'a>(root: &Area<'a>, w: u32) -> (Area<'a>, Area<'a>) {
    root.split_horizontally(w.saturating_sub(LEGEND_W) as i32)
}

/// Draws a framed legend at the top of `area` (the column beside the plot).
fn draw_legend(area: &Area<'_>, top: i32, entries: &[(String, Mark)]) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let row = 20;
    let (x0, y0) = (6, top);
    let x1 = LEGEND_W as i32 - 6;
    let y1 = y0 + 8 + row * entries.len() as i32;
    area.draw(&Rectangle::new([(x0, y0), (x1, y1)], WHITE.filled()))
        .map_err(err)?;
    area.draw(&Rectangle::new([(x0, y0), (x1, y1)], BLACK.stroke_width(1)))
        .map_err(err)?;
    for (i, (label, mark)) in entries.iter().enumerate() {
        let y = y0 + 4 + row * i as i32 + row / 2;
        let (a, b) = (x0 + 8, x0 + 26);
        match *mark {
            Mark::Line(c, w) => {
                area.draw(&PathElement::new(vec![(a, y), (b, y)], c.stroke_width(w)))
            }
            Mark::Dashed(c) => {
                for k in 0..3 {
                    let s = a + 7 * k;
                    area.draw(&PathElement::new(
                        vec![(s, y), (s + 4, y)],
                        c.stroke_width(2),
                    ))
                    .map_err(err)?;
                }
                Ok(())
            }
            Mark::Bar(c) => area.draw(&Rectangle::new(
                [(a + 3, y - 5), (b - 3, y + 5)],
                c.filled(),
            )),
            Mark::Dot(c) => area.draw(&Circle::new((a + 9, y), 4, c.filled())),
            Mark::Ring(c) => area
                .draw(&Circle::new((a + 9, y), 4, c.filled()))
                .and_then(|_| area.draw(&Circle::new((a + 9, y), 7, BLACK.stroke_width(2)))),
        }
        .map_err(err)?;
        area.draw(&Text::new(label.clone(), (b + 6, y - 7), font()))
            .map_err(err)?;
    }
    Ok(())
}

/// Whether every x is an integer (optimizer steps): such an axis gets integer labels only.
fn integral(xs: impl Iterator<Item = f64>) -> bool {
    let mut any = false;
    for x in xs {
        if x.fract() != 0.0 {
            return false;
        }
        any = true;
    }
    any
}

/// An integer axis label, or none for ticks between integers.
fn integer_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{:.0}", v.round())
    } else {
        String::new()
    }
}

/// `lo..hi` widened by `frac` of its span on both sides (points and markers off the axes).
fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    let span = (hi - lo).abs().max(1e-12);
    (lo - frac * span, hi + frac * span)
}

/// One x of a shaded band: `(x, low, high)`.
pub type BandPoint = (f64, f64, f64);

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

/// The colour of a method on every page: LoRA blue, LoRA-Dash vermillion, the full fine-tune
/// and the base model grey.
pub fn method_colour(m: crate::train::Method) -> RGBColor {
    match m {
        crate::train::Method::Lora => PALETTE[0],
        crate::train::Method::LoraDash => PALETTE[1],
        crate::train::Method::Full => PALETTE[7],
    }
}

/// The same colour for HTML (`#0072b2`), so tables and legends in the page match the charts.
pub fn css(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// The dash of the i-th rank of one method (solid, dashed, dotted, long dashes, …): ranks of one
/// method share its colour.
pub fn rank_dash(i: usize) -> Option<(u32, u32)> {
    [
        None,
        Some((8, 5)),
        Some((2, 4)),
        Some((14, 4)),
        Some((8, 3)),
    ][i % 5]
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

/// A log axis range over the positive values: 5 % of the log span beyond the data on both sides
/// (a dot at the extreme is not clipped), and at least three powers of ten inside it, so that the
/// axis carries at least three labels.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.filter(|x| x.is_finite() && *x > 0.0).collect();
    let hi = v.iter().cloned().fold(f64::MIN_POSITIVE, f64::max);
    let lo = v.iter().cloned().fold(hi, f64::min).max(hi * 1e-12);
    let (mut l, mut h) = (lo.log10(), hi.log10());
    let pad = 0.05 * (h - l).max(0.2);
    l -= pad;
    h += pad;
    // Powers of ten inside [l, h]: floor(h) - ceil(l) + 1; widen downwards to three.
    let inside = h.floor() - l.ceil() + 1.0;
    if inside < 3.0 {
        l = h.floor() - 2.0 - pad.min(0.1);
    }
    (10f64.powf(l), 10f64.powf(h))
}

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

/// The light fill of a null band.
pub const BAND: RGBColor = RGBColor(214, 214, 214);

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
    let band: Vec<(f64, f64, f64)> = null
        .filter(|n| n.coordinate_sd > 0.0)
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
        .unwrap_or_default();
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
            .map_err(err)?;
        if !band.is_empty() {
            let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2.min(dhi))).collect();
            poly.extend(band.iter().rev().map(|b| (b.0, b.1.max(dlo))));
            chart
                .draw_series(std::iter::once(Polygon::new(poly, BAND.filled())))
                .map_err(err)?;
        }
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
        let shown: Vec<&SpectrumPick> = picks
            .iter()
            .filter(|p| p.index < delta.len() && delta[p.index] > 0.0)
            .collect();
        chart
            .draw_series(
                shown.iter().filter(|p| p.near_null).map(|p| {
                    Circle::new((p.index as f64, delta[p.index]), 7, BLACK.stroke_width(2))
                }),
            )
            .map_err(err)?;
        chart
            .draw_series(
                shown
                    .iter()
                    .map(|p| Circle::new((p.index as f64, delta[p.index]), 4, PALETTE[3].filled())),
            )
            .map_err(err)?;
        let s1 = sigma.first().copied().unwrap_or(0.0);
        for (rank, p) in shown.iter().enumerate() {
            let (i, d) = (p.index, delta[p.index]);
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
            if let Some(b) = band.iter().find(|b| b.0 as usize == i) {
                t.push_str(&format!(
                    "; null δ: rms {}, threshold {}",
                    num(b.1),
                    num(b.2)
                ));
            }
            hover.point(chart.backend_coord(&(i as f64, d)), 7, &t);
        }
        // Sparse hover targets along the δ line (every direction of a short spectrum).
        let step = (delta.len() / 64).max(1);
        for (i, d) in delta.iter().enumerate().step_by(step) {
            if *d > 0.0 && !shown.iter().any(|p| p.index == i) {
                let mut t = format!("i = {i}: δ = {}", num(*d));
                if let Some(s) = sigma.get(i) {
                    t.push_str(&format!(", σ = {}", num(*s)));
                }
                if let Some(b) = band.iter().find(|b| b.0 as usize == i) {
                    t.push_str(&format!(
                        "; null δ: rms {}, threshold {}",
                        num(b.1),
                        num(b.2)
                    ));
                }
                hover.point(chart.backend_coord(&(i as f64, *d)), 3, &t);
            }
        }
        let mut entries = vec![
            ("δ (left axis)".to_string(), Mark::Line(PALETTE[0], 1)),
            ("σ (right axis)".to_string(), Mark::Line(PALETTE[1], 1)),
            ("picked TSD".to_string(), Mark::Dot(PALETTE[3])),
        ];
        if shown.iter().any(|p| p.near_null) {
            entries.push(("near-null pick".to_string(), Mark::Ring(PALETTE[3])));
        }
        if !band.is_empty() {
            entries.push(("null δ band".to_string(), Mark::Bar(BAND)));
        }
        draw_legend(&side, 8, &entries)?;
        root.present().map_err(err)?;
    }
    Ok(hover.apply(buf))
}

/// Grouped bars on a log y axis: `categories` on x, one bar per series (non-positive values skipped).
pub fn grouped_log_bars(
    categories: &[String],
    series: &[(&str, Vec<f64>)],
    y_desc: &str,
) -> ChartResult {
    let n = categories.len().max(1);
    let (lo, hi) = log_range(series.iter().flat_map(|s| s.1.iter().cloned()));
    let w = 640 + LEGEND_W;
    let mut buf = String::new();
    let mut hover = Hover::default();
    {
        let root = SVGBackend::with_string(&mut buf, (w, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot, side) = split_legend(&root, w);
        let cats = categories.to_vec();
        let width = 1.0 / (series.len() as f64 + 1.0);
        let mut chart = ChartBuilder::on(&plot)
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .label_style(font())
            .axis_desc_style(font())
            .disable_x_mesh()
            .x_labels(2 * n + 1)
            .x_label_formatter(&|x| centre_label(&cats, *x))
            .y_desc(y_desc)
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()
            .map_err(err)?;
        let mut entries = Vec::new();
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
                .map_err(err)?;
            for (i, v) in vals.iter().enumerate().filter(|(_, v)| **v > 0.0) {
                let x0 = i as f64 + width * (si as f64 + 0.5);
                hover.rect(
                    chart.backend_coord(&(x0, *v)),
                    chart.backend_coord(&(x0 + width, lo)),
                    &format!(
                        "{}, {name}: {}",
                        categories.get(i).map_or("", |c| c.as_str()),
                        num(*v)
                    ),
                );
            }
            entries.push((name.to_string(), Mark::Bar(c)));
        }
        draw_legend(&side, 8, &entries)?;
        root.present().map_err(err)?;
    }
    Ok(hover.apply(buf))
}

/// Whether a heat map of these values has grey (missing or non-plottable) cells.
pub fn heatmap_has_grey(values: &[Vec<Option<f64>>], log: bool) -> bool {
    values
        .iter()
        .flatten()
        .any(|v| !matches!(v, Some(v) if v.is_finite() && (!log || *v > 0.0)))
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
        let mut cells = Vec::new();
        for (r, row) in values.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let colour = match v {
                    Some(v) if v.is_finite() && (!log || *v > 0.0) => {
                        let t = ((tf(*v) - lo) / span).clamp(0.0, 1.0);
                        viridis(t)
                    }
                    _ => GREY_CELL,
                };
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
                    colour.filled(),
                ));
            }
        }
        chart.draw_series(cells).map_err(err)?;
        // The colour bar: the scale from lo (bottom) to hi (top), five labelled values.
        let mut bar = ChartBuilder::on(&side)
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
        // The colour bar's title: what the colours measure, and the scale.
        side.draw(&Text::new(
            format!("{legend}{}", if log { " (log)" } else { "" }),
            (4, 8),
            font(),
        ))
        .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(hover.apply(buf))
}

/// The colour of heat-map cells without a value (a module type not adapted in that layer).
pub const GREY_CELL: RGBColor = RGBColor(235, 235, 235);

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

/// Lines over x with the options of [`LineOpts`]. The x range gets a 4 % margin (a marker at the
/// first step does not sit on the y axis); all-integer x (steps) get integer labels; series of up
/// to 40 points get dots, drawn after every line so that no line covers them.
pub fn lines_with(
    series: &[(&str, Vec<(f64, f64)>)],
    x_desc: &str,
    y_desc: &str,
    opts: &LineOpts,
) -> ChartResult {
    let (log_y, marker) = (opts.log_y, opts.marker);
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
    let band: &[(f64, f64, f64)] = opts.band.as_ref().map_or(&[], |b| b.1.as_slice());
    let ys = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .chain(band.iter().flat_map(|b| [b.1, b.2]));
    let colour = |si: usize| {
        opts.styles
            .get(si)
            .map_or(PALETTE[si % PALETTE.len()], |s| s.colour)
    };
    let dash = |si: usize| opts.styles.get(si).and_then(|s| s.dash);
    let mut entries: Vec<(String, Mark)> = Vec::new();
    for (si, (name, _)) in series.iter().enumerate() {
        let c = colour(si);
        let label = if opts.styles.is_empty() {
            Some(name.to_string())
        } else {
            opts.styles.get(si).and_then(|s| s.legend.clone())
        };
        let Some(label) = label else { continue };
        entries.push((
            label,
            if opts.points_only.contains(&si) {
                Mark::Dot(c)
            } else if dash(si).is_some() {
                Mark::Dashed(c)
            } else {
                Mark::Line(c, 2)
            },
        ));
    }
    if let Some((label, _)) = &opts.band {
        entries.push((label.to_string(), Mark::Bar(BAND)));
    }
    let grey = RGBColor(120, 120, 120);
    for &(_, label) in &opts.hlines {
        if !label.is_empty() {
            entries.push((label.to_string(), Mark::Dashed(grey)));
        }
    }
    if let Some((_, label)) = marker {
        entries.push((label.to_string(), Mark::Line(BLACK, 1)));
    }
    let w = opts.width.unwrap_or(640) + LEGEND_W;
    let mut buf = String::new();
    let mut hover = Hover::default();
    let note_at = |x: f64| {
        opts.notes
            .iter()
            .find(|n| (n.0 - x).abs() < 1e-9)
            .map_or(String::new(), |n| format!("; {}", n.1))
    };
    let xfmt = |x: f64| {
        if integer_x {
            format!("{x:.0}")
        } else {
            num(x)
        }
    };
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
        macro_rules! body {
            ($chart:expr, $ylo:expr, $yhi:expr) => {{
                let mut chart = $chart;
                let mut mesh = chart.configure_mesh();
                mesh.label_style(font())
                    .axis_desc_style(font())
                    .x_desc(x_desc)
                    .y_desc(y_desc)
                    .y_labels(6);
                if integer_x {
                    mesh.x_label_formatter(&|v| integer_label(*v));
                }
                mesh.draw().map_err(err)?;
                let kept: Vec<Vec<(f64, f64)>> = series
                    .iter()
                    .map(|(_, pts)| {
                        pts.iter()
                            .cloned()
                            .filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0))
                            .collect()
                    })
                    .collect();
                if !band.is_empty() {
                    let mut poly: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2)).collect();
                    poly.extend(band.iter().rev().map(|b| (b.0, b.1)));
                    if band.len() == 1 {
                        // One checkpoint: a short bar around it.
                        let (x, lo, hi) = band[0];
                        let d = 0.02 * (xhi - xlo);
                        poly = vec![(x - d, hi), (x + d, hi), (x + d, lo), (x - d, lo)];
                    }
                    chart
                        .draw_series(std::iter::once(Polygon::new(poly, BAND.filled())))
                        .map_err(err)?;
                    let name = opts.band.as_ref().map_or("", |b| b.0);
                    for &(x, lo, hi) in band {
                        for (y, what) in [(lo, "low"), (hi, "high")] {
                            hover.point(
                                chart.backend_coord(&(x, y)),
                                4,
                                &format!(
                                    "{name} ({what} edge), {x_desc} {}: {}{}",
                                    xfmt(x),
                                    num(y),
                                    note_at(x)
                                ),
                            );
                        }
                    }
                }
                for (si, pts) in kept.iter().enumerate() {
                    let c = colour(si);
                    if opts.points_only.contains(&si) {
                        continue;
                    }
                    if let Some((d, g)) = dash(si) {
                        chart
                            .draw_series(DashedLineSeries::new(
                                pts.clone(),
                                d,
                                g,
                                c.stroke_width(2),
                            ))
                            .map_err(err)?;
                    } else {
                        chart
                            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                            .map_err(err)?;
                    }
                }
                for &(y, _) in &opts.hlines {
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(xlo, y), (xhi, y)],
                            6,
                            4,
                            grey.stroke_width(2),
                        ))
                        .map_err(err)?;
                }
                if let Some((x, _)) = marker {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(x, $ylo), (x, $yhi)],
                            BLACK.stroke_width(1),
                        )))
                        .map_err(err)?;
                }
                for (si, pts) in kept.iter().enumerate() {
                    let c = colour(si);
                    if pts.len() <= 40 || opts.points_only.contains(&si) {
                        let r = if pts.len() <= 3 || opts.points_only.contains(&si) {
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
                for (si, pts) in kept.iter().enumerate() {
                    let step = (pts.len() / 400).max(1);
                    for p in pts.iter().step_by(step) {
                        hover.point(
                            chart.backend_coord(p),
                            5,
                            &format!(
                                "{}, {x_desc} {}: {}{}",
                                series[si].0,
                                xfmt(p.0),
                                num(p.1),
                                note_at(p.0)
                            ),
                        );
                    }
                }
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
                // A point at the range's end (accuracy 1, 100 %) stays off the frame.
                padded(r.0, r.1, 0.03)
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
        draw_legend(&side, 8, &entries)?;
        root.present().map_err(err)?;
    }
    Ok(hover.apply(buf))
}

/// One configuration on a Params % axis: the mean over seeds with its 95 % interval, and each seed.
#[derive(Clone, Debug, Default)]
pub struct ConfigMarks {
    /// `LoRA r=1` (tooltips).
    pub label: String,
    /// `r=1`, drawn beside the configuration.
    pub tag: String,
    /// Params % of the configuration (the mean over its seeds).
    pub x: f64,
    pub mean: Option<f64>,
    pub ci: Option<(f64, f64)>,
    /// `(run, Params %, accuracy)` of each seed.
    pub seeds: Vec<(String, f64, f64)>,
    /// The tooltip of the mean (the page formats it from the record).
    pub note: String,
}

/// One method's configurations, joined through their means.
#[derive(Clone, Debug)]
pub struct MethodMarks {
    pub name: String,
    pub colour: RGBColor,
    /// −1: drawn a little left of its Params % (seeds and rank tags further left), +1: right.
    /// Only the drawing moves (two methods at one Params % stay apart); tooltips give the value.
    pub side: f64,
    pub configs: Vec<ConfigMarks>,
}

/// A horizontal reference level (the base model, chance).
#[derive(Clone, Debug)]
pub struct Level {
    pub y: f64,
    pub label: String,
    pub colour: RGBColor,
    pub dash: Option<(u32, u32)>,
}

/// Options of [`params_accuracy`].
#[derive(Clone, Debug, Default)]
pub struct ParamsOpts {
    /// Params % shown on the log x axis (default: the data's, padded).
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub y_desc: String,
    /// A title drawn above the plot (small multiples: the task).
    pub caption: Option<String>,
    /// Plot size without the legend column (default 600 × 340).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Without a legend column (small multiples share the page's legend).
    pub no_legend: bool,
}

/// A Params % tick label: `0.01`, `0.2`, `1`, `10`.
fn pct_label(v: f64) -> String {
    if v <= 0.0 || !v.is_finite() {
        return String::new();
    }
    let d = (-v.log10().floor()).max(0.0) as usize;
    let s = format!("{v:.d$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Accuracy against Params % (log x, real units): per method, each configuration's mean with its
/// 95 % interval as an error bar, every seed as a dot beside it, a rank tag, a line through the
/// means; horizontal levels (base model, chance) across. Every dot and mean has a tooltip.
pub fn params_accuracy(
    methods: &[MethodMarks],
    levels: &[Level],
    opts: &ParamsOpts,
) -> ChartResult {
    // Drawing offsets in decades: the mean beside its Params %, the seeds further out.
    const DODGE: f64 = 0.05;
    const SEEDS: f64 = 0.04;
    let xs: Vec<f64> = methods
        .iter()
        .flat_map(|m| m.configs.iter())
        .flat_map(|c| std::iter::once(c.x).chain(c.seeds.iter().map(|s| s.1)))
        .filter(|x| *x > 0.0 && x.is_finite())
        .collect();
    let (xlo, xhi) = opts.x_range.unwrap_or_else(|| {
        let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().cloned().fold(0.0, f64::max);
        if lo.is_finite() && hi > 0.0 {
            (lo / 10f64.powf(0.3), hi * 10f64.powf(0.3))
        } else {
            (0.01, 1.0)
        }
    });
    let ys: Vec<f64> = methods
        .iter()
        .flat_map(|m| m.configs.iter())
        .flat_map(|c| {
            c.mean
                .into_iter()
                .chain(c.ci.into_iter().flat_map(|(a, b)| [a, b]))
                .chain(c.seeds.iter().map(|s| s.2))
        })
        .chain(levels.iter().map(|l| l.y))
        .filter(|y| y.is_finite())
        .collect();
    let (ylo, yhi) = opts.y_range.unwrap_or_else(|| {
        let lo = ys.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi > lo {
            padded(lo, hi, 0.08)
        } else if lo.is_finite() {
            (lo - 1.0, lo + 1.0)
        } else {
            (0.0, 100.0)
        }
    });
    let legend_w = if opts.no_legend { 0 } else { LEGEND_W };
    let w = opts.width.unwrap_or(600) + legend_w;
    let h = opts.height.unwrap_or(340);
    let mut buf = String::new();
    let mut hover = Hover::default();
    {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (plot, side) = if opts.no_legend {
            (root.clone(), None)
        } else {
            let (p, s) = split_legend(&root, w);
            (p, Some(s))
        };
        let mut cb = ChartBuilder::on(&plot);
        cb.margin(8)
            .margin_right(12)
            .x_label_area_size(42)
            .y_label_area_size(64);
        if let Some(c) = &opts.caption {
            cb.caption(c, ("sans-serif", TEXT + 3));
        }
        let mut chart = cb
            .build_cartesian_2d((xlo..xhi).log_scale(), ylo..yhi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .label_style(font())
            .axis_desc_style(font())
            .x_desc("trainable parameters, % of the base model (log)")
            .y_desc(opts.y_desc.as_str())
            .x_labels(6)
            .x_label_formatter(&|v| pct_label(*v))
            .max_light_lines(0)
            .y_labels(6)
            .draw()
            .map_err(err)?;
        for l in levels {
            let pts = vec![(xlo, l.y), (xhi, l.y)];
            match l.dash {
                Some((d, g)) => chart
                    .draw_series(DashedLineSeries::new(pts, d, g, l.colour.stroke_width(2)))
                    .map_err(err)?,
                None => chart
                    .draw_series(LineSeries::new(pts, l.colour.stroke_width(2)))
                    .map_err(err)?,
            };
            for f in [0.08, 0.5, 0.92] {
                let x = xlo * (xhi / xlo).powf(f);
                hover.point(
                    chart.backend_coord(&(x, l.y)),
                    5,
                    &format!("{}: {}", l.label, num(l.y)),
                );
            }
        }
        let shift = |x: f64, decades: f64| x * 10f64.powf(decades);
        for m in methods {
            let at = m.side * DODGE;
            let mut line: Vec<(f64, f64)> = m
                .configs
                .iter()
                .filter_map(|c| Some((shift(c.x, at), c.mean?)))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            if line.len() > 1 {
                chart
                    .draw_series(LineSeries::new(line, m.colour.stroke_width(2)))
                    .map_err(err)?;
            }
        }
        for m in methods {
            let at = m.side * DODGE;
            let style = m.colour.stroke_width(2);
            for c in &m.configs {
                let xm = shift(c.x, at);
                if let Some((lo, hi)) = c.ci {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(xm, lo), (xm, hi)],
                            style,
                        )))
                        .map_err(err)?;
                    for y in [lo, hi] {
                        chart
                            .draw_series(std::iter::once(
                                EmptyElement::at((xm, y))
                                    + PathElement::new(vec![(-5, 0), (5, 0)], style),
                            ))
                            .map_err(err)?;
                    }
                }
                let n = c.seeds.len() as f64;
                let mut outer = xm;
                for (i, (run, x, y)) in c.seeds.iter().enumerate() {
                    // Seeds beside the mean, a little apart from each other.
                    let off = m.side * (SEEDS + 0.012 * (i as f64 - (n - 1.0) / 2.0).abs());
                    let xs = shift(*x, at + off + m.side * 0.006 * i as f64);
                    outer = if m.side < 0.0 {
                        outer.min(xs)
                    } else {
                        outer.max(xs)
                    };
                    chart
                        .draw_series(std::iter::once(Circle::new(
                            (xs, *y),
                            3,
                            m.colour.mix(0.6).filled(),
                        )))
                        .map_err(err)?;
                    hover.point(
                        chart.backend_coord(&(xs, *y)),
                        4,
                        &format!("{run} ({}): {} %, Params % {}", c.label, num(*y), num(*x)),
                    );
                }
                if let Some(y) = c.mean {
                    chart
                        .draw_series(std::iter::once(Circle::new((xm, y), 6, WHITE.filled())))
                        .map_err(err)?;
                    chart
                        .draw_series(std::iter::once(Circle::new((xm, y), 5, m.colour.filled())))
                        .map_err(err)?;
                    hover.point(chart.backend_coord(&(xm, y)), 6, &c.note);
                }
                if !c.tag.is_empty() {
                    let y = c
                        .mean
                        .or_else(|| c.seeds.first().map(|s| s.2))
                        .unwrap_or(ylo);
                    let (dx, anchor) = if m.side < 0.0 {
                        (-8, HPos::Right)
                    } else {
                        (8, HPos::Left)
                    };
                    chart
                        .draw_series(std::iter::once(
                            EmptyElement::at((outer, y))
                                + Text::new(
                                    c.tag.clone(),
                                    (dx, 0),
                                    font().color(&m.colour).pos(Pos::new(anchor, VPos::Center)),
                                ),
                        ))
                        .map_err(err)?;
                }
            }
        }
        if let Some(side) = side {
            let mut entries: Vec<(String, Mark)> = Vec::new();
            for m in methods {
                entries.push((
                    format!("{}: mean, 95 % CI", m.name),
                    Mark::Line(m.colour, 2),
                ));
                if m.configs.iter().any(|c| !c.seeds.is_empty()) {
                    entries.push((format!("{}: one seed", m.name), Mark::Dot(m.colour)));
                }
            }
            for l in levels {
                entries.push((
                    l.label.clone(),
                    if l.dash.is_some() {
                        Mark::Dashed(l.colour)
                    } else {
                        Mark::Line(l.colour, 2)
                    },
                ));
            }
            draw_legend(&side, 8, &entries)?;
        }
        root.present().map_err(err)?;
    }
    Ok(hover.apply(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rectangle in SVG pixels: (x0, y0, x1, y1).
    type Rect = (f64, f64, f64, f64);

    fn attr(tag: &str, name: &str) -> Option<f64> {
        let key = format!(" {name}=\"");
        let i = tag.find(&key)? + key.len();
        tag[i..].split('"').next()?.parse().ok()
    }

    /// Every drawn element's points and the legend frame (the black-stroked, unfilled rect).
    fn layout(svg: &str) -> (Vec<(f64, f64)>, Vec<Rect>) {
        let mut points = Vec::new();
        let mut legends = Vec::new();
        for tag in svg.split('<').skip(1) {
            let tag = tag.split('>').next().unwrap_or("");
            if tag.starts_with("rect ") {
                let (x, y) = (attr(tag, "x").unwrap(), attr(tag, "y").unwrap());
                let (w, h) = (attr(tag, "width").unwrap(), attr(tag, "height").unwrap());
                if tag.contains("fill=\"none\"") && tag.contains("stroke=\"#000000\"") {
                    legends.push((x, y, x + w, y + h));
                }
            } else if tag.starts_with("line ") {
                points.push((attr(tag, "x1").unwrap(), attr(tag, "y1").unwrap()));
                points.push((attr(tag, "x2").unwrap(), attr(tag, "y2").unwrap()));
            } else if tag.starts_with("circle ") {
                points.push((attr(tag, "cx").unwrap(), attr(tag, "cy").unwrap()));
            } else if let Some(p) = tag.split("points=\"").nth(1) {
                for xy in p.split('"').next().unwrap().split_whitespace() {
                    let (x, y) = xy.split_once(',').unwrap();
                    points.push((x.parse().unwrap(), y.parse().unwrap()));
                }
            }
        }
        (points, legends)
    }

    /// The plotting area (every mesh line, axis, series point outside the legend frames) and
    /// the legend frames must not overlap.
    fn assert_legend_outside(name: &str, svg: &str) {
        let (points, legends) = layout(svg);
        assert_eq!(legends.len(), 1, "{name}: one legend frame");
        let l = legends[0];
        let inside = |p: &(f64, f64)| p.0 >= l.0 && p.0 <= l.2 && p.1 >= l.1 && p.1 <= l.3;
        let plot: Vec<&(f64, f64)> = points.iter().filter(|p| !inside(p)).collect();
        assert!(plot.len() > 20, "{name}: {} points", plot.len());
        let right = plot.iter().map(|p| p.0).fold(f64::MIN, f64::max);
        assert!(
            right < l.0,
            "{name}: the legend frame starts at x = {} inside the plotting area (to x = {right})",
            l.0
        );
    }

    fn steps(f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (1..=60).map(|s| (s as f64, f(s as f64))).collect()
    }

    #[test]
    fn legends_sit_outside_the_plotting_area() {
        let sigma: Vec<f64> = (0..64).map(|i| 10.0 / (1.0 + i as f64)).collect();
        let delta: Vec<f64> = (0..64).map(|i| 1e-4 * (1.0 + i as f64)).collect();
        assert_legend_outside(
            "spectrum",
            &spectrum(
                &sigma,
                &delta,
                &[63, 62, 61].map(|index| SpectrumPick {
                    index,
                    near_null: index == 63,
                    z: Some(1.0),
                    enriched: Some(false),
                }),
                Some(SpectrumNull {
                    coordinate_sd: 1e-3,
                    threshold: 4.0,
                }),
            )
            .unwrap(),
        );
        let cats = vec!["q_proj".to_string(), "v_proj".to_string()];
        let bars = grouped_log_bars(
            &cats,
            &[("ΔW basis", vec![1.0, 2.0]), ("W basis", vec![30.0, 40.0])],
            "norm",
        )
        .unwrap();
        assert_legend_outside("bars", &bars);
        let opts = LineOpts {
            marker: Some((20.0, "Dash switch")),
            hlines: vec![(0.8, "paper"), (0.75, "")],
            y_range: Some((0.0, 1.0)),
            ..Default::default()
        };
        let svg = lines_with(
            &[
                ("LoRA", steps(|s| 0.5 + 0.004 * s)),
                ("LoRA-Dash", steps(|s| 0.9 - 0.004 * s)),
            ],
            "step",
            "accuracy",
            &opts,
        )
        .unwrap();
        assert_legend_outside("lines", &svg);
        let log = lines(&[("loss", steps(|s| 3.0 / s))], "step", "loss", true, None).unwrap();
        assert_legend_outside("log lines", &log);
    }

    /// Tick labels of a chart's axes: the `<text>` elements.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                t.split_once('>')
                    .map(|(_, r)| r.split("</text>").next().unwrap_or("").trim().to_string())
            })
            .collect()
    }

    #[test]
    fn step_axes_are_integer_and_log_axes_carry_three_labels() {
        // Steps 1..6: plotters would label 1.0, 1.5, …; only integers are shown.
        let pts: Vec<(f64, f64)> = (1..=6).map(|s| (s as f64, 2.0 + 0.01 * s as f64)).collect();
        let svg = lines(&[("loss", pts.clone())], "step", "loss", true, None).unwrap();
        let t = texts(&svg);
        assert!(!t.iter().any(|x| x.contains(".5")), "{t:?}");
        assert!(t.iter().any(|x| x == "3"), "{t:?}");
        // A log axis over 2.01–2.06 (less than a decade) still shows three powers of ten.
        let decades = t
            .iter()
            .filter(|x| ["0.01", "0.1", "1.0", "10.0", "1", "10"].contains(&x.as_str()))
            .count();
        assert!(decades >= 3, "log axis labels: {t:?}");
    }

    #[test]
    fn grey_is_reported_only_where_a_cell_has_no_value() {
        assert!(!heatmap_has_grey(&[vec![Some(1.0), Some(2.0)]], true));
        assert!(heatmap_has_grey(&[vec![Some(1.0), None]], true));
        assert!(heatmap_has_grey(&[vec![Some(0.0)]], true));
        assert!(!heatmap_has_grey(&[vec![Some(0.0)]], false));
    }

    #[test]
    fn heat_maps_have_a_colour_bar() {
        let rows = vec!["0".to_string(), "1".to_string()];
        let cols = vec!["q_proj".to_string()];
        let svg = heatmap(
            &rows,
            &cols,
            &[vec![Some(1e-3)], vec![Some(1e1)]],
            true,
            "max δ",
        )
        .unwrap();
        // 2 cells + a 64-step bar, and the bar's ends labelled with the data's range.
        let t = texts(&svg);
        assert!(t.iter().any(|x| x == "1.000e-3" || x == "0.0010"), "{t:?}");
        assert!(t.iter().any(|x| x == "10.0000"), "{t:?}");
    }
}
