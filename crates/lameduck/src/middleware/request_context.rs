//! Request context: a request id and the lifecycle's "stop soon" signal and deadline,
//! reachable from every handler.
//!
//! The layer takes the request id from the `x-request-id` header when it is a valid id (1
//! to 128 visible ASCII characters), generates one otherwise, takes the W3C trace context
//! from `traceparent`/`tracestate` (or starts a trace; see
//! [`trace_context`](crate::trace_context)), stores a [`RequestContext`] in the request
//! extensions and returns the id and the `traceparent` on the response.
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::context::RequestContext;
//! use lameduck::lifecycle::Lifecycle;
//! use lameduck::middleware::request_context::SetRequestContextLayer;
//!
//! async fn handler(ctx: RequestContext) -> String {
//!     format!("{}: hello", ctx.request_id())
//! }
//!
//! let lifecycle = Lifecycle::new();
//! let app: Router = Router::new()
//!     .route("/", get(handler))
//!     .layer(SetRequestContextLayer::new(lifecycle.shutdown()));
//! # let _ = app;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::{RequestContext, RequestId, GENERATED_LEN, X_REQUEST_ID, X_REQUEST_ID_NAME};
use crate::lifecycle::Shutdown;
use crate::trace_context::{
    hex_value, TraceContext, TRACEPARENT_LEN, TRACEPARENT_NAME, TRACESTATE_NAME,
};

/// The layer's first step: the [`RequestContext`] of `req`, with its id (the client's, if
/// valid, else a new one) and its trace context. The layer puts it in the request
/// extensions; so does lameduck's server, which also makes it the thread's current context
/// while the application runs (for code the handler calls, such as the route label).
pub(crate) fn context_for<B>(
    req: &Request<B>,
    shutdown: &Shutdown,
    peer: Option<std::net::SocketAddr>,
    #[cfg(feature = "axum")] template: Option<std::sync::Arc<str>>,
) -> RequestContext {
    context_from(
        req.headers().get(&X_REQUEST_ID),
        TraceContext::from_headers(req.headers()),
        shutdown,
        peer,
        #[cfg(feature = "axum")]
        template,
    )
}

/// [`context_for`] from the request's `x-request-id` (kept when it is a valid id) and its
/// trace context: the server finds the headers in one pass of its own.
pub(crate) fn context_from(
    request_id: Option<&HeaderValue>,
    trace: TraceContext,
    shutdown: &Shutdown,
    peer: Option<std::net::SocketAddr>,
    #[cfg(feature = "axum")] template: Option<std::sync::Arc<str>>,
) -> RequestContext {
    let id = request_id
        .and_then(RequestId::from_header)
        .unwrap_or_else(RequestId::generate);
    RequestContext::with(
        id,
        trace,
        peer,
        shutdown.clone(),
        #[cfg(feature = "axum")]
        template,
    )
}

/// The layer's last step: return the request id and the trace context (`traceparent`,
/// `tracestate`) on the response, unless the application set them.
pub(crate) fn set_response_headers(headers: &mut HeaderMap, ctx: &RequestContext) {
    let (id, traceparent) = response_values(ctx);
    headers.entry(X_REQUEST_ID_NAME).or_insert(id);
    let trace = ctx.trace();
    if let http::header::Entry::Vacant(e) = headers.entry(TRACEPARENT_NAME) {
        e.insert(traceparent);
        if let Some(state) = trace.tracestate() {
            headers
                .entry(TRACESTATE_NAME)
                .or_insert_with(|| state.clone());
        }
    }
}

/// The response's `x-request-id` and `traceparent` values: a client's id is its own header
/// value, shared; a generated id and the `traceparent` text share one allocation, with
/// neither copied again nor validated byte by byte (lameduck wrote both, hex digits and
/// `-`; see [`hex_value`]). Before, each was copied into an allocation of its own and
/// validated: about 450 instructions more per response (`benches/instructions`).
fn response_values(ctx: &RequestContext) -> (HeaderValue, HeaderValue) {
    let traceparent = ctx.trace().traceparent_bytes();
    let id = ctx.request_id();
    if let Some(sent) = id.sent() {
        return (sent.clone(), hex_value(Bytes::copy_from_slice(traceparent)));
    }
    let id = id.as_bytes();
    let mut both = [0u8; TRACEPARENT_LEN + GENERATED_LEN];
    both[..TRACEPARENT_LEN].copy_from_slice(traceparent);
    both[TRACEPARENT_LEN..TRACEPARENT_LEN + id.len()].copy_from_slice(id);
    let both = Bytes::from_owner(both);
    (
        hex_value(both.slice(TRACEPARENT_LEN..TRACEPARENT_LEN + id.len())),
        hex_value(both.slice(..TRACEPARENT_LEN)),
    )
}

/// Adds a [`RequestContext`] to every request. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SetRequestContextLayer {
    shutdown: Shutdown,
}

impl SetRequestContextLayer {
    /// A layer whose contexts watch `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Self { shutdown }
    }
}

impl<S> Layer<S> for SetRequestContextLayer {
    type Service = SetRequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetRequestContext {
            inner,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// The service of [`SetRequestContextLayer`].
#[derive(Debug, Clone)]
pub struct SetRequestContext<S> {
    inner: S,
    shutdown: Shutdown,
}

impl<S, B, ResB> Service<Request<B>> for SetRequestContext<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ctx = context_for(
            &req,
            &self.shutdown,
            None,
            #[cfg(feature = "axum")]
            None,
        );
        req.extensions_mut().insert(ctx.clone());
        ResponseFuture {
            inner: self.inner.call(req),
            ctx: Some(ctx),
        }
    }
}

pin_project! {
    /// Response future of [`SetRequestContext`]: sets `x-request-id` and `traceparent` on
    /// the response.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
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
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(ctx) = this.ctx.take() {
            set_response_headers(res.headers_mut(), &ctx);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::MAX_REQUEST_ID_LEN;
    use crate::lifecycle::Lifecycle;
    use tower::ServiceExt;

    async fn echo(req: Request<()>) -> Result<Response<String>, std::convert::Infallible> {
        let ctx = req.extensions().get::<RequestContext>().expect("context");
        Ok(Response::new(ctx.request_id().to_string()))
    }

    #[tokio::test]
    async fn a_valid_client_id_is_kept_and_returned() {
        let lc = Lifecycle::new();
        let svc = SetRequestContextLayer::new(lc.shutdown()).layer(tower::service_fn(echo));
        let req = Request::builder()
            .header("x-request-id", "abc-123")
            .body(())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.headers()["x-request-id"], "abc-123");
        assert_eq!(res.body(), "abc-123");
    }

    #[tokio::test]
    async fn an_invalid_or_missing_id_is_replaced_by_a_fresh_one() {
        let lc = Lifecycle::new();
        let svc = SetRequestContextLayer::new(lc.shutdown()).layer(tower::service_fn(echo));
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        let a = svc
            .clone()
            .oneshot(
                Request::builder()
                    .header("x-request-id", long.as_str())
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
        let b = svc.oneshot(Request::new(())).await.unwrap();
        assert_ne!(a.body(), &long);
        assert!(!a.body().is_empty());
        assert_ne!(a.body(), b.body(), "generated ids are unique");
        assert!(
            b.body().len() > 13 && b.body().as_bytes()[12] == b'-',
            "{}",
            b.body()
        );
    }

    #[test]
    fn the_response_values_are_the_context_texts() {
        let lc = Lifecycle::new();
        for sent in [None, Some(HeaderValue::from_static("client-id-1"))] {
            let id = sent
                .as_ref()
                .and_then(RequestId::from_header)
                .unwrap_or_else(RequestId::generate);
            let ctx = RequestContext::new(id, TraceContext::new_root(), None, lc.shutdown());
            let (id, traceparent) = response_values(&ctx);
            assert_eq!(id.as_bytes(), ctx.request_id().as_bytes());
            assert_eq!(id, ctx.request_id().to_header_value());
            assert_eq!(
                traceparent.as_bytes(),
                ctx.trace().traceparent_str().as_bytes()
            );
            assert_eq!(traceparent, ctx.trace().traceparent());
            assert_eq!(traceparent.len(), TRACEPARENT_LEN);
        }
    }
}
