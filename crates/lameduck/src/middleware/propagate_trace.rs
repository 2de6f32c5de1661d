//! Trace-context propagation for outgoing calls: a client-side layer that puts the trace
//! context of the request being served on every request sent through the client.
//!
//! ```
//! use lameduck::middleware::propagate_trace::PropagateTraceLayer;
//! use tower::{service_fn, Layer as _};
//!
//! // Any client that is a `tower::Service<http::Request<B>>` (hyper-util's legacy client,
//! // for one) can be wrapped; here a stand-in that answers at once.
//! let client = PropagateTraceLayer::new().layer(service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(req.headers().contains_key("traceparent"))
//! }));
//! # let _ = client;
//! ```

use crate::context::RequestContext;
use crate::trace_context::TRACEPARENT;

/// A client-side tower layer that puts the current request's trace context on outgoing
/// requests: wrap the HTTP client a handler uses (hyper-util's legacy `Client`, or any
/// `tower::Service<http::Request<B>>`), and calls made while serving a request carry its
/// `traceparent` and `tracestate`.
///
/// "Current" is [`RequestContext::current`]:
/// the request whose handler is running on this thread under lameduck's server. A request
/// that already has a `traceparent`, or a call made outside any request (or from a task the
/// handler spawned), is left as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct PropagateTraceLayer;

impl PropagateTraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> tower::Layer<S> for PropagateTraceLayer {
    type Service = PropagateTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateTrace { inner }
    }
}

/// The service of [`PropagateTraceLayer`].
#[derive(Debug, Clone)]
pub struct PropagateTrace<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for PropagateTrace<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if !req.headers().contains_key(&TRACEPARENT) {
            if let Some(ctx) = RequestContext::current() {
                ctx.trace().inject(req.headers_mut());
            }
        }
        self.inner.call(req)
    }
}
