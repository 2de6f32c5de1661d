//! Request body limit: a request whose `Content-Length` is over the limit is answered 413
//! at once (code `payload_too_large`, and `Connection: close` on HTTP/1, as its unread body
//! is still on the connection); any other body is handed on wrapped in
//! [`http_body_util::Limited`], so a chunked body that grows past the limit fails when it
//! is read.
//!
//! Unlike tower-http's `RequestBodyLimitLayer`, the 413 carries lameduck's JSON error body
//! and the response body stays unboxed.
//!
//! ```
//! use axum::{routing::post, Router};
//! use lameduck::middleware::body_limit::BodyLimitLayer;
//!
//! let app: Router = Router::new()
//!     .route("/upload", post(|body: String| async move { body.len().to_string() }))
//!     .layer(BodyLimitLayer::new(64 * 1024));
//! # let _ = app;
//! ```

use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full, Limited};
use tower::{Layer, Service};

use crate::error_response::error_response;
use crate::middleware::drain::mark_connection_close;

/// Limits request bodies to a number of bytes. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    limit: usize,
}

impl BodyLimitLayer {
    /// Bodies of at most `limit` bytes pass.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: usize,
}

/// The layer's first step: whether `req` declares a body over `limit` bytes.
#[inline]
pub(crate) fn declares_over<B>(req: &Request<B>, limit: usize) -> bool {
    req.headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// The 413 answer to a request over `limit`: the unread body is still on the connection,
/// so an HTTP/1 connection is not reused.
pub(crate) fn too_large<B>(limit: usize, version: Version) -> Response<Either<B, Full<Bytes>>> {
    let mut res = error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!("request body is over the limit of {limit} bytes"),
    );
    mark_connection_close(version, &mut res);
    res
}

impl<S, B, ResB> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<Limited<B>>, Response = Response<ResB>>,
{
    type Response = Response<Either<ResB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if declares_over(&req, self.limit) {
            return ResponseFuture::early(too_large(self.limit, req.version()));
        }
        let limit = self.limit;
        ResponseFuture::inner(self.inner.call(req.map(|b| Limited::new(b, limit))))
    }
}

/// Response future of [`BodyLimit`].
pub type ResponseFuture<F, B> = super::early::EarlyOr<F, B>;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt;

    fn svc() -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Either<String, Full<Bytes>>>,
        Error = std::convert::Infallible,
    > + Clone {
        BodyLimitLayer::new(4).layer(tower::service_fn(
            |req: Request<Limited<Full<Bytes>>>| async move {
                let body = match req.into_body().collect().await {
                    Ok(b) => format!("{} bytes", b.to_bytes().len()),
                    Err(e) => format!("error: {e}"),
                };
                Ok::<_, std::convert::Infallible>(Response::new(body))
            },
        ))
    }

    fn post(body: &'static str, declared: Option<&str>) -> Request<Full<Bytes>> {
        let mut req = Request::builder().method("POST");
        if let Some(n) = declared {
            req = req.header("content-length", n);
        }
        req.body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_answered_413_with_connection_close() {
        let res = svc().oneshot(post("hello", Some("5"))).await.unwrap();
        assert_eq!(res.status(), 413);
        assert_eq!(res.headers()["connection"], "close");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(br#"{"error":{"code":"payload_too_large""#));
    }

    #[tokio::test]
    async fn an_undeclared_body_over_the_limit_fails_when_read() {
        let res = svc().oneshot(post("hello", None)).await.unwrap();
        assert_eq!(res.status(), 200);
        let Either::Left(text) = res.into_body() else {
            panic!("the handler answered")
        };
        assert!(text.starts_with("error"), "{text}");
        let ok = svc().oneshot(post("hey", Some("3"))).await.unwrap();
        let Either::Left(text) = ok.into_body() else {
            panic!("the handler answered")
        };
        assert_eq!(text, "3 bytes");
    }
}
