//! The admin listener: `/livez`, `/readyz` and `/metrics`, on a separate socket (loopback by
//! default) that keeps serving until the process exits, also while draining.
//!
//! - `GET /livez`: 200 while the process runs.
//! - `GET /readyz`: 200 while serving and every [`ReadinessCheck`] passes; 503 from the
//!   moment draining starts or while a check fails, with the reason in the body. An
//!   [advisory](ReadinessCheck::advisory) check's failure is a `warning:` line in a 200's
//!   body instead.
//! - `GET /metrics`: Prometheus text format ([`Metrics::render`]).
//! - `GET /upgrade`: the outcome of the last SIGHUP upgrade (the new pid, or why it rolled
//!   back), or `no upgrade yet`.
//!
//! [`Server`](crate::server::Server) serves it when given
//! [`Builder::admin`](crate::server::Builder::admin), with the same header and idle
//! timeouts as the main listener and a small connection cap
//! ([`Builder::admin_max_connections`](crate::server::Builder::admin_max_connections));
//! readiness checks come from
//! [`Builder::readiness_check`](crate::server::Builder::readiness_check):
//!
//! ```
//! use lameduck::admin::{Admin, ReadinessCheck};
//! use lameduck::lifecycle::{Lifecycle, Phase};
//! use lameduck::metrics::Metrics;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let lifecycle = Lifecycle::new();
//! let db = ReadinessCheck::new("database", || async { Ok(()) });
//! let admin = Admin::new(lifecycle.shutdown(), Metrics::new(), vec![db]);
//! let readyz = || http::Request::get("/readyz").body(()).unwrap();
//! assert_eq!(admin.handle(readyz()).await.status(), 503); // still starting
//! lifecycle.set_phase(Phase::Serving);
//! assert_eq!(admin.handle(readyz()).await.status(), 200);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::lifecycle::{Phase, Shutdown};
use crate::metrics::Metrics;

/// How long one readiness check may take before it counts as failed.
pub const READINESS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// An application readiness check (database reachable, cache warm...). It returns `Err`
/// with a reason when the process should not get traffic.
#[derive(Clone)]
pub struct ReadinessCheck {
    name: Arc<str>,
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
    advisory: bool,
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("name", &self.name)
            .field("advisory", &self.advisory)
            .finish_non_exhaustive()
    }
}

impl ReadinessCheck {
    /// A named check; `f` is called on every `/readyz`, cut off after
    /// [`READINESS_CHECK_TIMEOUT`].
    pub fn new<F, Fut>(name: impl Into<Arc<str>>, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            name: name.into(),
            check: Arc::new(move || Box::pin(f())),
            advisory: false,
        }
    }

    /// A named check whose failure does not fail readiness: `/readyz` stays 200 and its
    /// body gains a line `warning: NAME: REASON`. For a degraded state that should still
    /// get traffic (reads served while writes are refused), which an operator and a
    /// dashboard should see.
    pub fn advisory<F, Fut>(name: impl Into<Arc<str>>, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self {
            advisory: true,
            ..Self::new(name, f)
        }
    }

    async fn run(&self) -> Result<(), String> {
        match tokio::time::timeout(READINESS_CHECK_TIMEOUT, (self.check)()).await {
            Ok(r) => r.map_err(|e| format!("{}: {e}", self.name)),
            Err(_) => Err(format!("{}: timed out", self.name)),
        }
    }
}

/// What `POST /reload-tls` runs: the answer's text, or why the new pair was refused.
pub type ReloadTls = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The admin endpoints' state.
#[derive(Clone)]
pub struct Admin {
    shutdown: Shutdown,
    metrics: Metrics,
    checks: Arc<[ReadinessCheck]>,
    upgrade: UpgradeStatus,
    operator: OperatorDrain,
    /// The bearer token of `POST /drain` and `/undrain`; without one they answer 404. Kept
    /// as its SHA-256 digest: offered tokens are compared digest to digest.
    token: Option<[u8; 32]>,
    /// Refused requests, logged at most once per [`REFUSALS_LOGGED_EVERY`].
    refusals: Arc<RefusalLog>,
    /// `POST /reload-tls` (with TLS on).
    reload_tls: Option<ReloadTls>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("shutdown", &self.shutdown)
            .field("upgrade", &self.upgrade)
            .field("operator", &self.operator)
            .field("token", &self.token.as_ref().map(|_| "*****"))
            .field("reload_tls", &self.reload_tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Lame-duck mode set by an operator (`POST /drain` on the admin listener): `/readyz`
/// answers 503 and the process leaves its service registry, while it keeps serving what
/// arrives; `POST /undrain` undoes it. Cheap to clone; clones share the mode. Follow it
/// with [`subscribe`](Self::subscribe) (a registry does, to deregister and register
/// again).
#[derive(Debug, Clone)]
pub struct OperatorDrain(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for OperatorDrain {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl OperatorDrain {
    /// Not drained.
    pub fn new() -> Self {
        Self::default()
    }

    /// Enter (`true`) or leave (`false`) lame-duck mode; `true` when that changed it.
    pub fn set(&self, drained: bool) -> bool {
        self.0
            .send_if_modified(|now| std::mem::replace(now, drained) != drained)
    }

    /// Whether the process is drained by an operator.
    pub fn is_drained(&self) -> bool {
        *self.0.borrow()
    }

    /// Follow the mode as it changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.subscribe()
    }
}

/// The outcome of the last upgrade, shared between the server and `/upgrade`.
#[derive(Debug, Clone, Default)]
pub struct UpgradeStatus(Arc<std::sync::Mutex<Option<String>>>);

impl UpgradeStatus {
    /// Record an outcome (one line).
    pub fn set(&self, outcome: String) {
        *crate::sync::lock(&self.0) = Some(outcome);
    }

    /// The last outcome, if any.
    pub fn get(&self) -> Option<String> {
        crate::sync::lock(&self.0).clone()
    }
}

impl Admin {
    /// Admin endpoints over a lifecycle, a metrics registry and readiness checks.
    pub fn new(shutdown: Shutdown, metrics: Metrics, checks: Vec<ReadinessCheck>) -> Self {
        Self {
            shutdown,
            metrics,
            checks: checks.into(),
            upgrade: UpgradeStatus::default(),
            operator: OperatorDrain::default(),
            token: None,
            refusals: Arc::default(),
            reload_tls: None,
        }
    }

    /// Serve `POST /reload-tls` with `reload` (same bearer token as `POST /drain`; 404
    /// without a token): 200 with what it did, 422 with why a new pair was refused.
    pub fn with_tls_reload(mut self, reload: ReloadTls) -> Self {
        self.reload_tls = Some(reload);
        self
    }

    /// Serve `POST /drain` and `POST /undrain` over `operator`, for requests that carry
    /// `Authorization: Bearer <token>`. Without this they answer 404.
    pub fn with_operator_drain(
        mut self,
        operator: OperatorDrain,
        token: impl Into<Arc<str>>,
    ) -> Self {
        self.operator = operator;
        self.token = Some(digest(token.into().as_bytes()));
        self
    }

    /// Show `status` at `/upgrade`.
    pub fn with_upgrade_status(mut self, status: UpgradeStatus) -> Self {
        self.upgrade = status;
        self
    }

    /// `Ok` (with the failed advisory checks' warnings) when the process should receive
    /// traffic, else the reasons it should not.
    pub async fn readiness(&self) -> Result<Vec<String>, String> {
        let phase = self.shutdown.phase();
        if phase != Phase::Serving {
            return Err(format!("phase is {phase}"));
        }
        if self.operator.is_drained() {
            return Err("operator drain (POST /undrain to undo)".into());
        }
        let (mut failed, mut warnings) = (Vec::new(), Vec::new());
        for c in self.checks.iter() {
            if let Err(e) = c.run().await {
                if c.advisory {
                    warnings.push(e);
                } else {
                    failed.push(e);
                }
            }
        }
        if failed.is_empty() {
            Ok(warnings)
        } else {
            Err(failed.join("; "))
        }
    }

    /// Answer one admin request (404 for a path it does not serve).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        match self.answer(&req).await {
            Some(res) => res,
            None => text(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }

    /// The answer of a built-in route, or `None` for a path it does not serve (which the
    /// application's own admin routes may).
    pub async fn answer<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let path = req.uri().path();
        if matches!(path, "/drain" | "/undrain") {
            return Some(self.operator_request(req, path == "/drain"));
        }
        if path == "/reload-tls" {
            return Some(self.reload_tls_request(req));
        }
        if !matches!(path, "/livez" | "/readyz" | "/upgrade" | "/metrics") {
            return None;
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Some(text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: the admin routes are read-only\n".into(),
            ));
        }
        Some(match path {
            "/livez" => text(
                StatusCode::OK,
                format!("alive, phase {}\n", self.shutdown.phase()),
            ),
            "/readyz" => match self.readiness().await {
                Ok(warnings) => {
                    let mut body = String::from("ready\n");
                    for w in warnings {
                        body.push_str(&format!("warning: {w}\n"));
                    }
                    text(StatusCode::OK, body)
                }
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            "/upgrade" => {
                let outcome = self
                    .upgrade
                    .get()
                    .unwrap_or_else(|| "no upgrade yet".into());
                text(StatusCode::OK, format!("{outcome}\n"))
            }
            _ => {
                let mut res = text(StatusCode::OK, self.metrics.render());
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                res
            }
        })
    }

    /// The refusal of an operator request (`POST` with the bearer token), if any: 404
    /// without a configured token, 405 for another method, 401 (logged) without the right
    /// token.
    fn refuse_operator<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let Some(token) = &self.token else {
            return Some(text(StatusCode::NOT_FOUND, "not found\n".into()));
        };
        if req.method() != Method::POST {
            return Some(text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into()));
        }
        let offered = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if !offered.is_some_and(|t| same_secret(&digest(t), token)) {
            let peer = req.extensions().get::<AdminPeer>().map(|p| p.0);
            self.refusals
                .refused(std::time::Instant::now(), peer, req.uri().path());
            return Some(text(StatusCode::UNAUTHORIZED, "unauthorized\n".into()));
        }
        None
    }

    /// `POST /reload-tls`: 404 without TLS or without a token, else as
    /// [`with_tls_reload`](Self::with_tls_reload) says.
    fn reload_tls_request<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let Some(reload) = &self.reload_tls else {
            return text(StatusCode::NOT_FOUND, "not found\n".into());
        };
        if let Some(refused) = self.refuse_operator(req) {
            return refused;
        }
        match reload() {
            Ok(done) => text(StatusCode::OK, format!("{done}\n")),
            Err(why) => text(StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")),
        }
    }

    /// `POST /drain` (`drain`) or `POST /undrain`: see [`refuse_operator`](Self::refuse_operator)
    /// for the refusals.
    fn operator_request<B>(&self, req: &Request<B>, drain: bool) -> Response<Full<Bytes>> {
        if let Some(refused) = self.refuse_operator(req) {
            return refused;
        }
        let changed = self.operator.set(drain);
        let (now, verb) = if drain {
            (
                "drained: readiness fails, requests are still served",
                "drain",
            )
        } else {
            ("undrained: ready again", "undrain")
        };
        tracing::info!(changed, "operator {verb}: {now}");
        text(StatusCode::OK, format!("{now}\n"))
    }
}

/// SHA-256 of a token: what is compared, so that the comparison's time depends on neither
/// token's length nor content.
fn digest(token: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token).into()
}

/// `a == b` for two digests, in a time that does not depend on where they differ.
fn same_secret(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The client address of an admin request (the admin listener puts it in the request's
/// extensions).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdminPeer(pub(crate) std::net::SocketAddr);

/// How often a refused admin request may be logged at most, per listener.
pub const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);

/// Refused admin requests (wrong or missing token): one WARN line at most per
/// [`REFUSALS_LOGGED_EVERY`], counting the refusals since the previous line and naming the
/// last client, so that a client hammering with a wrong token cannot flood the log.
#[derive(Debug, Default)]
struct RefusalLog(std::sync::Mutex<Refusals>);

#[derive(Debug, Default)]
struct Refusals {
    last_line: Option<std::time::Instant>,
    since_line: u64,
}

impl RefusalLog {
    /// A refusal at `now` from `peer` for `path`; `true` when it was logged.
    fn refused(
        &self,
        now: std::time::Instant,
        peer: Option<std::net::SocketAddr>,
        path: &str,
    ) -> bool {
        let mut r = crate::sync::lock(&self.0);
        r.since_line += 1;
        if r.last_line
            .is_some_and(|t| now.saturating_duration_since(t) < REFUSALS_LOGGED_EVERY)
        {
            return false;
        }
        let refused = std::mem::take(&mut r.since_line);
        r.last_line = Some(now);
        drop(r);
        tracing::warn!(
            refused,
            last_client = peer.map(tracing::field::display),
            last_path = path,
            "admin requests refused: wrong or missing bearer token ({refused} since the last such line; at most one line every 10 s)"
        );
        true
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    #[test]
    fn refusals_are_logged_once_per_10_s_with_the_count_since_the_last_line() {
        let log = RefusalLog::default();
        let t0 = std::time::Instant::now();
        assert!(log.refused(t0, None, "/drain"), "the first is logged");
        for i in 1..2000u64 {
            let at = t0 + Duration::from_millis(i);
            assert!(!log.refused(at, None, "/drain"));
        }
        assert_eq!(crate::sync::lock(&log.0).since_line, 1999);
        assert!(log.refused(t0 + REFUSALS_LOGGED_EVERY, None, "/drain"));
        assert_eq!(crate::sync::lock(&log.0).since_line, 0);
    }

    #[test]
    fn tokens_are_compared_as_digests() {
        let token = digest(b"s3cret-token");
        assert!(same_secret(&digest(b"s3cret-token"), &token));
        assert!(!same_secret(&digest(b"s3cret-toke"), &token));
        assert!(!same_secret(&digest(b"s3cret-token-and-more"), &token));
        assert!(!same_secret(&digest(b""), &token));
    }

    fn post(path: &str, token: Option<&str>) -> Request<()> {
        let mut r = Request::builder().method(Method::POST).uri(path);
        if let Some(t) = token {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        r.body(()).unwrap()
    }

    #[tokio::test]
    async fn operator_drain_needs_a_configured_token_and_the_right_one() {
        let lc = Lifecycle::new();
        lc.set_phase(Phase::Serving);
        let closed = Admin::new(lc.shutdown(), Metrics::new(), vec![]);
        assert_eq!(closed.handle(post("/drain", Some("x"))).await.status(), 404);
        let operator = OperatorDrain::new();
        let admin = Admin::new(lc.shutdown(), Metrics::new(), vec![])
            .with_operator_drain(operator.clone(), "s3cret");
        for bad in [None, Some("wrong"), Some("s3cre"), Some("s3cretx")] {
            assert_eq!(
                admin.handle(post("/drain", bad)).await.status(),
                401,
                "{bad:?}"
            );
        }
        assert_eq!(admin.handle(get("/drain")).await.status(), 405);
        assert!(!operator.is_drained());
        assert_eq!(
            admin.handle(post("/drain", Some("s3cret"))).await.status(),
            200
        );
        assert!(operator.is_drained());
        assert_eq!(admin.handle(get("/readyz")).await.status(), 503);
        assert_eq!(admin.handle(get("/livez")).await.status(), 200);
        assert_eq!(
            admin.handle(post("/livez", Some("s3cret"))).await.status(),
            405
        );
        assert_eq!(
            admin
                .handle(post("/undrain", Some("s3cret")))
                .await
                .status(),
            200
        );
        assert!(!operator.is_drained());
        assert_eq!(admin.handle(get("/readyz")).await.status(), 200);
    }

    #[tokio::test]
    async fn readyz_follows_phase_and_checks_while_livez_stays_up() {
        let lc = Lifecycle::new();
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = ok.clone();
        let check = ReadinessCheck::new("db", move || {
            let up = flag.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("unreachable".to_string())
                }
            }
        });
        let admin = Admin::new(lc.shutdown(), Metrics::new(), vec![check]);
        assert_eq!(admin.handle(get("/readyz")).await.status(), 503, "starting");
        lc.set_phase(Phase::Serving);
        assert_eq!(admin.handle(get("/readyz")).await.status(), 200);
        ok.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(admin.readiness().await, Err("db: unreachable".into()));
        ok.store(true, std::sync::atomic::Ordering::Relaxed);
        lc.begin_drain(Duration::from_secs(1));
        assert_eq!(admin.handle(get("/readyz")).await.status(), 503);
        assert_eq!(admin.handle(get("/livez")).await.status(), 200);
        assert_eq!(admin.handle(get("/nope")).await.status(), 404);
    }

    #[tokio::test]
    async fn an_advisory_check_that_fails_is_a_warning_in_a_200() {
        let lc = Lifecycle::new();
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = ok.clone();
        let check = ReadinessCheck::advisory("disk", move || {
            let up = flag.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("writes refused".to_string())
                }
            }
        });
        let admin = Admin::new(lc.shutdown(), Metrics::new(), vec![check]);
        lc.set_phase(Phase::Serving);
        let body = |r: Response<Full<Bytes>>| async move {
            use http_body_util::BodyExt as _;
            let status = r.status();
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8(bytes.to_vec()).unwrap())
        };
        assert_eq!(
            body(admin.handle(get("/readyz")).await).await,
            (StatusCode::OK, "ready\n".to_string())
        );
        ok.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            body(admin.handle(get("/readyz")).await).await,
            (
                StatusCode::OK,
                "ready\nwarning: disk: writes refused\n".to_string()
            )
        );
        // Draining still fails readiness, warning or not.
        lc.begin_drain(Duration::from_secs(1));
        assert_eq!(admin.handle(get("/readyz")).await.status(), 503);
    }
}
