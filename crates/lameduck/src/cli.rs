//! Helpers for service binaries (feature `cli`): the pieces every lameduck binary's `main`
//! repeats, kept in one place so they behave the same everywhere.
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! fn main() -> ExitCode {
//!     lameduck::cli::init_logs(lameduck::cli::LogFormat::Json, "info");
//!     lameduck::cli::block_on_main("my-service", async {
//!         // bind, serve, return the report's exit code
//!         Ok::<u8, std::io::Error>(lameduck::exit::OK)
//!     })
//! }
//! ```

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use crate::logfile::{LogFile, LogFlusher, LogWriter};
use crate::server::Server;

/// How long the runtime may take to stop its blocking tasks after `main`'s future is done.
pub const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Log output format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines (the default for services).
    Json,
    /// Human-readable text.
    Text,
}

/// Install a `tracing` subscriber writing to stdout; `RUST_LOG` overrides `default_filter`
/// (an invalid `RUST_LOG` is named in a warning and the default used).
/// A subscriber installed before stays (this one is then not installed).
pub fn init_logs(format: LogFormat, default_filter: &str) {
    // Without a file or an exporter, only an already installed subscriber can fail this.
    let _ = init_logs_with(LogOptions::new(format, default_filter));
}

/// Install a `tracing` subscriber writing to a [`LogFile`] at `path` (appended to, created
/// if missing); `RUST_LOG` overrides `default_filter`.
///
/// Keep the returned [`LogFile`] until `main` returns: dropping it writes and `fsync`s the
/// last lines. Register [`LogFlusher::flush`] (from [`LogFile::flusher`]) as a
/// [`Final`](crate::hooks::HookPhase::Final) hook to have everything on disk before the
/// process reports its shutdown too.
///
/// # Errors
/// The file cannot be opened, or a subscriber is already installed.
pub fn init_logs_to_file(
    format: LogFormat,
    default_filter: &str,
    path: &std::path::Path,
) -> std::io::Result<LogFile> {
    let options = LogOptions {
        file: Some(path),
        ..LogOptions::new(format, default_filter)
    };
    let logs = init_logs_with(options)?;
    logs.file
        .ok_or_else(|| std::io::Error::other("log file was not opened"))
}

/// What [`init_logs_with`] sets up.
#[derive(Debug, Clone)]
pub struct LogOptions<'a> {
    /// Line format.
    pub format: LogFormat,
    /// The filter when `RUST_LOG` is not set or blank; also when it is invalid, which is
    /// then named in a warning, the first line logged.
    pub default_filter: &'a str,
    /// Write to this [`LogFile`] instead of stdout.
    pub file: Option<&'a std::path::Path>,
    /// Export spans over OTLP (feature `otel`).
    #[cfg(feature = "otel")]
    pub otlp: Option<crate::otel::OtlpConfig>,
}

impl<'a> LogOptions<'a> {
    /// Logs on stdout in `format`, `default_filter` unless `RUST_LOG` is set, no export.
    pub fn new(format: LogFormat, default_filter: &'a str) -> Self {
        Self {
            format,
            default_filter,
            file: None,
            #[cfg(feature = "otel")]
            otlp: None,
        }
    }
}

/// What [`init_logs_with`] started: keep it until `main` returns (dropping the file writes
/// and `fsync`s its last lines), and flush both from a final hook.
#[derive(Debug, Default)]
pub struct Logs {
    /// The log file, when logging to one.
    pub file: Option<LogFile>,
    /// The span exporter, when exporting.
    #[cfg(feature = "otel")]
    pub otlp: Option<crate::otel::OtlpFlusher>,
}

/// Install the `tracing` subscriber `options` describe: the log output (stdout or a
/// [`LogFile`]) and, with the `otel` feature, an OTLP span exporter.
///
/// # Errors
/// The log file cannot be opened, or the exporter cannot be built.
pub fn init_logs_with(options: LogOptions<'_>) -> std::io::Result<Logs> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    type Base = tracing_subscriber::layer::Layered<BoxedFilter, tracing_subscriber::Registry>;
    type Boxed = Box<dyn tracing_subscriber::Layer<Base> + Send + Sync>;

    let mut logs = Logs::default();
    let mut layers: Vec<Boxed> = Vec::new();
    let fmt = tracing_subscriber::fmt::layer();
    let output: Boxed = match (options.file, options.format) {
        (None, LogFormat::Json) => fmt
            .event_format(RequestFieldsJson::default())
            .fmt_fields(FastJsonFields)
            .with_writer(std::io::stdout)
            .boxed(),
        (None, LogFormat::Text) => fmt.with_writer(std::io::stdout).boxed(),
        (Some(path), format) => {
            let file = LogFile::open(path)?;
            let writer = file.writer();
            logs.file = Some(file);
            match format {
                LogFormat::Json => fmt
                    .event_format(RequestFieldsJson::default())
                    .fmt_fields(FastJsonFields)
                    .with_ansi(false)
                    .with_writer(writer)
                    .boxed(),
                LogFormat::Text => fmt.with_ansi(false).with_writer(writer).boxed(),
            }
        }
    };
    layers.push(output);
    #[cfg(feature = "otel")]
    if let Some(config) = &options.otlp {
        let (layer, flusher) = crate::otel::layer(config).map_err(std::io::Error::other)?;
        layers.push(layer.boxed());
        logs.otlp = Some(flusher);
    }
    let (directives, rejected) = filter_directives(
        std::env::var_os("RUST_LOG").as_deref(),
        options.default_filter,
    );
    tracing_subscriber::registry()
        .with(log_filter(&directives))
        .with(layers)
        .try_init()
        .map_err(std::io::Error::other)?;
    if options.format == LogFormat::Json {
        REQUEST_FIELDS_WANTED.store(true, Ordering::Relaxed);
        // A span exporter needs the span; lameduck's JSON output alone does not.
        #[cfg(feature = "otel")]
        let exporting = logs.otlp.is_some();
        #[cfg(not(feature = "otel"))]
        let exporting = false;
        REQUEST_FIELDS_BY_FORMATTER.store(!exporting, Ordering::Relaxed);
    }
    if let Some(why) = rejected {
        tracing::warn!(
            rust_log = why.value,
            error = why.error,
            using = directives,
            "RUST_LOG is not a valid filter; using the default filter"
        );
    }
    Ok(logs)
}

/// A `RUST_LOG` value that was not used, and why.
#[derive(Debug, PartialEq, Eq)]
struct Rejected {
    value: String,
    error: String,
}

/// The filter directives to use: `rust_log` when it is set, not blank and valid, else
/// `default_filter` (with what was wrong with `rust_log`, to be logged).
fn filter_directives(
    rust_log: Option<&std::ffi::OsStr>,
    default_filter: &str,
) -> (String, Option<Rejected>) {
    let Some(value) = rust_log else {
        return (default_filter.to_owned(), None);
    };
    let rejected = |error: String| Rejected {
        value: value.to_string_lossy().into_owned(),
        error,
    };
    match value.to_str() {
        Some(text) if text.trim().is_empty() => (default_filter.to_owned(), None),
        Some(text) => match tracing_subscriber::EnvFilter::builder().parse(text) {
            Ok(_) => (text.to_owned(), None),
            Err(e) => (default_filter.to_owned(), Some(rejected(e.to_string()))),
        },
        None => (
            default_filter.to_owned(),
            Some(rejected("not valid UTF-8".to_owned())),
        ),
    }
}

type BoxedFilter = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The log filter for `directives`.
///
/// Directives that name only targets and levels (`info`, `warn,lameduck=debug`) become a
/// [`Targets`](tracing_subscriber::filter::Targets) filter, which decides once per
/// callsite and does no work per span; [`EnvFilter`](tracing_subscriber::EnvFilter) takes
/// the rest (span and field directives), and looks every span up on enter, exit and close
/// to support them: about 250 instructions per request span. Either is one layer (not an
/// optional layer each): every layer level adds its own work to each span operation.
fn log_filter(directives: &str) -> BoxedFilter {
    use tracing_subscriber::Layer as _;
    match targets_only(directives) {
        Some(targets) => targets.boxed(),
        None => tracing_subscriber::EnvFilter::new(directives).boxed(),
    }
}

/// `directives` as a [`Targets`](tracing_subscriber::filter::Targets) filter, when each
/// one is a level, a target, or `target=level`: the forms on which both filters agree.
fn targets_only(directives: &str) -> Option<tracing_subscriber::filter::Targets> {
    let simple = directives.split(',').all(|d| {
        !d.is_empty()
            && d.split('=').count() <= 2
            && d.split('=').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
            })
    });
    if simple {
        directives.parse().ok()
    } else {
        None
    }
}

/// Run `fut` on a multi-threaded runtime and turn its outcome into the exit code: its own
/// code, or [`RUNTIME_ERROR`](crate::exit::RUNTIME_ERROR) with `"{name}: {error:#}"` as one
/// line on stderr. The runtime is shut down with [`RUNTIME_SHUTDOWN_TIMEOUT`]: dropping it
/// would wait for blocking tasks without limit.
pub fn block_on_main<E, F>(name: &str, fut: F) -> ExitCode
where
    E: Display,
    F: Future<Output = Result<u8, E>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(name, format_args!("failed to start the runtime: {e}")),
    };
    let result = rt.block_on(fut);
    rt.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(name, format_args!("{e:#}")),
    }
}

/// Print `"{name}: {message}"` on stderr as one line (line breaks inside the message, as
/// some parsers produce, are folded) and return
/// [`RUNTIME_ERROR`](crate::exit::RUNTIME_ERROR).
pub fn fail(name: &str, message: impl Display) -> ExitCode {
    let text = message.to_string();
    let line: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("{name}: {}", line.join(" "));
    ExitCode::from(crate::exit::RUNTIME_ERROR)
}

/// Print `listening http=ADDR admin=ADDR` on stdout when either requested port was 0 (the
/// line tests and scripts wait for), and log `ready` with the addresses and pid.
///
/// # Errors
/// The bound addresses cannot be read.
pub fn announce(
    server: &Server,
    requested_http: SocketAddr,
    requested_admin: SocketAddr,
) -> std::io::Result<()> {
    let http = server.local_addr()?;
    let admin = server.admin_addr().transpose()?.unwrap_or(requested_admin);
    if requested_http.port() == 0 || requested_admin.port() == 0 {
        println!("listening http={http} admin={admin}");
    }
    tracing::info!(%http, %admin, pid = std::process::id(), "ready");
    Ok(())
}

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
        // A request span's fields, written ahead by `with_request_fields`: this is the
        // first call since, the one for that span.
        if let Some(result) = REQUEST_FIELDS.with_borrow_mut(|r| {
            std::mem::take(&mut r.pending).then(|| {
                #[cfg(test)]
                tests::WRITTEN_AHEAD.with(|n| n.set(n.get() + 1));
                writer.write_str(&r.json)
            })
        }) {
            return result;
        }
        // Built in a per-thread scratch string, then copied once into the span's string
        // (which would otherwise grow, and reallocate, piece by piece).
        let mut v = JsonObject {
            out: SCRATCH.with(std::cell::Cell::take),
            any: false,
        };
        v.out.clear();
        v.out.push('{');
        fields.record(&mut v);
        v.out.push('}');
        let result = writer.write_str(&v.out);
        SCRATCH.with(|c| c.set(v.out));
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
    /// The JSON fields of the request span being created on this thread (see
    /// [`with_request_fields`]).
    static REQUEST_FIELDS: std::cell::RefCell<RequestFields> = const {
        std::cell::RefCell::new(RequestFields { pending: false, json: String::new() })
    };
}

/// A request span's fields as JSON, kept per thread (the string is reused).
#[derive(Debug)]
struct RequestFields {
    /// Set while the span is being created, until [`FastJsonFields`] has written `json`.
    pending: bool,
    json: String,
}

/// Whether the installed log output is [`RequestFieldsJson`] and nothing else needs request
/// spans: then a server with request spans on has the output write the request's ids
/// instead of making a span.
static REQUEST_FIELDS_BY_FORMATTER: AtomicBool = AtomicBool::new(false);

/// See [`REQUEST_FIELDS_BY_FORMATTER`].
pub(crate) fn request_fields_by_formatter() -> bool {
    REQUEST_FIELDS_BY_FORMATTER.load(Ordering::Relaxed)
}

type JsonFormat = tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>;

/// `tracing-subscriber`'s JSON event format (events flattened), plus the ids of the request
/// being served on this thread when its server has request spans on: written as its
/// `request` span would be (`"span"` when no other span is current, and first in
/// `"spans"`). Lines are the same as with a span; the span's cost in the subscriber (a
/// registry slot, its formatted fields, entering and leaving it, closing it: about 2,400
/// instructions and two allocations per request) is not paid, and reading the ids costs
/// nothing on requests that log nothing.
#[derive(Debug)]
struct RequestFieldsJson<F = JsonFormat>(F);

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
        let fields =
            crate::middleware::request_context::RequestContext::with_current_in_logs(|c| {
                let mut fields = String::new();
                request_fields_json(
                    &mut fields,
                    c.request_id().as_str(),
                    c.request_id().is_generated(),
                    c.trace().trace_id_str(),
                );
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

/// Whether [`init_logs_with`] installed an output with [`FastJsonFields`]: until then
/// [`with_request_fields`] does nothing.
static REQUEST_FIELDS_WANTED: AtomicBool = AtomicBool::new(false);

/// Create a request's span with `make`, its fields written ahead as JSON for
/// [`FastJsonFields`]. The fields are the request's own ids, so they are written in one
/// step into a per-thread string, where formatting them through `tracing`'s visitor (as
/// for any other span) cost about 1,000 instructions per request. The span must have the
/// fields `request_id` and `trace_id`, in that order, with these values; `trace_id` must be
/// hex digits and, when `id_is_plain`, the request id has nothing JSON escapes (as for
/// generated ids).
pub(crate) fn with_request_fields(
    request_id: &str,
    id_is_plain: bool,
    trace_id: &str,
    make: impl FnOnce() -> tracing::Span,
) -> tracing::Span {
    if !REQUEST_FIELDS_WANTED.load(Ordering::Relaxed) {
        return make();
    }
    REQUEST_FIELDS.with_borrow_mut(|r| {
        request_fields_json(&mut r.json, request_id, id_is_plain, trace_id);
        r.pending = true;
    });
    let span = make();
    // Still pending when the span is disabled.
    REQUEST_FIELDS.with_borrow_mut(|r| r.pending = false);
    span
}

/// What [`FastJsonFields`] writes for the request span's fields, into `out`.
fn request_fields_json(out: &mut String, request_id: &str, id_is_plain: bool, trace_id: &str) {
    out.clear();
    out.push_str("{\"request_id\":");
    if id_is_plain {
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
    debug_assert!(trace_id.bytes().all(|b| b.is_ascii_hexdigit()));
    out.push_str(trace_id);
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

    /// The `request` span the server makes for `ctx`.
    fn request_span_of(ctx: &crate::middleware::request_context::RequestContext) -> tracing::Span {
        tracing::info_span!(
            target: crate::server::REQUEST_SPAN_TARGET,
            "request",
            request_id = ctx.request_id().as_str(),
            trace_id = ctx.trace().trace_id_str(),
        )
    }

    /// The event line logged inside a request span of `ctx`, with or without the fields
    /// written ahead by `with_request_fields`; asserts that they were written ahead when
    /// asked to be.
    fn line_in_request_span(
        ctx: &crate::middleware::request_context::RequestContext,
        ahead: bool,
    ) -> String {
        let before = WRITTEN_AHEAD.with(std::cell::Cell::get);
        let lines = json_lines(|| {
            let make = || request_span_of(ctx);
            let span = if ahead {
                REQUEST_FIELDS_WANTED.store(true, Ordering::Relaxed);
                with_request_fields(
                    ctx.request_id().as_str(),
                    ctx.request_id().is_generated(),
                    ctx.trace().trace_id_str(),
                    make,
                )
            } else {
                make()
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
        use crate::lifecycle::Lifecycle;
        use crate::middleware::request_context::{RequestContext, RequestId};
        use crate::middleware::trace_context::TraceContext;
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
        ctx: &crate::middleware::request_context::RequestContext,
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
        use crate::lifecycle::Lifecycle;
        use crate::middleware::request_context::{RequestContext, RequestId};
        use crate::middleware::trace_context::TraceContext;
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
    fn rust_log_is_used_when_valid_and_named_when_not() {
        use std::ffi::OsStr;
        assert_eq!(filter_directives(None, "info"), ("info".into(), None));
        assert_eq!(
            filter_directives(Some(OsStr::new("  ")), "info"),
            ("info".into(), None)
        );
        assert_eq!(
            filter_directives(Some(OsStr::new("warn,lameduck=debug")), "info"),
            ("warn,lameduck=debug".into(), None)
        );
        let (used, rejected) = filter_directives(Some(OsStr::new("lameduck=loud")), "info");
        assert_eq!(used, "info");
        let rejected = rejected.expect("an invalid level is reported");
        assert_eq!(rejected.value, "lameduck=loud");
        assert!(!rejected.error.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt as _;
            let (used, rejected) = filter_directives(Some(OsStr::from_bytes(b"\xff")), "warn");
            assert_eq!(used, "warn");
            assert_eq!(rejected.expect("reported").error, "not valid UTF-8");
        }
    }

    #[test]
    fn only_target_and_level_directives_skip_the_env_filter() {
        for simple in [
            "info",
            "warn,lameduck=debug",
            "lameduck",
            "OFF,my-app::db=TRACE",
        ] {
            assert!(targets_only(simple).is_some(), "{simple}");
        }
        for other in [
            "lameduck[request]=debug",
            "[{request_id}]=info",
            "lameduck[{x}]=info",
            "info,",
            " info",
            "a=b=c",
            "a=",
            "lameduck=loud",
        ] {
            assert!(targets_only(other).is_none(), "{other}");
        }
    }

    /// Which of a fixed set of events (targets by levels) `subscriber` lets through.
    fn passed(subscriber: impl tracing::Subscriber + Send + Sync) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt as _;
        let seen = Arc::new(Mutex::new(Vec::new()));
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let m = event.metadata();
                self.0
                    .lock()
                    .unwrap()
                    .push(format!("{} {}", m.target(), m.level()));
            }
        }
        let subscriber = subscriber.with(Seen(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            macro_rules! all_levels {
                ($target:literal) => {
                    tracing::error!(target: $target, "e");
                    tracing::warn!(target: $target, "w");
                    tracing::info!(target: $target, "i");
                    tracing::debug!(target: $target, "d");
                    tracing::trace!(target: $target, "t");
                };
            }
            all_levels!("lameduck");
            all_levels!("lameduck::access");
            all_levels!("lameducks");
            all_levels!("my-app::db");
            all_levels!("other");
        });
        let seen = seen.lock().unwrap().clone();
        seen
    }

    #[test]
    fn targets_filter_lets_through_what_the_env_filter_would() {
        use tracing_subscriber::layer::SubscriberExt as _;
        for directives in [
            "info",
            "warn,lameduck=debug",
            "lameduck",
            "debug,lameduck::access=off",
            "OFF,my-app::db=TRACE",
            "error,lameduck=info,lameduck::access=trace",
        ] {
            let targets = targets_only(directives).expect("target and level directives");
            let env = tracing_subscriber::EnvFilter::new(directives);
            let with_targets = passed(tracing_subscriber::registry().with(targets));
            let with_env = passed(tracing_subscriber::registry().with(env));
            assert_eq!(with_targets, with_env, "{directives}");
            assert!(
                !with_env.is_empty() || directives.starts_with("OFF"),
                "{directives}"
            );
        }
    }

    #[test]
    fn fields_written_ahead_are_dropped_when_the_span_is_disabled() {
        REQUEST_FIELDS_WANTED.store(true, Ordering::Relaxed);
        let span =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                with_request_fields(
                    "req-1",
                    true,
                    "4bf92f3577b34da6a3ce929d0e0e4736",
                    || tracing::info_span!(target: crate::server::REQUEST_SPAN_TARGET, "request"),
                )
            });
        assert!(span.is_disabled());
        assert!(!REQUEST_FIELDS.with_borrow(|r| r.pending));
    }
}
