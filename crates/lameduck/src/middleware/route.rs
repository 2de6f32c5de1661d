//! Route labels for axum: the matched route template, where
//! [`RecordMetricsLayer`](crate::middleware::metrics::RecordMetricsLayer), the server's
//! metrics and access logs read it: in the request's [`RequestContext`] when there is one
//! (in the request extensions, or the current one under lameduck's server; see
//! [`RequestContext::route`]), else in the response extensions.
//!
//! [`Server::serve`](crate::server::Server::serve) takes either:
//! - [`Routes`]: an axum `Router` that keeps a table of its templates, so that the server
//!   matches each request's path once, with axum's own matcher, before the handler runs.
//!   This is the cheaper one: about 300 instructions per request against about 1,300 for
//!   the layer (`benches/instructions`);
//! - or a whole `Router`, which the server serves with [`RouteLabelLayer`] on every route
//!   (axum only knows the matched route inside its routing). axum wraps every route in it
//!   once more, and clones and boxes on every request, which is where its cost goes. The
//!   layer also works under any other server.
//!
//! ```
//! use axum::{routing::get, Router};
//! let app: Router = Router::new()
//!     .route("/orders/{id}", get(|| async { "order" }))
//!     .layer(lameduck::middleware::route::RouteLabelLayer::new());
//! # let _ = app;
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::MatchedPath;
use axum::routing::MethodRouter;
use axum::Router;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::context::RequestContext;
use crate::metrics::{Metrics, RouteHandle};

/// Records [`MatchedPath`] in the [`RequestContext`], or copies it to the response
/// extensions when the request has no context.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteLabelLayer;

impl RouteLabelLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for RouteLabelLayer {
    type Service = RouteLabel<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteLabel { inner }
    }
}

/// The service of [`RouteLabelLayer`].
#[derive(Debug, Clone)]
pub struct RouteLabel<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<B>> for RouteLabel<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut path = req.extensions().get::<MatchedPath>().cloned();
        if path.is_some() {
            let mut record = |ctx: &RequestContext| {
                if let Some(p) = path.take() {
                    ctx.set_matched_path(p);
                }
            };
            match req.extensions().get::<RequestContext>() {
                Some(ctx) => record(ctx),
                None => {
                    RequestContext::with_current(record);
                }
            }
        }
        ResponseFuture {
            inner: self.inner.call(req),
            path,
        }
    }
}

pin_project! {
    /// Response future of [`RouteLabel`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        path: Option<MatchedPath>,
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = ready!(this.inner.poll(cx))?;
        if let Some(path) = this.path.take() {
            res.extensions_mut().insert(path);
        }
        Poll::Ready(Ok(res))
    }
}

/// An axum [`Router`] that keeps the templates of the routes it is given, so that
/// lameduck's server labels each request by one lookup of its path (with `matchit`, the
/// matcher axum itself uses) instead of wrapping every route. Serve it with
/// [`Server::serve`](crate::server::Server::serve).
///
/// Only the routes added with [`route`](Self::route) (here or in a [merged](Self::merge)
/// `Routes`) are in the table; a route added to the router another way (through
/// [`map_router`](Self::map_router), or a nested router) is labelled `unmatched`, like a
/// request no route matched.
///
/// Like `Router<S>`, `Routes<S>` is missing a state of type `S` until
/// [`with_state`](Self::with_state) gives it; the server serves `Routes<()>`.
///
/// ```
/// use axum::extract::State;
/// use axum::routing::{get, post};
/// use lameduck::middleware::route::Routes;
///
/// let routes: Routes = Routes::new()
///     .route("/orders", post(|| async { "created" }))
///     .route("/orders/{id}", get(|State(shop): State<&'static str>| async move { shop }))
///     .map_router(|r| r.fallback(|| async { "nothing here" }))
///     .with_state("the shop");
/// assert_eq!(routes.template("/orders/7"), Some("/orders/{id}"));
/// assert_eq!(routes.template("/elsewhere"), None);
/// ```
#[derive(Clone)]
pub struct Routes<S = ()> {
    router: Router<S>,
    templates: RouteTemplates,
    /// Made from a whole `Router` (`From<Router>`): its routes are labelled by
    /// [`RouteLabelLayer`] instead of the table.
    by_layer: bool,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self {
            router: Router::new(),
            templates: RouteTemplates::default(),
            by_layer: false,
        }
    }
}

impl<S> fmt::Debug for Routes<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routes")
            .field("templates", &self.templates.list)
            .finish_non_exhaustive()
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a route, as [`Router::route`] does (which panics on a path axum refuses, or one
    /// that conflicts with an earlier route), and its template to the table. Adding methods
    /// to a path already added keeps one template.
    #[must_use]
    pub fn route(mut self, path: &str, method_router: MethodRouter<S>) -> Self {
        self.router = self.router.route(path, method_router);
        self.templates.insert(path);
        self
    }

    /// Merge the routes and templates of `other`, as [`Router::merge`] does.
    #[must_use]
    pub fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        for path in &other.templates.list {
            self.templates.insert(path);
        }
        self.by_layer |= other.by_layer;
        self
    }

    /// Change the router another way: layers, fallbacks. Routes added here are not in the
    /// table (see the type's docs).
    #[must_use]
    pub fn map_router(mut self, f: impl FnOnce(Router<S>) -> Router<S>) -> Self {
        self.router = f(self.router);
        self
    }

    /// Give the routes their state, as [`Router::with_state`] does.
    pub fn with_state<S2>(self, state: S) -> Routes<S2> {
        Routes {
            router: self.router.with_state(state),
            templates: self.templates,
            by_layer: self.by_layer,
        }
    }

    /// The template a request for `path` matches, if any.
    pub fn template(&self, path: &str) -> Option<&str> {
        self.templates.find(path).map(|t| &**t)
    }
}

impl Routes {
    /// The router, labelled by [`RouteLabelLayer`] when it came whole (`From<Router>`), and
    /// the template table (`None` when empty).
    pub(crate) fn into_parts(self) -> (Router, Option<RouteTemplates>) {
        let router = if self.by_layer {
            self.router.layer(RouteLabelLayer::new())
        } else {
            self.router
        };
        let templates = (!self.templates.list.is_empty()).then_some(self.templates);
        (router, templates)
    }
}

/// A whole `Router`, whose routes the table cannot know: served with [`RouteLabelLayer`]
/// on every route (about 1,000 instructions per request more than routes added with
/// [`Routes::route`]).
impl<S: Clone + Send + Sync + 'static> From<Router<S>> for Routes<S> {
    fn from(router: Router<S>) -> Self {
        Self {
            router,
            templates: RouteTemplates::default(),
            by_layer: true,
        }
    }
}

/// The template table of [`Routes`]: the matcher gives a template's index in `list`.
#[derive(Clone, Default)]
pub(crate) struct RouteTemplates {
    matcher: matchit::Router<usize>,
    list: Vec<Arc<str>>,
}

impl fmt::Debug for RouteTemplates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.list).finish()
    }
}

impl RouteTemplates {
    fn insert(&mut self, path: &str) {
        if self.list.iter().any(|p| &**p == path) {
            return;
        }
        // axum accepted the path with the same matcher, so this succeeds; a refusal would
        // leave the route labelled `unmatched`, never panic.
        if self.matcher.insert(path, self.list.len()).is_ok() {
            self.list.push(Arc::from(path));
        }
    }

    /// The template `path` matches.
    fn find(&self, path: &str) -> Option<&Arc<str>> {
        self.list.get(*self.matcher.at(path).ok()?.value)
    }

    /// The server's table: the same matcher, each template with its metrics handle.
    pub(crate) fn bind(&self, metrics: &Metrics) -> RouteTable {
        RouteTable {
            matcher: self.matcher.clone(),
            routes: self
                .list
                .iter()
                .map(|t| metrics.route_handle(t.clone()))
                .collect(),
        }
    }
}

/// The route table a server matches each request against: an index into its routes, each
/// with the handle that records its metrics.
#[derive(Debug)]
pub(crate) struct RouteTable {
    matcher: matchit::Router<usize>,
    routes: Vec<RouteHandle>,
}

impl RouteTable {
    /// The route `path` matches, as an index.
    #[inline]
    pub(crate) fn find(&self, path: &str) -> Option<usize> {
        self.matcher.at(path).ok().map(|m| *m.value)
    }

    /// The route at `index` (from [`find`](Self::find)).
    #[inline]
    pub(crate) fn get(&self, index: usize) -> Option<&RouteHandle> {
        self.routes.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;
    use crate::metrics::Metrics;
    use crate::middleware::metrics::RecordMetricsLayer;
    use crate::middleware::request_context::SetRequestContextLayer;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn hit(app: axum::Router, path: &str) {
        let req = Request::builder().uri(path).body(axum::body::Body::empty());
        let res = app.oneshot(req.unwrap()).await.unwrap();
        assert!(res.status().is_success() || res.status() == 404);
    }

    #[tokio::test]
    async fn the_template_reaches_metrics_with_and_without_a_request_context() {
        let lc = Lifecycle::new();
        for with_context in [true, false] {
            let metrics = Metrics::new();
            let routes = axum::Router::new()
                .route("/orders/{id}", get(|| async { "order" }))
                .layer(RouteLabelLayer::new());
            let app = if with_context {
                routes
                    .layer(RecordMetricsLayer::new(metrics.clone()))
                    .layer(SetRequestContextLayer::new(lc.shutdown()))
            } else {
                routes.layer(RecordMetricsLayer::new(metrics.clone()))
            };
            hit(app.clone(), "/orders/1").await;
            hit(app, "/orders/2").await;
            let text = metrics.render();
            assert!(
                text.contains(
                    r#"lameduck_http_requests_total{route="/orders/{id}",status="200"} 2"#
                ),
                "context {with_context}: {text}"
            );
        }
    }
}
