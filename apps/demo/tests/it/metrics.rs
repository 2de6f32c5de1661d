//! `/metrics` read with a Prometheus text parser: it parses, and its counters match the
//! requests sent.

use lameduck_testkit::Exit;
use lameduck_testkit::{connect_h1, get};
use prometheus_parse::{Scrape, Value};

use crate::start;

const PINGS: usize = 37;
const BAD: usize = 5;
const UNKNOWN: usize = 3;

fn sample<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Value> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| &s.value)
}

fn number(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::Counter(n) | Value::Gauge(n) | Value::Untyped(n)) => *n,
        other => panic!("not a number: {other:?}"),
    }
}

#[tokio::test]
async fn metrics_parse_and_count_every_request_by_route_template_and_status() {
    let s = start(&[]);
    let mut c = connect_h1(s.http).await.expect("connect");
    for _ in 0..PINGS {
        assert_eq!(c.get("/ping").await.expect("ping").status(), 200);
    }
    for _ in 0..BAD {
        assert_eq!(c.get("/work?ms=abc").await.expect("work").status(), 400);
    }
    for i in 0..UNKNOWN {
        let res = c.get(&format!("/nowhere/{i}")).await.expect("404");
        assert_eq!(res.status(), 404);
    }
    let res = get(s.admin, "/metrics").await.expect("metrics");
    assert_eq!(res.status(), 200);
    let text = std::str::from_utf8(res.body()).expect("utf-8");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = Scrape::parse(lines).expect("valid Prometheus text");

    let total = "lameduck_http_requests_total";
    assert_eq!(
        number(sample(
            &scrape,
            total,
            &[("route", "/ping"), ("status", "200")]
        )),
        PINGS as f64
    );
    assert_eq!(
        number(sample(
            &scrape,
            total,
            &[("route", "/work"), ("status", "400")]
        )),
        BAD as f64
    );
    assert_eq!(
        number(sample(
            &scrape,
            total,
            &[("route", "unmatched"), ("status", "404")]
        )),
        UNKNOWN as f64,
        "unknown paths share one label: no series per raw path"
    );
    assert!(!text.contains("/nowhere"), "raw paths never become labels");
    match sample(
        &scrape,
        "lameduck_http_request_duration_seconds",
        &[("route", "/ping")],
    ) {
        Some(Value::Histogram(buckets)) => {
            let inf = buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("+Inf bucket");
            assert_eq!(inf.count, PINGS as f64);
            assert!(
                buckets.windows(2).all(|w| w[0].count <= w[1].count),
                "cumulative"
            );
        }
        other => panic!("no /ping histogram: {other:?}"),
    }
    assert_eq!(
        number(sample(&scrape, "lameduck_http_requests_in_flight", &[])),
        0.0
    );
    assert_eq!(
        number(sample(&scrape, "lameduck_http_connections_open", &[])),
        1.0
    );
    assert_eq!(
        number(sample(&scrape, "lameduck_phase", &[("phase", "serving")])),
        1.0
    );
    assert_eq!(
        number(sample(&scrape, "lameduck_phase", &[("phase", "draining")])),
        0.0
    );
}

/// A forced shutdown cannot be scraped from the process that had it: it records its outcome
/// in the state file and the next process exports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_process_exports_a_forced_shutdown_and_its_abandoned_request() {
    use nix::sys::signal::Signal;
    let dir = std::env::temp_dir().join(format!("ld-demo-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("state");
    let state_arg = state.to_str().expect("utf-8 path");
    let mut s = start(&["--state-file", state_arg, "--shutdown-timeout", "300ms"]);
    let scrape = |s: &lameduck_testkit::Spawned| {
        let admin = s.admin;
        async move {
            let res = get(admin, "/metrics").await.expect("metrics");
            let text = String::from_utf8_lossy(res.body()).into_owned();
            Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid")
        }
    };
    // The first process has no previous one.
    let first = scrape(&s).await;
    assert!(sample(&first, "lameduck_previous_shutdown", &[]).is_none());
    let mut c = connect_h1(s.http).await.expect("connect");
    let stuck = tokio::spawn(async move { c.get("/work?ms=60000").await });
    crate::wait_in_flight(&s, 1).await;
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(crate::SOON).await, Exit::Exited(3));
    let _ = stuck.await;

    let s2 = start(&["--state-file", state_arg]);
    let second = scrape(&s2).await;
    for (outcome, want) in [
        ("clean", 0.0),
        ("forced", 1.0),
        ("hook_failed", 0.0),
        ("killed", 0.0),
    ] {
        assert_eq!(
            number(sample(
                &second,
                "lameduck_previous_shutdown",
                &[("outcome", outcome)]
            )),
            want,
            "{outcome}"
        );
    }
    assert_eq!(
        number(sample(
            &second,
            "lameduck_previous_shutdown_abandoned_requests",
            &[]
        )),
        1.0
    );
    let at = number(sample(
        &second,
        "lameduck_previous_shutdown_timestamp_seconds",
        &[],
    ));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!((now - at).abs() < 120.0, "recorded at {at}, now {now}");
    drop(s2);
    let _ = std::fs::remove_dir_all(&dir);
}
