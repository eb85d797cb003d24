//! A trace waterfall as SVG: one row per span, a bar from its start to its end on a shared
//! time axis, indented under its parent. Drawn from exported spans (the README's picture is
//! made by `examples/tests/tracing.rs` from a real run on Mosquitto).

use std::fmt::Write as _;
use std::time::SystemTime;

/// One span to draw.
#[derive(Debug, Clone)]
pub struct Bar {
    /// What the row says, e.g. `[llm-dispatch] process autopatch/cpg-scan-result`.
    pub label: String,
    /// When the span started.
    pub start: SystemTime,
    /// When it ended.
    pub end: SystemTime,
    /// Nesting depth within its trace (0 for the root).
    pub depth: usize,
    /// Which section (trace) it belongs to; sections are drawn one after the other.
    pub section: usize,
}

const ROW: f64 = 22.0;
const LABEL_WIDTH: f64 = 430.0;
const CHART_WIDTH: f64 = 520.0;
const COLOURS: [&str; 2] = ["#4c78a8", "#f58518"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn millis(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The SVG for `bars` (in the order given) under `title`, with one heading per section.
pub fn svg(title: &str, sections: &[&str], bars: &[Bar]) -> String {
    let Some(origin) = bars.iter().map(|b| b.start).min() else {
        return String::new();
    };
    let last = bars.iter().map(|b| b.end).max().unwrap_or(origin);
    let total = millis(origin, last).max(0.001);
    let scale = CHART_WIDTH / total;
    let rows = bars.len() + sections.len();
    let height = 60.0 + rows as f64 * ROW + 30.0;
    let width = LABEL_WIDTH + CHART_WIDTH + 90.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="#ffffff"/><text x="10" y="22" font-size="15" font-weight="bold">{}</text>"##,
        escape(title)
    );
    let mut y = 44.0;
    let mut section = usize::MAX;
    for bar in bars {
        if bar.section != section {
            section = bar.section;
            y += ROW;
            let heading = sections.get(section).copied().unwrap_or("");
            let _ = writeln!(
                out,
                r##"<text x="10" y="{y}" font-weight="bold" fill="#333333">{}</text>"##,
                escape(heading)
            );
        }
        y += ROW;
        let x = LABEL_WIDTH + millis(origin, bar.start) * scale;
        let w = (millis(bar.start, bar.end) * scale).max(1.5);
        let colour = COLOURS[bar.section % COLOURS.len()];
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}">{}</text><rect x="{x:.1}" y="{}" width="{w:.1}" height="14" rx="2" fill="{colour}"/><text x="{:.1}" y="{}" fill="#555555">{:.1} ms</text>"##,
            16.0 + bar.depth as f64 * 14.0,
            y,
            escape(&bar.label),
            y - 11.0,
            x + w + 4.0,
            y,
            millis(bar.start, bar.end)
        );
    }
    let axis = y + ROW;
    let _ = writeln!(
        out,
        r##"<line x1="{LABEL_WIDTH}" y1="{axis}" x2="{}" y2="{axis}" stroke="#999999"/><text x="{LABEL_WIDTH}" y="{}" fill="#555555">0 ms</text><text x="{}" y="{}" fill="#555555" text-anchor="end">{total:.1} ms</text>"##,
        LABEL_WIDTH + CHART_WIDTH,
        axis + 15.0,
        LABEL_WIDTH + CHART_WIDTH,
        axis + 15.0
    );
    out.push_str("</svg>\n");
    out
}
