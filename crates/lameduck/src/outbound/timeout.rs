//! A per-attempt timeout that follows the dependency: the P99 of its recent latency times a
//! safety factor, clamped, and never past the request's drain deadline.
//!
//! The latencies of the last `window` are kept in HdrHistogram buckets (the `hdrhistogram`
//! crate, 2 significant digits, 1 µs to 1 h): a bucket per sixth of the window, the oldest
//! dropped as time moves on, so the quantile costs a walk over a fixed number of counters,
//! never a sort. Until the window holds `min_samples` calls the timeout is `fallback`.
//!
//! A call that times out is recorded at the timeout itself: when the dependency slows past
//! the timeout, those samples raise the P99, and the timeout grows by up to `factor` per
//! recomputation until calls complete again, instead of cutting every call at a stale P99.
//!
//! While the server drains, a call made for a request (inside lameduck's
//! [`Server`](crate::server::Server), which makes its
//! [`RequestContext`](crate::context::RequestContext) current) never waits past that
//! request's [`deadline`](crate::context::RequestContext::deadline): the timeout is cut to
//! the time left, and a call made after it fails at once with
//! [`TimeoutError::DeadlinePassed`].
//!
//! ```
//! use std::time::Duration;
//! use lameduck::outbound::timeout::{TimeoutEstimator, AdaptiveTimeoutConfig, AdaptiveTimeoutLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let timeout = TimeoutEstimator::new(AdaptiveTimeoutConfig::new("payments"));
//! assert_eq!(timeout.current(), Duration::from_secs(1)); // the fallback, for now
//! let svc = AdaptiveTimeoutLayer::new(timeout.clone())
//!     .layer(tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) }));
//! svc.oneshot(()).await.unwrap();
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

/// How the timeout is computed.
#[derive(Debug, Clone)]
pub struct AdaptiveTimeoutConfig {
    /// The dependency's name, in logs.
    pub name: String,
    /// The quantile of the window's latencies (0.99).
    pub quantile: f64,
    /// The safety factor applied to it (1.5).
    pub factor: f64,
    /// The shortest timeout (10 ms).
    pub min: Duration,
    /// The longest timeout (5 s).
    pub max: Duration,
    /// The timeout until the window holds `min_samples` calls (1 s).
    pub fallback: Duration,
    /// How far back latencies count (30 s).
    pub window: Duration,
    /// Calls the window must hold before its quantile is used (50).
    pub min_samples: u64,
}

impl AdaptiveTimeoutConfig {
    /// The defaults for the dependency `name`: P99 x 1.5, clamped to 10 ms..5 s, 1 s until
    /// 50 calls were seen in the last 30 s.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            quantile: 0.99,
            factor: 1.5,
            min: Duration::from_millis(10),
            max: Duration::from_secs(5),
            fallback: Duration::from_secs(1),
            window: Duration::from_secs(30),
            min_samples: 50,
        }
    }
}

/// Buckets of the window.
const BUCKETS: usize = 6;
/// Largest latency recorded, in microseconds (longer ones are recorded as this).
const HIGHEST_US: u64 = 3_600_000_000;

#[derive(Debug)]
struct Window {
    /// (start, latencies in µs) per bucket, a ring.
    buckets: Vec<(Instant, Histogram<u64>)>,
    newest: usize,
}

#[derive(Debug)]
struct Shared {
    config: AdaptiveTimeoutConfig,
    window: Mutex<Window>,
    /// The timeout now, in µs (recomputed after each sample).
    current_us: AtomicU64,
}

/// The timeout's state, shared by every clone and every service it wraps.
#[derive(Debug, Clone)]
pub struct TimeoutEstimator {
    shared: Arc<Shared>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs..1 h at 2 significant digits: a fixed, small set of counters. The bounds are
    // constants that `new_with_bounds` accepts, so this cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_US, 2).unwrap_or_else(|_| unreachable!())
}

impl TimeoutEstimator {
    /// A timeout at `config.fallback` until samples arrive.
    pub fn new(config: AdaptiveTimeoutConfig) -> Self {
        let now = Instant::now();
        let fallback = clamp(config.fallback, &config);
        Self {
            shared: Arc::new(Shared {
                window: Mutex::new(Window {
                    buckets: (0..BUCKETS).map(|_| (now, histogram())).collect(),
                    newest: 0,
                }),
                current_us: AtomicU64::new(micros(fallback)),
                config,
            }),
        }
    }

    /// The timeout the next call gets (before the deadline cut).
    pub fn current(&self) -> Duration {
        Duration::from_micros(self.shared.current_us.load(Ordering::Relaxed))
    }

    /// Count a call that took `latency` (or timed out after it), and recompute.
    pub fn record(&self, latency: Duration) {
        let c = &self.shared.config;
        let now = Instant::now();
        let mut w = crate::sync::lock(&self.shared.window);
        let width = (c.window / BUCKETS as u32).max(Duration::from_millis(1));
        if now.duration_since(w.buckets[w.newest].0) >= width {
            let next = (w.newest + 1) % BUCKETS;
            w.buckets[next].0 = now;
            w.buckets[next].1.reset();
            w.newest = next;
        }
        let newest = w.newest;
        w.buckets[newest]
            .1
            .saturating_record(micros(latency).clamp(1, HIGHEST_US));
        let mut all = histogram();
        for (start, h) in &w.buckets {
            if now.duration_since(*start) < c.window {
                // Same bounds: adding cannot fail.
                let _ = all.add(h);
            }
        }
        drop(w);
        let next = if all.len() < c.min_samples {
            c.fallback
        } else {
            let q = Duration::from_micros(all.value_at_quantile(c.quantile));
            q.mul_f64(c.factor)
        };
        let next = micros(clamp(next, c));
        let before = self.shared.current_us.swap(next, Ordering::Relaxed);
        if next.abs_diff(before) * 4 >= before {
            tracing::debug!(dependency = %c.name, from_ms = before as f64 / 1e3, to_ms = next as f64 / 1e3, "adaptive timeout changed");
        }
    }
}

fn clamp(d: Duration, c: &AdaptiveTimeoutConfig) -> Duration {
    d.clamp(c.min, c.max.max(c.min))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A call that took too long, or the inner service's error.
#[derive(Debug, thiserror::Error)]
pub enum TimeoutError<E> {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Elapsed(Duration),
    /// The request's drain deadline has passed: not called.
    #[error("the request's deadline has passed")]
    DeadlinePassed,
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

/// Wraps a service in an [`TimeoutEstimator`].
#[derive(Debug, Clone)]
pub struct AdaptiveTimeoutLayer {
    timeout: TimeoutEstimator,
}

impl AdaptiveTimeoutLayer {
    /// A layer around `timeout`.
    pub fn new(timeout: TimeoutEstimator) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for AdaptiveTimeoutLayer {
    type Service = AdaptiveTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveTimeout {
            inner,
            timeout: self.timeout.clone(),
        }
    }
}

/// A service whose calls get the [`TimeoutEstimator`] (see the [module](self)).
#[derive(Debug, Clone)]
pub struct AdaptiveTimeout<S> {
    inner: S,
    timeout: TimeoutEstimator,
}

impl<S, Req> Service<Req> for AdaptiveTimeout<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = TimeoutError<S::Error>;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TimeoutError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let start = Instant::now();
        let mut limit = self.timeout.current();
        let deadline = crate::context::RequestContext::current().and_then(|c| c.deadline());
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return ResponseFuture {
                    inner: None,
                    sleep: tokio::time::sleep(Duration::ZERO),
                    start,
                    limit,
                    timeout: self.timeout.clone(),
                };
            }
            limit = limit.min(left);
        }
        ResponseFuture {
            inner: Some(self.inner.call(req)),
            sleep: tokio::time::sleep(limit),
            start,
            limit,
            timeout: self.timeout.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of a call under the timeout.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Sleep,
        start: Instant,
        limit: Duration,
        timeout: TimeoutEstimator,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, TimeoutError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // No inner call: the deadline had passed when it was made.
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(TimeoutError::DeadlinePassed));
        };
        if let Poll::Ready(result) = inner.poll(cx) {
            this.timeout.record(this.start.elapsed());
            return Poll::Ready(result.map_err(TimeoutError::Inner));
        }
        std::task::ready!(this.sleep.poll(cx));
        // Censored at the limit: a slower dependency raises the quantile (module docs).
        this.timeout.record(*this.limit);
        Poll::Ready(Err(TimeoutError::Elapsed(*this.limit)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn config() -> AdaptiveTimeoutConfig {
        AdaptiveTimeoutConfig {
            min_samples: 20,
            min: Duration::from_millis(10),
            max: Duration::from_millis(800),
            fallback: Duration::from_millis(500),
            window: Duration::from_secs(6),
            ..AdaptiveTimeoutConfig::new("test")
        }
    }

    /// A call to a dependency that answers after `latency`, under `t`.
    async fn call(t: &TimeoutEstimator, latency: Duration) -> Result<(), TimeoutError<()>> {
        let svc = tower::service_fn(move |_: ()| async move {
            tokio::time::sleep(latency).await;
            Ok::<_, ()>(())
        });
        AdaptiveTimeoutLayer::new(t.clone())
            .layer(svc)
            .oneshot(())
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn it_follows_the_dependency_up_and_down_within_its_clamps() {
        let t = TimeoutEstimator::new(config());
        assert_eq!(t.current(), Duration::from_millis(500), "fallback");
        for _ in 0..40 {
            call(&t, Duration::from_millis(20)).await.expect("fast");
        }
        // P99 20 ms (2 significant digits) x 1.5.
        let fast = t.current();
        assert!(
            fast >= Duration::from_millis(29) && fast <= Duration::from_millis(31),
            "{fast:?}"
        );
        // The dependency slows to 200 ms: calls time out at first, the timeout grows until
        // they complete.
        let mut timeouts = 0;
        for _ in 0..200 {
            match call(&t, Duration::from_millis(200)).await {
                Ok(()) => {}
                Err(TimeoutError::Elapsed(_)) => timeouts += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        let slow = t.current();
        assert!(
            slow >= Duration::from_millis(290) && slow <= Duration::from_millis(310),
            "{slow:?} after {timeouts} timeouts"
        );
        assert!(timeouts > 0 && timeouts < 40, "{timeouts}");
        // Back to 20 ms: once the slow samples leave the window, the timeout comes down.
        tokio::time::advance(Duration::from_secs(7)).await;
        for _ in 0..40 {
            call(&t, Duration::from_millis(20))
                .await
                .expect("fast again");
        }
        let back = t.current();
        assert!(back <= Duration::from_millis(31), "{back:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_clamps_hold() {
        let t = TimeoutEstimator::new(config());
        for _ in 0..30 {
            call(&t, Duration::from_micros(50)).await.expect("fast");
        }
        assert_eq!(t.current(), Duration::from_millis(10), "min");
        let t = TimeoutEstimator::new(AdaptiveTimeoutConfig {
            window: Duration::from_secs(120),
            ..config()
        });
        for _ in 0..100 {
            let _ = call(&t, Duration::from_secs(5)).await;
        }
        assert_eq!(t.current(), Duration::from_millis(800), "max");
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_request_never_waits_past_its_deadline() {
        use crate::context::{RequestContext, RequestId};
        use crate::trace_context::TraceContext;
        let t = TimeoutEstimator::new(config());
        let called = Arc::new(AtomicU64::new(0));
        let seen = called.clone();
        let mut svc = AdaptiveTimeoutLayer::new(t).layer(tower::service_fn(move |_: ()| {
            seen.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<_, ()>(())
            }
        }));
        let in_request = |budget: Duration| {
            let lifecycle = crate::lifecycle::Lifecycle::new();
            lifecycle.begin_drain(budget);
            RequestContext::new(
                RequestId::generate(),
                TraceContext::new_root(),
                None,
                lifecycle.shutdown(),
            )
        };
        // 40 ms left of the drain: the 500 ms timeout is cut to them.
        let ctx = in_request(Duration::from_millis(40));
        let call = {
            let _current = ctx.enter(false);
            svc.call(())
        };
        match call.await {
            Err(TimeoutError::Elapsed(d)) => assert!(d <= Duration::from_millis(40), "{d:?}"),
            other => panic!("{other:?}"),
        }
        // No time left: refused without calling.
        let ctx = in_request(Duration::ZERO);
        let call = {
            let _current = ctx.enter(false);
            svc.call(())
        };
        assert!(matches!(call.await, Err(TimeoutError::DeadlinePassed)));
        assert_eq!(called.load(Ordering::Relaxed), 1);
    }
}
