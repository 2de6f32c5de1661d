//! Request body timeouts: the request body the application reads fails when no data has
//! arrived for `body_read_timeout`, or when the whole body has not arrived within
//! `body_timeout` of the request head. The request is marked (see
//! [`RequestContext::body_timed_out`]) and the server answers 408 with code
//! `request_timeout` whatever the handler made of the failed read (on HTTP/1 with
//! `Connection: close`; on HTTP/2 the answer ends that stream only).
//!
//! Without it, a client that declares a body and sends nothing holds its connection, and a
//! place in flight that the drain waits for, for as long as it likes. The clock only runs
//! while the application waits for the body: a body that arrives with its head, or that
//! nobody reads, never arms a timer.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::BoxError;
use crate::context::RequestContext;
use crate::error_response::error_response;
use crate::middleware::drain::mark_connection_close;

/// The two body timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyTimeouts {
    /// Longest wait between two pieces of the body.
    pub(crate) read: Duration,
    /// Longest time for the whole body, from the request head.
    pub(crate) whole: Duration,
}

/// A request body read from the client took too long.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyTimeoutError {
    /// No data arrived for this long.
    #[error("request body: no data for {0:?}")]
    Read(Duration),
    /// The whole body did not arrive within this long.
    #[error("request body: not complete within {0:?}")]
    Whole(Duration),
}

pin_project! {
    /// The request body under the body timeouts (see the [module docs](self)).
    #[derive(Debug)]
    pub struct TimedBody {
        #[pin]
        inner: Incoming,
        // `None` for a body that was already complete: nothing to time.
        timing: Option<Box<Timing>>,
    }
}

/// What a body that can wait needs; boxed so that the common empty body stays small.
#[derive(Debug)]
struct Timing {
    timeouts: BodyTimeouts,
    /// The request head's arrival, for the whole-body timeout.
    started: Instant,
    /// When the current wait for data began.
    waiting_since: Option<Instant>,
    /// Made at the first wait: a body that arrives with its head needs none.
    timer: Option<Pin<Box<Sleep>>>,
    ctx: RequestContext,
}

impl TimedBody {
    /// `inner`, timed from `started` (`ctx` is marked when a timeout cuts it).
    pub(crate) fn new(
        inner: Incoming,
        timeouts: BodyTimeouts,
        started: std::time::Instant,
        ctx: &RequestContext,
    ) -> Self {
        let timing = (!inner.is_end_stream()).then(|| {
            Box::new(Timing {
                timeouts,
                started: Instant::from_std(started),
                waiting_since: None,
                timer: None,
                ctx: ctx.clone(),
            })
        });
        Self { inner, timing }
    }
}

impl Timing {
    /// The application waits for data: `Ready` with the error once a timeout has passed.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<BodyTimeoutError> {
        let now = Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let read_due = since + self.timeouts.read;
        let whole_due = self.started + self.timeouts.whole;
        let due = read_due.min(whole_due);
        if now < due {
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.ctx.set_body_timed_out();
        Poll::Ready(if read_due <= whole_due {
            BodyTimeoutError::Read(self.timeouts.read)
        } else {
            BodyTimeoutError::Whole(self.timeouts.whole)
        })
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(t) = this.timing.as_mut() {
                    t.waiting_since = None;
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.timing.as_mut() {
                Some(t) => t.poll_wait(cx).map(|e| Some(Err(e.into()))),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request whose body was cut at a timeout: 408 with code
/// `request_timeout`; an HTTP/1 connection is not reused (the rest of the body may still
/// come).
pub(crate) fn request_timeout<B>(
    version: http::Version,
) -> http::Response<http_body_util::Either<B, http_body_util::Full<Bytes>>> {
    let mut res = error_response(
        http::StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive in time",
    );
    mark_connection_close(version, &mut res);
    res
}
