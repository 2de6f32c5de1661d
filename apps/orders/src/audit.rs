//! The audit log: one JSON line per state change, made durable before the change is
//! acknowledged.
//!
//! A writer thread takes lines from a queue, writes every line waiting (up to
//! [`MAX_BATCH`]) with one `write`, then one `fdatasync` for all of them, and only then
//! answers each caller (group commit). With [`AuditFsync::Each`] every line gets its own
//! fsync, for comparison. A failed fsync is not retried: after it the kernel may have
//! dropped the dirty pages, so the log turns broken and every later append fails.
//!
//! A write refused for want of space (`ENOSPC`) is not a broken log: the file is cut back
//! to its last complete line, the lines that did not fit wait in memory (up to
//! [`PENDING_LIMIT`] bytes, then the log is broken), their callers get
//! [`AuditError::NoSpace`], and they are written ahead of the next append's lines, so the
//! log keeps every line in order once space is back.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// How the audit log is made durable.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AuditFsync {
    /// Group commit: requests that arrive while an fsync runs share the next one.
    Batch,
    /// One fsync per change (for comparison; slower).
    Each,
}

/// Most lines written under one fsync.
pub const MAX_BATCH: usize = 1024;
/// Queue length before appends wait.
const QUEUE: usize = 8192;
/// Most bytes of lines kept in memory while the disk is full; more and the log is broken.
pub const PENDING_LIMIT: usize = 8 * 1024 * 1024;

/// Why an append failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// Writing or syncing failed (now or earlier): the log is broken.
    #[error("audit log {path} is broken: {reason}")]
    Broken {
        /// The file.
        path: PathBuf,
        /// The first error.
        reason: String,
    },
    /// The file system is full: the lines wait in memory and are written ahead of the
    /// next append's.
    #[error("no space left for audit log {path}")]
    NoSpace {
        /// The file.
        path: PathBuf,
    },
    /// The writer has stopped (shutdown).
    #[error("audit log is closed")]
    Closed,
}

/// What the writer thread does with an outcome: answer a waiting task, or call a function
/// on the writer thread ([`AuditLog::append_lines_then`]).
type Then = Box<dyn FnOnce(Result<(), AuditError>) + Send>;

enum Job {
    Line(String, oneshot::Sender<Result<(), AuditError>>),
    Lines(Vec<String>, Then),
    Sync(oneshot::Sender<Result<(), AuditError>>),
}

/// A handle to the audit log writer. Cheap to clone (no allocation: every request clones
/// the application's state, which holds it twice).
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    broken: Arc<AtomicBool>,
    path: Arc<Path>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Line(..) => "Line",
            Job::Lines(..) => "Lines",
            Job::Sync(..) => "Sync",
        })
    }
}

impl AuditLog {
    /// Open (create, append) `path` and start the writer thread.
    ///
    /// # Errors
    /// The file or its directory cannot be created or opened.
    pub fn open(
        path: &Path,
        mode: AuditFsync,
    ) -> std::io::Result<(Self, std::thread::JoinHandle<()>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        let (tx, rx) = mpsc::channel(QUEUE);
        let broken = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            file,
            rx,
            mode,
            broken: broken.clone(),
            path: path.to_path_buf(),
            failure: None,
            len,
            pending: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run())?;
        Ok((
            Self {
                tx,
                broken,
                path: Arc::from(path),
            },
            thread,
        ))
    }

    /// Append one JSON line; returns once it is on disk.
    ///
    /// # Errors
    /// The log is broken or closed.
    pub async fn append(&self, record: &serde_json::Value) -> Result<(), AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Line(record.to_string(), done))
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Append several lines, written together and made durable with one fsync; returns once
    /// they are on disk.
    ///
    /// # Errors
    /// The log is broken or closed.
    pub async fn append_lines(&self, lines: Vec<String>) -> Result<(), AuditError> {
        let (done, rx) = oneshot::channel();
        self.append_lines_then(lines, move |r| {
            let _ = done.send(r);
        })
        .await;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Append several lines, written together and made durable with one fsync, then call
    /// `then` with the outcome on the log's writer thread (at once with
    /// [`AuditError::Closed`] when the log is closed). The SQLite writer answers its batch's
    /// callers from there: one hand-over fewer than waking a task to answer them. Waits
    /// only while the log's queue is full. `then` runs after every earlier append's and
    /// before a later [`sync`](Self::sync) returns.
    pub async fn append_lines_then(
        &self,
        lines: Vec<String>,
        then: impl FnOnce(Result<(), AuditError>) + Send + 'static,
    ) {
        if let Err(mpsc::error::SendError(Job::Lines(_, then))) =
            self.tx.send(Job::Lines(lines, Box::new(then))).await
        {
            then(Err(AuditError::Closed));
        }
    }

    /// Wait until everything queued so far is on disk.
    ///
    /// # Errors
    /// The log is broken or closed.
    pub async fn sync(&self) -> Result<(), AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Sync(done))
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// `false` once a write or fsync has failed.
    pub fn is_healthy(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

struct Writer {
    file: File,
    rx: mpsc::Receiver<Job>,
    mode: AuditFsync,
    broken: Arc<AtomicBool>,
    path: PathBuf,
    failure: Option<AuditError>,
    /// The file's length after the last complete write.
    len: u64,
    /// Lines refused for want of space, written ahead of the next ones.
    pending: Vec<u8>,
}

impl Writer {
    fn run(mut self) {
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            if self.mode == AuditFsync::Batch {
                while batch.len() < MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
            }
            let result = self.commit(&batch, &mut buf);
            for job in batch {
                match job {
                    Job::Line(_, done) | Job::Sync(done) => {
                        let _ = done.send(result.clone());
                    }
                    Job::Lines(_, then) => then(result.clone()),
                }
            }
        }
        if !self.pending.is_empty() && self.failure.is_none() {
            let mut buf = Vec::new();
            if let Err(e) = self.commit(&[], &mut buf) {
                // The lines are in the log's output at least.
                tracing::error!(error = %e, lines = %String::from_utf8_lossy(&self.pending), "audit log: lines that never found space on disk");
            }
        }
        let _ = self.file.sync_data();
    }

    fn commit(&mut self, batch: &[Job], buf: &mut Vec<u8>) -> Result<(), AuditError> {
        if let Some(f) = &self.failure {
            return Err(f.clone());
        }
        buf.clear();
        buf.extend_from_slice(&self.pending);
        for job in batch {
            let lines: &[String] = match job {
                Job::Line(line, _) => std::slice::from_ref(line),
                Job::Lines(lines, _) => lines,
                Job::Sync(_) => &[],
            };
            for line in lines {
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
            }
        }
        if let Err(e) = self.file.write_all(buf) {
            if e.kind() == std::io::ErrorKind::StorageFull {
                return self.no_space(buf);
            }
            return Err(self.broken(&e));
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.pending.clear();
                Ok(())
            }
            Err(e) => Err(self.broken(&e)),
        }
    }

    /// The write of `buf` found no space: cut the file back to its last complete line and
    /// keep `buf` for the next write.
    fn no_space(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        if buf.len() > PENDING_LIMIT {
            let e = std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("no space left, and more than {PENDING_LIMIT} bytes of lines waiting"),
            );
            return Err(self.broken(&e));
        }
        if let Err(e) = self.file.set_len(self.len) {
            return Err(self.broken(&e));
        }
        if self.pending.is_empty() {
            tracing::warn!(path = %self.path.display(), "audit log: no space left on the device; lines wait in memory until there is");
        }
        self.pending.clear();
        self.pending.extend_from_slice(buf);
        Err(AuditError::NoSpace {
            path: self.path.clone(),
        })
    }

    /// Turn the log broken for good after `e`.
    fn broken(&mut self, e: &std::io::Error) -> AuditError {
        tracing::error!(path = %self.path.display(), error = %e, "audit log write or fsync failed; the log is now broken");
        self.broken.store(true, Ordering::Relaxed);
        let err = AuditError::Broken {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        self.failure = Some(err.clone());
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh log in a directory of the test's own (`name`): the directory, the file, the
    /// log and its writer thread.
    fn fresh(name: &str) -> (PathBuf, PathBuf, AuditLog, std::thread::JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!("ld-{name}-{}", std::process::id()));
        let path = dir.join("audit.log");
        let _ = std::fs::remove_file(&path);
        let (log, thread) = AuditLog::open(&path, AuditFsync::Batch).unwrap();
        (dir, path, log, thread)
    }

    #[tokio::test]
    async fn appended_lines_are_on_disk_when_append_returns() {
        let (dir, path, log, thread) = fresh("audit");
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(&serde_json::json!({ "n": i })).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        log.sync().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 50);
        drop(log);
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn append_lines_then_runs_once_the_lines_are_on_disk_or_the_log_is_closed() {
        let (dir, path, log, thread) = fresh("audit-then");
        let (tx, rx) = oneshot::channel();
        let seen = path.clone();
        log.append_lines_then(vec!["{\"a\":1}".into(), "{\"b\":2}".into()], move |r| {
            // Runs on the writer thread, after the write and the fsync.
            let lines = std::fs::read_to_string(&seen).unwrap().lines().count();
            let _ = tx.send((r, lines));
        })
        .await;
        let (result, lines) = rx.await.unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(lines, 2);
        // Once the writer thread has stopped, `then` is called at once with `Closed`.
        let (log2, closed) = {
            let (tx, rx) = mpsc::channel(1);
            drop(rx);
            let log2 = AuditLog {
                tx,
                broken: log.broken.clone(),
                path: Arc::from(path.as_path()),
            };
            let (ctx, crx) = oneshot::channel();
            log2.append_lines_then(vec!["x".into()], move |r| {
                let _ = ctx.send(r);
            })
            .await;
            (log2, crx.await.unwrap())
        };
        assert!(matches!(closed, Err(AuditError::Closed)), "{closed:?}");
        drop((log, log2));
        thread.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}
