//! The access log: one line per request, written when its response is over.
//!
//! Two outputs, the same fields:
//! - [`AccessLog::Tracing`]: an `info` event on the target [`ACCESS_LOG_TARGET`], so it goes
//!   wherever the application's `tracing` subscriber sends events (filters, OpenTelemetry);
//!   formatting it is the subscriber's work, which for `tracing-subscriber`'s JSON format
//!   is about 20,000 instructions per line;
//! - [`AccessLog::Json`]: lameduck formats the JSON line itself (a few hundred
//!   instructions) and hands it to an [`AccessSink`], such as
//!   `lameduck::logs::LogWriter` (feature `logs`). Same keys as the `tracing` JSON line.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;

use crate::context::{RequestContext, RequestId};
use crate::metrics::UNMATCHED_ROUTE;

/// The access-log target: filter it with `RUST_LOG=lameduck::access=off` (or `=info`).
pub const ACCESS_LOG_TARGET: &str = "lameduck::access";

/// Where access-log lines go. Two outputs, the same fields (method, route template,
/// status, latency, response bytes, whether the body was sent in full, client, request id,
/// trace id):
/// - [`AccessLog::Tracing`]: an `info` event on the target [`ACCESS_LOG_TARGET`], formatted
///   by the application's `tracing` subscriber (about 20,000 instructions per line with
///   `tracing-subscriber`'s JSON format);
/// - [`AccessLog::Json`]: lameduck formats the JSON line itself (a few hundred
///   instructions) and hands it to an [`AccessSink`], such as `lameduck::logs::LogWriter`
///   (feature `logs`). Same keys as the `tracing` JSON line.
#[derive(Clone, Default)]
pub enum AccessLog {
    /// No access log (the default).
    #[default]
    Off,
    /// A `tracing` event per request.
    Tracing,
    /// A JSON line per request, formatted by lameduck, written to the sink.
    Json(Arc<dyn AccessSink>),
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "Off",
            Self::Tracing => "Tracing",
            Self::Json(_) => "Json(..)",
        })
    }
}

impl AccessLog {
    pub(crate) fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }
}

/// Receives finished access-log lines (each a complete JSON object ending in `\n`).
pub trait AccessSink: Send + Sync + 'static {
    /// Take one line. Called on the thread that finished the response: do not block long.
    fn write_line(&self, line: &[u8]);
}

/// One request's access-log record, written when it is dropped (its response is over).
#[derive(Debug)]
pub(crate) struct Access {
    pub(crate) method: Method,
    pub(crate) status: u16,
    pub(crate) started: Instant,
    pub(crate) bytes: u64,
    pub(crate) complete: bool,
    pub(crate) peer: SocketAddr,
    pub(crate) ctx: RequestContext,
    /// The route label when the context has none (a non-axum label, or unmatched).
    pub(crate) route: Option<Box<str>>,
    pub(crate) sink: AccessLog,
}

impl Drop for Access {
    fn drop(&mut self) {
        let route = self
            .ctx
            .route()
            .or(self.route.as_deref())
            .unwrap_or(UNMATCHED_ROUTE);
        let latency = self.started.elapsed();
        match &self.sink {
            AccessLog::Off => {}
            AccessLog::Tracing => tracing::info!(
                target: ACCESS_LOG_TARGET,
                method = self.method.as_str(),
                route,
                status = self.status,
                latency_ms = crate::lifecycle::log_ms(latency),
                bytes = self.bytes,
                complete = self.complete,
                client = %self.peer,
                request_id = self.ctx.request_id().as_str(),
                trace_id = self.ctx.trace().trace_id_str(),
                "request"
            ),
            AccessLog::Json(sink) => {
                // One buffer per thread, reused: no allocation per line.
                LINE.with(|buf| {
                    let mut out = buf.take();
                    out.clear();
                    json_line(&mut out, self, route, latency, SystemTime::now());
                    sink.write_line(&out);
                    buf.set(out);
                });
            }
        }
    }
}

thread_local! {
    static LINE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// The last second formatted as `YYYY-MM-DDTHH:MM:SS`, and which second it was.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    /// The last client address formatted (see `push_peer`).
    static PEER_IP: std::cell::RefCell<(Option<std::net::IpAddr>, Vec<u8>)> = const { std::cell::RefCell::new((None, Vec::new())) };
}

fn json_line(out: &mut Vec<u8>, a: &Access, route: &str, latency: Duration, now: SystemTime) {
    // Hand-written formatting: `write!` through `io::Write` cost several thousand
    // instructions per line.
    out.extend_from_slice(b"{\"timestamp\":\"");
    write_rfc3339(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"method\":\"");
    // A method is an HTTP token: never anything JSON must escape.
    out.extend_from_slice(a.method.as_str().as_bytes());
    out.extend_from_slice(b"\",\"route\":");
    crate::json::push_str(out, route);
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(a.status));
    out.extend_from_slice(b",\"latency_ms\":");
    let micros = latency.as_micros() as u64;
    push_u64(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
    out.extend_from_slice(b",\"bytes\":");
    push_u64(out, a.bytes);
    out.extend_from_slice(if a.complete {
        b",\"complete\":true,\"client\":\""
    } else {
        b",\"complete\":false,\"client\":\""
    });
    push_peer(out, a.peer);
    out.extend_from_slice(b"\",\"request_id\":");
    push_request_id(out, a.ctx.request_id());
    out.extend_from_slice(b",\"trace_id\":\"");
    out.extend_from_slice(a.ctx.trace().trace_id_ascii());
    out.extend_from_slice(b"\",\"target\":\"");
    out.extend_from_slice(ACCESS_LOG_TARGET.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// The request id as a JSON string: generated ids (hex digits and `-`) need no scan for
/// what to escape.
fn push_request_id(out: &mut Vec<u8>, id: &RequestId) {
    if id.is_generated() {
        out.push(b'"');
        out.extend_from_slice(id.as_bytes());
        out.push(b'"');
    } else {
        crate::json::push_str(out, id.as_str());
    }
}

/// `ip:port` (`[ip]:port` for IPv6). The address part is formatted once per thread and
/// reused while it repeats, as it does for clients behind one load balancer.
fn push_peer(out: &mut Vec<u8>, peer: SocketAddr) {
    PEER_IP.with_borrow_mut(|(ip, text)| {
        if *ip != Some(peer.ip()) {
            text.clear();
            // Writing to a Vec cannot fail.
            drop(match peer {
                SocketAddr::V4(v4) => write!(text, "{}:", v4.ip()),
                SocketAddr::V6(v6) => write!(text, "[{}]:", v6.ip()),
            });
            *ip = Some(peer.ip());
        }
        out.extend_from_slice(text);
    });
    push_u64(out, u64::from(peer.port()));
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` with leading zeros to `width` digits (`n` must fit).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = n;
    for b in buf[..width].iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

/// `t` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
pub(super) fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(27);
    write_rfc3339(&mut out, t);
    String::from_utf8_lossy(&out).into_owned()
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), as `tracing-subscriber` writes it.
fn write_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut text) = SECOND.with(std::cell::Cell::get);
    if cached != secs {
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, day) = civil_from_days(days as i64);
        let mut v = Vec::with_capacity(19);
        push_padded(&mut v, y.max(0) as u64, 4);
        v.push(b'-');
        push_padded(&mut v, u64::from(m), 2);
        v.push(b'-');
        push_padded(&mut v, u64::from(day), 2);
        v.push(b'T');
        push_padded(&mut v, rem / 3600, 2);
        v.push(b':');
        push_padded(&mut v, rem % 3600 / 60, 2);
        v.push(b':');
        push_padded(&mut v, rem % 60, 2);
        text.copy_from_slice(&v[..19]);
        SECOND.with(|c| c.set((secs, text)));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    push_padded(out, u64::from(d.subsec_micros()), 6);
    out.push(b'Z');
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Lifecycle;
    use crate::trace_context::TraceContext;

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_788), (2026, 12, 1));
        let mut out = Vec::new();
        write_rfc3339(
            &mut out,
            UNIX_EPOCH + Duration::from_micros(1_796_083_200_123_456),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-01T00:00:00.123456Z"
        );
    }

    fn context(id: RequestId) -> RequestContext {
        RequestContext::new(
            id,
            TraceContext::new_root(),
            None,
            Lifecycle::new().shutdown(),
        )
    }

    /// A `GET` answered 200 with an empty body, from `peer`.
    fn access(ctx: RequestContext, peer: &str) -> Access {
        Access {
            method: Method::GET,
            status: 200,
            started: Instant::now(),
            bytes: 0,
            complete: true,
            peer: peer.parse().unwrap(),
            ctx,
            route: None,
            sink: AccessLog::Off,
        }
    }

    /// The line for `a` on route `/`, parsed.
    fn parsed_line(a: &Access) -> serde_json::Value {
        let mut line = Vec::new();
        json_line(&mut line, a, "/", Duration::ZERO, UNIX_EPOCH);
        serde_json::from_slice(&line).unwrap()
    }

    #[test]
    fn the_line_is_valid_json_with_escaped_strings() {
        let mut a = access(context(RequestId::generate()), "127.0.0.1:4000");
        (a.method, a.status, a.bytes) = (Method::POST, 201, 17);
        let mut line = Vec::new();
        json_line(
            &mut line,
            &a,
            "/a\"b\\c\n",
            Duration::from_micros(1500),
            UNIX_EPOCH,
        );
        let text = String::from_utf8(line).unwrap();
        assert!(text.ends_with("}\n"));
        assert!(text.contains(r#""route":"/a\"b\\c\n""#), "{text}");
        assert!(text.contains(r#""status":201,"latency_ms":1.500,"bytes":17,"complete":true,"client":"127.0.0.1:4000""#), "{text}");
        assert!(
            text.starts_with(r#"{"timestamp":"1970-01-01T00:00:00.000000Z","level":"INFO""#),
            "{text}"
        );
    }

    #[test]
    fn request_ids_read_back_as_sent_or_made() {
        for id in [
            RequestId::generate(),
            RequestId::from_header(&http::HeaderValue::from_static(r#"a"b\c"#)).unwrap(),
        ] {
            let v = parsed_line(&access(context(id.clone()), "127.0.0.1:4000"));
            assert_eq!(v["request_id"], id.as_str());
        }
    }

    #[test]
    fn client_addresses_stay_right_when_they_change() {
        let ctx = context(RequestId::generate());
        let line_for = |peer: &str| {
            let v = parsed_line(&access(ctx.clone(), peer));
            v["client"].as_str().unwrap().to_owned()
        };
        for peer in [
            "127.0.0.1:4000",
            "127.0.0.1:65535",
            "[::1]:80",
            "[::1]:81",
            "10.0.0.255:1",
            "127.0.0.1:4000",
        ] {
            assert_eq!(line_for(peer), peer);
        }
        assert_eq!(
            ctx.trace().trace_id_str().len(),
            32,
            "trace id digits come from the cached traceparent"
        );
    }
}
