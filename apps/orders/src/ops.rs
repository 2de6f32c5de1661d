//! Every write the service makes, as a value ([`Op`]) and the statements that carry it out
//! on one connection inside a transaction the caller owns ([`apply`]). The same statements
//! run in the SQLite writer's batches (`writer.rs`, each op under its own SAVEPOINT) and in
//! a pooled transaction of their own on PostgreSQL (`db.rs`).

use std::collections::HashMap;

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Executor as _, Row as _};

use crate::model::{
    new_order_id, now_rfc3339, NewOrder, Order, CANCELLED, CREATED, PAID, PAYING, PAYMENT_FAILED,
};
use crate::outbox::{self, now_ms, LEASE_TTL, ORDER_CANCELLED, ORDER_CREATED};
use crate::sql::{list, placeholders, rows_from, Dialect, SqlCache};

mod many;
pub use many::create_many;
use many::{bind_new_order, fresh_order, insert_rows};

/// The order columns a new order is inserted with.
pub const NEW_COLUMNS: &str = "id, customer_id, sku, quantity, amount_cents, status, created_at";
/// The order columns, in [`order_of`]'s order.
pub const COLUMNS: &str =
    "id, customer_id, sku, quantity, amount_cents, status, created_at, charge_id";

/// A write.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create an order, once per idempotency key.
    Create {
        /// The order.
        new: NewOrder,
        /// Its idempotency key, if any.
        key: Option<String>,
    },
    /// Cancel a `created` order.
    Cancel {
        /// The order's id.
        id: String,
    },
    /// Mark an outbox event delivered.
    Delivered {
        /// The event's position.
        seq: i64,
    },
    /// Count a failed delivery attempt; set the event aside too when `set_aside`.
    Failed {
        /// The event's position.
        seq: i64,
        /// Why it failed.
        error: String,
        /// Set it aside.
        set_aside: bool,
    },
    /// Take or renew the outbox relay's lease for `holder`.
    Lease {
        /// Who asks.
        holder: String,
    },
    /// Give the relay's lease up if `holder` has it.
    Release {
        /// Who gives it up.
        holder: String,
    },
    /// Start paying an order: a `created` or `payment_failed` one (unless `stale_only`),
    /// or a `paying` one whose lease has passed, becomes `paying` under a new lease that
    /// ends at `until_ms`.
    PayBegin {
        /// The order's id.
        id: String,
        /// The new lease's end, in milliseconds since the epoch; also the attempt's token.
        until_ms: i64,
        /// Claim only a `paying` order whose lease has passed (the settle task).
        stale_only: bool,
    },
    /// Record how a payment ended, if the order is still `paying` under the lease `until_ms`
    /// (a stale attempt whose order another process settled changes nothing).
    PayEnd {
        /// The order's id.
        id: String,
        /// The lease the attempt holds.
        until_ms: i64,
        /// The gateway's charge (`paid`), or `None` (`payment_failed`).
        charge_id: Option<String>,
    },
}

/// The outcome of [`Op::PayBegin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayStart {
    /// Now `paying` under the requested lease.
    Started(Order),
    /// Not claimed: the order as it is (already paid, cancelled, or being paid under a
    /// lease that has not passed).
    Refused(Order),
    /// No such order.
    NotFound,
}

/// The outcome of a create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new order.
    New(Order),
    /// The idempotency key was used before with the same body: the first order.
    Replayed(Order),
    /// The idempotency key was used before with another body.
    KeyMismatch,
}

/// The outcome of a cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// Cancelled now.
    Done(Order),
    /// No such order.
    NotFound,
    /// It cannot be cancelled (already cancelled).
    Conflict(Order),
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// A create.
    Created(Created),
    /// A cancel.
    Cancelled(Cancelled),
    /// A payment's start.
    PayStarted(PayStart),
    /// A payment's end: the order now, and whether this attempt's outcome was recorded.
    PayEnded {
        /// The order as it is now (`None`: it no longer exists).
        order: Option<Order>,
        /// `false`: the order was no longer `paying` under this attempt's lease.
        recorded: bool,
    },
    /// Another write: the rows it changed.
    Rows(u64),
}

impl Done {
    /// The audit action and order this write changed, if it changed one.
    pub fn audited(&self) -> Option<(&'static str, &Order)> {
        match self {
            Done::Created(Created::New(o)) => Some(("order.created", o)),
            Done::Created(Created::Replayed(o)) => Some(("order.replayed", o)),
            Done::Cancelled(Cancelled::Done(o)) => Some(("order.cancelled", o)),
            Done::PayStarted(PayStart::Started(o)) => Some(("order.paying", o)),
            Done::PayEnded {
                order: Some(o),
                recorded: true,
            } if o.status == PAID => Some(("order.paid", o)),
            Done::PayEnded {
                order: Some(o),
                recorded: true,
            } => Some(("order.payment_failed", o)),
            _ => None,
        }
    }

    /// `true` when it wrote an outbox event (with events on).
    pub fn made_event(&self) -> bool {
        matches!(
            self,
            Done::Created(Created::New(_)) | Done::Cancelled(Cancelled::Done(_))
        )
    }
}

/// Carry `op` out on `conn`, inside the caller's transaction; `events` writes the outbox
/// events of creates and cancels.
///
/// # Errors
/// Database errors, among them a unique violation on the idempotency key when another
/// transaction inserted it concurrently (the caller rolls back and tries again, and then
/// finds it).
pub async fn apply(conn: &mut AnyConnection, op: &Op, events: bool) -> Result<Done, sqlx::Error> {
    Ok(match op {
        Op::Create { new, key } => Done::Created(create(conn, new, key.as_deref(), events).await?),
        Op::Cancel { id } => Done::Cancelled(cancel(conn, id, events).await?),
        Op::Delivered { seq } => Done::Rows(
            sqlx::query("UPDATE outbox SET delivered_ms = $1 WHERE seq = $2")
                .bind(now_ms())
                .bind(*seq)
                .execute(&mut *conn)
                .await?
                .rows_affected(),
        ),
        Op::Failed {
            seq,
            error,
            set_aside,
        } => Done::Rows(
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, last_error = $1, set_aside_ms = $2 WHERE seq = $3",
            )
            .bind(error)
            .bind(set_aside.then(now_ms))
            .bind(*seq)
            .execute(&mut *conn)
            .await?
            .rows_affected(),
        ),
        Op::Lease { holder } => {
            let now = now_ms();
            Done::Rows(
                sqlx::query(
                    "UPDATE outbox_lease SET holder = $1, expires_ms = $2 WHERE name = 'relay' AND (holder = $1 OR expires_ms < $3)",
                )
                .bind(holder)
                .bind(now + LEASE_TTL.as_millis() as i64)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected(),
            )
        }
        Op::Release { holder } => Done::Rows(
            sqlx::query("UPDATE outbox_lease SET expires_ms = 0 WHERE name = 'relay' AND holder = $1")
                .bind(holder)
                .execute(&mut *conn)
                .await?
                .rows_affected(),
        ),
        Op::PayBegin {
            id,
            until_ms,
            stale_only,
        } => Done::PayStarted(pay_begin(conn, id, *until_ms, *stale_only).await?),
        Op::PayEnd {
            id,
            until_ms,
            charge_id,
        } => {
            let status = if charge_id.is_some() {
                PAID
            } else {
                PAYMENT_FAILED
            };
            let recorded = sqlx::query(
                "UPDATE orders SET status = $1, charge_id = $2, pay_until_ms = NULL WHERE id = $3 AND status = $4 AND pay_until_ms = $5",
            )
            .bind(status)
            .bind(charge_id.as_deref())
            .bind(id)
            .bind(PAYING)
            .bind(*until_ms)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            Done::PayEnded {
                order: get(conn, id).await?,
                recorded,
            }
        }
    })
}

/// [`Op::PayBegin`]: the write first (see [`cancel`]), then the order as it is.
async fn pay_begin(
    conn: &mut AnyConnection,
    id: &str,
    until_ms: i64,
    stale_only: bool,
) -> Result<PayStart, sqlx::Error> {
    let now = now_ms();
    let sql = if stale_only {
        "UPDATE orders SET pay_until_ms = $1 WHERE id = $2 AND status = $3 AND pay_until_ms < $4"
    } else {
        "UPDATE orders SET status = $3, pay_until_ms = $1 WHERE id = $2 AND (status IN ($5, $6) OR (status = $3 AND pay_until_ms < $4))"
    };
    let mut q = sqlx::query(sql)
        .bind(until_ms)
        .bind(id)
        .bind(PAYING)
        .bind(now);
    if !stale_only {
        q = q.bind(CREATED).bind(PAYMENT_FAILED);
    }
    let claimed = q.execute(&mut *conn).await?.rows_affected() == 1;
    Ok(match get(conn, id).await? {
        None => PayStart::NotFound,
        Some(o) if claimed => PayStart::Started(o),
        Some(o) => PayStart::Refused(o),
    })
}

async fn create(
    conn: &mut AnyConnection,
    new: &NewOrder,
    key: Option<&str>,
    events: bool,
) -> Result<Created, sqlx::Error> {
    if let Some(key) = key {
        if let Some(seen) = replay(conn, new, key).await? {
            return Ok(seen);
        }
    }
    insert_new(conn, new, key, events).await.map(Created::New)
}

/// Insert a new order, its idempotency key (if any) and its event (with `events`), without
/// looking for the key first: the fast path of a create that is alone in its transaction.
///
/// # Errors
/// Database errors, among them a unique violation when the key is stored already: the
/// caller rolls back and runs the create again through [`apply`], which replays.
pub async fn insert_new(
    conn: &mut AnyConnection,
    new: &NewOrder,
    key: Option<&str>,
    events: bool,
) -> Result<Order, sqlx::Error> {
    let order = fresh_order(new, &now_rfc3339());
    let keys: Vec<(&str, String, usize)> =
        key.map(|k| (k, new.fingerprint(), 0)).into_iter().collect();
    insert_rows(conn, std::slice::from_ref(&order), &keys, events).await?;
    Ok(order)
}

/// On SQLite, [`insert_new`] as a transaction of its own, in one statement: SQLite runs a
/// statement outside `BEGIN` as its own transaction, taking the write lock as it starts
/// (waiting up to `busy_timeout`) and committing as it ends. The order and its key go in
/// together through a temporary view whose trigger does both inserts
/// ([`prepare_sqlite_writer`], on the writer's connection). This is for the writer's
/// batch of one (a quiet moment): SQLite's connection thread sends back one result, where
/// `BEGIN`, two inserts and `COMMIT` sent four, each a hand-over to the async side (and
/// with the server on one core, two context switches). Not for outbox events (their insert
/// stays a statement of its own).
///
/// # Errors
/// Whatever the error, nothing was written: a failed statement rolls its transaction back.
/// A constraint violation ([`is_constraint_violation`]) is an insert's; any other error is
/// the transaction's (the write lock, or the commit).
pub async fn insert_new_alone(
    conn: &mut AnyConnection,
    new: &NewOrder,
    key: Option<&str>,
) -> Result<Order, sqlx::Error> {
    static WITH_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO temp.{NEW_ORDER_WITH_KEY} ({NEW_COLUMNS}, key, fingerprint) VALUES ({})",
            list(Dialect::Sqlite, 1, 9)
        )
    });
    static WITHOUT_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO orders ({NEW_COLUMNS}) VALUES ({})",
            list(Dialect::Sqlite, 1, 7)
        )
    });
    let order = fresh_order(new, &now_rfc3339());
    let sql = if key.is_some() {
        &WITH_KEY
    } else {
        &WITHOUT_KEY
    };
    let mut q = bind_new_order(sqlx::query(sql.as_str()), &order);
    if let Some(key) = key {
        q = q.bind(key).bind(new.fingerprint());
    }
    q.execute(&mut *conn).await?;
    Ok(order)
}

/// The temporary view through which [`insert_new_alone`] inserts an order and its key in
/// one statement (its trigger does both inserts).
const NEW_ORDER_WITH_KEY: &str = "new_order_with_key";

/// Make the view [`insert_new_alone`] needs on the writer's SQLite connection: temporary,
/// so it lives with the connection and no migration or other connection sees it.
///
/// # Errors
/// The database refuses the statements.
pub async fn prepare_sqlite_writer(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    // The view has the order's columns and the key's two: it never holds a row, it only
    // names what an insert into it carries.
    let view = format!(
        "CREATE TEMP VIEW IF NOT EXISTS {NEW_ORDER_WITH_KEY} AS \
         SELECT {NEW_COLUMNS}, '' AS key, '' AS fingerprint FROM orders WHERE 0"
    );
    let new_values = NEW_COLUMNS
        .split(", ")
        .map(|c| format!("NEW.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let trigger = format!(
        "CREATE TEMP TRIGGER IF NOT EXISTS {NEW_ORDER_WITH_KEY}_insert \
         INSTEAD OF INSERT ON {NEW_ORDER_WITH_KEY} BEGIN \
         INSERT INTO orders ({NEW_COLUMNS}) VALUES ({new_values}); \
         INSERT INTO idempotency_keys (key, fingerprint, order_id, created_at) \
         VALUES (NEW.key, NEW.fingerprint, NEW.id, NEW.created_at); END"
    );
    conn.execute(view.as_str()).await?;
    conn.execute(trigger.as_str()).await?;
    Ok(())
}

/// Whether `e` is a constraint violation (unique, foreign key, not null, check): a
/// statement's failure, which leaves an explicit transaction open (a statement outside one
/// rolls back alone).
pub fn is_constraint_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.kind() != sqlx::error::ErrorKind::Other)
}

/// What an idempotency key seen before gives: the same order again, or a mismatch.
async fn replay(
    conn: &mut AnyConnection,
    new: &NewOrder,
    key: &str,
) -> Result<Option<Created>, sqlx::Error> {
    let Some(row) =
        sqlx::query("SELECT fingerprint, order_id FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Ok(None);
    };
    let fingerprint: String = row.try_get("fingerprint")?;
    if fingerprint != new.fingerprint() {
        return Ok(Some(Created::KeyMismatch));
    }
    let id: String = row.try_get("order_id")?;
    match get(conn, &id).await? {
        Some(order) => Ok(Some(Created::Replayed(order))),
        None => Err(sqlx::Error::RowNotFound),
    }
}

async fn cancel(
    conn: &mut AnyConnection,
    id: &str,
    events: bool,
) -> Result<Cancelled, sqlx::Error> {
    // The write comes first: a transaction that starts with a read must later upgrade its
    // lock, which SQLite can refuse without waiting.
    let done = sqlx::query("UPDATE orders SET status = $1 WHERE id = $2 AND status = $3")
        .bind(CANCELLED)
        .bind(id)
        .bind(CREATED)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let order = get(conn, id).await?;
    if let (1, Some(order), true) = (done, &order, events) {
        outbox::enqueue(conn, ORDER_CANCELLED, order).await?;
    }
    Ok(match (done, order) {
        (1, Some(order)) => Cancelled::Done(order),
        (_, Some(order)) => Cancelled::Conflict(order),
        (_, None) => Cancelled::NotFound,
    })
}

/// One order, read on `conn`.
///
/// # Errors
/// Database errors.
pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<Order>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| order_of(&r)).transpose()
}

/// An order from a row of [`COLUMNS`].
///
/// # Errors
/// A column is missing or of another type.
pub fn order_of(r: &AnyRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: r.try_get("id")?,
        customer_id: r.try_get("customer_id")?,
        sku: r.try_get("sku")?,
        quantity: r.try_get("quantity")?,
        amount_cents: r.try_get("amount_cents")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        charge_id: r.try_get("charge_id")?,
    })
}

/// The request a write came from, for its audit line.
#[derive(Debug, Clone)]
pub struct AuditCtx {
    /// The client's address.
    pub client_ip: Option<String>,
    /// The request id.
    pub request_id: String,
    /// The request's trace id (W3C, 32 hex digits), when it came from a request.
    pub trace_id: Option<String>,
}

/// The audit line of `done`, if it changed an order, stamped `ts` (RFC 3339; the lines of
/// one batch share the moment it committed, formatted once).
pub fn audit_line(done: &Done, ctx: &AuditCtx, ts: &str) -> Option<String> {
    /// The line's fields, in the order they are written (alphabetical).
    #[derive(serde::Serialize)]
    struct Line<'a> {
        action: &'a str,
        client_ip: Option<&'a str>,
        customer_id: &'a str,
        order_id: &'a str,
        request_id: &'a str,
        status: &'a str,
        trace_id: Option<&'a str>,
        ts: &'a str,
    }
    let (action, order) = done.audited()?;
    serde_json::to_string(&Line {
        action,
        client_ip: ctx.client_ip.as_deref(),
        customer_id: &order.customer_id,
        order_id: &order.id,
        request_id: &ctx.request_id,
        status: &order.status,
        trace_id: ctx.trace_id.as_deref(),
        ts,
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_line_is_one_json_object_with_its_fields_in_order() {
        let order = fresh_order(
            &NewOrder {
                customer_id: "c\"1".into(),
                sku: "s".into(),
                quantity: 1,
                amount_cents: 0,
            },
            "2026-12-03T10:00:00.000Z",
        );
        let ctx = AuditCtx {
            client_ip: None,
            request_id: "r1".into(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        };
        let ts = now_rfc3339();
        let line =
            audit_line(&Done::Created(Created::New(order.clone())), &ctx, &ts).expect("line");
        let want = format!(
            r#"{{"action":"order.created","client_ip":null,"customer_id":"c\"1","order_id":"{}","request_id":"r1","status":"created","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","ts":"#,
            order.id
        );
        assert!(line.starts_with(&want), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{line}");
        assert_eq!(audit_line(&Done::Rows(1), &ctx, &ts), None);
    }
}
