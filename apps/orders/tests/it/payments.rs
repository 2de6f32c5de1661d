//! Payments end to end: real `lameduck-orders` processes against the real
//! `lameduck-fakes` payment gateway (served in this test process on loopback, so that the
//! test reads its ledger and request count), real signals. No order is charged twice,
//! every `paid` order has exactly one charge, no order stays `paying`.

use lameduck_testkit::Exit;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use lameduck_fakes::payments::{self, Gateway};
use lameduck_testkit::{connect_h1, get, poll_until, post_json, Spawned};
use nix::sys::signal::Signal;

use crate::{all_orders, json, order_json, wait_ready, Store, SOON};

/// The gateway, served in this process.
struct Gw {
    http: SocketAddr,
    gateway: Arc<Gateway>,
}

async fn gateway(fail_rate: f64, lost_reply_rate: f64, latency_ms: u64) -> Gw {
    let options = payments::Options {
        fail_rate,
        lost_reply_rate,
        latency_ms,
        seed: Some(11),
        ..payments::Options::default()
    };
    let (gateway, http) = payments::spawn(&options).await.expect("gateway");
    Gw { http, gateway }
}

impl Gw {
    async fn control(&self, change: &str) {
        let mut c = connect_h1(self.http).await.expect("connect");
        let res = c
            .send(
                Method::PUT,
                "/control",
                &[("content-type", "application/json")],
                change.to_string(),
            )
            .await
            .expect("PUT /control");
        assert_eq!(res.status(), 200, "{change}");
    }
}

fn start(store: &Store, gw: &Gw, extra: &[&str]) -> Spawned {
    let url = format!("http://{}", gw.http);
    let mut args = vec!["--payment-url", url.as_str()];
    args.extend_from_slice(extra);
    store.start(&args)
}

async fn create(addr: SocketAddr, customer: &str) -> String {
    let res = post_json(addr, "/orders", &[], &order_json(customer))
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    json(res.body())["id"].as_str().expect("id").to_string()
}

/// `POST /orders/{id}/pay`: the status and the body.
async fn pay(addr: SocketAddr, id: &str) -> (u16, serde_json::Value, http::HeaderMap) {
    let res = post_json(addr, &format!("/orders/{id}/pay"), &[], "")
        .await
        .expect("pay");
    let body = serde_json::from_slice(res.body()).unwrap_or(serde_json::Value::Null);
    (res.status().as_u16(), body, res.headers().clone())
}

async fn order(addr: SocketAddr, id: &str) -> serde_json::Value {
    json(
        get(addr, &format!("/orders/{id}"))
            .await
            .expect("get")
            .body(),
    )
}

/// A metric's value on `/metrics`, by its line's prefix.
async fn metric(admin: SocketAddr, prefix: &str) -> Option<f64> {
    let res = get(admin, "/metrics").await.ok()?;
    let text = String::from_utf8_lossy(res.body()).to_string();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn an_order_is_paid_once_and_every_rule_holds() {
    every_rule(Store::sqlite("pay-rules")).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn an_order_is_paid_once_and_every_rule_holds_on_postgres_too() {
    every_rule(Store::postgres("pay-rules").await).await;
}

async fn every_rule(store: Store) {
    let gw = gateway(0.0, 0.0, 0).await;
    let mut s = start(&store, &gw, &[]);
    wait_ready(&s).await;
    let id = create(s.http, "c1").await;
    let (status, paid, _) = pay(s.http, &id).await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], "paid");
    let charge_id = paid["charge_id"].as_str().expect("charge_id").to_string();
    // Paid again: the same order, no second charge.
    let (status, again, _) = pay(s.http, &id).await;
    assert_eq!((status, &again), (200, &paid));
    let charges = gw.gateway.charges();
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].id, charge_id);
    assert_eq!(charges[0].idempotency_key, format!("pay_{id}"));
    assert_eq!(charges[0].amount_cents, 1250);
    // A paid order cannot be cancelled.
    let res = post_json(s.http, &format!("/orders/{id}/cancel"), &[], "")
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    // Unknown: 404; cancelled: 409.
    let (status, body, _) = pay(s.http, "ord_nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let other = create(s.http, "c2").await;
    let res = post_json(s.http, &format!("/orders/{other}/cancel"), &[], "")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (status, body, _) = pay(s.http, &other).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    // In progress: a second payer while the gateway takes its time.
    gw.control(r#"{"latency_ms":1500}"#).await;
    let slow = create(s.http, "c3").await;
    let first = tokio::spawn({
        let (addr, slow) = (s.http, slow.clone());
        async move { pay(addr, &slow).await }
    });
    let paying = poll_until(SOON, || async {
        (order(s.http, &slow).await["status"] == "paying").then_some(())
    })
    .await;
    assert!(paying.is_some(), "never paying");
    let (status, body, _) = pay(s.http, &slow).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("payment_in_progress"))
    );
    let res = post_json(s.http, &format!("/orders/{slow}/cancel"), &[], "")
        .await
        .unwrap();
    assert_eq!(res.status(), 409, "a paying order cannot be cancelled");
    let (status, body, _) = first.await.unwrap();
    assert_eq!((status, body["status"].as_str()), (200, Some("paid")));
    assert_eq!(gw.gateway.charges().len(), 2);
    // Every state change is audited with the request's trace id and request id.
    let audit = store.audit_log();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .filter(|l: &serde_json::Value| l["order_id"] == id.as_str())
        .collect();
    let actions: Vec<&str> = lines.iter().filter_map(|l| l["action"].as_str()).collect();
    assert_eq!(actions, ["order.created", "order.paying", "order.paid"]);
    for l in &lines {
        assert_eq!(l["trace_id"].as_str().map(str::len), Some(32), "{l}");
        assert!(
            l["request_id"].as_str().is_some_and(|r| !r.is_empty()),
            "{l}"
        );
    }
    assert_ne!(lines[1]["request_id"], lines[0]["request_id"]);
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

#[tokio::test]
async fn without_a_payment_url_paying_is_off() {
    let store = Store::sqlite("pay-off");
    let s = store.start(&[]);
    wait_ready(&s).await;
    let id = create(s.http, "c1").await;
    let (status, body, _) = pay(s.http, &id).await;
    assert_eq!(status, 404);
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("--payment-url"), "{body}");
    assert_eq!(order(s.http, &id).await["status"], "created");
}

#[tokio::test]
async fn the_breaker_opens_on_a_failing_gateway_and_closes_when_it_heals() {
    let gw = gateway(1.0, 0.0, 0).await;
    let store = Store::sqlite("pay-breaker");
    let s = start(&store, &gw, &["--payment-breaker-open-for", "1s"]);
    wait_ready(&s).await;
    let state = r#"lameduck_circuit_state{circuit="payments"}"#;
    assert_eq!(metric(s.admin, state).await, Some(0.0));
    // Each pay: 3 tries answered 500 and a look-up that finds no charge: the outcome is
    // unknown (a 500 may come after the charge), so the order stays paying, 503. Once the
    // circuit is open, a pay call is refused before anything is sent: the order stays
    // created.
    let mut refused = None;
    for i in 0..20 {
        let id = create(s.http, &format!("c{i}")).await;
        let (status, body, headers) = pay(s.http, &id).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("dependency_unavailable")),
            "{body}"
        );
        assert!(headers.contains_key("retry-after"));
        match order(s.http, &id).await["status"].as_str() {
            Some("paying") => {
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("outcome is unknown"), "{body}");
            }
            Some("created") => {
                refused = Some(id);
                break;
            }
            other => panic!("order {id} is {other:?}: {body}"),
        }
    }
    let id = refused.expect("the circuit never opened");
    assert_eq!(metric(s.admin, state).await, Some(1.0));
    assert!(s
        .wait_for_log(&["circuit breaker opened", "payments"], SOON)
        .await
        .is_some());
    // While open, no call reaches the gateway.
    let before = gw.gateway.requests();
    for _ in 0..5 {
        let (status, body, _) = pay(s.http, &id).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("dependency_unavailable"))
        );
    }
    assert_eq!(
        gw.gateway.requests(),
        before,
        "calls reached the gateway while open"
    );
    assert!(gw.gateway.charges().is_empty());
    // Healed: after the open time, trial calls close it again.
    gw.control(r#"{"fail_rate":0}"#).await;
    let paid = poll_until(SOON, || async {
        let (status, body, _) = pay(s.http, &id).await;
        (status == 200).then_some(body)
    })
    .await
    .expect("never paid after the gateway healed");
    assert_eq!(paid["status"], "paid");
    for i in 0..3 {
        let id = create(s.http, &format!("after{i}")).await;
        assert_eq!(pay(s.http, &id).await.0, 200);
    }
    assert_eq!(metric(s.admin, state).await, Some(0.0));
    let logs = s.logs().join("\n");
    for to in ["half-open", "closed"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("circuit breaker state changed") && l.contains(to)),
            "no transition to {to} in the logs"
        );
    }
}

#[tokio::test]
async fn the_timeout_follows_the_gateway_within_its_clamps() {
    let gw = gateway(0.0, 0.0, 10).await;
    let store = Store::sqlite("pay-timeout");
    let s = start(
        &store,
        &gw,
        &[
            "--payment-timeout-min",
            "15ms",
            "--payment-timeout-max",
            "1s",
            "--payment-timeout-window",
            "2s",
        ],
    );
    wait_ready(&s).await;
    let gauge = "orders_payment_timeout_seconds ";
    let mut seen = Vec::new();
    // Pay orders 8 at a time until the timeout is where `want` says, or the time is up.
    async fn phase(
        s: &Spawned,
        seen: &mut Vec<f64>,
        gauge: &str,
        want: impl Fn(f64) -> bool,
    ) -> Option<f64> {
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_secs(30) {
            let mut batch = Vec::new();
            for _ in 0..8 {
                n += 1;
                let addr = s.http;
                let id = create(addr, &format!("t{n}")).await;
                batch.push(tokio::spawn(async move { pay(addr, &id).await.0 }));
            }
            for b in batch {
                let _ = b.await;
            }
            let v = metric(s.admin, gauge).await?;
            seen.push(v);
            if n >= 64 && want(v) {
                return Some(v);
            }
        }
        None
    }
    let fast = phase(&s, &mut seen, gauge, |v| v < 0.05).await;
    assert!(fast.is_some(), "not below 50 ms at 10 ms latency: {seen:?}");
    gw.control(r#"{"latency_ms":200}"#).await;
    let slow = phase(&s, &mut seen, gauge, |v| v >= 0.2).await;
    assert!(
        slow.is_some(),
        "not up to 200 ms at 200 ms latency: {seen:?}"
    );
    gw.control(r#"{"latency_ms":10}"#).await;
    let back = phase(&s, &mut seen, gauge, |v| v < 0.05).await;
    assert!(back.is_some(), "not back below 50 ms: {seen:?}");
    for v in &seen {
        assert!(
            (0.015..=1.0).contains(v),
            "left its clamps: {v} in {seen:?}"
        );
    }
}

/// How each order ended, checked against the gateway's ledger: one charge per key at most
/// (the gateway's own rule), only this service's keys, every `paid` order exactly one
/// charge and the same one, no `payment_failed` order charged, nothing `paying`.
async fn check_ledger(addr: SocketAddr, gw: &Gw) -> HashMap<String, String> {
    let orders = all_orders(addr).await;
    let charges = gw.gateway.charges();
    let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for c in &charges {
        by_key.entry(&c.idempotency_key).or_default().push(&c.id);
    }
    let mut status = HashMap::new();
    for o in &orders {
        let id = o["id"].as_str().unwrap();
        let key = format!("pay_{id}");
        let made = by_key.remove(key.as_str()).unwrap_or_default();
        assert!(made.len() <= 1, "{id} charged {} times", made.len());
        match o["status"].as_str().unwrap() {
            "paid" => {
                assert_eq!(made, [o["charge_id"].as_str().unwrap()], "{o}");
                let charge = charges.iter().find(|c| c.id == made[0]).expect("charge");
                assert_eq!(Some(charge.amount_cents), o["amount_cents"].as_i64(), "{o}");
            }
            "paying" => panic!("{id} is still paying"),
            "payment_failed" | "created" => assert!(made.is_empty(), "{o} has a charge"),
            other => panic!("{id}: status {other}"),
        }
        status.insert(id.to_string(), o["status"].as_str().unwrap().to_string());
    }
    assert!(by_key.is_empty(), "charges for no order: {by_key:?}");
    status
}

#[tokio::test]
async fn payments_under_faults_sigterm_and_sigkill_never_charge_twice() {
    under_faults(Store::sqlite("pay-faults")).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn payments_under_faults_never_charge_twice_on_postgres_too() {
    under_faults(Store::postgres("pay-faults").await).await;
}

async fn under_faults(store: Store) {
    let gw = gateway(0.3, 0.1, 5).await;
    let extra = [
        "--payment-timeout-max",
        "300ms",
        "--payment-lease",
        "3s",
        "--payment-settle-every",
        "200ms",
        "--payment-breaker-open-for",
        "200ms",
    ];
    let mut s = start(&store, &gw, &extra);
    wait_ready(&s).await;
    let mut all = Vec::new();
    // Three rounds of 30 new orders and 6 payers, each order paid by two payers at once;
    // the process is stopped with SIGTERM after the first round and killed during the
    // second.
    for round in 0..3 {
        let addr = s.http;
        let mut ids = Vec::new();
        for i in 0..30 {
            ids.push(create(addr, &format!("r{round}-{i}")).await);
        }
        all.extend(ids.iter().cloned());
        let ids = Arc::new(ids);
        let mut payers = Vec::new();
        for p in 0..6 {
            let ids = ids.clone();
            payers.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    if i % 3 == p % 3 {
                        let res = post_json(addr, &format!("/orders/{id}/pay"), &[], "").await;
                        statuses.push(res.map(|r| r.status().as_u16()).unwrap_or(0));
                    }
                }
                statuses
            }));
        }
        if round == 1 {
            // SIGKILL in the middle of the payments.
            let started = gw.gateway.requests();
            let busy = poll_until(SOON, || async {
                (gw.gateway.requests() >= started + 10).then_some(())
            })
            .await;
            assert!(busy.is_some(), "no payments reached the gateway");
            s.signal(Signal::SIGKILL);
            for p in payers {
                let _ = p.await;
            }
            let t = Instant::now();
            while !s.has_exited() {
                assert!(t.elapsed() < SOON, "still running after SIGKILL");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            for p in payers {
                for status in p.await.unwrap() {
                    assert!(
                        [200, 409, 502, 503].contains(&status),
                        "round {round}: status {status}"
                    );
                }
            }
            if round == 0 {
                s.signal(Signal::SIGTERM);
                assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
            }
        }
        if round < 2 {
            s = start(&store, &gw, &extra);
            wait_ready(&s).await;
            let paying = all_orders(s.http)
                .await
                .iter()
                .filter(|o| o["status"] == "paying")
                .count();
            eprintln!("after round {round}: {paying} orders paying");
        }
    }
    // Recovery: nothing stays paying once the leases have passed and the settle task ran.
    let settled = poll_until(Duration::from_secs(30), || async {
        let orders = all_orders(s.http).await;
        orders.iter().all(|o| o["status"] != "paying").then_some(())
    })
    .await;
    assert!(settled.is_some(), "orders stay paying after recovery");
    let statuses = check_ledger(s.http, &gw).await;
    assert!(statuses.values().any(|v| v == "paid"), "{statuses:?}");
    let settled = metric(s.admin, "orders_payments_settled_total ").await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for v in statuses.values() {
        *counts.entry(v).or_default() += 1;
    }
    eprintln!(
        "after recovery: {counts:?}; settled by the task: {settled:?}; charges {}",
        gw.gateway.charges().len()
    );
    // A healthy gateway: every order left unpaid is paid now, once.
    gw.control(r#"{"fail_rate":0,"lost_reply_rate":0}"#).await;
    for id in &all {
        let ok = poll_until(SOON, || async {
            (pay(s.http, id).await.0 == 200).then_some(())
        })
        .await;
        assert!(ok.is_some(), "{id} never paid");
    }
    let statuses = check_ledger(s.http, &gw).await;
    assert!(statuses.values().all(|v| v == "paid"), "{statuses:?}");
    assert_eq!(gw.gateway.charges().len(), all.len());
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

/// The short settings of the fault-mode cases: 2 tries of at most 300 ms, a 2 s lease, a
/// settle round every 200 ms (start-up accepts them: the lease is more than twice the
/// longest call, 2 x 300 ms + 200 ms of back-off).
const SHORT: [&str; 10] = [
    "--payment-attempts",
    "2",
    "--payment-timeout-max",
    "300ms",
    "--payment-lease",
    "2s",
    "--payment-settle-every",
    "200ms",
    "--payment-breaker-open-for",
    "200ms",
];

/// Orders each fault-mode case pays.
const CASE_ORDERS: usize = 24;

/// One fault-mode case: the gateway runs with `faults` (a `PUT /control` body) while 24
/// orders of different amounts are paid by 4 concurrent payers, and the service gets `sig`
/// once a third of the charges have reached the gateway. Then the service is started again
/// on the same store with the gateway healed (its look-up lag kept), and once the lease
/// plus a settle round (and a call) have passed: nothing is `paying`, the gateway's charges
/// are the paid orders (one each, same amounts), and no other order has a charge.
async fn fault_case(name: &str, faults: &str, sig: Signal) {
    let gw = gateway(0.0, 0.0, 0).await;
    gw.control(faults).await;
    let store = Store::sqlite(name);
    let mut s = start(&store, &gw, &SHORT);
    wait_ready(&s).await;
    let mut ids = Vec::new();
    for i in 0..CASE_ORDERS {
        let body = format!(
            r#"{{"customer_id":"c{i}","sku":"sku-1","quantity":1,"amount_cents":{}}}"#,
            100 + i
        );
        let res = post_json(s.http, "/orders", &[], &body)
            .await
            .expect("create");
        assert_eq!(res.status(), 201);
        ids.push(json(res.body())["id"].as_str().expect("id").to_string());
    }
    let ids = Arc::new(ids);
    let addr = s.http;
    let payers: Vec<_> = (0..4)
        .map(|p| {
            let ids = ids.clone();
            tokio::spawn(async move {
                for id in ids.iter().skip(p).step_by(4) {
                    let _ = post_json(addr, &format!("/orders/{id}/pay"), &[], "").await;
                }
            })
        })
        .collect();
    let busy = poll_until(SOON, || async {
        (gw.gateway.requests() >= (CASE_ORDERS / 2) as u64).then_some(())
    })
    .await;
    assert!(busy.is_some(), "{name}: no payments reached the gateway");
    s.signal(sig);
    let want = if sig == Signal::SIGKILL {
        Exit::KILLED
    } else {
        Exit::Exited(0)
    };
    assert_eq!(s.wait_exit(SOON).await, want, "{name}");
    for p in payers {
        p.await.expect("payer");
    }
    gw.control(
        r#"{"fail_rate":0,"error_after_charge_rate":0,"lost_reply_rate":0,"lookup_fail_rate":0,"latency_ms":0,"jitter_ms":0}"#,
    )
    .await;
    let s = start(&store, &gw, &SHORT);
    wait_ready(&s).await;
    let left = all_orders(s.http)
        .await
        .iter()
        .filter(|o| o["status"] == "paying")
        .count();
    // The lease, a settle round, one call (2 x 300 ms + 200 ms), and a second for the
    // writes and a slow machine.
    let settled = poll_until(Duration::from_millis(2000 + 200 + 800 + 1000), || async {
        let orders = all_orders(s.http).await;
        orders.iter().all(|o| o["status"] != "paying").then_some(())
    })
    .await;
    if settled.is_none() {
        let paying: Vec<_> = all_orders(s.http)
            .await
            .into_iter()
            .filter(|o| o["status"] == "paying")
            .collect();
        let logs = s.logs().join("\n");
        panic!("{name}: orders left paying: {paying:?}\nlogs:\n{logs}");
    }
    let statuses = check_ledger(s.http, &gw).await;
    let paid = statuses.values().filter(|v| *v == "paid").count();
    let failed = statuses.values().filter(|v| *v == "payment_failed").count();
    let settled = metric(s.admin, "orders_payments_settled_total ").await;
    eprintln!(
        "{name}: {paid} of {CASE_ORDERS} paid, {failed} payment_failed, {left} left paying by the {sig:?}, settled by the task {settled:?}, {} gateway requests",
        gw.gateway.requests()
    );
    assert!(paid > 0, "{name}: nothing was paid: {statuses:?}");
}

/// One test per fault mode and signal.
macro_rules! fault_cases {
    ($($name:ident: $faults:expr, $sig:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            fault_case(stringify!($name), $faults, Signal::$sig).await;
        }
    )*};
}

fault_cases! {
    failures_before_charging_then_sigterm: r#"{"fail_rate":0.5}"#, SIGTERM;
    failures_before_charging_then_sigkill: r#"{"fail_rate":0.5}"#, SIGKILL;
    errors_after_charging_then_sigterm: r#"{"error_after_charge_rate":0.5}"#, SIGTERM;
    errors_after_charging_then_sigkill: r#"{"error_after_charge_rate":0.5}"#, SIGKILL;
    reset_replies_then_sigterm: r#"{"lost_reply_rate":0.5}"#, SIGTERM;
    reset_replies_then_sigkill: r#"{"lost_reply_rate":0.5}"#, SIGKILL;
    charges_slower_than_the_timeout_then_sigterm: r#"{"latency_ms":350,"jitter_ms":100}"#, SIGTERM;
    charges_slower_than_the_timeout_then_sigkill: r#"{"latency_ms":350,"jitter_ms":100}"#, SIGKILL;
    lagging_lookups_then_sigterm: r#"{"error_after_charge_rate":0.6,"lookup_lag_ms":1500}"#, SIGTERM;
    lagging_lookups_then_sigkill: r#"{"error_after_charge_rate":0.6,"lookup_lag_ms":1500}"#, SIGKILL;
    failing_lookups_then_sigterm: r#"{"lost_reply_rate":0.5,"lookup_fail_rate":1}"#, SIGTERM;
    failing_lookups_then_sigkill: r#"{"lost_reply_rate":0.5,"lookup_fail_rate":1}"#, SIGKILL;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pay_call_in_flight_at_sigterm_is_answered_503_before_the_exit() {
    // A gateway that never answers, and one that answers after 10 s.
    for latency_ms in [600_000, 10_000] {
        let gw = gateway(0.0, 0.0, latency_ms).await;
        let store = Store::sqlite(&format!("pay-at-stop-{latency_ms}"));
        let mut s = start(
            &store,
            &gw,
            &[
                "--shutdown-timeout",
                "5s",
                "--payment-timeout-max",
                "20s",
                "--payment-lease",
                "300s",
                "--log-format",
                "json",
            ],
        );
        wait_ready(&s).await;
        let id = create(s.http, "at-stop").await;
        let paying = tokio::spawn({
            let (addr, id) = (s.http, id.clone());
            async move { pay(addr, &id).await }
        });
        let sent = poll_until(SOON, || async {
            (gw.gateway.requests() >= 1).then_some(())
        })
        .await;
        assert!(sent.is_some(), "the charge reached the gateway");
        let t0 = Instant::now();
        s.signal(Signal::SIGTERM);
        let (status, body, headers) = paying.await.expect("pay task");
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("dependency_unavailable")),
            "latency {latency_ms} ms: {body}"
        );
        assert!(headers.contains_key("retry-after"));
        assert_eq!(
            s.wait_exit(SOON).await,
            Exit::Exited(0),
            "latency {latency_ms} ms"
        );
        let report = s
            .logs()
            .into_iter()
            .find(|l| l.contains("shutdown report"))
            .expect("a shutdown report");
        assert!(report.contains("\"abandoned\":0"), "{report}");
        eprintln!(
            "latency {latency_ms} ms: answered 503 and exited 0 in {:?}",
            t0.elapsed()
        );
        // The charge was made (the gateway commits first): the next process settles it.
        assert_eq!(gw.gateway.charges().len(), 1);
    }
}
