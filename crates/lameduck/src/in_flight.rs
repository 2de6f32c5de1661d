//! The requests in flight: how many are running and which ones.
//!
//! A request counts from the moment it is registered until its guard is dropped: with
//! lameduck's [`Server`](crate::server::Server) or
//! [`TrackInFlightLayer`](crate::middleware::in_flight::TrackInFlightLayer), when its
//! response body has been sent in full (or the client went away). The live list feeds the
//! abandoned-request report when a shutdown passes its deadline, and
//! [`Metrics`](crate::metrics::Metrics) shows the count.
//!
//! ```
//! use lameduck::in_flight::InFlight;
//!
//! let in_flight = InFlight::new();
//! assert!(in_flight.is_empty());
//! assert!(in_flight.snapshot().is_empty());
//! ```

use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Method, Request};

use crate::context::{RequestContext, RequestId};
use crate::lifecycle::AbandonedRequest;
use crate::sync::lock;

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

    /// Record `req` as in flight (under the id of its [`RequestContext`], if it has one)
    /// until the guard is dropped.
    pub(crate) fn begin<B>(&self, req: &Request<B>) -> InFlightGuard {
        let id = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.request_id().clone());
        self.begin_with(req, id, Instant::now()).0
    }

    /// Record `req` as in flight under `request_id` until the guard is dropped; also how
    /// many are in flight with it.
    pub(crate) fn begin_with<B>(
        &self,
        req: &Request<B>,
        request_id: Option<RequestId>,
        started: Instant,
    ) -> (InFlightGuard, usize) {
        let entry = Entry {
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            started,
            request_id,
        };
        let (id, len) = {
            let mut live = lock(&self.inner.live);
            let id = live.insert(entry);
            (id, live.len)
        };
        let guard = InFlightGuard {
            registry: self.inner.clone(),
            id,
        };
        (guard, len)
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
