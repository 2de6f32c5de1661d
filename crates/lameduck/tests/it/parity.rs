//! The server's fused per-request stack (`server/service.rs`) and the public layers stacked
//! on an axum Router in the same order answer the same requests alike: the same status, the
//! same headers lameduck sets, the same body, and the same metrics.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use lameduck::in_flight::InFlight;
use lameduck::lifecycle::{Lifecycle, Shutdown};
use lameduck::metrics::Metrics;
use lameduck::middleware::body_limit::BodyLimitLayer;
use lameduck::middleware::catch_panic::CatchPanicLayer;
use lameduck::middleware::drain::{DrainAdmissionLayer, DrainPolicy};
use lameduck::middleware::host::ValidateHostLayer;
use lameduck::middleware::in_flight::TrackInFlightLayer;
use lameduck::middleware::metrics::RecordMetricsLayer;
use lameduck::middleware::request_context::SetRequestContextLayer;
use lameduck::middleware::route::RouteLabelLayer;
use lameduck::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::SOON;

/// The body limit on both sides: small, so one write holds an oversized request.
const LIMIT: usize = 16;

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/panic", get(panics))
        .route("/orders/{id}", get(|| async { "order" }))
        .route(
            "/upload",
            post(|body: String| async move { body.len().to_string() }),
        )
}

async fn panics() -> &'static str {
    panic!("the parity test's handler panics on purpose")
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n")
}

/// A POST declaring one byte over the limit, its body not sent: the answer comes from the
/// head alone, and no unread byte turns the server's close into a reset.
fn oversized_post() -> String {
    format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        LIMIT + 1
    )
}

/// An answer as far as lameduck decides it.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// The headers compared, lower-case, sorted.
    headers: Vec<(String, String)>,
    /// Whether it carries `x-request-id` and `traceparent` (their values differ per request).
    has_ids: bool,
    body: String,
}

const COMPARED: [&str; 4] = [
    "connection",
    "content-length",
    "content-type",
    "retry-after",
];

/// Send `raw` on a new connection and read one answer (every answer here has a
/// `content-length`).
async fn send(addr: SocketAddr, raw: &str) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(SOON, s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(answer) = parse(&buf) {
            return answer;
        }
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
}

fn parse(buf: &[u8]) -> Option<Answer> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let all: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = all
        .iter()
        .find(|(k, _)| k == "content-length")?
        .1
        .parse()
        .ok()?;
    let body = body.get(..len)?.to_owned();
    let has_ids = ["x-request-id", "traceparent"]
        .iter()
        .all(|h| all.iter().any(|(k, _)| k == h));
    let mut headers: Vec<_> = all
        .into_iter()
        .filter(|(k, _)| COMPARED.contains(&k.as_str()))
        .collect();
    headers.sort();
    Some(Answer {
        status,
        headers,
        has_ids,
        body,
    })
}

/// One side of the comparison: where it listens, how to start its drain, its metrics.
struct Side {
    addr: SocketAddr,
    /// Where its metrics are rendered (the server's admin listener), or the registry.
    metrics: Result<SocketAddr, Metrics>,
    shutdown: Shutdown,
    task: JoinHandle<()>,
}

impl Side {
    async fn metrics_text(&self) -> String {
        match &self.metrics {
            Ok(admin) => send(*admin, &get_request("/metrics")).await.body,
            Err(m) => m.render(),
        }
    }
}

/// The public layers on the app, in the server's order (catch-panic around the application,
/// inside the others, so that a panic's 500 carries the ids and is counted), served by
/// hyper-util.
async fn layers(policy: DrainPolicy, lifecycle: &Lifecycle) -> Side {
    let sd = lifecycle.shutdown();
    let in_flight = InFlight::new();
    let metrics = Metrics::new().with_in_flight(in_flight.clone());
    let svc = tower::ServiceBuilder::new()
        .layer(SetRequestContextLayer::new(sd.clone()))
        .layer(RecordMetricsLayer::new(metrics.clone()))
        .layer(TrackInFlightLayer::new(in_flight))
        .layer(
            DrainAdmissionLayer::new(sd.clone())
                .policy(policy)
                .metrics(metrics.clone()),
        )
        .layer(ValidateHostLayer::new())
        .layer(BodyLimitLayer::new(LIMIT))
        .layer(CatchPanicLayer::new())
        .service(app().layer(RouteLabelLayer::new()).with_state(()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Side {
        addr,
        metrics: Err(metrics),
        shutdown: sd,
        task,
    }
}

/// lameduck's server on the app; its drain keeps accepting for a minute.
async fn server(policy: DrainPolicy) -> (Side, lameduck::lifecycle::Trigger) {
    let server = Server::builder()
        .drain_delay(Duration::from_secs(60))
        .drain_policy(policy)
        .body_limit(LIMIT)
        .admin("127.0.0.1:0".parse().expect("addr"))
        .bind("127.0.0.1:0".parse().expect("addr"), Lifecycle::new())
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let admin = server.admin_addr().expect("admin").expect("addr");
    let (shutdown, trigger) = (server.shutdown(), server.trigger());
    let task = tokio::spawn(async move {
        server.serve(app()).await;
    });
    let side = Side {
        addr,
        metrics: Ok(admin),
        shutdown,
        task,
    };
    (side, trigger)
}

/// The lines of `text` that count requests, by route and status (latencies differ).
fn counts(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            l.starts_with("lameduck_http_requests_total")
                || l.starts_with("lameduck_http_requests_rejected_total")
                || l.starts_with("lameduck_http_request_duration_seconds_count")
        })
        .collect()
}

/// The same requests to both sides; returns the server's answers.
async fn both(stack: &Side, server: &Side, requests: &[String]) -> Vec<Answer> {
    let mut answers = Vec::new();
    for raw in requests {
        let through_layers = send(stack.addr, raw).await;
        let through_server = send(server.addr, raw).await;
        assert_eq!(through_layers, through_server, "{raw:?}");
        assert!(through_server.has_ids, "{raw:?}: {through_server:?}");
        answers.push(through_server);
    }
    answers
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn the_server_answers_as_the_layers_on_an_axum_router_do() {
    for policy in [DrainPolicy::Serve, DrainPolicy::RejectAfter(Duration::ZERO)] {
        let lifecycle = Lifecycle::new();
        let stack = layers(policy, &lifecycle).await;
        let (server, trigger) = server(policy).await;
        let serving = [
            get_request("/ok"),
            get_request("/panic"),
            oversized_post(),
            get_request("/orders/7"),
            get_request("/nope"),
            "GET /ok HTTP/1.1\r\n\r\n".to_owned(),
        ];
        let answers = both(&stack, &server, &serving).await;
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [200, 500, 413, 200, 404, 400]);
        assert!(answers[5].body.contains(r#""code":"bad_request""#));
        assert!(answers[1].body.contains(r#""code":"internal""#));
        assert!(answers[2].body.contains(r#""code":"payload_too_large""#));
        assert_eq!(header(&answers[2], "connection"), Some("close"));
        assert_eq!(header(&answers[0], "connection"), None);

        lifecycle.begin_drain(Duration::from_secs(60));
        trigger.drain();
        tokio::time::timeout(SOON, server.shutdown.stop_soon())
            .await
            .expect("the server drains");
        assert!(stack.shutdown.is_draining());
        let draining = [get_request("/ok"), get_request("/orders/8")];
        let answers = both(&stack, &server, &draining).await;
        for a in &answers {
            assert_eq!(header(a, "connection"), Some("close"), "{a:?}");
            match policy {
                DrainPolicy::Serve => assert_eq!(a.status, 200, "{a:?}"),
                _ => {
                    assert_eq!(a.status, 503, "{a:?}");
                    assert!(a.body.contains(r#""code":"draining""#), "{a:?}");
                    assert_eq!(header(a, "retry-after"), Some("1"), "{a:?}");
                }
            }
        }

        let (layers_text, server_text) = (stack.metrics_text().await, server.metrics_text().await);
        assert_eq!(counts(&layers_text), counts(&server_text), "{policy:?}");
        let orders = r#"lameduck_http_requests_total{route="/orders/{id}",status="#;
        assert!(server_text.contains(orders), "{server_text}");
        assert!(
            server_text.contains(r#"route="unmatched",status="404""#),
            "{server_text}"
        );
        stack.task.abort();
        server.task.abort();
    }
}
