//! Bounded retries that never run past the request's drain deadline: a
//! [`tower::retry::Policy`] for tower's `RetryLayer`.
//!
//! Each failed attempt whose error `retriable` accepts is tried again after an exponential
//! back-off with full jitter (`base x 2^attempt`, capped at `max_backoff`, then a random
//! share of it), up to `attempts` in all. Inside a request served by lameduck, no retry
//! starts when its back-off would end after the request's
//! [`deadline`](crate::context::RequestContext::deadline): the last error is returned
//! instead. Put the retries outside the circuit breaker and count an open circuit as not
//! retriable ([`not_open`]), so that an open circuit ends the retrying at once.
//!
//! ```
//! use std::time::Duration;
//! use lameduck::outbound::retry::{RetryConfig, RetryPolicy};
//! use tower::retry::RetryLayer;
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let policy = RetryPolicy::new(RetryConfig::default(), |_: &&str| true);
//! let svc = RetryLayer::new(policy)
//!     .layer(tower::service_fn(|_: u32| async { Err::<(), _>("down") }));
//! assert_eq!(svc.oneshot(7).await, Err("down")); // after 3 attempts
//! # }
//! ```

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::time::Duration;

use tower::retry::Policy;

use crate::outbound::breaker::BreakerError;

/// How often and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Attempts in all, the first included (3).
    pub attempts: u32,
    /// The first back-off's ceiling (50 ms); it doubles at each retry.
    pub base_backoff: Duration,
    /// The largest back-off (1 s).
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// `false` for a call the circuit breaker refused: retrying it would only be refused again.
pub fn not_open<E>(e: &BreakerError<E>) -> bool {
    !matches!(e, BreakerError::Open { .. })
}

/// The retry policy (see the [module](self)); `F` says which errors are worth a retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy<F> {
    config: Arc<RetryConfig>,
    /// Attempts made so far for this request.
    made: u32,
    retriable: F,
}

impl<F> RetryPolicy<F> {
    /// A policy retrying the errors `retriable` accepts.
    pub fn new(config: RetryConfig, retriable: F) -> Self {
        Self {
            config: Arc::new(config),
            made: 1,
            retriable,
        }
    }

    /// The back-off before attempt `made + 1`: a random share of `base x 2^(made-1)`,
    /// capped.
    fn backoff(&self) -> Duration {
        let c = &self.config;
        let ceiling = c
            .base_backoff
            .saturating_mul(1 << (self.made - 1).min(20))
            .min(c.max_backoff);
        // Full jitter from the standard library's per-process random keys.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(self.made);
        ceiling.mul_f64((h.finish() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

impl<Req, Res, E, F> Policy<Req, Res, E> for RetryPolicy<F>
where
    Req: Clone,
    F: Fn(&E) -> bool + Clone,
{
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        let Err(e) = result else {
            return None;
        };
        if self.made >= self.config.attempts || !(self.retriable)(e) {
            return None;
        }
        let backoff = self.backoff();
        let deadline = crate::context::RequestContext::current().and_then(|c| c.deadline());
        if deadline.is_some_and(|d| std::time::Instant::now() + backoff >= d) {
            return None;
        }
        self.made += 1;
        Some(tokio::time::sleep(backoff))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::sync::atomic::{AtomicU32, Ordering};

    use tower::retry::RetryLayer;
    use tower::{Layer, Service, ServiceExt};

    use super::*;

    /// A service failing its first `failures` calls; counts them all.
    fn flaky(
        failures: u32,
    ) -> (
        Arc<AtomicU32>,
        impl Service<(), Response = u32, Error = &'static str> + Clone,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let svc = tower::service_fn(move |_: ()| {
            let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                if n <= failures {
                    Err("down")
                } else {
                    Ok(n)
                }
            }
        });
        (calls, svc)
    }

    #[tokio::test(start_paused = true)]
    async fn it_retries_up_to_the_attempts_and_stops_on_success() {
        let (calls, svc) = flaky(2);
        let svc =
            RetryLayer::new(RetryPolicy::new(RetryConfig::default(), |_: &&str| true)).layer(svc);
        assert_eq!(svc.oneshot(()).await, Ok(3));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        let (calls, svc) = flaky(10);
        let svc =
            RetryLayer::new(RetryPolicy::new(RetryConfig::default(), |_: &&str| true)).layer(svc);
        assert_eq!(svc.oneshot(()).await, Err("down"));
        assert_eq!(calls.load(Ordering::Relaxed), 3, "3 attempts in all");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_it_does_not_accept_are_not_retried() {
        let (calls, svc) = flaky(10);
        let svc =
            RetryLayer::new(RetryPolicy::new(RetryConfig::default(), |_: &&str| false)).layer(svc);
        assert_eq!(svc.oneshot(()).await, Err("down"));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        let open: BreakerError<()> = BreakerError::Open {
            circuit: "x".into(),
            retry_after: Duration::ZERO,
        };
        assert!(!not_open(&open));
        assert!(not_open(&BreakerError::Inner(())));
    }

    #[test]
    fn backoffs_stay_under_their_doubling_ceiling() {
        let mut p = RetryPolicy::new(
            RetryConfig {
                attempts: 10,
                base_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(300),
            },
            |_: &()| true,
        );
        for (made, ceiling) in [(1, 100), (2, 200), (3, 300), (6, 300)] {
            p.made = made;
            let b = p.backoff();
            assert!(b <= Duration::from_millis(ceiling), "{made}: {b:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_starts_past_the_request_deadline() {
        use crate::context::{RequestContext, RequestId};
        use crate::trace_context::TraceContext;
        let lifecycle = crate::lifecycle::Lifecycle::new();
        lifecycle.begin_drain(Duration::ZERO);
        let ctx = RequestContext::new(
            RequestId::generate(),
            TraceContext::new_root(),
            None,
            lifecycle.shutdown(),
        );
        let (calls, svc) = flaky(10);
        let mut svc =
            RetryLayer::new(RetryPolicy::new(RetryConfig::default(), |_: &&str| true)).layer(svc);
        let fut = svc.call(());
        // The policy reads the current request while the retry future is polled.
        let result = {
            let mut fut = std::pin::pin!(fut);
            std::future::poll_fn(|cx| {
                let _current = ctx.enter(false);
                fut.as_mut().poll(cx)
            })
            .await
        };
        assert_eq!(result, Err("down"));
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "the deadline had passed: no retry"
        );
    }
}
