//! The per-connection hyper service: lameduck's whole per-request stack in one layer.
//!
//! It does what
//! [`SetRequestContextLayer`](crate::middleware::request_context::SetRequestContextLayer),
//! [`RecordMetricsLayer`](crate::middleware::metrics::RecordMetricsLayer),
//! [`TrackInFlightLayer`](crate::middleware::in_flight::TrackInFlightLayer),
//! [`DrainAdmissionLayer`](crate::middleware::drain::DrainAdmissionLayer),
//! [`BodyLimitLayer`](crate::middleware::body_limit::BodyLimitLayer) and
//! [`CatchPanicLayer`](crate::middleware::catch_panic::CatchPanicLayer) (around the
//! application alone) do, in that order, by
//! calling the step functions each of those modules exports, plus the connection's own
//! bookkeeping and the access log. Folding them into one service moves the request once
//! instead of six times and nests one future instead of six: measured with
//! `benches/instructions`, the stack went from about 4,100 to about 2,900 user-space
//! instructions per request. A test (`tests/it/parity.rs`) sends the same requests through
//! the layers and through the server and compares the answers and the metrics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use super::access::{Access, AccessLog};
use super::body_timeout::{request_timeout, BodyTimeouts, TimedBody};
use super::conn::{ActiveGuard, ConnState};
use super::request_headers::RequestHeaders;
use super::RequestBody;
use crate::context::{request_span, RequestContext, RequestSpans};
use crate::in_flight::{InFlight, InFlightGuard};
use crate::lifecycle::Shutdown;
use crate::metrics::Metrics;
use crate::middleware::body_limit::too_large;
use crate::middleware::catch_panic::{catching, internal_error};
use crate::middleware::drain::{mark_if_draining, DrainAdmissionLayer};
use crate::middleware::host::{bad_request, host_problem_on, LastValidHost};
use crate::middleware::metrics::{response_route, route_label};
use crate::middleware::request_context::{context_from, set_response_headers};
use crate::trace_context::TraceContext;

/// What every connection's service shares.
#[derive(Debug)]
pub(crate) struct Stack {
    pub(crate) shutdown: Shutdown,
    pub(crate) metrics: Metrics,
    pub(crate) in_flight: InFlight,
    pub(crate) drain: DrainAdmissionLayer,
    pub(crate) body_limit: usize,
    /// Requests in flight beyond this are shed.
    pub(crate) max_in_flight: crate::limit::InFlightLimit,
    /// Handlers running longer are cut (503 `handler_timeout`).
    pub(crate) request_timeout: Option<std::time::Duration>,
    pub(crate) body_timeouts: BodyTimeouts,
    /// Where access-log lines go.
    pub(crate) access_log: AccessLog,
    /// How request ids reach the handler's log lines.
    pub(crate) request_spans: RequestSpans,
    /// Return `x-request-id` and `traceparent` on responses.
    pub(crate) response_ids: bool,
    /// The route table of the served `Routes`, if any.
    #[cfg(feature = "axum")]
    pub(crate) route_table: Option<crate::middleware::route::RouteTable>,
}

impl Stack {
    /// The route at `at` in the served `Routes`' table (see `ConnService::call`).
    #[inline]
    fn route(&self, at: Option<usize>) -> Option<&crate::metrics::RouteHandle> {
        #[cfg(feature = "axum")]
        return self.route_table.as_ref()?.get(at?);
        #[cfg(not(feature = "axum"))]
        at.and(None)
    }
}

/// Held by a response body until it is sent: the request is in flight and the connection
/// busy until then. Field order is drop order.
#[derive(Debug)]
pub(crate) struct Guards {
    /// Samples the request's latency for an adaptive limit.
    _limit: Option<crate::limit::LimitSample>,
    _flight: InFlightGuard,
    _conn: ActiveGuard,
    /// Boxed: every response carries the guards, and most servers log no access lines.
    access: Option<Box<Access>>,
}

pin_project! {
    /// The response body the server writes: the application's (or lameduck's own) body,
    /// holding the request's [`Guards`] until it is over and counting its bytes for the
    /// access log.
    #[derive(Debug)]
    pub(crate) struct ServerBody<B> {
        #[pin]
        inner: Either<B, Full<Bytes>>,
        guards: Option<Guards>,
    }
}

impl<B> http_body::Body for ServerBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<super::BoxError>,
{
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            None => {
                if let Some(mut g) = this.guards.take() {
                    if let Some(a) = g.access.as_mut() {
                        a.complete = true;
                    }
                }
            }
            Some(Ok(f)) => {
                if let Some(Guards {
                    access: Some(a), ..
                }) = this.guards.as_mut()
                {
                    if let Some(data) = f.data_ref() {
                        a.bytes += data.len() as u64;
                    }
                    // hyper stops polling a body that says it is done.
                    a.complete = this.inner.is_end_stream();
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The hyper service of one connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnService<S> {
    pub(crate) inner: S,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) state: Arc<ConnState>,
    pub(crate) stack: Arc<Stack>,
    /// The connection's last valid `Host`.
    pub(crate) last_host: LastValidHost,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<super::BoxError>,
{
    type Response = Response<ServerBody<B>>;
    type Error = Infallible;
    type Future = ServerFuture<S>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let version = req.version();
        let (conn, head_started) = self.state.begin(version);
        // From the first byte of its head.
        let started = head_started.unwrap_or_else(Instant::now);
        // Matched before the handler runs, which can read it.
        #[cfg(feature = "axum")]
        let route = self
            .stack
            .route_table
            .as_ref()
            .and_then(|t| t.find(req.uri().path()));
        #[cfg(not(feature = "axum"))]
        let route = None;
        let seen = RequestHeaders::scan(req.headers());
        let ctx = context_from(
            seen.request_id,
            TraceContext::from_values(seen.traceparent, || seen.tracestate),
            &self.stack.shutdown,
            Some(self.peer),
            #[cfg(feature = "axum")]
            self.stack.route(route).map(|r| r.route().clone()),
        );
        let (flight, in_flight) =
            self.stack
                .in_flight
                .begin_with(&req, Some(ctx.request_id().clone()), started);
        let (span, ids_in_logs) = self.span_for(&ctx);
        let req_method = if self.stack.access_log.is_on() {
            req.method().clone()
        } else {
            Method::GET
        };
        let (inner, early) = match self.refusal(version, &seen, &req, in_flight) {
            Some(refused) => (None, refused),
            None => (self.run_app(req, started, &ctx), Early::Panicked),
        };
        // Boxed, so that a request without a timeout does not carry a timer's size.
        let timer = self
            .stack
            .request_timeout
            .filter(|_| inner.is_some())
            .map(|d| Box::pin(tokio::time::sleep_until((started + d).into())));
        let access = self.access_record(req_method, started, &ctx);
        let limit_sample = self.limit_sample(inner.is_some(), started, in_flight);
        ServerFuture {
            inner,
            early,
            guards: Some(Guards {
                _limit: limit_sample,
                _flight: flight,
                _conn: conn,
                access,
            }),
            ctx,
            timer,
            version,
            started,
            stack: self.stack.clone(),
            span,
            ids_in_logs,
            route,
        }
    }
}

/// The steps of [`ConnService::call`], in the order it takes them.
impl<S> ConnService<S> {
    /// The request's span, and whether its ids go on log lines instead
    /// ([`RequestSpans`]).
    #[inline]
    fn span_for(&self, ctx: &RequestContext) -> (tracing::Span, bool) {
        match self.stack.request_spans {
            RequestSpans::Off => (tracing::Span::none(), false),
            RequestSpans::Span => (request_span(ctx), false),
            RequestSpans::SpanWith(make) => (make(ctx), false),
            RequestSpans::IdsInLogs => (tracing::Span::none(), true),
        }
    }

    /// Why the request is answered without running the application, if it is: the drain
    /// refuses it, the in-flight limit is reached, its `Host` is bad, or its declared body
    /// is over the limit.
    #[inline]
    fn refusal<Body: http_body::Body>(
        &self,
        version: Version,
        seen: &RequestHeaders<'_>,
        req: &Request<Body>,
        in_flight: usize,
    ) -> Option<Early> {
        if self.stack.drain.refuses_now() {
            Some(Early::Refused)
        } else if in_flight > self.stack.max_in_flight.now() {
            Some(Early::Overloaded)
        } else if let Some(why) =
            host_problem_on(version, seen.host, seen.hosts > 1, &self.last_host)
        {
            Some(Early::BadHost(why))
        } else if http_body::Body::size_hint(req.body()).lower() > self.stack.body_limit as u64 {
            // hyper's parsed `Content-Length` (a lookup less than `declares_over`).
            Some(Early::TooLarge)
        } else {
            None
        }
    }

    /// The application's future for `req`, its body limited and timed, the context in its
    /// extensions; `None` when making it panicked.
    #[inline]
    fn run_app(
        &self,
        req: Request<Incoming>,
        started: Instant,
        ctx: &RequestContext,
    ) -> Option<Oneshot<S, Request<RequestBody>>>
    where
        S: Service<Request<RequestBody>> + Clone,
    {
        let (limit, timeouts) = (self.stack.body_limit, self.stack.body_timeouts);
        let mut req = req.map(|b| Limited::new(TimedBody::new(b, timeouts, started, ctx), limit));
        // The context travels with the request too: a middleware may move the rest of the
        // stack onto a task of its own, where the current context (per thread, set while
        // this future is polled) is not.
        req.extensions_mut().insert(ctx.clone());
        let svc = self.inner.clone();
        catching(|| svc.oneshot(req))
    }

    /// The access log's record of the request, when the access log is on.
    #[inline]
    fn access_record(
        &self,
        method: Method,
        started: Instant,
        ctx: &RequestContext,
    ) -> Option<Box<Access>> {
        self.stack.access_log.is_on().then(|| {
            Box::new(Access {
                method,
                status: 0,
                started,
                bytes: 0,
                complete: false,
                peer: self.peer,
                ctx: ctx.clone(),
                route: None,
                sink: self.stack.access_log.clone(),
            })
        })
    }

    /// What the adaptive limit learns from the request: only requests that run the
    /// application tell it anything.
    #[inline]
    fn limit_sample(
        &self,
        runs_app: bool,
        started: Instant,
        in_flight: usize,
    ) -> Option<crate::limit::LimitSample> {
        match &self.stack.max_in_flight {
            crate::limit::InFlightLimit::Adaptive(a) if runs_app => {
                Some(crate::limit::LimitSample {
                    limit: a.clone(),
                    started,
                    in_flight,
                })
            }
            _ => None,
        }
    }
}

/// Why a request is answered without (or instead of) the application's response.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Early {
    /// The drain policy refused it.
    Refused,
    /// The in-flight limit was reached.
    Overloaded,
    /// The application panicked.
    Panicked,
    /// `Content-Length` is over the body limit.
    TooLarge,
    /// An HTTP/1.1 request without a valid `Host`.
    BadHost(&'static str),
}

pin_project! {
    /// Response future of [`ConnService`].
    pub(crate) struct ServerFuture<S: Service<Request<RequestBody>>> {
        #[pin]
        inner: Option<Oneshot<S, Request<RequestBody>>>,
        early: Early,
        guards: Option<Guards>,
        ctx: RequestContext,
        // The request timeout, when one is set.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        version: Version,
        started: Instant,
        stack: Arc<Stack>,
        span: tracing::Span,
        // The log output writes the request's ids (instead of a `request` span).
        ids_in_logs: bool,
        // The route in the server's table, if it matched one.
        route: Option<usize>,
    }
}

impl<S, B> Future for ServerFuture<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<super::BoxError>,
{
    type Output = Result<Response<ServerBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Taken apart once: the head is changed in place and the body wrapped, instead of
        // moving the whole response at each step.
        let (head, body) = match this.inner.as_mut().as_pin_mut() {
            None => match this.early {
                Early::Refused => this.stack.drain.refusal(*this.version),
                Early::Overloaded => overloaded(&this.stack.metrics),
                Early::Panicked => internal_error(),
                Early::TooLarge => too_large(this.stack.body_limit, *this.version),
                Early::BadHost(why) => bad_request(why, *this.version),
            }
            .into_parts(),
            Some(fut) => match catching(|| {
                let _current = this.ctx.enter(*this.ids_in_logs);
                let _span = this.span.enter();
                fut.poll(cx)
            }) {
                Some(Poll::Pending) => {
                    let expired = this
                        .timer
                        .as_mut()
                        .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                    if !expired {
                        return Poll::Pending;
                    }
                    if this.ctx.is_past_point_of_no_return() {
                        // The handler answers what it started; the timer is done with.
                        *this.timer = None;
                        return Poll::Pending;
                    }
                    // Dropped here: the handler's work ends with its future.
                    this.inner.set(None);
                    handler_timeout().into_parts()
                }
                Some(Poll::Ready(Ok(res))) => {
                    let (head, body) = res.into_parts();
                    (head, Either::Left(body))
                }
                Some(Poll::Ready(Err(never))) => match never {},
                None => {
                    // The handler's future is poisoned: drop it rather than poll it again.
                    this.inner.set(None);
                    internal_error().into_parts()
                }
            },
        };
        Poll::Ready(Ok(finish(
            this.ctx,
            this.stack,
            *this.version,
            *this.started,
            *this.route,
            this.guards.take(),
            (head, body),
        )))
    }
}

/// The last step of a request: its answer's head completed (a body read that timed out
/// wins, the drain's `Connection: close`, the response ids), the request recorded (metrics,
/// access record), and its guards handed to the response body, which holds them until it
/// is sent.
#[inline]
fn finish<B>(
    ctx: &RequestContext,
    stack: &Stack,
    version: Version,
    started: Instant,
    route: Option<usize>,
    mut guards: Option<Guards>,
    (mut head, mut body): (http::response::Parts, Either<B, Full<Bytes>>),
) -> Response<ServerBody<B>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<super::BoxError>,
{
    if ctx.body_timed_out() {
        // Whatever the handler made of the failed read, the client was too slow.
        (head, body) = request_timeout(version).into_parts();
    }
    mark_if_draining(&stack.shutdown, version, &mut head.headers);
    if stack.response_ids {
        set_response_headers(&mut head.headers, ctx);
    }
    let status = head.status.as_u16();
    let latency = started.elapsed();
    match stack.route(route) {
        Some(route) => route.observe(status, latency),
        None => {
            let route = route_label(Some(ctx), &head.extensions);
            stack.metrics.observe(route, status, latency);
        }
    }
    if let Some(Guards {
        access: Some(a), ..
    }) = guards.as_mut()
    {
        a.status = status;
        if ctx.route().is_none() {
            a.route = Some(response_route(&head.extensions).into());
        }
        // An empty body is never polled.
        a.complete = http_body::Body::is_end_stream(&body);
    }
    Response::from_parts(
        head,
        ServerBody {
            inner: body,
            guards,
        },
    )
}

/// The answer to a request shed at the in-flight limit: 503 `overloaded`, retry in a
/// second (on the same connection).
fn overloaded<B>(metrics: &Metrics) -> Response<Either<B, Full<Bytes>>> {
    metrics.request_shed();
    let mut res = crate::error_response::error_response(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "too many requests in flight, retry later",
    );
    res.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    res
}

/// The answer to a request whose handler ran past the request timeout: 503
/// `handler_timeout`.
fn handler_timeout<B>() -> Response<Either<B, Full<Bytes>>> {
    crate::error_response::error_response(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "handler_timeout",
        "the request took too long to handle",
    )
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// hyper moves each response (and its body, which holds the guards) a few times per
    /// request, with `memcpy` beyond a small size: what is rarely used stays behind a box.
    /// Boxing the access record took about 320 instructions off every request.
    #[test]
    fn what_hyper_moves_per_request_stays_small() {
        assert!(size_of::<Guards>() <= 64, "{}", size_of::<Guards>());
        let res = size_of::<Response<ServerBody<http_body_util::Empty<Bytes>>>>();
        assert!(res <= 216, "{res}");
    }
}
