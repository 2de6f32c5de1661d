//! `lameduck-fakes webhook` as a process: it records what it accepts, fails the share it is
//! told to, checks the sender's side of the contract, and drains on SIGTERM.

use lameduck_testkit::Exit;
use std::time::Duration;

use lameduck_testkit::{get, post_json, Spawned};
use nix::sys::signal::Signal;

const BIN: &str = env!("CARGO_BIN_EXE_lameduck-fakes");

fn start(extra: &[&str]) -> Spawned {
    let mut args = vec!["webhook", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Spawned::start_cmd(BIN, &args, &[]).expect("start lameduck-fakes")
}

fn delivery(id: &str, kind: &str) -> String {
    format!(r#"{{"event_id":"{id}","type":"{kind}","order_id":"o-1","order":{{"id":"o-1"}}}}"#)
}

async fn events(s: &Spawned) -> Vec<serde_json::Value> {
    let res = get(s.http, "/events").await.expect("GET /events");
    assert_eq!(res.status(), 200);
    serde_json::from_slice(res.body()).expect("JSON array")
}

#[tokio::test]
async fn accepted_deliveries_are_recorded_in_order_with_duplicates() {
    let mut s = start(&[]);
    for id in ["e1", "e2", "e1"] {
        let res = post_json(
            s.http,
            "/hooks/orders",
            &[("idempotency-key", id)],
            &delivery(id, "order.created"),
        )
        .await
        .expect("deliver");
        assert_eq!(res.status(), 204);
    }
    let got = events(&s).await;
    let ids: Vec<_> = got
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["e1", "e2", "e1"]);
    assert_eq!(got[0]["type"], "order.created");
    assert_eq!(got[0]["order_id"], "o-1");
    assert!(got[0]["received_at"].as_str().unwrap().ends_with('Z'));
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(Duration::from_secs(10)).await, Exit::Exited(0));
}

#[tokio::test]
async fn a_delivery_that_breaks_the_contract_is_refused_and_not_recorded() {
    let s = start(&[]);
    let wrong_key = post_json(
        s.http,
        "/",
        &[("idempotency-key", "other")],
        &delivery("e1", "order.created"),
    )
    .await
    .expect("deliver");
    assert_eq!(wrong_key.status(), 400);
    let not_json = post_json(s.http, "/", &[("idempotency-key", "e1")], "{")
        .await
        .expect("deliver");
    assert_eq!(not_json.status(), 400);
    assert!(events(&s).await.is_empty());
}

#[tokio::test]
async fn the_fail_rate_fails_that_share_and_records_only_the_rest() {
    let s = start(&["--fail-rate", "0.5", "--seed", "42"]);
    let mut ok = 0;
    for i in 0..200 {
        let id = format!("e{i}");
        let res = post_json(
            s.http,
            "/",
            &[("idempotency-key", &id)],
            &delivery(&id, "order.cancelled"),
        )
        .await
        .expect("deliver");
        match res.status().as_u16() {
            204 => ok += 1,
            500 => {}
            other => panic!("status {other}"),
        }
    }
    assert!(
        (60..=140).contains(&ok),
        "{ok} of 200 accepted at a 0.5 fail rate"
    );
    assert_eq!(events(&s).await.len(), ok);
}

#[test]
fn a_fail_rate_outside_0_to_1_exits_1() {
    let out = std::process::Command::new(BIN)
        .args(["webhook", "--listen", "127.0.0.1:0", "--fail-rate", "2"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fail-rate must be between 0 and 1"));
}
