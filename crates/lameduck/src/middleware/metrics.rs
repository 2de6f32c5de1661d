//! Metrics as a layer: every response is recorded in a [`Metrics`] registry, by route
//! template and status, with its time to response headers.
//!
//! The route label comes from the request's [`RequestContext`] or the response extensions
//! (see [`RouteTemplate`]); with axum, apply
//! [`RouteLabelLayer`](crate::middleware::route::RouteLabelLayer) with `Router::layer` so
//! that the matched route template (`/orders/{id}`) is used, never the raw path, which
//! would make one series per id. Requests without a label count under `route="unmatched"`.
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::metrics::Metrics;
//! use lameduck::middleware::metrics::RecordMetricsLayer;
//! use lameduck::middleware::route::RouteLabelLayer;
//!
//! let metrics = Metrics::new();
//! let app: Router = Router::new()
//!     .route("/ping", get(|| async { "pong" }))
//!     .layer(RouteLabelLayer::new())
//!     .layer(RecordMetricsLayer::new(metrics.clone()));
//! assert!(metrics.render().contains("lameduck_http_connections_open 0"));
//! # let _ = app;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{Extensions, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::RequestContext;
use crate::metrics::{Metrics, RouteTemplate, UNMATCHED_ROUTE};

/// Records every response in a [`Metrics`] registry. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RecordMetricsLayer {
    metrics: Metrics,
}

impl RecordMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RecordMetricsLayer {
    type Service = RecordMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service of [`RecordMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RecordMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, ResB> Service<Request<B>> for RecordMetrics<S>
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
        let ctx = req.extensions().get::<RequestContext>().cloned();
        ResponseFuture {
            inner: self.inner.call(req),
            started: Instant::now(),
            metrics: self.metrics.clone(),
            ctx,
        }
    }
}

pin_project! {
    /// Response future of [`RecordMetrics`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        metrics: Metrics,
        ctx: Option<RequestContext>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let route = route_label(this.ctx.as_ref(), res.extensions());
        this.metrics
            .observe(route, res.status().as_u16(), this.started.elapsed());
        Poll::Ready(Ok(res))
    }
}

/// The layer's step: the route label of a response, from the request's context (where
/// [`RouteLabelLayer`](crate::middleware::route::RouteLabelLayer) records axum's matched
/// template), else from the response extensions ([`RouteTemplate`], or axum's
/// `MatchedPath`), else [`UNMATCHED_ROUTE`].
#[inline]
pub(crate) fn route_label<'a>(ctx: Option<&'a RequestContext>, ext: &'a Extensions) -> &'a str {
    ctx.and_then(RequestContext::route)
        .unwrap_or_else(|| response_route(ext))
}

/// The route label the response extensions give, else [`UNMATCHED_ROUTE`].
#[inline]
pub(crate) fn response_route(ext: &Extensions) -> &str {
    if let Some(label) = ext.get::<RouteTemplate>() {
        return &label.0;
    }
    #[cfg(feature = "axum")]
    if let Some(path) = ext.get::<axum::extract::MatchedPath>() {
        return path.as_str();
    }
    UNMATCHED_ROUTE
}
