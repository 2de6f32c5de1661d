//! Tower middleware, one layer per module, each usable on its own with any axum app.
//!
//! The order [`Server`](crate::server::Server) applies them in, outermost first:
//! [`catch_panic`] -> [`request_context`] -> [`metrics`] -> [`in_flight`] -> [`drain`] ->
//! body limit -> the application.
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::lifecycle::Lifecycle;
//! use lameduck::middleware::{drain::DrainAdmissionLayer, in_flight::{InFlight, InFlightLayer},
//!     request_context::RequestContextLayer};
//!
//! let lifecycle = Lifecycle::new();
//! let in_flight = InFlight::new();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hi" }))
//!     .layer(DrainAdmissionLayer::new(lifecycle.shutdown()))
//!     .layer(InFlightLayer::new(in_flight.clone()))
//!     .layer(RequestContextLayer::new(lifecycle.shutdown()));
//! # let _ = app;
//! ```

pub mod catch_panic;
pub mod drain;
pub mod in_flight;
pub mod metrics;
pub mod request_context;
#[cfg(feature = "axum")]
pub mod route;
pub mod trace_context;
