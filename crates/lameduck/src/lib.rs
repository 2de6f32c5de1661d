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
//!     let report = server.serve_router(app).await;
//!     ExitCode::from(report.exit_code())
//! }
//! ```
//!
//! - [`lifecycle`]: phases, signals, the "stop soon" token and the deadline;
//! - [`server`]: the accept loop and the drain;
//! - [`middleware`]: request context, in-flight tracking, drain admission, metrics,
//!   catch-panic, each a tower layer usable alone;
//! - [`admin`]: `/livez`, `/readyz`, `/metrics`;
//! - [`hooks`]: ordered shutdown hooks with timeouts;
//! - [`exit`]: the exit-code table;
//! - `cli` and `logfile` (feature `cli`): helpers for service binaries, and a log file
//!   that is flushed and `fsync`'d at exit;
//! - `otel` (feature `otel`): request spans exported over OTLP, flushed at exit.

pub mod admin;
pub mod body;
#[cfg(feature = "cli")]
pub mod cli;
mod error;
pub mod exit;
pub mod hooks;
mod json;
pub mod lifecycle;
#[cfg(feature = "cli")]
pub mod logfile;
pub mod middleware;
#[cfg(feature = "otel")]
pub mod otel;
pub mod server;

pub use error::Error;
