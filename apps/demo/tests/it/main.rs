//! End-to-end tests of `lameduck-demo`: the real binary, real sockets, real signals.

mod activation;
mod bad_input;
mod deploy;
mod drain;
mod hostile;
mod keepalive;
mod logs;
mod metrics;
mod operator;
mod otel;
mod probes;
mod py_clients;
mod signals;
mod streams;
mod tasks;
#[cfg(feature = "tls")]
mod tls;
mod upgrade;

use std::time::Duration;

use lameduck_testkit::{get, poll_until, Spawned};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_lameduck-demo");

/// Generous bound for anything that should happen "at once" on a loaded CI machine.
pub(crate) const SOON: Duration = Duration::from_secs(10);

pub(crate) fn start(args: &[&str]) -> Spawned {
    Spawned::start(BIN, args).unwrap_or_else(|e| panic!("start {BIN}: {e}"))
}

/// Requests to `route` that the serving process has answered 200 (from its metrics).
pub(crate) async fn answered(s: &Spawned, route: &str) -> u64 {
    let Ok(res) = get(s.admin, "/metrics").await else {
        return 0;
    };
    let series = format!("lameduck_http_requests_total{{route=\"{route}\",status=\"200\"}} ");
    String::from_utf8_lossy(res.body())
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()).map(str::to_owned))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Status of an admin endpoint, or 0 when the request failed.
/// Seconds from the environment variable `name` (an attack's length), `default` when unset.
pub(crate) fn env_secs(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A metric's value on the admin `/metrics`: the line starting with `line`.
pub(crate) async fn metric(admin: std::net::SocketAddr, line: &str) -> Option<f64> {
    let res = get(admin, "/metrics").await.ok()?;
    let text = String::from_utf8_lossy(res.body()).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
}

pub(crate) async fn admin_status(s: &Spawned, path: &str) -> u16 {
    get(s.admin, path)
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Wait until the server reports `n` requests in flight.
pub(crate) async fn wait_in_flight(s: &Spawned, n: usize) {
    let want = format!("lameduck_http_requests_in_flight {n}\n");
    let seen = poll_until(SOON, || async {
        let res = get(s.admin, "/metrics").await.ok()?;
        std::str::from_utf8(res.body())
            .ok()?
            .contains(&want)
            .then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "server never reported {n} requests in flight"
    );
}

/// Wait until `/readyz` answers 200: the process reports ready once it serves, a moment
/// after its `listening` line.
pub(crate) async fn wait_ready(s: &Spawned) {
    let seen = poll_until(SOON, || async {
        (admin_status(s, "/readyz").await == 200).then_some(())
    })
    .await;
    assert!(seen.is_some(), "server never reported ready");
}

/// Wait until `/readyz` answers 503 (the drain has started).
pub(crate) async fn wait_draining(s: &Spawned) {
    let seen = poll_until(SOON, || async {
        (admin_status(s, "/readyz").await == 503).then_some(())
    })
    .await;
    assert!(seen.is_some(), "server never started draining");
}
