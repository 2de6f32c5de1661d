//! A circuit breaker: stop calling a dependency that keeps failing, and try it again in a
//! measured way.
//!
//! ```text
//!            failures >= ratio over the window (with enough calls),
//!            or N consecutive failures
//!   Closed ------------------------------------------------> Open
//!     ^                                                      |  |
//!     |  `half_open_trials` trials succeed    `open_for` has |  | (calls fail fast
//!     |                                       passed         v  |  with BreakerError::Open)
//!     +------------------------------------------------- HalfOpen
//!                    a trial fails: Open again ------------^
//! ```
//!
//! Every error of the inner service counts as a failure, so put the per-attempt timeout
//! inside the breaker (a timeout is then a failure) and map answers that mean "failed"
//! (an HTTP 5xx) to errors before it. Time is tokio's clock. While open, [`Breaker`] answers
//! [`BreakerError::Open`] without calling the inner service. Each transition is logged
//! (warn when it opens, info otherwise) and the state is exported with
//! [`Metrics::with_circuit`](crate::metrics::Metrics::with_circuit) as
//! `lameduck_circuit_state{circuit}`.
//!
//! ```
//! use std::time::Duration;
//! use lameduck::outbound::breaker::{CircuitBreaker, BreakerConfig, BreakerLayer, BreakerState};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let breaker = CircuitBreaker::new(BreakerConfig {
//!     consecutive_failures: 2,
//!     ..BreakerConfig::new("payments")
//! });
//! let failing = tower::service_fn(|_: ()| async { Err::<(), _>("refused") });
//! let svc = BreakerLayer::new(breaker.clone()).layer(failing);
//! assert!(svc.clone().oneshot(()).await.is_err());
//! assert!(svc.clone().oneshot(()).await.is_err());
//! assert_eq!(breaker.state(), BreakerState::Open);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service};

/// When the breaker opens and how it tries again.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// The circuit's name, in logs and metrics.
    pub name: String,
    /// Open when at least this share of the calls in the window failed (0.0 to 1.0).
    pub failure_ratio: f64,
    /// ...and the window holds at least this many calls.
    pub min_calls: u32,
    /// The window over which the ratio is counted.
    pub window: Duration,
    /// Open after this many failures in a row, whatever the ratio (0: never).
    pub consecutive_failures: u32,
    /// How long it stays open before trying again.
    pub open_for: Duration,
    /// Trial calls let through when half-open; all must succeed for it to close.
    pub half_open_trials: u32,
}

impl BreakerConfig {
    /// The defaults, for the circuit `name`: open at 50 % failures over 10 s with at least
    /// 20 calls, or at 5 failures in a row; open for 5 s; 3 trial calls.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            consecutive_failures: 5,
            open_for: Duration::from_secs(5),
            half_open_trials: 3,
        }
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// A bounded number of trial calls go through.
    HalfOpen,
}

impl BreakerState {
    /// The metric's value: 0 closed, 1 open, 2 half-open.
    pub fn as_metric(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// A call the breaker refused, or the inner service's error.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The circuit is open (or half-open with every trial taken): not called.
    #[error("circuit {circuit} is open; retry in {retry_after:?}")]
    Open {
        /// The circuit's name.
        circuit: String,
        /// When it will let a trial through, at the earliest.
        retry_after: Duration,
    },
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

/// Buckets the window is counted in.
const BUCKETS: usize = 10;

#[derive(Debug)]
struct Machine {
    state: BreakerState,
    /// Bumped at each transition: outcomes of calls let through before it are ignored.
    epoch: u64,
    since: Instant,
    /// (start of the bucket, calls, failures), a ring over the window.
    buckets: [(Instant, u32, u32); BUCKETS],
    consecutive: u32,
    /// Half-open: trials let through, and trials that succeeded.
    trials: u32,
    successes: u32,
}

#[derive(Debug)]
struct Shared {
    config: BreakerConfig,
    machine: Mutex<Machine>,
    rejected: AtomicU64,
}

/// A circuit breaker's state, shared by every clone and every service it wraps.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        let now = Instant::now();
        Self {
            shared: Arc::new(Shared {
                config,
                machine: Mutex::new(Machine {
                    state: BreakerState::Closed,
                    epoch: 0,
                    since: now,
                    buckets: [(now, 0, 0); BUCKETS],
                    consecutive: 0,
                    trials: 0,
                    successes: 0,
                }),
                rejected: AtomicU64::new(0),
            }),
        }
    }

    /// The circuit's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The state now (an open breaker whose time is up reads half-open).
    pub fn state(&self) -> BreakerState {
        let mut m = self.machine();
        self.expire(&mut m, Instant::now());
        m.state
    }

    /// Calls refused so far.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }

    fn machine(&self) -> MutexGuard<'_, Machine> {
        // The machine's invariants hold between statements: a panic elsewhere while the
        // lock was held leaves it usable.
        crate::sync::lock(&self.shared.machine)
    }

    /// Open -> half-open once `open_for` has passed.
    fn expire(&self, m: &mut Machine, now: Instant) {
        if m.state == BreakerState::Open
            && now.duration_since(m.since) >= self.shared.config.open_for
        {
            self.enter(
                m,
                BreakerState::HalfOpen,
                now,
                "open time is up: letting trial calls through",
            );
        }
    }

    fn enter(&self, m: &mut Machine, to: BreakerState, now: Instant, why: &str) {
        let from = m.state;
        m.state = to;
        m.epoch += 1;
        m.since = now;
        m.trials = 0;
        m.successes = 0;
        m.consecutive = 0;
        if to == BreakerState::Closed {
            m.buckets = [(now, 0, 0); BUCKETS];
        }
        let circuit = &*self.shared.config.name;
        if to == BreakerState::Open {
            tracing::warn!(
                circuit,
                from = from.as_str(),
                to = to.as_str(),
                why,
                "circuit breaker opened"
            );
        } else {
            tracing::info!(
                circuit,
                from = from.as_str(),
                to = to.as_str(),
                why,
                "circuit breaker state changed"
            );
        }
    }

    /// Let a call through (its permit records the outcome), or say how long until a trial.
    fn admit(&self) -> Result<Permit, Duration> {
        let now = Instant::now();
        let mut m = self.machine();
        self.expire(&mut m, now);
        let c = &self.shared.config;
        let admitted = match m.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen if m.trials < c.half_open_trials.max(1) => {
                m.trials += 1;
                true
            }
            BreakerState::HalfOpen => false,
            BreakerState::Open => false,
        };
        if admitted {
            return Ok(Permit {
                breaker: self.clone(),
                epoch: m.epoch,
                done: false,
            });
        }
        self.shared.rejected.fetch_add(1, Ordering::Relaxed);
        Err(match m.state {
            BreakerState::Open => c.open_for.saturating_sub(now.duration_since(m.since)),
            // Every trial is out: the answer comes within one call's time.
            _ => Duration::from_secs(1),
        })
    }

    fn record(&self, epoch: u64, failed: bool) {
        let now = Instant::now();
        let mut m = self.machine();
        if m.epoch != epoch {
            return;
        }
        let c = &self.shared.config;
        match m.state {
            BreakerState::Closed => {
                let (calls, failures) = count(&mut m.buckets, c.window, now, failed);
                m.consecutive = if failed { m.consecutive + 1 } else { 0 };
                if c.consecutive_failures > 0 && m.consecutive >= c.consecutive_failures {
                    let why = format!("{} failures in a row", m.consecutive);
                    self.enter(&mut m, BreakerState::Open, now, &why);
                } else if calls >= c.min_calls.max(1)
                    && f64::from(failures) >= c.failure_ratio * f64::from(calls)
                {
                    let why = format!("{failures} of {calls} calls failed");
                    self.enter(&mut m, BreakerState::Open, now, &why);
                }
            }
            BreakerState::HalfOpen if failed => {
                self.enter(&mut m, BreakerState::Open, now, "a trial call failed");
            }
            BreakerState::HalfOpen => {
                m.successes += 1;
                if m.successes >= c.half_open_trials.max(1) {
                    self.enter(
                        &mut m,
                        BreakerState::Closed,
                        now,
                        "every trial call succeeded",
                    );
                }
            }
            BreakerState::Open => {}
        }
    }

    /// A trial that ended without an outcome (its future was dropped) gives its place back.
    fn abandon(&self, epoch: u64) {
        let mut m = self.machine();
        if m.epoch == epoch && m.state == BreakerState::HalfOpen {
            m.trials = m.trials.saturating_sub(1);
        }
    }
}

/// Count a call in the window's current bucket, clearing buckets older than the window;
/// returns the window's calls and failures.
fn count(
    buckets: &mut [(Instant, u32, u32); BUCKETS],
    window: Duration,
    now: Instant,
    failed: bool,
) -> (u32, u32) {
    let width = (window / BUCKETS as u32).max(Duration::from_millis(1));
    let newest = buckets
        .iter()
        .enumerate()
        .max_by_key(|(_, b)| b.0)
        .map_or(0, |(i, _)| i);
    let mut at = newest;
    if now.duration_since(buckets[newest].0) >= width {
        at = (newest + 1) % BUCKETS;
        buckets[at] = (now, 0, 0);
    }
    buckets[at].1 += 1;
    buckets[at].2 += u32::from(failed);
    buckets
        .iter()
        .filter(|b| now.duration_since(b.0) < window)
        .fold((0, 0), |(c, f), b| (c + b.1, f + b.2))
}

/// The right to make one call; records its outcome, or gives a trial's place back when
/// dropped without one.
#[derive(Debug)]
struct Permit {
    breaker: CircuitBreaker,
    epoch: u64,
    done: bool,
}

impl Permit {
    fn finish(mut self, failed: bool) {
        self.done = true;
        self.breaker.record(self.epoch, failed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.abandon(self.epoch);
        }
    }
}

/// Wraps a service in a [`CircuitBreaker`] (shared by every service the layer makes).
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    breaker: CircuitBreaker,
}

impl BreakerLayer {
    /// A layer around `breaker`.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// A service behind a circuit breaker (see the [module](self)).
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    breaker: CircuitBreaker,
}

impl<S, Req> Service<Req> for Breaker<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = BreakerError<S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BreakerError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.breaker.admit() {
            Err(retry_after) => ResponseFuture {
                inner: None,
                permit: None,
                refused: Some((self.breaker.name().to_string(), retry_after)),
            },
            Ok(permit) => ResponseFuture {
                inner: Some(self.inner.call(req)),
                permit: Some(permit),
                refused: None,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a call behind the breaker: the inner call's, its outcome recorded, or
    /// at once [`BreakerError::Open`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<Permit>,
        refused: Option<(String, Duration)>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, BreakerError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            let (circuit, retry_after) = this.refused.take().unwrap_or_default();
            return Poll::Ready(Err(BreakerError::Open {
                circuit,
                retry_after,
            }));
        };
        let result = std::task::ready!(inner.poll(cx));
        if let Some(permit) = this.permit.take() {
            permit.finish(result.is_err());
        }
        Poll::Ready(result.map_err(BreakerError::Inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn breaker(f: impl FnOnce(&mut BreakerConfig)) -> CircuitBreaker {
        let mut c = BreakerConfig::new("test");
        f(&mut c);
        CircuitBreaker::new(c)
    }

    async fn call(b: &CircuitBreaker, fail: bool) -> Result<(), BreakerError<&'static str>> {
        let svc = tower::service_fn(move |_: ()| async move {
            if fail {
                Err("down")
            } else {
                Ok(())
            }
        });
        BreakerLayer::new(b.clone()).layer(svc).oneshot(()).await
    }

    #[tokio::test]
    async fn consecutive_failures_open_it_and_open_fails_fast_without_calling() {
        let b = breaker(|c| c.consecutive_failures = 3);
        for _ in 0..2 {
            assert!(matches!(call(&b, true).await, Err(BreakerError::Inner(_))));
        }
        assert!(call(&b, false).await.is_ok(), "a success resets the run");
        for _ in 0..3 {
            let _ = call(&b, true).await;
        }
        assert_eq!(b.state(), BreakerState::Open);
        let called = Arc::new(AtomicU64::new(0));
        let seen = called.clone();
        let svc = tower::service_fn(move |_: ()| {
            seen.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, &str>(()) }
        });
        let err = BreakerLayer::new(b.clone()).layer(svc).oneshot(()).await;
        assert!(
            matches!(&err, Err(BreakerError::Open { circuit, retry_after }) if circuit == "test" && *retry_after <= Duration::from_secs(5)),
            "{err:?}"
        );
        assert_eq!(called.load(Ordering::Relaxed), 0, "not called while open");
        assert_eq!(b.rejected(), 1);
    }

    #[tokio::test]
    async fn a_failure_ratio_opens_it_only_with_enough_calls() {
        let b = breaker(|c| {
            c.consecutive_failures = 0;
            c.min_calls = 10;
            c.failure_ratio = 0.5;
        });
        // Calls 1, 3, 5, 7 fail: 4 of 9, below min_calls anyway.
        for i in 0..9 {
            let _ = call(&b, i % 2 == 1).await;
            assert_eq!(b.state(), BreakerState::Closed, "call {i}: below min_calls");
        }
        let _ = call(&b, false).await;
        assert_eq!(b.state(), BreakerState::Closed, "4 of 10 failed");
        let _ = call(&b, true).await;
        assert_eq!(b.state(), BreakerState::Closed, "5 of 11 failed");
        let _ = call(&b, true).await;
        assert_eq!(b.state(), BreakerState::Open, "6 of 12 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_the_window_do_not_count() {
        let b = breaker(|c| {
            c.consecutive_failures = 0;
            c.min_calls = 3;
            c.window = Duration::from_secs(1);
        });
        let _ = call(&b, true).await;
        let _ = call(&b, true).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        let _ = call(&b, false).await;
        let _ = call(&b, false).await;
        let _ = call(&b, true).await;
        assert_eq!(b.state(), BreakerState::Closed, "1 of 3 in the window");
        let _ = call(&b, true).await;
        assert_eq!(b.state(), BreakerState::Open, "2 of 4 in the window");
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_a_bounded_number_of_trials_through_and_closes_on_their_success() {
        let b = breaker(|c| {
            c.consecutive_failures = 1;
            c.open_for = Duration::from_millis(30);
            c.half_open_trials = 2;
        });
        let _ = call(&b, true).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(29)).await;
        assert_eq!(b.state(), BreakerState::Open, "not before open_for");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Two trials in flight: a third is refused.
        let p1 = b.admit().expect("trial 1");
        let p2 = b.admit().expect("trial 2");
        assert!(b.admit().is_err(), "only 2 trials");
        // A trial whose future is dropped gives its place back.
        drop(p2);
        let p3 = b.admit().expect("trial 2 again");
        p1.finish(false);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p3.finish(false);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_opens_it_again_and_stale_outcomes_are_ignored() {
        let b = breaker(|c| {
            c.consecutive_failures = 1;
            c.open_for = Duration::from_millis(20);
        });
        let slow = b.admit().expect("closed"); // a call from before it opened
        let _ = call(&b, true).await;
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        slow.finish(false); // belongs to the closed period: not a trial's success
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let _ = call(&b, true).await;
        assert_eq!(b.state(), BreakerState::Open, "the trial failed");
    }
}
