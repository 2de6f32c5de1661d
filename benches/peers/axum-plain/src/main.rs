//! Plain axum: `axum::serve(...).with_graceful_shutdown(...)` on SIGTERM/SIGINT, as axum's
//! graceful-shutdown example teaches (with a 30 s timeout around it).
//! The same routes as lameduck-demo, so that both routers match a path in the same tree:
//! `/ping`, `/work?ms=N`, `/events` (server-sent events, one a second), `/panic` and
//! `POST /upload`. Flags: `--listen ADDR`, and
//! `--access-log PATH` for the access-log comparison, configured like lameduck's access
//! log: tower-http's `TraceLayer` (with its request-id layers) writing one JSON line per
//! request with the fields lameduck's line has (method, route, status, latency, client,
//! request id) through `tracing-appender`'s non-blocking writer. Request ids come from a
//! per-process prefix and a counter, as lameduck makes them (not a UUID v4), and the line
//! carries the request's span fields once (no list of every span).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream};
use tokio::signal::unix::{signal, SignalKind};

async fn work(Query(q): Query<HashMap<String, String>>) -> (StatusCode, &'static str) {
    match q.get("ms").and_then(|v| v.parse::<u64>().ok()) {
        Some(ms) if ms <= 600_000 => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, "done")
        }
        _ => (StatusCode::BAD_REQUEST, "bad ms"),
    }
}

async fn events() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let tick = tokio::time::interval(Duration::from_secs(1));
    Sse::new(stream::unfold((tick, 0u64), |(mut tick, n)| async move {
        tick.tick().await;
        Some((Ok(Event::default().data(n.to_string())), (tick, n + 1)))
    }))
}

async fn panics() -> &'static str {
    panic!("the /panic route panics on purpose")
}

async fn upload(body: axum::body::Bytes) -> String {
    format!("received {} bytes", body.len())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening http={}", listener.local_addr()?);
    let app = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/work", get(work))
        .route("/events", get(events))
        .route("/panic", get(panics))
        .route("/upload", axum::routing::post(upload));
    let log_path = std::env::args().skip_while(|a| a != "--access-log").nth(1);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async move {
        let _ = rx.await;
    };
    let mut _log_guard = None;
    let server = match log_path {
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }),
        Some(path) => {
            let (app, guard) = traced(app, &path)?;
            _log_guard = Some(guard);
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            })
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = tx.send(());
    match tokio::time::timeout(Duration::from_secs(30), server).await {
        Ok(r) => r??,
        Err(_) => eprintln!("timed out"),
    }
    Ok(())
}

fn traced(
    app: Router,
    path: &str,
) -> Result<(Router, tracing_appender::non_blocking::WorkerGuard), Box<dyn std::error::Error>> {
    use axum::extract::{ConnectInfo, MatchedPath};
    use axum::http::{HeaderName, Request, Response};
    use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::TraceLayer;

    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(file);
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer)
        .init();
    let x_request_id = HeaderName::from_static("x-request-id");
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &Request<_>| {
            let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("unmatched");
            let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), route, client = client.map(tracing::field::display), request_id = id)
        })
        .on_request(())
        .on_response(|res: &Response<_>, latency: Duration, _span: &tracing::Span| {
            tracing::info!(status = res.status().as_u16(), latency_ms = latency.as_secs_f64() * 1e3, "request");
        });
    let app = app
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(trace)
        .layer(SetRequestIdLayer::new(x_request_id, CounterIds::new()));
    Ok((app, guard))
}

/// Request ids as lameduck makes them: a per-process prefix (start time and pid, in hex)
/// and a counter, such as `6743a1b2c3d4-1f`.
#[derive(Clone)]
struct CounterIds {
    prefix: std::sync::Arc<str>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CounterIds {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seed = ((nanos >> 16) << 16) | u64::from(std::process::id() as u16);
        Self {
            prefix: format!("{:012x}", seed & 0xffff_ffff_ffff).into(),
            next: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }
}

impl tower_http::request_id::MakeRequestId for CounterIds {
    fn make_request_id<B>(
        &mut self,
        _: &axum::http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n:x}", self.prefix);
        axum::http::HeaderValue::from_str(&id)
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}
