//! `lameduck-fakes payments` as a process: one charge per idempotency key, committed once
//! the request is read whatever the client does next, the faults it is told to make
//! (failures before and after charging, reset replies, latency, lagging and failing
//! lookups), changed while it runs.

use lameduck_testkit::Exit;
use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use lameduck_testkit::{connect_h1, get, poll_until, post_json, Spawned};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BIN: &str = env!("CARGO_BIN_EXE_lameduck-fakes");

fn start(extra: &[&str]) -> Spawned {
    let mut args = vec!["payments", "--listen", "127.0.0.1:0", "--seed", "3"];
    args.extend_from_slice(extra);
    Spawned::start_cmd(BIN, &args, &[]).expect("start lameduck-fakes")
}

async fn charge(addr: SocketAddr, key: &str, amount: i64) -> (u16, serde_json::Value) {
    let res = post_json(
        addr,
        "/charges",
        &[("idempotency-key", key)],
        &format!(r#"{{"amount_cents":{amount}}}"#),
    )
    .await
    .expect("POST /charges");
    let body = serde_json::from_slice(res.body()).unwrap_or(serde_json::Value::Null);
    (res.status().as_u16(), body)
}

async fn charges(addr: SocketAddr) -> Vec<serde_json::Value> {
    let res = get(addr, "/charges").await.expect("GET /charges");
    assert_eq!(res.status(), 200);
    serde_json::from_slice(res.body()).expect("JSON array")
}

async fn control(addr: SocketAddr, json: &str) -> (u16, serde_json::Value) {
    let mut c = connect_h1(addr).await.expect("connect");
    let res = c
        .send(
            Method::PUT,
            "/control",
            &[("content-type", "application/json")],
            json.to_string(),
        )
        .await
        .expect("PUT /control");
    let body = serde_json::from_slice(res.body()).unwrap_or(serde_json::Value::Null);
    (res.status().as_u16(), body)
}

#[tokio::test]
async fn a_key_charges_once_and_the_charges_are_listed() {
    let mut s = start(&[]);
    let (status, first) = charge(s.http, "pay_1", 1250).await;
    assert_eq!(status, 201);
    assert_eq!(first["idempotency_key"], "pay_1");
    assert_eq!(first["amount_cents"], 1250);
    assert!(first["id"].as_str().unwrap().starts_with("ch_"));
    assert!(first["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(charge(s.http, "pay_1", 1250).await, (200, first.clone()));
    assert_eq!(charge(s.http, "pay_1", 999).await.0, 422);
    assert_eq!(charge(s.http, "pay_2", 5).await.0, 201);
    let all = charges(s.http).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], first);
    let one = get(s.http, "/charges/pay_1").await.unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(one.body()).unwrap(),
        first
    );
    assert_eq!(get(s.http, "/charges/nope").await.unwrap().status(), 404);
    // Bad input: no key, not JSON, a negative amount.
    let no_key = post_json(s.http, "/charges", &[], r#"{"amount_cents":1}"#)
        .await
        .unwrap();
    assert_eq!(no_key.status(), 400);
    assert_eq!(charge(s.http, "pay_3", -1).await.0, 400);
    let junk = post_json(s.http, "/charges", &[("idempotency-key", "k")], "{")
        .await
        .unwrap();
    assert_eq!(junk.status(), 400);
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)).await, Exit::Exited(0));
}

/// Send a charge on a raw connection; what the connection gives back before it ends, and
/// how it ended.
async fn raw_charge(addr: SocketAddr, key: &str) -> (Vec<u8>, std::io::Result<usize>) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"amount_cents":10}"#;
    let req = format!(
        "POST /charges HTTP/1.1\r\nhost: x\r\nidempotency-key: {key}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got))
        .await
        .expect("the connection stayed open");
    (got, read)
}

#[tokio::test]
async fn failures_do_not_charge_and_lost_replies_do() {
    let s = start(&["--fail-rate", "1"]);
    assert_eq!(charge(s.http, "k1", 10).await.0, 500);
    assert!(charges(s.http).await.is_empty(), "a 500 charges nothing");
    let (status, now) = control(s.http, r#"{"fail_rate":0,"lost_reply_rate":1}"#).await;
    assert_eq!(status, 200);
    assert_eq!(now["lost_reply_rate"], 1.0);
    // The connection is reset without a single byte of an answer.
    let (got, read) = raw_charge(s.http, "k1").await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "an RST, not a FIN"
    );
    let all = charges(s.http).await;
    assert_eq!(all.len(), 1, "the lost reply charged");
    // With replies back, the same key answers the charge made.
    control(s.http, r#"{"lost_reply_rate":0}"#).await;
    let (status, again) = charge(s.http, "k1", 10).await;
    assert_eq!(status, 200);
    assert_eq!(again, all[0]);
}

#[tokio::test]
async fn a_charge_is_made_even_when_the_client_hangs_up_during_the_latency() {
    let s = start(&["--latency-ms", "2000"]);
    let mut tcp = tokio::net::TcpStream::connect(s.http).await.unwrap();
    let body = r#"{"amount_cents":10}"#;
    let req = format!(
        "POST /charges HTTP/1.1\r\nhost: x\r\nidempotency-key: gone\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let seen = poll_until(Duration::from_secs(1), || async {
        (charges(s.http).await.len() == 1).then_some(())
    })
    .await;
    assert!(seen.is_some(), "committed once read, before the latency");
    drop(tcp);
    let all = charges(s.http).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["idempotency_key"], "gone");
}

#[tokio::test]
async fn errors_after_charging_charge_and_the_same_key_answers_the_charge() {
    let s = start(&["--error-after-charge-rate", "1"]);
    assert_eq!(charge(s.http, "e1", 10).await.0, 500);
    let all = charges(s.http).await;
    assert_eq!(all.len(), 1, "charged before the 500");
    control(s.http, r#"{"error_after_charge_rate":0}"#).await;
    assert_eq!(charge(s.http, "e1", 10).await, (200, all[0].clone()));
    assert_eq!(charges(s.http).await.len(), 1);
}

#[tokio::test]
async fn lookups_lag_and_fail_on_demand() {
    let s = start(&["--lookup-lag", "400ms"]);
    let (status, made) = charge(s.http, "l1", 10).await;
    assert_eq!(status, 201);
    assert_eq!(
        get(s.http, "/charges/l1").await.unwrap().status(),
        404,
        "not visible yet"
    );
    assert_eq!(
        charges(s.http).await,
        std::slice::from_ref(&made),
        "the list never lags"
    );
    let seen = poll_until(Duration::from_secs(5), || async {
        let res = get(s.http, "/charges/l1").await.ok()?;
        (res.status() == 200).then(|| serde_json::from_slice::<serde_json::Value>(res.body()))
    })
    .await;
    assert_eq!(seen.expect("visible after the lag").unwrap(), made);
    let (status, now) = control(s.http, r#"{"lookup_lag_ms":0,"lookup_fail_rate":1}"#).await;
    assert_eq!(status, 200);
    assert_eq!(now["lookup_fail_rate"], 1.0);
    assert_eq!(get(s.http, "/charges/l1").await.unwrap().status(), 503);
    assert_eq!(charge(s.http, "l2", 10).await.0, 201, "charges still work");
}

#[tokio::test]
async fn latency_is_changed_through_control_and_bad_changes_are_refused() {
    let s = start(&["--latency-ms", "150"]);
    let t = std::time::Instant::now();
    assert_eq!(charge(s.http, "a", 1).await.0, 201);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    let (status, now) = control(s.http, r#"{"latency_ms":0,"jitter_ms":5}"#).await;
    assert_eq!(status, 200);
    assert_eq!(now["latency_ms"], 0);
    assert_eq!(now["jitter_ms"], 5);
    assert_eq!(now["fail_rate"], 0.0);
    for field in [
        "error_after_charge_rate",
        "lost_reply_rate",
        "lookup_lag_ms",
        "lookup_fail_rate",
    ] {
        assert!(now.get(field).is_some(), "{field} in {now}");
    }
    assert_eq!(control(s.http, r#"{"fail_rate":2}"#).await.0, 422);
    assert_eq!(control(s.http, r#"{"latency":1}"#).await.0, 400);
    let shown = get(s.http, "/control").await.unwrap();
    let shown: serde_json::Value = serde_json::from_slice(shown.body()).unwrap();
    assert_eq!(shown, now, "a refused change changes nothing");
}

#[test]
fn a_rate_outside_0_to_1_exits_1_naming_the_flag() {
    let out = std::process::Command::new(BIN)
        .args([
            "payments",
            "--listen",
            "127.0.0.1:0",
            "--lost-reply-rate",
            "2",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--lost-reply-rate must be between 0 and 1"),
        "{err}"
    );
}
