//! The writer: one task owns the write connection and commits writes in groups, on SQLite
//! and on PostgreSQL (`--write-batching off` turns it off).
//!
//! SQLite has one write lock. Pooled connections that each run their own transaction queue
//! for it and pay one fsync each; the writer instead takes every write waiting (up to
//! [`MAX_BATCH`]) and runs them in one transaction: the creates together, with a handful of
//! statements for the whole batch ([`create_many`]), every other write under a SAVEPOINT
//! of its own; then one commit, one fsync for the batch. When the creates' statements fail
//! together (a constraint), they are rolled back and run one by one, each under its own
//! savepoint, so that the one at fault fails alone. On PostgreSQL, where each statement is
//! a round trip, a batch of creates alone without outbox events skips the transaction: one
//! read of the keys, then one insert of every order and key, atomic by itself
//! (`creates_at_once`). A failed commit or a broken connection fails the whole batch
//! ([`WriteError::Unavailable`], 503), and the next batch opens a new connection.
//!
//! A batch still running after the write timeout (`--write-timeout`, default
//! [`DEFAULT_WRITE_TIMEOUT`]) is answered at once, 503 [`WriteError::OutcomeUnknown`]: its
//! commit may be under way and nothing can tell. It is not cut off: it goes on in a task of
//! its own, on its own connection, for up to [`LATE_LIMIT`] more, and once it has committed
//! its audit lines are written like any other batch's, so a committed write always has its
//! audit line. A retry with the same idempotency key then finds the order (waiting for the
//! late commit when it is still under way). The next batch opens a new connection
//! meanwhile; [`Writer::stop`] waits for the late batches too.
//!
//! The batch's audit lines are then written and fsync'd together, and only then is each
//! caller answered (from the audit log's thread, which wakes each caller directly), so a 201
//! still means "in the database and in the audit log, on disk". While one batch's audit
//! lines are synced, the next batch runs. Before taking a batch the writer yields once, so
//! that requests ready to run add their writes to it.
//!
//! The queue is bounded ([`QUEUE`]): a write that finds it full is refused at once
//! ([`WriteError::Overloaded`], answered 503 with `Retry-After`) instead of waiting without
//! limit. [`Writer::stop`] finishes every write accepted before it, then stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, Connection as _, Executor as _};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::task::TaskTracker;

use crate::audit::{AuditError, AuditLog};
use crate::ops::{audit_line, AuditCtx, Done, Op};
use crate::space::{dir_of, is_disk_full, Space};

mod stats;
mod transaction;
pub use stats::{metrics, WriterStats};
use transaction::transaction;

/// Most writes in one transaction.
pub const MAX_BATCH: usize = 512;
/// Writes that may wait for the writer; more are refused as overloaded.
pub const QUEUE: usize = 4096;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The database refused or failed it.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// It is in the database, but its audit line could not be made durable.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The writer's queue is full.
    #[error("too many writes waiting")]
    Overloaded,
    /// The writer has stopped (shutdown).
    #[error("the writer has stopped")]
    Closed,
    /// The batch's transaction failed, or the database cannot be reached: none of its
    /// writes is committed.
    #[error("{0}")]
    Unavailable(String),
    /// The batch's transaction was still running after the write timeout: it may yet
    /// commit (and then gets its audit line); a retry with the same idempotency key finds
    /// out.
    #[error("the write took longer than {0:?}; its outcome is unknown")]
    OutcomeUnknown(Duration),
    /// The disk is full: writes are refused until there is space ([`Space`]). The text
    /// names the directory (and, when the write is stored but its audit line waits for
    /// space, says so).
    #[error("{0}")]
    NoSpace(String),
}

/// The write timeout when none is set: how long a batch's transaction may take before its
/// writes are answered [`WriteError::OutcomeUnknown`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a batch past its write timeout may still take to finish; then its connection
/// is closed and its outcome stays unknown (logged with the writes it held).
pub const LATE_LIMIT: Duration = Duration::from_secs(60);

/// Where the writer's connection goes, to open it again after it broke.
#[derive(Debug, Clone)]
pub struct Target {
    /// The database URL.
    pub url: String,
    /// SQLite (else PostgreSQL).
    pub sqlite: bool,
}

/// The writer's settings beyond its connection.
#[derive(Debug, Clone)]
pub struct Options {
    /// Write outbox events.
    pub events: bool,
    /// How long a batch's transaction may take before its writes are answered.
    pub write_timeout: Duration,
    /// Refuses writes while the disk is full.
    pub space: Space,
    /// The SQLite file's directory (`None` on PostgreSQL), named when it is full.
    pub db_dir: Option<std::path::PathBuf>,
}

impl Target {
    /// Open a connection (for SQLite, with its pragmas).
    ///
    /// # Errors
    /// The database cannot be reached or set up.
    pub async fn connect(&self) -> Result<AnyConnection, sqlx::Error> {
        let mut conn = AnyConnection::connect(&self.url).await?;
        if self.sqlite {
            crate::sql::sqlite_pragmas(&mut conn).await?;
            crate::ops::prepare_sqlite_writer(&mut conn).await?;
        } else {
            // PostgreSQL would settle on a generic plan for the batch's `key IN (...)` read
            // after five runs, chosen while the table was small (a sequential scan) and
            // kept as it grows: each batch then read the whole table. Planning each run
            // picks the index.
            conn.execute("SET plan_cache_mode = force_custom_plan")
                .await?;
        }
        Ok(conn)
    }

    /// The statement that opens a batch's transaction: on SQLite `BEGIN IMMEDIATE`, which
    /// takes the write lock at once (waiting up to `busy_timeout` while another process,
    /// an upgrade's other half, holds it).
    fn begin(&self) -> &'static str {
        if self.sqlite {
            "BEGIN IMMEDIATE"
        } else {
            "BEGIN"
        }
    }
}

/// What a write does: its op, and the fields of its audit line.
struct Work {
    op: Op,
    audit: Option<AuditCtx>,
}

type Reply = oneshot::Sender<Result<Done, WriteError>>;

struct Job {
    work: Work,
    reply: Reply,
}

enum Msg {
    Job(Job),
    Stop(oneshot::Sender<()>),
}

/// A handle to the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    stats: Arc<WriterStats>,
    space: Space,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Job(_) => "Job",
            Msg::Stop(_) => "Stop",
        })
    }
}

impl Writer {
    /// Start the writer on `conn`, a connection to `target` (for SQLite, with its pragmas
    /// set). `wake` is notified after a commit that wrote an outbox event.
    pub fn start(
        conn: AnyConnection,
        target: Target,
        audit: AuditLog,
        wake: Arc<Notify>,
        options: Options,
    ) -> Self {
        let Options {
            events,
            write_timeout,
            space,
            db_dir,
        } = options;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(WriterStats::default());
        let run = Run {
            conn: Some(conn),
            target,
            rx,
            audit,
            events,
            wake,
            stats: stats.clone(),
            write_timeout,
            late: TaskTracker::new(),
            space: space.clone(),
            db_dir,
        };
        tokio::spawn(run.run());
        Self { tx, stats, space }
    }

    /// The batch counts.
    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Carry `op` out in the next batch; returns once it is committed (and its audit line,
    /// when `audit` is given, is on disk).
    ///
    /// # Errors
    /// The database, the audit log, a full queue, or a stopped writer.
    pub async fn write(&self, op: Op, audit: Option<AuditCtx>) -> Result<Done, WriteError> {
        self.write_then(op, audit, || {}).await
    }

    /// [`Writer::write`], calling `handed` once the write is queued (it will be done and
    /// audited whatever happens to the caller from then on).
    ///
    /// # Errors
    /// As [`Writer::write`].
    pub async fn write_then(
        &self,
        op: Op,
        audit: Option<AuditCtx>,
        handed: impl FnOnce(),
    ) -> Result<Done, WriteError> {
        if let Some(refused) = self.space.refusal() {
            return Err(WriteError::NoSpace(refused));
        }
        let (reply, answer) = oneshot::channel();
        let job = Msg::Job(Job {
            work: Work { op, audit },
            reply,
        });
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(WriteError::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(WriteError::Closed),
        }
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        handed();
        answer.await.map_err(|_| WriteError::Closed)?
    }

    /// Finish every write accepted so far, then stop.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.tx.send(Msg::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
    }
}

struct Run {
    /// None after it broke: the next batch opens a new one.
    conn: Option<AnyConnection>,
    target: Target,
    rx: mpsc::Receiver<Msg>,
    audit: AuditLog,
    events: bool,
    wake: Arc<Notify>,
    stats: Arc<WriterStats>,
    write_timeout: Duration,
    /// The batches past their write timeout, still finishing.
    late: TaskTracker,
    space: Space,
    db_dir: Option<std::path::PathBuf>,
}

/// How a batch's transaction went.
enum Ran {
    /// It ran (committed, or each failed write rolled back alone): the writes and results.
    Done(Vec<Work>, Vec<Result<Done, WriteError>>),
    /// It failed as a whole (why, and whether for want of space): nothing of it is
    /// committed.
    Failed(String, bool),
    /// It was still running at the write timeout; it goes on in a task of its own.
    Late,
}

impl Run {
    async fn run(mut self) {
        let mut stop = None;
        while stop.is_none() {
            let Some(first) = self.rx.recv().await else {
                break;
            };
            // Let the requests that are ready run first: their writes join this batch
            // instead of each paying a commit of its own. Nearly free when nothing else is
            // ready (measured: skipping it after a batch of one made more batches of one
            // under load, and did not change one client's latency).
            tokio::task::yield_now().await;
            let mut jobs = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Job(j) => jobs.push(j),
                    Msg::Stop(done) => {
                        stop = Some(done);
                        break;
                    }
                }
                if jobs.len() < MAX_BATCH {
                    next = self.rx.try_recv().ok();
                }
            }
            if !jobs.is_empty() {
                self.stats
                    .queued
                    .fetch_sub(jobs.len() as i64, Ordering::Relaxed);
                self.batch(jobs).await;
            }
        }
        // The late batches write their audit lines before the last sync.
        self.late.close();
        if !self.late.is_empty() {
            tracing::info!(
                batches = self.late.len(),
                "writer: waiting for the batches past their write timeout"
            );
        }
        self.late.wait().await;
        // Every batch's callers are answered once the audit lines queued before this are
        // on disk (or the log failed).
        let _ = self.audit.sync().await;
        tracing::info!(
            batches = self.stats.batches.load(Ordering::Relaxed),
            writes = self.stats.jobs.load(Ordering::Relaxed),
            sizes = %self.stats.sizes_text(),
            "writer stopped"
        );
        if let Some(done) = stop {
            let _ = done.send(());
        }
    }

    /// One transaction for `jobs`, each under its own savepoint; then their audit lines,
    /// and the answers once those are on disk (on the audit log's thread, so that the next
    /// batch can start meanwhile).
    async fn batch(&mut self, jobs: Vec<Job>) {
        self.stats.record(jobs.len());
        let (work, replies): (Vec<Work>, Vec<Reply>) =
            jobs.into_iter().map(|j| (j.work, j.reply)).unzip();
        let (work, mut results) = match self.transaction(work).await {
            Ran::Done(work, results) => (work, results),
            Ran::Failed(why, full) => {
                let refused = match (&self.db_dir, full) {
                    (Some(dir), true) => Some(self.space.refuse(dir)),
                    _ => {
                        tracing::error!(error = %why, writes = replies.len(), "writer: a batch failed; its writes are answered 503");
                        None
                    }
                };
                for reply in replies {
                    let _ = reply.send(Err(match &refused {
                        Some(text) => WriteError::NoSpace(text.clone()),
                        None => WriteError::Unavailable(why.clone()),
                    }));
                }
                return;
            }
            Ran::Late => {
                for reply in replies {
                    let _ = reply.send(Err(WriteError::OutcomeUnknown(self.write_timeout)));
                }
                return;
            }
        };
        if let Some(dir) = &self.db_dir {
            for r in &mut results {
                if matches!(r, Err(WriteError::Db(e)) if is_disk_full(e)) {
                    *r = Err(WriteError::NoSpace(self.space.refuse(dir)));
                }
            }
        }
        if self.events && made_event(&results) {
            self.wake.notify_one();
        }
        let lines = audit_lines(&work, &results);
        let space = self.space.clone();
        let answer = move |synced: Result<(), AuditError>| {
            for ((work, reply), result) in work.into_iter().zip(replies).zip(results) {
                let answer = match (&synced, result) {
                    (_, Err(e)) => Err(e),
                    (Err(a), Ok(done)) if work.audit.is_some() && done.audited().is_some() => {
                        Err(audit_failed(&space, a))
                    }
                    (_, Ok(done)) => Ok(done),
                };
                let _ = reply.send(answer);
            }
        };
        if lines.is_empty() {
            answer(Ok(()));
        } else {
            // Answered on the audit log's thread once the lines are on disk; meanwhile the
            // next batch runs.
            self.audit.append_lines_then(lines, answer).await;
        }
    }

    /// Run and commit the batch's transaction on the connection (opened again first if it
    /// broke). Past the write timeout it goes on in a task of its own ([`Run::late`]).
    async fn transaction(&mut self, work: Vec<Work>) -> Ran {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => match self.target.connect().await {
                Ok(conn) => {
                    tracing::info!("writer: connected to the database again");
                    conn
                }
                Err(e) => {
                    return Ran::Failed(format!("cannot reach the database: {e}"), is_disk_full(&e))
                }
            },
        };
        let (target, events) = (self.target.clone(), self.events);
        let mut run = Box::pin(async move {
            let mut conn = conn;
            let result = transaction(&mut conn, &target, &work, events).await;
            (conn, work, result)
        });
        match tokio::time::timeout(self.write_timeout, &mut run).await {
            Ok((conn, work, Ok(results))) => {
                self.conn = Some(conn);
                Ran::Done(work, results)
            }
            Ok((mut conn, _, Err(e))) => {
                // A broken connection is dropped; any other error leaves it usable once
                // the transaction is rolled back.
                if !crate::sql::is_unavailable(&e) && conn.execute("ROLLBACK").await.is_ok() {
                    self.conn = Some(conn);
                }
                Ran::Failed(
                    format!("the batch's transaction failed: {e}"),
                    is_disk_full(&e),
                )
            }
            Err(_) => {
                tracing::warn!(
                    timeout = ?self.write_timeout,
                    "writer: a batch is still running after its write timeout; its writes are answered 503 outcome_unknown while it finishes on its own connection"
                );
                let (audit, wake) = (self.audit.clone(), self.wake.clone());
                self.late.spawn(async move {
                    match tokio::time::timeout(LATE_LIMIT, run).await {
                        Ok((_conn, work, Ok(results))) => {
                            if events && made_event(&results) {
                                wake.notify_one();
                            }
                            let lines = audit_lines(&work, &results);
                            tracing::warn!(
                                writes = work.len(),
                                audit_lines = lines.len(),
                                "writer: a batch past its write timeout has committed; its audit lines are written now"
                            );
                            if lines.is_empty() {
                                return;
                            }
                            if let Err(e) = audit.append_lines(lines).await {
                                tracing::error!(error = %e, "writer: the audit lines of a batch that committed late could not be written");
                            }
                        }
                        // Dropping the connection rolls back whatever was not committed.
                        Ok((_conn, work, Err(e))) => tracing::warn!(
                            error = %e,
                            writes = work.len(),
                            "writer: a batch past its write timeout failed; nothing of it is committed unless its COMMIT was cut off"
                        ),
                        Err(_) => tracing::error!(
                            limit = ?LATE_LIMIT,
                            "writer: a batch past its write timeout had not finished after the limit; its connection is closed and its outcome stays unknown"
                        ),
                    }
                });
                Ran::Late
            }
        }
    }
}

/// The answer to a write that is stored but whose audit line failed: for want of space,
/// writes are refused until there is some, and the line waits in memory (it is written
/// ahead of the next ones).
pub fn audit_failed(space: &Space, e: &AuditError) -> WriteError {
    match e {
        AuditError::NoSpace { path } => WriteError::NoSpace(format!(
            "{}; this write is stored and its audit line waits for space: a retry with the \
             same Idempotency-Key returns it",
            space.refuse(&dir_of(path))
        )),
        other => WriteError::Audit(other.clone()),
    }
}

/// Whether a committed result wrote an outbox event.
fn made_event(results: &[Result<Done, WriteError>]) -> bool {
    results
        .iter()
        .any(|r| r.as_ref().is_ok_and(Done::made_event))
}

/// The audit lines of a batch's writes that changed an order.
fn audit_lines(work: &[Work], results: &[Result<Done, WriteError>]) -> Vec<String> {
    let ts = crate::model::now_rfc3339();
    work.iter()
        .zip(results)
        .filter_map(|(w, r)| audit_line(r.as_ref().ok()?, w.audit.as_ref()?, &ts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_go_in_power_of_two_buckets() {
        let s = WriterStats::default();
        for n in [1, 1, 2, 3, 4, 7, 8, 300, 512] {
            s.record(n);
        }
        assert_eq!(s.sizes_text(), "1:2 2-3:2 4-7:2 8-15:1 256-511:1 512:1");
        assert_eq!(s.jobs.load(Ordering::Relaxed), 838);
    }
}
