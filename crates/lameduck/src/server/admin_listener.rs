//! The admin listener's connections, under the same rules as the main listener's: a
//! request head must arrive within the header timeout (a slow or silent client is cut), and
//! an idle keep-alive connection is closed after the idle timeout. At most
//! `admin_max_connections` are open at once, and the probes must get through whatever
//! holds the places: when they are all taken, a new connection **evicts the oldest one
//! that is not serving a request** (silent, sending its head slowly, or idle between
//! requests) once that one has had 20 ms to send its request, so connections that hold
//! places without asking anything cannot starve `/livez` and `/readyz`. Only when every place serves a request do new connections wait
//! in the accept queue. The built-in endpoints are
//! [`Admin::answer`](crate::admin::Admin::answer); the application's own admin routes
//! (`Builder::admin_routes`) take the rest.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
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

/// How long a new admin connection is safe from eviction: time to send its request.
const EVICT_AFTER: Duration = Duration::from_millis(20);

/// What [`Places::make_room`] found.
#[derive(Debug)]
enum Room {
    /// There is a place now.
    Made,
    /// The oldest connection that serves no request can be evicted at this instant.
    At(std::time::Instant),
    /// Every place serves a request.
    AllServing,
}

/// One open admin connection: its state (is it serving a request?) and how to cut it.
#[derive(Debug)]
struct Place {
    id: u64,
    state: Arc<ConnState>,
    evict: CancellationToken,
}

/// The open admin connections, oldest first.
#[derive(Debug, Default)]
struct Places {
    open: Mutex<VecDeque<Place>>,
    /// A place was given back.
    freed: Notify,
    /// The next connection's id.
    next_id: std::sync::atomic::AtomicU64,
}

impl Places {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Place>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Make room for one more connection under `max`, evicting the oldest connection that
    /// serves no request if all places are taken. A connection gets [`EVICT_AFTER`] from
    /// its accept to send its request before it can be evicted (a probe's request is
    /// there within a millisecond), so places change hands at most `max` times per
    /// `EVICT_AFTER` however fast evicted clients come back.
    fn make_room(&self, max: usize) -> Room {
        let mut open = self.lock();
        if open.len() < max {
            return Room::Made;
        }
        let Some(i) = open.iter().position(|p| !p.state.serving()) else {
            return Room::AllServing;
        };
        let evictable_at = open[i].state.born() + EVICT_AFTER;
        if evictable_at > std::time::Instant::now() {
            return Room::At(evictable_at);
        }
        if let Some(p) = open.remove(i) {
            p.evict.cancel();
        }
        Room::Made
    }

    fn add(&self, place: Place) {
        self.lock().push_back(place);
    }

    /// Take a place for a new connection (after [`make_room`](Self::make_room)): its seat,
    /// which gives the place back when dropped.
    fn seat(self: &Arc<Self>) -> Seat {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (state, evict) = (Arc::new(ConnState::new()), CancellationToken::new());
        self.add(Place {
            id,
            state: state.clone(),
            evict: evict.clone(),
        });
        Seat {
            id,
            state,
            evict,
            places: self.clone(),
        }
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|p| p.id != id);
        self.freed.notify_one();
    }
}

/// Serve `routes` on `listener` until the task is dropped/// Serve `routes` on `listener` until the task is dropped (the server aborts it at exit).
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
    let places = Arc::new(Places::default());
    let mut backoff = super::accept::MIN_BACKOFF;
    // The admin listener stays open until the process exits: nothing stops its loop.
    loop {
        // New connections wait in the accept queue until there is a place.
        loop {
            let freed = places.freed.notified();
            match places.make_room(max_connections) {
                Room::Made => break,
                Room::At(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.into()) => {}
                        _ = freed => {}
                    }
                }
                Room::AllServing => freed.await,
            }
        }
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if super::accept::is_per_connection(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "admin accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(super::accept::MAX_BACKOFF);
                continue;
            }
        };
        backoff = super::accept::MIN_BACKOFF;
        tokio::spawn(connection(
            builder.clone(),
            stream,
            peer,
            places.seat(),
            routes.clone(),
            limits,
            shutdown.clone(),
        ));
        // Let the new connection read what it has sent before the next accept can evict
        // it: a probe's request is usually in its socket already.
        tokio::task::yield_now().await;
    }
}

/// A connection's place, given back when its task ends.
struct Seat {
    id: u64,
    state: Arc<ConnState>,
    evict: CancellationToken,
    places: Arc<Places>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.places.remove(self.id);
    }
}

async fn connection(
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    seat: Seat,
    routes: Routes,
    limits: ConnLimits,
    shutdown: Shutdown,
) {
    let state = seat.state.clone();
    let io = TokioIo::new(TrackedIo::new(
        stream,
        state.clone(),
        ADMIN_MAX_HEADER_BYTES,
    ));
    let conn_state = state.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(crate::admin::AdminPeer(peer));
        // The request counts on its connection until its response is sent.
        let (active, _) = conn_state.begin(req.version());
        let routes = routes.clone();
        async move {
            let res = routes.answer(req).await;
            Ok::<_, Infallible>(res.map(|b| GuardedBody::new(b, Some(active))))
        }
    });
    let conn = std::pin::pin!(builder.serve_connection(io, svc));
    tokio::select! {
        _ = conn::drive(conn, |c| c.graceful_shutdown(), &state, &shutdown, limits) => {}
        // Evicted to make room: dropping the connection closes it.
        _ = seat.evict.cancelled() => {
            tracing::debug!("admin connection evicted: all places taken, and it served no request");
        }
    }
    drop(seat);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(places: &Places, id: u64, ago: Duration) -> (Arc<ConnState>, CancellationToken) {
        let state = Arc::new(ConnState::aged(ago));
        let evict = CancellationToken::new();
        places.add(Place {
            id,
            state: state.clone(),
            evict: evict.clone(),
        });
        (state, evict)
    }

    #[test]
    fn the_oldest_connection_serving_nothing_makes_room_once_past_its_grace() {
        let places = Places::default();
        assert!(matches!(places.make_room(3), Room::Made));
        let old = Duration::from_secs(5);
        let (busy, busy_cut) = place(&places, 1, old * 2);
        let _serving = busy.begin(http::Version::HTTP_11);
        let (_, idle_cut) = place(&places, 2, old);
        let (_, young_cut) = place(&places, 3, Duration::ZERO);
        // Full: the oldest is serving a request; the next oldest goes.
        assert!(matches!(places.make_room(3), Room::Made));
        assert!(idle_cut.is_cancelled() && !busy_cut.is_cancelled());
        places.remove(2);
        let (_, _) = place(&places, 4, Duration::ZERO);
        // Full again, and the only ones serving nothing are too young: wait for the first.
        match places.make_room(3) {
            Room::At(t) => assert!(t > std::time::Instant::now()),
            other => panic!("{other:?}"),
        }
        assert!(!young_cut.is_cancelled());
    }

    #[test]
    fn when_every_place_serves_a_request_new_connections_wait() {
        let places = Places::default();
        let (a, _) = place(&places, 1, Duration::from_secs(1));
        let _serving = a.begin(http::Version::HTTP_11);
        assert!(matches!(places.make_room(1), Room::AllServing));
        places.remove(1);
        assert!(matches!(places.make_room(1), Room::Made));
    }
}
