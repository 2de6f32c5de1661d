//! What a request carries through lameduck: its id, its trace context, the lifecycle's
//! "stop soon" signal and deadline, and the route it matched; and how its ids reach the logs.
//!
//! [`RequestContext`] is put in the request extensions by lameduck's
//! [`Server`](crate::server::Server) or by
//! [`SetRequestContextLayer`](crate::middleware::request_context::SetRequestContextLayer);
//! with the `axum` feature a handler takes it as an extractor.
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::context::RequestContext;
//!
//! async fn handler(ctx: RequestContext) -> String {
//!     if ctx.shutdown().is_draining() {
//!         return format!("{}: finishing early", ctx.request_id());
//!     }
//!     format!("{}: hello", ctx.request_id())
//! }
//!
//! let app: Router = Router::new().route("/", get(handler));
//! # let _ = app;
//! ```
//!
//! This module also owns the per-thread request fields that log outputs and span exporters
//! read (the request being polled, the request whose span is being made): the server sets
//! them as [`RequestSpans`] says, and `lameduck::logs` and `lameduck::otel` (features
//! `logs`, `otel`) only read them.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::{HeaderName, HeaderValue};

use crate::lifecycle::Shutdown;
use crate::trace_context::TraceContext;

/// The target of the per-request span (see [`RequestSpans::Span`]).
pub const REQUEST_SPAN_TARGET: &str = "lameduck::request";

/// How a request's ids (request id, trace id) reach what its handler logs; a
/// [`Builder::request_spans`](crate::server::Builder::request_spans) setting.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub enum RequestSpans {
    /// No request span (the default): the cheapest; a handler's log lines carry no ids.
    #[default]
    Off,
    /// Poll each request's handler inside an `info` span named `request` on the target
    /// [`REQUEST_SPAN_TARGET`], with the fields `request_id` and `trace_id`, made by
    /// [`request_span`]: works with any `tracing` subscriber (every event the handler logs
    /// carries the span). Creating and closing a span costs on every request whether or not
    /// the handler logs.
    Span,
    /// As [`Span`](Self::Span), with each span made by this function instead of
    /// [`request_span`]: for an exporter that gives the span more than its fields (lameduck's
    /// OTLP exporter gives it the ids of the response's `traceparent`; see
    /// `lameduck::logs::Logs::request_spans`).
    SpanWith(fn(&RequestContext) -> tracing::Span),
    /// No span: lameduck's JSON log output (`lameduck::logs`, JSON format) writes the ids
    /// on each line the handler logs, as the `request` span would appear. The same lines as
    /// [`Span`](Self::Span) with that output, without the span's cost; other outputs show no
    /// ids.
    IdsInLogs,
}

/// The `request` span of [`RequestSpans::Span`] for `ctx`: an `info` span on
/// [`REQUEST_SPAN_TARGET`] with `request_id` and `trace_id`. While it is made, `ctx` is the
/// thread's "new request span", whose fields lameduck's JSON output writes in one step.
pub fn request_span(ctx: &RequestContext) -> tracing::Span {
    NEW_SPAN.with_borrow_mut(|s| *s = Some(ctx.clone()));
    let span = tracing::info_span!(
        target: REQUEST_SPAN_TARGET,
        "request",
        request_id = ctx.request_id().as_str(),
        trace_id = ctx.trace().trace_id_str(),
    );
    // Still there when the span is disabled (no output formatted its fields).
    NEW_SPAN.with_borrow_mut(Option::take);
    span
}

/// `f` of the request whose [`request_span`] is being made on this thread, once: the first
/// caller takes it (the output that formats the span's fields).
#[cfg(feature = "logs")]
pub(crate) fn take_new_span<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
    NEW_SPAN
        .try_with(|s| s.borrow_mut().take())
        .ok()
        .flatten()
        .map(|ctx| f(&ctx))
}

/// The header that carries the request id, in and out.
pub static X_REQUEST_ID: HeaderName = X_REQUEST_ID_NAME;

/// [`X_REQUEST_ID`] as a constant: passed by value, a name moves into a header map where a
/// reference to the static is cloned (on every response).
pub(crate) const X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static("x-request-id");

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
pub(crate) const GENERATED_LEN: usize = 12 + 1 + 16;

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
            Repr::Generated { .. } => {
                crate::trace_context::hex_value(bytes::Bytes::copy_from_slice(self.as_bytes()))
            }
        }
    }

    /// The header value a client sent as this id, if it did.
    pub(crate) fn sent(&self) -> Option<&HeaderValue> {
        match &self.0 {
            Repr::Header(v) => Some(v),
            Repr::Generated { .. } => None,
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
/// Stored in the request extensions by
/// [`SetRequestContextLayer`](crate::middleware::request_context::SetRequestContextLayer);
/// under lameduck's [`Server`](crate::server::Server) it is the
/// [`current`](Self::current) context while the application handles the request (not in
/// the extensions: inserting and dropping one costs every request). With the `axum`
/// feature it is an extractor that finds it either way (without either, the request is
/// answered 500). Cloning is cheap: clones share one context.
#[derive(Debug, Clone)]
pub struct RequestContext(Arc<ContextInner>);

#[derive(Debug)]
struct ContextInner {
    id: RequestId,
    trace: TraceContext,
    peer: Option<std::net::SocketAddr>,
    shutdown: Shutdown,
    route: OnceLock<Route>,
    /// The template from the server's table of [`Routes`](crate::middleware::route::Routes),
    /// known at the start (a field of its own: filling a `OnceLock` runs its slow path).
    #[cfg(feature = "axum")]
    template: Option<Arc<str>>,
    /// The server cut the request body at a body timeout.
    body_timed_out: AtomicBool,
    /// The handler passed its point of no return: the request timeout no longer cuts it.
    no_return: AtomicBool,
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
        Self::with(
            id,
            trace,
            peer,
            shutdown,
            #[cfg(feature = "axum")]
            None,
        )
    }

    /// A context, with its route template when it is already known (the server's table
    /// of [`Routes`](crate::middleware::route::Routes)).
    pub(crate) fn with(
        id: RequestId,
        trace: TraceContext,
        peer: Option<std::net::SocketAddr>,
        shutdown: Shutdown,
        #[cfg(feature = "axum")] template: Option<Arc<str>>,
    ) -> Self {
        Self(Arc::new(ContextInner {
            id,
            trace,
            peer,
            shutdown,
            route: OnceLock::new(),
            #[cfg(feature = "axum")]
            template,
            body_timed_out: AtomicBool::new(false),
            no_return: AtomicBool::new(false),
        }))
    }

    /// Note that the server cut the request's body at a body timeout.
    pub(crate) fn set_body_timed_out(&self) {
        self.0.body_timed_out.store(true, Ordering::Relaxed);
    }

    /// Whether the server cut the request's body at a body timeout (the answer is then
    /// 408, whatever the handler made of the failed body).
    pub fn body_timed_out(&self) -> bool {
        self.0.body_timed_out.load(Ordering::Relaxed)
    }

    /// Mark the point after which the request timeout (`Builder::request_timeout`) no
    /// longer applies: the handler has started something whose outcome its answer must
    /// report (a write handed to a database, a charge sent to a gateway), so cutting it
    /// with 503 `handler_timeout`, an invitation to retry, would tell the client that a
    /// done thing failed. The handler then runs to its own answer; bound what follows the
    /// mark by other means (the drain deadline, the dependency's own timeout).
    ///
    /// ```
    /// # async fn handed_to_the_writer() {}
    /// async fn create(ctx: lameduck::context::RequestContext) -> &'static str {
    ///     // Validation above may be cut by the request timeout...
    ///     ctx.past_point_of_no_return();
    ///     handed_to_the_writer().await; // ...this is answered whatever it takes.
    ///     "created"
    /// }
    /// ```
    pub fn past_point_of_no_return(&self) {
        self.0.no_return.store(true, Ordering::Relaxed);
    }

    /// Whether [`past_point_of_no_return`](Self::past_point_of_no_return) was called.
    pub fn is_past_point_of_no_return(&self) -> bool {
        self.0.no_return.load(Ordering::Relaxed)
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

    /// The route template the request matched (such as `/orders/{id}`): from the server's
    /// table when it serves [`Routes`](crate::middleware::route::Routes) (known before the
    /// handler runs), else once
    /// [`RouteLabelLayer`](crate::middleware::route::RouteLabelLayer) has seen it; `None`
    /// before routing, for unmatched requests, and without either.
    pub fn route(&self) -> Option<&str> {
        #[cfg(feature = "axum")]
        if let Some(t) = &self.0.template {
            return Some(t);
        }
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
    /// [`PropagateTraceLayer`](crate::middleware::propagate_trace::PropagateTraceLayer)), and
    /// `None` elsewhere, including in tasks the handler spawns: pass the context on with
    /// [`scope`](Self::scope). (The extractor also finds it in the request's extensions, so a
    /// handler behind a middleware that spawns the rest of the stack still gets it.)
    pub fn current() -> Option<RequestContext> {
        CURRENT.with(|c| c.borrow().as_ref().map(|c| c.ctx.clone()))
    }

    /// `fut`, run with this as the [`current`](Self::current) context while it is polled:
    /// for work a handler hands to another task (`tokio::spawn(ctx.scope(work))`) that
    /// should still see the request's deadline and ids, such as outbound calls through
    /// [`outbound`](crate::outbound)'s layers.
    ///
    /// ```
    /// use lameduck::context::{RequestContext, RequestId};
    /// use lameduck::trace_context::TraceContext;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let lifecycle = lameduck::lifecycle::Lifecycle::new();
    /// let ctx = RequestContext::new(RequestId::generate(), TraceContext::new_root(), None, lifecycle.shutdown());
    /// let id = ctx.request_id().clone();
    /// let seen = ctx.scope(async { RequestContext::current().map(|c| c.request_id().clone()) }).await;
    /// assert_eq!(seen, Some(id));
    /// assert!(RequestContext::current().is_none());
    /// # });
    /// ```
    pub fn scope<F: std::future::Future>(&self, fut: F) -> InContext<F> {
        let in_logs = CURRENT
            .try_with(|c| c.borrow().as_ref().is_some_and(|c| c.in_logs))
            .unwrap_or(false);
        InContext {
            ctx: self.clone(),
            in_logs,
            fut,
        }
    }

    /// `f` of the [`current`](Self::current) context, without cloning it.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn with_current<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
        CURRENT
            .try_with(|c| c.borrow().as_ref().map(|c| f(&c.ctx)))
            .ok()
            .flatten()
    }

    /// Make this the [`current`](Self::current) context until the guard is dropped;
    /// `in_logs`: its ids go on every log line lameduck's JSON output makes meanwhile
    /// ([`RequestSpans::IdsInLogs`]).
    pub(crate) fn enter(&self, in_logs: bool) -> CurrentGuard {
        let previous = CURRENT.with(|c| {
            c.replace(Some(Current {
                ctx: self.clone(),
                in_logs,
            }))
        });
        CurrentGuard { previous }
    }

    /// `f` of the current context, if it was entered for its ids to go on log lines
    /// ([`RequestSpans::IdsInLogs`]).
    #[cfg(feature = "logs")]
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

pin_project_lite::pin_project! {
    /// A future run with a [`RequestContext`] as the current one: see
    /// [`RequestContext::scope`].
    #[derive(Debug)]
    pub struct InContext<F> {
        ctx: RequestContext,
        in_logs: bool,
        #[pin]
        fut: F,
    }
}

impl<F: std::future::Future> std::future::Future for InContext<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.project();
        let _current = this.ctx.enter(*this.in_logs);
        this.fut.poll(cx)
    }
}

thread_local! {
    /// The request being polled on this thread.
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
    /// The request whose `request` span is being made on this thread.
    static NEW_SPAN: RefCell<Option<RequestContext>> = const { RefCell::new(None) };
}

/// The context being polled on this thread.
#[derive(Debug)]
struct Current {
    ctx: RequestContext,
    #[cfg_attr(not(feature = "logs"), allow(dead_code))]
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

/// The 500's message when a handler asks for a [`RequestContext`] that its request does not
/// carry.
#[cfg(feature = "axum")]
pub const NO_CONTEXT: &str = "no RequestContext for this request: lameduck's Server (or, \
     without it, SetRequestContextLayer) attaches one to each request it serves; a request \
     built anew drops it, and a task spawned with the request's work gets it through \
     ctx.scope(...)";

#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestContext {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        // lameduck's server and the standalone layer put it in the extensions; the
        // current context is there for a request rebuilt without them, inside `ctx.scope`.
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .or_else(RequestContext::current)
            .ok_or((http::StatusCode::INTERNAL_SERVER_ERROR, NO_CONTEXT))
    }
}
