//! Route labels for axum: copies the matched route template into the response extensions,
//! where [`MetricsLayer`](crate::middleware::metrics::MetricsLayer) and access logs read it.
//!
//! Apply it with `Router::layer` (not around the router): axum only knows the matched
//! route inside its routing.
//!
//! ```
//! use axum::{routing::get, Router};
//! let app: Router = Router::new()
//!     .route("/orders/{id}", get(|| async { "order" }))
//!     .layer(lameduck::middleware::route::RouteLabelLayer::new());
//! # let _ = app;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::extract::MatchedPath;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// Copies [`MatchedPath`] from the request to the response extensions.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteLabelLayer;

impl RouteLabelLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for RouteLabelLayer {
    type Service = RouteLabel<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteLabel { inner }
    }
}

/// The service of [`RouteLabelLayer`].
#[derive(Debug, Clone)]
pub struct RouteLabel<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<B>> for RouteLabel<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.extensions().get::<MatchedPath>().cloned();
        ResponseFuture {
            inner: self.inner.call(req),
            path,
        }
    }
}

pin_project! {
    /// Response future of [`RouteLabel`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        path: Option<MatchedPath>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(path) = this.path.take() {
            res.extensions_mut().insert(path);
        }
        Poll::Ready(Ok(res))
    }
}
