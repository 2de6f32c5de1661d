//! Logs for service binaries (feature `logs`): the `tracing` subscriber, the filter
//! (`RUST_LOG` or the binary's default), lameduck's JSON output, the request fields it
//! writes, and a log file that is flushed and `fsync`'d at exit.
//!
//! One way to start them, [`init`], and one call that tells the server how request ids
//! reach them ([`Logs::configure`]):
//!
//! ```no_run
//! use lameduck::logs::{self, LogFormat, LogOptions};
//! use lameduck::server::Server;
//!
//! # fn main() -> std::io::Result<()> {
//! let logs = logs::init(LogOptions {
//!     // Each request's ids on the lines its handler logs, in the cheapest way this
//!     // output supports.
//!     request_ids: true,
//!     ..LogOptions::new(LogFormat::Json, "info")
//! })?;
//! let builder = logs.configure(Server::builder());
//! # let _ = builder;
//! # Ok(()) }
//! ```
//!
//! Installing a subscriber changes nothing in the server by itself: the server is told how
//! request ids reach the logs ([`RequestSpans`]), by [`Logs::configure`] or, under a
//! subscriber of the application's own, by
//! [`Builder::request_spans`](crate::server::Builder::request_spans).

mod file;
mod filter;
mod json;

pub use file::{
    LogFile, LogFlusher, LogWriter, BATCH_BYTES, BATCH_DELAY, DROP_FLUSH_TIMEOUT, MAX_BUFFER_BYTES,
};
pub use json::FastJsonFields;

use crate::context::RequestSpans;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "cli",
    derive(clap::ValueEnum, serde::Deserialize, serde::Serialize),
    serde(rename_all = "lowercase")
)]
pub enum LogFormat {
    /// JSON lines (the default for services).
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// What [`init`] sets up.
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
    /// Each request's ids (request id, trace id) on the lines its handler logs (default
    /// off, the cheapest); always on with an exporter, whose spans carry them.
    pub request_ids: bool,
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
            request_ids: false,
        }
    }
}

/// What [`init`] started: keep it until `main` returns (dropping the file writes and
/// `fsync`s its last lines), and flush both from a final hook.
#[derive(Debug, Default)]
pub struct Logs {
    /// The log file, when logging to one.
    pub file: Option<LogFile>,
    /// The span exporter, when exporting.
    #[cfg(feature = "otel")]
    pub otlp: Option<crate::otel::OtlpFlusher>,
    /// The output's format; `None` when another subscriber was installed already.
    format: Option<LogFormat>,
    /// [`LogOptions::request_ids`].
    request_ids: bool,
}

impl Logs {
    /// The server's [`RequestSpans`] setting for these logs: with an exporter, spans the
    /// exporter gives the ids of the response's `traceparent`; without
    /// [`request_ids`](LogOptions::request_ids), [`Off`](RequestSpans::Off); else the
    /// cheapest that shows each request's ids on the lines its handler logs: with the JSON
    /// output, [`IdsInLogs`](RequestSpans::IdsInLogs) (the same lines, no span); with text or
    /// another subscriber, [`Span`](RequestSpans::Span).
    pub fn request_spans(&self) -> RequestSpans {
        #[cfg(feature = "otel")]
        if self.otlp.is_some() {
            return RequestSpans::SpanWith(crate::otel::request_span);
        }
        if !self.request_ids {
            return RequestSpans::Off;
        }
        match self.format {
            Some(LogFormat::Json) => RequestSpans::IdsInLogs,
            // Text, or a subscriber installed by someone else: a span works with any.
            Some(LogFormat::Text) | None => RequestSpans::Span,
        }
    }

    /// `builder` told how request ids reach these logs ([`request_spans`](Self::request_spans)).
    pub fn configure(&self, builder: crate::server::Builder) -> crate::server::Builder {
        builder.request_spans(self.request_spans())
    }
}

/// Install the `tracing` subscriber `options` describe: the log output (stdout or a
/// [`LogFile`]) and, with the `otel` feature, an OTLP span exporter.
///
/// # Errors
/// The log file cannot be opened, the exporter cannot be built, or a subscriber is
/// already installed.
pub fn init(options: LogOptions<'_>) -> std::io::Result<Logs> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let mut logs = Logs {
        format: Some(options.format),
        request_ids: options.request_ids,
        ..Logs::default()
    };
    let output = output(&options, &mut logs)?;
    let exporter = exporter(&options, &mut logs)?;
    let layers: Vec<BoxedLayer> = std::iter::once(output).chain(exporter).collect();
    let (directives, rejected) = filter::filter_directives(
        std::env::var_os("RUST_LOG").as_deref(),
        options.default_filter,
    );
    tracing_subscriber::registry()
        .with(filter::log_filter(&directives))
        .with(layers)
        .try_init()
        .map_err(std::io::Error::other)?;
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

type Base = tracing_subscriber::layer::Layered<filter::BoxedFilter, tracing_subscriber::Registry>;
type BoxedLayer = Box<dyn tracing_subscriber::Layer<Base> + Send + Sync>;

/// The span exporter `options` ask for (feature `otel`), its flusher kept in `logs`.
#[cfg(feature = "otel")]
fn exporter(options: &LogOptions<'_>, logs: &mut Logs) -> std::io::Result<Option<BoxedLayer>> {
    use tracing_subscriber::Layer as _;
    let Some(config) = &options.otlp else {
        return Ok(None);
    };
    let (layer, flusher) = crate::otel::layer(config).map_err(std::io::Error::other)?;
    logs.otlp = Some(flusher);
    Ok(Some(layer.boxed()))
}

/// Without the `otel` feature there is no exporter.
#[cfg(not(feature = "otel"))]
fn exporter(_: &LogOptions<'_>, _: &mut Logs) -> std::io::Result<Option<BoxedLayer>> {
    Ok(None)
}

/// The log output `options` ask for: stdout or a [`LogFile`] (kept in `logs`), JSON or text.
fn output(options: &LogOptions<'_>, logs: &mut Logs) -> std::io::Result<BoxedLayer> {
    use tracing_subscriber::Layer as _;
    let fmt = tracing_subscriber::fmt::layer();
    Ok(match (options.file, options.format) {
        (None, LogFormat::Json) => fmt
            .event_format(json::RequestFieldsJson::default())
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
                    .event_format(json::RequestFieldsJson::default())
                    .fmt_fields(FastJsonFields)
                    .with_ansi(false)
                    .with_writer(writer)
                    .boxed(),
                LogFormat::Text => fmt.with_ansi(false).with_writer(writer).boxed(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_span_setting_follows_the_output() {
        let with = |format| Logs {
            format,
            request_ids: true,
            ..Logs::default()
        };
        assert!(matches!(
            with(Some(LogFormat::Json)).request_spans(),
            RequestSpans::IdsInLogs
        ));
        assert!(matches!(
            with(Some(LogFormat::Text)).request_spans(),
            RequestSpans::Span
        ));
        assert!(matches!(with(None).request_spans(), RequestSpans::Span));
        // Not asked for: off, the cheapest, whatever the output.
        let off = Logs {
            format: Some(LogFormat::Json),
            ..Logs::default()
        };
        assert!(matches!(off.request_spans(), RequestSpans::Off));
    }
}
