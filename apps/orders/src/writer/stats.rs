//! The writer's counts: writes waiting, batches and their sizes, refusals; and the metrics
//! made from them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

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
    pub(super) fn record(&self, n: usize) {
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
            "Writes waiting for the writer",
            move || q.queued.load(Ordering::Relaxed) as f64,
        ),
        AppMetric::counter(
            "orders_write_batches",
            "Transactions the writer committed",
            move || b.batches.load(Ordering::Relaxed) as f64,
        ),
        AppMetric::counter(
            "orders_write_jobs",
            "Writes the writer carried out",
            move || j.jobs.load(Ordering::Relaxed) as f64,
        ),
        AppMetric::counter(
            "orders_write_refused",
            "Writes refused because the writer's queue was full",
            move || r.refused.load(Ordering::Relaxed) as f64,
        ),
    ]
}
