//! The drill's report: totals per outcome class, latency percentiles of successes, the
//! faults, and a timeline of 100 ms slots; as JSON, an SVG chart and a terminal summary.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::args::Plan;
use crate::faults::FaultEvent;
use crate::load::{Mode, Recorded, SLOT};

/// One timeline slot.
#[derive(Debug, Clone, Serialize)]
pub struct Slot {
    /// Start of the slot, milliseconds since the start.
    pub t_ms: u64,
    /// Successes.
    pub ok: u64,
    /// Failures.
    pub errors: u64,
    /// Median latency of successes (ms).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency of successes (ms).
    pub p99_ms: Option<f64>,
}

/// The drill's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target URL(s), comma-separated.
    pub url: String,
    /// Mode.
    pub mode: Mode,
    /// Workers.
    pub concurrency: usize,
    /// How long it ran (ms).
    pub elapsed_ms: u64,
    /// Requests in all.
    pub requests: u64,
    /// Requests per outcome class.
    pub outcomes: BTreeMap<String, u64>,
    /// Failed requests.
    pub errors: u64,
    /// Latency of successes: p50, p90, p99, max (ms, three significant digits).
    pub latency_ms: BTreeMap<String, f64>,
    /// Faults applied.
    pub faults: Vec<FaultEvent>,
    /// Per-slot counts and latencies.
    pub timeline: Vec<Slot>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The report of a drill that ran `elapsed` under `plan`.
pub(crate) fn build(
    plan: &Plan,
    recorded: &Recorded,
    faults: Vec<FaultEvent>,
    elapsed: Duration,
) -> Report {
    let timeline = recorded
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| Slot {
            t_ms: i as u64 * SLOT.as_millis() as u64,
            ok: s.total() - s.errors(),
            errors: s.errors(),
            p50_ms: s.quantile(0.5).map(ms),
            p99_ms: s.quantile(0.99).map(ms),
        })
        .collect();
    let total = &recorded.total;
    let latency_ms = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)]
        .into_iter()
        .filter_map(|(name, q)| Some((name.to_string(), ms(total.quantile(q)?))))
        .collect();
    Report {
        url: plan.urls.join(", "),
        mode: plan.mode,
        concurrency: plan.concurrency,
        elapsed_ms: elapsed.as_millis() as u64,
        requests: total.total(),
        outcomes: total.counts.iter().map(|(o, n)| (o.name(), *n)).collect(),
        errors: total.errors(),
        latency_ms,
        faults,
        timeline,
    }
}

/// The terminal summary.
pub fn summary(r: &Report) -> String {
    let mut out = format!(
        "{} {:?} x{}: {} requests in {:.1} s ({:.0} req/s), {} failed\n",
        r.url,
        r.mode,
        r.concurrency,
        r.requests,
        r.elapsed_ms as f64 / 1e3,
        r.requests as f64 / (r.elapsed_ms.max(1) as f64 / 1e3),
        r.errors
    );
    out.push_str("  class            requests\n");
    for (class, n) in &r.outcomes {
        out.push_str(&format!("  {class:<16} {n:>8}\n"));
    }
    let lat: Vec<String> = ["p50", "p90", "p99", "max"]
        .iter()
        .filter_map(|k| Some(format!("{k} {:.3} ms", r.latency_ms.get(*k)?)))
        .collect();
    out.push_str(&format!("  latency of successes: {}\n", lat.join(", ")));
    for f in &r.faults {
        out.push_str(&format!(
            "  fault at {} ms: {} ({})\n",
            f.t_ms, f.what, f.result
        ));
    }
    out
}
