//! OpenTelemetry export (feature `otel`): request spans sent over OTLP (HTTP/protobuf) by
//! the SDK's batch exporter, and a flush for a final shutdown hook.
//!
//! [`logs::init`](crate::logs::init) installs the exporter's layer next
//! to the log output when [`LogOptions::otlp`](crate::logs::LogOptions::otlp) is set; then
//! [`Logs::configure`](crate::logs::Logs::configure) gives the server
//! `RequestSpans::SpanWith(request_span)`: each request's `request` span becomes an
//! OpenTelemetry span whose trace id and span id are the ones lameduck put in the
//! response's `traceparent` (a caller's `traceparent` makes it a child of the caller's
//! span).
//!
//! At exit, [`OtlpFlusher::flush`] exports what is buffered, bounded by its timeout: a dead
//! collector costs that timeout (the exporter's own HTTP timeout is set to the same value),
//! never more.
//!
//! ```no_run
//! use std::time::Duration;
//! use lameduck::hooks::HookPhase;
//! use lameduck::logs::{self, LogFormat, LogOptions};
//! use lameduck::otel::OtlpConfig;
//! use lameduck::server::Server;
//!
//! # fn main() -> std::io::Result<()> {
//! let logs = logs::init(LogOptions {
//!     otlp: Some(OtlpConfig {
//!         endpoint: "http://127.0.0.1:4318".into(),
//!         service_name: "my-service".into(),
//!         timeout: Duration::from_secs(2),
//!     }),
//!     ..LogOptions::new(LogFormat::Json, "info")
//! })?;
//! let mut builder = logs.configure(Server::builder());
//! if let Some(otlp) = logs.otlp.clone() {
//!     let timeout = Duration::from_secs(2);
//!     builder = builder.hook(HookPhase::Final, "export-spans", timeout, move || async move {
//!         otlp.flush(timeout).await.map_err(Into::into)
//!     });
//! }
//! # let _ = builder;
//! # Ok(()) }
//! ```

use std::cell::Cell;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::context::RequestContext;

/// Where and how to export spans.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The collector's base URL, such as `http://127.0.0.1:4318`; spans go to
    /// `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Timeout of one export request, and of [`OtlpFlusher::flush`]'s default.
    pub timeout: Duration,
}

/// The exporter's handle: keep it (or its flusher) to flush at exit.
#[derive(Debug, Clone)]
pub struct OtlpFlusher {
    provider: SdkTracerProvider,
}

/// An OTLP export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter: {0}")]
pub struct OtlpError(String);

/// Build the exporter and the `tracing` layer that feeds it.
///
/// # Errors
/// The exporter cannot be built (an invalid endpoint, say).
pub fn layer<S>(
    config: &OtlpConfig,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        OtlpFlusher,
    ),
    OtlpError,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let endpoint = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(config.timeout)
        .build()
        .map_err(|e| OtlpError(e.to_string()))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(LameduckIds::default())
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("lameduck");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, OtlpFlusher { provider }))
}

impl OtlpFlusher {
    /// Export every finished span still buffered; gives up after `timeout`.
    ///
    /// # Errors
    /// The export failed (the collector refused or was unreachable) or took longer than
    /// `timeout`.
    pub async fn flush(&self, timeout: Duration) -> std::io::Result<()> {
        let provider = self.provider.clone();
        let task = tokio::task::spawn_blocking(move || provider.force_flush());
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(std::io::Error::other(format!("span export: {e}"))),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("span export did not finish within {timeout:?}"),
            )),
        }
    }
}

thread_local! {
    /// Ids for the span being created on this thread (see [`request_span`]).
    static NEXT_IDS: Cell<Option<([u8; 16], [u8; 8])>> = const { Cell::new(None) };
}

/// Span ids: those of the request being created (so the exported span is the one the
/// response's `traceparent` names), random otherwise.
#[derive(Debug, Default)]
struct LameduckIds {
    random: RandomIdGenerator,
}

impl IdGenerator for LameduckIds {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.with(Cell::get) {
            Some((trace, _)) => TraceId::from_bytes(trace),
            None => self.random.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match NEXT_IDS.with(Cell::get) {
            Some((_, span)) => SpanId::from_bytes(span),
            None => self.random.new_span_id(),
        }
    }
}

/// The request's `request` span ([`context::request_span`](crate::context::request_span)),
/// with the trace and span ids of the response's `traceparent` and, when the request came
/// with a `traceparent`, the caller's span as its parent. The server calls it for each
/// request under `RequestSpans::SpanWith(request_span)`, which
/// [`Logs::request_spans`](crate::logs::Logs::request_spans) gives when exporting.
pub fn request_span(ctx: &RequestContext) -> tracing::Span {
    let trace = ctx.trace();
    NEXT_IDS.with(|c| c.set(Some((trace.trace_id(), trace.span_id()))));
    let span = crate::context::request_span(ctx);
    if let Some(parent) = trace.parent_id() {
        let flags = if trace.sampled() {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(trace.trace_id()),
            SpanId::from_bytes(parent),
            flags,
            true,
            TraceState::default(),
        );
        // Only fails when the span is disabled or has started: neither here.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    // The layer assigns ids when the span's context is first needed: now, while the ids
    // above are the generator's answer.
    let _ = span.context();
    NEXT_IDS.with(|c| c.set(None));
    span
}
