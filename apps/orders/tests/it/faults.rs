//! PostgreSQL going away mid-run: 503 with Retry-After, readiness down, recovery without a
//! restart when it returns.

use lameduck_testkit::{get, poll_until, post_json, Proxy};

use crate::{order_json, Store, SOON};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (postgresql): scripts/test runs it (LAMEDUCK_TEST_POSTGRES_URL)"]
async fn losing_postgres_gives_503_and_not_ready_then_recovers_by_itself() {
    let store = Store::postgres("faults").await;
    // Route the service's database connections through a proxy the test can cut.
    let url = store.args.last().expect("database url").clone();
    let (prefix, rest) = url.split_once('@').expect("url with credentials");
    let (hostport, db) = rest.split_once('/').expect("url with database");
    let upstream = tokio::net::lookup_host(hostport)
        .await
        .expect("resolve")
        .next()
        .expect("address");
    let proxy = Proxy::start(upstream).await.expect("proxy");
    let proxied = format!("{prefix}@{}/{db}", proxy.addr());
    let mut args: Vec<String> = store.args.clone();
    let n = args.len();
    args[n - 1] = proxied;
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = lameduck_testkit::Spawned::start(crate::BIN, &argv).expect("start");
    crate::wait_ready(&s).await;
    assert_eq!(
        post_json(s.http, "/orders", &[], &order_json("before"))
            .await
            .expect("create")
            .status(),
        201
    );

    proxy.cut();
    let unavailable = poll_until(SOON, || async {
        let res = post_json(s.http, "/orders", &[], &order_json("during"))
            .await
            .ok()?;
        (res.status() == 503).then_some(res)
    })
    .await
    .expect("503 while the database is gone");
    assert_eq!(unavailable.headers()["retry-after"], "1");
    assert!(String::from_utf8_lossy(unavailable.body()).contains("\"unavailable\""));
    let not_ready = poll_until(SOON, || async {
        (get(s.admin, "/readyz").await.ok()?.status() == 503).then_some(())
    })
    .await;
    assert!(
        not_ready.is_some(),
        "readiness fails while the database is gone"
    );
    assert_eq!(
        get(s.admin, "/livez").await.expect("livez").status(),
        200,
        "still alive"
    );

    proxy.restore();
    crate::wait_ready(&s).await;
    let back = poll_until(SOON, || async {
        let res = post_json(s.http, "/orders", &[], &order_json("after"))
            .await
            .ok()?;
        (res.status() == 201).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "orders are created again once the database is back"
    );
}
