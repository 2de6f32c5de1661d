//! OpenTelemetry export to a real OTLP/HTTP endpoint started by the test: every request's
//! span arrives, the last ones before SIGTERM included; a collector that never answers
//! costs the export timeout at exit, no more.

use lameduck_testkit::Exit;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lameduck_testkit::connect_h1;
use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use crate::{start, SOON};

/// (trace id, span id, parent span id, name) of every span received, hex.
type Received = Arc<Mutex<Vec<(String, String, String, String)>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A minimal OTLP/HTTP trace receiver: decodes each protobuf export request.
async fn receiver() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut out = sink.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            out.push((
                                hex(&s.trace_id),
                                hex(&s.span_id),
                                hex(&s.parent_span_id),
                                s.name,
                            ));
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_requests_span_reaches_the_collector_including_the_last_before_sigterm() {
    let (collector, received) = receiver().await;
    let endpoint = format!("http://{collector}");
    let mut s = start(&["--otlp-endpoint", &endpoint]);
    let mut c = connect_h1(s.http).await.expect("connect");
    let mut sent = Vec::new();
    for i in 0..30u32 {
        let trace = format!("{:032x}", 0xabc0_0000u64 + u64::from(i));
        let tp = format!("00-{trace}-00f067aa0ba902b7-01");
        let res = c
            .get_with("/ping", &[("traceparent", &tp)])
            .await
            .expect("ping");
        assert_eq!(res.status(), 200);
        sent.push(trace);
    }
    // One request that starts its own trace: the exported span is the one its response names.
    let res = c.get("/ping").await.expect("ping");
    let own = res.headers()["traceparent"]
        .to_str()
        .expect("tp")
        .to_string();
    let own_trace = own.split('-').nth(1).expect("trace").to_string();
    let own_span = own.split('-').nth(2).expect("span").to_string();
    // Right away: these spans are still in the exporter's batch.
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(SOON).await, Exit::Exited(0));

    let spans = received.lock().unwrap().clone();
    for trace in &sent {
        let span = spans
            .iter()
            .find(|(t, _, _, name)| t == trace && name == "request")
            .unwrap_or_else(|| panic!("no span of trace {trace} among {} received", spans.len()));
        assert_eq!(span.2, "00f067aa0ba902b7", "a child of the caller's span");
    }
    assert!(
        spans
            .iter()
            .any(|(t, sp, parent, _)| *t == own_trace && *sp == own_span && parent.is_empty()),
        "the span {own} names was not exported as a root: {spans:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_the_export_timeout_and_no_more() {
    // Accepts connections and reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let endpoint = format!("http://{addr}");
    let mut s = start(&["--otlp-endpoint", &endpoint, "--otlp-timeout", "1s"]);
    let res = lameduck_testkit::get(s.http, "/ping").await.expect("ping");
    assert_eq!(res.status(), 200);
    let t0 = Instant::now();
    s.signal(Signal::SIGTERM);
    let code = s.wait_exit(SOON).await;
    let took = t0.elapsed();
    assert_eq!(
        code,
        Exit::Exited(3),
        "the export hook failed: an incomplete shutdown"
    );
    // The hook gives up at 1 s; the runtime then takes at most 1 s to drop the blocked
    // export thread.
    assert!(
        took < Duration::from_millis(3_000),
        "shutdown took {took:?}"
    );
    assert!(
        s.logs().iter().any(|l| l.contains("export-spans")),
        "the hook's failure is logged"
    );
    held.abort();
}
