//! # lameduck
//!
//! Stop, restart and upgrade hyper/tower/axum services without dropping a request.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use lameduck::{lifecycle::Lifecycle, server::Server};
//! use std::process::ExitCode;
//!
//! #[tokio::main]
//! async fn main() -> ExitCode {
//!     // Install signal handlers first: a SIGTERM during start-up then still drains.
//!     let lifecycle = Lifecycle::new().with_os_signals().expect("signal handlers");
//!     let app = Router::new().route("/ping", get(|| async { "pong" }));
//!     let server = Server::builder()
//!         .drain_delay(std::time::Duration::from_secs(5))
//!         .admin("127.0.0.1:9090".parse().unwrap())
//!         .bind("127.0.0.1:8080".parse().unwrap(), lifecycle)
//!         .await
//!         .expect("bind");
//!     let report = server.serve(app).await;
//!     ExitCode::from(report.exit_code())
//! }
//! ```
//!
//! - [`lifecycle`]: phases, signals, the "stop soon" token and the deadline;
//! - [`server`]: the accept loop and the drain;
//! - [`context`]: what a request carries (id, trace context, "stop soon", deadline, route)
//!   and how its ids reach the logs;
//! - [`middleware`]: request context, in-flight tracking, drain admission, metrics,
//!   catch-panic, body limit, trace propagation, each a tower layer usable alone;
//! - [`trace_context`], [`metrics`], [`in_flight`]: the values and registries the layers and
//!   the server share;
//! - [`admin`]: `/livez`, `/readyz`, `/metrics`, `/upgrade`;
//! - [`hooks`]: ordered shutdown hooks with timeouts;
//! - [`exit`]: the exit-code table;
//! - `logs` (feature `logs`): the `tracing` subscriber, lameduck's JSON output and a log
//!   file that is flushed and `fsync`'d at exit;
//! - `cli` (feature `cli`): what a service binary's `main` needs;
//! - `otel` (feature `otel`): request spans exported over OTLP, flushed at exit;
//! - [`registry`]: registration in a service registry (etcd with the feature `etcd`).
//!
//! Dependencies point down: `server` stacks `middleware` over `context`, `metrics`,
//! `in_flight` and `lifecycle`; `logs`, `otel` and `cli` sit on top and are never imported
//! by the server or the layers. What the server does per request is configured on its
//! [`Builder`](server::Builder), never by installing something elsewhere.

pub mod admin;
pub mod body;
#[cfg(feature = "cli")]
pub mod cli;
pub mod context;
mod error;
mod error_response;
mod exe;
pub mod exit;
pub mod hooks;
pub mod in_flight;
mod json;
pub mod lifecycle;
pub mod limit;
#[cfg(feature = "logs")]
pub mod logs;
pub mod metrics;
pub mod middleware;
#[cfg(feature = "otel")]
pub mod otel;
pub mod outbound;
pub mod registry;
pub mod server;
mod sync;
pub mod tasks;
pub mod trace_context;

pub use error::Error;

/// The README's examples, compiled as doc tests (`no_run`) so that they cannot drift from
/// the library.
#[cfg(all(doctest, feature = "logs", feature = "axum"))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
