//! Route labels for axum: records the matched route template where
//! [`RecordMetricsLayer`](crate::middleware::metrics::RecordMetricsLayer) and access logs
//! read it: in the request's [`RequestContext`] when there is one (in the request
//! extensions, or the current one under lameduck's server; see [`RequestContext::route`]),
//! else in the response extensions.
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

use crate::context::RequestContext;

/// Records [`MatchedPath`] in the [`RequestContext`], or copies it to the response
/// extensions when the request has no context.
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
        let mut path = req.extensions().get::<MatchedPath>().cloned();
        if path.is_some() {
            let mut record = |ctx: &RequestContext| {
                if let Some(p) = path.take() {
                    ctx.set_matched_path(p);
                }
            };
            match req.extensions().get::<RequestContext>() {
                Some(ctx) => record(ctx),
                None => {
                    RequestContext::with_current(record);
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;
    use crate::metrics::Metrics;
    use crate::middleware::metrics::RecordMetricsLayer;
    use crate::middleware::request_context::SetRequestContextLayer;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn hit(app: axum::Router, path: &str) {
        let req = Request::builder().uri(path).body(axum::body::Body::empty());
        let res = app.oneshot(req.unwrap()).await.unwrap();
        assert!(res.status().is_success() || res.status() == 404);
    }

    #[tokio::test]
    async fn the_template_reaches_metrics_with_and_without_a_request_context() {
        let lc = Lifecycle::new();
        for with_context in [true, false] {
            let metrics = Metrics::new();
            let routes = axum::Router::new()
                .route("/orders/{id}", get(|| async { "order" }))
                .layer(RouteLabelLayer::new());
            let app = if with_context {
                routes
                    .layer(RecordMetricsLayer::new(metrics.clone()))
                    .layer(SetRequestContextLayer::new(lc.shutdown()))
            } else {
                routes.layer(RecordMetricsLayer::new(metrics.clone()))
            };
            hit(app.clone(), "/orders/1").await;
            hit(app, "/orders/2").await;
            let text = metrics.render();
            assert!(
                text.contains(
                    r#"lameduck_http_requests_total{route="/orders/{id}",status="200"} 2"#
                ),
                "context {with_context}: {text}"
            );
        }
    }
}
