//! Persistence on SQLite (default) or PostgreSQL through sqlx's `Any` driver: one set of
//! queries (`$N` placeholders work on both), migrations embedded per backend.
//!
//! SQLite runs in WAL mode with `synchronous=FULL`: a commit has been fsync'd when it
//! returns, so a 201 sent after it survives a SIGKILL or power loss. Every write goes
//! through one writer task that commits them in groups (`writer.rs`; `--write-batching
//! off` makes each write a pooled transaction of its own instead); reads use the pool.
//! SQLite's write transactions start with `BEGIN IMMEDIATE`, which takes the write lock at
//! once (waiting up to `busy_timeout`), so a transaction that reads before it writes is
//! never refused its lock upgrade.
//!
//! Every write is an [`Op`]; [`Db::write`] carries it out and, when given the request's
//! [`AuditCtx`], makes its audit line durable before it returns.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row as _};

use crate::audit::AuditLog;
use crate::model::Order;
use crate::ops::{apply, audit_line, insert_new, order_of, AuditCtx, Created, Done, Op, COLUMNS};
use crate::outbox::Outbox;
use crate::space::{dir_of, is_disk_full, Space};
use crate::sql::{is_unique_violation, sqlite_pragmas};
use crate::writer::{audit_failed, Options, Target, WriteError, Writer};

/// How long a request waits for a database connection before it is answered 503.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    sqlite: bool,
    /// The writer (with write batching).
    writer: Option<Writer>,
    /// Where writes' audit lines go.
    audit: AuditLog,
    /// Write an outbox event with each change (when a webhook receives them).
    events: bool,
    /// Notified when a change with an event commits (the relay waits on it when idle).
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// Refuses writes while the disk is full.
    space: Space,
    /// The SQLite file's directory (`None` on PostgreSQL).
    db_dir: Option<std::path::PathBuf>,
}

impl Db {
    /// Connect, set SQLite's durability pragmas, and apply the migrations; with a write
    /// timeout (`writer`), start the writer on a connection of its own.
    ///
    /// # Errors
    /// The database cannot be opened, reached or migrated; the message names it (without
    /// the password).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        audit: AuditLog,
        events: bool,
        writer: Option<std::time::Duration>,
    ) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let shown = crate::redact::redact_url(url);
        let db_dir = sqlite.then(|| dir_of(Path::new(sqlite_path(url))));
        let space = Space::new(tokio::runtime::Handle::current());
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
                        sqlite_pragmas(conn).await?;
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
        let wake = std::sync::Arc::<tokio::sync::Notify>::default();
        let writer = if let Some(write_timeout) = writer {
            let target = Target {
                url: url.clone(),
                sqlite,
            };
            let conn = target
                .connect()
                .await
                .with_context(|| format!("cannot open database {shown}"))?;
            let options = Options {
                events,
                write_timeout,
                space: space.clone(),
                db_dir: db_dir.clone(),
            };
            Some(Writer::start(
                conn,
                target,
                audit.clone(),
                wake.clone(),
                options,
            ))
        } else {
            None
        };
        Ok(Self {
            pool,
            sqlite,
            writer,
            audit,
            events,
            wake,
            space,
            db_dir,
        })
    }

    /// Whether writes are refused for want of space.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// The writer (with write batching), for its counts.
    pub fn writer(&self) -> Option<&Writer> {
        self.writer.as_ref()
    }

    /// Carry `op` out and commit it; with `audit`, its audit line (if it changed an order)
    /// is on disk too when this returns.
    ///
    /// # Errors
    /// The database, the audit log, or (SQLite) a full or stopped writer.
    pub async fn write(&self, op: Op, audit: Option<AuditCtx>) -> Result<Done, WriteError> {
        if let Some(w) = &self.writer {
            return w.write(op, audit).await;
        }
        if let Some(refused) = self.space.refusal() {
            return Err(WriteError::NoSpace(refused));
        }
        let done = match self.write_pooled(&op).await {
            Ok(done) => done,
            Err(e) => {
                return Err(match &self.db_dir {
                    Some(dir) if is_disk_full(&e) => WriteError::NoSpace(self.space.refuse(dir)),
                    _ => WriteError::Db(e),
                })
            }
        };
        if self.events && done.made_event() {
            self.wake.notify_one();
        }
        if let Some(line) =
            audit.and_then(|ctx| audit_line(&done, &ctx, &crate::model::now_rfc3339()))
        {
            if let Err(e) = self.audit.append_lines(vec![line]).await {
                return Err(audit_failed(&self.space, &e));
            }
        }
        Ok(done)
    }

    /// `op` in a pooled transaction of its own. A create inserts at once (as one alone in
    /// the writer's batch does); when its idempotency key is stored already (a unique
    /// violation, also when another transaction committed it meanwhile) it rolls back and
    /// runs again through [`apply`], which replays or refuses.
    async fn write_pooled(&self, op: &Op) -> Result<Done, sqlx::Error> {
        if let Op::Create { new, key } = op {
            let mut tx = self.begin().await?;
            match insert_new(&mut tx, new, key.as_deref(), self.events).await {
                Ok(order) => {
                    tx.commit().await?;
                    return Ok(Done::Created(Created::New(order)));
                }
                Err(e) if is_unique_violation(&e) => tx.rollback().await?,
                Err(e) => return Err(e),
            }
        }
        let mut tx = self.begin().await?;
        let done = apply(&mut tx, op, self.events).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// A pooled write transaction (on SQLite `BEGIN IMMEDIATE`).
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        if self.sqlite {
            self.pool.begin_with("BEGIN IMMEDIATE").await
        } else {
            self.pool.begin().await
        }
    }

    /// Notified after each commit that wrote an outbox event.
    pub fn wake(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// The outbox's queries.
    pub fn outbox(&self) -> Outbox {
        Outbox::new(self.pool.clone())
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

    /// Up to `limit` `paying` orders whose payment lease ended before `now_ms`, oldest lease
    /// first (the settle task's work).
    ///
    /// # Errors
    /// Database errors.
    pub async fn stale_paying(&self, now_ms: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id FROM orders WHERE status = $1 AND pay_until_ms < $2 ORDER BY pay_until_ms LIMIT $3",
        )
        .bind(crate::model::PAYING)
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| r.try_get("id")).collect()
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

    /// Stop the writer (SQLite) once it has committed every write it accepted and answered
    /// their callers; later writes fail with [`WriteError::Closed`]. A no-op on PostgreSQL.
    pub async fn finish_writes(&self) {
        if let Some(w) = &self.writer {
            w.stop().await;
        }
    }

    /// Stop the writer once it has finished the writes it accepted (SQLite), checkpoint the
    /// WAL and close the pool, waiting for checked-out connections.
    ///
    /// # Errors
    /// The checkpoint failed.
    pub async fn close(&self) -> Result<(), sqlx::Error> {
        self.finish_writes().await;
        if self.sqlite {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await?;
        }
        self.pool.close().await;
        Ok(())
    }
}

/// The file a `sqlite:` URL names.
fn sqlite_path(url: &str) -> &str {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    path.split('?').next().unwrap_or(path)
}

/// Make sure the SQLite file's directory exists and ask sqlx to create the file.
fn sqlite_url(url: &str) -> anyhow::Result<String> {
    let path = sqlite_path(url);
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
