//! Accuracy against Params % (log x): per method its configurations' means, intervals and seeds,
//! beside horizontal levels (the base model, chance, the full fine-tune).

use super::{
    draw_legend, err, font, num, padded, split_legend, ChartResult, Hover, Mark, LEGEND_W, TEXT,
};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Log Params % × accuracy.
type ParamsChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<f64>, RangedCoordf64>>;

/// Drawing offsets in decades: the mean beside its Params %, the seeds further out.
const DODGE: f64 = 0.05;
const SEEDS: f64 = 0.04;

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

/// `x` moved by `decades` on the log axis.
fn shift(x: f64, decades: f64) -> f64 {
    x * 10f64.powf(decades)
}

/// The x range (the given one, else the data's widened by 0.3 decades) and the y range (the
/// given one, else the data's and the levels', padded 8 %).
fn params_ranges(
    methods: &[MethodMarks],
    levels: &[Level],
    opts: &ParamsOpts,
) -> ((f64, f64), (f64, f64)) {
    let xs: Vec<f64> = methods
        .iter()
        .flat_map(|m| m.configs.iter())
        .flat_map(|c| std::iter::once(c.x).chain(c.seeds.iter().map(|s| s.1)))
        .filter(|x| *x > 0.0 && x.is_finite())
        .collect();
    let x = opts.x_range.unwrap_or_else(|| {
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
    let y = opts.y_range.unwrap_or_else(|| {
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
    (x, y)
}

/// Accuracy against Params % (log x, real units): per method, each configuration's mean with its
/// 95 % interval as an error bar, every seed as a dot beside it, a rank tag, a line through the
/// means; horizontal levels (base model, chance) across. Every dot and mean has a tooltip.
pub fn params_accuracy(
    methods: &[MethodMarks],
    levels: &[Level],
    opts: &ParamsOpts,
) -> ChartResult {
    let ((xlo, xhi), (ylo, yhi)) = params_ranges(methods, levels, opts);
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
        draw_levels(&mut chart, levels, (xlo, xhi), &mut hover)?;
        draw_mean_lines(&mut chart, methods)?;
        for m in methods {
            for c in &m.configs {
                draw_config(&mut chart, m, c, ylo, &mut hover)?;
            }
        }
        if let Some(side) = side {
            draw_legend(&side, 8, &params_legend(methods, levels))?;
        }
        root.present().map_err(err)?;
    }
    Ok(hover.apply(buf))
}

/// The horizontal levels across the chart, each with three tooltips along it.
fn draw_levels(
    chart: &mut ParamsChart,
    levels: &[Level],
    (xlo, xhi): (f64, f64),
    hover: &mut Hover,
) -> Result<(), String> {
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
    Ok(())
}

/// Per method, a line through its configurations' means (in Params % order).
fn draw_mean_lines(chart: &mut ParamsChart, methods: &[MethodMarks]) -> Result<(), String> {
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
    Ok(())
}

/// One configuration: its interval, its seeds, its mean and its rank tag.
fn draw_config(
    chart: &mut ParamsChart,
    m: &MethodMarks,
    c: &ConfigMarks,
    ylo: f64,
    hover: &mut Hover,
) -> Result<(), String> {
    let xm = shift(c.x, m.side * DODGE);
    if let Some((lo, hi)) = c.ci {
        draw_interval(chart, m.colour, xm, (lo, hi))?;
    }
    let outer = draw_seeds(chart, m, c, hover)?;
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
    Ok(())
}

/// A 95 % interval as an error bar at `xm`.
fn draw_interval(
    chart: &mut ParamsChart,
    colour: RGBColor,
    xm: f64,
    (lo, hi): (f64, f64),
) -> Result<(), String> {
    let style = colour.stroke_width(2);
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(xm, lo), (xm, hi)],
            style,
        )))
        .map_err(err)?;
    for y in [lo, hi] {
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((xm, y)) + PathElement::new(vec![(-5, 0), (5, 0)], style),
            ))
            .map_err(err)?;
    }
    Ok(())
}

/// Every seed as a dot beside the configuration's mean, a little apart from each other; returns
/// the outermost drawn x (where the rank tag goes).
fn draw_seeds(
    chart: &mut ParamsChart,
    m: &MethodMarks,
    c: &ConfigMarks,
    hover: &mut Hover,
) -> Result<f64, String> {
    let at = m.side * DODGE;
    let n = c.seeds.len() as f64;
    let mut outer = shift(c.x, at);
    for (i, (run, x, y)) in c.seeds.iter().enumerate() {
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
    Ok(outer)
}

/// The legend: per method its mean (and its seeds where drawn), then the levels.
fn params_legend(methods: &[MethodMarks], levels: &[Level]) -> Vec<(String, Mark)> {
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
    entries
}
