//! In-flight tracking as a layer: each request is registered in an [`InFlight`] registry
//! from the moment the layer sees it until its response body has been sent in full (or the
//! client went away).
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::in_flight::InFlight;
//! use lameduck::middleware::in_flight::TrackInFlightLayer;
//!
//! let in_flight = InFlight::new();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(TrackInFlightLayer::new(in_flight.clone()));
//! assert_eq!(in_flight.len(), 0);
//! # let _ = app;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::GuardedBody;
use crate::in_flight::{InFlight, InFlightGuard};

/// Tracks requests in an [`InFlight`] registry. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TrackInFlightLayer {
    registry: InFlight,
}

impl TrackInFlightLayer {
    /// A layer recording into `registry`.
    pub fn new(registry: InFlight) -> Self {
        Self { registry }
    }
}

impl<S> Layer<S> for TrackInFlightLayer {
    type Service = TrackInFlight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackInFlight {
            inner,
            registry: self.registry.clone(),
        }
    }
}

/// The service of [`TrackInFlightLayer`].
#[derive(Debug, Clone)]
pub struct TrackInFlight<S> {
    inner: S,
    registry: InFlight,
}

impl<S, B, ResB> Service<Request<B>> for TrackInFlight<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<GuardedBody<ResB, InFlightGuard>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = self.registry.begin(&req);
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project! {
    /// Response future of [`TrackInFlight`]. Dropping it (client gone) ends the request.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlightGuard>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<GuardedBody<ResB, InFlightGuard>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(res.map(|b| GuardedBody::new(b, guard))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_request_counts_until_its_body_is_sent() {
        let reg = InFlight::new();
        let svc = TrackInFlightLayer::new(reg.clone()).layer(tower::service_fn(
            |_req: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                    bytes::Bytes::from_static(b"hi"),
                )))
            },
        ));
        let req = Request::builder()
            .uri("/a?b=c")
            .method("POST")
            .body(())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let snap = reg.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(
            (snap[0].method.as_str(), snap[0].path.as_str()),
            ("POST", "/a")
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
        assert!(reg.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_request_future_is_no_longer_in_flight() {
        let reg = InFlight::new();
        let mut svc = TrackInFlightLayer::new(reg.clone()).layer(tower::service_fn(
            |_req: Request<()>| async {
                std::future::pending::<Result<Response<()>, std::convert::Infallible>>().await
            },
        ));
        let fut = svc.call(Request::new(()));
        assert_eq!(reg.len(), 1);
        drop(fut);
        assert_eq!(reg.len(), 0);
    }
}
