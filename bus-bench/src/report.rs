//! Printing results: a human table with ratios, JSON lines, and the SVG chart.

use std::path::Path;

use plotters::prelude::*;

use crate::measure::BenchResult;

/// The results as a table, then the ratios of bus to the other clients.
pub fn table(results: &[BenchResult]) -> String {
    let mut text = format!(
        "{:<8} {:<7} {:<34} {:>9} {:>7} {:>9} {:>12} {:>12} {:>17} {:>9} {:>9} {:>9} {:>6} {:>6}\n",
        "backend",
        "client",
        "variant",
        "messages",
        "payload",
        "in flight",
        "publish/s",
        "e2e/s",
        "e2e min-max",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "lost",
        "dups"
    );
    for r in results {
        let spread = match (r.e2e_min_msgs_per_s, r.e2e_max_msgs_per_s) {
            (Some(low), Some(high)) => format!("{low:.0}-{high:.0}"),
            _ => "-".to_string(),
        };
        text.push_str(&format!(
            "{:<8} {:<7} {:<34} {:>9} {:>7} {:>9} {:>12.0} {:>12.0} {:>17} {:>9} {:>9} {:>9} {:>6} {:>6}\n",
            r.backend,
            r.client,
            r.variant,
            r.messages,
            r.payload_bytes,
            r.in_flight,
            r.publish_msgs_per_s,
            r.e2e_msgs_per_s,
            spread,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.lost,
            r.duplicates
        ));
    }
    let is_bus = |r: &&BenchResult| r.client.starts_with("bus");
    for bus in results.iter().filter(is_bus) {
        // At the same window: a client's rate depends on how much it keeps in flight.
        for other in results.iter().filter(|r| {
            !is_bus(r)
                && r.backend == bus.backend
                && (r.in_flight == bus.in_flight || r.in_flight == 0)
        }) {
            // A publish-only run (`--publish-only`) has no end-to-end rate.
            let end_to_end = match bus.e2e_msgs_per_s {
                0.0 => String::new(),
                rate => format!(
                    ", end-to-end {:.2}x",
                    rate / other.e2e_msgs_per_s.max(f64::MIN_POSITIVE)
                ),
            };
            text.push_str(&format!(
                "{} ({}) / {} ({}) at {} in flight, ratio of the medians: publish {:.2}x{end_to_end}\n",
                bus.client,
                bus.variant,
                other.client,
                other.variant,
                bus.in_flight,
                bus.publish_msgs_per_s / other.publish_msgs_per_s.max(f64::MIN_POSITIVE),
            ));
        }
    }
    text.push_str(&best_windows(results));
    text
}

/// With several windows measured: each client's best median over the windows, and bus's best
/// over each other client's best.
fn best_windows(results: &[BenchResult]) -> String {
    let mut windows: Vec<usize> = results.iter().map(|r| r.in_flight).collect();
    windows.sort_unstable();
    windows.dedup();
    if windows.len() < 2 {
        return String::new();
    }
    // A client is its name and variant; the best is its fastest median over the windows.
    let mut best: Vec<&BenchResult> = Vec::new();
    for result in results {
        match best
            .iter_mut()
            .find(|b| b.client == result.client && b.variant == result.variant)
        {
            Some(b) if b.e2e_msgs_per_s < result.e2e_msgs_per_s => *b = result,
            Some(_) => {}
            None => best.push(result),
        }
    }
    let mut text =
        String::from("best window of each client (the fastest median over the windows):\n");
    for b in &best {
        text.push_str(&format!(
            "  {} ({}): {:.0} msg/s end to end at {} in flight\n",
            b.client, b.variant, b.e2e_msgs_per_s, b.in_flight
        ));
    }
    let is_bus = |r: &&&BenchResult| r.client.starts_with("bus");
    for bus in best.iter().filter(is_bus) {
        for other in best.iter().filter(|r| !is_bus(r)) {
            text.push_str(&format!(
                "{} ({}) at its best / {} ({}) at its best: end-to-end {:.2}x\n",
                bus.client,
                bus.variant,
                other.client,
                other.variant,
                bus.e2e_msgs_per_s / other.e2e_msgs_per_s.max(f64::MIN_POSITIVE),
            ));
        }
    }
    text
}

/// One JSON object per line.
pub fn json_lines(results: &[BenchResult]) -> String {
    results
        .iter()
        .filter_map(|r| serde_json::to_string(r).ok())
        .map(|line| line + "\n")
        .collect()
}

/// A bar chart of end-to-end throughput by backend and client (log scale), as SVG.
pub fn chart(results: &[BenchResult], path: &Path) -> Result<(), String> {
    let bars: Vec<(String, f64)> = results
        .iter()
        .map(|r| {
            (
                format!("{} {} ({})", r.backend, r.client, r.variant),
                r.e2e_msgs_per_s.max(1.0),
            )
        })
        .collect();
    if bars.is_empty() {
        return Err("no results to chart".into());
    }
    let height = 80 + 34 * bars.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let max = bars.iter().map(|(_, v)| *v).fold(1.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "bus bench: end-to-end msgs/s (log scale, median of runs)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d(
            (1.0..max).log_scale(),
            (0..bars.len() as i32).into_segmented(),
        )
        .map_err(|e| e.to_string())?;
    let labels = bars.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                labels.get(*i as usize).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .x_desc("messages per second")
        .draw()
        .map_err(|e| e.to_string())?;
    let colour = |label: &str| {
        if label.contains(" bus ") {
            RGBColor(31, 119, 180)
        } else if label.contains(" raw ") {
            RGBColor(127, 127, 127)
        } else {
            RGBColor(255, 127, 14)
        }
    };
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (label, value))| {
            Rectangle::new(
                [
                    (1.0, SegmentValue::Exact(i as i32)),
                    (*value, SegmentValue::Exact(i as i32 + 1)),
                ],
                colour(label).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
            Text::new(
                format!("{value:.0}"),
                (*value * 1.05, SegmentValue::CenterOf(i as i32)),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// How throughput and p99 latency grow with the payload: two panels (msgs/s and p99 against
/// payload bytes, all log scales), one line per backend and client, as SVG. Results with the
/// same backend, client and payload are drawn as one point (the first).
pub fn scaling_chart(results: &[BenchResult], path: &Path) -> Result<(), String> {
    let mut lines: Vec<(String, Vec<&BenchResult>)> = Vec::new();
    for result in results {
        let name = format!("{} {}", result.backend, result.client);
        match lines.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points))
                if points
                    .iter()
                    .any(|p| p.payload_bytes == result.payload_bytes) => {}
            Some((_, points)) => points.push(result),
            None => lines.push((name, vec![result])),
        }
    }
    if lines.is_empty() {
        return Err("no results to chart".into());
    }
    for (_, points) in &mut lines {
        points.sort_by_key(|p| p.payload_bytes);
    }
    let payloads = || results.iter().map(|r| r.payload_bytes.max(1) as f64);
    // Ticks at the payloads measured, not at powers of ten.
    let mut sizes: Vec<f64> = payloads().collect();
    sizes.sort_by(f64::total_cmp);
    sizes.dedup();
    let (min_payload, max_payload) = (
        payloads().fold(f64::MAX, f64::min) / 2.0,
        payloads().fold(1.0, f64::max) * 2.0,
    );
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(127, 127, 127),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];
    // Each panel: where, its caption, its y axis, and what it plots of a result.
    type Plotted = fn(&BenchResult) -> f64;
    let panels: [(_, &str, &str, Plotted); 2] = [
        (
            &left,
            "end-to-end msgs/s by payload",
            "messages per second",
            |r| r.e2e_msgs_per_s.max(1.0),
        ),
        (&right, "p99 latency by payload", "p99 latency, ms", |r| {
            (r.p99_us as f64 / 1000.0).max(0.01)
        }),
    ];
    for (area, caption, y_desc, value) in panels {
        let values = || results.iter().map(value);
        let (low, high) = (
            values().fold(f64::MAX, f64::min) / 2.0,
            values().fold(0.0, f64::max) * 2.0,
        );
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (min_payload..max_payload)
                    .log_scale()
                    .with_key_points(sizes.clone()),
                (low..high).log_scale(),
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("payload bytes")
            .y_desc(y_desc)
            .y_label_formatter(&|v| match *v {
                v if v >= 1.0 => format!("{v:.0}"),
                v => format!("{v:.2}"),
            })
            .x_label_formatter(&|bytes| match *bytes as u64 {
                b if b >= 1 << 20 => format!("{} MiB", b >> 20),
                b if b >= 1 << 10 => format!("{} KiB", b >> 10),
                b => format!("{b} B"),
            })
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let colour = palette[i % palette.len()];
            let xy: Vec<(f64, f64)> = points
                .iter()
                .map(|p| (p.payload_bytes.max(1) as f64, value(p)))
                .collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(xy.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
