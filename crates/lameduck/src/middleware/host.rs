//! `Host` checks for HTTP/1.1 (RFC 9112, section 3.2): a request without `Host`, with more
//! than one, or with one that is not a valid `host[:port]` is answered 400 with code
//! `bad_request` (and `Connection: close`). HTTP/1.0 may leave `Host` out; HTTP/2 carries
//! `:authority` instead and is not checked. An empty `Host` is valid (the RFC asks for one
//! when the target has no authority).
//!
//! ```
//! use axum::{routing::get, Router};
//! use lameduck::middleware::host::ValidateHostLayer;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "ok" }))
//!     .layer(ValidateHostLayer::new());
//! # let _ = app;
//! ```

use std::cell::Cell;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use tower::{Layer, Service};

use crate::error_response::error_response;
use crate::middleware::drain::mark_connection_close;

/// Answers HTTP/1.1 requests with a missing, repeated or invalid `Host` with 400. See the
/// [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidateHostLayer;

impl ValidateHostLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for ValidateHostLayer {
    type Service = ValidateHost<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ValidateHost { inner }
    }
}

/// The service of [`ValidateHostLayer`].
#[derive(Debug, Clone)]
pub struct ValidateHost<S> {
    inner: S,
}

/// Response future of [`ValidateHost`].
pub type ResponseFuture<F, B> = super::early::EarlyOr<F, B>;

impl<S, B, ResB> Service<Request<B>> for ValidateHost<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<Either<ResB, Full<Bytes>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match host_problem(&req) {
            Some(why) => ResponseFuture::early(bad_request(why, req.version())),
            None => ResponseFuture::inner(self.inner.call(req)),
        }
    }
}

/// The layer's step: what is wrong with an HTTP/1.1 request's `Host`, if anything.
#[inline]
pub(crate) fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (host, more) = (hosts.next(), hosts.next().is_some());
    check(req.version(), host, more, |host| {
        valid_host(host.as_bytes())
    })
}

/// [`host_problem`] for the requests of one connection: a `Host` equal to the last valid
/// one in `last_valid` is valid without another scan (clients send the same one each time).
#[inline]
pub(crate) fn host_problem_on(
    version: Version,
    host: Option<&HeaderValue>,
    more_than_one: bool,
    last_valid: &LastValidHost,
) -> Option<&'static str> {
    check(version, host, more_than_one, |host| {
        let host = host.as_bytes();
        let (len, bytes) = last_valid.0.get();
        if usize::from(len) == host.len() && !host.is_empty() && bytes[..host.len()] == *host {
            return true;
        }
        let valid = valid_host(host);
        if valid && host.len() <= LAST_HOST_MAX {
            let mut copy = [0u8; LAST_HOST_MAX];
            copy[..host.len()].copy_from_slice(host);
            last_valid.0.set((host.len() as u8, copy));
        }
        valid
    })
}

/// The longest `Host` a connection remembers (longer ones are checked every time).
const LAST_HOST_MAX: usize = 47;

/// The last valid `Host` on a connection (see [`host_problem_on`]), copied: holding the
/// request's own bytes would keep hyper's read buffer alive. A clone starts empty.
pub(crate) struct LastValidHost(Cell<(u8, [u8; LAST_HOST_MAX])>);

impl Default for LastValidHost {
    fn default() -> Self {
        Self(Cell::new((0, [0; LAST_HOST_MAX])))
    }
}

impl Clone for LastValidHost {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for LastValidHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LastValidHost")
    }
}

#[inline]
/// What is wrong with an HTTP/1.1 request's `Host` (its first, and whether another came),
/// if anything, `valid` judging the value.
fn check(
    version: Version,
    host: Option<&HeaderValue>,
    more_than_one: bool,
    valid: impl FnOnce(&HeaderValue) -> bool,
) -> Option<&'static str> {
    if version != Version::HTTP_11 {
        return None;
    }
    let Some(host) = host else {
        return Some("an HTTP/1.1 request needs a Host header");
    };
    if more_than_one {
        return Some("more than one Host header");
    }
    (!valid(host)).then_some("the Host header is not a valid host[:port]")
}

/// The bytes of a registered name or IPv4 address (RFC 3986: unreserved, sub-delims and
/// `%` of percent-encoding), as a table: this runs on every HTTP/1.1 request.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let extra = b"-._~%!$&'()*+,;=";
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric();
        i += 1;
    }
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
};

/// `uri-host [ ":" port ]` as RFC 3986 allows it, or empty: a registered name or IPv4
/// address, or an IP literal in brackets; then an optional port of digits.
fn valid_host(h: &[u8]) -> bool {
    if h.first() == Some(&b'[') {
        return valid_ip_literal(h);
    }
    // The port is short and at the end: split there, then check each part in a tight loop.
    let (name, port) = match h.iter().rposition(|&b| b == b':') {
        Some(colon) => (&h[..colon], &h[colon + 1..]),
        None => (h, &h[h.len()..]),
    };
    name.iter().all(|&b| REG_NAME[usize::from(b)]) && port.iter().all(u8::is_ascii_digit)
}

/// `[` IPv6 or IPvFuture `]` with an optional `:port`.
fn valid_ip_literal(h: &[u8]) -> bool {
    let Some(end) = h.iter().position(|&b| b == b']') else {
        return false;
    };
    let inside_ok = h[1..end]
        .iter()
        .all(|&b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'));
    let port_ok = match h[end + 1..].split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    inside_ok && port_ok
}

/// The 400 answer to a request with a bad `Host`: code `bad_request`, and the connection
/// is not reused (the request may not be what the client meant to send).
pub(crate) fn bad_request<B>(why: &str, version: Version) -> Response<Either<B, Full<Bytes>>> {
    let mut res = error_response(StatusCode::BAD_REQUEST, "bad_request", why);
    mark_connection_close(version, &mut res);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, hosts: &[&str]) -> Request<()> {
        let mut r = Request::builder().version(version);
        for h in hosts {
            r = r.header(header::HOST, *h);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        for ok in [
            "example.com",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "[::1]",
            "",
            "a-b_c~d.%41",
            "host:",
        ] {
            assert_eq!(host_problem(&req(Version::HTTP_11, &[ok])), None, "{ok:?}");
        }
        for bad in [
            "a b",
            "a/b",
            "user@host",
            "host:80x",
            "[::1",
            "[::1]x",
            "h\"x",
            "a:b:80",
            ":80:",
        ] {
            assert!(
                host_problem(&req(Version::HTTP_11, &[bad])).is_some(),
                "{bad:?}"
            );
        }
        assert!(host_problem(&req(Version::HTTP_11, &[])).is_some());
        assert!(host_problem(&req(Version::HTTP_11, &["a", "b"])).is_some());
    }

    #[test]
    fn a_connection_remembers_its_last_valid_host_and_still_refuses_bad_ones() {
        let last = LastValidHost::default();
        let on = |host: &str| {
            let v = HeaderValue::from_str(host).unwrap();
            host_problem_on(Version::HTTP_11, Some(&v), false, &last)
        };
        let long = format!("{}.example:80", "a".repeat(60));
        for (host, ok) in [
            ("a.example:80", true),
            ("a.example:80", true),
            ("a.example:80 x", false),
            ("a.example:8", true),
            ("a.example:8x", false),
            ("a.example:80", true),
            (long.as_str(), true),
            (&format!("{long} x"), false),
            ("", true),
            ("a b", false),
        ] {
            assert_eq!(on(host).is_none(), ok, "{host:?}");
        }
        assert!(host_problem_on(Version::HTTP_11, None, false, &last).is_some());
        let ok = HeaderValue::from_static("a.example:80");
        assert!(host_problem_on(Version::HTTP_11, Some(&ok), true, &last).is_some());
        assert!(host_problem_on(Version::HTTP_2, None, false, &last).is_none());
    }

    #[test]
    fn http10_and_http2_are_not_checked() {
        assert_eq!(host_problem(&req(Version::HTTP_10, &[])), None);
        assert_eq!(host_problem(&req(Version::HTTP_2, &[])), None);
    }
}
