//! The process lifecycle: phases, signals, the "stop soon" token and the hard deadline.
//!
//! A [`Lifecycle`] is owned by whoever runs the shutdown sequence (normally
//! [`Server`](crate::server::Server)); everyone else holds a [`Shutdown`] watcher, which
//! is cheap to clone and reaches every handler through
//! [`RequestContext`](crate::context::RequestContext).
//!
//! ```
//! use lameduck::lifecycle::{Lifecycle, Phase};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let lifecycle = Lifecycle::new();
//! let shutdown = lifecycle.shutdown();
//! assert_eq!(shutdown.phase(), Phase::Starting);
//!
//! // A handler that streams can wait for the signal to finish early:
//! let handler = tokio::spawn(async move {
//!     shutdown.stop_soon().await;
//!     "finished early"
//! });
//! lifecycle.begin_drain(std::time::Duration::from_secs(30));
//! assert_eq!(handler.await.unwrap(), "finished early");
//! # }
//! ```
//!
//! Phases only move forward: `Starting -> Serving -> Draining -> Stopping -> Exited`
//! (a drain requested during start-up goes straight to `Draining`).

mod report;
mod signal;
pub(crate) mod state_file;

pub use report::{AbandonedRequest, PhaseTiming, ShutdownReport, TaskOutcome, TaskStatus};
pub use signal::{install_os_signals, Signal, Trigger};
pub use state_file::{read_previous, PreviousShutdown, ShutdownOutcome};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::sync::lock;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Where the process is in its life. Read it with [`Shutdown::phase`] or follow it with
/// [`Shutdown::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Binding listeners and preparing; not ready yet.
    Starting,
    /// Ready and serving traffic.
    Serving,
    /// Readiness is down; in-flight work finishes; new connections are refused after the
    /// drain delay.
    Draining,
    /// Connections are done (or abandoned); after-drain and final hooks run.
    Stopping,
    /// Everything is finished; the process is about to exit.
    Exited,
}

impl Phase {
    /// Lower-case name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
            Phase::Stopping => "stopping",
            Phase::Exited => "exited",
        }
    }

    /// Every phase, in order.
    pub const ALL: [Phase; 5] = [
        Phase::Starting,
        Phase::Serving,
        Phase::Draining,
        Phase::Stopping,
        Phase::Exited,
    ];
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
struct Shared {
    phase: watch::Sender<Phase>,
    phase_started: Mutex<Instant>,
    timings: Mutex<Vec<PhaseTiming>>,
    stop_soon: CancellationToken,
    /// Set just before `stop_soon` fires: read on every request, where the token's
    /// `is_cancelled` takes a lock.
    draining: AtomicBool,
    forced: CancellationToken,
    drain_started: OnceLock<Instant>,
    deadline: OnceLock<Instant>,
}

/// The owner of the lifecycle: moves the phases and fires the tokens.
///
/// Not `Clone`: one place drives the shutdown sequence. Watchers use [`Shutdown`]; inputs
/// (signals, admin endpoints, tests) use [`Trigger`].
#[derive(Debug)]
pub struct Lifecycle {
    shared: Arc<Shared>,
    trigger: Trigger,
    signals: mpsc::UnboundedReceiver<Signal>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A lifecycle in [`Phase::Starting`] with no signal handlers installed. The first one
    /// made in a process also records the path the process was started with and its
    /// working directory, for upgrades (before an application would change directory).
    pub fn new() -> Self {
        crate::exe::record();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Shared {
            phase: watch::Sender::new(Phase::Starting),
            phase_started: Mutex::new(Instant::now()),
            timings: Mutex::new(Vec::new()),
            stop_soon: CancellationToken::new(),
            draining: AtomicBool::new(false),
            forced: CancellationToken::new(),
            drain_started: OnceLock::new(),
            deadline: OnceLock::new(),
        };
        Self {
            shared: Arc::new(shared),
            trigger: Trigger::new(tx),
            signals: rx,
        }
    }

    /// Install SIGTERM/SIGINT/SIGQUIT handlers feeding this lifecycle (see
    /// [`install_os_signals`]).
    ///
    /// # Errors
    /// Fails when the OS refuses to register a handler.
    pub fn with_os_signals(self) -> std::io::Result<Self> {
        install_os_signals(&self.trigger)?;
        Ok(self)
    }

    /// A watcher for handlers, middleware and readiness checks.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            shared: self.shared.clone(),
        }
    }

    /// A handle that feeds signals into this lifecycle.
    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// Wait for the next signal.
    pub async fn next_signal(&mut self) -> Signal {
        match self.signals.recv().await {
            Some(signal) => signal,
            // `self` holds a sender (its trigger), so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// Move to `phase`, logging how long the previous phase lasted. Moving backwards or to
    /// the same phase is ignored.
    pub fn set_phase(&self, phase: Phase) {
        let previous = *self.shared.phase.borrow();
        if phase <= previous {
            return;
        }
        let now = Instant::now();
        let elapsed = {
            let mut started = lock(&self.shared.phase_started);
            let elapsed = now.duration_since(*started);
            *started = now;
            elapsed
        };
        lock(&self.shared.timings).push(PhaseTiming {
            phase: previous,
            duration: elapsed,
        });
        self.shared.phase.send_replace(phase);
        tracing::info!(
            phase = phase.as_str(),
            previous = previous.as_str(),
            previous_ms = log_ms(elapsed),
            "phase changed"
        );
    }

    /// Enter [`Phase::Draining`]: fire the "stop soon" token and fix the hard deadline at
    /// `now + budget`. Idempotent: the first call wins.
    pub fn begin_drain(&self, budget: Duration) {
        let now = Instant::now();
        if self.shared.drain_started.set(now).is_ok() {
            let _ = self.shared.deadline.set(now + budget);
        }
        self.set_phase(Phase::Draining);
        self.fire_stop_soon();
    }

    /// Fire the "stop soon" token, its flag first.
    fn fire_stop_soon(&self) {
        self.shared.draining.store(true, Ordering::Release);
        self.shared.stop_soon.cancel();
    }

    /// Fire the forced token: every connection still open is closed at once.
    pub fn force(&self) {
        self.fire_stop_soon();
        self.shared.forced.cancel();
    }

    /// The durations of the phases completed so far.
    pub fn timings(&self) -> Vec<PhaseTiming> {
        lock(&self.shared.timings).clone()
    }
}

/// A cheap, clonable view of the lifecycle: the phase, the "stop soon" signal and the
/// deadline. Watchers only watch.
#[derive(Debug, Clone)]
pub struct Shutdown {
    shared: Arc<Shared>,
}

impl Shutdown {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.shared.phase.borrow()
    }

    /// Follow the phase as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.shared.phase.subscribe()
    }

    /// `true` from the moment draining starts.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Completes when draining starts: long-running work (streams, polling loops) should
    /// finish what it is doing and end.
    pub fn stop_soon(&self) -> WaitForCancellationFuture<'_> {
        self.shared.stop_soon.cancelled()
    }

    /// The "stop soon" token itself, for APIs that take a [`CancellationToken`]. Derive
    /// child tokens from it; cancelling a child does not affect the lifecycle.
    pub fn stop_soon_token(&self) -> CancellationToken {
        self.shared.stop_soon.child_token()
    }

    /// Completes when the server gives up waiting: at the deadline, or at once on a forced
    /// stop. Work still running then is abandoned.
    pub fn forced(&self) -> WaitForCancellationFuture<'_> {
        self.shared.forced.cancelled()
    }

    /// `true` once the server has given up waiting.
    pub fn is_forced(&self) -> bool {
        self.shared.forced.is_cancelled()
    }

    /// When the drain started, if it has.
    pub fn drain_started(&self) -> Option<Instant> {
        self.shared.drain_started.get().copied()
    }

    /// The instant after which the server cuts remaining work off; `None` while serving.
    pub fn deadline(&self) -> Option<Instant> {
        self.shared.deadline.get().copied()
    }
}

/// `d` in milliseconds, rounded to a microsecond, for a log field: `1293.012`, not
/// `1293.0121080000001`.
pub(crate) fn log_ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_durations_are_rounded_to_a_microsecond() {
        assert_eq!(
            log_ms(Duration::from_nanos(1_293_012_108_000)).to_string(),
            "1293012.108"
        );
        assert_eq!(
            log_ms(Duration::from_nanos(19_990_597_518)).to_string(),
            "19990.597"
        );
        assert_eq!(log_ms(Duration::from_nanos(999)).to_string(), "0");
        assert_eq!(log_ms(Duration::from_micros(1)).to_string(), "0.001");
    }

    #[tokio::test(start_paused = true)]
    async fn phases_only_move_forward_and_are_timed() {
        let lc = Lifecycle::new();
        let sd = lc.shutdown();
        let mut rx = sd.subscribe();
        lc.set_phase(Phase::Serving);
        lc.set_phase(Phase::Starting);
        assert_eq!(sd.phase(), Phase::Serving);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), Phase::Serving);
        lc.begin_drain(Duration::from_secs(5));
        assert!(sd.is_draining());
        assert!(!sd.is_forced());
        assert!(sd.deadline().unwrap() > sd.drain_started().unwrap());
        let phases: Vec<_> = lc.timings().iter().map(|t| t.phase).collect();
        assert_eq!(phases, [Phase::Starting, Phase::Serving]);
    }

    #[tokio::test]
    async fn first_drain_fixes_the_deadline() {
        let lc = Lifecycle::new();
        lc.begin_drain(Duration::from_secs(1));
        let first = lc.shutdown().deadline().unwrap();
        lc.begin_drain(Duration::from_secs(100));
        assert_eq!(lc.shutdown().deadline().unwrap(), first);
    }

    #[tokio::test]
    async fn trigger_feeds_next_signal() {
        let mut lc = Lifecycle::new();
        let t = lc.trigger();
        assert!(t.drain());
        assert!(t.force());
        assert_eq!(lc.next_signal().await, Signal::Graceful);
        assert_eq!(lc.next_signal().await, Signal::Forced);
    }

    #[tokio::test]
    async fn force_fires_both_tokens() {
        let lc = Lifecycle::new();
        let sd = lc.shutdown();
        lc.force();
        sd.forced().await;
        sd.stop_soon().await;
        assert!(sd.is_forced());
    }
}
