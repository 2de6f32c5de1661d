//! The access log and the log file: every answered request has its line on disk after
//! SIGTERM, and so does the shutdown report.

use lameduck_testkit::Exit;
use std::collections::HashSet;

use lameduck::server::ACCESS_LOG_TARGET;
use lameduck_testkit::connect_h1;
use nix::sys::signal::Signal;

use crate::{start, SOON};

const CONNS: usize = 8;
const PER_CONN: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_request_and_the_report_are_in_the_log_file_after_sigterm() {
    let dir = std::env::temp_dir().join(format!("lameduck-demo-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("demo.log");
    let _ = std::fs::remove_file(&path);
    let path_arg = path.to_str().expect("utf-8 path");
    let mut s = start(&["--access-log", "--log-file", path_arg]);
    let addr = s.http;
    let tasks: Vec<_> = (0..CONNS)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = connect_h1(addr).await.expect("connect");
                let mut ids = Vec::new();
                for _ in 0..PER_CONN {
                    let res = c.get("/ping").await.expect("ping");
                    assert_eq!(res.status(), 200);
                    let id = res.headers()["x-request-id"].to_str().expect("id");
                    ids.push(id.to_string());
                }
                ids
            })
        })
        .collect();
    let mut answered = HashSet::new();
    for t in tasks {
        answered.extend(t.await.expect("task"));
    }
    // Right after the burst: nothing has had time to reach the disk on its own.
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));

    let text = std::fs::read_to_string(&path).expect("log file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut logged = HashSet::new();
    for l in &lines {
        if l["target"] == ACCESS_LOG_TARGET {
            assert_eq!(l["route"], "/ping", "{l}");
            assert_eq!(l["status"], 200, "{l}");
            assert_eq!(l["method"], "GET", "{l}");
            assert_eq!(l["bytes"], 4, "{l}");
            assert_eq!(l["complete"], true, "{l}");
            assert!(l["latency_ms"].as_f64().is_some(), "{l}");
            assert!(l["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")));
            logged.insert(l["request_id"].as_str().expect("id").to_string());
        }
    }
    assert_eq!(answered.len(), CONNS * PER_CONN);
    let missing: Vec<_> = answered.difference(&logged).collect();
    assert!(
        missing.is_empty(),
        "{} answered requests have no access line",
        missing.len()
    );
    assert!(
        lines.iter().any(|l| l["message"] == "shutdown report"),
        "no shutdown report in the file"
    );
}

#[tokio::test]
async fn an_unwritable_log_file_is_a_one_line_start_up_error() {
    let out = std::process::Command::new(crate::BIN)
        .args([
            "--log-file",
            "/nonexistent-dir/demo.log",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent-dir/demo.log"), "{err}");
}

#[tokio::test]
async fn without_a_log_file_access_lines_are_tracing_events_on_stdout() {
    let s = start(&["--access-log"]);
    let res = lameduck_testkit::get(s.http, "/ping").await.expect("ping");
    let (line, v) = access_line_of(&s, &res).await;
    assert_eq!(v["route"], "/ping", "{line}");
    assert_eq!(v["status"], 200, "{line}");
}

/// The trace id of a `traceparent` value.
fn trace_id_of(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).expect("trace id field")
}

#[tokio::test]
async fn a_callers_trace_is_continued_and_logged_and_a_new_one_is_started_otherwise() {
    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let s = start(&["--access-log"]);
    let mut c = connect_h1(s.http).await.expect("connect");

    let res = c
        .get_with(
            "/ping",
            &[("traceparent", CALLER), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await
        .expect("ping");
    let tp = res.headers()["traceparent"]
        .to_str()
        .expect("traceparent")
        .to_string();
    assert_eq!(trace_id_of(&tp), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(tp, CALLER, "the server's span is a child with its own id");
    assert_eq!(res.headers()["tracestate"], "congo=t61rcWkgMzE");
    let (line, v) = access_line_of(&s, &res).await;
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{line}");

    let res = c.get("/ping").await.expect("ping");
    let tp = res.headers()["traceparent"]
        .to_str()
        .expect("traceparent")
        .to_string();
    let trace = trace_id_of(&tp).to_string();
    assert_eq!(tp.len(), 55, "{tp}");
    assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32));
    let (line, v) = access_line_of(&s, &res).await;
    assert_eq!(v["trace_id"], trace.as_str(), "{line}");
}

#[tokio::test]
async fn with_request_spans_a_handlers_log_line_carries_the_ids_of_its_access_line() {
    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let s = start(&["--access-log", "--request-spans"]);
    let mut c = connect_h1(s.http).await.expect("connect");
    for traceparent in [Some(CALLER), None] {
        let headers: Vec<(&str, &str)> = traceparent
            .map(|t| ("traceparent", t))
            .into_iter()
            .collect();
        let res = c.get_with("/work?ms=0", &headers).await.expect("work");
        assert_eq!(res.status(), 200);
        let (_, access) = access_line_of(&s, &res).await;
        let id = res.headers()["x-request-id"].to_str().expect("id");
        let line = s
            .wait_for_log(&["work done", id], SOON)
            .await
            .expect("the handler's line on stdout");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["span"]["name"], "request", "{line}");
        assert_eq!(v["span"]["request_id"], id, "{line}");
        assert_eq!(v["span"]["trace_id"], access["trace_id"], "{line}");
        if traceparent.is_some() {
            assert_eq!(access["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }
    // Without --request-spans, handler lines do not carry request ids.
    let s = start(&[]);
    let mut c = connect_h1(s.http).await.expect("connect");
    let res = c.get("/work?ms=0").await.expect("work");
    let line = s
        .wait_for_log(&["work done"], SOON)
        .await
        .expect("the handler's line on stdout");
    let id = res.headers()["x-request-id"].to_str().expect("id");
    assert!(!line.contains(id) && !line.contains("\"span\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_logs_its_progress_every_second() {
    let mut s = start(&[]);
    let addr = s.http;
    let slow = tokio::spawn(async move { lameduck_testkit::get(addr, "/work?ms=2500").await });
    crate::wait_in_flight(&s, 1).await;
    s.signal(Signal::SIGTERM);
    let line = s
        .wait_for_log(&["drain progress", "\"in_flight\":1"], SOON)
        .await
        .expect("a progress line while the request runs");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert!(
        v["left_ms"].as_u64().is_some_and(|ms| ms > 15_000),
        "{line}"
    );
    assert!(v["connections"].as_i64().is_some_and(|n| n >= 1), "{line}");
    assert_eq!(slow.await.expect("task").expect("response").status(), 200);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));
}

/// The access-log line (raw, and parsed) of the request `res` answered, from the demo's
/// stdout.
async fn access_line_of<B>(
    s: &lameduck_testkit::Spawned,
    res: &http::Response<B>,
) -> (String, serde_json::Value) {
    let id = res.headers()["x-request-id"].to_str().expect("id");
    let line = s
        .wait_for_log(&[ACCESS_LOG_TARGET, id], SOON)
        .await
        .expect("access line on stdout");
    let v = serde_json::from_str(&line).expect("json");
    (line, v)
}
