//! Every route and every error path of the contract.

use http::Method;
use lameduck_testkit::{connect_h1, get, post_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{json, order_json, Store, SOON};

fn assert_error(body: &[u8], code: &str) {
    let v = json(body);
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_201_with_location_and_the_committed_order() {
    let store = Store::sqlite("create");
    let s = store.start(&[]);
    let res = post_json(s.http, "/orders", &[], &order_json("alice"))
        .await
        .expect("response");
    assert_eq!(res.status(), 201);
    let order = json(res.body());
    let id = order["id"].as_str().expect("id");
    assert_eq!(res.headers()["location"], format!("/orders/{id}").as_str());
    assert_eq!(order["customer_id"], "alice");
    assert_eq!(order["sku"], "sku-1");
    assert_eq!(order["quantity"], 2);
    assert_eq!(order["amount_cents"], 1250);
    assert_eq!(order["status"], "created");
    assert!(order["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let fetched = get(s.http, &format!("/orders/{id}")).await.expect("get");
    assert_eq!(fetched.status(), 200);
    assert_eq!(json(fetched.body()), order);
    assert!(
        store.audit_log().contains(id),
        "audit line written before the 201"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_returns_the_same_order_and_another_body_is_422() {
    same_key(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_write_batching_the_idempotency_rules_hold_too() {
    same_key(&["--write-batching", "off"]).await;
}

async fn same_key(flags: &[&str]) {
    let store = Store::sqlite("idem");
    let s = store.start(flags);
    let key = [("idempotency-key", "key-1")];
    let a = post_json(s.http, "/orders", &key, &order_json("bob"))
        .await
        .expect("first");
    let b = post_json(s.http, "/orders", &key, &order_json("bob"))
        .await
        .expect("retry");
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert_eq!(
        json(a.body()),
        json(b.body()),
        "the same order, not a second one"
    );
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    let c = post_json(s.http, "/orders", &key, &order_json("mallory"))
        .await
        .expect("other body");
    assert_eq!(c.status(), 422);
    assert_error(c.body(), "idempotency_key_reused");
    assert_eq!(crate::all_orders(s.http).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_and_invalid_fields_are_400_with_an_error_body() {
    let store = Store::sqlite("invalid");
    let s = store.start(&[]);
    let cases = [
        ("{", "invalid_json"),
        ("[]", "invalid_json"),
        (
            r#"{"customer_id":"a","sku":"b","quantity":1}"#,
            "invalid_json",
        ),
        (
            r#"{"customer_id":"a","sku":"b","quantity":"1","amount_cents":0}"#,
            "invalid_json",
        ),
        (
            r#"{"customer_id":"a","sku":"b","quantity":1.5,"amount_cents":0}"#,
            "invalid_json",
        ),
        (
            r#"{"customer_id":"a","sku":"b","quantity":1,"amount_cents":0,"extra":1}"#,
            "invalid_json",
        ),
        (
            r#"{"customer_id":"a","sku":"b","quantity":0,"amount_cents":0}"#,
            "invalid_field",
        ),
        (
            r#"{"customer_id":"a","sku":"b","quantity":1001,"amount_cents":0}"#,
            "invalid_field",
        ),
        (
            r#"{"customer_id":"a","sku":"b","quantity":1,"amount_cents":-1}"#,
            "invalid_field",
        ),
        (
            r#"{"customer_id":"","sku":"b","quantity":1,"amount_cents":0}"#,
            "invalid_field",
        ),
        (
            r#"{"customer_id":"a","sku":"b","quantity":99999999999999999999,"amount_cents":0}"#,
            "invalid_json",
        ),
    ];
    for (body, code) in cases {
        let res = post_json(s.http, "/orders", &[], body)
            .await
            .expect("response");
        assert_eq!(res.status(), 400, "{body}");
        assert_error(res.body(), code);
    }
    for key in ["", "has space", &"k".repeat(256)] {
        let res = post_json(
            s.http,
            "/orders",
            &[("idempotency-key", key)],
            &order_json("a"),
        )
        .await
        .expect("response");
        assert_eq!(res.status(), 400, "key {key:?}");
        assert_error(res.body(), "invalid_idempotency_key");
    }
    assert!(
        crate::all_orders(s.http).await.is_empty(),
        "no order from a bad request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_declared_or_chunked() {
    let store = Store::sqlite("large");
    let s = store.start(&["--body-limit", "1024"]);
    let big = order_json(&"x".repeat(2000));
    let res = post_json(s.http, "/orders", &[], &big)
        .await
        .expect("response");
    assert_eq!(res.status(), 413);
    assert_error(res.body(), "payload_too_large");
    // Chunked: no Content-Length, the limit trips while reading.
    let mut c = tokio::net::TcpStream::connect(s.http)
        .await
        .expect("connect");
    let chunk = "y".repeat(1500);
    let req = format!(
        "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    c.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SOON, c.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_list_and_cancel_follow_the_contract() {
    let store = Store::sqlite("routes");
    let s = store.start(&[]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let res = post_json(s.http, "/orders", &[], &order_json(&format!("c{i}")))
            .await
            .expect("create");
        ids.push(json(res.body())["id"].as_str().expect("id").to_string());
    }
    // The list is in id order: creation time to the millisecond, then the random part.
    ids.sort();
    let missing = get(s.http, "/orders/ord_missing").await.expect("get");
    assert_eq!(missing.status(), 404);
    assert_error(missing.body(), "not_found");

    let page = json(get(s.http, "/orders?limit=2").await.expect("list").body());
    let first: Vec<_> = page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(first, ids[..2]);
    let after = page["next_after"].as_str().expect("next page");
    let page2 = json(
        get(s.http, &format!("/orders?limit=10&after={after}"))
            .await
            .expect("list")
            .body(),
    );
    assert_eq!(page2["orders"].as_array().unwrap().len(), 3);
    assert!(page2["next_after"].is_null());
    for bad in ["/orders?limit=0", "/orders?limit=501", "/orders?limit=x"] {
        let res = get(s.http, bad).await.expect("list");
        assert_eq!(res.status(), 400, "{bad}");
        assert_error(res.body(), "invalid_query");
    }

    let mut c = connect_h1(s.http).await.expect("connect");
    let path = format!("/orders/{}/cancel", ids[0]);
    let done = c.send(Method::POST, &path, &[], "").await.expect("cancel");
    assert_eq!(done.status(), 200);
    assert_eq!(json(done.body())["status"], "cancelled");
    let again = c
        .send(Method::POST, &path, &[], "")
        .await
        .expect("cancel again");
    assert_eq!(again.status(), 409);
    assert_error(again.body(), "conflict");
    let none = c
        .send(Method::POST, "/orders/ord_missing/cancel", &[], "")
        .await
        .expect("cancel missing");
    assert_eq!(none.status(), 404);
    assert_error(none.body(), "not_found");
    assert!(store.audit_log().contains("order.cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_bad_paths_and_huge_amounts_are_refused_in_json() {
    let store = Store::sqlite("input");
    let s = store.start(&[]);
    let mut c = connect_h1(s.http).await.expect("connect");
    let two = c
        .send(
            Method::POST,
            "/orders",
            &[("idempotency-key", "k1"), ("idempotency-key", "k2")],
            order_json("c1"),
        )
        .await
        .expect("two keys");
    assert_eq!(two.status(), 400);
    assert_error(two.body(), "invalid_idempotency_key");
    assert!(
        String::from_utf8_lossy(two.body()).contains("more than one Idempotency-Key header"),
        "{:?}",
        two.body()
    );
    for (method, path) in [
        (Method::GET, "/orders/%FF"),
        (Method::POST, "/orders/%FF/cancel"),
        (Method::POST, "/orders/%FF/pay"),
    ] {
        let res = c.send(method, path, &[], "").await.expect("bad path");
        assert_eq!(res.status(), 404, "{path}");
        assert_error(res.body(), "not_found");
    }
    for (amount, status) in [
        (100_000_000_000i64, 201),
        (100_000_000_001, 400),
        (i64::MAX, 400),
    ] {
        let body =
            format!(r#"{{"customer_id":"c","sku":"s","quantity":1,"amount_cents":{amount}}}"#);
        let res = c
            .send(Method::POST, "/orders", &[], body)
            .await
            .expect("amount");
        assert_eq!(res.status(), status, "{amount}");
        if status == 400 {
            assert_error(res.body(), "invalid_field");
        }
    }
    assert_eq!(
        store.audit_log().lines().count(),
        1,
        "only the order within the bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_get_json_errors() {
    let store = Store::sqlite("unknown");
    let s = store.start(&[]);
    let res = get(s.http, "/nope").await.expect("get");
    assert_eq!(res.status(), 404);
    assert_error(res.body(), "not_found");
    let mut c = connect_h1(s.http).await.expect("connect");
    let res = c
        .send(Method::DELETE, "/orders", &[], "")
        .await
        .expect("delete");
    assert_eq!(res.status(), 405);
    assert_error(res.body(), "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn the_api_works_the_same_on_postgres() {
    let store = Store::postgres("api").await;
    let s = store.start(&[]);
    crate::wait_ready(&s).await;
    let key = [("idempotency-key", "pg-key")];
    let a = post_json(s.http, "/orders", &key, &order_json("pg"))
        .await
        .expect("create");
    assert_eq!(a.status(), 201);
    let b = post_json(s.http, "/orders", &key, &order_json("pg"))
        .await
        .expect("replay");
    assert_eq!(json(a.body()), json(b.body()));
    let c = post_json(s.http, "/orders", &key, &order_json("other"))
        .await
        .expect("mismatch");
    assert_eq!(c.status(), 422);
    let id = json(a.body())["id"].as_str().unwrap().to_string();
    assert_eq!(
        get(s.http, &format!("/orders/{id}"))
            .await
            .expect("get")
            .status(),
        200
    );
    let mut conn = connect_h1(s.http).await.expect("connect");
    let path = format!("/orders/{id}/cancel");
    assert_eq!(
        conn.send(Method::POST, &path, &[], "")
            .await
            .expect("cancel")
            .status(),
        200
    );
    assert_eq!(
        conn.send(Method::POST, &path, &[], "")
            .await
            .expect("cancel")
            .status(),
        409
    );
    assert_eq!(crate::all_orders(s.http).await.len(), 1);
}

/// A counter's value in a Prometheus text exposition.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_share_commits_and_the_metrics_show_it() {
    let store = Store::sqlite("batches");
    let s = store.start(&[]);
    crate::wait_ready(&s).await;
    let (mut jobs, mut batches) = (0.0, 0.0);
    // Rounds of 32 concurrent creates until some commit carried more than one; bounded.
    for round in 0..10 {
        let tasks: Vec<_> = (0..32)
            .map(|c| {
                let addr = s.http;
                tokio::spawn(async move {
                    let body = order_json(&format!("r{round}-c{c}"));
                    post_json(addr, "/orders", &[], &body)
                        .await
                        .map(|r| r.status())
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("client").expect("response"), 201);
        }
        let m = get(s.admin, "/metrics").await.expect("metrics");
        let text = String::from_utf8_lossy(m.body()).into_owned();
        // Labelled by the route template from the server's table.
        assert_eq!(
            counter(
                &text,
                r#"lameduck_http_requests_total{route="/orders",status="201"}"#
            ),
            f64::from(32 * (round + 1))
        );
        jobs = counter(&text, "orders_write_jobs_total");
        batches = counter(&text, "orders_write_batches_total");
        assert_eq!(jobs, f64::from(32 * (round + 1)), "every create is a write");
        assert_eq!(counter(&text, "orders_write_queue"), 0.0);
        if batches < jobs {
            break;
        }
    }
    assert!(
        batches < jobs,
        "{jobs} writes in {batches} commits: never more than one per commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_request_timeout_every_committed_order_is_answered_201() {
    for timeout in ["2ms", "20ms"] {
        let store = Store::sqlite(&format!("timeout-{timeout}"));
        let mut s = store.start(&["--request-timeout", timeout]);
        crate::wait_ready(&s).await;
        let clients: Vec<_> = (0..16)
            .map(|c| {
                let addr = s.http;
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    for i in 0..10 {
                        let res =
                            post_json(addr, "/orders", &[], &order_json(&format!("t{c}-{i}")))
                                .await
                                .expect("POST /orders");
                        let code = serde_json::from_slice::<serde_json::Value>(res.body())
                            .ok()
                            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
                        answers.push((res.status().as_u16(), code));
                    }
                    answers
                })
            })
            .collect();
        let mut created = 0;
        let mut timed_out = 0;
        for c in clients {
            for (status, code) in c.await.expect("client") {
                match (status, code.as_deref()) {
                    (201, _) => created += 1,
                    (503, Some("handler_timeout")) => timed_out += 1,
                    other => panic!("--request-timeout {timeout}: answer {other:?}"),
                }
            }
        }
        // Counted by a process without the timeout (a list cut at 2 ms says nothing).
        s.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(s.wait_exit(SOON).await, lameduck_testkit::Exit::Exited(0));
        let s = store.start(&[]);
        crate::wait_ready(&s).await;
        let stored = crate::all_orders(s.http).await.len();
        eprintln!("--request-timeout {timeout}: {created} created, {timed_out} timed out, {stored} stored");
        assert_eq!(
            stored, created,
            "--request-timeout {timeout}: committed orders answered otherwise"
        );
    }
}
