//! Writes refused while the disk is full.
//!
//! When SQLite or the audit log finds no space left (`SQLITE_FULL`, `ENOSPC`), every write
//! is refused at once with 503 `unavailable` and `Retry-After` (never tried, so never a 201
//! that did not reach the disk), while reads go on. `/readyz` stays 200 and names the
//! condition, a WARN line says it once, and the gauge `orders_writes_refused` is 1. A probe
//! writes and syncs [`PROBE_BYTES`] in the full directory every [`PROBE_EVERY`]; once it
//! succeeds, writes are accepted again, without a restart.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the probe tries to write while writes are refused.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// What the probe writes and syncs: room for a batch of orders and their audit lines.
pub const PROBE_BYTES: usize = 256 * 1024;

/// Whether writes are refused for want of space. Cheap to clone; clones share the state.
#[derive(Debug, Clone)]
pub struct Space {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    refused: AtomicBool,
    /// The full directory, while refused.
    dir: Mutex<Option<PathBuf>>,
    /// Where the probe runs (the refusal may come from the audit log's thread).
    runtime: tokio::runtime::Handle,
}

impl Space {
    /// Writes accepted; the probe runs on `runtime`.
    pub fn new(runtime: tokio::runtime::Handle) -> Self {
        Self {
            inner: Arc::new(Inner {
                refused: AtomicBool::new(false),
                dir: Mutex::new(None),
                runtime,
            }),
        }
    }

    /// `true` while writes are refused.
    pub fn is_refused(&self) -> bool {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// `writes refused: no space left on DIR` while writes are refused.
    pub fn refusal(&self) -> Option<String> {
        if !self.is_refused() {
            return None;
        }
        let dir = self.inner.dir.lock().ok()?.clone()?;
        Some(refusal_text(&dir))
    }

    /// A write found no space in `dir`: refuse writes until the probe can write there.
    /// Returns the refusal's text.
    pub fn refuse(&self, dir: &Path) -> String {
        let text = refusal_text(dir);
        if let Ok(mut slot) = self.inner.dir.lock() {
            if slot.is_none() {
                *slot = Some(dir.to_path_buf());
            }
        }
        if !self.inner.refused.swap(true, Ordering::AcqRel) {
            tracing::warn!(dir = %dir.display(), "{text}");
            let space = self.clone();
            let dir = dir.to_path_buf();
            self.inner
                .runtime
                .spawn(async move { space.probe(dir).await });
        }
        text
    }

    /// Try to write in `dir` every [`PROBE_EVERY`]; accept writes again once it works.
    async fn probe(self, dir: PathBuf) {
        let mut failures = 0u64;
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            let at = dir.clone();
            match tokio::task::spawn_blocking(move || probe_once(&at)).await {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    failures += 1;
                    // A line a minute while the disk stays full.
                    if failures.is_multiple_of(120) {
                        tracing::warn!(dir = %dir.display(), error = %e, "writes still refused: no space left");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the space probe failed to run");
                    failures += 1;
                }
            }
        }
        if let Ok(mut slot) = self.inner.dir.lock() {
            *slot = None;
        }
        self.inner.refused.store(false, Ordering::Release);
        tracing::info!(dir = %dir.display(), "writes accepted again: there is space on the disk");
    }

    /// The gauge `orders_writes_refused`: 1 while writes are refused.
    pub fn metric(&self) -> lameduck::metrics::AppMetric {
        let space = self.clone();
        lameduck::metrics::AppMetric::gauge(
            "orders_writes_refused",
            "1 while writes are refused because the disk is full",
            move || f64::from(u8::from(space.is_refused())),
        )
    }
}

fn refusal_text(dir: &Path) -> String {
    format!("writes refused: no space left on {}", dir.display())
}

/// Write and sync [`PROBE_BYTES`] in `dir`, then remove the file.
fn probe_once(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(".space-probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; PROBE_BYTES])?;
        f.sync_data()
    });
    let removed = std::fs::remove_file(&path);
    written?;
    removed
}

/// The directory a file lives in (`.` for a bare name).
pub fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `true` when `e` says the disk is full: SQLite's `SQLITE_FULL` (13), or an I/O error
/// `ENOSPC`.
pub fn is_disk_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::StorageFull,
        _ => e.as_database_error().is_some_and(|d| {
            d.code().as_deref() == Some("13") || d.message().contains("database or disk is full")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refusal_names_the_directory_and_the_probe_lifts_it_once_it_can_write() {
        let dir = std::env::temp_dir().join(format!("ld-space-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let space = Space::new(tokio::runtime::Handle::current());
        assert_eq!(space.refusal(), None);
        let text = space.refuse(&dir);
        assert_eq!(
            text,
            format!("writes refused: no space left on {}", dir.display())
        );
        assert!(space.is_refused());
        assert_eq!(space.refusal().as_deref(), Some(text.as_str()));
        // The directory has room: the probe lifts the refusal.
        let lifted = tokio::time::timeout(Duration::from_secs(10), async {
            while space.is_refused() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(lifted.is_ok(), "the probe never lifted the refusal");
        assert_eq!(space.refusal(), None);
        assert!(!dir.join(".space-probe").exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn the_probe_keeps_refusing_where_it_cannot_write() {
        let dir = std::env::temp_dir().join(format!("ld-space-missing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let space = Space::new(tokio::runtime::Handle::current());
        space.refuse(&dir);
        tokio::time::sleep(PROBE_EVERY * 3).await;
        assert!(
            space.is_refused(),
            "a probe that cannot write must not lift it"
        );
    }
}
