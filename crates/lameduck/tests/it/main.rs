//! Library integration tests: a real `Server` on loopback, driven by a [`Trigger`] instead of
//! OS signals (the demo's tests send real signals to a real process).
// Every test here serves an axum `Router`.
#![cfg(feature = "axum")]

#[cfg(feature = "fd-handoff")]
mod activation;
mod hooks;
mod layout;
mod parity;
mod server;
mod tasks;
#[cfg(feature = "tls")]
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use lameduck::lifecycle::{Lifecycle, ShutdownReport, Trigger};
use lameduck::server::{Builder, Server};

pub(crate) const SOON: Duration = Duration::from_secs(10);

/// A bound server on 127.0.0.1:0 running `app`; returns its address, a trigger and the
/// task that yields the report.
pub(crate) async fn run(
    builder: Builder,
    app: axum::Router,
) -> (SocketAddr, Trigger, tokio::task::JoinHandle<ShutdownReport>) {
    let server = builder
        .bind("127.0.0.1:0".parse().unwrap(), Lifecycle::new())
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let trigger = server.trigger();
    let task = tokio::spawn(server.serve(app));
    (addr, trigger, task)
}

pub(crate) fn quick() -> Builder {
    Server::builder().idle_grace(Duration::from_millis(100))
}
