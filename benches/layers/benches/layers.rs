//! The per-request cost of each lameduck layer on its own, around a handler that answers at
//! once, so that a regression in one layer shows on its own line:
//!
//! ```text
//! cd benches && CARGO_TARGET_DIR=../target cargo bench -p ld-layers
//! ```
//! Each iteration builds a request, calls the service, and drops the response (the layers'
//! guards end there). `none` is the handler alone; the rest add one layer each; `all`
//! stacks them in the server's order.

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body_util::Full;
use lameduck::in_flight::InFlight;
use lameduck::lifecycle::Lifecycle;
use lameduck::metrics::Metrics;
use lameduck::middleware::body_limit::BodyLimitLayer;
use lameduck::middleware::catch_panic::CatchPanicLayer;
use lameduck::middleware::drain::DrainAdmissionLayer;
use lameduck::middleware::in_flight::TrackInFlightLayer;
use lameduck::middleware::metrics::RecordMetricsLayer;
use lameduck::middleware::request_context::SetRequestContextLayer;
use lameduck::middleware::route::RouteLabelLayer;
use tower::{Layer, Service, ServiceExt};

async fn handler<B>(_: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"pong"))))
}

fn request() -> Request<Full<Bytes>> {
    Request::get("/ping")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// One request through `svc`, to completion; the response (and its body) dropped.
fn bench<S, B>(c: &mut Criterion, name: &str, svc: S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
{
    c.bench_function(name, |b| {
        b.iter(|| {
            let res = svc.clone().oneshot(request()).now_or_never();
            black_box(res.expect("ready at once").expect("infallible"));
        })
    });
}

fn layers(c: &mut Criterion) {
    let lc = Lifecycle::new();
    let base = tower::service_fn(handler::<Full<Bytes>>);
    bench(c, "none", base);
    bench(c, "catch_panic", CatchPanicLayer::new().layer(base));
    bench(
        c,
        "request_context",
        SetRequestContextLayer::new(lc.shutdown()).layer(base),
    );
    bench(
        c,
        "metrics",
        RecordMetricsLayer::new(Metrics::new()).layer(base),
    );
    bench(
        c,
        "in_flight",
        TrackInFlightLayer::new(InFlight::new()).layer(base),
    );
    bench(
        c,
        "drain_admission",
        DrainAdmissionLayer::new(lc.shutdown()).layer(base),
    );
    bench(c, "route_label", RouteLabelLayer::new().layer(base));
    let limited = tower::service_fn(handler::<http_body_util::Limited<Full<Bytes>>>);
    bench(c, "body_limit", BodyLimitLayer::new(1 << 20).layer(limited));
    let all = tower::ServiceBuilder::new()
        .layer(CatchPanicLayer::new())
        .layer(SetRequestContextLayer::new(lc.shutdown()))
        .layer(RecordMetricsLayer::new(Metrics::new()))
        .layer(TrackInFlightLayer::new(InFlight::new()))
        .layer(DrainAdmissionLayer::new(lc.shutdown()))
        .layer(BodyLimitLayer::new(1 << 20))
        .service(limited);
    bench(c, "all", all);
}

/// An axum router with and without route labels: the cost of `Router::layer` nesting.
fn router(c: &mut Criterion) {
    let plain: axum::Router =
        axum::Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
    let labelled = plain.clone().layer(RouteLabelLayer::new()).with_state(());
    let plain = plain.with_state(());
    let req = || {
        Request::get("/ping")
            .body(axum::body::Body::empty())
            .expect("request")
    };
    c.bench_function("axum_router", |b| {
        b.iter(|| black_box(plain.clone().oneshot(req()).now_or_never()))
    });
    c.bench_function("axum_router_route_label", |b| {
        b.iter(|| black_box(labelled.clone().oneshot(req()).now_or_never()))
    });
}

criterion_group!(benches, layers, router);
criterion_main!(benches);
