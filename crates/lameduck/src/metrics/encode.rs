//! The exposition: the registry encoded by `prometheus-client` at each scrape, in the
//! OpenMetrics text format.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::*;

fn encode_tls(enc: &mut DescriptorEncoder<'_>, t: &TlsStats) -> std::fmt::Result {
    counter(
        enc,
        "lameduck_tls_handshakes",
        "TLS handshakes completed",
        &t.handshakes,
    )?;
    let (in_progress, waiting) = t.places();
    gauge(
        enc,
        "lameduck_tls_handshakes_in_progress",
        "TLS handshakes holding a place now (at most max_handshakes)",
        in_progress,
    )?;
    gauge(
        enc,
        "lameduck_tls_handshakes_waiting",
        "Connections waiting for a TLS handshake place now",
        waiting,
    )?;
    let mut m = enc.encode_descriptor(
        "lameduck_tls_handshake_failures",
        "TLS handshakes that failed, by reason",
        None,
        MetricType::Counter,
    )?;
    for (reason, n) in t.failures() {
        ConstCounter::new(n).encode(m.encode_family(&[("reason", reason)])?)?;
    }
    let mut m = enc.encode_descriptor(
        "lameduck_tls_certificate_reloads",
        "New certificate pairs: applied, or refused (the old pair stays)",
        None,
        MetricType::Counter,
    )?;
    let (ok, refused) = t.reloads();
    ConstCounter::new(ok).encode(m.encode_family(&[("outcome", "applied")])?)?;
    ConstCounter::new(refused).encode(m.encode_family(&[("outcome", "refused")])?)?;
    if let Some(when) = t.not_after() {
        gauge(
            enc,
            "lameduck_tls_certificate_not_after_seconds",
            "When the certificate new connections get expires (Unix time): alert well before",
            when,
        )?;
    }
    Ok(())
}

/// The registry as `prometheus-client` collects it at each scrape. Recording stays
/// lock-free atomics (a read lock to find a route's series); only the exposition goes
/// through the crate.
#[derive(Debug)]
pub(super) struct Snapshot(pub(super) Metrics);

impl prometheus_client::collector::Collector for Snapshot {
    // Long on purpose: one metric family after another, in the order `/metrics` shows
    // them; each is a call or two, and splitting the list would only hide the order.
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let r = &self.0.inner;
        encode_requests(&mut enc, &read(&r.series))?;
        let in_flight = r.in_flight.get().map_or(0, InFlight::len);
        gauge(
            &mut enc,
            "lameduck_http_requests_in_flight",
            "Requests being served",
            in_flight as i64,
        )?;
        gauge(
            &mut enc,
            "lameduck_http_connections_open",
            "Open client connections",
            r.connections_open.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "lameduck_http_connections",
            "Connections accepted",
            &r.connections_total,
        )?;
        counter(
            &mut enc,
            "lameduck_http_requests_rejected",
            "Requests refused by the drain policy",
            &r.rejected,
        )?;
        counter(
            &mut enc,
            "lameduck_http_requests_shed",
            "Requests answered 503 overloaded because the in-flight limit was reached",
            &r.shed,
        )?;
        counter(
            &mut enc,
            "lameduck_http_requests_abandoned",
            "Requests still running at the shutdown deadline",
            &r.abandoned,
        )?;
        if let Some(p) = r.state_file.get().and_then(|p| read_previous(p)) {
            encode_previous(&mut enc, &p)?;
        }
        gauge(
            &mut enc,
            "lameduck_registry_registered",
            "1 while registered in the service registry",
            r.registered.load(Ordering::Relaxed),
        )?;
        counter(
            &mut enc,
            "lameduck_registry_failures",
            "Failed registrations and lost registrations",
            &r.registry_failures,
        )?;
        if let Some(tasks) = r.tasks.get().filter(|t| !t.0.is_empty()) {
            encode_tasks(&mut enc, tasks)?;
        }
        encode_lifecycle(&mut enc, r)?;
        encode_circuits(&mut enc, &read(&r.circuits))?;
        if let Some(t) = r.tls.get() {
            encode_tls(&mut enc, t)?;
        }
        for m in read(&r.app).iter() {
            let kind = if m.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let e = enc.encode_descriptor(&m.name, &m.help, None, kind)?;
            let v = (m.read)();
            if m.counter {
                ConstCounter::new(v).encode(e)?;
            } else {
                ConstGauge::new(v).encode(e)?;
            }
        }
        Ok(())
    }
}

/// The request counters and latency histograms, by route and status, sorted.
fn encode_requests(enc: &mut DescriptorEncoder<'_>, map: &RouteSeries) -> std::fmt::Result {
    let mut rows: Vec<(&Arc<str>, u16, &Arc<Series>)> = map
        .iter()
        .flat_map(|(route, by)| by.iter().map(move |(s, v)| (route, *s, v)))
        .collect();
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let labels = |route: &Arc<str>, status: u16| {
        [("route", route.to_string()), ("status", status.to_string())]
    };
    let mut m = enc.encode_descriptor(
        "lameduck_http_requests",
        "Requests answered, by route template and status",
        None,
        MetricType::Counter,
    )?;
    for (route, status, s) in &rows {
        ConstCounter::new(s.count.load(Ordering::Relaxed))
            .encode(m.encode_family(&labels(route, *status))?)?;
    }
    let mut m = enc.encode_descriptor(
        "lameduck_http_request_duration_seconds",
        "Time to response headers, by route template and status",
        None,
        MetricType::Histogram,
    )?;
    for (route, status, s) in &rows {
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&s.buckets)
            .map(|(le, n)| (*le, n.load(Ordering::Relaxed)))
            .collect();
        let count = s.count.load(Ordering::Relaxed);
        let below: u64 = buckets.iter().map(|b| b.1).sum();
        buckets.push((f64::INFINITY, count.saturating_sub(below)));
        let sum = s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        m.encode_family(&labels(route, *status))?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// The phase, the last drain's duration and the shutdown hooks' durations.
fn encode_lifecycle(enc: &mut DescriptorEncoder<'_>, r: &Registry) -> std::fmt::Result {
    if let Some(sd) = r.shutdown.get() {
        let now = sd.phase();
        let mut m = enc.encode_descriptor(
            "lameduck_phase",
            "Current lifecycle phase (1 for the current one)",
            None,
            MetricType::Gauge,
        )?;
        for p in Phase::ALL {
            let labels = [("phase", p.to_string())];
            ConstGauge::new(i64::from(p == now)).encode(m.encode_family(&labels)?)?;
        }
    }
    let drain = r.drain_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let m = enc.encode_descriptor(
        "lameduck_drain_duration_seconds",
        "Duration of the last completed drain (0 before any)",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(drain).encode(m)?;
    let hooks = lock(&r.hooks);
    if hooks.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(
        "lameduck_hook_duration_seconds",
        "How long each shutdown hook ran, with how it ended",
        None,
        MetricType::Gauge,
    )?;
    for h in hooks.iter() {
        let labels = [
            ("hook", h.name.as_str()),
            ("phase", h.phase),
            ("status", h.status),
        ];
        ConstGauge::new(h.seconds).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Each circuit breaker's state and refusals.
fn encode_circuits(
    enc: &mut DescriptorEncoder<'_>,
    circuits: &[crate::outbound::breaker::CircuitBreaker],
) -> std::fmt::Result {
    if circuits.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(
        "lameduck_circuit_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open",
        None,
        MetricType::Gauge,
    )?;
    for b in circuits {
        let labels = [("circuit", b.name())];
        ConstGauge::new(b.state().as_metric()).encode(m.encode_family(&labels)?)?;
    }
    let mut m = enc.encode_descriptor(
        "lameduck_circuit_rejected",
        "Calls the circuit breaker refused without making them",
        None,
        MetricType::Counter,
    )?;
    for b in circuits {
        let labels = [("circuit", b.name())];
        ConstCounter::new(b.rejected()).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Whether each background task runs, and how often it was restarted.
fn encode_tasks(
    enc: &mut DescriptorEncoder<'_>,
    tasks: &crate::tasks::TaskStates,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(
        "lameduck_tasks_running",
        "1 while the background task runs (0 while it waits to restart, or has ended)",
        None,
        MetricType::Gauge,
    )?;
    for t in tasks.0.iter() {
        let labels = [("task", &*t.name)];
        ConstGauge::new(i64::from(t.running.load(Ordering::Relaxed)))
            .encode(m.encode_family(&labels)?)?;
    }
    let mut m = enc.encode_descriptor(
        "lameduck_task_restarts",
        "Restarts of the background task after a failure",
        None,
        MetricType::Counter,
    )?;
    for t in tasks.0.iter() {
        let labels = [("task", &*t.name)];
        ConstCounter::new(t.restarts.load(Ordering::Relaxed)).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// How the previous process ended: one series per outcome, 1 for its own.
fn encode_previous(enc: &mut DescriptorEncoder<'_>, p: &PreviousShutdown) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(
        "lameduck_previous_shutdown",
        "How the previous process ended, from the shutdown state file (1 for its outcome)",
        None,
        MetricType::Gauge,
    )?;
    for o in ShutdownOutcome::ALL {
        let labels = [("outcome", o.as_str())];
        ConstGauge::new(i64::from(o == p.outcome)).encode(m.encode_family(&labels)?)?;
    }
    gauge(
        enc,
        "lameduck_previous_shutdown_abandoned_requests",
        "Requests the previous process abandoned",
        i64::try_from(p.abandoned).unwrap_or(i64::MAX),
    )?;
    gauge(
        enc,
        "lameduck_previous_shutdown_timestamp_seconds",
        "When the previous process ended (Unix time; for killed, when it was noticed)",
        i64::try_from(p.at).unwrap_or(i64::MAX),
    )
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(m)
}

fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: &AtomicU64,
) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value.load(Ordering::Relaxed)).encode(m)
}
