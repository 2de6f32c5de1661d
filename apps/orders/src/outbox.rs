//! The transactional outbox: each create or cancel writes an event row in the same
//! transaction as the change (so an event exists exactly when its change committed), and the
//! relay (`relay.rs`) delivers the rows to the webhook.
//!
//! One relay delivers at a time across processes (an upgrade's two processes, replicas on
//! one PostgreSQL database): it holds the lease row `outbox_lease` (holder, expiry), renewed
//! while it works and released when it stops; another process takes it over once it has
//! expired. Expiry is compared on each process's wall clock: replicas need synchronised
//! clocks (NTP), with a skew well under [`LEASE_TTL`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row as _};

use crate::model::Order;

/// How long a relay's lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// `order.created`.
pub const ORDER_CREATED: &str = "order.created";
/// `order.cancelled`.
pub const ORDER_CANCELLED: &str = "order.cancelled";

/// An event waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its position in the outbox.
    pub seq: i64,
    /// Its id (`evt_...`), also the delivery's `Idempotency-Key`.
    pub event_id: String,
    /// The delivery's JSON body.
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// The outbox's state, as `GET /outbox` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Stats {
    /// Events not delivered yet (set-aside ones excluded).
    pub pending: i64,
    /// Age of the oldest pending event, in milliseconds (0 when none).
    pub oldest_age_ms: i64,
    /// Events set aside after the receiver refused them.
    pub set_aside: i64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A new event id: `evt_` and the order id's scheme (milliseconds, 80 random bits), drawn
/// on its own.
fn new_event_id() -> String {
    crate::model::new_id("evt_")
}

/// Write the event `kind` about `order` in `tx`, the transaction that makes the change.
///
/// # Errors
/// Database errors.
pub async fn enqueue(
    conn: &mut AnyConnection,
    kind: &str,
    order: &Order,
) -> Result<(), sqlx::Error> {
    enqueue_many(conn, kind, &[order]).await
}

/// Write one event of `kind` for each of `orders`, in their order, with one statement.
///
/// # Errors
/// Database errors.
pub async fn enqueue_many(
    conn: &mut AnyConnection,
    kind: &str,
    orders: &[&Order],
) -> Result<(), sqlx::Error> {
    if orders.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    static SQL: crate::sql::SqlCache = crate::sql::SqlCache::new();
    let dialect = crate::sql::Dialect::of(conn);
    for (at, n) in dialect.chunks(orders.len()) {
        let sql = SQL.get(dialect, n, |dialect, n| {
            format!(
                "INSERT INTO outbox (event_id, order_id, type, payload, created_ms) VALUES {}",
                crate::sql::placeholders(dialect, n, 5)
            )
        });
        let mut q = sqlx::query(&sql);
        for order in &orders[at..at + n] {
            let event_id = new_event_id();
            let payload = json!({
                "event_id": event_id,
                "type": kind,
                "order_id": order.id,
                "order": order,
            })
            .to_string();
            q = q
                .bind(event_id)
                .bind(order.id.clone())
                .bind(kind.to_string())
                .bind(payload)
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The outbox's reads, on the service's pool (its writes are [`Op`](crate::ops::Op)s).
#[derive(Debug, Clone)]
pub struct Outbox {
    pool: AnyPool,
}

const PENDING: &str = "delivered_ms IS NULL AND set_aside_ms IS NULL";

impl Outbox {
    /// The outbox in `pool`'s database.
    pub fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// The oldest pending event.
    ///
    /// # Errors
    /// Database errors.
    pub async fn next(&self) -> Result<Option<Pending>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT seq, event_id, payload, attempts FROM outbox WHERE {PENDING} ORDER BY seq LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| pending_of(&r)).transpose()
    }

    /// Pending and set-aside counts, and the oldest pending event's age.
    ///
    /// # Errors
    /// Database errors.
    pub async fn stats(&self) -> Result<Stats, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS n, MIN(created_ms) AS oldest FROM outbox WHERE {PENDING}"
        ))
        .fetch_one(&self.pool)
        .await?;
        let pending: i64 = row.try_get("n")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let set_aside: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM outbox WHERE set_aside_ms IS NOT NULL")
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
        Ok(Stats {
            pending,
            oldest_age_ms: oldest.map_or(0, |t| (now_ms() - t).max(0)),
            set_aside,
        })
    }
}

fn pending_of(r: &AnyRow) -> Result<Pending, sqlx::Error> {
    Ok(Pending {
        seq: r.try_get("seq")?,
        event_id: r.try_get("event_id")?,
        payload: r.try_get("payload")?,
        attempts: r.try_get("attempts")?,
    })
}
