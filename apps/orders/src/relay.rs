//! The outbox relay: a background task (`lameduck::tasks`, stopped after the requests)
//! that delivers pending outbox events to the webhook, one at a time, oldest first.
//!
//! - A delivery is `POST <webhook URL>` with the event's JSON body and its id in
//!   `Idempotency-Key`; a 2xx marks it delivered. Anything else is retried after a back-off
//!   (100 ms doubling to `--webhook-backoff-max`, 5 s by default, with equal jitter), the
//!   same event again: events are delivered in order, so those of one order arrive in the
//!   order they were committed.
//! - A 4xx other than 408 and 429 is the receiver refusing the event itself: after
//!   `--webhook-set-aside-after` such answers (5 by default) the event is set aside (kept,
//!   counted in `/outbox` and the metrics, logged) and the next one goes.
//! - Only the holder of the outbox lease delivers; the others wait for it to be released
//!   (a clean stop) or to expire (a killed process).
//! - Told to stop (once the requests are done), the relay finishes the delivery in flight
//!   and stops; what is pending waits for the next process. A delivery that reached the
//!   receiver but whose "delivered" mark was lost (SIGKILL in between) is delivered again:
//!   at least once, with the same event id.

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use lameduck::metrics::AppMetric;
use lameduck::tasks::{TaskContext, TaskError};
use tokio::sync::Notify;

use crate::db::Db;
use crate::ops::{Done, Op};
use crate::outbox::{Outbox, Pending, Stats, LEASE_TTL};

/// The longest a delivery may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry's back-off.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// How often a relay without the lease asks for it.
pub const LEASE_POLL: Duration = Duration::from_millis(500);
/// How often an idle relay looks for events another process wrote.
pub const IDLE_POLL: Duration = Duration::from_millis(200);
/// How often the pending count and age are refreshed for the metrics.
pub const STATS_EVERY: Duration = Duration::from_secs(1);

/// The relay's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where events go.
    pub url: http::Uri,
    /// The longest back-off between two attempts.
    pub backoff_max: Duration,
    /// Refusals (4xx other than 408/429) after which an event is set aside.
    pub set_aside_after: u32,
}

/// What the metrics and `/outbox` show of the relay, kept up to date by it.
#[derive(Debug, Default)]
pub struct Counters {
    pending: AtomicI64,
    oldest_age_ms: AtomicI64,
    set_aside: AtomicI64,
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
}

impl Counters {
    fn set(&self, s: Stats) {
        self.pending.store(s.pending, Ordering::Relaxed);
        self.oldest_age_ms.store(s.oldest_age_ms, Ordering::Relaxed);
        self.set_aside.store(s.set_aside, Ordering::Relaxed);
    }

    /// The metrics: `orders_outbox_pending`, `orders_outbox_oldest_age_seconds`,
    /// `orders_outbox_set_aside`, `orders_outbox_delivered_total`,
    /// `orders_outbox_failed_attempts_total`.
    pub fn metrics(self: &Arc<Self>) -> Vec<AppMetric> {
        let c = self.clone();
        let pending = move || c.pending.load(Ordering::Relaxed) as f64;
        let c = self.clone();
        let age = move || c.oldest_age_ms.load(Ordering::Relaxed) as f64 / 1e3;
        let c = self.clone();
        let aside = move || c.set_aside.load(Ordering::Relaxed) as f64;
        let c = self.clone();
        let delivered = move || c.delivered.load(Ordering::Relaxed) as f64;
        let c = self.clone();
        let failed = move || c.failed_attempts.load(Ordering::Relaxed) as f64;
        vec![
            AppMetric::gauge(
                "orders_outbox_pending",
                "Outbox events not delivered yet",
                pending,
            ),
            AppMetric::gauge(
                "orders_outbox_oldest_age_seconds",
                "Age of the oldest pending outbox event (0 when none)",
                age,
            ),
            AppMetric::gauge(
                "orders_outbox_set_aside",
                "Outbox events set aside after the receiver refused them",
                aside,
            ),
            AppMetric::counter(
                "orders_outbox_delivered",
                "Outbox events this process delivered",
                delivered,
            ),
            AppMetric::counter(
                "orders_outbox_failed_attempts",
                "Deliveries this process attempted that failed",
                failed,
            ),
        ]
    }
}

/// How one delivery went.
enum Attempt {
    Delivered,
    /// The receiver refused this event (a 4xx other than 408/429).
    Refused(String),
    /// Worth trying again: 5xx, 408, 429, connection error, timeout.
    Retry(String),
}

/// The relay task.
#[derive(Debug, Clone)]
pub struct Relay {
    db: Db,
    outbox: Outbox,
    settings: Settings,
    counters: Arc<Counters>,
    wake: Arc<Notify>,
    client: Client<HttpConnector, Full<Bytes>>,
    holder: String,
}

impl Relay {
    /// A relay delivering `db`'s outbox events as `settings` say.
    pub fn new(db: Db, settings: Settings, counters: Arc<Counters>) -> Self {
        let (outbox, wake) = (db.outbox(), db.wake());
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(DELIVERY_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let holder = format!(
            "{}-{}-{:08x}",
            crate::hostname(),
            std::process::id(),
            random() as u32
        );
        Self {
            db,
            outbox,
            settings,
            counters,
            wake,
            client,
            holder,
        }
    }

    /// Deliver until told to stop; then release the lease.
    ///
    /// # Errors
    /// None: database and delivery errors are logged and retried.
    pub async fn run(self, ctx: TaskContext) -> Result<(), TaskError> {
        let mut holding = false;
        let mut renewed = Instant::now();
        let mut refreshed: Option<Instant> = None;
        let mut backoff = BACKOFF_MIN;
        while !ctx.is_stopping() {
            if refreshed.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
                refreshed = Some(Instant::now());
                match self.outbox.stats().await {
                    Ok(s) => self.counters.set(s),
                    Err(e) => tracing::warn!(error = %e, "outbox: cannot read its state"),
                }
            }
            if !holding || renewed.elapsed() >= LEASE_TTL / 3 {
                let was = holding;
                let lease = Op::Lease {
                    holder: self.holder.clone(),
                };
                holding = match self.rows(lease).await {
                    Ok(n) => n == 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox: cannot take or renew the relay lease");
                        false
                    }
                };
                renewed = Instant::now();
                match (was, holding) {
                    (false, true) => {
                        tracing::info!(holder = %self.holder, "outbox relay: delivering (holds the lease)")
                    }
                    (true, false) => {
                        tracing::warn!("outbox relay: lost the lease; another process delivers")
                    }
                    _ => {}
                }
            }
            if !holding {
                pause(&ctx, LEASE_POLL, None).await;
                continue;
            }
            let event = match self.outbox.next().await {
                Ok(Some(e)) => e,
                Ok(None) => {
                    pause(&ctx, IDLE_POLL, Some(&self.wake)).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: cannot read the next event");
                    pause(&ctx, jitter(backoff), None).await;
                    backoff = (backoff * 2).min(self.settings.backoff_max);
                    continue;
                }
            };
            if self.deliver_one(&event).await {
                backoff = BACKOFF_MIN;
            } else {
                pause(&ctx, jitter(backoff), None).await;
                backoff = (backoff * 2).min(self.settings.backoff_max);
            }
        }
        if holding {
            let release = Op::Release {
                holder: self.holder.clone(),
            };
            if let Err(e) = self.rows(release).await {
                tracing::warn!(error = %e, "outbox: cannot release the relay lease; it expires by itself");
            }
        }
        Ok(())
    }

    /// Deliver `event` and record the outcome; `true` when the next event may go at once.
    async fn deliver_one(&self, event: &Pending) -> bool {
        let recorded = match self.attempt(event).await {
            Attempt::Delivered => {
                self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                let r = self.rows(Op::Delivered { seq: event.seq }).await;
                if r.is_ok() {
                    return true;
                }
                r
            }
            Attempt::Refused(why) => {
                self.counters
                    .failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                let aside = event.attempts + 1 >= i64::from(self.settings.set_aside_after);
                if aside {
                    tracing::error!(event_id = %event.event_id, attempts = event.attempts + 1, error = %why,
                        "outbox: the receiver refuses this event; set aside");
                } else {
                    tracing::warn!(event_id = %event.event_id, attempts = event.attempts + 1, error = %why,
                        "outbox: the receiver refused this event");
                }
                let r = self
                    .rows(Op::Failed {
                        seq: event.seq,
                        error: why,
                        set_aside: aside,
                    })
                    .await;
                if aside && r.is_ok() {
                    return true;
                }
                r
            }
            Attempt::Retry(why) => {
                self.counters
                    .failed_attempts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event_id = %event.event_id, attempts = event.attempts + 1, error = %why,
                    "outbox: delivery failed; retrying");
                self.rows(Op::Failed {
                    seq: event.seq,
                    error: why,
                    set_aside: false,
                })
                .await
            }
        };
        if let Err(e) = recorded {
            // Delivered but not marked: it goes again (same event id), which receivers
            // deduplicate.
            tracing::warn!(event_id = %event.event_id, error = %e, "outbox: cannot record the delivery's outcome");
        }
        false
    }

    /// Write `op` (through the SQLite writer, or a pooled transaction); the rows changed.
    async fn rows(&self, op: Op) -> Result<u64, String> {
        match self.db.write(op, None).await {
            Ok(Done::Rows(n)) => Ok(n),
            Ok(other) => Err(format!("unexpected outcome {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn attempt(&self, event: &Pending) -> Attempt {
        let req = http::Request::post(self.settings.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", &event.event_id)
            .body(Full::new(Bytes::from(event.payload.clone())));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Attempt::Refused(format!("cannot make the request: {e}")),
        };
        let sent = tokio::time::timeout(DELIVERY_TIMEOUT, async {
            let res = self.client.request(req).await?;
            let status = res.status();
            // Read the body so that the connection can be reused.
            let _ = res.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await;
        match sent {
            Err(_) => Attempt::Retry(format!("no answer within {DELIVERY_TIMEOUT:?}")),
            Ok(Err(e)) => Attempt::Retry(describe(&e)),
            Ok(Ok(s)) if s.is_success() => Attempt::Delivered,
            Ok(Ok(s)) if s.is_client_error() && s != 408 && s != 429 => {
                Attempt::Refused(format!("status {}", s.as_u16()))
            }
            Ok(Ok(s)) => Attempt::Retry(format!("status {}", s.as_u16())),
        }
    }
}

/// Wait `d`, or less when told to stop (or woken, when `wake` is given).
async fn pause(ctx: &TaskContext, d: Duration, wake: Option<&Notify>) {
    let woken = async {
        match wake {
            Some(n) => n.notified().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = ctx.stop_soon() => {}
        _ = woken => {}
    }
}

/// Equal jitter: half of `d`, plus up to the other half at random, so that relays retrying
/// against a recovering receiver do not come back in step.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let nanos = half.as_nanos().max(1) as u64;
    half + Duration::from_nanos(random() % nanos)
}

/// A random number from the standard library's per-process hash keys.
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// An error and its sources, `: `-separated (a client error's own text says little).
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    format!("{e}: {}", source_chain(e))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_the_whole() {
        for _ in 0..1000 {
            let j = jitter(Duration::from_millis(400));
            assert!(
                j >= Duration::from_millis(200) && j < Duration::from_millis(400),
                "{j:?}"
            );
        }
    }
}
