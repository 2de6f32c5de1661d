//! The drill's report: totals per outcome class, the load offered, sent and achieved,
//! latency percentiles, the faults, a timeline of 100 ms slots, and the verdict; as JSON,
//! an SVG chart and a terminal summary.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::faults::FaultEvent;
use crate::open::OpenStats;
use crate::outcome::quantile;
use crate::plan::Mode;
use crate::plan::Plan;
use crate::record::{Recorded, SLOT};

/// The verdict of a run in which every offered request succeeded.
pub const YES: &str = "yes";
/// The verdict of a run in which a request failed.
pub const NO: &str = "no";
/// The verdict of a run that did not offer the load asked for (the client saturated, or
/// requests were never sent): it can neither pass nor fail the server.
pub const NOT_ESTABLISHED: &str = "not established";

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
    /// Median latency of every request of the slot, whatever its outcome (ms).
    pub p50_any_ms: Option<f64>,
}

/// The drill's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target URL(s), comma-separated.
    pub url: String,
    /// Mode.
    pub mode: Mode,
    /// Workers (closed loop) or connections opened at the start (open loop).
    pub concurrency: usize,
    /// `open` (`--rate`: requests sent on schedule) or `closed` (each worker's next request
    /// when its last one is answered).
    pub load: String,
    /// How long it ran (ms), until the last request ended.
    pub elapsed_ms: u64,
    /// Requests that ended with an outcome (sent, or failed to connect).
    pub requests: u64,
    /// Requests per outcome class.
    pub outcomes: BTreeMap<String, u64>,
    /// Failed requests.
    pub errors: u64,
    /// Open loop: requests per second asked for.
    pub offered_rate: Option<f64>,
    /// Requests scheduled (open loop) or started (closed loop).
    pub offered: u64,
    /// Scheduled requests never handed to a connection before the end.
    pub unsent: u64,
    /// Requests that left the queue (were sent, or failed to connect) per second of the
    /// load's window: the schedule's span in the open loop (offered / rate), the run up to
    /// its duration otherwise.
    pub sent_rate: f64,
    /// Responses of any status that ended within the window, per second of it.
    pub achieved_rate: f64,
    /// 2xx responses that ended within the window, per second of it.
    pub goodput: f64,
    /// Open loop: from a request's scheduled time to its hand-over to a ready connection:
    /// p50, p99, max (ms).
    pub send_lag_ms: BTreeMap<String, f64>,
    /// The most connections open at once.
    pub peak_connections: usize,
    /// Some request waited because every connection was busy and no more were allowed.
    pub client_saturated: bool,
    /// How long requests waited so (ms).
    pub saturated_ms: u64,
    /// `yes`: every offered request succeeded; `no`: some failed; `not established`: the
    /// load asked for was not offered (client saturated, or requests never sent).
    pub verdict: String,
    /// Latency of successes, from the scheduled time in the open loop: p50, p90, p99,
    /// p99.9, max (ms, three significant digits).
    pub latency_ms: BTreeMap<String, f64>,
    /// Faults applied.
    pub faults: Vec<FaultEvent>,
    /// Per-slot counts and latencies.
    pub timeline: Vec<Slot>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The report of a drill that ran `elapsed` under `plan` (`open`: what the open loop
/// adds; `None` for a closed loop).
pub(crate) fn build(
    plan: &Plan,
    recorded: &Recorded,
    open: Option<OpenStats>,
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
            p50_any_ms: s.quantile_any(0.5).map(ms),
        })
        .collect();
    let total = &recorded.total;
    let latency_ms = [
        ("p50", 0.5),
        ("p90", 0.9),
        ("p99", 0.99),
        ("p99.9", 0.999),
        ("max", 1.0),
    ]
    .into_iter()
    .filter_map(|(name, q)| Some((name.to_string(), ms(total.quantile(q)?))))
    .collect();
    let send_lag_ms = [("p50", 0.5), ("p99", 0.99), ("max", 1.0)]
        .into_iter()
        .filter_map(|(name, q)| Some((name.to_string(), ms(quantile(&recorded.send_lag, q)?))))
        .collect();
    // Rates are over the load's window: the schedule's span in the open loop (its requests
    // at k/R), the run up to its duration in the closed loop. Answers count when they ended
    // within it: a queue the server works off after the load stops is not throughput.
    let window = match (open.as_ref(), plan.rate) {
        (Some(o), Some(rate)) if o.offered > 0 => {
            Duration::from_secs_f64(o.offered as f64 / rate as f64)
        }
        _ => elapsed.min(plan.duration),
    }
    .max(Duration::from_millis(1));
    let secs = window.as_secs_f64();
    let (answered_in_window, ok_in_window) = recorded.answered_within(window);
    let requests = total.total();
    let errors = total.errors();
    let open = open.as_ref();
    let unsent = open.map_or(0, |o| o.unsent);
    let saturated = open.map_or(Duration::ZERO, |o| o.saturated);
    let client_saturated = !saturated.is_zero();
    let verdict = if client_saturated || unsent > 0 {
        NOT_ESTABLISHED
    } else if errors > 0 {
        NO
    } else {
        YES
    };
    Report {
        url: plan.urls.join(", "),
        mode: plan.mode,
        concurrency: plan.concurrency,
        load: if open.is_some() { "open" } else { "closed" }.into(),
        elapsed_ms: elapsed.as_millis() as u64,
        requests,
        outcomes: total.counts.iter().map(|(o, n)| (o.name(), *n)).collect(),
        errors,
        offered_rate: open.and(plan.rate).map(|r| r as f64),
        offered: open.map_or(requests, |o| o.offered),
        unsent,
        sent_rate: requests as f64 / secs,
        achieved_rate: answered_in_window as f64 / secs,
        goodput: ok_in_window as f64 / secs,
        send_lag_ms,
        peak_connections: open.map_or(plan.concurrency, |o| o.peak_connections),
        client_saturated,
        saturated_ms: saturated.as_millis() as u64,
        verdict: verdict.into(),
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
    if let Some(rate) = r.offered_rate {
        let lag: Vec<String> = ["p50", "p99", "max"]
            .iter()
            .filter_map(|k| Some(format!("{k} {:.3} ms", r.send_lag_ms.get(*k)?)))
            .collect();
        out.push_str(&format!(
            "  open loop: offered {rate:.0}/s ({} scheduled, {} unsent), sent {:.0}/s, achieved {:.0}/s, goodput {:.0}/s, peak {} connections\n",
            r.offered, r.unsent, r.sent_rate, r.achieved_rate, r.goodput, r.peak_connections
        ));
        out.push_str(&format!("  send lag: {}\n", lag.join(", ")));
        if r.client_saturated {
            out.push_str(&format!(
                "  client_saturated: requests waited for a connection for {} ms (raise --max-connections)\n",
                r.saturated_ms
            ));
        }
    }
    out.push_str("  class            requests\n");
    for (class, n) in &r.outcomes {
        out.push_str(&format!("  {class:<16} {n:>8}\n"));
    }
    let lat: Vec<String> = ["p50", "p90", "p99", "p99.9", "max"]
        .iter()
        .filter_map(|k| Some(format!("{k} {:.3} ms", r.latency_ms.get(*k)?)))
        .collect();
    let from = if r.offered_rate.is_some() {
        " (from the scheduled time)"
    } else {
        ""
    };
    let lat = if lat.is_empty() {
        "none succeeded".to_string()
    } else {
        lat.join(", ")
    };
    out.push_str(&format!("  latency of successes{from}: {lat}\n"));
    for f in &r.faults {
        out.push_str(&format!(
            "  fault at {} ms: {} ({})\n",
            f.t_ms, f.what, f.result
        ));
    }
    out.push_str(&format!(
        "  every offered request succeeded: {}\n",
        r.verdict
    ));
    out
}
