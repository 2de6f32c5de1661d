//! The log file behind [`LogFile`](super::LogFile).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sync::{lock, wait};

/// The writer thread writes as soon as this much is buffered.
pub const BATCH_BYTES: usize = 256 * 1024;
/// ... and otherwise this long after the first buffered line.
pub const BATCH_DELAY: Duration = Duration::from_millis(50);
/// Logging waits for the writer when this much is buffered.
pub const MAX_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// How long dropping a [`LogFile`] waits for the last write and `fsync`.
pub const DROP_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct State {
    buf: Vec<u8>,
    /// Flush requests made / completed (written and fsync'd).
    flush_asked: u64,
    flush_done: u64,
    closing: bool,
    error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread.
    work: Condvar,
    /// Wakes loggers waiting for room and flushers waiting for their flush.
    done: Condvar,
    path: PathBuf,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// A log file that never blocks a request on the disk and never loses a line at exit.
///
/// Each log line is appended to an in-memory buffer under a short lock; a writer thread
/// writes the buffer out in batches (when it passes [`BATCH_BYTES`], else after
/// [`BATCH_DELAY`]). [`LogFile::flush`] writes everything logged so far and `fsync`s the
/// file; dropping the [`LogFile`] does the same and stops the thread. So a shutdown that
/// flushes in a final hook, and again when `main` returns, has every line on disk, the
/// shutdown report included.
///
/// The buffer is bounded ([`MAX_BUFFER_BYTES`]): when the disk cannot keep up, logging
/// waits for the writer instead of dropping lines. A write error is kept and returned by
/// the next [`LogFile::flush`]; the lines of the failed batch are lost, later ones are
/// still tried.
///
/// `tracing-appender`'s non-blocking writer is the usual choice for the first half; it has
/// no way to flush on demand or to `fsync`, which is the half that matters at exit.
///
/// ```no_run
/// use std::time::Duration;
/// use lameduck::logs::{self, LogFormat, LogOptions};
///
/// # async fn run() -> std::io::Result<()> {
/// let logs = logs::init(LogOptions {
///     file: Some("service.log".as_ref()),
///     ..LogOptions::new(LogFormat::Json, "info")
/// })?;
/// let file = logs.file.as_ref().expect("logging to a file");
/// tracing::info!("written by a thread, in batches");
/// file.flusher().flush(Duration::from_secs(2)).await?; // on disk and fsync'd
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct LogFile {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A cheap handle that appends to a [`LogFile`]: a `tracing-subscriber` writer
/// (`MakeWriter`) and an [`io::Write`].
#[derive(Debug, Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// A cheap handle that flushes a [`LogFile`], for a shutdown hook.
#[derive(Debug, Clone)]
pub struct LogFlusher {
    shared: Arc<Shared>,
}

impl LogFile {
    /// Open (create, or append to) `path` and start the writer thread.
    ///
    /// # Errors
    /// The file cannot be opened for appending, or the thread cannot be started.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            path,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("lameduck-log".into())
                .spawn(move || write_loop(&shared, file))?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A writer appending to this file.
    pub fn writer(&self) -> LogWriter {
        LogWriter {
            shared: self.shared.clone(),
        }
    }

    /// A handle that flushes this file.
    pub fn flusher(&self) -> LogFlusher {
        LogFlusher {
            shared: self.shared.clone(),
        }
    }

    /// Write out everything logged so far and `fsync` the file; blocks up to `timeout`.
    ///
    /// # Errors
    /// A write or `fsync` failed since the last flush, or `timeout` passed first.
    pub fn flush(&self, timeout: Duration) -> io::Result<()> {
        flush(&self.shared, timeout)
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        if let Err(e) = flush(&self.shared, DROP_FLUSH_TIMEOUT) {
            // Logging is what failed: stderr is all that is left.
            eprintln!("log file {}: {e}", self.shared.path.display());
        }
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LogFlusher {
    /// [`LogFile::flush`] from async code (on a blocking thread).
    ///
    /// # Errors
    /// As [`LogFile::flush`].
    pub async fn flush(&self, timeout: Duration) -> io::Result<()> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || flush(&shared, timeout))
            .await
            .map_err(io::Error::other)?
    }
}

fn flush(shared: &Shared, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut st = shared.lock();
    st.flush_asked += 1;
    let mine = st.flush_asked;
    shared.work.notify_all();
    while st.flush_done < mine {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || st.closing {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("log flush did not finish within {timeout:?}"),
            ));
        }
        st = wait(&shared.done, st, Some(left));
    }
    match st.error.take() {
        Some(e) => Err(io::Error::other(e)),
        None => Ok(()),
    }
}

fn write_loop(shared: &Shared, mut file: File) {
    let mut batch = Vec::new();
    loop {
        let mut st = shared.lock();
        // Sleep until there is something to do; give small batches a moment to grow.
        let mut waited_for_batch = false;
        loop {
            let flush_wanted = st.flush_asked > st.flush_done;
            if st.closing || flush_wanted || st.buf.len() >= BATCH_BYTES {
                break;
            }
            if st.buf.is_empty() {
                st = wait(&shared.work, st, None);
            } else if !waited_for_batch {
                waited_for_batch = true;
                st = wait(&shared.work, st, Some(BATCH_DELAY));
            } else {
                break;
            }
        }
        std::mem::swap(&mut st.buf, &mut batch);
        let flush_to = st.flush_asked;
        let sync = flush_to > st.flush_done;
        let closing = st.closing;
        drop(st);
        // Room again for loggers that waited.
        shared.done.notify_all();

        let mut result = file.write_all(&batch);
        batch.clear();
        if sync {
            result = result.and_then(|()| file.sync_data());
        }
        let mut st = shared.lock();
        if let Err(e) = result {
            st.error = Some(format!("{}: {e}", shared.path.display()));
        }
        st.flush_done = st.flush_done.max(flush_to);
        let finished = closing && st.buf.is_empty();
        drop(st);
        shared.done.notify_all();
        if finished {
            return;
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.append(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Lines reach the disk through LogFile::flush; a per-line flush would defeat the
        // batching.
        Ok(())
    }
}

impl LogWriter {
    fn append(&self, data: &[u8]) {
        let mut st = self.shared.lock();
        if st.closing {
            // The file is closed (the process is exiting): nothing will write this.
            return;
        }
        while st.buf.len() >= MAX_BUFFER_BYTES && !st.closing {
            self.shared.work.notify_all();
            st = wait(&self.shared.done, st, None);
        }
        let was_below = st.buf.len() < BATCH_BYTES;
        st.buf.extend_from_slice(data);
        let wake = st.buf.len() == data.len() || (was_below && st.buf.len() >= BATCH_BYTES);
        drop(st);
        if wake {
            self.shared.work.notify_one();
        }
    }
}

impl crate::server::AccessSink for LogWriter {
    fn write_line(&self, line: &[u8]) {
        self.append(line);
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lameduck-logfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn flush_puts_every_line_on_disk() {
        let path = temp("flush.log");
        let log = LogFile::open(&path).unwrap();
        let mut w = log.writer();
        for i in 0..10_000 {
            writeln!(w, "line {i}").unwrap();
        }
        log.flush(Duration::from_secs(10)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 10_000);
        assert_eq!(text.lines().last(), Some("line 9999"));
    }

    #[test]
    fn drop_writes_the_last_lines_and_appends_on_reopen() {
        let path = temp("drop.log");
        {
            let log = LogFile::open(&path).unwrap();
            writeln!(log.writer(), "first").unwrap();
        }
        {
            let log = LogFile::open(&path).unwrap();
            writeln!(log.writer(), "second").unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\nsecond\n");
    }

    #[test]
    fn a_full_buffer_makes_writers_wait_instead_of_dropping_lines() {
        let path = temp("full.log");
        let log = LogFile::open(&path).unwrap();
        let line = vec![b'x'; 1023];
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let mut w = log.writer();
                let line = line.clone();
                std::thread::spawn(move || {
                    for _ in 0..4096 {
                        w.write_all(&line).unwrap();
                        w.write_all(b"\n").unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.flush(Duration::from_secs(30)).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(
            len,
            4 * 4096 * 1024,
            "16 MiB written through an 8 MiB buffer"
        );
    }

    #[test]
    fn an_unopenable_path_is_a_clear_error() {
        let err = LogFile::open("/nonexistent-dir/x.log").unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x.log"), "{err}");
    }
}
