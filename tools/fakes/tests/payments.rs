//! `lameduck-fakes payments` as a process: one charge per idempotency key, the faults it is
//! told to make (failures, lost replies, latency), changed while it runs.

use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use lameduck_testkit::{connect_h1, get, post_json, Spawned};
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
    assert_eq!(s.wait_exit(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn failures_do_not_charge_and_lost_replies_do() {
    let s = start(&["--fail-rate", "1"]);
    assert_eq!(charge(s.http, "k1", 10).await.0, 500);
    assert!(charges(s.http).await.is_empty(), "a 500 charges nothing");
    let (status, now) = control(s.http, r#"{"fail_rate":0,"lost_reply_rate":1}"#).await;
    assert_eq!(status, 200);
    assert_eq!(now["lost_reply_rate"], 1.0);
    // The connection ends without a single byte of an answer.
    let mut tcp = tokio::net::TcpStream::connect(s.http).await.unwrap();
    let body = r#"{"amount_cents":10}"#;
    let req = format!(
        "POST /charges HTTP/1.1\r\nhost: x\r\nidempotency-key: k1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) => assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got)),
        Err(_) => panic!("the connection stayed open"),
    }
    let all = charges(s.http).await;
    assert_eq!(all.len(), 1, "the lost reply charged");
    // With replies back, the same key answers the charge made.
    control(s.http, r#"{"lost_reply_rate":0}"#).await;
    let (status, again) = charge(s.http, "k1", 10).await;
    assert_eq!(status, 200);
    assert_eq!(again, all[0]);
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
