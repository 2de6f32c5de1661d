//! Where the load records every request: its outcome, its latency from its scheduled time,
//! and (open loop) how late it was handed to a connection; in total and per [`SLOT`] of
//! the schedule.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::outcome::SLOT_SIGNIFICANT_DIGITS;
use crate::outcome::{histogram, record_micros, Outcome, Tally, SIGNIFICANT_DIGITS};

/// Width of a timeline slot.
pub const SLOT: Duration = Duration::from_millis(100);

/// What the load recorded: the whole drill and each [`SLOT`] of it.
#[derive(Debug)]
pub(crate) struct Recorded {
    /// Every request.
    pub(crate) total: Tally,
    /// The requests scheduled (closed loop: started) in each slot.
    pub(crate) slots: Vec<Tally>,
    /// From the scheduled time to the hand-over to a ready connection, in microseconds.
    pub(crate) send_lag: Histogram<u32>,
    /// When each response of any status ended, in microseconds since the start (for the
    /// rates over the load's window).
    pub(crate) answered_at: Histogram<u64>,
    /// The same for the 2xx responses.
    pub(crate) ok_at: Histogram<u64>,
}

impl Recorded {
    /// Responses of any status, and 2xx responses, that ended within `window` of the start.
    pub(crate) fn answered_within(&self, window: Duration) -> (u64, u64) {
        let w = u64::try_from(window.as_micros()).unwrap_or(u64::MAX).max(1);
        let within = |h: &Histogram<u64>| {
            if h.is_empty() {
                0
            } else {
                h.count_between(0, w)
            }
        };
        (within(&self.answered_at), within(&self.ok_at))
    }
}

impl Default for Recorded {
    fn default() -> Self {
        Self {
            total: Tally::default(),
            slots: Vec::new(),
            send_lag: histogram(SIGNIFICANT_DIGITS),
            answered_at: offsets(),
            ok_at: offsets(),
        }
    }
}

/// Record `at` in `h`; a count at its limit saturates.
fn note(h: &mut Histogram<u64>, at: u64) {
    if h.record(at).is_err() {
        h.saturating_record(at);
    }
}

/// An empty histogram of microsecond offsets (three significant digits: a window's edge
/// is placed within 0.1 %), growing to the largest recorded.
fn offsets() -> Histogram<u64> {
    // Three significant digits always build: an invariant, not an input.
    Histogram::new(3).expect("3 significant digits always build")
}

/// Where the load records, and the counters the progress line reads.
#[derive(Debug)]
pub(crate) struct Recorder {
    /// When the load (the schedule) started.
    pub(crate) start: Instant,
    recorded: Mutex<Recorded>,
    /// The next request number (the closed loop's workers draw from it).
    pub(crate) issued: AtomicU64,
    pub(crate) ok: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Cancelled when the load must end early (SIGINT, SIGTERM, a caller's stop).
    pub(crate) stop: CancellationToken,
}

impl Recorder {
    pub(crate) fn new(start: Instant) -> Self {
        Self {
            start,
            recorded: Mutex::new(Recorded::default()),
            issued: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop: CancellationToken::new(),
        }
    }

    /// Record one request scheduled at `scheduled`, handed to a connection at `sent` (when
    /// it got that far), ended at `done` with `outcome`.
    pub(crate) fn record(
        &self,
        outcome: Outcome,
        scheduled: Instant,
        sent: Option<Instant>,
        done: Instant,
    ) {
        let slot = (scheduled.saturating_duration_since(self.start).as_millis() / SLOT.as_millis())
            as usize;
        let latency = done.saturating_duration_since(scheduled);
        {
            let mut r = self.recorded.lock().unwrap_or_else(PoisonError::into_inner);
            if r.slots.len() <= slot {
                r.slots
                    .resize_with(slot + 1, || Tally::new(SLOT_SIGNIFICANT_DIGITS));
            }
            r.slots[slot].record(outcome, latency);
            r.total.record(outcome, latency);
            if let Some(sent) = sent {
                record_micros(&mut r.send_lag, sent.saturating_duration_since(scheduled));
            }
            if matches!(outcome, Outcome::Ok | Outcome::Status(_)) {
                let at = u64::try_from(done.saturating_duration_since(self.start).as_micros())
                    .unwrap_or(u64::MAX);
                note(&mut r.answered_at, at);
                if outcome == Outcome::Ok {
                    note(&mut r.ok_at, at);
                }
            }
        }
        let counter = if outcome.is_error() {
            &self.errors
        } else {
            &self.ok
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// What was recorded so far, taken out (the load is done).
    pub(crate) fn take(&self) -> Recorded {
        std::mem::take(&mut *self.recorded.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
