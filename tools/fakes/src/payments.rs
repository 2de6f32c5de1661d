//! The payment gateway: charges once per idempotency key, and fails in the ways a real one
//! does, on demand.
//!
//! - `POST /charges` with JSON `{"amount_cents": N}` and an `Idempotency-Key` header: the
//!   first use of a key charges and answers 201 `{"id", "idempotency_key", "amount_cents",
//!   "created_at"}`; the same key again answers 200 with the same charge (no new one); the
//!   same key with another amount answers 422. No key, or a body that is not such JSON: 400.
//! - `GET /charges`: every charge made, oldest first; `GET /charges/{key}`: one, 404 when
//!   that key never charged.
//! - `PUT /control` with JSON `{"fail_rate", "lost_reply_rate", "latency_ms",
//!   "jitter_ms"}` (any subset) changes the faults while running and answers the settings
//!   now; `GET /control` shows them.
//!
//! Faults, applied to `POST /charges` only, in this order: the call waits `--latency-ms`
//! plus up to `--jitter-ms` (uniform); then a `--fail-rate` share answers 500 without
//! charging; then the charge is made (or found); then a `--lost-reply-rate` share drops the
//! connection without an answer: the charge exists, and a client that takes the lost reply
//! for a failure and charges again under a new key charges twice. Which calls fail is
//! decided by a counter hashed with `--seed`, so a run can be repeated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
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
    /// Share of charges made and then left without an answer (the connection dropped), 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub lost_reply_rate: f64,
    /// Wait this many milliseconds before answering each charge.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// ...plus up to this many more, at random.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Seed of the fault choices [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// The faults now; `PUT /control` changes any of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Share of charges answered 500 without charging.
    pub fail_rate: f64,
    /// Share of charges made and left without an answer.
    pub lost_reply_rate: f64,
    /// Fixed latency of each charge, in milliseconds.
    pub latency_ms: u64,
    /// Random extra latency, up to this many milliseconds.
    pub jitter_ms: u64,
}

/// A `PUT /control` body: any subset of [`Control`]'s fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlChange {
    fail_rate: Option<f64>,
    lost_reply_rate: Option<f64>,
    latency_ms: Option<u64>,
    jitter_ms: Option<u64>,
}

/// Longest latency or jitter accepted: a fake that sleeps for hours is a typo.
const MAX_LATENCY_MS: u64 = 600_000;

impl Control {
    fn check(&self) -> Result<(), String> {
        for (name, rate) in [
            ("fail_rate", self.fail_rate),
            ("lost_reply_rate", self.lost_reply_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        for (name, ms) in [
            ("latency_ms", self.latency_ms),
            ("jitter_ms", self.jitter_ms),
        ] {
            if ms > MAX_LATENCY_MS {
                return Err(format!("{name} must be at most {MAX_LATENCY_MS}, got {ms}"));
            }
        }
        Ok(())
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
    /// Every charge, oldest first.
    charges: Vec<Charge>,
    /// Key -> index in `charges`.
    by_key: HashMap<String, usize>,
}

/// The gateway's state.
#[derive(Debug)]
pub struct Gateway {
    control: Mutex<Control>,
    dice: Dice,
    calls: AtomicU64,
    /// `POST /charges` and `GET /charges/{key}` requests received.
    requests: AtomicU64,
    ledger: Mutex<Ledger>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Gateway {
    /// A gateway with `options`' faults.
    ///
    /// # Errors
    /// A rate outside 0 to 1, or a latency over ten minutes.
    pub fn new(options: &Options) -> anyhow::Result<Arc<Self>> {
        let control = Control {
            fail_rate: options.fail_rate,
            lost_reply_rate: options.lost_reply_rate,
            latency_ms: options.latency_ms,
            jitter_ms: options.jitter_ms,
        };
        control
            .check()
            .map_err(|m| anyhow::anyhow!("--{}", m.replacen('_', "-", 2)))?;
        let dice = Dice::new(options.seed);
        tracing::info!(?control, seed = dice.seed(), "payment gateway");
        Ok(Arc::new(Gateway {
            control: Mutex::new(control),
            dice,
            calls: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            ledger: Mutex::new(Ledger::default()),
        }))
    }

    /// Every charge made so far, oldest first.
    pub fn charges(&self) -> Vec<Charge> {
        lock(&self.ledger).charges.clone()
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

    /// The charge under `key` (made now unless it exists): `Ok((charge, new))`, or `Err`
    /// with the other amount when the key charged another amount.
    fn charge(&self, key: &str, amount_cents: i64) -> Result<(Charge, bool), i64> {
        let mut l = lock(&self.ledger);
        if let Some(&i) = l.by_key.get(key) {
            let c = &l.charges[i];
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
        l.charges.push(charge.clone());
        l.by_key.insert(key.to_owned(), i);
        Ok((charge, true))
    }
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
    let l = lock(&g.ledger);
    match l.by_key.get(&key) {
        Some(&i) => Json(l.charges[i].clone()).into_response(),
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
    let next = Control {
        fail_rate: change.fail_rate.unwrap_or(c.fail_rate),
        lost_reply_rate: change.lost_reply_rate.unwrap_or(c.lost_reply_rate),
        latency_ms: change.latency_ms.unwrap_or(c.latency_ms),
        jitter_ms: change.jitter_ms.unwrap_or(c.jitter_ms),
    };
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
    let wait = c.latency_ms + (g.dice.unit(n, 0) * (c.jitter_ms as f64 + 1.0)).floor() as u64;
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait.min(c.latency_ms + c.jitter_ms))).await;
    }
    if g.dice.unit(n, 1) < c.fail_rate {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failing on purpose (fail_rate)",
        );
    }
    let (charge, new_charge) = match g.charge(&key, new.amount_cents) {
        Ok(c) => c,
        Err(other) => {
            let m = format!(
                "Idempotency-Key {key:?} charged {other} cents, not {}",
                new.amount_cents
            );
            return error(StatusCode::UNPROCESSABLE_ENTITY, m);
        }
    };
    if g.dice.unit(n, 2) < c.lost_reply_rate {
        tracing::info!(key, charge = %charge.id, "payment gateway: charged, dropping the reply (lost_reply_rate)");
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
/// leaves its buffer, so the client sees the connection end without an answer.
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
        Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            fail_rate: 0.0,
            lost_reply_rate: 0.0,
            latency_ms: 0,
            jitter_ms: 0,
            seed: Some(1),
        }
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
        ] {
            let e = Gateway::new(&o).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }
}
