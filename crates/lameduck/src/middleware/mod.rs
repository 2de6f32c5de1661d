//! Tower middleware, one layer per module, each usable on its own with any axum app. Each
//! module holds a layer (`XLayer`), its service (`X<S>`) and its response future; the value
//! types they work with live at the crate root ([`context`](crate::context),
//! [`trace_context`](crate::trace_context), [`metrics`](crate::metrics),
//! [`in_flight`](crate::in_flight)).
//!
//! The order [`Server`](crate::server::Server) applies them in, outermost first:
//! [`request_context`] -> [`metrics`] -> [`in_flight`] -> [`drain`] -> [`host`] ->
//! [`body_limit`] -> [`catch_panic`] -> the application. Catch-panic wraps the application alone, so the 500
//! a panic becomes carries the request id, is counted under its route and is marked while
//! draining, as any other answer. The server does not stack them: its per-connection
//! service runs the same steps, by calling the same functions, in one service and one
//! future (see `server/service.rs`); a test runs the same requests through both.
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::in_flight::InFlight;
//! use lameduck::lifecycle::Lifecycle;
//! use lameduck::middleware::{drain::DrainAdmissionLayer, in_flight::TrackInFlightLayer,
//!     request_context::SetRequestContextLayer};
//!
//! let lifecycle = Lifecycle::new();
//! let in_flight = InFlight::new();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hi" }))
//!     .layer(DrainAdmissionLayer::new(lifecycle.shutdown()))
//!     .layer(TrackInFlightLayer::new(in_flight.clone()))
//!     .layer(SetRequestContextLayer::new(lifecycle.shutdown()));
//! # let _ = app;
//! ```

pub mod body_limit;
pub mod catch_panic;
pub mod drain;
mod early;
pub mod host;
pub mod in_flight;
pub mod metrics;
pub mod propagate_trace;
pub mod request_context;
#[cfg(feature = "axum")]
pub mod route;
