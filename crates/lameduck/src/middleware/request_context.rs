//! Request context: a request id and the lifecycle's "stop soon" signal and deadline,
//! reachable from every handler.
//!
//! The layer takes the request id from the `x-request-id` header when it is a valid id (1
//! to 128 visible ASCII characters), generates one otherwise, takes the W3C trace context
//! from `traceparent`/`tracestate` (or starts a trace; see
//! [`trace_context`](crate::middleware::trace_context)), stores a [`RequestContext`] in the
//! request extensions and returns the id and the `traceparent` on the response.
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::lifecycle::Lifecycle;
//! use lameduck::middleware::request_context::{RequestContext, RequestContextLayer};
//!
//! async fn handler(ctx: RequestContext) -> String {
//!     if ctx.shutdown().is_draining() {
//!         return format!("{}: finishing early", ctx.request_id());
//!     }
//!     format!("{}: hello", ctx.request_id())
//! }
//!
//! let lifecycle = Lifecycle::new();
//! let app: Router = Router::new()
//!     .route("/", get(handler))
//!     .layer(RequestContextLayer::new(lifecycle.shutdown()));
//! # let _ = app;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::lifecycle::Shutdown;
use crate::middleware::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};

/// The header that carries the request id, in and out.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id accepted from a client.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// A request's id.
#[derive(Clone)]
pub struct RequestId(Repr);

/// Generated ids live inline (no allocation, and copying them is a memcpy); ids sent by a
/// client keep the header value they came in.
#[derive(Clone)]
enum Repr {
    Generated { len: u8, buf: IdBuf },
    Header(HeaderValue),
}

/// A generated id's bytes, 8-byte aligned: `str::from_utf8` (run by
/// [`RequestId::as_str`]) checks aligned ASCII a block at a time but unaligned ASCII byte
/// by byte.
#[derive(Clone, Copy)]
#[repr(align(8))]
struct IdBuf([u8; GENERATED_LEN]);

/// Prefix (12 hex digits), '-', counter (up to 16 hex digits).
const GENERATED_LEN: usize = 12 + 1 + 16;

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ids of visible ASCII are ever constructed.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The id's bytes (visible ASCII).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Generated { len, buf } => &buf.0[..usize::from(*len)],
            Repr::Header(v) => v.as_bytes(),
        }
    }

    /// Whether lameduck made the id (hex digits and `-`: nothing any format escapes).
    pub(crate) fn is_generated(&self) -> bool {
        matches!(self.0, Repr::Generated { .. })
    }

    /// The id as a header value.
    pub fn to_header_value(&self) -> HeaderValue {
        match &self.0 {
            Repr::Header(v) => v.clone(),
            // Hex digits and '-' are always a valid header value.
            Repr::Generated { .. } => HeaderValue::from_bytes(self.as_bytes())
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
        }
    }

    /// Accept a client-sent id if it is 1..=128 visible ASCII characters.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(Repr::Header(value.clone())))
    }

    /// A new id: a per-process prefix (from the start time and pid) and a counter, such as
    /// `6743a1b2c3d4-1f`. No allocation, no formatting machinery: this runs per request.
    pub fn generate() -> Self {
        static PREFIX: OnceLock<[u8; 12]> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let prefix = PREFIX.get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let seed = ((nanos >> 16) << 16) | u64::from(std::process::id() as u16);
            let mut out = [0u8; 12];
            write_hex(seed, &mut out);
            out
        });
        let mut buf = [0u8; GENERATED_LEN];
        buf[..12].copy_from_slice(prefix);
        buf[12] = b'-';
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let digits = (16 - n.leading_zeros() as usize / 4).max(1);
        write_hex(n, &mut buf[13..13 + digits]);
        Self(Repr::Generated {
            len: (13 + digits) as u8,
            buf: IdBuf(buf),
        })
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for RequestId {}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

/// Write the low `out.len()` hex digits of `n` into `out`, most significant first.
fn write_hex(mut n: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a handler knows about its request and the process lifecycle.
///
/// Stored in the request extensions by [`RequestContextLayer`] (and by lameduck's
/// [`Server`](crate::server::Server)); with the `axum` feature it is also an extractor (a
/// request without the layer is answered 500). Cloning is cheap: clones share one context.
#[derive(Debug, Clone)]
pub struct RequestContext(Arc<ContextInner>);

#[derive(Debug)]
struct ContextInner {
    id: RequestId,
    trace: TraceContext,
    peer: Option<std::net::SocketAddr>,
    shutdown: Shutdown,
    route: OnceLock<Route>,
}

/// The route template a request matched, once the router knows it.
#[derive(Debug)]
enum Route {
    #[cfg(feature = "axum")]
    Axum(axum::extract::MatchedPath),
}

impl RequestContext {
    /// A context for one request.
    pub fn new(
        id: RequestId,
        trace: TraceContext,
        peer: Option<std::net::SocketAddr>,
        shutdown: Shutdown,
    ) -> Self {
        Self(Arc::new(ContextInner {
            id,
            trace,
            peer,
            shutdown,
            route: OnceLock::new(),
        }))
    }

    /// The request id (also sent back in `x-request-id`).
    pub fn request_id(&self) -> &RequestId {
        &self.0.id
    }

    /// The request's W3C trace context: the caller's trace (from `traceparent`) or a new
    /// one; the response carries its `traceparent`, and
    /// [`TraceContext::inject`] passes it on to outgoing calls.
    pub fn trace(&self) -> &TraceContext {
        &self.0.trace
    }

    /// The client's address (the TCP peer) when lameduck's [`Server`](crate::server::Server)
    /// serves the request; `None` under the standalone layer.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.0.peer
    }

    /// The lifecycle: `stop_soon()`, `is_draining()`, `deadline()`.
    pub fn shutdown(&self) -> &Shutdown {
        &self.0.shutdown
    }

    /// The instant after which the server will cut this request off; `None` while the
    /// server is not draining.
    pub fn deadline(&self) -> Option<Instant> {
        self.0.shutdown.deadline()
    }

    /// The route template the request matched (such as `/orders/{id}`), once
    /// [`RouteLabelLayer`](crate::middleware::route::RouteLabelLayer) has seen it; `None`
    /// before routing, for unmatched requests, and without that layer.
    pub fn route(&self) -> Option<&str> {
        match self.0.route.get()? {
            #[cfg(feature = "axum")]
            Route::Axum(path) => Some(path.as_str()),
            #[cfg(not(feature = "axum"))]
            _ => None,
        }
    }

    /// The context of the request being served on this thread: set by lameduck's
    /// [`Server`](crate::server::Server) while it polls the request's handler, so it is
    /// there for code the handler calls (such as
    /// [`PropagateTraceLayer`](crate::middleware::trace_context::PropagateTraceLayer)), and
    /// `None` elsewhere, including in tasks the handler spawns (pass the context on).
    pub fn current() -> Option<RequestContext> {
        CURRENT.with(|c| c.borrow().as_ref().map(|c| c.ctx.clone()))
    }

    /// Make this the [`current`](Self::current) context until the guard is dropped;
    /// `in_logs`: its ids go on every log line made meanwhile (see
    /// [`with_current_in_logs`](Self::with_current_in_logs)).
    pub(crate) fn enter(&self, in_logs: bool) -> CurrentGuard {
        let previous = CURRENT.with(|c| {
            c.replace(Some(Current {
                ctx: self.clone(),
                in_logs,
            }))
        });
        CurrentGuard { previous }
    }

    /// `f` of the current context, if it was entered for its ids to go on log lines.
    #[cfg(feature = "cli")]
    pub(crate) fn with_current_in_logs<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
        CURRENT
            .try_with(|c| match &*c.borrow() {
                Some(Current { ctx, in_logs: true }) => Some(f(ctx)),
                _ => None,
            })
            .ok()
            .flatten()
    }

    /// Record the matched route; the first one recorded stays. Returns `false` if a route
    /// was already recorded.
    #[cfg(feature = "axum")]
    pub(crate) fn set_matched_path(&self, path: axum::extract::MatchedPath) -> bool {
        self.0.route.set(Route::Axum(path)).is_ok()
    }
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Current>> = const { std::cell::RefCell::new(None) };
}

/// The context being polled on this thread.
#[derive(Debug)]
struct Current {
    ctx: RequestContext,
    #[cfg_attr(not(feature = "cli"), allow(dead_code))]
    in_logs: bool,
}

/// Restores the previous [`RequestContext::current`] when dropped.
#[derive(Debug)]
pub(crate) struct CurrentGuard {
    previous: Option<Current>,
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestContext {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<RequestContext>().cloned().ok_or((
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "RequestContextLayer is missing from the middleware stack",
        ))
    }
}

/// Give `req` its id (the client's, if valid, else a new one) and a [`RequestContext`],
/// which is returned too.
pub(crate) fn attach<B>(
    req: &mut Request<B>,
    shutdown: &Shutdown,
    peer: Option<std::net::SocketAddr>,
) -> RequestContext {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(RequestId::from_header)
        .unwrap_or_else(RequestId::generate);
    let trace = TraceContext::from_headers(req.headers());
    let ctx = RequestContext::new(id, trace, peer, shutdown.clone());
    req.extensions_mut().insert(ctx.clone());
    ctx
}

/// Return the request id and the trace context (`traceparent`, `tracestate`) on the
/// response, unless the application set them.
pub(crate) fn set_response_headers<B>(res: &mut Response<B>, ctx: &RequestContext) {
    let headers = res.headers_mut();
    headers
        .entry(&X_REQUEST_ID)
        .or_insert_with(|| ctx.request_id().to_header_value());
    let trace = ctx.trace();
    if let http::header::Entry::Vacant(e) = headers.entry(&TRACEPARENT) {
        e.insert(trace.traceparent());
        if let Some(state) = trace.tracestate() {
            headers.entry(&TRACESTATE).or_insert_with(|| state.clone());
        }
    }
}

/// Adds a [`RequestContext`] to every request. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RequestContextLayer {
    shutdown: Shutdown,
}

impl RequestContextLayer {
    /// A layer whose contexts watch `shutdown`.
    pub fn new(shutdown: Shutdown) -> Self {
        Self { shutdown }
    }
}

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContextService {
            inner,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// The service of [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct RequestContextService<S> {
    inner: S,
    shutdown: Shutdown,
}

impl<S, B, ResB> Service<Request<B>> for RequestContextService<S>
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
        let ctx = attach(&mut req, &self.shutdown, None);
        ResponseFuture {
            inner: self.inner.call(req),
            ctx: Some(ctx),
        }
    }
}

pin_project! {
    /// Response future of [`RequestContextService`]: sets `x-request-id` on the response.
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
            set_response_headers(&mut res, &ctx);
        }
        Poll::Ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;
    use tower::ServiceExt;

    async fn echo(req: Request<()>) -> Result<Response<String>, std::convert::Infallible> {
        let ctx = req.extensions().get::<RequestContext>().expect("context");
        Ok(Response::new(ctx.request_id().to_string()))
    }

    #[tokio::test]
    async fn a_valid_client_id_is_kept_and_returned() {
        let lc = Lifecycle::new();
        let svc = RequestContextLayer::new(lc.shutdown()).layer(tower::service_fn(echo));
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
        let svc = RequestContextLayer::new(lc.shutdown()).layer(tower::service_fn(echo));
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
}
