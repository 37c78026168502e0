//! Grouped bars on a log axis (the amplification's projections per module type).

use super::{
    centre_label, draw_legend, err, font, log_range, num, split_legend, ChartResult, Hover, Mark,
    LEGEND_W, PALETTE,
};
use plotters::prelude::*;

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
