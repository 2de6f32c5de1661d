//! Server behaviour seen through a real socket.

use std::time::{Duration, Instant};

use axum::response::IntoResponse as _;
use axum::routing::get;
use axum::Router;
use lameduck::context::RequestContext;
use lameduck::lifecycle::Phase;
use lameduck::server::Server;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::{quick, run, SOON};

#[tokio::test]
async fn a_connection_that_never_sends_a_request_does_not_hold_the_drain() {
    let builder = quick()
        .shutdown_timeout(Duration::from_secs(30))
        .header_read_timeout(Duration::from_secs(1));
    let (addr, trigger, task) = run(builder, Router::new()).await;
    let _silent = TcpStream::connect(addr).await.expect("connect");
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    let t0 = Instant::now();
    trigger.drain();
    let report = tokio::time::timeout(SOON, task)
        .await
        .expect("exits")
        .expect("task");
    // The silent one goes after idle_grace; the half-sent head waits for its header timeout
    // (1 s here) at most, never for the 30 s deadline.
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "drain took {:?}",
        t0.elapsed()
    );
    assert!(!report.forced);
}

#[tokio::test]
async fn handlers_see_the_stop_soon_signal_and_the_deadline() {
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = started.clone();
    let app = Router::new().route(
        "/wait",
        get(|ctx: RequestContext| async move {
            notify.notify_one();
            assert!(ctx.deadline().is_none(), "no deadline while serving");
            ctx.shutdown().stop_soon().await;
            let left = ctx
                .deadline()
                .expect("deadline once draining")
                .saturating_duration_since(Instant::now());
            format!("{}", left.as_secs())
        }),
    );
    let (addr, trigger, task) = run(quick().shutdown_timeout(Duration::from_secs(20)), app).await;
    let req = tokio::spawn(async move { lameduck_get(addr, "/wait").await });
    tokio::time::timeout(SOON, started.notified())
        .await
        .expect("handler started");
    trigger.drain();
    let body = tokio::time::timeout(SOON, req)
        .await
        .expect("responds")
        .expect("task");
    assert!(
        body == "19" || body == "20",
        "deadline about 20 s away, got {body}"
    );
    let report = task.await.expect("task");
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test]
async fn phases_are_observable_in_order() {
    let server = Server::builder()
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            lameduck::lifecycle::Lifecycle::new(),
        )
        .await
        .expect("bind");
    let mut rx = server.shutdown().subscribe();
    let trigger = server.trigger();
    let task = tokio::spawn(server.serve(Router::new()));
    let mut seen = vec![*rx.borrow_and_update()];
    while rx.changed().await.is_ok() {
        let p = *rx.borrow_and_update();
        seen.push(p);
        if p == Phase::Serving {
            trigger.drain();
        }
        if p == Phase::Exited {
            break;
        }
    }
    let report = task.await.expect("task");
    assert_eq!(seen.first(), Some(&Phase::Starting));
    assert_eq!(seen.last(), Some(&Phase::Exited));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(
        report.phases.len(),
        4,
        "starting, serving, draining, stopping timed"
    );
}

#[tokio::test]
async fn invalid_limits_are_refused_with_a_clear_error() {
    let err = Server::builder()
        .max_header_bytes(100)
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            lameduck::lifecycle::Lifecycle::new(),
        )
        .await
        .expect_err("too small");
    assert!(err.to_string().contains("max_header_bytes"), "{err}");
}

async fn lameduck_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

/// A quick server bound on loopback with an admin listener: the server, its address, the
/// admin address and a trigger.
async fn with_admin() -> (
    Server,
    std::net::SocketAddr,
    std::net::SocketAddr,
    lameduck::lifecycle::Trigger,
) {
    let server = quick()
        .admin("127.0.0.1:0".parse().unwrap())
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            lameduck::lifecycle::Lifecycle::new(),
        )
        .await
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let admin = server.admin_addr().expect("admin").expect("admin addr");
    let trigger = server.trigger();
    (server, addr, admin, trigger)
}

#[tokio::test]
async fn handlers_and_metrics_see_the_route_template_not_the_raw_path() {
    let app = Router::new().route(
        "/items/{id}",
        get(|ctx: RequestContext| async move { ctx.route().unwrap_or("none").to_string() }),
    );
    let (server, addr, admin, trigger) = with_admin().await;
    let task = tokio::spawn(server.serve(app));
    assert_eq!(lameduck_get(addr, "/items/7").await, "/items/{id}");
    assert_eq!(lameduck_get(addr, "/items/8").await, "/items/{id}");
    let _ = lameduck_get(addr, "/nowhere").await;
    let metrics = lameduck_get(admin, "/metrics").await;
    assert!(
        metrics.contains(r#"lameduck_http_requests_total{route="/items/{id}",status="200"} 2"#),
        "{metrics}"
    );
    assert!(!metrics.contains("/items/7"), "{metrics}");
    trigger.drain();
    let _ = tokio::time::timeout(SOON, task).await.expect("exits");
}

#[tokio::test]
async fn served_routes_label_requests_from_their_table_before_the_handler_runs() {
    use axum::routing::post;
    use lameduck::middleware::route::Routes;

    let template = |ctx: RequestContext| async move { ctx.route().unwrap_or("none").to_string() };
    let routes = Routes::new()
        .route("/items/{id}", get(template))
        .merge(Routes::new().route("/items/{id}/tags/{*rest}", get(template)))
        // More methods on a path already added: still one template.
        .route("/items/{id}", post(template))
        .map_router(|r| r.fallback(template));
    let (server, addr, admin, trigger) = with_admin().await;
    let task = tokio::spawn(server.serve(routes));
    assert_eq!(lameduck_get(addr, "/items/7").await, "/items/{id}");
    assert_eq!(
        lameduck_get(addr, "/items/7/tags/a/b").await,
        "/items/{id}/tags/{*rest}"
    );
    // The fallback runs with no template: the request matched no route.
    assert_eq!(lameduck_get(addr, "/nowhere/1").await, "none");
    let put = raw_request(
        addr,
        b"PUT /items/9 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(String::from_utf8_lossy(&put).starts_with("HTTP/1.1 405"));
    let metrics = lameduck_get(admin, "/metrics").await;
    for series in [
        r#"lameduck_http_requests_total{route="/items/{id}",status="200"} 1"#,
        r#"lameduck_http_requests_total{route="/items/{id}",status="405"} 1"#,
        r#"lameduck_http_requests_total{route="/items/{id}/tags/{*rest}",status="200"} 1"#,
        r#"lameduck_http_requests_total{route="unmatched",status="200"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    assert!(!metrics.contains("/items/7"), "{metrics}");
    trigger.drain();
    let _ = tokio::time::timeout(SOON, task).await.expect("exits");
}

#[tokio::test]
async fn outgoing_calls_through_the_propagation_layer_carry_the_requests_trace() {
    use lameduck::middleware::propagate_trace::PropagateTraceLayer;
    use tower::{Layer, ServiceExt};

    // A stand-in for an HTTP client: answers with the traceparent it was sent.
    let client =
        PropagateTraceLayer::new().layer(tower::service_fn(|req: http::Request<()>| async move {
            Ok::<_, std::convert::Infallible>(
                req.headers()
                    .get("traceparent")
                    .map_or("none".to_string(), |v| v.to_str().unwrap().to_string()),
            )
        }));
    let outside = client
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(outside, "none", "no request, no trace");
    let app = Router::new().route(
        "/call",
        get(move || {
            let client = client.clone();
            async move { client.oneshot(http::Request::new(())).await.unwrap() }
        }),
    );
    let (addr, trigger, task) = run(quick(), app).await;
    let out = raw_request(
        addr,
        b"GET /call HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
          traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(
        body.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && body.len() == 55,
        "{text}"
    );
    assert!(
        !body.contains("00f067aa0ba902b7"),
        "the server's span, not the caller's"
    );
    let response_tp = text
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .expect("traceparent on the response");
    assert_eq!(response_tp, body, "the same span id as the response names");
    trigger.drain();
    let _ = tokio::time::timeout(SOON, task).await.expect("exits");
}

/// A writer collecting log output for assertions.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

// One thread: the subscriber set below is the thread's default, and the server's tasks run
// on this thread too.
#[tokio::test(flavor = "current_thread")]
async fn with_request_spans_every_handler_log_line_carries_the_request_and_trace_ids() {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(out.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let app = Router::new().route(
        "/logs",
        get(|| async {
            tracing::info!("handler was here");
            "ok"
        }),
    );
    let (addr, trigger, task) = run(
        quick().request_spans(lameduck::context::RequestSpans::Span),
        app,
    )
    .await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"GET /logs HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-request-id: req-42\r\n\
          traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = Vec::new();
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    trigger.drain();
    let _ = tokio::time::timeout(SOON, task).await.expect("exits");
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("handler was here"))
        .unwrap_or_else(|| panic!("no handler line in {text}"));
    assert!(line.contains(r#""request_id":"req-42""#), "{line}");
    assert!(
        line.contains(r#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736""#),
        "{line}"
    );
}

#[tokio::test]
async fn hook_durations_are_on_metrics_while_later_hooks_run() {
    use lameduck::hooks::HookPhase;
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let admin_slot = std::sync::Arc::new(std::sync::OnceLock::<std::net::SocketAddr>::new());
    let slot = admin_slot.clone();
    let server = quick()
        .admin("127.0.0.1:0".parse().unwrap())
        .hook(HookPhase::BeforeDrain, "deregister", SOON, || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(())
        })
        .hook(HookPhase::AfterDrain, "close-pool", SOON, || async {
            Err("pool refused to close".into())
        })
        .hook(HookPhase::Final, "scrape", SOON, move || async move {
            let admin = *slot.get().expect("admin address");
            let _ = tx.send(lameduck_get(admin, "/metrics").await);
            Ok(())
        })
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            lameduck::lifecycle::Lifecycle::new(),
        )
        .await
        .expect("bind");
    admin_slot
        .set(server.admin_addr().expect("admin").expect("addr"))
        .expect("once");
    let trigger = server.trigger();
    let task = tokio::spawn(server.serve(Router::new()));
    trigger.drain();
    let report = tokio::time::timeout(SOON, task)
        .await
        .expect("exits")
        .expect("task");
    assert_eq!(report.exit_code(), 3, "a hook failed");
    let metrics = tokio::time::timeout(SOON, rx)
        .await
        .expect("scraped")
        .expect("sent");
    let line = |hook: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("lameduck_hook_duration_seconds{") && l.contains(hook))
            .unwrap_or_else(|| panic!("no {hook} sample in {metrics}"))
            .to_string()
    };
    let dereg = line("deregister");
    assert!(
        dereg.contains(r#"phase="before_drain",status="ok""#),
        "{dereg}"
    );
    let secs: f64 = dereg.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(secs >= 0.02, "{dereg}");
    assert!(line("close-pool").contains(r#"status="failed""#));
    assert!(
        metrics.contains("lameduck_http_requests_abandoned_total 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("lameduck_drain_duration_seconds 0\n"),
        "drain recorded: {metrics}"
    );
}

#[tokio::test]
async fn a_hyper_util_client_behind_the_propagation_layer_sends_the_requests_trace() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use lameduck::middleware::propagate_trace::PropagateTraceLayer;
    use tower::{Layer, ServiceExt};

    // The upstream: answers with the traceparent it received.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    let echo = Router::new().route(
        "/echo",
        get(|headers: http::HeaderMap| async move {
            headers
                .get("traceparent")
                .map_or("none".to_string(), |v| v.to_str().unwrap().to_string())
        }),
    );
    tokio::spawn(async move { axum::serve(upstream, echo).await });

    let client = PropagateTraceLayer::new()
        .layer(Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>());
    let app = Router::new().route(
        "/call",
        get(move || {
            let client = client.clone();
            async move {
                let req = http::Request::get(format!("http://{upstream_addr}/echo"))
                    .body(Empty::new())
                    .unwrap();
                let res = client.oneshot(req).await.expect("upstream");
                let body = res.into_body().collect().await.expect("body").to_bytes();
                String::from_utf8(body.to_vec()).unwrap()
            }
        }),
    );
    let (addr, trigger, task) = run(quick(), app).await;
    let out = raw_request(
        addr,
        b"GET /call HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
          traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let response_tp = text
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .expect("traceparent on the response");
    assert!(
        body.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{text}"
    );
    assert_eq!(
        body, response_tp,
        "upstream saw this request's span as its parent"
    );
    trigger.drain();
    let _ = tokio::time::timeout(SOON, task).await.expect("exits");
}

/// Send `head` (a whole request, `connection: close`) on a new connection; everything the
/// server answers.
async fn raw_request(addr: std::net::SocketAddr, head: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn response_ids_can_be_turned_off() {
    let app = Router::new().route("/ping", get(|| async { "pong" }));
    for on in [true, false] {
        let (addr, trigger, task) = run(quick().response_ids(on), app.clone()).await;
        let out = raw_request(
            addr,
            b"GET /ping HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert_eq!(text.contains("x-request-id:"), on, "{text}");
        assert_eq!(text.contains("traceparent:"), on, "{text}");
        trigger.drain();
        let _ = tokio::time::timeout(SOON, task).await;
    }
}

#[tokio::test]
async fn the_application_adds_its_own_admin_routes_after_the_built_in_ones() {
    let extra = Router::new()
        .route("/hello", get(|| async { "hello from the app" }))
        .route("/livez", get(|| async { "shadowed" }));
    let server = quick()
        .admin("127.0.0.1:0".parse().unwrap())
        .admin_routes(extra)
        .bind(
            "127.0.0.1:0".parse().unwrap(),
            lameduck::lifecycle::Lifecycle::new(),
        )
        .await
        .expect("bind");
    let admin = server.admin_addr().expect("admin").expect("addr");
    let trigger = server.trigger();
    let task = tokio::spawn(server.serve(Router::new()));
    assert_eq!(lameduck_get(admin, "/hello").await, "hello from the app");
    assert!(
        lameduck_get(admin, "/livez").await.starts_with("alive"),
        "built-ins win"
    );
    trigger.drain();
    let _ = tokio::time::timeout(SOON, task).await;
}

/// The request id the server answered with (`x-request-id`) and the body, from a raw answer.
fn id_and_body(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or("")
        .to_string();
    (status, id, body.to_string())
}

/// Serve `app`, `GET path` once, drain: the answer's status, `x-request-id` and body.
async fn get_once(app: Router, path: &str) -> (u16, String, String) {
    let (addr, trigger, task) = run(quick(), app).await;
    let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let raw = raw_request(addr, head.as_bytes()).await;
    trigger.drain();
    let _ = tokio::time::timeout(SOON, task).await.expect("exits");
    id_and_body(&raw)
}

/// The rest of the stack on a task of its own (a common way to keep a handler running
/// after its client goes).
async fn on_own_task(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::spawn(next.run(req)).await {
        Ok(res) => res,
        Err(_) => http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A route that answers its request id.
fn id_route() -> Router {
    Router::new().route(
        "/id",
        get(|ctx: RequestContext| async move { ctx.request_id().to_string() }),
    )
}

#[tokio::test]
async fn a_handler_behind_a_middleware_that_spawns_the_rest_of_the_stack_gets_its_context() {
    let app = id_route().layer(axum::middleware::from_fn(on_own_task));
    let (status, id, body) = get_once(app, "/id").await;
    assert_eq!(status, 200, "{body}");
    assert!(!id.is_empty(), "no x-request-id");
    assert_eq!(body, id, "the handler saw the request's own context");
}

#[tokio::test]
async fn a_task_spawned_with_ctx_scope_sees_the_context_and_a_plain_spawn_does_not() {
    let app = Router::new().route(
        "/spawn",
        get(|ctx: RequestContext| async move {
            let id = |c: Option<RequestContext>| {
                c.map_or("none".to_string(), |c| c.request_id().to_string())
            };
            let scoped = tokio::spawn(ctx.scope(async move { id(RequestContext::current()) }));
            let plain = tokio::spawn(async move { id(RequestContext::current()) });
            let (scoped, plain) = (scoped.await, plain.await);
            format!(
                "{} {}",
                scoped.unwrap_or_default(),
                plain.unwrap_or_default()
            )
        }),
    );
    let (status, id, body) = get_once(app, "/spawn").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, format!("{id} none"));
}

#[tokio::test]
async fn a_request_rebuilt_without_its_context_gets_a_500_that_names_the_cause_and_the_fix() {
    // A middleware that rebuilds the request, dropping its extensions, and runs the rest on
    // a task of its own.
    let rebuild = |req: axum::extract::Request, next: axum::middleware::Next| async move {
        let (parts, body) = req.into_parts();
        let mut fresh = axum::extract::Request::new(body);
        *fresh.uri_mut() = parts.uri;
        on_own_task(fresh, next).await
    };
    let app = id_route().layer(axum::middleware::from_fn(rebuild));
    let (status, _, body) = get_once(app, "/id").await;
    assert_eq!(status, 500);
    assert_eq!(body, lameduck::context::NO_CONTEXT);
    assert!(
        body.contains("no RequestContext for this request") && body.contains("ctx.scope(...)"),
        "{body}"
    );
}

#[tokio::test]
async fn a_bind_error_prints_its_cause_once_down_the_chain() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = match quick()
        .bind(addr, lameduck::lifecycle::Lifecycle::new())
        .await
    {
        Ok(_) => panic!("bound a port that is taken"),
        Err(e) => e,
    };
    // The chain as `anyhow`'s `{:#}` prints it: each level's message, joined.
    let mut chain = vec![err.to_string()];
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    let text = chain.join(": ");
    assert_eq!(
        text.matches("in use").count(),
        1,
        "the OS error once: {text}"
    );
    assert_eq!(
        text.matches(&addr.to_string()).count(),
        1,
        "the address once: {text}"
    );
    assert!(
        text.starts_with("failed to bind HTTP listener on"),
        "{text}"
    );
}
