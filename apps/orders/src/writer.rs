//! The SQLite writer: one task owns the write connection and commits writes in groups.
//!
//! SQLite has one write lock. Pooled connections that each run their own transaction queue
//! for it and pay one fsync each; the writer instead takes every write waiting (up to
//! [`MAX_BATCH`]), runs each under its own SAVEPOINT inside one transaction, and commits
//! once: one fsync for the batch. A write whose statement fails rolls back to its savepoint
//! and fails alone; a failed commit fails the whole batch. The batch's audit lines are then
//! written and fsync'd together, and only then is each caller answered, so a 201 still
//! means "in the database and in the audit log, on disk". While one batch's audit lines are
//! synced, the next batch runs.
//!
//! The queue is bounded ([`QUEUE`]): a write that finds it full is refused at once
//! ([`WriteError::Overloaded`], answered 503 with `Retry-After`) instead of waiting without
//! limit. [`Writer::stop`] finishes every write accepted before it, then stops.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::{AnyConnection, Executor as _};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::task::TaskTracker;

use crate::audit::{AuditError, AuditLog};
use crate::ops::{apply, audit_line, AuditCtx, Done, Op};

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
}

struct Job {
    op: Op,
    audit: Option<AuditCtx>,
    reply: oneshot::Sender<Result<Done, WriteError>>,
}

enum Msg {
    Job(Job),
    Stop(oneshot::Sender<()>),
}

/// Batch counts, for the metrics and the stop's log line.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Writes waiting now.
    pub queued: AtomicI64,
    /// Transactions committed (or failed).
    pub batches: AtomicU64,
    /// Writes carried out.
    pub jobs: AtomicU64,
    /// Writes refused because the queue was full.
    pub refused: AtomicU64,
    /// Batches by size: 1, 2-3, 4-7, ... 256-511, 512.
    pub sizes: [AtomicU64; 10],
}

impl WriterStats {
    fn record(&self, n: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(n as u64, Ordering::Relaxed);
        let bucket = (usize::BITS - 1 - n.max(1).leading_zeros()) as usize;
        self.sizes[bucket.min(self.sizes.len() - 1)].fetch_add(1, Ordering::Relaxed);
    }

    /// `1:N 2-3:N 4-7:N ...`, the batches by size.
    pub fn sizes_text(&self) -> String {
        let mut out = Vec::new();
        for (i, n) in self.sizes.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let (lo, hi) = (1usize << i, (1usize << (i + 1)) - 1);
                let range = if lo == hi || i == self.sizes.len() - 1 {
                    format!("{lo}")
                } else {
                    format!("{lo}-{hi}")
                };
                out.push(format!("{range}:{n}"));
            }
        }
        out.join(" ")
    }
}

/// The writer's metrics: `orders_write_queue` (writes waiting), `orders_write_batches_total`
/// and `orders_write_jobs_total` (their ratio is the mean batch size), and
/// `orders_write_refused_total` (writes answered `overloaded`).
pub fn metrics(stats: &Arc<WriterStats>) -> Vec<lameduck::metrics::AppMetric> {
    use lameduck::metrics::AppMetric;
    let (q, b, j, r) = (stats.clone(), stats.clone(), stats.clone(), stats.clone());
    vec![
        AppMetric::gauge(
            "orders_write_queue",
            "Writes waiting for the SQLite writer",
            move || q.queued.load(Ordering::Relaxed) as f64,
        ),
        AppMetric::counter(
            "orders_write_batches",
            "Transactions the SQLite writer committed",
            move || b.batches.load(Ordering::Relaxed) as f64,
        ),
        AppMetric::counter(
            "orders_write_jobs",
            "Writes the SQLite writer carried out",
            move || j.jobs.load(Ordering::Relaxed) as f64,
        ),
        AppMetric::counter(
            "orders_write_refused",
            "Writes refused because the SQLite writer's queue was full",
            move || r.refused.load(Ordering::Relaxed) as f64,
        ),
    ]
}

/// A handle to the writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    stats: Arc<WriterStats>,
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
    /// Start the writer on `conn` (a SQLite connection, with its pragmas set). `events`
    /// writes outbox events; `wake` is notified after a commit that wrote one.
    pub fn start(conn: AnyConnection, audit: AuditLog, events: bool, wake: Arc<Notify>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(WriterStats::default());
        let run = Run {
            conn,
            rx,
            audit,
            events,
            wake,
            stats: stats.clone(),
            answering: TaskTracker::new(),
        };
        tokio::spawn(run.run());
        Self { tx, stats }
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
        let (reply, answer) = oneshot::channel();
        let job = Msg::Job(Job { op, audit, reply });
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(WriteError::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(WriteError::Closed),
        }
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
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
    conn: AnyConnection,
    rx: mpsc::Receiver<Msg>,
    audit: AuditLog,
    events: bool,
    wake: Arc<Notify>,
    stats: Arc<WriterStats>,
    /// Batches whose audit lines are being synced before their callers are answered.
    answering: TaskTracker,
}

impl Run {
    async fn run(mut self) {
        let mut stop = None;
        while stop.is_none() {
            let Some(first) = self.rx.recv().await else {
                break;
            };
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
        self.answering.close();
        self.answering.wait().await;
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

    /// One transaction for `jobs`, each under its own savepoint; then their audit lines and
    /// answers, in a task of their own so that the next batch can start.
    async fn batch(&mut self, jobs: Vec<Job>) {
        self.stats.record(jobs.len());
        let mut results = Vec::with_capacity(jobs.len());
        let committed = match self.conn.execute("BEGIN IMMEDIATE").await {
            Err(e) => Err(e),
            Ok(_) => {
                for job in &jobs {
                    results.push(self.one(&job.op).await);
                }
                self.conn.execute("COMMIT").await.map(drop)
            }
        };
        if let Err(e) = committed {
            tracing::error!(error = %e, writes = jobs.len(), "writer: the batch's transaction failed");
            let _ = self.conn.execute("ROLLBACK").await;
            for job in jobs {
                let _ = job
                    .reply
                    .send(Err(WriteError::Db(sqlx::Error::Protocol(format!(
                        "the batch's commit failed: {e}"
                    )))));
            }
            return;
        }
        if self.events
            && results
                .iter()
                .any(|r| r.as_ref().is_ok_and(Done::made_event))
        {
            self.wake.notify_one();
        }
        let lines: Vec<String> = jobs
            .iter()
            .zip(&results)
            .filter_map(|(job, r)| audit_line(r.as_ref().ok()?, job.audit.as_ref()?))
            .collect();
        let audit = self.audit.clone();
        self.answering.spawn(async move {
            let synced = if lines.is_empty() {
                Ok(())
            } else {
                audit.append_lines(lines).await
            };
            for (job, result) in jobs.into_iter().zip(results) {
                let answer = match (&synced, result) {
                    (_, Err(e)) => Err(e),
                    (Err(a), Ok(done)) if job.audit.is_some() && done.audited().is_some() => {
                        Err(WriteError::Audit(a.clone()))
                    }
                    (_, Ok(done)) => Ok(done),
                };
                let _ = job.reply.send(answer);
            }
        });
    }

    /// One write under its own savepoint: rolled back alone when it fails.
    async fn one(&mut self, op: &Op) -> Result<Done, WriteError> {
        self.conn.execute("SAVEPOINT w").await?;
        match apply(&mut self.conn, op, self.events).await {
            Ok(done) => {
                self.conn.execute("RELEASE w").await?;
                Ok(done)
            }
            Err(e) => {
                self.conn.execute("ROLLBACK TO w").await?;
                self.conn.execute("RELEASE w").await?;
                Err(WriteError::Db(e))
            }
        }
    }
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
