//! The webhook receiver: accepts `POST` on any path with a JSON body
//! `{"event_id", "type", "order_id", ...}` and an `Idempotency-Key` header equal to the
//! event id, and records each accepted delivery, duplicates included. `GET /events`
//! answers the records as a JSON array of `{"event_id", "type", "order_id",
//! "received_at"}` in the order they arrived.
//!
//! - `--fail-rate F` (0 to 1): that share of deliveries is answered 500 and not recorded;
//! - `--fail-after-record-rate F` (0 to 1): that share is recorded and **then** answered
//!   500, as a receiver that committed the event and failed before answering: the sender
//!   delivers it again and the receiver sees a duplicate under the same event id (which
//!   `GET /events` shows: every delivery is listed, duplicates included);
//! - which deliveries fail is decided by a counter hashed with `--seed`, so a run can be
//!   repeated;
//! - `--latency-ms N`: every delivery waits N ms before it is answered (and recorded);
//! - a body that is not such JSON, or a key that is not the event id, is answered 400 and
//!   not recorded: the receiver checks the sender's side of the contract.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// `lameduck-fakes webhook` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Listen address (port 0: any free port, printed once serving).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Share of deliveries answered 500 and not recorded, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share of deliveries recorded and then answered 500 (the sender delivers them again:
    /// duplicates), 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub fail_after_record_rate: f64,
    /// Wait this many milliseconds before answering each delivery.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Seed of the failure choice [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// One accepted delivery, as `GET /events` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The event's id (also its `Idempotency-Key`).
    pub event_id: String,
    /// `order.created`, `order.cancelled`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The order it is about.
    pub order_id: String,
    /// When it was accepted (RFC 3339, milliseconds).
    pub received_at: String,
}

/// What a delivery's body must carry.
#[derive(Debug, Deserialize)]
struct Delivery {
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    order_id: String,
}

/// The receiver's state.
#[derive(Debug)]
pub struct Receiver {
    fail_below: u64,
    fail_after_record_below: u64,
    latency: Duration,
    dice: crate::Dice,
    count: AtomicU64,
    received: Mutex<Vec<Received>>,
}

impl Receiver {
    /// A receiver with `options`' failure rate, latency and seed.
    ///
    /// # Errors
    /// A failure rate outside 0 to 1 (naming the flag).
    pub fn new(options: &Options) -> anyhow::Result<Arc<Self>> {
        let f = options.fail_rate;
        let after = options.fail_after_record_rate;
        for (flag, rate) in [("--fail-rate", f), ("--fail-after-record-rate", after)] {
            if !(0.0..=1.0).contains(&rate) {
                anyhow::bail!("{flag} must be between 0 and 1, got {rate}");
            }
        }
        let dice = crate::Dice::new(options.seed);
        let seed = dice.seed();
        tracing::info!(
            fail_rate = f,
            fail_after_record_rate = after,
            latency_ms = options.latency_ms,
            seed,
            "webhook receiver"
        );
        Ok(Arc::new(Receiver {
            fail_below: threshold(f),
            fail_after_record_below: threshold(after),
            latency: Duration::from_millis(options.latency_ms),
            dice,
            count: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
        }))
    }

    /// Whether the n-th delivery fails: its roll is below the threshold.
    fn fails(&self, n: u64) -> bool {
        below(self.fail_below, self.dice.roll(n, 0))
    }

    /// Whether the n-th delivery, once recorded, is answered 500.
    fn fails_after_record(&self, n: u64) -> bool {
        below(self.fail_after_record_below, self.dice.roll(n, 1))
    }

    /// The deliveries accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The roll threshold of a rate: a rate of 1 is `u64::MAX`, which [`below`] treats as
/// "always".
fn threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else {
        (rate * u64::MAX as f64) as u64
    }
}

fn below(threshold: u64, roll: u64) -> bool {
    threshold == u64::MAX || roll < threshold
}

/// The receiver's routes: `POST` on any path records, `GET /events` lists.
pub fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/events", get(list).post(deliver))
        .fallback(deliver)
        .with_state(receiver)
}

async fn list(State(r): State<Arc<Receiver>>) -> Json<Vec<Received>> {
    Json(r.received())
}

async fn deliver(
    State(r): State<Arc<Receiver>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    if method != axum::http::Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "POST a delivery, or GET /events\n",
        )
            .into_response();
    }
    let delivery: Delivery = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("not a delivery: {e}\n")).into_response()
        }
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if key != delivery.event_id {
        let msg = format!(
            "Idempotency-Key {key:?} is not the event id {:?}\n",
            delivery.event_id
        );
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    if !r.latency.is_zero() {
        tokio::time::sleep(r.latency).await;
    }
    let n = r.count.fetch_add(1, Ordering::Relaxed);
    if r.fails(n) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "failing on purpose (--fail-rate)\n",
        )
            .into_response();
    }
    let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    r.received
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Received {
            event_id: delivery.event_id,
            kind: delivery.kind,
            order_id: delivery.order_id,
            received_at: at,
        });
    if r.fails_after_record(n) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "recorded, failing on purpose (--fail-after-record-rate)\n",
        )
            .into_response();
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(fail_rate: f64) -> Arc<Receiver> {
        Receiver::new(&Options {
            listen: "127.0.0.1:0".parse().unwrap(),
            fail_rate,
            fail_after_record_rate: 0.0,
            latency_ms: 0,
            seed: Some(7),
        })
        .unwrap()
    }

    #[test]
    fn the_failure_share_follows_the_rate() {
        for (rate, lo, hi) in [(0.0, 0, 0), (0.2, 1_800, 2_200), (1.0, 10_000, 10_000)] {
            let r = receiver(rate);
            let failed = (0..10_000).filter(|n| r.fails(*n)).count();
            assert!(
                (lo..=hi).contains(&failed),
                "rate {rate}: {failed} of 10000"
            );
        }
    }

    #[test]
    fn a_rate_outside_0_to_1_is_refused() {
        for bad in [-0.1, 1.5, f64::NAN] {
            let o = Options {
                listen: "127.0.0.1:0".parse().unwrap(),
                fail_rate: bad,
                fail_after_record_rate: 0.0,
                latency_ms: 0,
                seed: None,
            };
            assert!(Receiver::new(&o).is_err(), "{bad}");
            let o = Options {
                fail_rate: 0.0,
                fail_after_record_rate: bad,
                ..o
            };
            let e = Receiver::new(&o).unwrap_err().to_string();
            assert!(e.starts_with("--fail-after-record-rate"), "{e}");
        }
    }
}
