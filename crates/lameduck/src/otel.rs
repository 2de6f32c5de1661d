//! OpenTelemetry export (feature `otel`): request spans sent over OTLP (HTTP/protobuf) by
//! the SDK's batch exporter, and a flush for a final shutdown hook.
//!
//! With [`Builder::request_spans`](crate::server::Builder::request_spans) on, each request's
//! `request` span becomes an OpenTelemetry span whose trace id and span id are the ones
//! lameduck put in the response's `traceparent` (a caller's `traceparent` makes it a child
//! of the caller's span). [`cli::init_logs_with`](crate::cli::init_logs_with) installs the
//! layer next to the log output.
//!
//! At exit, [`OtlpFlusher::flush`] exports what is buffered, bounded by its timeout: a dead
//! collector costs that timeout (the exporter's own HTTP timeout is set to the same value),
//! never more.

use std::cell::Cell;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::middleware::trace_context::TraceContext;

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
    LAYER_BUILT.store(true, std::sync::atomic::Ordering::Relaxed);
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

/// Whether [`layer`] has been called: until then no span is exported, and
/// [`request_span`] skips the work of giving spans their request's ids.
static LAYER_BUILT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

thread_local! {
    /// Ids for the span being created on this thread (see [`with_ids`]).
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

/// Create a request's span with `make`, giving it the request's trace and span ids and,
/// when the request came with a `traceparent`, the caller's span as its parent.
pub(crate) fn request_span(
    trace: &TraceContext,
    make: impl FnOnce() -> tracing::Span,
) -> tracing::Span {
    if !LAYER_BUILT.load(std::sync::atomic::Ordering::Relaxed) {
        return make();
    }
    NEXT_IDS.with(|c| c.set(Some((trace.trace_id(), trace.span_id()))));
    let span = make();
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
