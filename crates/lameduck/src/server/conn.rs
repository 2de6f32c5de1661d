//! One client connection: the per-connection service wrapper, the I/O wrapper that notices
//! header bytes, and the driver that decides when to retire the connection.
//!
//! Retirement rules live in [`decide`], a pure function, so they can be tested without
//! sockets:
//! - a request head must arrive within `header_read_timeout` of its first byte (or of the
//!   accept, for the first request), else the connection is cut (slowloris);
//! - while serving, a connection idle for `idle_timeout` is closed gracefully;
//! - while draining, HTTP/2 gets GOAWAY at once; an idle HTTP/1 connection is kept until it
//!   has been idle for `idle_grace` counted from the later of its last response and the
//!   start of the drain, so a client reusing it gets a response with `Connection: close`
//!   rather than a reset;
//! - a connection that has not sent a byte counts as idle during the drain: it is closed
//!   after `idle_grace` (at least one second from its accept) too, not held until its
//!   header timeout; a client that connected just before or during the drain and sends its
//!   request within that time is answered;
//! - a connection asked to close that stays idle for another `idle_grace` is dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use http::Version;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::head_limit::{too_large_response, HeadCheck, HeadLimit};
use crate::lifecycle::Shutdown;

mod tracked_io;
pub(crate) use tracked_io::TrackedIo;

/// During the drain, the least time a connection that has sent nothing gets, from the
/// later of its accept and the drain's start, to start its request.
pub(crate) const SILENT_GRACE: Duration = Duration::from_secs(1);

const VERSION_UNKNOWN: u8 = 0;
const VERSION_H1: u8 = 1;
const VERSION_H2: u8 = 2;

/// Shared state of one connection, updated by the service wrapper and the I/O wrapper and
/// read by the driver. Instants are stored as nanoseconds since `born` (0 = none).
#[derive(Debug)]
pub(crate) struct ConnState {
    born: Instant,
    /// `born` on the raw monotonic clock (`Instant`'s clock), for [`ConnState::stamp`].
    born_raw: Option<u64>,
    active: AtomicUsize,
    last_active: AtomicU64,
    head_started: AtomicU64,
    /// Whether any byte has arrived.
    heard: AtomicBool,
    version: AtomicU8,
    changed: Notify,
    /// The driver's watchers (its timer, the tokens, `changed`) wake its task through this
    /// state (see [`drive`]): one of them fired.
    watch_fired: AtomicBool,
    /// The driver's task, for the watchers to wake.
    watch_task: AtomicWaker,
}

impl ConnState {
    pub(crate) fn new() -> Self {
        Self {
            // Read in this order: a raw stamp runs behind an `Instant` by at most the gap.
            born: Instant::now(),
            born_raw: monotonic_nanos(),
            active: AtomicUsize::new(0),
            last_active: AtomicU64::new(0),
            // The first request head is due from the accept on.
            head_started: AtomicU64::new(1),
            heard: AtomicBool::new(false),
            version: AtomicU8::new(VERSION_UNKNOWN),
            changed: Notify::new(),
            watch_fired: AtomicBool::new(false),
            watch_task: AtomicWaker::new(),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.born).as_nanos() as u64 + 1
    }

    /// Now, as nanoseconds since `born` (plus one): the raw clock read, without the
    /// `Instant` arithmetic of [`ConnState::nanos`] (about 40 instructions fewer each, two
    /// stamps per request).
    #[inline]
    fn stamp(&self) -> u64 {
        match (self.born_raw, monotonic_nanos()) {
            (Some(born), Some(now)) => now.saturating_sub(born) + 1,
            _ => self.nanos(Instant::now()),
        }
    }

    fn instant(&self, nanos: u64) -> Option<Instant> {
        (nanos != 0).then(|| self.born + Duration::from_nanos(nanos - 1))
    }

    /// A request was handed over: it counts on the connection until the guard drops.
    /// Also gives when its head's first byte arrived (HTTP/1; `None` on HTTP/2), which
    /// serves as the request's start: one clock read fewer per request.
    pub(crate) fn begin(self: &Arc<Self>, version: Version) -> (ActiveGuard, Option<Instant>) {
        let v = if version == Version::HTTP_2 {
            VERSION_H2
        } else {
            VERSION_H1
        };
        self.version.store(v, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel);
        let head = self.head_started.swap(0, Ordering::Relaxed);
        let guard = ActiveGuard {
            state: self.clone(),
        };
        (guard, self.instant(head))
    }

    /// Bytes arrived. When no request is running on an HTTP/1 connection they belong to a
    /// request head: `Some(true)` when they start a new one, `Some(false)` when one was in
    /// progress; `None` when a request is running (or on HTTP/2).
    fn on_read(&self) -> Option<bool> {
        if self.active.load(Ordering::Acquire) != 0
            || self.version.load(Ordering::Relaxed) == VERSION_H2
        {
            return None;
        }
        // The first bytes of the connection replace the accept as its first head's start.
        let first = !self.heard.load(Ordering::Relaxed);
        if first {
            self.heard.store(true, Ordering::Relaxed);
        } else if self.head_started.load(Ordering::Relaxed) != 0 {
            return Some(false);
        }
        self.head_started.store(self.stamp(), Ordering::Relaxed);
        Some(true)
    }

    /// A state whose connection was accepted `ago` (tests of what depends on the age).
    #[cfg(test)]
    pub(crate) fn aged(ago: Duration) -> Self {
        let mut s = Self::new();
        s.born -= ago;
        s.born_raw = None;
        s
    }

    /// When the connection was accepted.
    pub(crate) fn born(&self) -> Instant {
        self.born
    }

    /// Whether a request is being served (its head complete, its response not sent yet).
    pub(crate) fn serving(&self) -> bool {
        self.active.load(Ordering::Acquire) != 0
    }

    /// Whether a request head has started arriving and no request was handed over for it:
    /// what is written now is hyper's own answer to a head it refused.
    #[inline]
    fn head_refused_by_hyper(&self) -> bool {
        self.heard.load(Ordering::Relaxed)
            && self.head_started.load(Ordering::Relaxed) != 0
            && self.active.load(Ordering::Acquire) == 0
    }

    fn snapshot(&self) -> ConnSnapshot {
        let last = self.last_active.load(Ordering::Relaxed);
        ConnSnapshot {
            active: self.active.load(Ordering::Acquire),
            idle_since: self.instant(last).unwrap_or(self.born),
            head_started: self.instant(self.head_started.load(Ordering::Relaxed)),
            http2: self.version.load(Ordering::Relaxed) == VERSION_H2,
            silent: !self.heard.load(Ordering::Relaxed),
        }
    }
}

/// Marks a request as finished on its connection when its response body is done.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    state: Arc<ConnState>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let s = &self.state;
        s.last_active.store(s.stamp(), Ordering::Relaxed);
        s.active.fetch_sub(1, Ordering::AcqRel);
        s.changed.notify_one();
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock `Instant::now` reads on Linux.
#[inline]
fn monotonic_nanos() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    let secs = u64::try_from(t.tv_sec()).ok()?;
    Some(secs * 1_000_000_000 + u64::try_from(t.tv_nsec()).ok()?)
}

/// What the driver knows about a connection at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnSnapshot {
    pub(crate) active: usize,
    pub(crate) idle_since: Instant,
    pub(crate) head_started: Option<Instant>,
    pub(crate) http2: bool,
    /// No byte has arrived yet.
    pub(crate) silent: bool,
}

/// The connection timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnLimits {
    /// Largest HTTP/1 request head (lameduck's own check, below hyper's buffer).
    pub(crate) max_header_bytes: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) idle_grace: Duration,
}

/// What the driver should do now, and when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing yet; look again at this instant (or when a request ends).
    Wait(Instant),
    /// Ask the protocol to close: GOAWAY for HTTP/2, close-when-idle for HTTP/1.
    Graceful,
    /// Drop the connection now.
    Close,
}

/// The retirement rules. `drain_started` is set while draining; `graceful_sent` once
/// [`Action::Graceful`] was acted on.
pub(crate) fn decide(
    now: Instant,
    c: ConnSnapshot,
    limits: ConnLimits,
    drain_started: Option<Instant>,
    graceful_sent: Option<Instant>,
) -> Action {
    let mut next = now + limits.idle_timeout;
    if c.active == 0 {
        if let Some(head) = c.head_started {
            let due = head + limits.header_read_timeout;
            if now >= due {
                return Action::Close;
            }
            next = next.min(due);
        }
    }
    if let Some(sent) = graceful_sent {
        if c.active == 0 {
            let due = sent.max(c.idle_since) + limits.idle_grace;
            if now >= due {
                return Action::Close;
            }
            next = next.min(due);
        }
        return Action::Wait(next);
    }
    match drain_started {
        Some(_) if c.http2 => Action::Graceful,
        // Silent so far: idle, whatever its header timeout says, but with at least
        // SILENT_GRACE from its accept to start its request (one accepted during the drain,
        // from the backlog or during the drain delay, is a client that just connected).
        Some(t0) if c.silent => {
            let idle = ConnSnapshot {
                head_started: None,
                ..c
            };
            let grace = limits.idle_grace.max(SILENT_GRACE);
            idle_for(now, idle, t0.max(c.idle_since), grace, next)
        }
        Some(t0) => idle_for(now, c, t0.max(c.idle_since), limits.idle_grace, next),
        None => idle_for(now, c, c.idle_since, limits.idle_timeout, next),
    }
}

fn idle_for(
    now: Instant,
    c: ConnSnapshot,
    since: Instant,
    limit: Duration,
    next: Instant,
) -> Action {
    if c.active > 0 || c.head_started.is_some() {
        return Action::Wait(next);
    }
    let due = since + limit;
    if now >= due {
        Action::Graceful
    } else {
        Action::Wait(next.min(due))
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The protocol finished (client closed, or a graceful close completed).
    Finished,
    /// Dropped by a timeout rule.
    Cut,
    /// Dropped because the shutdown was forced.
    Abandoned,
}

/// Run `conn` to completion under the retirement rules; `graceful` asks it to close.
///
/// `conn` is pinned by the caller, in place: taking it by value would store the connection
/// (hyper's state, about 1.7 KiB) twice in this future, once as the argument and once
/// pinned, and that memory is held by every open connection.
pub(crate) async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    graceful: impl Fn(Pin<&mut C>),
    state: &Arc<ConnState>,
    shutdown: &Shutdown,
    limits: ConnLimits,
) -> Ended
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut graceful_sent = None;
    // The connection's state is the watchers' waker: no allocation of its own.
    let watch_waker = Waker::from(state.clone());
    loop {
        let now = Instant::now();
        let action = decide(
            now,
            state.snapshot(),
            limits,
            shutdown.drain_started(),
            graceful_sent,
        );
        let wake = match action {
            Action::Close => return Ended::Cut,
            Action::Graceful => {
                graceful(conn.as_mut());
                graceful_sent = Some(now);
                now + limits.idle_grace.max(Duration::from_millis(1))
            }
            Action::Wait(at) => at,
        };
        let draining = shutdown.is_draining();
        let sleep = tokio::time::sleep_until(wake.into());
        // While serving, only the drain's start matters (a forced stop starts it too); while
        // draining, the forced stop. One future for either (the same type): every open
        // connection holds it.
        let token = if draining {
            shutdown.forced()
        } else {
            shutdown.stop_soon()
        };
        let changed = state.changed.notified();
        tokio::pin!(sleep, token, changed);
        // The watchers wake the task through the state: a wake of the connection (every
        // request) polls the connection alone, not the timer and the tokens as well.
        state.watch_fired.store(true, Ordering::Release);
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(res) = conn.as_mut().poll(cx) {
                return Poll::Ready(Woke::Conn(res));
            }
            state.watch_task.register(cx.waker());
            if !state.watch_fired.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut wcx = Context::from_waker(&watch_waker);
            if token.as_mut().poll(&mut wcx).is_ready() {
                return Poll::Ready(if draining { Woke::Forced } else { Woke::Look });
            }
            if draining && changed.as_mut().poll(&mut wcx).is_ready() {
                return Poll::Ready(Woke::Look);
            }
            if sleep.as_mut().poll(&mut wcx).is_ready() {
                return Poll::Ready(Woke::Look);
            }
            Poll::Pending
        })
        .await;
        match woke {
            Woke::Conn(res) => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return Ended::Finished;
            }
            Woke::Forced => return Ended::Abandoned,
            Woke::Look => {}
        }
    }
}

/// Why [`drive`] woke up.
enum Woke<E> {
    /// The connection ended.
    Conn(Result<(), E>),
    /// The shutdown was forced.
    Forced,
    /// A timer, the drain's start or a request's end: decide again.
    Look,
}

/// The waker the driver gives its watchers (the timer, the tokens, the request-end
/// notification): notes that one of them fired, then wakes the driver's task.
impl Wake for ConnState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.watch_fired.store(true, Ordering::Release);
        self.watch_task.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnLimits = ConnLimits {
        max_header_bytes: 65536,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        idle_grace: Duration::from_secs(1),
    };

    fn idle(since: Instant) -> ConnSnapshot {
        ConnSnapshot {
            active: 0,
            idle_since: since,
            head_started: None,
            http2: false,
            silent: false,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_raw_stamp_agrees_with_the_instants_read_around_it() {
        let s = ConnState::new();
        for _ in 0..1000 {
            let before = s.nanos(Instant::now());
            let stamp = s.stamp();
            let after = s.nanos(Instant::now());
            // `born_raw` is read just after `born`: a raw stamp may run behind by that gap.
            assert!(stamp <= after, "{stamp} after {after}");
            assert!(stamp + 1_000_000 >= before, "{stamp} long before {before}");
        }
        assert!(s.born_raw.is_some(), "the raw clock is read on this system");
    }

    #[test]
    fn the_driver_holds_no_copy_of_the_connection() {
        // A stand-in connection of 4 KiB: the driver must only point at it, since every
        // open connection pays for the driver's size.
        let conn = std::pin::pin!(async {
            let state = [7u8; 4096];
            std::future::pending::<()>().await;
            if state[0] == 7 {
                Ok(())
            } else {
                Err(std::io::Error::other("unreachable"))
            }
        });
        let state = Arc::new(ConnState::new());
        let shutdown = crate::lifecycle::Lifecycle::new().shutdown();
        let driver = drive(conn, |_| {}, &state, &shutdown, LIMITS);
        let size = std::mem::size_of_val(&driver);
        // 528 bytes on x86_64 (one token future for the drain's start or the forced stop,
        // the timer, the request-end notification, and the waker in the connection state).
        assert!(size <= 576, "the driver future is {size} bytes");
    }

    #[test]
    fn an_idle_http1_connection_survives_the_start_of_the_drain() {
        let t = Instant::now();
        let c = idle(t);
        // Idle for a minute, drain starts now: kept for idle_grace, not closed at once.
        let now = t + secs(60);
        assert_eq!(
            decide(now, c, LIMITS, Some(now), None),
            Action::Wait(now + secs(1))
        );
        assert_eq!(
            decide(now + secs(1), c, LIMITS, Some(now), None),
            Action::Graceful
        );
    }

    #[test]
    fn a_busy_connection_is_never_retired_by_the_drain() {
        let t = Instant::now();
        let c = ConnSnapshot {
            active: 1,
            ..idle(t)
        };
        assert!(matches!(
            decide(t + secs(100), c, LIMITS, Some(t), None),
            Action::Wait(_)
        ));
    }

    #[test]
    fn http2_gets_goaway_as_soon_as_the_drain_starts() {
        let t = Instant::now();
        let c = ConnSnapshot {
            active: 3,
            http2: true,
            ..idle(t)
        };
        assert_eq!(decide(t, c, LIMITS, Some(t), None), Action::Graceful);
    }

    #[test]
    fn a_slow_request_head_is_cut_at_the_header_timeout() {
        let t = Instant::now();
        let c = ConnSnapshot {
            head_started: Some(t),
            ..idle(t)
        };
        assert_eq!(
            decide(t + secs(9), c, LIMITS, None, None),
            Action::Wait(t + secs(10))
        );
        assert_eq!(decide(t + secs(10), c, LIMITS, None, None), Action::Close);
    }

    #[test]
    fn steady_state_idle_timeout_closes_gracefully() {
        let t = Instant::now();
        assert!(matches!(
            decide(t + secs(119), idle(t), LIMITS, None, None),
            Action::Wait(_)
        ));
        assert_eq!(
            decide(t + secs(120), idle(t), LIMITS, None, None),
            Action::Graceful
        );
    }

    #[test]
    fn a_peer_that_ignores_the_close_is_dropped_after_another_grace() {
        let t = Instant::now();
        let c = ConnSnapshot {
            http2: true,
            ..idle(t)
        };
        assert!(matches!(
            decide(t, c, LIMITS, Some(t), Some(t)),
            Action::Wait(_)
        ));
        assert_eq!(
            decide(t + secs(1), c, LIMITS, Some(t), Some(t)),
            Action::Close
        );
    }

    #[test]
    fn a_connection_that_sent_nothing_goes_after_the_idle_grace_not_its_header_timeout() {
        let t = Instant::now();
        let silent = ConnSnapshot {
            head_started: Some(t),
            silent: true,
            ..idle(t)
        };
        // Serving: the header timeout governs (slowloris).
        assert_eq!(
            decide(t + secs(10), silent, LIMITS, None, None),
            Action::Close
        );
        // Draining from t + 2: closed at t + 3, not at t + 10.
        let t0 = t + secs(2);
        assert_eq!(
            decide(t0, silent, LIMITS, Some(t0), None),
            Action::Wait(t0 + secs(1))
        );
        assert_eq!(
            decide(t0 + secs(1), silent, LIMITS, Some(t0), None),
            Action::Graceful
        );
        // With no idle grace, a silent connection still gets SILENT_GRACE from its accept.
        let new = ConnSnapshot {
            idle_since: t0,
            ..silent
        };
        let no_grace = ConnLimits {
            idle_grace: Duration::ZERO,
            ..LIMITS
        };
        assert_eq!(
            decide(t0, new, no_grace, Some(t0), None),
            Action::Wait(t0 + SILENT_GRACE)
        );
        // Once it has sent part of a head, the header timeout governs again.
        let heard = ConnSnapshot {
            silent: false,
            ..silent
        };
        assert!(matches!(
            decide(t0 + secs(1), heard, LIMITS, Some(t0), None),
            Action::Wait(_)
        ));
    }

    #[test]
    fn zero_idle_grace_closes_idle_connections_at_once() {
        let t = Instant::now();
        let limits = ConnLimits {
            idle_grace: Duration::ZERO,
            ..LIMITS
        };
        assert_eq!(decide(t, idle(t), limits, Some(t), None), Action::Graceful);
    }
}
