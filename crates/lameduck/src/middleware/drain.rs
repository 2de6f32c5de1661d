//! Drain admission: what happens to requests while the server drains.
//!
//! From the moment draining starts, every HTTP/1 response carries `Connection: close`, so a
//! client learns on its next response that it must open a new connection (to another
//! replica, or to the new process after an upgrade). Requests that arrive late in the drain
//! are served by default; [`DrainPolicy::RejectAfter`] answers them `503` with
//! `Retry-After` and `Connection: close` instead.
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use lameduck::lifecycle::Lifecycle;
//! use lameduck::middleware::drain::{DrainAdmissionLayer, DrainPolicy};
//!
//! let lifecycle = Lifecycle::new();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(DrainAdmissionLayer::new(lifecycle.shutdown())
//!         .policy(DrainPolicy::RejectAfter(Duration::from_secs(5))));
//! # let _ = app;
//! ```
//!
//! [`Server`](crate::server::Server) marks HTTP/1 responses itself; this layer is for apps
//! served by another server that still want the marking and the policy.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error_response::error_response;
use crate::lifecycle::Shutdown;
use crate::metrics::Metrics;

/// The `Retry-After` value sent with a drain refusal, unless configured otherwise.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What to do with a request that arrives while the server drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DrainPolicy {
    /// Serve it (with `Connection: close` on HTTP/1). The default: a request that reached
    /// this process is cheapest to serve here.
    #[default]
    Serve,
    /// Serve requests that arrive within this long after draining started; refuse later
    /// ones with 503, `Retry-After` and `Connection: close`.
    RejectAfter(Duration),
}

/// Marks responses during the drain and applies a [`DrainPolicy`]. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct DrainAdmissionLayer {
    shutdown: Shutdown,
    policy: DrainPolicy,
    retry_after: HeaderValue,
    metrics: Option<Metrics>,
}

impl DrainAdmissionLayer {
    /// Serve every request, marking HTTP/1 responses with `Connection: close` during the
    /// drain.
    pub fn new(shutdown: Shutdown) -> Self {
        Self {
            shutdown,
            policy: DrainPolicy::Serve,
            retry_after: HeaderValue::from(DEFAULT_RETRY_AFTER.as_secs()),
            metrics: None,
        }
    }

    /// Count refused requests in `metrics` (`lameduck_http_requests_rejected_total`).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Set the policy for requests that arrive during the drain.
    pub fn policy(mut self, policy: DrainPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The `Retry-After` sent with a refusal (whole seconds, at least 1; default
    /// [`DEFAULT_RETRY_AFTER`]).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = HeaderValue::from(after.as_secs().max(1));
        self
    }
}

impl<S> Layer<S> for DrainAdmissionLayer {
    type Service = DrainAdmission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DrainAdmission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`DrainAdmissionLayer`].
#[derive(Debug, Clone)]
pub struct DrainAdmission<S> {
    inner: S,
    layer: DrainAdmissionLayer,
}

/// Add `Connection: close` to an HTTP/1 response (never to HTTP/2, where the header is
/// illegal and GOAWAY does the job).
pub fn mark_connection_close<B>(version: Version, res: &mut Response<B>) {
    if version <= Version::HTTP_11 {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// The layer's last step: while `shutdown` is draining, mark the response so that an
/// HTTP/1 client moves its next request to a new connection.
#[inline]
pub(crate) fn mark_if_draining(shutdown: &Shutdown, version: Version, headers: &mut HeaderMap) {
    if shutdown.is_draining() && version <= Version::HTTP_11 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

impl DrainAdmissionLayer {
    /// The layer's first step: `true` when the policy refuses a request arriving now.
    pub(crate) fn refuses_now(&self) -> bool {
        let DrainPolicy::RejectAfter(grace) = self.policy else {
            return false;
        };
        self.shutdown.is_draining()
            && self
                .shutdown
                .drain_started()
                .is_some_and(|t0| t0.elapsed() >= grace)
    }

    /// The 503 answer to a refused request: code `draining`, `Retry-After`, and
    /// `Connection: close` on HTTP/1; counted in the metrics, if any.
    pub(crate) fn refusal<B>(&self, version: Version) -> Response<Either<B, Full<Bytes>>> {
        if let Some(m) = &self.metrics {
            m.request_rejected();
        }
        let mut res = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "server is shutting down, retry on a new connection",
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, self.retry_after.clone());
        mark_connection_close(version, &mut res);
        res
    }
}

impl<S, B, ResB> Service<Request<B>> for DrainAdmission<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<Either<ResB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let version = req.version();
        if self.layer.refuses_now() {
            return ResponseFuture::early(self.layer.refusal(version));
        }
        ResponseFuture::inner(MarkWhileDraining {
            fut: self.inner.call(req),
            version,
            shutdown: self.layer.shutdown.clone(),
        })
    }
}

/// Response future of [`DrainAdmission`].
pub type ResponseFuture<F, B> = super::early::EarlyOr<MarkWhileDraining<F>, B>;

pin_project! {
    /// The inner service's response future, its response marked `Connection: close` when
    /// it is ready while the server drains.
    #[derive(Debug)]
    pub struct MarkWhileDraining<F> {
        #[pin]
        fut: F,
        version: Version,
        shutdown: Shutdown,
    }
}

impl<F, B, E> Future for MarkWhileDraining<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.fut.poll(cx))?;
        mark_if_draining(this.shutdown, *this.version, res.headers_mut());
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;
    use tower::ServiceExt;

    fn svc(
        lc: &Lifecycle,
        policy: DrainPolicy,
    ) -> impl Service<
        Request<()>,
        Response = Response<Either<&'static str, Full<Bytes>>>,
        Error = std::convert::Infallible,
    > + Clone {
        DrainAdmissionLayer::new(lc.shutdown())
            .policy(policy)
            .layer(tower::service_fn(|_r: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new("ok"))
            }))
    }

    #[tokio::test]
    async fn responses_carry_connection_close_only_while_draining() {
        let lc = Lifecycle::new();
        let s = svc(&lc, DrainPolicy::Serve);
        let before = s.clone().oneshot(Request::new(())).await.unwrap();
        assert!(before.headers().get("connection").is_none());
        lc.begin_drain(Duration::from_secs(5));
        let during = s.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(during.status(), 200);
        assert_eq!(during.headers()["connection"], "close");
        let h2 = Request::builder()
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        let during_h2 = s.oneshot(h2).await.unwrap();
        assert!(
            during_h2.headers().get("connection").is_none(),
            "illegal in HTTP/2"
        );
    }

    #[tokio::test]
    async fn late_requests_are_refused_with_retry_after_under_reject_after() {
        let lc = Lifecycle::new();
        let s = svc(&lc, DrainPolicy::RejectAfter(Duration::ZERO));
        assert_eq!(
            s.clone().oneshot(Request::new(())).await.unwrap().status(),
            200
        );
        lc.begin_drain(Duration::from_secs(5));
        let res = s.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "1");
        assert_eq!(res.headers()["connection"], "close");
    }
}
