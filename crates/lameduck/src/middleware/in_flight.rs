//! In-flight tracking: how many requests are running and which ones.
//!
//! A request counts from the moment the layer sees it until its response body has been
//! sent in full (or the client went away). The live list feeds the abandoned-request report
//! when a shutdown passes its deadline.
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::middleware::in_flight::{InFlight, InFlightLayer};
//!
//! let in_flight = InFlight::new();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(InFlightLayer::new(in_flight.clone()));
//! assert_eq!(in_flight.len(), 0);
//! # let _ = app;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::GuardedBody;
use crate::lifecycle::{lock, AbandonedRequest};
use crate::middleware::request_context::{RequestContext, RequestId};

#[derive(Debug)]
struct Entry {
    method: Method,
    path: Option<PathAndQuery>,
    started: Instant,
    request_id: Option<RequestId>,
}

/// A slab: entries by index, with a free list. Insert and remove are O(1) without hashing;
/// this runs twice per request.
#[derive(Debug, Default)]
struct Slab {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
    len: usize,
}

impl Slab {
    fn insert(&mut self, e: Entry) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(e);
                i
            }
            None => {
                self.entries.push(Some(e));
                self.entries.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<Entry> {
        let e = self.entries.get_mut(i)?.take()?;
        self.len -= 1;
        self.free.push(i);
        Some(e)
    }
}

#[derive(Debug, Default)]
struct Registry {
    live: Mutex<Slab>,
}

/// The registry of requests in flight. Cheap to clone; clones share the registry.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    inner: Arc<Registry>,
}

impl InFlight {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many requests are in flight.
    pub fn len(&self) -> usize {
        lock(&self.inner.live).len
    }

    /// `true` when no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The requests in flight now, oldest first, as they would appear in a shutdown report.
    pub fn snapshot(&self) -> Vec<AbandonedRequest> {
        let now = Instant::now();
        let mut list: Vec<AbandonedRequest> = lock(&self.inner.live)
            .entries
            .iter()
            .flatten()
            .map(|e| AbandonedRequest {
                method: e.method.to_string(),
                path: e.path.as_ref().map_or("/", PathAndQuery::path).to_string(),
                age: now.saturating_duration_since(e.started),
                request_id: e.request_id.as_ref().map(|id| id.to_string()),
            })
            .collect();
        list.sort_by_key(|r| std::cmp::Reverse(r.age));
        list
    }

    fn begin<B>(&self, req: &Request<B>) -> InFlightGuard {
        let id = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.request_id().clone());
        self.begin_with(req, id, Instant::now())
    }

    /// Record `req` as in flight under `request_id` until the guard is dropped.
    pub(crate) fn begin_with<B>(
        &self,
        req: &Request<B>,
        request_id: Option<RequestId>,
        started: Instant,
    ) -> InFlightGuard {
        let entry = Entry {
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            started,
            request_id,
        };
        let id = lock(&self.inner.live).insert(entry);
        InFlightGuard {
            registry: self.inner.clone(),
            id,
        }
    }
}

/// Removes a request from the registry when dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    registry: Arc<Registry>,
    id: usize,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // Drop the entry (its Uri and id) outside the lock.
        let entry = lock(&self.registry.live).remove(self.id);
        drop(entry);
    }
}

/// Tracks requests in an [`InFlight`] registry. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct InFlightLayer {
    registry: InFlight,
}

impl InFlightLayer {
    /// A layer recording into `registry`.
    pub fn new(registry: InFlight) -> Self {
        Self { registry }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlightService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightService {
            inner,
            registry: self.registry.clone(),
        }
    }
}

/// The service of [`InFlightLayer`].
#[derive(Debug, Clone)]
pub struct InFlightService<S> {
    inner: S,
    registry: InFlight,
}

impl<S, B, ResB> Service<Request<B>> for InFlightService<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<GuardedBody<ResB, InFlightGuard>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let guard = self.registry.begin(&req);
        ResponseFuture {
            inner: self.inner.call(req),
            guard: Some(guard),
        }
    }
}

pin_project! {
    /// Response future of [`InFlightService`]. Dropping it (client gone) ends the request.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InFlightGuard>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<GuardedBody<ResB, InFlightGuard>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(res.map(|b| GuardedBody::new(b, guard))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_request_counts_until_its_body_is_sent() {
        let reg = InFlight::new();
        let svc =
            InFlightLayer::new(reg.clone()).layer(tower::service_fn(|_req: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                    bytes::Bytes::from_static(b"hi"),
                )))
            }));
        let req = Request::builder()
            .uri("/a?b=c")
            .method("POST")
            .body(())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        let snap = reg.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(
            (snap[0].method.as_str(), snap[0].path.as_str()),
            ("POST", "/a")
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hi");
        assert!(reg.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_request_future_is_no_longer_in_flight() {
        let reg = InFlight::new();
        let mut svc =
            InFlightLayer::new(reg.clone()).layer(tower::service_fn(|_req: Request<()>| async {
                std::future::pending::<Result<Response<()>, std::convert::Infallible>>().await
            }));
        let fut = svc.call(Request::new(()));
        assert_eq!(reg.len(), 1);
        drop(fut);
        assert_eq!(reg.len(), 0);
    }
}
