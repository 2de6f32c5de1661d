//! W3C Trace Context: the `traceparent` and `tracestate` headers.
//!
//! A request that arrives with a valid `traceparent` keeps its trace id; the server's part
//! of the trace gets a new span id, whose parent is the caller's. A request without one (or
//! with an invalid one, which the specification says to ignore) starts a new trace. The
//! response carries the server's `traceparent` (and the caller's `tracestate`), so a client
//! can find the trace even when it did not start one. For calls a handler makes on the
//! request's behalf, [`TraceContext::inject`] sets the headers, and
//! [`PropagateTraceLayer`](crate::middleware::propagate_trace::PropagateTraceLayer) does it
//! for every call through a client.
//!
//! Ids come from a per-process generator (splitmix64 over a counter, seeded from the clock
//! and the pid): unique and well spread, not cryptographic.
//!
//! ```
//! use http::HeaderMap;
//! use lameduck::trace_context::{TraceContext, TRACEPARENT};
//!
//! let mut incoming = HeaderMap::new();
//! incoming.insert(
//!     &TRACEPARENT,
//!     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
//! );
//! let trace = TraceContext::from_headers(&incoming);
//! assert_eq!(trace.trace_id_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
//!
//! // An outgoing call made on the request's behalf continues the trace.
//! let mut outgoing = HeaderMap::new();
//! trace.inject(&mut outgoing);
//! assert!(outgoing[&TRACEPARENT].to_str().unwrap().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The `traceparent` header.
pub static TRACEPARENT: HeaderName = TRACEPARENT_NAME;
/// [`TRACEPARENT`] as a constant, to pass by value (see `context::X_REQUEST_ID_NAME`).
pub(crate) const TRACEPARENT_NAME: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub static TRACESTATE: HeaderName = TRACESTATE_NAME;
/// [`TRACESTATE`] as a constant (see [`TRACEPARENT_NAME`]).
pub(crate) const TRACESTATE_NAME: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on (the specification's limit for propagation is 512).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// One request's place in a distributed trace.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    flags: u8,
    tracestate: Option<HeaderValue>,
    /// This span's `traceparent`, written once: the response header, the access log and
    /// the request span all use it.
    text: Text,
}

/// The `traceparent` text at `TEXT_AT..TEXT_AT + 55`, placed so that the trace id's digits
/// start on an 8-byte boundary: `str::from_utf8` checks aligned ASCII a block at a time
/// but goes byte by byte until it reaches alignment (for the 32 digits, about 180
/// instructions unaligned against 76 aligned, counted with callgrind).
#[derive(Clone, PartialEq, Eq)]
#[repr(align(8))]
struct Text([u8; 72]);

/// The length of a `traceparent` (version 00).
pub(crate) const TRACEPARENT_LEN: usize = 55;

/// Where `traceparent` starts in [`Text`]: `00-` then the trace id at 16.
const TEXT_AT: usize = 13;
/// The trace id's digits in [`Text`].
const TRACE_HEX: std::ops::Range<usize> = TEXT_AT + 3..TEXT_AT + 35;

impl Text {
    fn traceparent(&self) -> &[u8] {
        &self.0[TEXT_AT..TEXT_AT + TRACEPARENT_LEN]
    }

    fn trace_hex(&self) -> &[u8] {
        &self.0[TRACE_HEX]
    }
}

impl TraceContext {
    /// The context for a request with these headers: a child of the caller's span when
    /// `traceparent` is valid, else the root of a new (sampled) trace.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_values(headers.get(&TRACEPARENT), || headers.get(&TRACESTATE))
    }

    /// [`from_headers`](Self::from_headers) from the request's `traceparent` and (read only
    /// when that is valid) `tracestate`.
    pub(crate) fn from_values<'a>(
        traceparent: Option<&HeaderValue>,
        tracestate: impl FnOnce() -> Option<&'a HeaderValue>,
    ) -> Self {
        let Some((trace_id, parent, flags)) =
            traceparent.and_then(|v| parse_traceparent(v.as_bytes()))
        else {
            return Self::new_root();
        };
        let tracestate = tracestate()
            .filter(|v| !v.is_empty() && v.len() <= MAX_TRACESTATE_LEN)
            .cloned();
        Self::with_ids(trace_id, new_span_id(), Some(parent), flags, tracestate)
    }

    /// A new trace, sampled.
    pub fn new_root() -> Self {
        let (a, b) = (next_random(), next_random());
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&a.to_be_bytes());
        trace_id[8..].copy_from_slice(&b.to_be_bytes());
        Self::with_ids(trace_id, new_span_id(), None, 0x01, None)
    }

    fn with_ids(
        trace_id: [u8; 16],
        span_id: [u8; 8],
        parent_id: Option<[u8; 8]>,
        flags: u8,
        tracestate: Option<HeaderValue>,
    ) -> Self {
        let mut buf = [0u8; 72];
        let text = &mut buf[TEXT_AT..TEXT_AT + TRACEPARENT_LEN];
        text[..3].copy_from_slice(b"00-");
        write_hex(&trace_id, &mut text[3..35]);
        text[35] = b'-';
        write_hex(&span_id, &mut text[36..52]);
        text[52] = b'-';
        write_hex(&[flags], &mut text[53..55]);
        let text = Text(buf);
        Self {
            trace_id,
            span_id,
            parent_id,
            flags,
            tracestate,
            text,
        }
    }

    /// The trace id, 16 bytes.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> Hex<32> {
        let mut digits = [0u8; 32];
        digits.copy_from_slice(self.text.trace_hex());
        Hex(digits)
    }

    /// The trace id as 32 lowercase hex digits, borrowed (no copy, no formatting).
    pub fn trace_id_str(&self) -> &str {
        std::str::from_utf8(self.text.trace_hex()).unwrap_or("")
    }

    /// The trace id's 32 hex digits as bytes.
    pub(crate) fn trace_id_ascii(&self) -> &[u8] {
        self.text.trace_hex()
    }

    /// This span's `traceparent` as text (`00-{trace id}-{span id}-{flags}`).
    pub fn traceparent_str(&self) -> &str {
        std::str::from_utf8(self.text.traceparent()).unwrap_or("")
    }

    /// This request's span id, 8 bytes.
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The caller's span id, when the request came with a `traceparent`.
    pub fn parent_id(&self) -> Option<[u8; 8]> {
        self.parent_id
    }

    /// Whether the trace is sampled (flag 0x01).
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The caller's `tracestate`, passed on unchanged.
    pub fn tracestate(&self) -> Option<&HeaderValue> {
        self.tracestate.as_ref()
    }

    /// `traceparent` naming this request's span: for the response, and for outgoing calls
    /// made on the request's behalf.
    pub fn traceparent(&self) -> HeaderValue {
        hex_value(bytes::Bytes::copy_from_slice(self.text.traceparent()))
    }

    /// The `traceparent` text's bytes (hex digits and `-`).
    pub(crate) fn traceparent_bytes(&self) -> &[u8] {
        self.text.traceparent()
    }

    /// Put `traceparent` (and `tracestate`) for this span into `headers`, replacing any.
    pub fn inject(&self, headers: &mut HeaderMap) {
        headers.insert(TRACEPARENT.clone(), self.traceparent());
        match &self.tracestate {
            Some(s) => {
                headers.insert(TRACESTATE.clone(), s.clone());
            }
            None => {
                headers.remove(&TRACESTATE);
            }
        }
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceContext")
            .field("trace_id", &self.trace_id_str())
            .field("span_id", &Hex::<16>::new(&self.span_id).as_str())
            .field("sampled", &self.sampled())
            .finish()
    }
}

/// Lowercase hex digits of a fixed-size id, without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    fn new(bytes: &[u8]) -> Self {
        let mut out = [b'0'; N];
        write_hex(bytes, &mut out);
        Self(out)
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl<const N: usize> fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> fmt::Debug for Hex<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A header value of text lameduck wrote itself, hex digits and `-` only (ids,
/// `traceparent`), without `HeaderValue`'s byte-by-byte validation and without copying
/// `bytes`: about 4 instructions a byte, on two values of every response.
#[allow(unsafe_code)]
pub(crate) fn hex_value(bytes: bytes::Bytes) -> HeaderValue {
    debug_assert!(
        bytes.iter().all(|&b| b == b'-' || b.is_ascii_hexdigit()),
        "{bytes:?}"
    );
    // SAFETY: a header value may hold any visible ASCII byte (RFC 9110, field-value), and
    // every caller passes text it formatted itself from hex digits and `-` (checked above in
    // debug builds, and again by `http` itself there). With a `Bytes`, `http` keeps it as is.
    unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) }
}

/// Lowercase hex digits of `bytes` into `out` (twice as long): four bytes at a time
/// (every request writes a 16-byte trace id and an 8-byte span id), the rest one by one.
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut words = bytes.chunks_exact(4);
    let mut at = 0;
    for w in words.by_ref() {
        let digits = hex32(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
        out[at..at + 8].copy_from_slice(&digits);
        at += 8;
    }
    for b in words.remainder() {
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
        at += 2;
    }
}

/// The 8 lowercase hex digits of `v`, computed in one 64-bit word: spread each nibble into
/// a byte, then add `'0'`, and `'a' - '0' - 10` more to nibbles of 10 and above.
fn hex32(v: u32) -> [u8; 8] {
    let mut x = u64::from(v);
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    let ten_or_more = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    x += 0x3030_3030_3030_3030 + ten_or_more * 0x27;
    x.to_be_bytes()
}

/// `version-traceid-parentid-flags`; returns (trace id, parent id, flags). Version 00 must
/// be exactly 55 characters; a later version may append fields after a '-'; version ff,
/// upper-case hex and all-zero ids are invalid.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_u8(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_u8(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent = [0u8; 8];
    for (i, b) in parent.iter_mut().enumerate() {
        *b = hex_u8(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_u8(&v[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

fn hex_u8(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id = next_random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// splitmix64 over a per-process counter.
fn next_random() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    let mut z = seed.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(tp: &str, ts: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_str(tp).unwrap());
        if let Some(ts) = ts {
            h.insert(&TRACESTATE, HeaderValue::from_str(ts).unwrap());
        }
        h
    }

    #[test]
    fn a_valid_traceparent_keeps_the_trace_and_gets_a_child_span() {
        let t = TraceContext::from_headers(&headers(VALID, Some("congo=t61rcWkgMzE")));
        assert_eq!(
            t.trace_id_hex().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            t.parent_id(),
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_ne!(t.span_id(), t.parent_id().unwrap());
        assert!(t.sampled());
        let out = t.traceparent();
        let out = out.to_str().unwrap();
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01") && out.len() == 55, "{out}");
        assert_eq!(t.tracestate().unwrap(), "congo=t61rcWkgMzE");
        let mut h = HeaderMap::new();
        t.inject(&mut h);
        assert_eq!(h[&TRACEPARENT], out);
        assert_eq!(h[&TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            let t = TraceContext::from_headers(&headers(bad, Some("a=b")));
            assert_eq!(t.parent_id(), None, "{bad:?}");
            assert_ne!(t.trace_id(), [0; 16]);
            assert!(
                t.tracestate().is_none(),
                "{bad:?}: no tracestate without a parent"
            );
        }
        // A later version may carry more fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more";
        assert!(TraceContext::from_headers(&headers(later, None))
            .parent_id()
            .is_some());
    }

    #[test]
    fn hex_digits_match_the_formatter() {
        for v in [
            0u32,
            1,
            9,
            10,
            15,
            0xdead_beef,
            u32::MAX,
            0x0123_4567,
            0x89ab_cdef,
        ] {
            assert_eq!(std::str::from_utf8(&hex32(v)).unwrap(), format!("{v:08x}"));
        }
        let bytes: Vec<u8> = (0..=255u8).collect();
        let mut out = vec![0u8; 512];
        write_hex(&bytes, &mut out);
        let want: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(std::str::from_utf8(&out).unwrap(), want);
        let mut odd = [0u8; 10];
        write_hex(&[0xab, 0xcd, 0xef, 0x01, 0x2f], &mut odd);
        assert_eq!(&odd, b"abcdef012f");
    }

    #[test]
    fn new_traces_are_distinct_and_well_formed() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id(), b.trace_id());
        assert_ne!(a.span_id(), b.span_id());
        let tp = a.traceparent();
        assert!(parse_traceparent(tp.as_bytes()).is_some(), "{tp:?}");
    }
}
