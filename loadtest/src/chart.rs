//! An SVG chart of the run: one-way delay (p50, p99) and loss over time, the
//! connected participants, and the server: its memory (RSS) and the participants and
//! rooms it holds (with churn and in a soak, what to watch).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::report::TimePoint;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("chart: {e:?}")
}

/// Room right of each plot for the half of the last time tick's label that lies past
/// the axis's end.
const RIGHT_MARGIN: u32 = 24;

/// Counts are whole: ticks between them are not labelled.
fn count_label(v: &f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// The loss axis starts a little below 0 so that a run without loss draws its line
/// above the axis, not under it.
fn loss_range(max: f64) -> std::ops::Range<f64> {
    -max * 0.04..max
}

/// Writes the chart to `path` (SVG).
pub fn write_svg(path: &Path, title: &str, timeline: &[TimePoint]) -> Result<()> {
    let root = SVGBackend::new(path, (960, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let parts = root.split_evenly((4, 1));
    let tmax = timeline.last().map(|p| p.t).unwrap_or(1.0).max(1.0);

    let dmax = timeline
        .iter()
        .map(|p| p.delay_p99_ms)
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&parts[0])
        .caption("one-way delay (ms)", ("sans-serif", 16))
        .margin(8)
        .margin_right(RIGHT_MARGIN)
        .x_label_area_size(24)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..tmax, 0f64..dmax)
        .map_err(err)?;
    c.configure_mesh().x_desc("s")
        .x_label_formatter(&|v| format!("{v:.0}")).y_desc("ms").draw().map_err(err)?;
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
        .margin_right(RIGHT_MARGIN)
        .x_label_area_size(24)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..tmax, loss_range(lmax))
        .map_err(err)?;
    c.configure_mesh()
        .x_desc("s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("%")
        .y_label_formatter(&|v| if *v < 0.0 { String::new() } else { format!("{v:.2}") })
        .draw()
        .map_err(err)?;
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
    c.configure_mesh()
        .x_desc("s")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("participants")
        .y_label_formatter(&count_label)
        .draw()
        .map_err(err)?;
    c.configure_secondary_axes().y_desc("Mbit/s").draw().map_err(err)?;
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

    let rss: Vec<(f64, f64)> = timeline
        .iter()
        .filter_map(|p| p.server_rss_mb.map(|r| (p.t, r)))
        .collect();
    let held: Vec<(f64, f64, f64)> = timeline
        .iter()
        .filter_map(|p| Some((p.t, p.server_participants? as f64, p.server_rooms? as f64)))
        .collect();
    let rmax = rss.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
    let pmax = held
        .iter()
        .map(|p| p.1.max(p.2))
        .fold(1.0f64, f64::max)
        .max(timeline.iter().map(|p| p.live as f64).fold(1.0, f64::max))
        * 1.1;
    let mut c = ChartBuilder::on(&parts[3])
        .caption(
            "server: RSS MiB (red), participants (blue), rooms (green); simulated participants (gray)",
            ("sans-serif", 16),
        )
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(56)
        .right_y_label_area_size(56)
        .build_cartesian_2d(0f64..tmax, 0f64..rmax)
        .map_err(err)?
        .set_secondary_coord(0f64..tmax, 0f64..pmax);
    c.configure_mesh().x_desc("s")
        .x_label_formatter(&|v| format!("{v:.0}")).y_desc("RSS MiB").draw().map_err(err)?;
    c.configure_secondary_axes()
        .y_desc("participants, rooms")
        .y_label_formatter(&count_label)
        .draw()
        .map_err(err)?;
    c.draw_series(LineSeries::new(rss.iter().copied(), &RED))
        .map_err(err)?;
    c.draw_secondary_series(LineSeries::new(
        timeline.iter().map(|p| (p.t, p.live as f64)),
        &RGBColor(160, 160, 160),
    ))
    .map_err(err)?;
    c.draw_secondary_series(LineSeries::new(held.iter().map(|p| (p.0, p.1)), &BLUE))
        .map_err(err)?;
    c.draw_secondary_series(LineSeries::new(held.iter().map(|p| (p.0, p.2)), &GREEN))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64) -> TimePoint {
        TimePoint {
            t,
            connected: 8,
            bitrate_out_kbps: 500.0,
            bitrate_in_kbps: 1500.0,
            packets_in: 1000,
            loss_ratio: 0.0,
            delay_p50_ms: 1.0,
            delay_p99_ms: 5.0,
            server_cpu_percent: None,
            media_worker_cpu_percent: None,
            server_rss_mb: Some(40.0 + t / 100.0),
            live: 8,
            joins: 0,
            ends: 0,
            server_participants: Some(8),
            server_rooms: Some(3),
            simulator_lag_ms: 0.0,
        }
    }

    /// Counts are labelled as whole numbers, every panel's axes say what they measure,
    /// and a loss of 0 is drawn above the x axis.
    #[test]
    fn labels_are_whole_counts_with_titles_and_zero_loss_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let timeline: Vec<TimePoint> = (0..=600).map(|t| point(t as f64)).collect();
        write_svg(&path, "test", &timeline).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>').map(|(_, rest)| rest.split('<').next().unwrap_or("").trim()))
            .collect();
        for want in ["ms", "%", "participants", "Mbit/s", "RSS MiB", "participants, rooms"] {
            assert!(texts.contains(&want), "no axis title {want:?} in {texts:?}");
        }
        assert!(!texts.contains(&"8.0"), "a count labelled as a fraction: {texts:?}");
        assert!(texts.contains(&"8"), "the participant count 8 is labelled: {texts:?}");
        assert!(texts.contains(&"600"), "the last time tick is drawn: {texts:?}");
        let r = loss_range(0.5);
        assert!(r.start < 0.0 && r.end == 0.5);
    }
}
