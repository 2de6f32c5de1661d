//! Hostile and careless clients cannot hold the server: stalled request bodies, slow heads
//! on the admin listener, silent connections at shutdown, requests without a proper
//! `Host`, and a burst of connects larger than the default listen backlog.

use lameduck_testkit::Exit;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use lameduck_testkit::poll_until;

use crate::{metric, start, wait_in_flight, SOON};

/// Send `raw` and read until the server closes the connection (or `SOON` passes).
async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A POST that declares 1,000 bytes and sends 10: the body stalls.
const STALLED_POST: &[u8] =
    b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_answered_408_at_the_body_read_timeout() {
    let s = start(&["--body-read-timeout", "500ms"]);
    let t0 = Instant::now();
    let answer = exchange(s.http, STALLED_POST).await;
    let took = t0.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        (Duration::from_millis(450)..Duration::from_secs(5)).contains(&took),
        "cut after {took:?}"
    );
    // A body that trickles in faster than the read timeout but never ends meets the
    // whole-body timeout.
    let s = start(&["--body-read-timeout", "1s", "--body-timeout", "1500ms"]);
    let mut c = TcpStream::connect(s.http).await.expect("connect");
    c.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n")
        .await
        .expect("head");
    let t0 = Instant::now();
    let mut out = Vec::new();
    while t0.elapsed() < SOON {
        if c.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_stalled_uploads_ends_at_their_timeout_not_the_shutdown_deadline() {
    let mut s = start(&["--body-read-timeout", "1s", "--shutdown-timeout", "30s"]);
    let mut uploads = Vec::new();
    for _ in 0..5 {
        let addr = s.http;
        uploads.push(tokio::spawn(
            async move { exchange(addr, STALLED_POST).await },
        ));
    }
    wait_in_flight(&s, 5).await;
    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);
    assert_eq!(
        s.wait_exit(SOON).await,
        Exit::Exited(0),
        "every request was answered"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        t0.elapsed()
    );
    for u in uploads {
        let answer = u.await.expect("task");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_a_stalled_stream_gets_408_and_the_others_go_on() {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, StreamBody};
    let s = start(&["--body-read-timeout", "500ms"]);
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(s.http).await.expect("connect"));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    // One frame, then nothing: the sender is kept, so the stream stays open.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(
        b"0123456789",
    ))))
    .await
    .expect("frame");
    let body = StreamBody::new(tokio_stream_from(rx)).boxed();
    let req = http::Request::post(format!("http://{}/upload", s.http))
        .header("content-length", "1000")
        .body(body)
        .expect("request");
    send.ready().await.expect("ready");
    let stalled = send.send_request(req);
    let ping = http::Request::get(format!("http://{}/ping", s.http))
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|e| match e {})
                .boxed(),
        )
        .expect("request");
    let mut other = send.clone();
    let (stalled, ping) = tokio::join!(stalled, async move {
        other.ready().await.expect("ready");
        other.send_request(ping).await
    });
    let stalled = stalled.expect("a response on the stalled stream");
    assert_eq!(stalled.status(), 408);
    assert_eq!(ping.expect("the other stream").status(), 200);
    // The connection is still usable.
    let again = http::Request::get(format!("http://{}/ping", s.http))
        .body(
            http_body_util::Empty::<Bytes>::new()
                .map_err(|e| match e {})
                .boxed(),
        )
        .expect("request");
    send.ready().await.expect("the connection lives on");
    assert_eq!(send.send_request(again).await.expect("ping").status(), 200);
    drop(tx);
}

/// An mpsc receiver as a stream of body frames.
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Open descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_cuts_slow_and_silent_clients() {
    let s = start(&["--header-read-timeout", "1s"]);
    // Counted once the server is serving: descriptors still appear after the `listening`
    // line (the copies of the listeners kept for an upgrade).
    let ready = lameduck_testkit::poll_until(SOON, || async {
        (crate::admin_status(&s, "/readyz").await == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "ready");
    let before = fd_count(s.pid());
    let mut held = Vec::new();
    for i in 0..100 {
        let mut c = TcpStream::connect(s.admin).await.expect("connect");
        if i % 2 == 0 {
            // Half a request head, never finished.
            c.write_all(b"GET /livez HTTP/1.1\r\nhost: x\r\n")
                .await
                .expect("write");
        }
        held.push(c);
    }
    let t0 = Instant::now();
    for mut c in held {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(SOON, c.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "closed by the server: {n:?}"
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "cut after {:?}",
        t0.elapsed()
    );
    let settled = lameduck_testkit::poll_until(SOON, || async {
        (fd_count(s.pid()) <= before + 2).then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "descriptors {} -> {}",
        before,
        fd_count(s.pid())
    );
    assert_eq!(
        crate::admin_status(&s, "/livez").await,
        200,
        "probes still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_hold_the_exit_past_the_idle_grace() {
    let mut s = start(&["--header-read-timeout", "10s", "--idle-grace", "1s"]);
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(s.http).await.expect("connect"));
    }
    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "exit took {:?} (the header timeout is 10 s)",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_requests_without_exactly_one_valid_host_get_400() {
    let s = start(&[]);
    for raw in [
        &b"GET /ping HTTP/1.1\r\n\r\n"[..],
        b"GET /ping HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nhost: a/b\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nhost: user@a\r\n\r\n",
    ] {
        let answer = exchange(s.http, raw).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{raw:?}: {answer}");
        assert!(answer.contains(r#""code":"bad_request""#), "{answer}");
    }
    // HTTP/1.0 may leave Host out.
    let answer = exchange(s.http, b"GET /ping HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ss (iproute2): scripts/test runs it"]
async fn the_listen_backlog_is_a_setting() {
    let s = start(&["--listen-backlog", "2048"]);
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", s.http.port())])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    // LISTEN sockets show the backlog as Send-Q, the third column.
    let send_q: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(send_q, ["2048"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_the_limit_gets_a_json_431_and_a_large_body_does_not() {
    let s = start(&[]);
    let mut raw = b"GET /ping HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 70 * 1024));
    raw.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(s.http, &raw).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(answer.contains(r#""code":"headers_too_large""#), "{answer}");
    // A small head with a body of 1 MiB in the same writes is no head over the limit.
    let mut raw = format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        1 << 20
    )
    .into_bytes();
    raw.extend(std::iter::repeat_n(b'b', 1 << 20));
    let answer = exchange(s.http, &raw).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("received 1048576 bytes"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_protocol_balancer_the_client_is_the_one_it_names() {
    let s = start(&["--proxy-protocol", "--access-log", "--log-format", "json"]);
    // Version 2: signature, PROXY over TCP/IPv4, 12 address bytes.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 7, 127, 0, 0, 1]);
    v2.extend_from_slice(&51000u16.to_be_bytes());
    v2.extend_from_slice(&8081u16.to_be_bytes());
    v2.extend_from_slice(
        b"GET /ping HTTP/1.1\r\nhost: x\r\nx-request-id: via-v2\r\nconnection: close\r\n\r\n",
    );
    let answer = exchange(s.http, &v2).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let line = s
        .wait_for_log(&["via-v2", "\"client\""], SOON)
        .await
        .expect("an access line");
    assert!(line.contains("\"client\":\"203.0.113.7:51000\""), "{line}");
    let v1 = b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 8081\r\nGET /ping HTTP/1.1\r\nhost: x\r\nx-request-id: via-v1\r\nconnection: close\r\n\r\n";
    assert!(exchange(s.http, v1).await.starts_with("HTTP/1.1 200"));
    let line = s
        .wait_for_log(&["via-v1", "\"client\""], SOON)
        .await
        .expect("line");
    assert!(line.contains("\"client\":\"198.51.100.9:40000\""), "{line}");
    // Without the header the connection is closed unanswered.
    let answer = exchange(s.http, b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.is_empty(), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_in_flight_requests_are_shed_at_once_with_503_overloaded() {
    let s = start(&["--max-in-flight", "2"]);
    // Two slow requests fill the limit.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let addr = s.http;
            tokio::spawn(async move { lameduck_testkit::get(addr, "/work?ms=3000").await })
        })
        .collect();
    wait_in_flight(&s, 2).await;
    let t0 = Instant::now();
    let shed = lameduck_testkit::get(s.http, "/ping")
        .await
        .expect("answer");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "answered at once, not queued"
    );
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(shed.body()).expect("JSON error");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    let metrics = lameduck_testkit::get(s.admin, "/metrics")
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(metrics.body()).into_owned();
    assert!(
        text.contains("lameduck_http_requests_shed_total 1\n"),
        "{text}"
    );
    for t in slow {
        assert_eq!(t.await.expect("task").expect("slow answer").status(), 200);
    }
    // Room again.
    let ok = lameduck_testkit::get(s.http, "/ping")
        .await
        .expect("answer");
    assert_eq!(ok.status(), 200);
}

/// `lameduck_in_flight_limit` on `/metrics`.
async fn in_flight_limit(s: &lameduck_testkit::Spawned) -> f64 {
    let metrics = lameduck_testkit::get(s.admin, "/metrics")
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(metrics.body()).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("lameduck_in_flight_limit "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no lameduck_in_flight_limit in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_sheds_beyond_it_and_grows_while_latency_holds() {
    let s = start(&["--max-in-flight", "adaptive"]);
    assert_eq!(in_flight_limit(&s).await, 20.0, "the initial limit");
    // 30 slow requests at once: 20 admitted, the rest shed at once.
    let burst: Vec<_> = (0..30)
        .map(|_| {
            let addr = s.http;
            tokio::spawn(async move { lameduck_testkit::get(addr, "/work?ms=300").await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in burst {
        statuses.push(t.await.expect("task").expect("answer").status().as_u16());
    }
    let shed = statuses.iter().filter(|s| **s == 503).count();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok + shed, 30, "{statuses:?}");
    assert!(ok >= 20 && shed >= 1, "{ok} served, {shed} shed");
    // Waves of 15 (more than half the limit) at a steady latency: the limit grows.
    for _ in 0..4 {
        let wave: Vec<_> = (0..15)
            .map(|_| {
                let addr = s.http;
                tokio::spawn(async move { lameduck_testkit::get(addr, "/work?ms=50").await })
            })
            .collect();
        for t in wave {
            assert_eq!(t.await.expect("task").expect("answer").status(), 200);
        }
    }
    let grown = in_flight_limit(&s).await;
    assert!(grown > 20.0, "still {grown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_must_be_a_positive_number_adaptive_or_off() {
    for bad in ["0", "many", "-1", "Adaptive"] {
        let out = std::process::Command::new(crate::BIN)
            .arg(format!("--max-in-flight={bad}"))
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--max-in-flight"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_request_timeout_is_cut_with_503_handler_timeout() {
    let s = start(&["--request-timeout", "300ms"]);
    let t0 = Instant::now();
    let cut = lameduck_testkit::get(s.http, "/work?ms=5000")
        .await
        .expect("answer");
    let took = t0.elapsed();
    assert_eq!(cut.status(), 503);
    let body: serde_json::Value = serde_json::from_slice(cut.body()).expect("JSON error");
    assert_eq!(body["error"]["code"], "handler_timeout", "{body}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    // A handler within the limit is untouched, and the cut one left nothing in flight.
    let ok = lameduck_testkit::get(s.http, "/work?ms=10")
        .await
        .expect("answer");
    assert_eq!(ok.status(), 200);
    wait_in_flight(&s, 0).await;
    for bad in ["0s", "soon"] {
        let out = std::process::Command::new(crate::BIN)
            .arg(format!("--request-timeout={bad}"))
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_proxy_protocol_a_bad_header_is_reset_and_a_missing_one_does_not_hold_the_drain() {
    let mut s = start(&["--proxy-protocol", "--idle-grace", "300ms"]);
    // Not a PROXY header: reset, not closed with a FIN.
    let mut bad = TcpStream::connect(s.http).await.expect("connect");
    bad.write_all(b"GET /ping HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(SOON, bad.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    // Connections that have not sent their header are closed after the idle grace once the
    // drain starts (the header timeout is 10 s).
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(s.http).await.expect("connect"));
    }
    let waiting = poll_until(SOON, || async {
        let m = metric(s.admin, "lameduck_http_connections_open ").await?;
        (m >= 5.0).then_some(())
    })
    .await;
    assert!(waiting.is_some(), "the silent connections were accepted");
    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "the drain took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_header_fields_get_a_json_431() {
    let s = start(&[]);
    let head = |fields: usize| {
        let mut raw = b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n".to_vec();
        // `host` and `connection` are two of the fields.
        for i in 0..fields - 2 {
            raw.extend_from_slice(format!("x-field-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw
    };
    let answer = exchange(s.http, &head(100)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = exchange(s.http, &head(101)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains(r#""code":"headers_too_large""#), "{answer}");
    assert!(answer.contains("more than 100 header fields"), "{answer}");
    // The admin listener too.
    let answer = exchange(s.admin, &head(150)).await;
    assert!(answer.contains(r#""code":"headers_too_large""#), "{answer}");
}
