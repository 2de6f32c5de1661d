//! The request headers the server reads, found in one pass over the header map.
//!
//! The server reads `x-request-id`, `traceparent`, `tracestate` and `Host` on every request.
//! A lookup hashes the name byte by byte (custom names such as `x-request-id` have no
//! precomputed hash) and then probes the map; a pass compares each of the request's few
//! names instead, where a standard name against a custom one is one comparison of tags.
//! Measured the way `benches/instructions` measures, the pass (with the body limit reading
//! hyper's parsed `Content-Length` instead of looking the header up) took about 390
//! instructions off every request of `lameduck-demo`, 17,689 to 17,296 (one `Host` header,
//! as `wrk` sends; a request with a dozen headers still compares less than it hashed).

use http::{header, HeaderMap, HeaderValue};

use crate::context::X_REQUEST_ID_NAME;
use crate::trace_context::{TRACEPARENT_NAME, TRACESTATE_NAME};

/// The first value of each header the server reads, and how many `Host` headers came.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RequestHeaders<'a> {
    pub(crate) request_id: Option<&'a HeaderValue>,
    pub(crate) traceparent: Option<&'a HeaderValue>,
    pub(crate) tracestate: Option<&'a HeaderValue>,
    pub(crate) host: Option<&'a HeaderValue>,
    /// `Host` headers seen, counted up to 2 (more than one is an error).
    pub(crate) hosts: u8,
}

impl<'a> RequestHeaders<'a> {
    /// One pass over `headers`; where a name repeats, the first value counts, as
    /// [`HeaderMap::get`] would give it.
    pub(crate) fn scan(headers: &'a HeaderMap) -> Self {
        let mut out = Self::default();
        for (name, value) in headers {
            let slot = if *name == header::HOST {
                out.hosts = out.hosts.saturating_add(1).min(2);
                &mut out.host
            } else if *name == X_REQUEST_ID_NAME {
                &mut out.request_id
            } else if *name == TRACEPARENT_NAME {
                &mut out.traceparent
            } else if *name == TRACESTATE_NAME {
                &mut out.tracestate
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pass_finds_what_lookups_find() {
        let mut h = HeaderMap::new();
        h.append("accept", HeaderValue::from_static("*/*"));
        h.append("x-request-id", HeaderValue::from_static("first"));
        h.append("host", HeaderValue::from_static("a.example"));
        h.append("x-request-id", HeaderValue::from_static("second"));
        h.append("traceparent", HeaderValue::from_static("tp"));
        h.append("x-other", HeaderValue::from_static("o"));
        h.append("tracestate", HeaderValue::from_static("ts"));
        let seen = RequestHeaders::scan(&h);
        assert_eq!(seen.request_id, h.get("x-request-id"));
        assert_eq!(
            seen.request_id.map(HeaderValue::as_bytes),
            Some(&b"first"[..])
        );
        assert_eq!(seen.traceparent, h.get("traceparent"));
        assert_eq!(seen.tracestate, h.get("tracestate"));
        assert_eq!(seen.host, h.get("host"));
        assert_eq!(seen.hosts, 1);

        h.append("host", HeaderValue::from_static("b.example"));
        h.append("host", HeaderValue::from_static("c.example"));
        let seen = RequestHeaders::scan(&h);
        assert_eq!(
            seen.host.map(HeaderValue::as_bytes),
            Some(&b"a.example"[..])
        );
        assert_eq!(seen.hosts, 2);

        let empty = HeaderMap::new();
        let seen = RequestHeaders::scan(&empty);
        assert!(seen.request_id.is_none() && seen.host.is_none() && seen.hosts == 0);
    }
}
