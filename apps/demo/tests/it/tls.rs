//! HTTPS against the real demo process: certificates made here with rcgen (never checked
//! in), a rustls client, real signals.

use lameduck_testkit::Exit;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lameduck_testkit::tls::{serial_of, write_atomically, H1Send, TestCa};
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::{metric, start, wait_draining, SOON};

async fn get_on(send: &mut H1Send, path: &str) -> Result<(u16, Option<String>), String> {
    lameduck_testkit::tls::send(send, http::Method::GET, path, &[], "")
        .await
        .map(|(status, close, _)| (status, close))
}

fn start_tls(pki: &TestCa, extra: &[&str]) -> lameduck_testkit::Spawned {
    let args = pki.args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    start(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http1_and_h2_as_alpn_chooses() {
    let pki = TestCa::new("alpn");
    let der = pki.install(1);
    let mut s = start_tls(&pki, &[]);
    let (mut send, leaf) = pki.https_h1(s.http).await.expect("https h1");
    assert_eq!(leaf, der);
    assert_eq!(get_on(&mut send, "/ping").await, Ok((200, None)));
    // h2 through ALPN.
    let (tls, alpn, _) = pki
        .connect(s.http, &[b"h2", b"http/1.1"])
        .await
        .expect("tls");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/ping")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let res = h2.send_request(req).await.expect("h2 request");
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    // Cleartext on the TLS port is a failed handshake, counted, not served.
    assert!(lameduck_testkit::get(s.http, "/ping").await.is_err());
    let protocol = r#"lameduck_tls_handshake_failures_total{reason="protocol"} "#;
    let counted = lameduck_testkit::poll_until(SOON, || async {
        (metric(s.admin, protocol).await? >= 1.0).then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "the failed handshake is counted by reason"
    );
    assert!(metric(s.admin, "lameduck_tls_handshakes_total ").await >= Some(2.0));
    // rcgen's certificates are valid until 4096-01-01.
    assert_eq!(
        metric(s.admin, "lameduck_tls_certificate_not_after_seconds ").await,
        Some(67_090_118_400.0)
    );
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_race_over_tls_loses_nothing() {
    let pki = TestCa::new("race");
    pki.install(1);
    let mut s = start_tls(&pki, &["--idle-grace", "2s"]);
    let mut pool = Vec::new();
    for _ in 0..64 {
        let (mut send, _) = pki.https_h1(s.http).await.expect("connect");
        assert_eq!(get_on(&mut send, "/ping").await, Ok((200, None)));
        pool.push(send);
    }
    s.signal(Signal::SIGTERM);
    wait_draining(&s).await;
    let tasks: Vec<_> = pool
        .into_iter()
        .map(|mut c| tokio::spawn(async move { get_on(&mut c, "/ping").await }))
        .collect();
    let mut failed = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok((200, Some(close))) if close == "close" => {}
            other => failed.push(other),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 64 failed: {failed:?}",
        failed.len()
    );
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_broken_handshakes_are_cut_and_never_hold_the_drain() {
    let pki = TestCa::new("slow");
    pki.install(1);
    let mut s = start_tls(
        &pki,
        &["--tls-handshake-timeout", "1s", "--idle-grace", "300ms"],
    );
    // TCP open and silent; garbage; a ClientHello's first bytes and then nothing.
    let silent = TcpStream::connect(s.http).await.expect("connect");
    let mut garbage = TcpStream::connect(s.http).await.expect("connect");
    garbage
        .write_all(b"\x16\x03\x01\x00\x05hello-not-tls")
        .await
        .expect("write");
    let mut partial = TcpStream::connect(s.http).await.expect("connect");
    partial
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .await
        .expect("write");
    let timeout = r#"lameduck_tls_handshake_failures_total{reason="timeout"} "#;
    let cut = lameduck_testkit::poll_until(SOON, || async {
        (metric(s.admin, timeout).await? >= 2.0).then_some(())
    })
    .await;
    assert!(
        cut.is_some(),
        "the silent and the partial handshake were cut at the timeout"
    );
    // Still serving.
    let (mut send, _) = pki.https_h1(s.http).await.expect("connect");
    assert_eq!(get_on(&mut send, "/ping").await, Ok((200, None)));
    drop((silent, garbage, partial, send));
    // With a long handshake timeout, a silent connection does not hold the drain: it is cut
    // after the idle grace.
    let mut s2 = start_tls(
        &pki,
        &["--tls-handshake-timeout", "60s", "--idle-grace", "300ms"],
    );
    let _silent = TcpStream::connect(s2.http).await.expect("connect");
    let counted = lameduck_testkit::poll_until(SOON, || async {
        (metric(s2.admin, "lameduck_http_connections_open ").await? >= 1.0).then_some(())
    })
    .await;
    assert!(counted.is_some(), "the silent connection was accepted");
    let t = Instant::now();
    s2.signal(Signal::SIGTERM);
    assert_eq!(s2.wait_exit(SOON).await, Exit::Exited(0));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        t.elapsed()
    );
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_mismatched_pair_exits_1_naming_the_file() {
    let pki = TestCa::new("bad");
    let (_, cert, _) = pki.leaf(1);
    let (_, _, other_key) = pki.leaf(2);
    write_atomically(&pki.cert(), &cert);
    write_atomically(&pki.key(), &other_key);
    let missing_path = pki.dir().join("nope.crt");
    let (cert_path, key_path) = (pki.cert(), pki.key());
    let (missing, cert_file, key_file) = (
        missing_path.to_str().unwrap(),
        cert_path.to_str().unwrap(),
        key_path.to_str().unwrap(),
    );
    let cases = [
        (
            vec!["--tls-cert", missing, "--tls-key", key_file],
            "nope.crt",
        ),
        (
            vec!["--tls-cert", cert_file, "--tls-key", key_file],
            "does not match",
        ),
        (
            vec!["--tls-cert", key_file, "--tls-key", key_file],
            "no PEM certificate",
        ),
    ];
    for (args, needle) in cases {
        let out = std::process::Command::new(crate::BIN)
            .args(&args)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // One without the other is a usage error.
    let out = std::process::Command::new(crate::BIN)
        .args(["--tls-cert", "x.crt"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_rotates_without_a_dropped_request() {
    let pki = TestCa::new("rotate");
    let first = pki.install(1);
    assert_eq!(serial_of(&first), Some(1));
    let token = pki.dir().join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let mut s = start_tls(
        &pki,
        &[
            "--tls-reload-every",
            "200ms",
            "--admin-token-file",
            token.to_str().unwrap(),
        ],
    );
    // The drill over TLS, a new connection (and handshake) for every request.
    std::fs::write(pki.dir().join("ca.pem"), pki.ca_pem()).expect("ca");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let load = crate::upgrade::drill(
        s.http,
        "conn-per-request",
        Some(&pki.dir().join("ca.pem")),
        stopped,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 1. The files change: picked up by the poll.
    let second = pki.install(2);
    let polled = lameduck_testkit::poll_until(SOON, || async {
        let (_, leaf) = pki.https_h1(s.http).await.ok()?;
        (serial_of(&leaf) == Some(2)).then_some(())
    })
    .await;
    assert!(polled.is_some(), "the new certificate was not picked up");
    // 2. A key that does not match is refused; the current pair stays.
    let (_, _, wrong_key) = pki.leaf(99);
    write_atomically(&pki.key(), &wrong_key);
    let refused = lameduck_testkit::poll_until(SOON, || async {
        (metric(
            s.admin,
            r#"lameduck_tls_certificate_reloads_total{outcome="refused"} "#,
        )
        .await?
            >= 1.0)
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "the mismatched pair was not refused");
    let now = pki.https_h1(s.http).await.expect("connect").1;
    assert_eq!((serial_of(&now), &now), (Some(2), &second));
    // 3. The admin call, with the bearer token.
    let third = pki.install(3);
    let mut admin = lameduck_testkit::connect_h1(s.admin).await.expect("admin");
    let res = admin
        .send(
            http::Method::POST,
            "/reload-tls",
            &[("authorization", "Bearer s3cret")],
            Bytes::new(),
        )
        .await
        .expect("reload");
    assert!(res.status() == 200, "{res:?}");
    let now = pki.https_h1(s.http).await.expect("connect").1;
    assert_eq!((serial_of(&now), &now), (Some(3), &third));
    let unauthorized = admin
        .send(http::Method::POST, "/reload-tls", &[], Bytes::new())
        .await
        .expect("reload");
    assert_eq!(unauthorized.status(), 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(());
    let report = load.await.expect("drill");
    assert_eq!(
        report.errors, 0,
        "failed during the rotations: {:?}",
        report.outcomes
    );
    assert!(report.requests > 100, "only {} requests", report.requests);
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_upgrades_over_tls_lose_no_request_on_keep_alive_connections() {
    let pki = TestCa::new("upgrade-h1");
    pki.install(1);
    std::fs::write(pki.dir().join("ca.pem"), pki.ca_pem()).expect("ca");
    let args = pki.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ca = pki.dir().join("ca.pem");
    crate::upgrade::upgrades_under_load_with("keep-alive", 10, &args, Some(&ca)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_upgrades_over_tls_lose_no_request_over_http2() {
    let pki = TestCa::new("upgrade-h2");
    pki.install(1);
    std::fs::write(pki.dir().join("ca.pem"), pki.ca_pem()).expect("ca");
    let args = pki.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ca = pki.dir().join("ca.pem");
    crate::upgrade::upgrades_under_load_with("h2", 10, &args, Some(&ca)).await;
}

/// The drill over TLS: `--insecure` accepts the test certificate, a CA that did not sign
/// it makes every request a `tls_handshake` failure, and no `--ca` is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_speaks_tls_and_counts_handshake_failures_apart() {
    use clap::Parser as _;
    let pki = TestCa::new("drill");
    pki.install(1);
    let other = TestCa::new("drill-other");
    std::fs::write(other.dir().join("ca.pem"), other.ca_pem()).expect("ca");
    let mut s = start_tls(&pki, &[]);
    let url = format!("https://{}/ping", s.http);
    let run = |extra: Vec<String>| {
        let mut argv = vec![
            "lameduck-drill".to_string(),
            url.clone(),
            "--requests".into(),
            "50".into(),
            "--concurrency".into(),
            "2".into(),
            "--quiet".into(),
        ];
        argv.extend(extra);
        lameduck_drill::Args::try_parse_from(argv).expect("flags")
    };
    let ok = lameduck_drill::run(run(vec!["--insecure".into()]))
        .await
        .expect("drill");
    assert_eq!((ok.requests, ok.errors), (50, 0), "{:?}", ok.outcomes);
    let ca = other.dir().join("ca.pem").display().to_string();
    let refused = lameduck_drill::run(run(vec!["--ca".into(), ca]))
        .await
        .expect("drill");
    assert_eq!(
        refused.outcomes.get("tls_handshake"),
        Some(&50),
        "{:?}",
        refused.outcomes
    );
    let err = lameduck_drill::run(run(vec![])).await.expect_err("no --ca");
    assert!(err.to_string().contains("--ca PATH"), "{err}");
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

/// An idle keep-alive connection closed by the drain ends with a TLS `close_notify`: the
/// client reads a clean end of stream, not a truncation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_with_close_notify_after_the_grace() {
    use tokio::io::AsyncReadExt as _;
    let pki = TestCa::new("notify");
    pki.install(1);
    let mut s = start_tls(&pki, &["--idle-grace", "300ms"]);
    let (mut tls, _, _) = pki.connect(s.http, &[b"http/1.1"]).await.expect("tls");
    tls.write_all(b"GET /ping HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 512];
    let n = tls.read(&mut head).await.expect("answer");
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    s.signal(Signal::SIGTERM);
    let mut rest = Vec::new();
    let end = tokio::time::timeout(SOON, tls.read_to_end(&mut rest))
        .await
        .expect("closed within the grace");
    assert!(end.is_ok(), "not a clean TLS close: {end:?}");
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

/// Seconds each TLS attack phase lasts (`LAMEDUCK_TLS_ATTACK_SECS`, 20 by default).
fn tls_attack_secs() -> u64 {
    crate::env_secs("LAMEDUCK_TLS_ATTACK_SECS", 20)
}

/// One attacking connection, reopened as soon as it is cut, until `until`: it sends
/// `first` (nothing, or half a ClientHello) and then nothing more.
async fn tls_attacker(
    addr: SocketAddr,
    first: std::sync::Arc<Vec<u8>>,
    until: Instant,
    opened: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::AsyncReadExt as _;
    for _ in 0..200_000u32 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let Ok(Ok(mut c)) = tokio::time::timeout(left, TcpStream::connect(addr)).await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !first.is_empty() && c.write_all(&first).await.is_err() {
            continue;
        }
        let mut buf = [0u8; 256];
        let left = until.saturating_duration_since(Instant::now());
        // Until the server cuts it (or the attack ends).
        while let Ok(Ok(n)) = tokio::time::timeout(left, c.read(&mut buf)).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// 600 attacking connections sending `first`, for `secs`, while a prober makes a full
/// HTTPS handshake every 250 ms: the handshake times of the probes (`None`: not within
/// 1 s or failed), and how many attacking connections were opened.
async fn handshakes_under_attack(
    pki: &TestCa,
    addr: SocketAddr,
    first: Vec<u8>,
    secs: u64,
) -> (Vec<Option<Duration>>, u64) {
    let until = Instant::now() + Duration::from_secs(secs) + Duration::from_secs(1);
    let first = std::sync::Arc::new(first);
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let attackers: Vec<_> = (0..600)
        .map(|_| tokio::spawn(tls_attacker(addr, first.clone(), until, opened.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut times = Vec::new();
    for _ in 0..secs * 4 {
        tick.tick().await;
        let t = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(1), pki.connect(addr, &[b"http/1.1"]))
            .await
            .is_ok_and(|r| r.is_ok());
        times.push(ok.then(|| t.elapsed()));
    }
    for a in attackers {
        a.await.expect("attacker");
    }
    (times, opened.load(std::sync::atomic::Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_hello_connections_do_not_delay_real_handshakes() {
    let pki = TestCa::new("tls-attack");
    pki.install(1);
    let s = start_tls(&pki, &[]);
    let secs = tls_attack_secs();
    // Half a ClientHello, as a real client would start it.
    let hello = pki.client_hello();
    let half = hello[..hello.len() / 2].to_vec();
    for (what, first) in [("silent", Vec::new()), ("half a ClientHello", half)] {
        let (times, opened) = handshakes_under_attack(&pki, s.http, first, secs).await;
        let mut done: Vec<Duration> = times.iter().flatten().copied().collect();
        done.sort();
        let p = |q: f64| {
            done.get(((done.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        eprintln!(
            "600 {what} connections ({opened} opened): {} of {} handshakes within 1 s, p50 {:?}, max {:?}",
            done.len(),
            times.len(),
            p(0.5),
            done.last()
        );
        assert_eq!(
            done.len(),
            times.len(),
            "{what}: handshakes over 1 s or failed: {times:?}"
        );
    }
}

#[test]
fn tls_limits_are_flags_and_bad_ones_are_refused_naming_them() {
    let pki = TestCa::new("tls-flags");
    pki.install(1);
    let run = |extra: &[&str]| {
        let mut args = vec!["--listen".to_string(), "127.0.0.1:0".to_string()];
        args.extend(pki.args());
        args.extend(extra.iter().map(|a| a.to_string()));
        std::process::Command::new(crate::BIN)
            .args(&args)
            .output()
            .expect("run")
    };
    let out = run(&["--tls-max-handshakes", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-max-handshakes") && err.contains("at least 1"),
        "{err}"
    );
    let out = run(&["--tls-first-byte-timeout", "0s"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-first-byte-timeout") && err.contains("more than zero"),
        "{err}"
    );
}

#[test]
fn a_tls_start_up_error_is_printed_once() {
    let pki = TestCa::new("tls-once");
    pki.install(1);
    let out = std::process::Command::new(crate::BIN)
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(pki.cert())
        .args(["--tls-key", "/nonexistent/key.pem"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("/nonexistent/key.pem").count(), 1, "{err}");
    assert!(
        err.contains("TLS: /nonexistent/key.pem: cannot read"),
        "{err}"
    );
}

/// `POST /reload-tls` with the admin token: the status and the text.
async fn reload_tls(admin: SocketAddr, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let mut c = lameduck_testkit::connect_h1(admin).await.expect("admin");
    let res = c
        .send(
            http::Method::POST,
            "/reload-tls",
            &[("authorization", auth.as_str())],
            Bytes::new(),
        )
        .await
        .expect("POST /reload-tls");
    (
        res.status().as_u16(),
        String::from_utf8_lossy(res.body()).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pair_is_refused_again_and_an_expiring_one_is_warned_about() {
    let pki = TestCa::new("reload-refused");
    pki.install(1);
    let token = "reload-token-0123456789";
    let mut s = lameduck_testkit::Spawned::start_env(
        crate::BIN,
        &[pki.args(), vec!["--tls-reload-every".into(), "off".into()]]
            .concat()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[("LAMEDUCK_ADMIN_TOKEN", token)],
    )
    .expect("start");
    // A key that is not the certificate's: refused, and refused again while the files
    // still hold it.
    let (_, cert, _) = pki.leaf(2);
    let (_, _, other_key) = pki.leaf(3);
    write_atomically(&pki.cert(), &cert);
    write_atomically(&pki.key(), &other_key);
    for call in ["first", "second"] {
        let (status, text) = reload_tls(s.admin, token).await;
        assert_eq!(status, 422, "{call} call: {text}");
        assert!(text.contains("refused"), "{call} call: {text}");
    }
    // A pair that expires in two days: used, with a warning in the answer and the log.
    let (_, cert, key) = pki.leaf_expiring(4, 2 * 86_400);
    write_atomically(&pki.cert(), &cert);
    write_atomically(&pki.key(), &key);
    let (status, text) = reload_tls(s.admin, token).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("reloaded"), "{text}");
    let warning = "warning: the certificate in use expires in ";
    let left = text.split_once(warning).map(|(_, l)| l.trim());
    assert!(
        left.is_some_and(|l| l == "2days" || l.starts_with("1day 23h")),
        "{text}"
    );
    assert!(s
        .wait_for_log(&["WARN", "the certificate in use expires in"], SOON)
        .await
        .is_some());
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_served_with_a_warning_at_start_up() {
    let pki = TestCa::new("expired");
    let (_, cert, key) = pki.leaf_expiring(1, -3_600);
    write_atomically(&pki.cert(), &cert);
    write_atomically(&pki.key(), &key);
    let mut s = start_tls(&pki, &[]);
    assert!(
        s.wait_for_log(&["WARN", "the certificate in use expired 1h ago"], SOON)
            .await
            .is_some(),
        "{:?}",
        s.logs()
    );
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}
