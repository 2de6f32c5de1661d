//! The response future of a layer that either calls its inner service or answers at once
//! ([`DrainAdmission`](super::drain::DrainAdmission),
//! [`ValidateHost`](super::host::ValidateHost), [`BodyLimit`](super::body_limit::BodyLimit)):
//! the body stays unboxed, `Either<inner body, Full<Bytes>>`.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;

pin_project! {
    /// The inner service's response future, or an answer made up front.
    #[derive(Debug)]
    pub struct EarlyOr<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, B> {
        Inner { #[pin] fut: F },
        Early { res: Option<Response<Either<B, Full<Bytes>>>> },
    }
}

impl<F, B> EarlyOr<F, B> {
    /// Wait for the inner service's response.
    pub(crate) fn inner(fut: F) -> Self {
        Self {
            kind: Kind::Inner { fut },
        }
    }

    /// Answer `res` without the inner service.
    pub(crate) fn early(res: Response<Either<B, Full<Bytes>>>) -> Self {
        Self {
            kind: Kind::Early { res: Some(res) },
        }
    }
}

impl<F, B, E> Future for EarlyOr<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Either<B, Full<Bytes>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => Poll::Ready(Ok(ready!(fut.poll(cx))?.map(Either::Left))),
            KindProj::Early { res } => match res.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
        }
    }
}
