//! lameduck's JSON log output: `tracing-subscriber`'s JSON format with span fields written
//! straight into their string ([`FastJsonFields`]), and the request's ids written on the
//! lines a handler logs when the server runs with
//! [`RequestSpans::IdsInLogs`](crate::context::RequestSpans::IdsInLogs).
//!
//! ```
//! let subscriber = tracing_subscriber::fmt()
//!     .json()
//!     .fmt_fields(lameduck::logs::FastJsonFields)
//!     .finish();
//! tracing::subscriber::with_default(subscriber, || {
//!     tracing::info_span!("db", table = "orders").in_scope(|| tracing::info!("queried"));
//! });
//! ```

use crate::context::RequestContext;

/// Span fields as a JSON object, for `tracing-subscriber`'s JSON event format: the same
/// output as its `JsonFields`, written straight into the span's string. `JsonFields` goes
/// through `serde_json` and a byte-at-a-time writer, about 11,000 instructions for a span
/// with four string fields (measured with `benches/instructions`), paid on every request
/// when request spans are on.
#[derive(Debug, Clone, Copy, Default)]
pub struct FastJsonFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for FastJsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        // Built in a per-thread scratch string, then copied once into the span's string
        // (which would otherwise grow, and reallocate, piece by piece).
        let mut out = SCRATCH.with(std::cell::Cell::take);
        out.clear();
        // A `request` span being made by `context::request_span`: its fields are the
        // request's own ids, written in one step (through the visitor, about 1,000
        // instructions per request).
        if crate::context::take_new_span(|ctx| request_fields_json(&mut out, ctx)).is_some() {
            #[cfg(test)]
            tests::WRITTEN_AHEAD.with(|n| n.set(n.get() + 1));
        } else {
            let mut v = JsonObject { out, any: false };
            v.out.push('{');
            fields.record(&mut v);
            v.out.push('}');
            out = v.out;
        }
        let result = writer.write_str(&out);
        SCRATCH.with(|c| c.set(out));
        result
    }

    fn add_fields(
        &self,
        current: &'w mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> std::fmt::Result {
        let mut v = JsonObject::default();
        if current.fields.ends_with('}') {
            current.fields.pop();
            v.out = std::mem::take(&mut current.fields);
            v.any = v.out.len() > 1;
        }
        fields.record(&mut v);
        v.out.push('}');
        current.fields = v.out;
        Ok(())
    }
}

thread_local! {
    static SCRATCH: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

type JsonFormat = tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>;

/// `tracing-subscriber`'s JSON event format (events flattened), plus the ids of the request
/// being served on this thread when its server runs with
/// [`RequestSpans::IdsInLogs`](crate::context::RequestSpans::IdsInLogs): written as its
/// `request` span would be (`"span"` when no other span is current, and first in
/// `"spans"`). Lines are the same as with a span; the span's cost in the subscriber (a
/// registry slot, its formatted fields, entering and leaving it, closing it: about 2,400
/// instructions and two allocations per request) is not paid, and reading the ids costs
/// nothing on requests that log nothing.
#[derive(Debug)]
pub(super) struct RequestFieldsJson<F = JsonFormat>(F);

impl Default for RequestFieldsJson {
    fn default() -> Self {
        Self(tracing_subscriber::fmt::format().json().flatten_event(true))
    }
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for RequestFieldsJson<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let fields = RequestContext::with_current_in_logs(|c| {
            let mut fields = String::new();
            request_fields_json(&mut fields, c);
            fields
        });
        let Some(fields) = fields else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        writer.write_str(&with_request_span(line, fields))
    }
}

/// `line` (a JSON event line) with a `request` span of `fields` (a JSON object) as the
/// outermost span. The JSON format ends a line with `"span"` and `"spans"`; `,"spans":[`
/// cannot occur earlier, as quotes inside strings are escaped.
fn with_request_span(mut line: String, fields: String) -> String {
    let mut entry = fields;
    entry.pop();
    entry.push_str(",\"name\":\"request\"}");
    const SPANS: &str = ",\"spans\":[";
    if let Some(at) = line.rfind(SPANS) {
        entry.push(',');
        line.insert_str(at + SPANS.len(), &entry);
    } else if let Some(end) = line.trim_end().strip_suffix('}').map(str::len) {
        line.insert_str(end, &format!(",\"span\":{entry},\"spans\":[{entry}]"));
    }
    line
}

/// The `request` span's fields as [`FastJsonFields`] writes them, into `out`: the request
/// id (generated ids, hex digits and `-`, need no scan for what to escape) and the trace
/// id (hex digits).
fn request_fields_json(out: &mut String, ctx: &RequestContext) {
    let request_id = ctx.request_id().as_str();
    out.clear();
    out.push_str("{\"request_id\":");
    if ctx.request_id().is_generated() {
        debug_assert_eq!(
            crate::json::plain_len(request_id.as_bytes()),
            request_id.len()
        );
        out.push('"');
        out.push_str(request_id);
        out.push('"');
    } else {
        crate::json::push_string(out, request_id);
    }
    out.push_str(",\"trace_id\":\"");
    out.push_str(ctx.trace().trace_id_str());
    out.push_str("\"}");
}

/// Builds `{"name":value,...` (the caller closes it).
#[derive(Debug)]
struct JsonObject {
    out: String,
    any: bool,
}

impl Default for JsonObject {
    fn default() -> Self {
        let mut out = String::with_capacity(128);
        out.push('{');
        Self { out, any: false }
    }
}

impl JsonObject {
    fn key(&mut self, field: &tracing::field::Field) {
        if self.any {
            self.out.push(',');
        }
        self.any = true;
        crate::json::push_string(&mut self.out, field.name());
        self.out.push(':');
    }
}

impl tracing::field::Visit for JsonObject {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.key(field);
        crate::json::push_string(&mut self.out, value);
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.key(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.key(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        use std::fmt::Write as _;
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        crate::json::push_string(&mut self.out, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn span_fields_are_json_the_event_formatter_can_read() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .fmt_fields(FastJsonFields)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                id = "a\"b\\c\nd",
                n = 42u64,
                neg = -1i64,
                ok = true,
                x = 1.5f64,
                later = tracing::field::Empty
            );
            let _e = span.enter();
            span.record("later", "set");
            tracing::info!(dbg = ?vec![1, 2], "inside");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line = text.lines().find(|l| l.contains("inside")).expect("event");
        assert!(line.contains(r#""span":{"id":"a\"b\\c\nd","later":"set","n":42,"neg":-1,"ok":true,"x":1.5,"name":"request"}"#), "{line}");
        assert!(line.contains(r#""dbg":"[1, 2]""#), "{line}");
    }

    thread_local! {
        /// How many times this thread's `FastJsonFields` wrote fields written ahead.
        pub(super) static WRITTEN_AHEAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// The lines `log` makes through lameduck's JSON output (without timestamps).
    fn json_lines(log: impl FnOnce()) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt as _;
        let buf = Buf::default();
        let writer = buf.clone();
        let output = tracing_subscriber::fmt::layer()
            .event_format(RequestFieldsJson(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .without_time(),
            ))
            .fmt_fields(FastJsonFields)
            .with_writer(move || writer.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(output), log);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(String::from).collect()
    }

    /// A `request` span for `ctx` as any code would make it (not through
    /// `context::request_span`).
    fn request_span_of(ctx: &RequestContext) -> tracing::Span {
        tracing::info_span!(
            target: crate::context::REQUEST_SPAN_TARGET,
            "request",
            request_id = ctx.request_id().as_str(),
            trace_id = ctx.trace().trace_id_str(),
        )
    }

    /// The event line logged inside a request span of `ctx`, made by
    /// `context::request_span` (`ahead`: its fields are written in one step) or by any
    /// code; asserts that they were written in one step when they should be.
    fn line_in_request_span(ctx: &RequestContext, ahead: bool) -> String {
        let before = WRITTEN_AHEAD.with(std::cell::Cell::get);
        let lines = json_lines(|| {
            let span = if ahead {
                crate::context::request_span(ctx)
            } else {
                request_span_of(ctx)
            };
            let _e = span.enter();
            tracing::info!("handler was here");
        });
        let written = WRITTEN_AHEAD.with(std::cell::Cell::get) - before;
        assert_eq!(written, usize::from(ahead));
        lines
            .into_iter()
            .find(|l| l.contains("handler was here"))
            .expect("event")
    }

    #[test]
    fn request_span_fields_written_ahead_read_as_the_formatter_would_write_them() {
        use crate::context::RequestId;
        use crate::lifecycle::Lifecycle;
        use crate::trace_context::TraceContext;
        let lc = Lifecycle::new();
        for id in [
            RequestId::generate(),
            RequestId::from_header(&http::HeaderValue::from_static(r#"a"b\c"#)).expect("id"),
        ] {
            let ctx = RequestContext::new(id, TraceContext::new_root(), None, lc.shutdown());
            let plain = line_in_request_span(&ctx, false);
            let ahead = line_in_request_span(&ctx, true);
            assert_eq!(plain, ahead);
            let v: serde_json::Value = serde_json::from_str(&ahead).expect("JSON");
            assert_eq!(
                v["span"]["request_id"],
                ctx.request_id().as_str(),
                "{ahead}"
            );
            assert_eq!(v["span"]["trace_id"], ctx.trace().trace_id_str(), "{ahead}");
        }
    }

    /// The lines logged by `log` inside a request span of `ctx`, or with `ctx` current for
    /// the output to write its ids.
    fn lines_for_request(
        ctx: &RequestContext,
        by_formatter: bool,
        log: impl FnOnce(),
    ) -> Vec<String> {
        json_lines(|| {
            if by_formatter {
                let _current = ctx.enter(true);
                log();
            } else {
                let span = request_span_of(ctx);
                let _current = ctx.enter(false);
                let _e = span.enter();
                log();
            }
        })
    }

    #[test]
    fn request_ids_written_by_the_output_read_as_a_request_span_would() {
        use crate::context::RequestId;
        use crate::lifecycle::Lifecycle;
        use crate::trace_context::TraceContext;
        let lc = Lifecycle::new();
        let log = || {
            tracing::info!(n = 1u64, "alone");
            let inner = tracing::info_span!("db", table = "orders\"x");
            inner.in_scope(|| {
                tracing::warn!(what = "spans", "in a span of the handler");
                tracing::info_span!("deeper").in_scope(|| tracing::info!("two deep"));
            });
            tracing::error!(",\"spans\":[ in a message");
        };
        for id in [
            RequestId::generate(),
            RequestId::from_header(&http::HeaderValue::from_static(r#"a"b\c"#)).expect("id"),
        ] {
            let ctx = RequestContext::new(id, TraceContext::new_root(), None, lc.shutdown());
            let with_span = lines_for_request(&ctx, false, log);
            let by_formatter = lines_for_request(&ctx, true, log);
            assert_eq!(with_span.len(), 4, "{with_span:?}");
            assert_eq!(by_formatter, with_span);
            for line in &by_formatter {
                let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
                assert_eq!(
                    v["spans"][0]["request_id"],
                    ctx.request_id().as_str(),
                    "{line}"
                );
                assert_eq!(
                    v["spans"][0]["trace_id"],
                    ctx.trace().trace_id_str(),
                    "{line}"
                );
            }
        }
        // Outside a request, or a request whose ids are not for the logs: no request span.
        let ctx = RequestContext::new(
            RequestId::generate(),
            TraceContext::new_root(),
            None,
            lc.shutdown(),
        );
        let plain = lines_for_request(&ctx, true, || {
            let _not_logged = ctx.enter(false);
            tracing::info!("not in logs");
        });
        assert!(!plain[0].contains("request_id"), "{}", plain[0]);
    }

    #[test]
    fn fields_written_ahead_are_dropped_when_the_span_is_disabled() {
        use crate::context::RequestId;
        use crate::lifecycle::Lifecycle;
        use crate::trace_context::TraceContext;
        let ctx = RequestContext::new(
            RequestId::generate(),
            TraceContext::new_root(),
            None,
            Lifecycle::new().shutdown(),
        );
        let span =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                crate::context::request_span(&ctx)
            });
        assert!(span.is_disabled());
        assert!(crate::context::take_new_span(|_| ()).is_none());
    }
}
