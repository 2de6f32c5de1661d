//! Persistence on SQLite (default) or PostgreSQL through sqlx's `Any` driver: one set of
//! queries (`$N` placeholders work on both), migrations embedded per backend.
//!
//! SQLite runs in WAL mode with `synchronous=FULL`: a commit has been fsync'd when it
//! returns, so a 201 sent after it survives a SIGKILL or power loss. Every write
//! transaction starts with a write, so SQLite never has to upgrade a read lock (which can
//! fail with SQLITE_BUSY without waiting).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor as _, Row as _};

use crate::model::{new_order_id, now_rfc3339, NewOrder, Order, CANCELLED, CREATED};
use crate::outbox::{self, Outbox, ORDER_CANCELLED, ORDER_CREATED};

/// How long a request waits for a database connection before it is answered 503.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

const COLUMNS: &str = "id, customer_id, sku, quantity, amount_cents, status, created_at";

/// The database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    sqlite: bool,
    /// Write an outbox event with each change (when a webhook receives them).
    events: bool,
    /// Notified when a change with an event commits (the relay waits on it when idle).
    wake: std::sync::Arc<tokio::sync::Notify>,
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

impl Db {
    /// Connect, set SQLite's durability pragmas, and apply the migrations.
    ///
    /// # Errors
    /// The database cannot be opened, reached or migrated; the message names it (without
    /// the password).
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let shown = crate::config::redact_url(url);
        let url = if sqlite {
            sqlite_url(url)?
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("cannot open database {shown}"))?;
        let migrated = if sqlite {
            sqlx::migrate!("./migrations/sqlite").run(&pool).await
        } else {
            sqlx::migrate!("./migrations/postgres").run(&pool).await
        };
        migrated.with_context(|| format!("cannot migrate database {shown}"))?;
        Ok(Self {
            pool,
            sqlite,
            events: false,
            wake: std::sync::Arc::default(),
        })
    }

    /// Write an outbox event in the transaction of each create and cancel (see
    /// [`outbox`](crate::outbox)).
    pub fn with_events(mut self, on: bool) -> Self {
        self.events = on;
        self
    }

    /// Notified after each commit that wrote an outbox event.
    pub fn wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// The outbox's queries.
    pub fn outbox(&self) -> Outbox {
        Outbox::new(self.pool.clone())
    }

    /// Create an order, once per idempotency key.
    ///
    /// # Errors
    /// Database errors.
    pub async fn create(&self, new: &NewOrder, key: Option<&str>) -> Result<Created, sqlx::Error> {
        let order = Order {
            id: new_order_id(),
            customer_id: new.customer_id.clone(),
            sku: new.sku.clone(),
            quantity: new.quantity,
            amount_cents: new.amount_cents,
            status: CREATED.into(),
            created_at: now_rfc3339(),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO orders ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(&order.id)
        .bind(&order.customer_id)
        .bind(&order.sku)
        .bind(order.quantity)
        .bind(order.amount_cents)
        .bind(&order.status)
        .bind(&order.created_at)
        .execute(&mut *tx)
        .await?;
        if let Some(key) = key {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (key, fingerprint, order_id, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(key)
            .bind(new.fingerprint())
            .bind(&order.id)
            .bind(&order.created_at)
            .execute(&mut *tx)
            .await;
            if let Err(e) = inserted {
                if !is_unique_violation(&e) {
                    return Err(e);
                }
                tx.rollback().await?;
                return self.replay(new, key).await;
            }
        }
        if self.events {
            outbox::enqueue(&mut tx, ORDER_CREATED, &order).await?;
        }
        tx.commit().await?;
        if self.events {
            self.wake.notify_one();
        }
        Ok(Created::New(order))
    }

    async fn replay(&self, new: &NewOrder, key: &str) -> Result<Created, sqlx::Error> {
        let row = sqlx::query("SELECT fingerprint, order_id FROM idempotency_keys WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        let fingerprint: String = row.try_get("fingerprint")?;
        if fingerprint != new.fingerprint() {
            return Ok(Created::KeyMismatch);
        }
        let id: String = row.try_get("order_id")?;
        match self.get(&id).await? {
            Some(order) => Ok(Created::Replayed(order)),
            None => Err(sqlx::Error::RowNotFound),
        }
    }

    /// One order.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get(&self, id: &str) -> Result<Option<Order>, sqlx::Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| order_of(&r)).transpose()
    }

    /// Up to `limit` orders with ids after `after`, in id (creation) order.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list(&self, after: Option<&str>, limit: i64) -> Result<Vec<Order>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM orders WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(order_of).collect()
    }

    /// Cancel an order that is `created`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn cancel(&self, id: &str) -> Result<Cancelled, sqlx::Error> {
        // The write comes first (see the module docs), the event in the same transaction.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("UPDATE orders SET status = $1 WHERE id = $2 AND status = $3")
            .bind(CANCELLED)
            .bind(id)
            .bind(CREATED)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let order = row.map(|r| order_of(&r)).transpose()?;
        if let (1, Some(order), true) = (done, &order, self.events) {
            outbox::enqueue(&mut tx, ORDER_CANCELLED, order).await?;
        }
        tx.commit().await?;
        if done == 1 && self.events {
            self.wake.notify_one();
        }
        Ok(match (done, order) {
            (1, Some(order)) => Cancelled::Done(order),
            (_, Some(order)) => Cancelled::Conflict(order),
            (_, None) => Cancelled::NotFound,
        })
    }

    /// Count orders (for tests and drills).
    ///
    /// # Errors
    /// Database errors.
    pub async fn count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) AS n FROM orders")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")
    }

    /// `Ok` when the database answers.
    ///
    /// # Errors
    /// The database does not answer.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
    }

    /// Checkpoint the WAL (SQLite) and close the pool, waiting for checked-out connections.
    ///
    /// # Errors
    /// The checkpoint failed.
    pub async fn close(&self) -> Result<(), sqlx::Error> {
        if self.sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        }
        self.pool.close().await;
        Ok(())
    }
}

fn order_of(r: &AnyRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: r.try_get("id")?,
        customer_id: r.try_get("customer_id")?,
        sku: r.try_get("sku")?,
        quantity: r.try_get("quantity")?,
        amount_cents: r.try_get("amount_cents")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// `true` for errors that mean "the database is not reachable now": worth a 503 and a
/// retry, not a 500.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

/// Make sure the SQLite file's directory exists and ask sqlx to create the file.
fn sqlite_url(url: &str) -> anyhow::Result<String> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    Ok(if url.contains('?') {
        url.to_string()
    } else {
        format!("{url}?mode=rwc")
    })
}
