//! The server's configuration: every setting with its default as a named constant, and
//! binding the listeners.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioExecutor;

use super::access::AccessLog;
use super::{activation, Server};
use crate::admin::ReadinessCheck;
use crate::context::RequestSpans;
use crate::hooks::{HookPhase, Hooks};
use crate::lifecycle::Lifecycle;
use crate::middleware::drain::DrainPolicy;
use crate::Error;

mod sockets;
mod validate;
use sockets::{adopt, bind};

/// Keep accepting this long after draining starts (default: no delay).
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;
/// How long in-flight work may run after the drain delay before it is abandoned: with a
/// few seconds of hooks it fits Kubernetes' default 30 s `terminationGracePeriodSeconds`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// What [`Builder::grace_budget`] keeps aside beyond the drain and the hooks: the runtime's
/// bounded shutdown and the exit itself.
pub const GRACE_MARGIN: Duration = Duration::from_secs(1);
/// How long an idle keep-alive connection is kept during the drain.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);
/// Longest time a request head may take to arrive, from its first byte (or the accept).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive connection idle this long is closed. Longer than common client pool idle
/// times (hyper and Go: 90 s), so that the server is not the side that closes first.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest request head (HTTP/1 read buffer and HTTP/2 header list), in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Connections the kernel queues for accepting (the `listen(2)` backlog). A burst of new
/// connections beyond it is dropped by the kernel (clients retry after a second); the
/// kernel caps it at `net.core.somaxconn` (4096 on Linux 5.4 and later).
pub const DEFAULT_LISTEN_BACKLOG: u32 = 1024;
/// Most connections open at once; further connections wait in the accept queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Longest wait between two pieces of a request body. A healthy client sending its body
/// does not pause this long (the header read timeout's value: the same patience for the
/// head and the body).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time for a whole request body, from its head: the default body limit (2 MiB) at
/// about 35 KiB/s, a slow mobile uplink.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Most admin connections open at once: probes and scrapes need a few; a client that holds
/// more only queues behind its own.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Largest request body, in bytes; larger ones get 413.
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// How long a new process started by an upgrade may take to report ready.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's smallest HTTP/1 read buffer.
/// Default TLS handshake timeout, from the accept (`TlsConfig::handshake_timeout`,
/// feature `tls`; defined without the feature too, for the shared flags' defaults).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for a ClientHello's first byte (`TlsConfig::first_byte_timeout`).
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default most TLS handshakes at once (`TlsConfig::max_handshakes`).
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;
/// Default interval between checks of the certificate files (`TlsConfig::reload_every`).
pub const DEFAULT_RELOAD_EVERY: Duration = Duration::from_secs(10);
/// The smallest `max_header_bytes` accepted.
const MIN_HEADER_BYTES: usize = 8192;

/// Server configuration; see each method for its default.
#[derive(Debug)]
pub struct Builder {
    pub(super) drain_delay: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) idle_grace: Duration,
    pub(super) header_read_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) max_header_bytes: usize,
    pub(super) max_connections: usize,
    pub(super) listen_backlog: u32,
    pub(super) admin_max_connections: usize,
    pub(super) body_limit: usize,
    pub(super) max_in_flight: crate::limit::InFlightLimit,
    pub(super) request_timeout: Option<Duration>,
    pub(super) body_read_timeout: Duration,
    pub(super) body_timeout: Duration,
    pub(super) access_log: AccessLog,
    pub(super) request_spans: RequestSpans,
    pub(super) response_ids: bool,
    /// Set by `serve` for `Routes`: the route templates the server matches itself.
    #[cfg(feature = "axum")]
    pub(super) route_templates: Option<crate::middleware::route::RouteTemplates>,
    pub(super) drain_policy: DrainPolicy,
    pub(super) upgrade_timeout: Duration,
    pub(super) upgrade_exec: Option<std::path::PathBuf>,
    pub(super) version: Option<String>,
    pub(super) grace_budget: Option<Duration>,
    pub(super) pid_file: Option<std::path::PathBuf>,
    pub(super) state_file: Option<std::path::PathBuf>,
    pub(super) admin: Option<SocketAddr>,
    pub(super) admin_token: Option<std::sync::Arc<str>>,
    pub(super) proxy_protocol: bool,
    pub(super) registry: Option<std::sync::Arc<dyn crate::registry::Registry>>,
    #[cfg(feature = "axum")]
    pub(super) admin_routes: Option<axum::Router>,
    pub(super) hooks: Hooks,
    pub(super) tasks: Vec<crate::tasks::Task>,
    pub(super) app_metrics: Vec<crate::metrics::AppMetric>,
    pub(super) circuits: Vec<crate::outbound::breaker::CircuitBreaker>,
    #[cfg(feature = "tls")]
    pub(super) tls: Option<super::tls::TlsConfig>,
    pub(super) checks: Vec<ReadinessCheck>,
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
            listen_backlog: DEFAULT_LISTEN_BACKLOG,
            admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            body_limit: DEFAULT_BODY_LIMIT,
            max_in_flight: crate::limit::InFlightLimit::Off,
            request_timeout: None,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            access_log: AccessLog::Off,
            request_spans: RequestSpans::Off,
            response_ids: true,
            #[cfg(feature = "axum")]
            route_templates: None,
            drain_policy: DrainPolicy::Serve,
            upgrade_timeout: DEFAULT_UPGRADE_TIMEOUT,
            upgrade_exec: None,
            version: None,
            grace_budget: None,
            pid_file: None,
            state_file: None,
            admin: None,
            admin_token: None,
            proxy_protocol: false,
            registry: None,
            #[cfg(feature = "axum")]
            admin_routes: None,
            hooks: Hooks::new(),
            tasks: Vec::new(),
            app_metrics: Vec::new(),
            circuits: Vec::new(),
            #[cfg(feature = "tls")]
            tls: None,
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

    /// Longest wait between two pieces of a request body (default
    /// [`DEFAULT_BODY_READ_TIMEOUT`]). When it passes, the body the application reads fails
    /// and the answer is 408 with code `request_timeout` (see [`TimedBody`](super::TimedBody)).
    pub fn body_read_timeout(mut self, d: Duration) -> Self {
        self.body_read_timeout = d;
        self
    }

    /// Longest time for a whole request body, from the request head (default
    /// [`DEFAULT_BODY_TIMEOUT`]); past it, as for [`body_read_timeout`](Self::body_read_timeout).
    pub fn body_timeout(mut self, d: Duration) -> Self {
        self.body_timeout = d;
        self
    }

    /// The listen backlog of the sockets this process binds, and of those a lameduck
    /// upgrade hands it (default [`DEFAULT_LISTEN_BACKLOG`], at least 1; the kernel caps it
    /// at `net.core.somaxconn`). Sockets from systemd keep their unit's `Backlog=`.
    pub fn listen_backlog(mut self, n: u32) -> Self {
        self.listen_backlog = n;
        self
    }

    /// Largest request body in bytes (default [`DEFAULT_BODY_LIMIT`]); larger get 413.
    pub fn body_limit(mut self, n: usize) -> Self {
        self.body_limit = n;
        self
    }

    /// Most requests in flight at once (default: no limit). A request beyond it is answered
    /// at once with 503, code `overloaded` and `Retry-After: 1`, and counted in
    /// `lameduck_http_requests_shed_total`, instead of queueing until its client times out.
    /// lameduck cannot know a service's capacity: take a fixed limit from a load test (the
    /// concurrency at which latency starts to climb), or let an adaptive one follow the
    /// service's latency (see [`limit`](crate::limit); its value is on `/metrics` as
    /// `lameduck_in_flight_limit`).
    pub fn max_in_flight(mut self, limit: crate::limit::MaxInFlight) -> Self {
        self.max_in_flight = limit.start();
        self
    }

    /// Longest time a handler may take, from the request's head (default: none). A handler
    /// still running then is dropped and the request answered 503 with code
    /// `handler_timeout`: the client learns at once instead of at its own timeout. Work that
    /// must not be cut in half belongs in a task the handler spawns (and the drain waits
    /// for), not in the handler's future; a handler whose answer must report what it
    /// started calls [`RequestContext::past_point_of_no_return`](crate::context::RequestContext::past_point_of_no_return)
    /// and is no longer cut.
    pub fn request_timeout(mut self, limit: Option<Duration>) -> Self {
        self.request_timeout = limit.filter(|d| !d.is_zero());
        self
    }

    /// The access log (default [`AccessLog::Off`]): one line per request when its response
    /// is over, with method, route template (never the raw path), status, latency,
    /// response bytes, whether the body was sent in full, client address and request id.
    /// [`AccessLog::Tracing`] emits `tracing` events on
    /// [`ACCESS_LOG_TARGET`](super::ACCESS_LOG_TARGET);
    /// [`AccessLog::Json`] formats the line itself and is several times cheaper (see
    /// docs/benchmarks.md); `lameduck::logs::LogWriter` (feature `logs`) is a sink that
    /// never blocks on the disk.
    pub fn access_log(mut self, log: AccessLog) -> Self {
        self.access_log = log;
        self
    }

    /// How each request's ids (request id, trace id) reach what its handler logs (default
    /// [`RequestSpans::Off`]): a `request` span around the handler, the ids written by
    /// lameduck's JSON output without a span, or nothing. A binary using `lameduck::logs`
    /// takes the setting its output supports from `Logs::request_spans`.
    pub fn request_spans(mut self, spans: RequestSpans) -> Self {
        self.request_spans = spans;
        self
    }

    /// Return each request's id in `x-request-id` and its trace context in `traceparent`
    /// (and `tracestate`) on the response, unless the application set them (default on).
    /// Off saves two header values (two allocations) and their encoding per request, about
    /// 1,600 instructions (`benches/instructions`, lameduck-demo `--no-response-ids`); the
    /// ids are still made, logged and reachable from handlers.
    pub fn response_ids(mut self, on: bool) -> Self {
        self.response_ids = on;
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

    /// The executable an upgrade starts (default: the path this process was started with,
    /// `argv[0]` made absolute at start-up without resolving symlinks, so that a binary
    /// replaced with `mv` or a switched `releases/current` symlink is what runs next). A
    /// relative path is taken from the start-up working directory. An upgrade finding no
    /// executable file there is refused before anything is started.
    pub fn upgrade_exec(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.upgrade_exec = Some(path.into());
        self
    }

    /// The service's version, shown with the build id and the executable's path on
    /// `GET /upgrade` and in the take-over log line (default `unknown`); a binary gives
    /// `env!("CARGO_PKG_VERSION")`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Most admin connections open at once (default [`DEFAULT_ADMIN_MAX_CONNECTIONS`]); the
    /// admin listener has the main listener's header and idle timeouts too.
    pub fn admin_max_connections(mut self, n: usize) -> Self {
        self.admin_max_connections = n;
        self
    }

    /// The whole time the orchestrator gives a stop (Kubernetes'
    /// `terminationGracePeriodSeconds`, systemd's `TimeoutStopSec`). [`bind`](Self::bind)
    /// refuses a configuration whose drain delay, shutdown timeout, hook timeouts and
    /// [`GRACE_MARGIN`] do not fit in it, naming each part. Without it, the sum is logged
    /// at start-up.
    pub fn grace_budget(mut self, budget: Duration) -> Self {
        self.grace_budget = Some(budget);
        self
    }

    /// Write this process's pid to `path` once it serves (atomically: a temporary file
    /// renamed over it). A process that takes over in an upgrade writes its own; a clean
    /// exit removes the file if it still holds this process's pid.
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Record in `path` that this process serves, and at exit how it ended; export how the
    /// previous process ended as `lameduck_previous_shutdown{outcome}` (`clean`, `forced`,
    /// `hook_failed`, or `killed` for one that never recorded its end), so that an alert
    /// can see forced and incomplete shutdowns after the process that had them is gone.
    /// See [`ShutdownOutcome`](crate::lifecycle::ShutdownOutcome). Give each instance its
    /// own file (a process that finds another live process named in it says so and leaves
    /// it be); the new process of an upgrade uses the same file.
    pub fn state_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    /// What [`Server::with_registry`](super::Server::with_registry) sets.
    pub(super) fn registry(
        mut self,
        registry: std::sync::Arc<dyn crate::registry::Registry>,
    ) -> Self {
        let r = registry.clone();
        self.hooks.add_best_effort(
            HookPhase::BeforeDrain,
            "deregister",
            crate::registry::DEFAULT_DEREGISTER_TIMEOUT,
            move || async move { r.deregister().await.map_err(Into::into) },
        );
        self.registry = Some(registry);
        self
    }

    /// Require a PROXY protocol header (version 2 or 1) at the start of every connection
    /// on the main listener, as a load balancer sends with `send-proxy-v2` (default off):
    /// the client's address it names is the request's peer. A connection without a valid
    /// header within the header read timeout is closed. Turn it on only behind a balancer
    /// that always sends it: anyone who can connect directly could claim any address.
    pub fn proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }

    /// Enable `POST /drain` and `POST /undrain` on the admin listener for requests with
    /// `Authorization: Bearer <token>` (compared in constant time; a wrong or missing one
    /// answers 401 and is logged). Without a token those routes answer 404.
    ///
    /// # Panics
    /// Never; an empty token is refused by [`bind`](Self::bind).
    pub fn admin_token(mut self, token: impl Into<std::sync::Arc<str>>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// The application's own routes on the admin listener, after the built-in ones
    /// (`/livez`, `/readyz`, `/metrics`, `/upgrade`, `/drain`, `/undrain` win on a shared
    /// path). They are served under the admin listener's limits, never on the main one.
    #[cfg(feature = "axum")]
    pub fn admin_routes(mut self, routes: axum::Router) -> Self {
        self.admin_routes = Some(routes);
        self
    }

    /// Serve `/livez`, `/readyz` and `/metrics` on this address.
    pub fn admin(mut self, addr: SocketAddr) -> Self {
        self.admin = Some(addr);
        self
    }

    /// Register a best-effort shutdown hook (see [`Hooks::add_best_effort`]): its failure is
    /// a warning and leaves the exit code alone.
    pub fn best_effort_hook<F, Fut>(
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
        self.hooks.add_best_effort(phase, name, timeout, f);
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

    /// Run `task` in the background from the moment the server serves; the drain waits for
    /// it as it waits for requests (see [`tasks`](crate::tasks)). Names must be unique.
    pub fn task(mut self, task: crate::tasks::Task) -> Self {
        self.tasks.push(task);
        self
    }

    /// Export `metric` on `/metrics` beside lameduck's own (see
    /// [`AppMetric`](crate::metrics::AppMetric)). Names must be unique and outside the
    /// `lameduck_` namespace.
    pub fn metric(mut self, metric: crate::metrics::AppMetric) -> Self {
        self.app_metrics.push(metric);
        self
    }

    /// Serve HTTPS on the main listener (feature `tls`; see the
    /// [`tls` module docs](super::TlsConfig)): the pair is loaded by
    /// [`bind`](Self::bind), which fails naming the file and the problem.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: super::tls::TlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    /// Export `breaker`'s state on `/metrics` (`lameduck_circuit_state{circuit}`: 0 closed,
    /// 1 open, 2 half-open; `lameduck_circuit_rejected_total{circuit}`).
    pub fn circuit(mut self, breaker: crate::outbound::breaker::CircuitBreaker) -> Self {
        self.circuits.push(breaker);
        self
    }

    /// Register a readiness check for `/readyz`.
    pub fn readiness_check(mut self, check: ReadinessCheck) -> Self {
        self.checks.push(check);
        self
    }

    /// Bind the HTTP listener on `addr` (and the admin listener, if configured), or take
    /// over the sockets passed by socket activation (see [`activation`](super::activation)): an inherited
    /// socket replaces the address asked for. Install signal handlers on `lifecycle` before
    /// calling this (see [`Lifecycle::with_os_signals`]).
    ///
    /// # Errors
    /// [`Error::Config`] for out-of-range settings, [`Error::Bind`] naming the address
    /// that could not be bound.
    pub async fn bind(self, addr: SocketAddr, lifecycle: Lifecycle) -> Result<Server, Error> {
        crate::exe::record();
        self.validate()?;
        #[cfg(feature = "tls")]
        let tls = match &self.tls {
            Some(c) => {
                let t = super::tls::Tls::new(c.clone())?;
                // Served all the same, but said at start-up.
                let _ = t.expiry_warning();
                Some(std::sync::Arc::new(t))
            }
            None => None,
        };
        let mut inherited = activation::from_env()?.unwrap_or_default();
        // Sockets handed over by a lameduck upgrade get this process's backlog; under
        // systemd the socket unit's `Backlog=` stays.
        let relisten = inherited.upgraded_from.map(|_| self.listen_backlog);
        let http = match inherited.http.take() {
            Some(l) => adopt("HTTP", l, relisten)?,
            None => bind("HTTP", addr, self.listen_backlog)?,
        };
        let admin = match (inherited.admin.take(), self.admin) {
            (Some(l), _) => Some(adopt("admin", l, relisten)?),
            (None, Some(a)) => Some(bind("admin", a, self.listen_backlog)?),
            (None, None) => None,
        };
        let operator = crate::admin::OperatorDrain::new();
        if inherited.operator_drained {
            operator.set(true);
            tracing::warn!(
                "starting drained: the process this one took over from was drained by an operator; /readyz answers 503 and the registry is left alone until POST /undrain"
            );
        }
        let exec = self.exec_path();
        if let Err(why) = &exec {
            tracing::warn!(reason = %why, "upgrades will be refused: no executable to start");
        }
        Ok(Server {
            config: self,
            lifecycle,
            http,
            admin,
            upgraded_from: inherited.upgraded_from,
            operator,
            exec,
            #[cfg(feature = "tls")]
            tls,
        })
    }
}

impl Builder {
    /// The path an upgrade executes: [`upgrade_exec`](Self::upgrade_exec)'s made absolute,
    /// else the start-up path.
    fn exec_path(&self) -> Result<std::path::PathBuf, String> {
        match &self.upgrade_exec {
            Some(p) => Ok(crate::exe::absolute(p)),
            None => crate::exe::started_as()
                .map(std::path::Path::to_path_buf)
                .map_err(str::to_owned),
        }
    }
}

impl Builder {
    /// hyper-util's connection builder with this configuration's limits.
    pub(super) fn connection_builder(
        &self,
    ) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
        let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // hyper's own header timeout also runs while a keep-alive connection waits for its next
        // request, which would make it an idle timeout; lameduck enforces both itself.
        b.http1()
            .header_read_timeout(None)
            // lameduck answers heads over `max_header_bytes` itself (JSON 431, see
            // `head_limit.rs`); hyper's buffer is the backstop behind it.
            .max_buf_size(2 * self.max_header_bytes)
            .keep_alive(true);
        b.http2().max_header_list_size(self.max_header_bytes as u32);
        b
    }

    /// Log the shutdown budget, which the supervisor's stop timeout must exceed.
    pub(super) fn log_budget(&self) {
        let hooks = self.hooks.budget(HookPhase::AfterDrain) + self.hooks.budget(HookPhase::Final);
        let total = self.drain_delay + self.shutdown_timeout + hooks;
        tracing::info!(
        drain_delay_ms = self.drain_delay.as_millis() as u64,
        shutdown_timeout_ms = self.shutdown_timeout.as_millis() as u64,
        hooks_ms = hooks.as_millis() as u64,
        total_ms = total.as_millis() as u64,
        "shutdown budget: the supervisor's stop timeout (Kubernetes terminationGracePeriodSeconds, systemd TimeoutStopSec, docker stop -t) must exceed total_ms"
    );
    }
}
