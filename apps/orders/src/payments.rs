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
//! - **An unknown outcome** (no answer, the connection dropped, 5xx after every try) is
//!   resolved by asking the gateway for the key (`GET /charges/{key}`): found -> `paid`;
//!   not found -> `payment_failed`; no answer -> the order stays `paying` and the settle
//!   task finishes it once the lease has passed.
//! - **The settle task** (a tracked background task) looks for `paying` orders whose lease
//!   has passed (a crash, a SIGKILL, a gateway that did not answer), claims each (one
//!   process wins the claim), asks the gateway about its key and records the outcome. A
//!   pay call on such an order settles it too (it charges with the same key, which
//!   answers the charge made, if any).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use lameduck::metrics::AppMetric;
use lameduck::outbound::{
    not_open, AdaptiveTimeout, AdaptiveTimeoutConfig, AdaptiveTimeoutLayer, Breaker, BreakerConfig,
    BreakerError, BreakerLayer, RetryConfig, RetryPolicy, TimeoutError,
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
/// Orders the settle task claims per round.
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
    /// Set once a try has been sent (for a call the breaker refused outright, nothing was).
    sent: Arc<AtomicBool>,
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
    /// The gateway holds no charge for the key.
    No(String),
    /// Unknown: the gateway could not be asked. `sent`: a try reached it.
    Unknown { why: String, sent: bool },
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
    breaker: Breaker,
    timeout: AdaptiveTimeout,
    settings: Arc<Settings>,
    db: Db,
    settled: Arc<AtomicU64>,
}

impl Payments {
    /// The client for `settings`, writing through `db`.
    pub fn new(settings: Settings, db: Db) -> Self {
        let breaker = Breaker::new(BreakerConfig {
            open_for: settings.breaker_open_for,
            ..BreakerConfig::new("payments")
        });
        let timeout = AdaptiveTimeout::new(AdaptiveTimeoutConfig {
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
    pub fn breaker(&self) -> Breaker {
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
        let key = Self::key(&order.id);
        let body = serde_json::json!({ "amount_cents": order.amount_cents }).to_string();
        let charged = match self
            .call(Method::POST, "/charges", &key, Some(Bytes::from(body)))
            .await
        {
            Ok((s, body)) if s.is_success() => match serde_json::from_slice::<Charge>(&body) {
                Ok(c) => Charged::Yes(c.id),
                // A 2xx whose body is not a charge: ask for the key.
                Err(_) => self.lookup(&key).await,
            },
            Ok((s, body)) => Charged::No(format!(
                "the gateway refused the charge ({s}): {}",
                String::from_utf8_lossy(&body)
            )),
            Err((why, false)) => Charged::Unknown { why, sent: false },
            Err(_) => self.lookup(&key).await,
        };
        let charge_id = match &charged {
            Charged::Yes(c) => Some(c.clone()),
            Charged::No(_) | Charged::Unknown { sent: false, .. } => None,
            Charged::Unknown { why, sent: true } => {
                tracing::warn!(order_id = %order.id, error = %why,
                    "payment: outcome unknown; the order stays paying until settled");
                return Err(PayError::Unavailable {
                    why: why.clone(),
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
            Charged::Unknown { why, .. } => Err(PayError::Unavailable {
                retry_after: self.open_for().unwrap_or(Duration::from_secs(1)),
                why,
            }),
            Charged::No(why) => Err(PayError::Failed(why)),
            // Recorded by another process meanwhile (this attempt outlived its lease).
            Charged::Yes(_) => Err(PayError::Conflict(now)),
        }
    }

    /// How long the circuit stays open, if it is.
    fn open_for(&self) -> Option<Duration> {
        (self.breaker.state() == lameduck::outbound::BreakerState::Open)
            .then_some(self.settings.breaker_open_for)
    }

    /// Ask the gateway whether `key` charged.
    async fn lookup(&self, key: &str) -> Charged {
        match self
            .call(Method::GET, &format!("/charges/{key}"), key, None)
            .await
        {
            Ok((s, body)) if s.is_success() => match serde_json::from_slice::<Charge>(&body) {
                Ok(c) => Charged::Yes(c.id),
                Err(e) => Charged::Unknown {
                    why: format!("the gateway's answer for {key} is not a charge: {e}"),
                    sent: true,
                },
            },
            Ok((StatusCode::NOT_FOUND, _)) => {
                Charged::No(format!("the gateway holds no charge for {key}"))
            }
            Ok((s, _)) => Charged::Unknown {
                why: format!("the gateway answered {s} for {key}"),
                sent: true,
            },
            Err((why, _)) => Charged::Unknown { why, sent: true },
        }
    }

    /// One call through the stack; `Err((why, sent))`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), (String, bool)> {
        let sent = Arc::new(AtomicBool::new(false));
        let call = Call {
            method,
            uri: self.uri(path),
            key: key.to_owned(),
            body,
            sent: sent.clone(),
        };
        self.stack
            .clone()
            .oneshot(call)
            .await
            .map_err(|e| (e.to_string(), sent.load(Ordering::Relaxed)))
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
            for id in stale {
                if ctx.is_stopping() {
                    break;
                }
                self.settle_one(&id).await;
            }
        }
        Ok(())
    }

    /// Claim order `id` if its lease has passed, ask the gateway, record the outcome.
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
        match self.db.write(claim, None).await {
            Ok(Done::PayStarted(PayStart::Started(_))) => {}
            Ok(_) => return, // another process claimed or settled it
            Err(e) => {
                tracing::warn!(order_id = id, error = %e, "payments: cannot claim an order to settle");
                return;
            }
        }
        let charge_id = match self.lookup(&Self::key(id)).await {
            Charged::Yes(c) => Some(c),
            Charged::No(_) => None,
            Charged::Unknown { why, .. } => {
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
    call.sent.store(true, Ordering::Relaxed);
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
