//! Catch panics in handlers: the client gets a 500 and the server lives on.
//!
//! Like tower-http's `CatchPanicLayer`, but the response body stays unboxed
//! (`Either<B, Full<Bytes>>`), which keeps an allocation off every request. The panic is
//! logged with its message; the client gets
//! `{"error":{"code":"internal","message":"internal server error"}}`.
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::middleware::catch_panic::CatchPanicLayer;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(CatchPanicLayer::new());
//! # let _ = app;
//! ```

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::error_response::error_response;

/// Turns panics in the inner service into 500 responses. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl CatchPanicLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// The service of [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<B>> for CatchPanic<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<Either<ResB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ResponseFuture {
            inner: catching(|| self.inner.call(req)),
        }
    }
}

pin_project! {
    /// Response future of [`CatchPanic`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<Either<ResB, Full<Bytes>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(fut) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(Ok(internal_error()));
        };
        match catching(|| fut.poll(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            Some(Poll::Ready(res)) => Poll::Ready(res.map(|r| r.map(Either::Left))),
            None => {
                // The inner future is poisoned: drop it now rather than poll it again.
                this.inner.set(None);
                Poll::Ready(Ok(internal_error()))
            }
        }
    }
}

/// The layer's step, around every call and poll of the inner service: `f()`, or `None`
/// when it panicked (the panic is logged with its message).
// Always inlined: called out of line, the server's poll copied the whole response out of
// it on every request (about 450 more instructions per request, `benches/instructions`).
#[inline(always)]
pub(crate) fn catching<T>(f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(t) => Some(t),
        Err(panic) => {
            log_panic(&*panic);
            None
        }
    }
}

fn log_panic(panic: &(dyn Any + Send)) {
    let message = crate::error::panic_message(panic);
    tracing::error!(panic = message, "handler panicked");
}

/// The answer to a request whose handler panicked: 500 with code `internal`.
pub(crate) fn internal_error<B>() -> Response<Either<B, Full<Bytes>>> {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal server error",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panic_while_polling_becomes_a_500() {
        let svc = CatchPanicLayer::new().layer(tower::service_fn(|_r: Request<()>| async {
            panic!("boom");
            #[allow(unreachable_code)]
            Ok::<Response<()>, std::convert::Infallible>(Response::new(()))
        }));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 500);
    }

    #[tokio::test]
    async fn a_panic_in_call_becomes_a_500() {
        #[derive(Clone)]
        struct PanicsInCall;
        impl Service<Request<()>> for PanicsInCall {
            type Response = Response<()>;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Response<()>, std::convert::Infallible>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<()>) -> Self::Future {
                panic!("in call")
            }
        }
        let res = CatchPanicLayer::new()
            .layer(PanicsInCall)
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
    }

    #[tokio::test]
    async fn normal_responses_pass_through() {
        let svc = CatchPanicLayer::new().layer(tower::service_fn(|_r: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        assert_eq!(svc.oneshot(Request::new(())).await.unwrap().status(), 200);
    }
}
