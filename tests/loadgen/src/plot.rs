//! The latency-over-time plot of a run (the burst run's picture): offered and shed operations
//! per second on top, p50 / p99 latency (all, and admitted only) below. SVG through `plotters`
//! without its font stack, so it builds on a machine without fontconfig. Also the report's
//! picture of every path: throughput and p99 per target, the code before next to after when a
//! `before-` run was measured in the same session.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use crate::report::RunReport;

/// Writes `report`'s timeline as an SVG at `path`.
pub fn latency_svg(report: &RunReport, path: &Path) -> anyhow::Result<()> {
    let seconds = report.timeline.len().max(1) as u32;
    let max_ops = report
        .timeline
        .iter()
        .map(|s| s.ops_started)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_ms = report.timeline.iter().map(|s| s.p99_ms).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let (top, bottom) = root.split_vertically(250);
    let title = format!(
        "{}: {} loop, {:.0} s, {} (5xx {}, 503/429 {})",
        report.workload,
        report.mode,
        report.duration_s,
        report.target,
        report.errors.server_5xx,
        report.errors.shed_503 + report.errors.rate_limited_429
    );
    let mut rate = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0u32..seconds, 0f64..max_ops * 1.1)
        .map_err(draw)?;
    rate.configure_mesh()
        .y_desc("operations / s")
        .draw()
        .map_err(draw)?;
    rate.draw_series(LineSeries::new(
        report
            .timeline
            .iter()
            .map(|s| (s.t as u32, s.ops_started as f64)),
        &BLUE,
    ))
    .map_err(draw)?
    .label("offered")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    rate.draw_series(LineSeries::new(
        report.timeline.iter().map(|s| (s.t as u32, s.shed as f64)),
        &RED,
    ))
    .map_err(draw)?
    .label("shed (503/429 answers)")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    rate.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(draw)?;

    let mut latency = ChartBuilder::on(&bottom)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0u32..seconds, 0f64..max_ms * 1.1)
        .map_err(draw)?;
    latency
        .configure_mesh()
        .x_desc("seconds (by intended send time)")
        .y_desc("latency, ms")
        .draw()
        .map_err(draw)?;
    let series: [(&str, RGBColor, Pick); 3] = [
        ("p50 (all)", GREEN, |s| s.p50_ms),
        ("p99 (all)", MAGENTA, |s| s.p99_ms),
        ("p99 (admitted)", BLACK, |s| s.admitted_p99_ms),
    ];
    for (label, color, value) in series {
        latency
            .draw_series(LineSeries::new(
                report.timeline.iter().map(|s| (s.t as u32, value(s))),
                &color,
            ))
            .map_err(draw)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    latency
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    std::fs::metadata(path).with_context(|| format!("plot not written at {}", path.display()))?;
    Ok(())
}

/// Writes one bar pair per path (after, and before when measured): throughput on top, p99
/// below, both on log scales since the paths differ by two orders of magnitude.
pub fn paths_svg(targets: &[&crate::summary::Target], path: &Path) -> anyhow::Result<()> {
    let n = targets.len().max(1) as f64;
    let root = SVGBackend::new(path, (1200, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let (top, bottom) = root.split_vertically(380);
    type Figure = fn(&crate::summary::Target) -> Option<f64>;
    let panels: [(_, &str, Figure); 2] = [
        (top, "throughput per second (log)", |t| t.throughput),
        (bottom, "p99 latency, ms (log)", |t| t.p99_ms),
    ];
    let before_color = RGBColor(170, 170, 170);
    for (area, desc, figure) in panels {
        let values: Vec<f64> = targets
            .iter()
            .flat_map(|t| [figure(t), t.before.as_deref().and_then(figure)])
            .flatten()
            .filter(|v| *v > 0.0)
            .collect();
        let lo = values.iter().copied().fold(f64::MAX, f64::min).min(1.0) / 2.0;
        let hi = values.iter().copied().fold(1.0, f64::max) * 2.0;
        let mut chart = ChartBuilder::on(&area)
            .caption(desc, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(10)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n, (lo..hi).log_scale())
            .map_err(draw)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc(desc)
            .draw()
            .map_err(draw)?;
        for (i, t) in targets.iter().enumerate() {
            let x = i as f64;
            let bars = [
                (figure(t), x + 0.08, BLUE),
                (t.before.as_deref().and_then(figure), x + 0.48, before_color),
            ];
            for (value, from, color) in bars {
                if let Some(v) = value.filter(|v| *v > 0.0) {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(from, lo), (from + 0.38, v)],
                            color.filled(),
                        )))
                        .map_err(draw)?;
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!("{v:.0}"),
                            (from, v * 1.15),
                            ("sans-serif", 11),
                        )))
                        .map_err(draw)?;
                }
            }
            let label: String = t.name.chars().take(22).collect();
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (x + 0.05, hi / 1.4),
                    ("sans-serif", 11),
                )))
                .map_err(draw)?;
        }
    }
    root.draw(&Text::new(
        "blue: this code; grey: the code before (same session), when measured",
        (700, 5),
        ("sans-serif", 12),
    ))
    .map_err(draw)?;
    root.present().map_err(draw)?;
    std::fs::metadata(path).with_context(|| format!("plot not written at {}", path.display()))?;
    Ok(())
}

/// Which figure of a second a line shows.
type Pick = fn(&crate::report::SecondReport) -> f64;

fn draw<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}
