//! SVG charts drawn with plotters' SVG backend (no fonts, no network): strings ready to inline.
//! Labels here are generic (axes, legends); user strings (module names, paths) stay in the HTML,
//! where the template escapes them.

mod bars;
mod heatmap;
mod lines;
mod params;
mod spectrum;

pub use bars::grouped_log_bars;
pub use heatmap::{heatmap, heatmap_has_grey};
pub use lines::{lines, lines_with, LineOpts, Style};
pub use params::{params_accuracy, ConfigMarks, Level, MethodMarks, ParamsOpts};
pub use spectrum::{spectrum, SpectrumNull, SpectrumPick};

use plotters::prelude::*;

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

/// The colour of a method on every page: LoRA blue, LoRA-Dash vermillion, the full fine-tune
/// and the base model grey.
pub fn method_colour(m: crate::names::Method) -> RGBColor {
    match m {
        crate::names::Method::Lora => PALETTE[0],
        crate::names::Method::LoraDash => PALETTE[1],
        crate::names::Method::Full => PALETTE[7],
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

/// The light fill of a null band.
pub const BAND: RGBColor = RGBColor(214, 214, 214);

/// The colour of heat-map cells without a value (a module type not adapted in that layer).
pub const GREY_CELL: RGBColor = RGBColor(235, 235, 235);

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
