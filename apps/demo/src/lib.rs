//! `lameduck-demo`: the smallest lameduck service, used as a test and benchmark target.
//!
//! Routes: `GET /ping` -> `pong`; `GET /work?ms=N` waits N ms (0..=600000) then answers
//! `done`; `GET /events` streams a server-sent event every 100 ms and ends with a final
//! event when the server starts draining; `POST /upload` reads the whole body and answers
//! its length. `GET /panic` panics (the server answers 500 and lives on). Admin: `/livez`,
//! `/readyz`, `/metrics`, `/upgrade`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use clap::Parser;
use futures_util::stream::{self, Stream};
use lameduck::cli;
use lameduck::context::{RequestContext, RequestSpans};
use lameduck::lifecycle::Lifecycle;
use lameduck::logs::{self, LogFlusher, LogWriter};
use lameduck::middleware::route::Routes;
use lameduck::server::{self, Server};

/// The longest `/work` accepts, in milliseconds.
pub const MAX_WORK_MS: u64 = 600_000;
/// Interval between `/events` events.
pub const EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "lameduck-demo",
    version,
    about = "The smallest lameduck service"
)]
pub struct Args {
    /// The server flags every lameduck binary shares (listeners, timeouts, limits, TLS,
    /// PROXY protocol, pid and state files, admin token, log format); the demo listens on
    /// 127.0.0.1:8081 and 127.0.0.1:9091 by default, beside the orders service.
    #[command(flatten)]
    pub server: cli::ServerArgs,
    /// The upgrade flags every lameduck binary shares.
    #[command(flatten)]
    pub upgrade: cli::UpgradeArgs,
    /// Write logs to this file (appended; flushed and fsync'd at exit) instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<std::path::PathBuf>,
    /// Log one access line per request (method, route, status, latency, bytes, client,
    /// request id).
    #[arg(long)]
    pub access_log: bool,
    /// Do not return x-request-id and traceparent on responses (they are on by default).
    #[arg(long)]
    pub no_response_ids: bool,
    /// Run each request's handler in a tracing span carrying its request id and trace id.
    #[arg(long)]
    pub request_spans: bool,
    /// Export request spans over OTLP/HTTP to this collector (such as
    /// `http://127.0.0.1:4318`); implies --request-spans.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Run a background task of this kind (a drill target for the drain of background work):
    /// `ticker` works in 100 ms steps and stops when told; `stubborn` never stops by itself;
    /// `panicking` panics at every start (restarted with back-off); `fatal` fails after
    /// 200 ms and stops the process (exit 1).
    #[arg(long, value_enum, value_name = "KIND")]
    pub background_task: Option<BackgroundTask>,
    /// Timeout of one span export, and of the final flush at exit.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub otlp_timeout: Duration,
}

/// The background tasks `--background-task` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackgroundTask {
    /// Works in 100 ms steps; stops at the end of a step once told to.
    Ticker,
    /// Ignores the stop: abandoned at the deadline.
    Stubborn,
    /// Panics at every start: restarted with back-off.
    Panicking,
    /// Fails after 200 ms with the stop-the-process policy.
    Fatal,
}

impl BackgroundTask {
    /// The task, named after its kind.
    pub fn task(self) -> lameduck::tasks::Task {
        use lameduck::tasks::{OnFailure, Task};
        match self {
            BackgroundTask::Ticker => Task::new("ticker", |ctx| async move {
                while !ctx.is_stopping() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(())
            }),
            BackgroundTask::Stubborn => Task::new("stubborn", |_| std::future::pending()),
            BackgroundTask::Panicking => Task::new("panicking", |_| async move {
                panic!("the panicking task panics, as asked");
            }),
            BackgroundTask::Fatal => Task::new("fatal", |_| async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err("the fatal task fails, as asked".into())
            })
            .on_failure(OnFailure::StopProcess),
        }
    }
}

/// What `run` needs of the log set-up: the log file's flusher (for a final hook) and writer
/// (for the access log), the span exporter's flusher, and how request ids reach the logs.
#[derive(Debug, Default)]
pub struct LogHandles {
    /// The log file's flusher and writer, when logging to a file.
    pub file: Option<(LogFlusher, LogWriter)>,
    /// The OTLP exporter, when exporting spans.
    pub otlp: Option<lameduck::otel::OtlpFlusher>,
    /// The request-span setting the log output supports (used with --request-spans).
    pub request_spans: RequestSpans,
}

/// How long the final hook may take to write and fsync the log file.
pub const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Parse flags, run the service, and map the outcome to the exit-code table.
pub fn main_impl() -> ExitCode {
    let args: Args = match cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let options = logs::LogOptions {
        format: args.server.log_format(),
        default_filter: "info",
        file: args.log_file.as_deref(),
        request_ids: args.request_spans,
        otlp: args
            .otlp_endpoint
            .clone()
            .map(|endpoint| lameduck::otel::OtlpConfig {
                endpoint,
                service_name: "lameduck-demo".into(),
                timeout: args.otlp_timeout,
            }),
    };
    let logs = match logs::init(options) {
        Ok(logs) => logs,
        Err(e) => return cli::fail("lameduck-demo", format_args!("logs: {e}")),
    };
    let handles = LogHandles {
        file: logs.file.as_ref().map(|f| (f.flusher(), f.writer())),
        otlp: logs.otlp.clone(),
        request_spans: logs.request_spans(),
    };
    let code = cli::block_on_main("lameduck-demo", run(args, handles));
    // Dropping the file writes and fsyncs the last lines, the shutdown report included.
    drop(logs);
    code
}

/// Run the demo service until it has shut down; returns the exit code.
///
/// # Errors
/// Start-up failures: signal handlers, binding.
pub async fn run(args: Args, logs: LogHandles) -> anyhow::Result<u8> {
    let LogHandles {
        file: log_file,
        otlp,
        request_spans,
    } = logs;
    // Signal handlers first: a SIGTERM during start-up still drains and runs hooks.
    let lifecycle = Lifecycle::new()
        .with_os_signals()
        .context("failed to install signal handlers")?;
    let mut builder = args
        .upgrade
        .apply(Server::builder())
        .version(env!("CARGO_PKG_VERSION"));
    let access_log = match (&log_file, args.access_log) {
        (_, false) => server::AccessLog::Off,
        // Straight to the file, formatted by lameduck: several times cheaper per line.
        (Some((_, writer)), true) => server::AccessLog::Json(std::sync::Arc::new(writer.clone())),
        (None, true) => server::AccessLog::Tracing,
    };
    // Final hooks run last-registered first: spans are exported before the log file's
    // last flush, so a failed export is logged to it.
    if let Some((flusher, _)) = log_file {
        builder = builder.hook(
            lameduck::hooks::HookPhase::Final,
            "flush-log-file",
            LOG_FLUSH_TIMEOUT,
            move || async move { flusher.flush(LOG_FLUSH_TIMEOUT).await.map_err(Into::into) },
        );
    }
    if let Some(otlp) = otlp {
        let timeout = args.otlp_timeout;
        builder = builder.hook(
            lameduck::hooks::HookPhase::Final,
            "export-spans",
            timeout,
            move || async move { otlp.flush(timeout).await.map_err(Into::into) },
        );
    }
    if let Some(kind) = args.background_task {
        builder = builder.task(kind.task());
    }
    let settings = args.server.clone().or(defaults());
    let (listen, admin) = (settings.listen_addr(), settings.admin_addr());
    let server = settings
        .apply(builder)
        .map_err(anyhow::Error::msg)?
        .access_log(access_log)
        .request_spans(request_spans)
        .response_ids(!args.no_response_ids)
        .bind(listen, lifecycle)
        .await?;
    cli::announce(&server, listen, admin)?;
    let report = server.serve(app()).await;
    Ok(report.exit_code())
}

/// The demo's own defaults, under the flags: it listens beside the orders service (8080,
/// 9090).
pub fn defaults() -> cli::ServerArgs {
    cli::ServerArgs {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
        ..cli::ServerArgs::default()
    }
}

/// The demo's routes, with their templates for the metrics' route labels.
pub fn app() -> Routes {
    Routes::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/work", get(work))
        .route("/events", get(events))
        .route("/panic", get(panics))
        .route("/upload", axum::routing::post(upload))
}

async fn upload(body: axum::body::Bytes) -> String {
    format!("received {} bytes", body.len())
}

async fn work(RawQuery(query): RawQuery) -> Result<&'static str, (StatusCode, String)> {
    let ms =
        parse_ms(query.as_deref()).map_err(|why| (StatusCode::BAD_REQUEST, format!("{why}\n")))?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    // With --request-spans, this line carries the request's ids.
    tracing::info!(ms, "work done");
    Ok("done")
}

/// Parse the `ms` query parameter of `/work`.
pub fn parse_ms(query: Option<&str>) -> Result<u64, String> {
    let raw = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("ms="))
        .ok_or_else(|| "missing query parameter ms (0..=600000)".to_string())?;
    match raw.parse::<u64>() {
        Ok(ms) if ms <= MAX_WORK_MS => Ok(ms),
        _ => Err(format!(
            "ms must be an integer from 0 to {MAX_WORK_MS}, got {raw:?}"
        )),
    }
}

async fn panics() -> &'static str {
    panic!("the /panic route panics on purpose")
}

async fn events(
    ctx: RequestContext,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let mut tick = tokio::time::interval(EVENT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = stream::unfold(
        (ctx, tick, 0u64, false),
        |(ctx, mut tick, n, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                _ = ctx.shutdown().stop_soon() => {
                    let last = Event::default().event("shutdown").data("server is draining; reconnect elsewhere");
                    Some((Ok(last), (ctx, tick, n, true)))
                }
                _ = tick.tick() => {
                    let ev = Event::default().id(n.to_string()).data(format!("tick {n}"));
                    Some((Ok(ev), (ctx, tick, n + 1, false)))
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_is_parsed_and_range_checked() {
        assert_eq!(parse_ms(Some("ms=5")), Ok(5));
        assert_eq!(parse_ms(Some("a=1&ms=600000")), Ok(600_000));
        assert!(parse_ms(Some("ms=600001"))
            .unwrap_err()
            .contains("0 to 600000"));
        assert!(parse_ms(Some("ms=abc")).unwrap_err().contains("\"abc\""));
        assert!(parse_ms(Some("ms=-1")).is_err());
        assert!(parse_ms(None).unwrap_err().contains("missing"));
    }

    #[test]
    fn flags_parse_durations_and_reject_bad_ones() {
        let a = Args::try_parse_from([
            "d",
            "--shutdown-timeout",
            "500ms",
            "--listen",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(a.server.shutdown_timeout, Some(Duration::from_millis(500)));
        // The demo's own defaults under the flags.
        let s = a.server.or(defaults());
        assert_eq!((s.listen_addr().port(), s.admin_addr().port()), (0, 9091));
        assert!(Args::try_parse_from(["d", "--drain-delay", "soon"]).is_err());
    }
}
