//! The latency-over-time plot of a run (the burst run's picture): offered and shed operations
//! per second on top, p50 / p99 latency (all, and admitted only) below. SVG through `plotters`
//! without its font stack, so it builds on a machine without fontconfig.

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

/// Which figure of a second a line shows.
type Pick = fn(&crate::report::SecondReport) -> f64;

fn draw<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}
