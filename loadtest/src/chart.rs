//! An SVG chart of the run: one-way delay (p50, p99) and loss over time, and the
//! connected participants.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::report::TimePoint;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("chart: {e:?}")
}

/// Writes the chart to `path` (SVG).
pub fn write_svg(path: &Path, title: &str, timeline: &[TimePoint]) -> Result<()> {
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let parts = root.split_evenly((3, 1));
    let tmax = timeline.last().map(|p| p.t).unwrap_or(1.0).max(1.0);

    let dmax = timeline
        .iter()
        .map(|p| p.delay_p99_ms)
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&parts[0])
        .caption("one-way delay (ms)", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..tmax, 0f64..dmax)
        .map_err(err)?;
    c.configure_mesh().x_desc("s").draw().map_err(err)?;
    c.draw_series(LineSeries::new(
        timeline.iter().map(|p| (p.t, p.delay_p50_ms)),
        &BLUE,
    ))
    .map_err(err)?
    .label("p50")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    c.draw_series(LineSeries::new(
        timeline.iter().map(|p| (p.t, p.delay_p99_ms)),
        &RED,
    ))
    .map_err(err)?
    .label("p99")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(err)?;

    let lmax = timeline
        .iter()
        .map(|p| p.loss_ratio * 100.0)
        .fold(0.5f64, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&parts[1])
        .caption("loss (%)", ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..tmax, 0f64..lmax)
        .map_err(err)?;
    c.configure_mesh().x_desc("s").draw().map_err(err)?;
    c.draw_series(LineSeries::new(
        timeline.iter().map(|p| (p.t, p.loss_ratio * 100.0)),
        &MAGENTA,
    ))
    .map_err(err)?;

    let cmax = timeline
        .iter()
        .map(|p| p.connected as f64)
        .fold(1.0f64, f64::max)
        * 1.1;
    let bmax = timeline
        .iter()
        .map(|p| p.bitrate_in_kbps / 1000.0)
        .fold(0.1f64, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&parts[2])
        .caption(
            "connected participants (green), received Mbit/s (black)",
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(56)
        .right_y_label_area_size(56)
        .build_cartesian_2d(0f64..tmax, 0f64..cmax)
        .map_err(err)?
        .set_secondary_coord(0f64..tmax, 0f64..bmax);
    c.configure_mesh().x_desc("s").draw().map_err(err)?;
    c.configure_secondary_axes().draw().map_err(err)?;
    c.draw_series(LineSeries::new(
        timeline.iter().map(|p| (p.t, p.connected as f64)),
        &GREEN,
    ))
    .map_err(err)?;
    c.draw_secondary_series(LineSeries::new(
        timeline.iter().map(|p| (p.t, p.bitrate_in_kbps / 1000.0)),
        &BLACK,
    ))
    .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
