//! The drill's chart: successes and failures per second over time, latency percentiles
//! below, fault moments marked. Plain SVG, no dependencies.

use std::fmt::Write as _;

use crate::{Report, SLOT};

const W: f64 = 960.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP_Y: f64 = 60.0;
const TOP_H: f64 = 200.0;
const BOTTOM_Y: f64 = 300.0;
const BOTTOM_H: f64 = 140.0;
const H: f64 = 490.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis maximum at or above `v`.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// Render `r` as an SVG document.
pub fn chart(r: &Report) -> String {
    let c = Chart::of(r);
    let mut svg = String::new();
    c.header(&mut svg);
    c.axes(&mut svg);
    c.throughput(&mut svg);
    c.latency(&mut svg);
    c.faults(&mut svg);
    c.time_axis(&mut svg);
    svg.push_str("</svg>\n");
    svg
}

/// The report and the chart's scales.
struct Chart<'a> {
    r: &'a Report,
    /// Slots per second.
    per_sec: f64,
    /// The timeline's length (ms).
    span_ms: f64,
    bar_w: f64,
    max_rate: f64,
    max_lat: f64,
}

impl<'a> Chart<'a> {
    fn of(r: &'a Report) -> Self {
        let per_sec = 1000.0 / SLOT.as_millis() as f64;
        let slots = r.timeline.len().max(1) as f64;
        let max_rate = nice(
            r.timeline
                .iter()
                .map(|s| (s.ok + s.errors) as f64 * per_sec)
                .fold(0.0, f64::max),
        );
        let max_lat = nice(
            r.timeline
                .iter()
                .filter_map(|s| s.p99_ms)
                .fold(0.0, f64::max),
        );
        Self {
            r,
            per_sec,
            span_ms: slots * SLOT.as_millis() as f64,
            bar_w: ((W - LEFT - RIGHT) / slots).max(1.0),
            max_rate,
            max_lat,
        }
    }

    /// The x of `t_ms` since the start.
    fn x(&self, t_ms: f64) -> f64 {
        LEFT + (W - LEFT - RIGHT) * (t_ms / self.span_ms)
    }

    /// The document's start, the title (with the verdict) and the classes line.
    fn header(&self, svg: &mut String) {
        let r = self.r;
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="system-ui, sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
        );
        let (verdict, color) = if r.errors == 0 {
            ("0 failed".to_string(), "#1a7f37")
        } else {
            (format!("{} failed", r.errors), "#cf222e")
        };
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="24" font-size="16" font-weight="600">{} — {} requests, <tspan fill="{color}">{verdict}</tspan></text>"#,
            esc(&r.url),
            r.requests
        );
        let classes: Vec<String> = r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="42" fill="#57606a">{:?}, {} workers · {}</text>"##,
            r.mode,
            r.concurrency,
            esc(&classes.join(" · "))
        );
    }

    /// Grid lines and labels of both plots.
    fn axes(&self, svg: &mut String) {
        for (y0, h, max, unit) in [
            (TOP_Y, TOP_H, self.max_rate, "req/s"),
            (BOTTOM_Y, BOTTOM_H, self.max_lat, "ms"),
        ] {
            for i in 0..=4 {
                let v = max * f64::from(i) / 4.0;
                let y = y0 + h - h * f64::from(i) / 4.0;
                let _ = writeln!(
                    svg,
                    r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#d0d7de" stroke-width="1"/>"##,
                    W - RIGHT
                );
                let _ = writeln!(
                    svg,
                    r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#57606a">{}</text>"##,
                    LEFT - 6.0,
                    y + 4.0,
                    fmt_num(v)
                );
            }
            let _ = writeln!(
                svg,
                r##"<text x="12" y="{:.1}" fill="#57606a" transform="rotate(-90 12 {:.1})" text-anchor="middle">{unit}</text>"##,
                y0 + h / 2.0,
                y0 + h / 2.0
            );
        }
    }

    /// Throughput bars: successes green, failures red on top.
    fn throughput(&self, svg: &mut String) {
        let bar_w = self.bar_w;
        for s in &self.r.timeline {
            let bx = self.x(s.t_ms as f64);
            let ok_h = TOP_H * (s.ok as f64 * self.per_sec) / self.max_rate;
            let err_h = TOP_H * (s.errors as f64 * self.per_sec) / self.max_rate;
            let base = TOP_Y + TOP_H;
            if ok_h > 0.0 {
                let _ = writeln!(
                    svg,
                    r##"<rect x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{ok_h:.1}" fill="#2da44e"/>"##,
                    base - ok_h
                );
            }
            if err_h > 0.0 {
                let _ = writeln!(
                    svg,
                    r##"<rect x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{err_h:.1}" fill="#cf222e"/>"##,
                    base - ok_h - err_h
                );
            }
        }
    }

    /// p50 and p99 lines of the successes' latency.
    fn latency(&self, svg: &mut String) {
        for (pick, color, label) in [(0usize, "#0969da", "p50"), (1, "#bf8700", "p99")] {
            let pts: Vec<String> = self
                .r
                .timeline
                .iter()
                .filter_map(|s| {
                    let v = if pick == 0 { s.p50_ms } else { s.p99_ms }?;
                    Some(format!(
                        "{:.1},{:.1}",
                        self.x(s.t_ms as f64) + self.bar_w / 2.0,
                        BOTTOM_Y + BOTTOM_H - BOTTOM_H * (v / self.max_lat).min(1.0)
                    ))
                })
                .collect();
            if !pts.is_empty() {
                let _ = writeln!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"#,
                    pts.join(" ")
                );
            }
            let lx = W - RIGHT - 90.0 + 45.0 * pick as f64;
            let _ = writeln!(
                svg,
                r#"<text x="{lx}" y="{}" fill="{color}" font-weight="600">{label}</text>"#,
                BOTTOM_Y - 8.0
            );
        }
    }

    /// A dashed line and a label at each fault.
    fn faults(&self, svg: &mut String) {
        for f in &self.r.faults {
            let fx = self.x(f.t_ms as f64);
            let _ = writeln!(
                svg,
                r##"<line x1="{fx:.1}" x2="{fx:.1}" y1="{TOP_Y}" y2="{}" stroke="#8250df" stroke-width="1.5" stroke-dasharray="4 3"/>"##,
                BOTTOM_Y + BOTTOM_H
            );
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{}" fill="#8250df" font-size="11">{}</text>"##,
                fx + 3.0,
                TOP_Y + 12.0,
                esc(f.what.split(',').next().unwrap_or(""))
            );
        }
    }

    /// Seconds along the bottom, and the legend.
    fn time_axis(&self, svg: &mut String) {
        let secs = self.span_ms / 1000.0;
        let step = nice(secs / 8.0);
        let mut t = 0.0;
        while t <= secs + 1e-9 {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#57606a">{}s</text>"##,
                self.x(t * 1000.0),
                BOTTOM_Y + BOTTOM_H + 18.0,
                fmt_num(t)
            );
            t += step;
        }
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="{}" fill="#57606a">successes (green) and failures (red) per second · latency of successes · dashed: faults</text>"##,
            H - 8.0
        );
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        let k = v / 1000.0;
        if k.fract() == 0.0 {
            format!("{k:.0}k")
        } else {
            format!("{k:.1}k")
        }
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nice_rounds_up_to_a_readable_bound() {
        assert_eq!(super::nice(0.0), 1.0);
        assert_eq!(super::nice(7.0), 10.0);
        assert_eq!(super::nice(1800.0), 2000.0);
        assert_eq!(super::nice(240.0), 250.0);
    }
}
