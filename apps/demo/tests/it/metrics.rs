//! `/metrics` read with a Prometheus text parser: it parses, and its counters match the
//! requests sent.

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
