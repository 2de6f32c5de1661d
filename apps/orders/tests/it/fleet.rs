//! The orders service as a fleet: two replicas that are each PID 1 (as in containers) and
//! get requests in lockstep still make distinct order and event ids, and one payment
//! gateway charges each of their orders once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use lameduck_fakes::payments;
use lameduck_testkit::{get, poll_until, post_json, Spawned};

use crate::{json, order_json, Store, SOON};

/// The arguments that make `unshare` run a program as PID 1 of a new PID namespace: as
/// root, or else in a user namespace; `None` where neither is allowed here.
fn as_pid_1() -> Option<Vec<&'static str>> {
    for args in [
        vec!["--pid", "--fork", "--mount-proc", "--kill-child"],
        vec![
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
        ],
    ] {
        let ok = std::process::Command::new("unshare")
            .args(&args)
            .arg("true")
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(args);
        }
    }
    None
}

/// The orders service as PID 1 on `store`, with `extra` flags.
fn start_as_pid_1(unshare: &[&str], store: &Store, extra: &[String]) -> Spawned {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    store.start_under("unshare", unshare, &extra)
}

async fn create(addr: SocketAddr, i: usize) -> String {
    let res = post_json(addr, "/orders", &[], &order_json(&format!("c{i}")))
        .await
        .expect("POST /orders");
    assert_eq!(res.status(), 201);
    json(res.body())["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs unshare (util-linux) as root or with user namespaces: scripts/test runs it"]
async fn two_replicas_as_pid_1_in_lockstep_make_distinct_ids_and_one_charge_per_order() {
    let Some(unshare) = as_pid_1() else {
        panic!("unshare can make neither a PID namespace nor a user namespace here");
    };
    let (gateway, gateway_at) = payments::spawn(&payments::Options::default())
        .await
        .expect("gateway");
    let receiver = {
        use lameduck_fakes::webhook;
        let r = webhook::Receiver::new(&webhook::Options {
            listen: "127.0.0.1:0".parse().expect("addr"),
            fail_rate: 0.0,
            fail_after_record_rate: 0.0,
            latency_ms: 0,
            seed: Some(1),
        })
        .expect("receiver");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let at = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, webhook::router(r)).await });
        at
    };
    let extra = vec![
        "--payment-url".to_string(),
        format!("http://{gateway_at}"),
        "--webhook-url".to_string(),
        format!("http://{receiver}/hooks/orders"),
        "--log-format".to_string(),
        "json".to_string(),
    ];
    let stores = [Store::sqlite("fleet-a"), Store::sqlite("fleet-b")];
    let replicas: Vec<Spawned> = stores
        .iter()
        .map(|s| start_as_pid_1(&unshare, s, &extra))
        .collect();
    for r in &replicas {
        crate::wait_ready(r).await;
    }
    // The old scheme named the pid, and both are PID 1.
    for r in &replicas {
        assert!(
            r.wait_for_log(&["running as PID 1"], SOON).await.is_some(),
            "not PID 1: {:?}",
            r.logs()
        );
    }
    let (a, b) = (replicas[0].http, replicas[1].http);
    let mut ids = Vec::new();
    for i in 0..300 {
        let (x, y) = tokio::join!(create(a, i), create(b, i));
        ids.push((a, x));
        ids.push((b, y));
    }
    let distinct: HashSet<&String> = ids.iter().map(|(_, id)| id).collect();
    assert_eq!(distinct.len(), 600, "order ids collided");
    // Every order paid on its replica: one charge each, under its own key.
    for (at, id) in &ids {
        let res = post_json(*at, &format!("/orders/{id}/pay"), &[], "")
            .await
            .expect("pay");
        assert_eq!(res.status(), 200, "{id}");
    }
    let charges = gateway.charges();
    assert_eq!(charges.len(), 600, "charges == paid orders");
    let keys: HashSet<&str> = charges.iter().map(|c| c.idempotency_key.as_str()).collect();
    assert_eq!(keys.len(), 600);
    // Every event arrived, each event id about one change only.
    let events = poll_until(SOON, || async {
        let res = get(receiver, "/events").await.ok()?;
        let events: Vec<serde_json::Value> = serde_json::from_slice(res.body()).ok()?;
        // An order.created for each order.
        (events.len() >= 600).then_some(events)
    })
    .await
    .expect("every event delivered");
    let mut by_id: HashMap<&str, (&str, &str)> = HashMap::new();
    for e in &events {
        let id = e["event_id"].as_str().expect("event_id");
        let what = (
            e["order_id"].as_str().expect("order_id"),
            e["type"].as_str().expect("type"),
        );
        let seen = by_id.entry(id).or_insert(what);
        assert_eq!(*seen, what, "event id {id} names two changes");
    }
    assert_eq!(by_id.len(), 600, "event ids collided");
}
