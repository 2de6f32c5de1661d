//! Test support for lameduck and services built on it: spawn a binary on port 0 and read its
//! `listening http=... admin=...` line, a strict HTTP client that never retries, and polling
//! with deadlines instead of sleeps.

mod client;
pub mod exe;
mod process;
mod proxy;
#[cfg(feature = "tls")]
pub mod tls;

pub use client::{connect_h1, connect_h2, get, post_json, post_operator, ClientError, H1, H2};
pub use process::{Exit, SpawnError, Spawned};
pub use proxy::Proxy;

use std::future::Future;
use std::time::{Duration, Instant};

/// Poll `f` every 10 ms until it returns `Some`, or give up at `timeout` with `None`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
