//! The admin listener's connections, under the same rules as the main listener's: a
//! request head must arrive within the header timeout (a slow or silent client is cut), an
//! idle keep-alive connection is closed after the idle timeout, and at most
//! `admin_max_connections` are open at once (further ones wait in the accept queue). The
//! built-in endpoints are [`Admin::answer`](crate::admin::Admin::answer); the application's
//! own admin routes (`Builder::admin_routes`) take the rest.

use std::convert::Infallible;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::conn::{self, ConnLimits, ConnState, TrackedIo};
use crate::admin::Admin;
use crate::body::GuardedBody;
use crate::lifecycle::{Lifecycle, Shutdown};

/// The largest admin request head: probes and scrapes send a few hundred bytes.
const ADMIN_MAX_HEADER_BYTES: usize = 8192;

/// What the admin listener answers: the built-in routes, then the application's.
#[derive(Debug, Clone)]
pub(super) struct Routes {
    pub(super) admin: Admin,
    #[cfg(feature = "axum")]
    pub(super) app: Option<axum::Router>,
}

type AdminBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, super::BoxError>;

impl Routes {
    async fn answer(&self, req: Request<Incoming>) -> http::Response<AdminBody> {
        use http_body_util::BodyExt as _;
        if let Some(res) = self.admin.answer(&req).await {
            return res.map(|b| b.map_err(|never| match never {}).boxed_unsync());
        }
        #[cfg(feature = "axum")]
        if let Some(app) = &self.app {
            use tower::ServiceExt as _;
            let res = match app.clone().oneshot(req.map(axum::body::Body::new)).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            return res.map(|b| b.map_err(Into::into).boxed_unsync());
        }
        self.admin
            .handle(req)
            .await
            .map(|b| b.map_err(|never| match never {}).boxed_unsync())
    }
}

/// Serve `routes` on `listener` until the task is dropped (the server aborts it at exit).
/// Its connections follow the serving rules throughout, also while the server drains:
/// probes must be answered until the process exits.
pub(super) async fn serve(
    listener: TcpListener,
    routes: Routes,
    limits: ConnLimits,
    max_connections: usize,
) {
    // A lifecycle of the admin listener's own, which never drains.
    let never_draining = Lifecycle::new();
    let shutdown = never_draining.shutdown();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The header timeout is lameduck's (see `connection_builder`).
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(2 * ADMIN_MAX_HEADER_BYTES);
    let builder = Arc::new(builder);
    // The admin listener stays open until the process exits: nothing stops its loop.
    super::accept::accept_loop(
        listener,
        Arc::new(Semaphore::new(max_connections)),
        CancellationToken::new(),
        Arc::new(AtomicBool::new(false)),
        move |stream, _, permit| {
            tokio::spawn(connection(
                builder.clone(),
                stream,
                permit,
                routes.clone(),
                limits,
                shutdown.clone(),
            ));
        },
    )
    .await;
}

async fn connection(
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    permit: Option<OwnedSemaphorePermit>,
    routes: Routes,
    limits: ConnLimits,
    shutdown: Shutdown,
) {
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(TrackedIo::new(
        stream,
        state.clone(),
        ADMIN_MAX_HEADER_BYTES,
    ));
    let conn_state = state.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        // The request counts on its connection until its response is sent.
        let (active, _) = conn_state.begin(req.version());
        let routes = routes.clone();
        async move {
            let res = routes.answer(req).await;
            Ok::<_, Infallible>(res.map(|b| GuardedBody::new(b, Some(active))))
        }
    });
    let conn = std::pin::pin!(builder.serve_connection(io, svc));
    let _ = conn::drive(conn, |c| c.graceful_shutdown(), &state, &shutdown, limits).await;
    drop(permit);
}
