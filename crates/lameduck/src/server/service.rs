//! The per-connection hyper service: lameduck's whole per-request stack in one layer.
//!
//! It does what [`CatchPanicLayer`](crate::middleware::catch_panic::CatchPanicLayer),
//! [`RequestContextLayer`](crate::middleware::request_context::RequestContextLayer),
//! [`MetricsLayer`](crate::middleware::metrics::MetricsLayer),
//! [`InFlightLayer`](crate::middleware::in_flight::InFlightLayer) and
//! [`DrainAdmissionLayer`](crate::middleware::drain::DrainAdmissionLayer) do, in that
//! order, by calling the same functions, then applies the body limit (413 with the same
//! JSON error shape), plus the connection's own bookkeeping. Folding
//! them into one service moves the request once instead of five times and nests one future
//! instead of five: measured with `benches/instructions`, the stack went from about 4,100 to
//! about 2,900 user-space instructions per request.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
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
use super::conn::{ActiveGuard, ConnState};
use super::RequestBody;
use crate::lifecycle::Shutdown;
use crate::middleware::catch_panic::{internal_error, log_panic};
use crate::middleware::drain::{mark_connection_close, DrainAdmissionLayer};
use crate::middleware::in_flight::{InFlight, InFlightGuard};
use crate::middleware::metrics::{route_of, Metrics};
use crate::middleware::request_context::{attach, set_response_headers, RequestContext};

/// What every connection's service shares.
#[derive(Debug)]
pub(crate) struct Stack {
    pub(crate) shutdown: Shutdown,
    pub(crate) metrics: Metrics,
    pub(crate) in_flight: InFlight,
    pub(crate) drain: DrainAdmissionLayer,
    pub(crate) body_limit: usize,
    /// Where access-log lines go.
    pub(crate) access_log: AccessLog,
    /// Run each request's handler inside a `request` span.
    pub(crate) request_spans: bool,
}

/// Held by a response body until it is sent: the request is in flight and the connection
/// busy until then. Field order is drop order.
#[derive(Debug)]
pub(crate) struct Guards {
    _flight: InFlightGuard,
    _conn: ActiveGuard,
    access: Option<Access>,
}

/// The target of the per-request span (see `Builder::request_spans`).
pub const REQUEST_SPAN_TARGET: &str = "lameduck::request";

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

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let started = Instant::now();
        let version = req.version();
        let conn = self.state.begin(version);
        let ctx = attach(&mut req, &self.stack.shutdown, Some(self.peer));
        let flight = self
            .stack
            .in_flight
            .begin_with(&req, Some(ctx.request_id().clone()), started);
        // With lameduck's own JSON log output and no span exporter, the request's ids are
        // written on its log lines by the output itself (see `cli::RequestFieldsJson`):
        // the same lines as with a span, without the span's cost in the subscriber.
        let ids_in_logs = self.stack.request_spans && request_fields_by_formatter();
        let span = if self.stack.request_spans && !ids_in_logs {
            request_span(&ctx)
        } else {
            tracing::Span::none()
        };
        let req_method = if self.stack.access_log.is_on() {
            req.method().clone()
        } else {
            Method::GET
        };
        let (inner, early) = if self.stack.drain.refuses_now() {
            (None, Early::Refused)
        } else if declared_length(&req).is_some_and(|n| n > self.stack.body_limit as u64) {
            (None, Early::TooLarge)
        } else {
            let req = req.map(|b| Limited::new(b, self.stack.body_limit));
            let svc = self.inner.clone();
            match catch_unwind(AssertUnwindSafe(|| svc.oneshot(req))) {
                Ok(fut) => (Some(fut), Early::Panicked),
                Err(panic) => {
                    log_panic(&*panic);
                    (None, Early::Panicked)
                }
            }
        };
        let access = self.stack.access_log.is_on().then(|| Access {
            method: req_method,
            status: 0,
            started,
            bytes: 0,
            complete: false,
            peer: self.peer,
            ctx: ctx.clone(),
            route: None,
            sink: self.stack.access_log.clone(),
        });
        ServerFuture {
            inner,
            early,
            guards: Some(Guards {
                _flight: flight,
                _conn: conn,
                access,
            }),
            ctx,
            version,
            started,
            stack: self.stack.clone(),
            span,
            ids_in_logs,
        }
    }
}

#[cfg(feature = "cli")]
fn request_fields_by_formatter() -> bool {
    crate::cli::request_fields_by_formatter()
}

#[cfg(not(feature = "cli"))]
fn request_fields_by_formatter() -> bool {
    false
}

/// The request's `request` span: the request and trace ids (the access log has the rest),
/// and with the `otel` feature its trace and span
/// ids (those of the response's `traceparent`).
fn request_span(ctx: &RequestContext) -> tracing::Span {
    let (request_id, trace_id) = (ctx.request_id().as_str(), ctx.trace().trace_id_str());
    let make = || {
        tracing::info_span!(
            target: REQUEST_SPAN_TARGET,
            "request",
            request_id,
            trace_id,
        )
    };
    #[cfg(feature = "otel")]
    let make = || crate::otel::request_span(ctx.trace(), make);
    #[cfg(feature = "cli")]
    return crate::cli::with_request_fields(
        request_id,
        ctx.request_id().is_generated(),
        trace_id,
        make,
    );
    #[cfg(not(feature = "cli"))]
    make()
}

/// Why a request is answered without (or instead of) the application's response.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Early {
    /// The drain policy refused it.
    Refused,
    /// The application panicked.
    Panicked,
    /// `Content-Length` is over the body limit.
    TooLarge,
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large<B>(limit: usize) -> Response<Either<B, Full<Bytes>>> {
    let body = format!(
        r#"{{"error":{{"code":"payload_too_large","message":"request body is over the limit of {limit} bytes"}}}}"#
    );
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *res.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    res
}

pin_project! {
    /// Response future of [`ConnService`].
    pub(crate) struct ServerFuture<S: Service<Request<RequestBody>>> {
        #[pin]
        inner: Option<Oneshot<S, Request<RequestBody>>>,
        early: Early,
        guards: Option<Guards>,
        ctx: RequestContext,
        version: Version,
        started: Instant,
        stack: Arc<Stack>,
        span: tracing::Span,
        // The log output writes the request's ids (instead of a `request` span).
        ids_in_logs: bool,
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
        let mut res = match this.inner.as_mut().as_pin_mut() {
            None => match this.early {
                Early::Refused => {
                    this.stack.metrics.request_rejected();
                    this.stack.drain.refusal(*this.version)
                }
                Early::Panicked => internal_error(),
                Early::TooLarge => {
                    // The unread body is still on the connection: do not reuse it.
                    let mut res = too_large(this.stack.body_limit);
                    mark_connection_close(*this.version, &mut res);
                    res
                }
            },
            Some(fut) => match catch_unwind(AssertUnwindSafe(|| {
                let _current = this.ctx.enter(*this.ids_in_logs);
                let _span = this.span.enter();
                fut.poll(cx)
            })) {
                Ok(Poll::Pending) => return Poll::Pending,
                Ok(Poll::Ready(Ok(res))) => res.map(Either::Left),
                Ok(Poll::Ready(Err(never))) => match never {},
                Err(panic) => {
                    this.inner.set(None);
                    log_panic(&*panic);
                    internal_error()
                }
            },
        };
        if this.stack.shutdown.is_draining() {
            mark_connection_close(*this.version, &mut res);
        }
        set_response_headers(&mut res, this.ctx);
        let status = res.status().as_u16();
        let ctx_route = this.ctx.route();
        this.stack.metrics.observe(
            ctx_route.unwrap_or_else(|| route_of(&res)),
            status,
            this.started.elapsed(),
        );
        let mut guards = this.guards.take();
        if let Some(Guards {
            access: Some(a), ..
        }) = guards.as_mut()
        {
            a.status = status;
            if ctx_route.is_none() {
                a.route = Some(route_of(&res).into());
            }
        }
        Poll::Ready(Ok(res.map(|inner| {
            if let Some(Guards {
                access: Some(a), ..
            }) = guards.as_mut()
            {
                // An empty body is never polled.
                a.complete = http_body::Body::is_end_stream(&inner);
            }
            ServerBody { inner, guards }
        })))
    }
}
