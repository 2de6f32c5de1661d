//! The server: an accept loop on hyper-util's auto connection builder (HTTP/1.1 and HTTP/2
//! cleartext) that drains without losing requests.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use lameduck::{lifecycle::Lifecycle, server::Server};
//!
//! # async fn run() -> Result<(), lameduck::Error> {
//! let lifecycle = Lifecycle::new().with_os_signals().map_err(lameduck::Error::Signals)?;
//! let app = Router::new().route("/ping", get(|| async { "pong" }));
//! let server = Server::builder()
//!     .admin("127.0.0.1:9090".parse().unwrap())
//!     .bind("127.0.0.1:8080".parse().unwrap(), lifecycle)
//!     .await?;
//! let report = server.serve_router(app).await;
//! std::process::exit(report.exit_code().into());
//! # }
//! ```
//!
//! # The drain
//! On SIGTERM/SIGINT (or [`Trigger::drain`](crate::lifecycle::Trigger::drain)):
//! 1. the phase becomes `Draining`: `/readyz` answers 503, handlers' "stop soon" fires,
//!    before-drain hooks start, HTTP/1 responses carry `Connection: close` and HTTP/2
//!    connections get GOAWAY;
//! 2. for `drain_delay` the listener keeps accepting (load balancers take a moment to
//!    notice); then it takes what is queued and closes, so new connects are refused;
//! 3. in-flight requests run on. An idle HTTP/1 keep-alive connection is kept until it has
//!    been idle for `idle_grace`: a client that reuses it in that window is served (with
//!    `Connection: close`) instead of hitting a closed socket. The cost is that exit waits
//!    up to `idle_grace` while idle connections remain; `idle_grace = 0` closes them at
//!    once, as Go, axum and hyper do, and reintroduces the race;
//! 4. when the last connection is gone the drain ends at once; at
//!    `drain_delay + shutdown_timeout` what is left is closed and every abandoned request is
//!    logged (exit code 3). A second signal, or SIGQUIT, forces that at once;
//! 5. after-drain hooks, then final hooks, then the report.

mod accept;
mod access;
pub mod activation;
mod conn;
mod service;

pub use access::{AccessLog, AccessSink, ACCESS_LOG_TARGET};
pub use service::REQUEST_SPAN_TARGET;
#[cfg(feature = "fd-handoff")]
pub mod upgrade;

#[cfg(feature = "fd-handoff")]
use upgrade::Handoff;

/// Without the `fd-handoff` feature there is nothing to hand over.
#[cfg(not(feature = "fd-handoff"))]
#[derive(Debug)]
struct Handoff;

#[cfg(not(feature = "fd-handoff"))]
impl Handoff {
    fn of(_: &TcpListener, _: Option<&TcpListener>) -> std::io::Result<Self> {
        Ok(Handoff)
    }
}

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::admin::{Admin, ReadinessCheck};
use crate::hooks::{HookPhase, Hooks};
use crate::lifecycle::{Lifecycle, Phase, ShutdownReport, Signal};
use crate::middleware::drain::{DrainAdmissionLayer, DrainPolicy};
use crate::middleware::in_flight::InFlight;
use crate::middleware::metrics::Metrics;
use crate::Error;
use conn::{ConnLimits, ConnState, Ended, TrackedIo};
use service::{ConnService, Stack};

/// The request body type the application sees: hyper's body under the body-size limit.
pub type RequestBody = http_body_util::Limited<Incoming>;

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Keep accepting this long after draining starts (default: no delay).
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;
/// How long in-flight work may run after the drain delay before it is abandoned.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle keep-alive connection is kept during the drain.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);
/// Longest time a request head may take to arrive, from its first byte (or the accept).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection idle this long is closed. Longer than common client pool idle
/// times (hyper and Go: 90 s), so that the server is not the side that closes first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest request head (HTTP/1 read buffer and HTTP/2 header list), in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most connections open at once; further connections wait in the accept queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Largest request body, in bytes; larger ones get 413.
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// How long a new process started by an upgrade may take to report ready.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
/// While draining, a progress line (in flight, connections, time left) is logged this often.
pub const DRAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// hyper's smallest HTTP/1 read buffer.
const MIN_HEADER_BYTES: usize = 8192;

/// Server configuration; see each method for its default.
#[derive(Debug)]
pub struct Builder {
    drain_delay: Duration,
    shutdown_timeout: Duration,
    idle_grace: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
    max_connections: usize,
    body_limit: usize,
    access_log: AccessLog,
    request_spans: bool,
    drain_policy: DrainPolicy,
    upgrade_timeout: Duration,
    admin: Option<SocketAddr>,
    hooks: Hooks,
    checks: Vec<ReadinessCheck>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            drain_delay: DEFAULT_DRAIN_DELAY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            idle_grace: DEFAULT_IDLE_GRACE,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            body_limit: DEFAULT_BODY_LIMIT,
            access_log: AccessLog::Off,
            request_spans: false,
            drain_policy: DrainPolicy::Serve,
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            admin: None,
            hooks: Hooks::new(),
            checks: Vec::new(),
        }
    }
}

impl Builder {
    /// Keep accepting this long after draining starts, while load balancers notice the
    /// failing readiness (default [`DEFAULT_DRAIN_DELAY`]).
    pub fn drain_delay(mut self, d: Duration) -> Self {
        self.drain_delay = d;
        self
    }

    /// The grace period after the drain delay (default [`DEFAULT_SHUTDOWN_TIMEOUT`]).
    /// Never unbounded.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// How long an idle HTTP/1 keep-alive connection is kept during the drain (default
    /// [`DEFAULT_IDLE_GRACE`]). Zero closes idle connections at once.
    pub fn idle_grace(mut self, d: Duration) -> Self {
        self.idle_grace = d;
        self
    }

    /// Longest time for a request head to arrive (default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`]).
    pub fn header_read_timeout(mut self, d: Duration) -> Self {
        self.header_read_timeout = d;
        self
    }

    /// Close keep-alive connections idle this long (default [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Largest request head in bytes, at least 8192 (default
    /// [`DEFAULT_MAX_HEADER_BYTES`]); larger heads get 431.
    pub fn max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = n;
        self
    }

    /// Most connections open at once (default [`DEFAULT_MAX_CONNECTIONS`]).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Largest request body in bytes (default [`DEFAULT_BODY_LIMIT`]); larger get 413.
    pub fn body_limit(mut self, n: usize) -> Self {
        self.body_limit = n;
        self
    }

    /// The access log (default [`AccessLog::Off`]): one line per request when its response
    /// is over, with method, route template (never the raw path), status, latency,
    /// response bytes, whether the body was sent in full, client address and request id.
    /// [`AccessLog::Tracing`] emits `tracing` events on [`ACCESS_LOG_TARGET`];
    /// [`AccessLog::Json`] formats the line itself and is several times cheaper (see
    /// docs/benchmarks.md); `lameduck::logfile::LogWriter` (feature `cli`) is a
    /// sink that never blocks on the disk.
    pub fn access_log(mut self, log: AccessLog) -> Self {
        self.access_log = log;
        self
    }

    /// Poll each request's handler inside an `info` span named `request` on the target
    /// [`REQUEST_SPAN_TARGET`], with the fields `request_id` and `trace_id`: every event the handler logs then carries them (the JSON formatter
    /// writes the span's fields with each event). Off by default: creating and formatting a
    /// span costs throughput on every request whether or not the handler logs. With the
    /// `otel` feature and an exporter installed (`lameduck::otel`), these are the spans
    /// exported, with the trace and span ids of the response's `traceparent`.
    pub fn request_spans(mut self, on: bool) -> Self {
        self.request_spans = on;
        self
    }

    /// What to do with requests that arrive during the drain (default: serve them).
    pub fn drain_policy(mut self, p: DrainPolicy) -> Self {
        self.drain_policy = p;
        self
    }

    /// How long a new process started by an upgrade (SIGHUP) may take to report ready
    /// before it is killed and this one keeps serving (default [`DEFAULT_UPGRADE_TIMEOUT`]).
    pub fn upgrade_timeout(mut self, d: Duration) -> Self {
        self.upgrade_timeout = d;
        self
    }

    /// Serve `/livez`, `/readyz` and `/metrics` on this address.
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// Register a shutdown hook (see [`Hooks::add`]).
    pub fn hook<F, Fut>(
        mut self,
        phase: HookPhase,
        name: impl Into<String>,
        timeout: Duration,
        f: F,
    ) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), crate::hooks::HookError>> + Send + 'static,
    {
        self.hooks.add(phase, name, timeout, f);
        self
    }

    /// Register a readiness check for `/readyz`.
    pub fn readiness_check(mut self, check: ReadinessCheck) -> Self {
        self.checks.push(check);
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(Error::Config(format!(
                "max_header_bytes is {}, must be at least {MIN_HEADER_BYTES}",
                self.max_header_bytes
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        if self.header_read_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(Error::Config(
                "header_read_timeout and idle_timeout must be above zero".into(),
            ));
        }
        Ok(())
    }

    /// Bind the HTTP listener on `addr` (and the admin listener, if configured), or take
    /// over the sockets passed by socket activation (see [`activation`]): an inherited
    /// socket replaces the address asked for. Install signal handlers on `lifecycle` before
    /// calling this (see [`Lifecycle::with_os_signals`]).
    ///
    /// # Errors
    /// [`Error::Config`] for out-of-range settings, [`Error::Bind`] naming the address
    /// that could not be bound.
    pub async fn bind(self, addr: SocketAddr, lifecycle: Lifecycle) -> Result<Server, Error> {
        self.validate()?;
        let mut inherited = activation::from_env()?.unwrap_or_default();
        let http = match inherited.http.take() {
            Some(l) => adopt("HTTP", l)?,
            None => bind("HTTP", addr).await?,
        };
        let admin = match (inherited.admin.take(), self.admin) {
            (Some(l), _) => Some(adopt("admin", l)?),
            (None, Some(a)) => Some(bind("admin", a).await?),
            (None, None) => None,
        };
        Ok(Server {
            config: self,
            lifecycle,
            http,
            admin,
        })
    }
}

/// Serve on an inherited listening socket.
fn adopt(which: &'static str, listener: std::net::TcpListener) -> Result<TcpListener, Error> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Activation(format!("{which} socket: {e}")))?;
    let listener = TcpListener::from_std(listener)
        .map_err(|e| Error::Activation(format!("{which} socket: {e}")))?;
    tracing::info!(which, %addr, "serving on an inherited socket");
    Ok(listener)
}

async fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        which,
        addr,
        source,
    })
}

/// A bound server, ready to [`serve`](Server::serve).
#[derive(Debug)]
pub struct Server {
    config: Builder,
    lifecycle: Lifecycle,
    http: TcpListener,
    admin: Option<TcpListener>,
}

/// What the drain waits on, shared by the connection tasks.
#[derive(Debug, Clone)]
struct Shared {
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    metrics: Metrics,
    tracker: TaskTracker,
}

impl Server {
    /// A configuration with every default.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The bound HTTP address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The bound admin address, if any.
    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr)
    }

    /// The lifecycle watcher, for handlers and application tasks.
    pub fn shutdown(&self) -> crate::lifecycle::Shutdown {
        self.lifecycle.shutdown()
    }

    /// A handle that can start the drain without an OS signal.
    pub fn trigger(&self) -> crate::lifecycle::Trigger {
        self.lifecycle.trigger()
    }

    /// Serve an axum `Router` with route labels for metrics (see
    /// [`RouteLabelLayer`](crate::middleware::route::RouteLabelLayer)).
    #[cfg(feature = "axum")]
    pub async fn serve_router(self, router: axum::Router) -> ShutdownReport {
        // `with_state` turns every handler into a route once, here, instead of on every
        // request (as `axum::serve` does through `into_make_service`).
        let app = router
            .layer(crate::middleware::route::RouteLabelLayer::new())
            .with_state(());
        self.serve(app).await
    }

    /// Serve `app` behind lameduck's middleware until the lifecycle ends; returns the
    /// shutdown report (also logged). Use [`ShutdownReport::exit_code`] as the exit code.
    pub async fn serve<S, B>(self, app: S) -> ShutdownReport
    where
        S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Server {
            config,
            mut lifecycle,
            http,
            admin,
        } = self;
        let sd = lifecycle.shutdown();
        let in_flight = InFlight::new();
        let metrics = Metrics::new()
            .with_in_flight(in_flight.clone())
            .with_shutdown(sd.clone());
        // catch-panic -> request context -> metrics -> in-flight -> drain admission -> body
        // limit run in the per-connection service (see `service.rs`).
        let svc = app;
        let stack = Arc::new(Stack {
            shutdown: sd.clone(),
            metrics: metrics.clone(),
            in_flight: in_flight.clone(),
            drain: DrainAdmissionLayer::new(sd.clone()).policy(config.drain_policy),
            body_limit: config.body_limit,
            access_log: config.access_log.clone(),
            request_spans: config.request_spans,
        });
        let shared = Shared {
            builder: Arc::new(connection_builder(&config)),
            limits: ConnLimits {
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
                idle_grace: config.idle_grace,
            },
            metrics: metrics.clone(),
            tracker: TaskTracker::new(),
        };
        let handoff = Handoff::of(&http, admin.as_ref())
            .map_err(|e| tracing::warn!(error = %e, "cannot keep the sockets for upgrades"))
            .ok();
        let upgrade_status = crate::admin::UpgradeStatus::default();
        let admin_task = admin.map(|l| {
            let a = Admin::new(sd.clone(), metrics.clone(), config.checks.clone())
                .with_upgrade_status(upgrade_status.clone());
            tokio::spawn(a.serve(l))
        });
        let stop_accepting = CancellationToken::new();
        let handed_over = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accept_task = {
            let (shared, sd, svc) = (shared.clone(), sd.clone(), svc.clone());
            let stack = stack.clone();
            let limit = Arc::new(Semaphore::new(config.max_connections));
            tokio::spawn(accept::accept_loop(
                http,
                limit,
                stop_accepting.clone(),
                handed_over.clone(),
                move |stream, peer, permit| {
                    spawn_connection(
                        &shared,
                        stream,
                        peer,
                        permit,
                        svc.clone(),
                        stack.clone(),
                        sd.clone(),
                    );
                },
            ))
        };
        log_budget(&config);
        lifecycle.set_phase(Phase::Serving);
        activation::notify_ready();
        let listeners = Listeners {
            stop_accepting,
            handed_over,
            accept_task,
            admin_task,
            handoff,
            upgrade_status,
        };
        let Drained {
            report,
            hooks,
            admin_task,
        } = drain(&mut lifecycle, config, &shared, listeners, &in_flight).await;
        let report = finish(&lifecycle, hooks, report, &metrics).await;
        if let Some(t) = admin_task {
            t.abort();
        }
        report
    }
}

struct Drained {
    report: ShutdownReport,
    hooks: Hooks,
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

/// Why serving stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A graceful signal (or the trigger went away).
    Graceful(&'static str),
    /// SIGQUIT: forced at once.
    Forced,
    /// A new process took over the listeners.
    #[cfg_attr(not(feature = "fd-handoff"), allow(dead_code))]
    Handover(u32),
}

/// Serve until a stop signal; SIGHUP starts an upgrade, which either hands over (the new
/// process is ready) or rolls back (logged) and keeps serving.
async fn wait_for_stop(
    lifecycle: &mut Lifecycle,
    handoff: Option<&Handoff>,
    upgrade_timeout: Duration,
    status: &crate::admin::UpgradeStatus,
) -> Stop {
    loop {
        match lifecycle.next_signal().await {
            None => return Stop::Graceful("trigger closed"),
            Some(Signal::Forced) => return Stop::Forced,
            Some(Signal::Upgrade) => {
                if let Some(stop) = try_upgrade(lifecycle, handoff, upgrade_timeout, status).await {
                    return stop;
                }
            }
            Some(_) => return Stop::Graceful("signal"),
        }
    }
}

/// Run one upgrade, refusing further SIGHUPs meanwhile. `Some` when serving must stop.
#[cfg(feature = "fd-handoff")]
async fn try_upgrade(
    lifecycle: &mut Lifecycle,
    handoff: Option<&Handoff>,
    timeout: Duration,
    status: &crate::admin::UpgradeStatus,
) -> Option<Stop> {
    let Some(handoff) = handoff else {
        tracing::warn!("upgrade refused: the listening sockets could not be kept for a handover");
        status.set("refused: the listening sockets could not be kept for a handover".into());
        return None;
    };
    let upgrade = upgrade::start_successor(handoff, timeout);
    tokio::pin!(upgrade);
    loop {
        tokio::select! {
            outcome = &mut upgrade => return match outcome {
                Ok(pid) => {
                    tracing::info!(new_pid = pid, "upgrade: the new process is ready; this one drains");
                    status.set(format!("handed over to pid {pid}; this process ({}) drains", std::process::id()));
                    Some(Stop::Handover(pid))
                }
                Err(e) => {
                    tracing::error!(error = %e, "upgrade failed; rolled back, this process keeps serving");
                    status.set(format!("rolled back: {e}"));
                    None
                }
            },
            sig = lifecycle.next_signal() => match sig {
                Some(Signal::Upgrade) => tracing::warn!("upgrade refused: an upgrade is already in progress"),
                Some(Signal::Forced) => return Some(Stop::Forced),
                Some(_) => return Some(Stop::Graceful("signal during upgrade")),
                None => return Some(Stop::Graceful("trigger closed")),
            },
        }
    }
}

#[cfg(not(feature = "fd-handoff"))]
async fn try_upgrade(
    _: &mut Lifecycle,
    _: Option<&Handoff>,
    _: Duration,
    status: &crate::admin::UpgradeStatus,
) -> Option<Stop> {
    tracing::warn!("upgrade refused: lameduck was built without the fd-handoff feature");
    status.set("refused: built without the fd-handoff feature".into());
    None
}

/// The next signal that ends a drain early; upgrades are ignored while draining.
async fn next_stop_signal(lifecycle: &mut Lifecycle) {
    loop {
        match lifecycle.next_signal().await {
            Some(Signal::Upgrade) => tracing::warn!("upgrade refused: this process is draining"),
            _ => return,
        }
    }
}

/// Wait for the stop, then run the drain: delay, close (or hand over) the listener, wait
/// for the connections up to the deadline. Returns with the before-drain hooks done.
async fn drain(
    lifecycle: &mut Lifecycle,
    config: Builder,
    shared: &Shared,
    listeners: Listeners,
    in_flight: &InFlight,
) -> Drained {
    let Listeners {
        stop_accepting,
        handed_over,
        accept_task,
        admin_task,
        handoff,
        upgrade_status,
    } = listeners;
    let stop = wait_for_stop(
        lifecycle,
        handoff.as_ref(),
        config.upgrade_timeout,
        &upgrade_status,
    )
    .await;
    // Only a handover keeps the sockets open beyond this process: close the duplicates
    // now, or they would keep a closed listener's socket alive (connects would hang).
    #[allow(clippy::drop_non_drop)] // without `fd-handoff` the stub owns nothing
    drop(handoff);
    let mut report = ShutdownReport {
        reason: match stop {
            Stop::Forced => "forced".into(),
            Stop::Graceful(why) => why.into(),
            Stop::Handover(pid) => format!("upgrade to pid {pid}"),
        },
        ..ShutdownReport::default()
    };
    if !matches!(stop, Stop::Handover(_)) {
        // After a handover systemd follows the new process; only a real stop is announced.
        activation::notify_stopping();
    }
    let t0 = Instant::now();
    lifecycle.begin_drain(config.drain_delay + config.shutdown_timeout);
    let deadline = tokio::time::Instant::from_std(lifecycle.shutdown().deadline().unwrap_or(t0));
    let mut hooks = config.hooks;
    let before: Hooks = hooks.split_phase(HookPhase::BeforeDrain);
    let before_task = tokio::spawn(async move {
        let mut before = before;
        before.run_phase(HookPhase::BeforeDrain).await
    });
    let mut forced = stop == Stop::Forced;
    if let Stop::Handover(_) = stop {
        // The new process accepts from the same sockets already: no delay, no closing
        // dance, and its admin listener answers the probes from now on.
        handed_over.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = &admin_task {
            t.abort();
        }
    } else if !forced && !config.drain_delay.is_zero() {
        // A zero delay must not wait for the timer wheel's next tick (about 1 ms).
        tokio::select! {
            _ = tokio::time::sleep(config.drain_delay) => {}
            _ = next_stop_signal(lifecycle) => forced = true,
        }
    }
    stop_accepting.cancel();
    let _ = accept_task.await;
    shared.tracker.close();
    if !forced {
        tokio::select! {
            _ = shared.tracker.wait() => {}
            _ = tokio::time::sleep_until(deadline) => { forced = true; report.reason.push_str(", deadline passed"); }
            _ = next_stop_signal(lifecycle) => { forced = true; report.reason.push_str(", second signal"); }
            never = log_drain_progress(in_flight, &shared.metrics, deadline) => match never {},
        }
    }
    if forced {
        report.forced = true;
        report.abandoned = in_flight.snapshot();
        shared.metrics.requests_abandoned(report.abandoned.len());
        report.connections_closed = shared.metrics.connections_open().max(0) as usize;
        lifecycle.force();
        shared.tracker.wait().await;
    }
    report.drain = t0.elapsed();
    shared.metrics.set_drain_duration(report.drain);
    report.hooks = before_task.await.unwrap_or_default();
    shared.metrics.hooks_finished(&report.hooks);
    Drained {
        report,
        hooks,
        admin_task,
    }
}

/// While the drain waits: a log line every [`DRAIN_PROGRESS_INTERVAL`] with the requests
/// still in flight, the open connections and the time left before the deadline.
async fn log_drain_progress(
    in_flight: &InFlight,
    metrics: &crate::middleware::metrics::Metrics,
    deadline: tokio::time::Instant,
) -> Infallible {
    let start = tokio::time::Instant::now() + DRAIN_PROGRESS_INTERVAL;
    let mut tick = tokio::time::interval_at(start, DRAIN_PROGRESS_INTERVAL);
    loop {
        tick.tick().await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tracing::info!(
            in_flight = in_flight.len(),
            connections = metrics.connections_open(),
            left_ms = left.as_millis() as u64,
            "drain progress"
        );
    }
}

/// The accept side, as `drain` needs it.
struct Listeners {
    stop_accepting: CancellationToken,
    handed_over: Arc<std::sync::atomic::AtomicBool>,
    accept_task: tokio::task::JoinHandle<()>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
    handoff: Option<Handoff>,
    upgrade_status: crate::admin::UpgradeStatus,
}

/// After the drain: after-drain hooks (skipped when forced), final hooks, the report.
async fn finish(
    lifecycle: &Lifecycle,
    mut hooks: Hooks,
    mut report: ShutdownReport,
    metrics: &crate::middleware::metrics::Metrics,
) -> ShutdownReport {
    lifecycle.set_phase(Phase::Stopping);
    let after = if report.forced {
        hooks.skip_phase(HookPhase::AfterDrain)
    } else {
        hooks.run_phase(HookPhase::AfterDrain).await
    };
    metrics.hooks_finished(&after);
    report.hooks.extend(after);
    let last = hooks.run_phase(HookPhase::Final).await;
    metrics.hooks_finished(&last);
    report.hooks.extend(last);
    lifecycle.set_phase(Phase::Exited);
    report.phases = lifecycle.timings();
    report.log();
    report
}

fn spawn_connection<S, B>(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    svc: S,
    stack: Arc<Stack>,
    sd: crate::lifecycle::Shutdown,
) where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _ = stream.set_nodelay(true);
    let shared = shared.clone();
    shared.metrics.connection_opened();
    shared.tracker.clone().spawn(async move {
        let state = Arc::new(ConnState::new());
        let io = TokioIo::new(TrackedIo::new(stream, state.clone()));
        let service = ConnService {
            inner: svc,
            peer,
            state: state.clone(),
            stack,
        };
        // Pinned where it is made: one copy of the connection in this task (see `drive`).
        let conn = std::pin::pin!(shared.builder.serve_connection_with_upgrades(io, service));
        let ended = conn::drive(conn, |c| c.graceful_shutdown(), &state, &sd, shared.limits).await;
        if ended != Ended::Finished {
            tracing::debug!(%peer, ?ended, "connection closed by the server");
        }
        shared.metrics.connection_closed();
        drop(permit);
    });
}

fn connection_builder(config: &Builder) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper's own header timeout also runs while a keep-alive connection waits for its next
    // request, which would make it an idle timeout; lameduck enforces both itself.
    b.http1()
        .header_read_timeout(None)
        .max_buf_size(config.max_header_bytes)
        .keep_alive(true);
    b.http2()
        .max_header_list_size(config.max_header_bytes as u32);
    b
}

fn log_budget(config: &Builder) {
    let hooks = config.hooks.budget(HookPhase::AfterDrain) + config.hooks.budget(HookPhase::Final);
    let total = config.drain_delay + config.shutdown_timeout + hooks;
    tracing::info!(
        drain_delay_ms = config.drain_delay.as_millis() as u64,
        shutdown_timeout_ms = config.shutdown_timeout.as_millis() as u64,
        hooks_ms = hooks.as_millis() as u64,
        total_ms = total.as_millis() as u64,
        "shutdown budget: the supervisor's stop timeout (Kubernetes terminationGracePeriodSeconds, systemd TimeoutStopSec, docker stop -t) must exceed total_ms"
    );
}
