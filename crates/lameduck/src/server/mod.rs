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
//! let report = server.serve(app).await;
//! // Return it from `main` as `ExitCode::from(report.exit_code())`: exiting with
//! // `std::process::exit` would skip destructors, such as a log file's final fsync.
//! # let _ = report;
//! # Ok(())
//! # }
//! ```
//!
//! # The drain
//! On SIGTERM/SIGINT (or [`Trigger::drain`](crate::lifecycle::Trigger::drain)), the steps
//! of `drain.rs`:
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
mod admin_listener;
mod body_timeout;
mod builder;
mod conn;
mod connections;
use connections::start_listening;
mod drain;
#[cfg(feature = "fd-handoff")]
mod handoff;
mod head_limit;
mod phases;
mod pid_file;
mod proxy_protocol;
mod request_headers;
mod service;
#[cfg(feature = "tls")]
mod tls;
mod upgrade;

pub use access::{AccessLog, AccessSink, ACCESS_LOG_TARGET};
pub use body_timeout::{BodyTimeoutError, TimedBody};
pub use builder::{
    Builder, DEFAULT_ADMIN_MAX_CONNECTIONS, DEFAULT_BODY_LIMIT, DEFAULT_BODY_READ_TIMEOUT,
    DEFAULT_BODY_TIMEOUT, DEFAULT_DRAIN_DELAY, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_GRACE,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_LISTEN_BACKLOG, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HEADER_BYTES, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_UPGRADE_TIMEOUT, GRACE_MARGIN,
};
pub use builder::{
    DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES,
    DEFAULT_RELOAD_EVERY,
};
pub use drain::DRAIN_PROGRESS_INTERVAL;
#[cfg(feature = "fd-handoff")]
pub use handoff::UpgradeError;
pub use proxy_protocol::ProxyHeaderError;
#[cfg(feature = "tls")]
pub use tls::{TlsConfig, TlsError, EXPIRY_WARNING};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::admin::{Admin, UpgradeStatus};
use crate::in_flight::InFlight;
use crate::lifecycle::{state_file, Lifecycle, Phase, Shutdown, ShutdownReport, Trigger};
use crate::metrics::Metrics;
use crate::middleware::drain::DrainAdmissionLayer;
use crate::tasks::{TaskSet, TaskStates};
use conn::{ConnLimits, ConnState, Ended, TrackedIo};
use service::{ConnService, Stack};
use upgrade::Handoff;

/// The request body type the application sees: hyper's body under the body timeouts and
/// the body-size limit.
pub type RequestBody = http_body_util::Limited<TimedBody>;

/// A boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`Server::serve_service`] serves: a tower service from requests with lameduck's
/// [`RequestBody`] to responses with a body `B`, that never fails (errors are responses),
/// cloned for each connection. An axum `Router` whose state is set is one.
pub trait App<B>:
    Service<
        Request<RequestBody>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> App<B> for S where
    S: Service<
            Request<RequestBody>,
            Response = Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A response body [`Server::serve_service`] can send: bytes, from any thread, with errors that
/// box.
pub trait AppBody: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> AppBody for B where B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// A bound server, ready to [`serve`](Server::serve).
#[derive(Debug)]
pub struct Server {
    config: Builder,
    lifecycle: Lifecycle,
    http: TcpListener,
    admin: Option<TcpListener>,
    /// The pid of the process this one took the listeners over from, in an upgrade.
    upgraded_from: Option<u32>,
    operator: crate::admin::OperatorDrain,
    /// The path an upgrade executes, decided at start-up, or why there is none.
    exec: Result<std::path::PathBuf, String>,
    /// TLS on the main listener.
    #[cfg(feature = "tls")]
    tls: Option<Arc<tls::Tls>>,
}

/// What the connection tasks share, and the drain waits on.
#[derive(Debug, Clone)]
struct Shared {
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    /// Each connection starts with a PROXY protocol header.
    proxy_protocol: bool,
    tracker: TaskTracker,
    stack: Arc<Stack>,
    /// The background tasks' states (the metrics read them).
    task_states: TaskStates,
    /// TLS on the main listener.
    #[cfg(feature = "tls")]
    tls: Option<Arc<tls::Tls>>,
}

/// The accept side while serving, as the drain needs it.
struct Listeners {
    stop_accepting: CancellationToken,
    /// Set when a new process took the listening sockets over.
    handed_over: Arc<AtomicBool>,
    accept_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
    handoff: Option<Handoff>,
    upgrade_status: UpgradeStatus,
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
    pub fn shutdown(&self) -> Shutdown {
        self.lifecycle.shutdown()
    }

    /// Register in `registry` once serving, and keep it registered (again after it is
    /// lost, with back-off; not while an operator drains the process). What it registers
    /// may name the bound addresses (port 0 picks one). A before-drain hook named
    /// `deregister`, bounded by
    /// [`DEFAULT_DEREGISTER_TIMEOUT`](crate::registry::DEFAULT_DEREGISTER_TIMEOUT), removes
    /// this process's registration when the drain starts, before the listener closes. It
    /// is best-effort: the registration's lease expires on its own, so a registry that is
    /// down at the stop makes a warning, not an unclean exit.
    pub fn with_registry(
        mut self,
        registry: std::sync::Arc<dyn crate::registry::Registry>,
    ) -> Self {
        self.config = self.config.registry(registry);
        self
    }

    /// The operator's lame-duck mode (`POST /drain`), for code that follows it.
    pub fn operator_drain(&self) -> crate::admin::OperatorDrain {
        self.operator.clone()
    }

    /// A handle that can start the drain without an OS signal.
    pub fn trigger(&self) -> Trigger {
        self.lifecycle.trigger()
    }

    /// Serve an axum app until the lifecycle ends: [`Routes`](crate::middleware::route::Routes),
    /// whose route templates the server matches from their table before the handler runs,
    /// or a whole `Router`, labelled by
    /// [`RouteLabelLayer`](crate::middleware::route::RouteLabelLayer) on every route (about
    /// 1,000 instructions per request more). Returns the shutdown report, as
    /// [`serve_service`](Self::serve_service) does.
    #[cfg(feature = "axum")]
    pub async fn serve(
        mut self,
        app: impl Into<crate::middleware::route::Routes>,
    ) -> ShutdownReport {
        let (router, templates) = app.into().into_parts();
        self.config.route_templates = templates;
        // `with_state` turns every handler into a route once, here, instead of on every
        // request (as `axum::serve` does through `into_make_service`).
        self.serve_service(router.with_state(())).await
    }

    /// Serve any tower service `app` behind lameduck's middleware until the lifecycle ends;
    /// returns the shutdown report (also logged). Use [`ShutdownReport::exit_code`] as the
    /// exit code.
    pub async fn serve_service<S, B>(self, app: S) -> ShutdownReport
    where
        S: App<B>,
        B: AppBody,
    {
        let Server {
            mut config,
            mut lifecycle,
            http,
            admin,
            upgraded_from,
            operator,
            exec,
            #[cfg(feature = "tls")]
            tls,
        } = self;
        let (shared, listeners, identity) = phases::start(
            &config,
            lifecycle.shutdown(),
            (http, admin),
            app,
            &operator,
            upgraded_from,
            #[cfg(feature = "tls")]
            tls,
        );
        let (tasks, registration) = phases::ready(
            &mut config,
            &lifecycle,
            &shared,
            &listeners,
            &operator,
            upgraded_from,
            &identity,
        )
        .await;
        let upgrades = upgrade::Upgrades {
            handoff: listeners.handoff.as_ref(),
            exec: &exec,
            operator: &operator,
            timeout: config.upgrade_timeout,
            status: &listeners.upgrade_status,
        };
        let stop = upgrade::serve_until_stop(&mut lifecycle, &upgrades).await;
        let (state_path, pid_path) = (config.state_file.clone(), config.pid_file.clone());
        let report =
            drain::shut_down(&mut lifecycle, stop, config, &shared, listeners, tasks).await;
        phases::clean_up(
            &report,
            state_path.as_deref(),
            pid_path.as_deref(),
            registration,
        );
        report
    }
}

impl Shared {
    /// The per-request stack (see `service.rs`) and the per-connection settings.
    fn new(config: &Builder, shutdown: Shutdown) -> Self {
        let in_flight = InFlight::new();
        let task_states = TaskSet::states(&config.tasks);
        let mut metrics = Metrics::new()
            .with_in_flight(in_flight.clone())
            .with_shutdown(shutdown.clone())
            .with_tasks(task_states.clone());
        if let Some(path) = &config.state_file {
            metrics = metrics.with_state_file(path);
        }
        for m in &config.app_metrics {
            metrics = metrics.with_app_metric(m.clone());
        }
        for b in &config.circuits {
            metrics = metrics.with_circuit(b.clone());
        }
        if let crate::limit::InFlightLimit::Adaptive(a) = &config.max_in_flight {
            let a = a.clone();
            metrics = metrics.with_app_metric(crate::metrics::AppMetric::gauge(
                "lameduck_in_flight_limit",
                "Requests allowed in flight now (the adaptive limit)",
                move || a.current() as f64,
            ));
        }
        #[cfg(feature = "axum")]
        let route_table = config.route_templates.as_ref().map(|t| t.bind(&metrics));
        let stack = Stack {
            drain: DrainAdmissionLayer::new(shutdown.clone())
                .policy(config.drain_policy)
                .metrics(metrics.clone()),
            shutdown,
            metrics,
            in_flight,
            body_limit: config.body_limit,
            max_in_flight: config.max_in_flight.clone(),
            request_timeout: config.request_timeout,
            body_timeouts: body_timeout::BodyTimeouts {
                read: config.body_read_timeout,
                whole: config.body_timeout,
            },
            access_log: config.access_log.clone(),
            request_spans: config.request_spans,
            response_ids: config.response_ids,
            #[cfg(feature = "axum")]
            route_table,
        };
        Shared {
            builder: Arc::new(config.connection_builder()),
            limits: ConnLimits {
                max_header_bytes: config.max_header_bytes,
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
                idle_grace: config.idle_grace,
            },
            proxy_protocol: config.proxy_protocol,
            tracker: TaskTracker::new(),
            stack: Arc::new(stack),
            task_states,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Check the certificate files every `reload_every` until the drain starts.
#[cfg(feature = "tls")]
fn watch_certificate(t: &Arc<tls::Tls>, shutdown: &Shutdown) {
    let Some(every) = t.reload_every() else {
        return;
    };
    let (t, shutdown) = (t.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.stop_soon() => return,
            }
            // Refusals are logged and counted by `reload`; a new pair that expires soon is
            // warned about.
            if t.reload() == Ok(tls::Reloaded::Swapped) {
                let _ = t.expiry_warning();
            }
        }
    });
}

/// Which binary serves: `version=V build_id=B exe=PATH` (the path last, as it may hold
/// spaces).
fn identity(version: Option<&str>) -> String {
    let exe = match crate::exe::started_as() {
        Ok(p) => p.display().to_string(),
        Err(_) => "unknown".into(),
    };
    format!(
        "version={} build_id={} exe={exe}",
        version.unwrap_or("unknown"),
        crate::exe::build_id()
    )
}

/// This process serves now in place of `pid`: say so in the log and on `/upgrade` (the old
/// process no longer answers on the shared admin socket; its own view is its log).
fn announce_takeover(pid: u32, identity: &str, status: &UpgradeStatus) {
    let at = access::rfc3339(std::time::SystemTime::now());
    tracing::info!(from_pid = pid, identity, "upgrade: took over the listeners");
    status.set(format!(
        "took over from pid {pid} at {at}; this process ({}) serves: {identity}",
        std::process::id()
    ));
}
