//! Catch panics in handlers: the client gets a 500 and the server lives on.
//!
//! This is tower-http's [`CatchPanicLayer`] with a handler that logs the panic and answers
//! `500` with a JSON error body.
//!
//! ```
//! use axum::{routing::get, Router};
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(lameduck::middleware::catch_panic::layer());
//! # let _ = app;
//! ```

use std::any::Any;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
pub use tower_http::catch_panic::CatchPanicLayer;

/// The panic handler type used by [`layer`].
pub type PanicHandler = fn(Box<dyn Any + Send + 'static>) -> Response<Full<Bytes>>;

/// A [`CatchPanicLayer`] that logs the panic and answers 500 with
/// `{"error":{"code":"internal","message":"internal server error"}}`.
pub fn layer() -> CatchPanicLayer<PanicHandler> {
    CatchPanicLayer::custom(handle_panic as PanicHandler)
}

fn handle_panic(err: Box<dyn Any + Send + 'static>) -> Response<Full<Bytes>> {
    let message = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(non-string panic payload)");
    tracing::error!(panic = message, "handler panicked");
    let body = r#"{"error":{"code":"internal","message":"internal server error"}}"#;
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
