//! The keep-alive reuse race: pooled connections that were idle when the drain started.

use lameduck_testkit::Exit;
use std::time::Duration;

use lameduck_testkit::{connect_h1, H1};
use nix::sys::signal::Signal;

use crate::{start, wait_draining, SOON};

const POOL: usize = 64;

async fn warm_pool(addr: std::net::SocketAddr) -> Vec<H1> {
    let mut pool = Vec::new();
    for _ in 0..POOL {
        let mut c = connect_h1(addr).await.expect("connect");
        let res = c.get("/ping").await.expect("warm-up");
        assert!(
            res.headers().get("connection").is_none(),
            "keep-alive before the drain"
        );
        pool.push(c);
    }
    pool
}

/// Send the next request on every pooled connection; count failures.
async fn reuse(pool: Vec<H1>) -> (usize, Vec<String>) {
    let tasks: Vec<_> = pool
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.get("/ping").await }))
        .collect();
    let mut failed = 0;
    let mut closes = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(res) => {
                assert_eq!(res.status(), 200);
                closes.push(
                    res.headers()
                        .get("connection")
                        .map(|v| v.to_str().unwrap_or("").to_string())
                        .unwrap_or_default(),
                );
            }
            Err(_) => failed += 1,
        }
    }
    (failed, closes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_reused_during_the_drain_see_no_reset() {
    let mut s = start(&["--idle-grace", "2s"]);
    let pool = warm_pool(s.http).await;
    s.signal(Signal::SIGTERM);
    wait_draining(&s).await;
    let (failed, closes) = reuse(pool).await;
    assert_eq!(failed, 0, "requests lost on pooled connections");
    assert!(
        closes.iter().all(|c| c == "close"),
        "every drain response says Connection: close"
    );
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_after_the_grace_so_exit_is_not_held() {
    let mut s = start(&["--idle-grace", "200ms"]);
    let pool = warm_pool(s.http).await;
    s.signal(Signal::SIGTERM);
    // Nobody reuses the pool: the process exits once the grace has passed.
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
    let closed = lameduck_testkit::poll_until(Duration::from_secs(2), || async {
        pool.iter().all(H1::is_closed).then_some(())
    })
    .await;
    assert!(closed.is_some(), "the server closed every idle connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_idle_grace_reproduces_the_peers_race() {
    let mut s = start(&["--idle-grace", "0s", "--drain-delay", "500ms"]);
    let pool = warm_pool(s.http).await;
    s.signal(Signal::SIGTERM);
    wait_draining(&s).await;
    // The idle connections were closed the moment the drain began.
    let closed = lameduck_testkit::poll_until(SOON, || async {
        pool.iter().all(H1::is_closed).then_some(())
    })
    .await;
    assert!(
        closed.is_some(),
        "idle connections closed at once with idle_grace = 0"
    );
    let (failed, _) = reuse(pool).await;
    assert_eq!(
        failed, POOL,
        "every reuse fails, as with Go, axum and hyper"
    );
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root or CAP_NET_ADMIN (the listener's SYN filter, refused to others where unprivileged BPF is disabled): scripts/test runs it"]
async fn a_client_that_keeps_sending_during_the_drain_is_never_reset() {
    let mut s = start(&["--drain-delay", "300ms"]);
    let addr = s.http;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let mut conn = connect_h1(addr).await.expect("connect");
                let (mut ok, mut failed) = (0, 0);
                // Bounded: at most 2,000 requests or 10 s per client. A strict client: it
                // reconnects only when the server said `Connection: close`, never retries.
                let end = std::time::Instant::now() + Duration::from_secs(10);
                for _ in 0..2000 {
                    if std::time::Instant::now() > end {
                        break;
                    }
                    match conn.get("/ping").await {
                        Ok(r) if r.status() == 200 => {
                            ok += 1;
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if r.headers().get("connection").is_some_and(|v| v == "close") {
                                match connect_h1(addr).await {
                                    Ok(c) => conn = c,
                                    Err(e) if e.is_refused() => break,
                                    Err(_) => {
                                        failed += 1;
                                        break;
                                    }
                                }
                            }
                        }
                        other => {
                            eprintln!("request failed: {:?}", other.map(|r| r.status()));
                            failed += 1;
                            break;
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let loaded = lameduck_testkit::poll_until(SOON, || async {
        (done.load(std::sync::atomic::Ordering::Relaxed) >= 200).then_some(())
    })
    .await;
    assert!(loaded.is_some(), "load never built up");
    s.signal(Signal::SIGTERM);
    let mut total_ok = 0;
    for c in clients {
        let (ok, failed) = c.await.expect("task");
        assert_eq!(failed, 0, "a request on a live connection failed");
        total_ok += ok;
    }
    assert!(total_ok >= 200, "load ran ({total_ok} requests)");
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}
