//! A response body that carries a guard and drops it as soon as the body is finished.
//!
//! ```
//! use http_body_util::{BodyExt as _, Full};
//! use lameduck::in_flight::InFlight;
//! use lameduck::middleware::in_flight::TrackInFlightLayer;
//! use tower::{Layer as _, ServiceExt as _};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // TrackInFlightLayer answers with a GuardedBody: the request counts until its body ends.
//! let in_flight = InFlight::new();
//! let svc = TrackInFlightLayer::new(in_flight.clone()).layer(tower::service_fn(
//!     |_: http::Request<()>| async { Ok::<_, std::convert::Infallible>(
//!         http::Response::new(Full::new(bytes::Bytes::from_static(b"hi"))))
//!     },
//! ));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(in_flight.len(), 1);
//! let _ = res.into_body().collect().await;
//! assert_eq!(in_flight.len(), 0);
//! # }
//! ```

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A body wrapper that keeps `guard` alive until the body has been fully sent or dropped.
    ///
    /// The middleware of this crate use it to know when a response is really over (a
    /// streaming body can outlive its handler by hours).
    #[derive(Debug)]
    pub struct GuardedBody<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> GuardedBody<B, G> {
    pub(crate) fn new(inner: B, guard: Option<G>) -> Self {
        Self { inner, guard }
    }
}

impl<B: Body, G> Body for GuardedBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
