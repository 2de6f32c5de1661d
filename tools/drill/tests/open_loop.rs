//! The open loop (`--rate`): requests go on schedule over as many connections as they need
//! (up to `--max-connections`), HTTP/2 streams stay within the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, and the strict classes hold as in the closed loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lameduck_drill::Report;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

mod common;
use common::{read_head, OK};

async fn drill(url: &str, extra: &[&str]) -> Report {
    common::drill_with(url, extra).await
}

/// An HTTP/1.1 server answering every request after `delay`; counts connections.
async fn slow_h1(delay: Duration, conns: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                while read_head(&mut s).await {
                    tokio::time::sleep(delay).await;
                    if s.write_all(OK).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}/x")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_on_schedule_on_more_connections_than_the_first_ones() {
    let conns = Arc::new(AtomicUsize::new(0));
    let url = slow_h1(Duration::from_millis(100), conns.clone()).await;
    // 200/s for 1 s at 100 ms each: about 20 in flight, over 2 connections opened first.
    let r = drill(
        &url,
        &["--rate", "200", "--duration", "1s", "--concurrency", "2"],
    )
    .await;
    assert_eq!(r.load, "open");
    assert_eq!(r.offered, 200, "{r:?}");
    assert_eq!(r.outcomes.get("ok"), Some(&200), "{:?}", r.outcomes);
    assert_eq!(r.unsent, 0);
    assert!(!r.client_saturated);
    assert_eq!(r.verdict, "yes");
    assert!(
        r.peak_connections >= 15,
        "the load was not held back by the 2 first connections: peak {}",
        r.peak_connections
    );
    assert!(conns.load(Ordering::Relaxed) >= 15);
    // Latency counts from the schedule: at least the server's 100 ms.
    assert!(r.latency_ms["p50"] >= 100.0, "{:?}", r.latency_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_limit_saturates_the_client_and_the_verdict_is_not_established() {
    let conns = Arc::new(AtomicUsize::new(0));
    let url = slow_h1(Duration::from_millis(200), conns.clone()).await;
    // 4 connections carry at most 20 requests a second: 100/s cannot be offered.
    let r = drill(
        &url,
        &[
            "--rate",
            "100",
            "--duration",
            "1s",
            "--concurrency",
            "2",
            "--max-connections",
            "4",
        ],
    )
    .await;
    assert!(r.client_saturated, "{r:?}");
    assert!(r.saturated_ms > 0);
    assert!(r.unsent > 0, "{r:?}");
    assert!(r.requests < r.offered);
    assert_eq!(r.peak_connections, 4);
    assert!(conns.load(Ordering::Relaxed) <= 4);
    assert_eq!(r.verdict, "not established");
    assert_eq!(
        r.errors, 0,
        "nothing failed: the client could not offer the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_are_counted_per_request() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let r = drill(
        &format!("http://{addr}/x"),
        &["--rate", "100", "--duration", "500ms"],
    )
    .await;
    assert_eq!(
        r.outcomes.keys().collect::<Vec<_>>(),
        ["refused"],
        "{:?}",
        r.outcomes
    );
    assert_eq!(r.outcomes["refused"], 50);
    assert_eq!(r.verdict, "no");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_keep_alive_connection_hands_its_request_to_a_new_one() {
    // Each connection answers one request, then closes without saying so: the request that
    // finds it idle next is handed back unsent and goes out on a new connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await {
                    let _ = s.write_all(OK).await;
                }
            });
        }
    });
    let r = drill(
        &format!("http://{addr}/x"),
        &["--rate", "20", "--duration", "1s", "--concurrency", "1"],
    )
    .await;
    assert_eq!(r.outcomes.get("ok"), Some(&20), "{:?}", r.outcomes);
    assert_eq!(r.errors, 0);
}

/// An HTTP/2 server allowing `streams` concurrent streams per connection, answering each
/// after `delay`; records the most streams seen at once on one connection.
async fn h2_server(streams: u32, delay: Duration, most: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let most = most.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::Builder::new()
                    .max_concurrent_streams(streams)
                    .handshake::<_, bytes::Bytes>(s)
                    .await
                    .expect("h2 handshake");
                let open = Arc::new(AtomicUsize::new(0));
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let (open, most) = (open.clone(), most.clone());
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                        let res = http::Response::builder()
                            .status(200)
                            .body(())
                            .expect("response");
                        if let Ok(mut body) = respond.send_response(res, false) {
                            let _ = body.send_data(bytes::Bytes::from_static(b"ok"), true);
                        }
                    });
                }
            });
        }
    });
    format!("http://{addr}/x")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_stay_within_the_servers_limit_and_more_connections_carry_the_rest() {
    let most = Arc::new(AtomicUsize::new(0));
    let url = h2_server(4, Duration::from_millis(100), most.clone()).await;
    // 200/s at 100 ms: about 20 streams in flight, 4 per connection.
    let r = drill(
        &url,
        &[
            "--mode",
            "h2",
            "--rate",
            "200",
            "--duration",
            "1s",
            "--concurrency",
            "1",
        ],
    )
    .await;
    assert_eq!(r.outcomes.get("ok"), Some(&200), "{:?}", r.outcomes);
    assert!(
        most.load(Ordering::SeqCst) <= 4,
        "at most 4 streams on a connection"
    );
    assert!(
        r.peak_connections >= 5,
        "more connections: {}",
        r.peak_connections
    );
    assert_eq!(r.verdict, "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rates_count_the_answers_that_ended_within_the_load() {
    let conns = Arc::new(AtomicUsize::new(0));
    let url = slow_h1(Duration::from_millis(300), conns).await;
    // 100/s for 1 s, each answered 300 ms later: the last ~30 answers end after the load's
    // second, so goodput over that second is about 70, though all 100 succeed.
    let r = drill(
        &url,
        &["--rate", "100", "--duration", "1s", "--concurrency", "40"],
    )
    .await;
    assert_eq!(r.outcomes.get("ok"), Some(&100), "{:?}", r.outcomes);
    assert_eq!(r.sent_rate, 100.0);
    assert!(
        (55.0..=85.0).contains(&r.goodput),
        "goodput {} counts answers within the second only",
        r.goodput
    );
    assert_eq!(r.achieved_rate, r.goodput);
}
