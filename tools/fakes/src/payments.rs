//! The payment gateway: charges once per idempotency key, and fails in the ways a real one
//! does, on demand.
//!
//! - `POST /charges` with JSON `{"amount_cents": N}` and an `Idempotency-Key` header: the
//!   first use of a key charges and answers 201 `{"id", "idempotency_key", "amount_cents",
//!   "created_at"}`; the same key again answers 200 with the charge already made (no new
//!   one), as real gateways do; the same key with another amount answers 422. No key, or a
//!   body that is not such JSON: 400.
//! - `GET /charges`: every charge made, oldest first (the truth, never lagging: what tests
//!   compare with); `GET /charges/{key}`: one, 404 when that key has no charge visible yet.
//! - `PUT /control` with JSON holding any subset of [`Control`]'s fields changes the faults
//!   while running and answers the settings now; `GET /control` shows them.
//!
//! **A charge is committed as soon as its request has been read**, before any latency and
//! whatever happens to the client's connection afterwards: a client that times out, or a
//! process killed while it waits, leaves a charge it never heard about, as with a real
//! gateway.
//!
//! Faults on `POST /charges`, in this order (each share decided by a counter hashed with
//! `--seed`, so a run can be repeated):
//! 1. `--fail-rate`: answered 500 after the latency, **without** charging;
//! 2. otherwise the charge is made (or found), then the call waits `--latency-ms` plus up to
//!    `--jitter-ms`;
//! 3. `--error-after-charge-rate`: the charge exists, the answer is 500;
//! 4. `--lost-reply-rate`: the charge exists, and the connection is **reset** (`SO_LINGER`
//!    0: an RST, no answer and no FIN). A client that takes either for a refusal and
//!    charges again under a new key charges twice.
//!
//! Faults on `GET /charges/{key}`: `--lookup-fail-rate` answers 503; `--lookup-lag DUR`
//! makes a charge visible to it only DUR after it was committed (404 until then), like a
//! gateway whose reads come from a lagging replica.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lameduck::context::RequestContext;
use serde::{Deserialize, Serialize};

use crate::Dice;

/// `lameduck-fakes payments` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Listen address (port 0: any free port, printed once serving).
    #[arg(long, default_value = "127.0.0.1:8091")]
    pub listen: SocketAddr,
    /// Share of charges answered 500 without charging, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of charges made and then answered 500, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub error_after_charge_rate: f64,
    /// Share of charges made and then left without an answer: the connection is reset
    /// (SO_LINGER 0, an RST), 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub lost_reply_rate: f64,
    /// Wait this many milliseconds before answering each charge (the charge is made first).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// ...plus up to this many more, at random.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// A charge becomes visible to `GET /charges/{key}` only this long after it was made
    /// (`250ms`, `2s`; 404 until then).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub lookup_lag: Duration,
    /// Share of `GET /charges/{key}` answered 503, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub lookup_fail_rate: f64,
    /// Seed of the fault choices [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
}

impl Default for Options {
    /// No faults, on any free loopback port, seed 1.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            fail_rate: 0.0,
            error_after_charge_rate: 0.0,
            lost_reply_rate: 0.0,
            latency_ms: 0,
            jitter_ms: 0,
            lookup_lag: Duration::ZERO,
            lookup_fail_rate: 0.0,
            seed: Some(1),
        }
    }
}

/// The faults now; `PUT /control` changes any of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Share of charges answered 500 without charging.
    pub fail_rate: f64,
    /// Share of charges made and then answered 500.
    pub error_after_charge_rate: f64,
    /// Share of charges made and left without an answer (the connection reset).
    pub lost_reply_rate: f64,
    /// Fixed latency of each charge, in milliseconds.
    pub latency_ms: u64,
    /// Random extra latency, up to this many milliseconds.
    pub jitter_ms: u64,
    /// How long after it was made a charge becomes visible to `GET /charges/{key}`, in
    /// milliseconds.
    pub lookup_lag_ms: u64,
    /// Share of `GET /charges/{key}` answered 503.
    pub lookup_fail_rate: f64,
}

/// A `PUT /control` body: any subset of [`Control`]'s fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlChange {
    fail_rate: Option<f64>,
    error_after_charge_rate: Option<f64>,
    lost_reply_rate: Option<f64>,
    latency_ms: Option<u64>,
    jitter_ms: Option<u64>,
    lookup_lag_ms: Option<u64>,
    lookup_fail_rate: Option<f64>,
}

/// Longest latency, jitter or lag accepted: a fake that sleeps for hours is a typo.
const MAX_LATENCY_MS: u64 = 600_000;

impl Control {
    /// `Err` names the field (as `PUT /control` spells it) and says what is wrong.
    fn check(&self) -> Result<(), String> {
        for (name, rate) in [
            ("fail_rate", self.fail_rate),
            ("error_after_charge_rate", self.error_after_charge_rate),
            ("lost_reply_rate", self.lost_reply_rate),
            ("lookup_fail_rate", self.lookup_fail_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        for (name, ms) in [
            ("latency_ms", self.latency_ms),
            ("jitter_ms", self.jitter_ms),
            ("lookup_lag_ms", self.lookup_lag_ms),
        ] {
            if ms > MAX_LATENCY_MS {
                return Err(format!("{name} must be at most {MAX_LATENCY_MS}, got {ms}"));
            }
        }
        Ok(())
    }

    fn changed(&self, c: ControlChange) -> Control {
        Control {
            fail_rate: c.fail_rate.unwrap_or(self.fail_rate),
            error_after_charge_rate: c
                .error_after_charge_rate
                .unwrap_or(self.error_after_charge_rate),
            lost_reply_rate: c.lost_reply_rate.unwrap_or(self.lost_reply_rate),
            latency_ms: c.latency_ms.unwrap_or(self.latency_ms),
            jitter_ms: c.jitter_ms.unwrap_or(self.jitter_ms),
            lookup_lag_ms: c.lookup_lag_ms.unwrap_or(self.lookup_lag_ms),
            lookup_fail_rate: c.lookup_fail_rate.unwrap_or(self.lookup_fail_rate),
        }
    }
}

/// One charge, as the gateway answers and lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// `ch_` and a number.
    pub id: String,
    /// The key it was made under.
    pub idempotency_key: String,
    /// What was charged.
    pub amount_cents: i64,
    /// When (RFC 3339, milliseconds).
    pub created_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCharge {
    amount_cents: i64,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Every charge, oldest first, with when it was made.
    charges: Vec<(Charge, Instant)>,
    /// Key -> index in `charges`.
    by_key: HashMap<String, usize>,
}

/// The gateway's state.
#[derive(Debug)]
pub struct Gateway {
    control: Mutex<Control>,
    dice: Dice,
    calls: AtomicU64,
    lookups: AtomicU64,
    /// `POST /charges` and `GET /charges/{key}` requests received.
    requests: AtomicU64,
    ledger: Mutex<Ledger>,
    /// The address it serves on (to find a connection's socket when resetting it).
    bound: OnceLock<SocketAddr>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Gateway {
    /// A gateway with `options`' faults.
    ///
    /// # Errors
    /// A rate outside 0 to 1, or a latency or lag over ten minutes (naming the flag).
    pub fn new(options: &Options) -> anyhow::Result<Arc<Self>> {
        let control = Control {
            fail_rate: options.fail_rate,
            error_after_charge_rate: options.error_after_charge_rate,
            lost_reply_rate: options.lost_reply_rate,
            latency_ms: options.latency_ms,
            jitter_ms: options.jitter_ms,
            lookup_lag_ms: u64::try_from(options.lookup_lag.as_millis()).unwrap_or(u64::MAX),
            lookup_fail_rate: options.lookup_fail_rate,
        };
        control.check().map_err(|m| {
            let m = m.replacen("lookup_lag_ms", "lookup_lag", 1);
            let (field, rest) = m.split_once(' ').unwrap_or((&m, ""));
            anyhow::anyhow!("--{} {rest}", field.replace('_', "-"))
        })?;
        let dice = Dice::new(options.seed);
        tracing::info!(?control, seed = dice.seed(), "payment gateway");
        Ok(Arc::new(Gateway {
            control: Mutex::new(control),
            dice,
            calls: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            ledger: Mutex::new(Ledger::default()),
            bound: OnceLock::new(),
        }))
    }

    /// Every charge made so far, oldest first.
    pub fn charges(&self) -> Vec<Charge> {
        lock(&self.ledger)
            .charges
            .iter()
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// `POST /charges` and `GET /charges/{key}` requests received so far (what a client's
    /// circuit breaker should hold back while open).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The faults now.
    pub fn control(&self) -> Control {
        *lock(&self.control)
    }

    /// Record the address the gateway serves on: resetting a connection needs it.
    pub fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// The charge under `key` (made now unless it exists): `Ok((charge, new))`, or `Err`
    /// with the other amount when the key charged another amount.
    fn charge(&self, key: &str, amount_cents: i64) -> Result<(Charge, bool), i64> {
        let mut l = lock(&self.ledger);
        if let Some(&i) = l.by_key.get(key) {
            let c = &l.charges[i].0;
            return if c.amount_cents == amount_cents {
                Ok((c.clone(), false))
            } else {
                Err(c.amount_cents)
            };
        }
        let charge = Charge {
            id: format!("ch_{:08}", l.charges.len() + 1),
            idempotency_key: key.to_owned(),
            amount_cents,
            created_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        let i = l.charges.len();
        l.charges.push((charge.clone(), Instant::now()));
        l.by_key.insert(key.to_owned(), i);
        Ok((charge, true))
    }

    /// The charge under `key` if it is visible to a lookup `lag` after it was made.
    fn visible(&self, key: &str, lag: Duration) -> Option<Charge> {
        let l = lock(&self.ledger);
        let (c, at) = &l.charges[*l.by_key.get(key)?];
        (at.elapsed() >= lag).then(|| c.clone())
    }
}

/// A gateway with `options` served in this process by lameduck's server (lost replies need
/// its request context, which knows the client's address), until the runtime ends: the
/// gateway and the address it serves on. For tests that read the ledger directly.
///
/// # Errors
/// Bad options, binding.
pub async fn spawn(options: &Options) -> anyhow::Result<(Arc<Gateway>, SocketAddr)> {
    let gateway = Gateway::new(options)?;
    let server = lameduck::server::Server::builder()
        .shutdown_timeout(Duration::from_secs(5))
        .bind(options.listen, lameduck::lifecycle::Lifecycle::new())
        .await?;
    let addr = server.local_addr()?;
    gateway.set_bound(addr);
    tokio::spawn(server.serve(router(gateway.clone())));
    Ok((gateway, addr))
}

/// The gateway's routes.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/charges", get(list).post(charge))
        .route("/charges/{key}", get(one))
        .route("/control", get(show_control).put(set_control))
        .with_state(gateway)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": {"message": message.into()}});
    (status, Json(body)).into_response()
}

async fn list(State(g): State<Arc<Gateway>>) -> Json<Vec<Charge>> {
    Json(g.charges())
}

async fn one(State(g): State<Arc<Gateway>>, Path(key): Path<String>) -> Response {
    g.requests.fetch_add(1, Ordering::Relaxed);
    let c = g.control();
    let n = g.lookups.fetch_add(1, Ordering::Relaxed);
    if g.dice.unit(n, 5) < c.lookup_fail_rate {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "failing on purpose (lookup_fail_rate)",
        );
    }
    match g.visible(&key, Duration::from_millis(c.lookup_lag_ms)) {
        Some(charge) => Json(charge).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no charge under {key:?}")),
    }
}

async fn show_control(State(g): State<Arc<Gateway>>) -> Json<Control> {
    Json(g.control())
}

async fn set_control(State(g): State<Arc<Gateway>>, body: bytes::Bytes) -> Response {
    let change: ControlChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("not a control change: {e}"),
            )
        }
    };
    let mut c = lock(&g.control);
    let next = c.changed(change);
    if let Err(m) = next.check() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, m);
    }
    *c = next;
    drop(c);
    tracing::info!(control = ?next, "payment gateway: faults changed");
    Json(next).into_response()
}

async fn charge(State(g): State<Arc<Gateway>>, headers: HeaderMap, body: bytes::Bytes) -> Response {
    g.requests.fetch_add(1, Ordering::Relaxed);
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "an Idempotency-Key header is required",
        );
    };
    let new: NewCharge = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a charge: {e}")),
    };
    if new.amount_cents < 0 {
        return error(StatusCode::BAD_REQUEST, "amount_cents must be at least 0");
    }
    let c = g.control();
    let n = g.calls.fetch_add(1, Ordering::Relaxed);
    let jitter = (g.dice.unit(n, 0) * (c.jitter_ms as f64 + 1.0)).floor() as u64;
    let wait = Duration::from_millis(c.latency_ms + jitter.min(c.jitter_ms));
    if g.dice.unit(n, 1) < c.fail_rate {
        tokio::time::sleep(wait).await;
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failing on purpose (fail_rate)",
        );
    }
    // Committed before the first await: from here on, the client hanging up (or dying)
    // changes nothing.
    let committed = g.charge(&key, new.amount_cents);
    tokio::time::sleep(wait).await;
    let (charge, new_charge) = match committed {
        Ok(c) => c,
        Err(other) => {
            let m = format!(
                "Idempotency-Key {key:?} charged {other} cents, not {}",
                new.amount_cents
            );
            return error(StatusCode::UNPROCESSABLE_ENTITY, m);
        }
    };
    if g.dice.unit(n, 3) < c.error_after_charge_rate {
        tracing::info!(key, charge = %charge.id, "payment gateway: charged, answering 500 (error_after_charge_rate)");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failing on purpose (error_after_charge_rate)",
        );
    }
    if g.dice.unit(n, 2) < c.lost_reply_rate {
        // lameduck's server sets the current request's context while it polls the handler.
        let reset = RequestContext::current()
            .and_then(|ctx| ctx.peer())
            .zip(g.bound.get().copied())
            .is_some_and(|(peer, local)| crate::reset::arm(local.port(), peer));
        tracing::info!(key, charge = %charge.id, reset, "payment gateway: charged, dropping the reply (lost_reply_rate)");
        return Response::new(Body::new(Dropped));
    }
    let status = if new_charge {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(charge)).into_response()
}

/// A body that fails at once: the server closes the connection before the answer's head
/// leaves its buffer, so the client sees the connection end without an answer (an RST
/// when the socket was armed by [`crate::reset::arm`]).
#[derive(Debug)]
struct Dropped;

impl http_body::Body for Dropped {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other("reply dropped on purpose"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options::default()
    }

    #[test]
    fn a_key_charges_once_and_refuses_another_amount() {
        let g = Gateway::new(&options()).unwrap();
        let (first, new) = g.charge("k1", 500).unwrap();
        assert!(new);
        assert_eq!(g.charge("k1", 500).unwrap(), (first.clone(), false));
        assert_eq!(g.charge("k1", 501), Err(500));
        assert!(g.charge("k2", 500).unwrap().1);
        assert_eq!(g.charges().len(), 2);
        assert_eq!(g.charges()[0], first);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        for (o, flag) in [
            (
                Options {
                    fail_rate: 1.5,
                    ..options()
                },
                "--fail-rate",
            ),
            (
                Options {
                    lost_reply_rate: -0.1,
                    ..options()
                },
                "--lost-reply-rate",
            ),
            (
                Options {
                    jitter_ms: 700_000,
                    ..options()
                },
                "--jitter-ms",
            ),
            (
                Options {
                    error_after_charge_rate: f64::NAN,
                    ..options()
                },
                "--error-after-charge-rate",
            ),
            (
                Options {
                    lookup_fail_rate: 3.0,
                    ..options()
                },
                "--lookup-fail-rate",
            ),
            (
                Options {
                    lookup_lag: Duration::from_secs(3600),
                    ..options()
                },
                "--lookup-lag",
            ),
        ] {
            let e = Gateway::new(&o).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }

    #[test]
    fn a_lookup_sees_a_charge_only_after_the_lag() {
        let g = Gateway::new(&options()).unwrap();
        g.charge("k", 5).unwrap();
        assert!(g.visible("k", Duration::from_secs(60)).is_none());
        assert!(g.visible("k", Duration::ZERO).is_some());
        assert!(g.visible("other", Duration::ZERO).is_none());
    }
}
