//! SVG charts of one run (plotters): throughput, HTTP latency and lag over time.

use super::RunResult;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
) -> Result<(), String> {
    let x_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Per-second rates from cumulative samples.
fn rates(points: &[(f64, u64)]) -> Vec<(f64, f64)> {
    points
        .windows(2)
        .map(|w| {
            let dt = (w[1].0 - w[0].0).max(1e-3);
            (w[1].0, w[1].1.saturating_sub(w[0].1) as f64 / dt)
        })
        .collect()
}

/// Writes `throughput.svg`, `latency.svg` and `lag.svg`.
pub fn write_all(dir: &Path, run: &RunResult) -> Result<Vec<PathBuf>, String> {
    let s = &run.series;
    let col = |f: fn(&super::Point) -> u64| -> Vec<(f64, u64)> {
        s.iter().map(|p| (p.t_s, f(p))).collect()
    };
    let throughput = dir.join("throughput.svg");
    line_chart(
        &throughput,
        &format!("{}: throughput", run.target),
        "per second",
        &[
            ("accepted/s", BLUE, rates(&col(|p| p.accepted))),
            ("stored/s", GREEN, rates(&col(|p| p.stored))),
            ("SMS enqueued/s", MAGENTA, rates(&col(|p| p.enqueued))),
            ("SMS delivered/s", RED, rates(&col(|p| p.delivered))),
        ],
    )?;
    let latency = dir.join("latency.svg");
    line_chart(
        &latency,
        &format!(
            "{}: HTTP latency (from each request's due time)",
            run.target
        ),
        "ms",
        &[
            (
                "p50",
                BLUE,
                run.latency_series.iter().map(|p| (p.0, p.1)).collect(),
            ),
            (
                "p99",
                RED,
                run.latency_series.iter().map(|p| (p.0, p.2)).collect(),
            ),
        ],
    )?;
    let lag = dir.join("lag.svg");
    line_chart(
        &lag,
        &format!("{}: lag", run.target),
        "submissions / messages",
        &[
            (
                "accepted, not stored",
                BLUE,
                s.iter()
                    .map(|p| (p.t_s, p.accepted.saturating_sub(p.stored) as f64))
                    .collect(),
            ),
            (
                "SMS queued in the ledger",
                RED,
                s.iter().map(|p| (p.t_s, p.queued as f64)).collect(),
            ),
        ],
    )?;
    Ok(vec![throughput, latency, lag])
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_are_differences_over_time() {
        let r = super::rates(&[(0.0, 0), (1.0, 100), (3.0, 500)]);
        assert_eq!(r, vec![(1.0, 100.0), (3.0, 200.0)]);
    }
}
