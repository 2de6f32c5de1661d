//! The metrics registry: request count and latency histogram by route and status, plus
//! the gauges the server feeds (in-flight requests, open connections, phase, drain
//! duration, hook durations), exposed in the OpenMetrics text format on the admin
//! listener's `/metrics`.
//!
//! Recording is lock-free atomics (a read lock to find a route's series); the exposition
//! is encoded by `prometheus-client` at each scrape. Requests are recorded by lameduck's
//! [`Server`](crate::server::Server) or by
//! [`RecordMetricsLayer`](crate::middleware::metrics::RecordMetricsLayer); an application
//! reads the registry ([`Metrics::render`]) and registers metrics of its own
//! ([`AppMetric`]), but cannot write the server's series.
//!
//! ```
//! use lameduck::metrics::{AppMetric, Metrics};
//!
//! let metrics = Metrics::new()
//!     .with_app_metric(AppMetric::gauge("jobs_waiting", "Jobs in the queue", || 3.0));
//! let text = metrics.render();
//! assert!(text.contains("jobs_waiting 3.0"), "{text}");
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::in_flight::InFlight;
use crate::lifecycle::{read_previous, Phase, PreviousShutdown, Shutdown, ShutdownOutcome};
use crate::sync::{lock, read, write};

mod encode;

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The label used when a response names no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The route a response answered, for metrics and access logs: put it in the response
/// extensions where the router is not axum's (with axum,
/// [`RouteLabelLayer`](crate::middleware::route::RouteLabelLayer) records the matched
/// template). Use the route's template (`/orders/{id}`), never the raw path, which would
/// make one series per id.
#[derive(Debug, Clone)]
pub struct RouteTemplate(pub Arc<str>);

#[derive(Debug, Default)]
struct Series {
    count: AtomicU64,
    sum_micros: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
}

impl Series {
    fn observe(&self, latency: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// FNV-1a: route names are short and trusted (templates, not client input), so a fast
/// non-keyed hash is enough; SipHash showed up in per-request profiles.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One finished shutdown hook, as `lameduck_hook_duration_seconds` shows it.
#[derive(Debug, Clone)]
struct HookSample {
    name: String,
    phase: &'static str,
    status: &'static str,
    seconds: f64,
}

/// One route's series by status, each found by indexing after its first request: statuses
/// 100 to 599, a block of 100 made when the first status of its class is seen.
#[derive(Debug)]
pub(crate) struct RouteHandle {
    metrics: Metrics,
    route: Arc<str>,
    classes: [OnceLock<Box<StatusClass>>; 5],
}

/// The series of one class of statuses (such as 200 to 299), by status.
type StatusClass = [OnceLock<Arc<Series>>; 100];

impl RouteHandle {
    /// The route's template.
    #[cfg(feature = "axum")]
    pub(crate) fn route(&self) -> &Arc<str> {
        &self.route
    }

    /// Record one finished request.
    #[inline]
    pub(crate) fn observe(&self, status: u16, latency: Duration) {
        let at = usize::from(status).wrapping_sub(100);
        let Some(class) = self.classes.get(at / 100) else {
            return self.metrics.observe(&self.route, status, latency);
        };
        let block = class.get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        block[at % 100]
            .get_or_init(|| self.metrics.series(&self.route, status))
            .observe(latency);
    }
}

type FnvMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;
type RouteSeries = FnvMap<Arc<str>, FnvMap<u16, Arc<Series>>>;

#[derive(Debug, Default)]
struct Registry {
    series: RwLock<RouteSeries>,
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    drain_micros: AtomicU64,
    rejected: AtomicU64,
    shed: AtomicU64,
    abandoned: AtomicU64,
    registered: AtomicI64,
    registry_failures: AtomicU64,
    hooks: std::sync::Mutex<Vec<HookSample>>,
    in_flight: OnceLock<InFlight>,
    shutdown: OnceLock<Shutdown>,
    state_file: OnceLock<std::path::PathBuf>,
    tasks: OnceLock<crate::tasks::TaskStates>,
    app: RwLock<Vec<AppMetric>>,
    circuits: RwLock<Vec<crate::outbound::breaker::CircuitBreaker>>,
    tls: OnceLock<Arc<TlsStats>>,
}

/// The reasons a TLS handshake fails, as `lameduck_tls_handshake_failures_total{reason}`
/// labels them (in [`TlsStats`]' order).
pub const TLS_FAILURES: [&str; 5] = ["timeout", "eof", "protocol", "drain", "io"];

/// TLS handshake and certificate reload counts, and the certificate's expiry (the server's
/// TLS keeps them).
#[derive(Debug)]
pub struct TlsStats {
    pub(crate) handshakes: AtomicU64,
    /// Handshakes holding a place now.
    pub(crate) in_progress: AtomicI64,
    /// Connections waiting for a handshake place now.
    pub(crate) waiting: AtomicI64,
    /// By reason, in [`TLS_FAILURES`]' order.
    pub(crate) failures: [AtomicU64; 5],
    pub(crate) reloads: AtomicU64,
    pub(crate) reload_failures: AtomicU64,
    /// The certificate in use expires then (Unix seconds; `i64::MIN` when unknown).
    not_after: AtomicI64,
}

impl Default for TlsStats {
    fn default() -> Self {
        Self {
            handshakes: AtomicU64::new(0),
            in_progress: AtomicI64::new(0),
            waiting: AtomicI64::new(0),
            failures: Default::default(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            not_after: AtomicI64::new(i64::MIN),
        }
    }
}

impl TlsStats {
    /// When the certificate in use expires, in seconds since the Unix epoch, if known.
    pub fn not_after(&self) -> Option<i64> {
        Some(self.not_after.load(Ordering::Relaxed)).filter(|t| *t != i64::MIN)
    }

    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn set_not_after(&self, t: Option<i64>) {
        self.not_after
            .store(t.unwrap_or(i64::MIN), Ordering::Relaxed);
    }

    /// Handshakes completed.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Handshakes holding one of the `max_handshakes` places now, and connections waiting
    /// for a place.
    pub fn places(&self) -> (i64, i64) {
        (
            self.in_progress.load(Ordering::Relaxed),
            self.waiting.load(Ordering::Relaxed),
        )
    }

    /// Failed handshakes by reason.
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        TLS_FAILURES
            .iter()
            .zip(&self.failures)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// New certificate pairs swapped in, and new pairs refused.
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.reload_failures.load(Ordering::Relaxed),
        )
    }
}

/// A value the application computes, exported on `/metrics` at each scrape (read it from
/// atomics the application keeps up to date: the read runs on the scrape's thread).
///
/// ```
/// use std::sync::atomic::{AtomicI64, Ordering};
/// use std::sync::Arc;
/// use lameduck::metrics::{AppMetric, Metrics};
///
/// let pending = Arc::new(AtomicI64::new(7));
/// let p = pending.clone();
/// let metrics = Metrics::new().with_app_metric(AppMetric::gauge(
///     "orders_outbox_pending",
///     "Events not delivered yet",
///     move || p.load(Ordering::Relaxed) as f64,
/// ));
/// assert!(metrics.render().contains("orders_outbox_pending 7"));
/// ```
#[derive(Clone)]
pub struct AppMetric {
    name: String,
    help: String,
    counter: bool,
    read: Arc<dyn Fn() -> f64 + Send + Sync>,
}

impl std::fmt::Debug for AppMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppMetric")
            .field("name", &self.name)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl AppMetric {
    /// A gauge named `name` (exported as is).
    pub fn gauge(
        name: impl Into<String>,
        help: impl Into<String>,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            counter: false,
            read: Arc::new(read),
        }
    }

    /// A counter named `name` (exported as `name_total`); `read` must never decrease.
    pub fn counter(
        name: impl Into<String>,
        help: impl Into<String>,
        read: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Self {
        Self {
            counter: true,
            ..Self::gauge(name, help, read)
        }
    }

    /// The metric's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why the name is not usable: not a Prometheus name (`[a-zA-Z_][a-zA-Z0-9_]*`), or in
    /// lameduck's own `lameduck_` namespace.
    pub fn check_name(&self) -> Result<(), String> {
        let n = &self.name;
        let valid = n
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if n.is_empty() || !valid {
            return Err(format!("metric name {n:?} is not [a-zA-Z_][a-zA-Z0-9_]*"));
        }
        if n.starts_with("lameduck_") {
            return Err(format!(
                "metric name {n:?}: lameduck_ names are lameduck's own"
            ));
        }
        Ok(())
    }
}

/// The metrics registry. Cheap to clone; clones share the data.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Registry>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Report `in_flight.len()` as `lameduck_http_requests_in_flight`. The first call wins.
    pub fn with_in_flight(self, in_flight: InFlight) -> Self {
        let _ = self.inner.in_flight.set(in_flight);
        self
    }

    /// Report the lifecycle phase as `lameduck_phase`. The first call wins.
    pub fn with_shutdown(self, shutdown: Shutdown) -> Self {
        let _ = self.inner.shutdown.set(shutdown);
        self
    }

    /// Record one finished request.
    pub(crate) fn observe(&self, route: &str, status: u16, latency: Duration) {
        {
            let map = read(&self.inner.series);
            if let Some(s) = map.get(route).and_then(|by| by.get(&status)) {
                return s.observe(latency);
            }
        }
        self.series(route, status).observe(latency);
    }

    /// The series of `route` and `status`, made if new.
    fn series(&self, route: &str, status: u16) -> Arc<Series> {
        let mut map = write(&self.inner.series);
        map.entry(Arc::from(route))
            .or_default()
            .entry(status)
            .or_default()
            .clone()
    }

    /// A handle that records `route`'s requests without a lock or a lookup, once a status
    /// has been seen (the server keeps one per route template it matches itself).
    #[cfg(feature = "axum")]
    pub(crate) fn route_handle(&self, route: Arc<str>) -> RouteHandle {
        RouteHandle {
            metrics: self.clone(),
            route,
            classes: Default::default(),
        }
    }

    /// A connection was accepted.
    pub(crate) fn connection_opened(&self) {
        self.inner.connections_open.fetch_add(1, Ordering::Relaxed);
        self.inner.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was closed.
    pub(crate) fn connection_closed(&self) {
        self.inner.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections open now.
    pub fn connections_open(&self) -> i64 {
        self.inner.connections_open.load(Ordering::Relaxed)
    }

    /// Record how long the drain took.
    pub(crate) fn set_drain_duration(&self, d: Duration) {
        self.inner
            .drain_micros
            .store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// A request was refused by the drain policy (503 during the drain).
    pub(crate) fn request_rejected(&self) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was shed: the in-flight limit was reached (503 `overloaded`).
    pub(crate) fn request_shed(&self) {
        self.inner.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the process is registered in its service registry now.
    pub(crate) fn set_registered(&self, registered: bool) {
        self.inner
            .registered
            .store(i64::from(registered), Ordering::Relaxed);
    }

    /// A registry operation failed (registration, keep-alive).
    pub(crate) fn registry_failure(&self) {
        self.inner.registry_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Export how the previous process ended (`lameduck_previous_shutdown{outcome}`, its
    /// abandoned requests and when), read from the shutdown state file at each scrape: in
    /// an upgrade, the old process records its end while the new one serves.
    pub fn with_state_file(self, path: impl Into<std::path::PathBuf>) -> Self {
        let _ = self.inner.state_file.set(path.into());
        self
    }

    /// Export the background tasks' state (`lameduck_tasks_running{task}`,
    /// `lameduck_task_restarts_total{task}`).
    pub(crate) fn with_tasks(self, tasks: crate::tasks::TaskStates) -> Self {
        let _ = self.inner.tasks.set(tasks);
        self
    }

    /// Export a circuit breaker's state (`lameduck_circuit_state{circuit}`: 0 closed, 1
    /// open, 2 half-open) and the calls it refused (`lameduck_circuit_rejected_total`).
    pub fn with_circuit(self, breaker: crate::outbound::breaker::CircuitBreaker) -> Self {
        write(&self.inner.circuits).push(breaker);
        self
    }

    /// Export the server's TLS counts (`lameduck_tls_handshakes_total`,
    /// `lameduck_tls_handshakes_in_progress`, `lameduck_tls_handshakes_waiting`,
    /// `lameduck_tls_handshake_failures_total{reason}`,
    /// `lameduck_tls_certificate_reloads_total{outcome}`).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn with_tls(self, stats: Arc<TlsStats>) -> Self {
        let _ = self.inner.tls.set(stats);
        self
    }

    /// Export `metric` too (see [`AppMetric`]).
    pub fn with_app_metric(self, metric: AppMetric) -> Self {
        write(&self.inner.app).push(metric);
        self
    }

    /// Requests still running when the shutdown deadline passed.
    pub(crate) fn requests_abandoned(&self, n: usize) {
        self.inner.abandoned.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Shutdown hooks that have finished (or were skipped or timed out).
    pub(crate) fn hooks_finished(&self, outcomes: &[crate::hooks::HookOutcome]) {
        use crate::hooks::HookStatus;
        let mut hooks = lock(&self.inner.hooks);
        hooks.extend(outcomes.iter().map(|o| HookSample {
            name: o.name.clone(),
            phase: o.phase.as_str(),
            status: match o.status {
                HookStatus::Ok => "ok",
                HookStatus::Failed(_) => "failed",
                HookStatus::TimedOut => "timed_out",
                HookStatus::Skipped => "skipped",
            },
            seconds: o.duration.as_secs_f64(),
        }));
    }

    /// The exposition of everything recorded, in the OpenMetrics text format (which
    /// Prometheus reads; serve it as [`CONTENT_TYPE`]), encoded by `prometheus-client`.
    pub fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(encode::Snapshot(self.clone())));
        let mut out = String::with_capacity(4096);
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "axum")]
    #[test]
    fn a_route_handle_records_into_the_same_series_as_observe() {
        let m = Metrics::new();
        let h = m.route_handle(Arc::from("/items/{id}"));
        m.observe("/items/{id}", 200, Duration::from_millis(1));
        for status in [200, 200, 404, 599, 100, 99, 600] {
            h.observe(status, Duration::from_millis(1));
        }
        let text = m.render();
        for (status, n) in [(200, 3), (404, 1), (599, 1), (100, 1), (99, 1), (600, 1)] {
            let line = format!(
                "lameduck_http_requests_total{{route=\"/items/{{id}}\",status=\"{status}\"}} {n}\n"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn rejected_and_abandoned_requests_are_counted() {
        let m = Metrics::new();
        m.request_rejected();
        m.request_rejected();
        m.requests_abandoned(3);
        let text = m.render();
        assert!(
            text.contains("lameduck_http_requests_rejected_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("lameduck_http_requests_abandoned_total 3\n"),
            "{text}"
        );
        assert!(
            !text.contains("lameduck_hook_duration_seconds"),
            "no hooks yet: {text}"
        );
    }

    #[test]
    fn render_has_cumulative_buckets_sum_and_count() {
        let m = Metrics::new();
        m.observe("/a", 200, Duration::from_micros(500));
        m.observe("/a", 200, Duration::from_millis(20));
        m.observe("/a\"b", 500, Duration::from_secs(100));
        let text = m.render();
        assert!(text.contains("lameduck_http_requests_total{route=\"/a\",status=\"200\"} 2"));
        assert!(text.contains("lameduck_http_request_duration_seconds_bucket{le=\"0.001\",route=\"/a\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("lameduck_http_request_duration_seconds_bucket{le=\"0.025\",route=\"/a\",status=\"200\"} 2"));
        assert!(text.contains("lameduck_http_request_duration_seconds_bucket{le=\"30.0\",route=\"/a\\\"b\",status=\"500\"} 0"));
        assert!(text.contains("lameduck_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"/a\\\"b\",status=\"500\"} 1"));
        assert!(text.ends_with("# EOF\n"), "OpenMetrics: {text}");
        assert!(text.contains(
            "lameduck_http_request_duration_seconds_count{route=\"/a\\\"b\",status=\"500\"} 1"
        ));
    }

    #[test]
    fn connection_gauges_follow_open_and_close() {
        let m = Metrics::new();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        assert_eq!(m.connections_open(), 1);
        assert!(m.render().contains("lameduck_http_connections_total 2"));
    }

    #[test]
    fn a_circuit_shows_its_state_and_its_refusals() {
        use crate::outbound::breaker::{BreakerConfig, BreakerLayer, CircuitBreaker};
        use std::future::Future as _;
        use tower::{Layer, Service};
        let breaker = CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::new("payments")
        });
        let metrics = Metrics::new().with_circuit(breaker.clone());
        assert!(metrics
            .render()
            .contains("lameduck_circuit_state{circuit=\"payments\"} 0\n"));
        let mut svc = BreakerLayer::new(breaker).layer(tower::service_fn(|_: ()| {
            std::future::ready(Err::<(), _>("down"))
        }));
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for _ in 0..2 {
            let mut f = std::pin::pin!(svc.call(()));
            assert!(matches!(
                f.as_mut().poll(&mut cx),
                std::task::Poll::Ready(Err(_))
            ));
        }
        let text = metrics.render();
        assert!(
            text.contains("lameduck_circuit_state{circuit=\"payments\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lameduck_circuit_rejected_total{circuit=\"payments\"} 1\n"),
            "{text}"
        );
    }
}
