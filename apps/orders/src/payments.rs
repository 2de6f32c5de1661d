//! Paying an order through the payment gateway (`--payment-url`), so that no order is ever
//! charged twice.
//!
//! - **One key per order.** Every charge of an order carries the `Idempotency-Key`
//!   `pay_<order id>`: a retry, a restart or another replica asking again gets the charge
//!   already made, never a second one.
//! - **States** (through the service's single writer): `created -> paying -> paid` or
//!   `payment_failed` (which may be paid again, with the same key). `paying` holds a
//!   lease (`--payment-lease`, 30 s by default), longer than one attempt can last (every
//!   try bounded by its timeout, plus the back-offs); its end is the attempt's token, so a
//!   stale attempt cannot overwrite what another process settled.
//! - **The outbound stack**, outermost first: bounded retries (never past the request's
//!   drain deadline) -> circuit breaker (`lameduck_circuit_state{circuit="payments"}`) ->
//!   per-try adaptive timeout (P99 x 1.5 of the last 30 s, clamped to
//!   `--payment-timeout-min`..`--payment-timeout-max`) -> HTTP client. The breaker counts
//!   timeouts and 5xx answers as failures; while it is open, a pay call is answered 503
//!   `dependency_unavailable` at once.
//! - **An unknown outcome** (no answer, the connection dropped, 5xx after every try, a 2xx
//!   that is not a charge): the gateway may have charged. The order stays `paying`; a
//!   lookup (`GET /charges/{key}`) that finds the charge records `paid` at once, but a lookup
//!   never records a failure (a 404 may be a lagging replica). The settle task, or a later
//!   pay call, finishes it by **charging again under the same key**: the gateway answers the
//!   charge it made, or makes it now.
//! - **The drain**: a pay call in flight when the process stops waits for the gateway until
//!   the drain deadline minus [`ANSWER_MARGIN`]; then it answers 503 with the order left
//!   `paying` for the settle task (of this process's successor), so it is never abandoned.
//! - **Only an explicit refusal fails a payment**: a 4xx answer to the charge records
//!   `payment_failed`.
//! - **The settle task** (a tracked background task) looks for `paying` orders whose lease
//!   has passed (a crash, a SIGKILL, a gateway that did not answer), up to 32 a round,
//!   settled at once; it claims each (one process wins the claim) and charges it again under its key (and looks the key up if
//!   that outcome is unknown too): a charge -> `paid`, a 4xx -> `payment_failed`, anything
//!   else -> it stays `paying` and is tried again once the new lease passes. A pay call on
//!   such an order does the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use lameduck::metrics::AppMetric;
use lameduck::outbound::breaker::{BreakerConfig, BreakerError, BreakerLayer, CircuitBreaker};
use lameduck::outbound::retry::{not_open, RetryConfig, RetryPolicy};
use lameduck::outbound::timeout::{
    AdaptiveTimeoutConfig, AdaptiveTimeoutLayer, TimeoutError, TimeoutEstimator,
};
use lameduck::tasks::{TaskContext, TaskError};
use tower::retry::RetryLayer;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt as _};

use crate::db::Db;
use crate::model::{Order, PAID, PAYING};
use crate::ops::{AuditCtx, Done, Op, PayStart};
use crate::outbox::now_ms;
use crate::writer::WriteError;

/// Largest gateway answer read.
const MAX_ANSWER: usize = 64 * 1024;
/// Before the drain deadline, the time a pay call keeps for itself once it stops waiting
/// for the gateway: to answer 503 (the order left `paying` for the settle task) before the
/// server cuts it off. Far above what that takes (no write, one small answer).
pub const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// Orders the settle task claims per round (and settles at once).
const SETTLE_BATCH: i64 = 32;

/// The payment settings (flags `--payment-*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The gateway's base URL (`http://host:port`, optionally with a path prefix).
    pub url: Uri,
    /// Tries per gateway call, the first included.
    pub attempts: u32,
    /// The per-try timeout's lower clamp.
    pub timeout_min: Duration,
    /// The per-try timeout's upper clamp (also its value until enough calls were seen).
    pub timeout_max: Duration,
    /// How far back latencies count for the timeout.
    pub timeout_window: Duration,
    /// How long the breaker stays open before trial calls.
    pub breaker_open_for: Duration,
    /// How long a `paying` order belongs to the attempt that set it.
    pub lease: Duration,
    /// How often the settle task looks for `paying` orders whose lease has passed.
    pub settle_every: Duration,
}

/// The longest back-off between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_millis(200);

impl Settings {
    /// The longest one gateway call can take: every try at the timeout's upper clamp, plus
    /// the back-offs between them.
    pub fn call_budget(&self) -> Duration {
        self.timeout_max * self.attempts + MAX_BACKOFF * self.attempts.saturating_sub(1)
    }
}

/// A request to the gateway (cloned for each retry).
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    uri: Uri,
    key: String,
    body: Option<Bytes>,
}

/// Why a try failed, as the breaker and the retries see it.
#[derive(Debug, thiserror::Error)]
enum TryError {
    #[error("{0}")]
    Transport(String),
    #[error("the gateway answered {0}")]
    Status(StatusCode),
}

type CallError = BreakerError<TimeoutError<TryError>>;
type Stack = BoxCloneSyncService<Call, (StatusCode, Bytes), CallError>;

/// A charge as the gateway answers it (the fields this service needs).
#[derive(Debug, serde::Deserialize)]
struct Charge {
    id: String,
}

/// How a charge went.
#[derive(Debug)]
enum Charged {
    /// The gateway holds this charge for the order's key.
    Yes(String),
    /// The gateway refused the charge (a 4xx answer): nothing was charged.
    Refused(String),
    /// Unknown: the gateway may or may not have charged.
    Unknown(String),
}

/// Why a pay call did not end `paid`.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// Payments are off (no `--payment-url`).
    #[error("payments are off: start the service with --payment-url")]
    Off,
    /// No such order.
    #[error("no order {0}")]
    NotFound(String),
    /// The order cannot be paid in its state (cancelled, or a payment in progress).
    #[error("order {} is {} and cannot be paid now", .0.id, .0.status)]
    Conflict(Order),
    /// The gateway refused or failed the charge; the order is `payment_failed`.
    #[error("the payment failed: {0}")]
    Failed(String),
    /// The gateway cannot be reached now (circuit open, or no answer); the order is
    /// `payment_failed` or (outcome unknown) `paying` until settled.
    #[error("the payment gateway is unavailable: {why}")]
    Unavailable {
        /// What happened.
        why: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// The write failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The payment client and its state, shared by the handlers and the settle task.
#[derive(Debug, Clone)]
pub struct Payments {
    stack: Stack,
    breaker: CircuitBreaker,
    timeout: TimeoutEstimator,
    settings: Arc<Settings>,
    db: Db,
    settled: Arc<AtomicU64>,
}

impl Payments {
    /// The client for `settings`, writing through `db`.
    pub fn new(settings: Settings, db: Db) -> Self {
        let breaker = CircuitBreaker::new(BreakerConfig {
            open_for: settings.breaker_open_for,
            ..BreakerConfig::new("payments")
        });
        let timeout = TimeoutEstimator::new(AdaptiveTimeoutConfig {
            min: settings.timeout_min,
            max: settings.timeout_max,
            fallback: settings.timeout_max,
            window: settings.timeout_window,
            ..AdaptiveTimeoutConfig::new("payments")
        });
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.timeout_max));
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let policy = RetryPolicy::new(
            RetryConfig {
                attempts: settings.attempts,
                base_backoff: Duration::from_millis(20),
                max_backoff: MAX_BACKOFF,
            },
            not_open::<TimeoutError<TryError>>,
        );
        let stack = ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .layer(BreakerLayer::new(breaker.clone()))
            .layer(AdaptiveTimeoutLayer::new(timeout.clone()))
            .service_fn(move |call: Call| send(client.clone(), call));
        Self {
            stack: BoxCloneSyncService::new(stack),
            breaker,
            timeout,
            settings: Arc::new(settings),
            db,
            settled: Arc::default(),
        }
    }

    /// The circuit breaker (for its metrics).
    pub fn breaker(&self) -> CircuitBreaker {
        self.breaker.clone()
    }

    /// `orders_payment_timeout_seconds` (the per-try timeout now) and
    /// `orders_payments_settled_total` (orders the settle task finished).
    pub fn metrics(&self) -> Vec<AppMetric> {
        let t = self.timeout.clone();
        let s = self.settled.clone();
        vec![
            AppMetric::gauge(
                "orders_payment_timeout_seconds",
                "The payment gateway's per-try timeout now (P99 x 1.5, clamped)",
                move || t.current().as_secs_f64(),
            ),
            AppMetric::counter(
                "orders_payments_settled",
                "Orders left paying that the settle task finished",
                move || s.load(Ordering::Relaxed) as f64,
            ),
        ]
    }

    /// The idempotency key of `order_id`'s charges.
    pub fn key(order_id: &str) -> String {
        format!("pay_{order_id}")
    }

    fn uri(&self, path: &str) -> Uri {
        let base = self.settings.url.to_string();
        let joined = format!("{}{path}", base.trim_end_matches('/'));
        // The base was checked at start-up and the path is ours: this parses.
        joined.parse().unwrap_or_else(|_| self.settings.url.clone())
    }

    /// Pay order `id` (see the [module](self)); the order once `paid`.
    ///
    /// # Errors
    /// See [`PayError`].
    pub async fn pay(&self, id: &str, audit: AuditCtx) -> Result<Order, PayError> {
        if let Some(retry_after) = self.open_for() {
            return Err(PayError::Unavailable {
                why: "the payment gateway's circuit is open".into(),
                retry_after,
            });
        }
        let until_ms = now_ms() + self.settings.lease.as_millis() as i64;
        let begin = Op::PayBegin {
            id: id.to_owned(),
            until_ms,
            stale_only: false,
        };
        let order = match self.db.write(begin, Some(audit.clone())).await? {
            Done::PayStarted(PayStart::Started(o)) => o,
            Done::PayStarted(PayStart::NotFound) => return Err(PayError::NotFound(id.into())),
            Done::PayStarted(PayStart::Refused(o)) if o.status == PAID => return Ok(o),
            Done::PayStarted(PayStart::Refused(o)) => return Err(PayError::Conflict(o)),
            other => return Err(unexpected(&other)),
        };
        // The gateway is given until the drain deadline minus the time the answer needs;
        // then the outcome is left to the settle task, and the client hears so in time.
        let near_deadline = async {
            match lameduck::context::RequestContext::current() {
                Some(ctx) => {
                    ctx.shutdown().stop_soon().await;
                    match ctx.deadline() {
                        Some(d) => {
                            let at = d.checked_sub(ANSWER_MARGIN).unwrap_or(d);
                            tokio::time::sleep_until(at.into()).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let charged = tokio::select! {
            c = self.charge_or_find(&order) => c,
            () = near_deadline => Charged::Unknown(format!(
                "the process is stopping and its drain deadline is {} ms away",
                ANSWER_MARGIN.as_millis()
            )),
        };
        let charge_id = match &charged {
            Charged::Yes(c) => Some(c.clone()),
            Charged::Refused(_) => None,
            Charged::Unknown(why) => {
                tracing::warn!(order_id = %order.id, error = %why,
                    "payment: outcome unknown; the order stays paying until settled");
                return Err(PayError::Unavailable {
                    why: format!("{why}; the payment's outcome is unknown and it is settled once its lease has passed"),
                    retry_after: self.settings.lease,
                });
            }
        };
        let end = Op::PayEnd {
            id: order.id.clone(),
            until_ms,
            charge_id,
        };
        let now = match self.db.write(end, Some(audit)).await? {
            Done::PayEnded { order: Some(o), .. } => o,
            Done::PayEnded { order: None, .. } => return Err(PayError::NotFound(id.into())),
            other => return Err(unexpected(&other)),
        };
        match charged {
            _ if now.status == PAID => Ok(now),
            Charged::Refused(why) => Err(PayError::Failed(why)),
            // Recorded by another process meanwhile (this attempt outlived its lease).
            Charged::Yes(_) | Charged::Unknown(_) => Err(PayError::Conflict(now)),
        }
    }

    /// [`Self::charge`], and when its outcome is unknown, a look-up: one that finds the
    /// charge settles it now; anything else leaves it unknown (for the settle task, or a
    /// later pay call, which charge again).
    async fn charge_or_find(&self, order: &Order) -> Charged {
        match self.charge(order).await {
            Charged::Unknown(why) => match self.lookup(&Self::key(&order.id)).await {
                Some(charge) => Charged::Yes(charge),
                None => Charged::Unknown(why),
            },
            known => known,
        }
    }

    /// Charge `order` under its key: the gateway's charge, its refusal, or unknown.
    async fn charge(&self, order: &Order) -> Charged {
        let key = Self::key(&order.id);
        let body = serde_json::json!({ "amount_cents": order.amount_cents }).to_string();
        match self
            .call(Method::POST, "/charges", &key, Some(Bytes::from(body)))
            .await
        {
            Ok((s, body)) if s.is_success() => match serde_json::from_slice::<Charge>(&body) {
                Ok(c) => Charged::Yes(c.id),
                Err(e) => Charged::Unknown(format!(
                    "the gateway's answer ({s}) for {key} is not a charge: {e}"
                )),
            },
            Ok((s, body)) if s.is_client_error() => Charged::Refused(format!(
                "the gateway refused the charge ({s}): {}",
                String::from_utf8_lossy(&body)
            )),
            Ok((s, _)) => Charged::Unknown(format!("the gateway answered {s} for {key}")),
            Err(why) => Charged::Unknown(why),
        }
    }

    /// How long the circuit stays open, if it is.
    fn open_for(&self) -> Option<Duration> {
        (self.breaker.state() == lameduck::outbound::breaker::BreakerState::Open)
            .then_some(self.settings.breaker_open_for)
    }

    /// Ask the gateway for `key`'s charge: `Some(id)` when it shows one. Anything else
    /// (404, an error, no answer) says nothing: a gateway's reads may lag its charges.
    async fn lookup(&self, key: &str) -> Option<String> {
        match self
            .call(Method::GET, &format!("/charges/{key}"), key, None)
            .await
        {
            Ok((s, body)) if s.is_success() => {
                serde_json::from_slice::<Charge>(&body).ok().map(|c| c.id)
            }
            _ => None,
        }
    }

    /// One call through the stack; `Err(why)`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        let call = Call {
            method,
            uri: self.uri(path),
            key: key.to_owned(),
            body,
        };
        self.stack
            .clone()
            .oneshot(call)
            .await
            .map_err(|e| e.to_string())
    }

    /// Settle `paying` orders whose lease has passed, every `settle_every`, until told to
    /// stop.
    ///
    /// # Errors
    /// None: database and gateway errors are logged and tried again at the next round.
    pub async fn settle(self, ctx: TaskContext) -> Result<(), TaskError> {
        while !ctx.is_stopping() {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.settle_every) => {}
                _ = ctx.stop_soon() => break,
            }
            let stale = match self.db.stale_paying(now_ms(), SETTLE_BATCH).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!(error = %e, "payments: cannot look for orders to settle");
                    continue;
                }
            };
            // The round's orders at once: after a crash, each may wait out a slow gateway
            // (every try to its timeout, then a look-up). Each is bounded by the call
            // budget, so the round ends within about one call.
            let mut round = tokio::task::JoinSet::new();
            for id in stale {
                let this = self.clone();
                round.spawn(async move { this.settle_one(&id).await });
            }
            while round.join_next().await.is_some() {}
        }
        Ok(())
    }

    /// Claim order `id` if its lease has passed, charge it again under its key, record
    /// the outcome (nothing when it is still unknown).
    async fn settle_one(&self, id: &str) {
        let audit = AuditCtx {
            client_ip: None,
            request_id: format!("settle-{id}"),
            trace_id: None,
        };
        let until_ms = now_ms() + self.settings.lease.as_millis() as i64;
        let claim = Op::PayBegin {
            id: id.to_owned(),
            until_ms,
            stale_only: true,
        };
        let order = match self.db.write(claim, None).await {
            Ok(Done::PayStarted(PayStart::Started(o))) => o,
            Ok(_) => return, // another process claimed or settled it
            Err(e) => {
                tracing::warn!(order_id = id, error = %e, "payments: cannot claim an order to settle");
                return;
            }
        };
        let charge_id = match self.charge_or_find(&order).await {
            Charged::Yes(c) => Some(c),
            Charged::Refused(why) => {
                tracing::warn!(order_id = id, error = %why, "payments: the gateway refused the charge");
                None
            }
            Charged::Unknown(why) => {
                tracing::warn!(order_id = id, error = %why,
                    "payments: cannot settle now; trying again once the lease passes");
                return;
            }
        };
        let paid = charge_id.is_some();
        let end = Op::PayEnd {
            id: id.to_owned(),
            until_ms,
            charge_id,
        };
        match self.db.write(end, Some(audit)).await {
            Ok(Done::PayEnded { recorded: true, .. }) => {
                self.settled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    order_id = id,
                    paid,
                    "payments: settled an order left paying"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(order_id = id, error = %e, "payments: cannot record a settlement")
            }
        }
    }
}

/// A write answered with another kind of outcome than its op's: a bug.
fn unexpected(done: &Done) -> PayError {
    tracing::error!(
        ?done,
        "a payment write answered with an outcome of another kind"
    );
    PayError::Write(WriteError::Unavailable("internal error".into()))
}

/// Send one try; a 5xx is an error (the breaker counts it, the retries retry it).
async fn send(
    client: Client<HttpConnector, Full<Bytes>>,
    call: Call,
) -> Result<(StatusCode, Bytes), TryError> {
    let mut req = http::Request::builder()
        .method(call.method)
        .uri(call.uri)
        .header("idempotency-key", &call.key);
    if call.body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(call.body.unwrap_or_default()))
        .map_err(|e| TryError::Transport(format!("cannot make the request: {e}")))?;
    let res = client
        .request(req)
        .await
        .map_err(|e| TryError::Transport(crate::relay::describe(&e)))?;
    let status = res.status();
    let body = Limited::new(res.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| TryError::Transport(format!("reading the answer: {e}")))?
        .to_bytes();
    if status.is_server_error() {
        return Err(TryError::Status(status));
    }
    Ok((status, body))
}

impl PayError {
    /// `true` for a payment in progress.
    pub fn in_progress(&self) -> bool {
        matches!(self, PayError::Conflict(o) if o.status == PAYING)
    }
}
