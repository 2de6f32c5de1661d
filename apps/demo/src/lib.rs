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
use lameduck::logs::{self, LogFlusher, LogFormat, LogWriter};
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
    /// Address of the HTTP listener (port 0 picks one and prints it).
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Address of the admin listener (/livez, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub admin_listen: SocketAddr,
    /// Grace period for in-flight requests after the drain delay (20s: with the default
    /// hooks, the whole shutdown fits Kubernetes' 30 s terminationGracePeriodSeconds).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Keep accepting this long after SIGTERM while load balancers notice.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// Keep idle keep-alive connections this long during the drain (0s closes them at once).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub idle_grace: Duration,
    /// Cut connections whose request head takes longer than this.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = server::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// Most requests in flight at once (a number, or adaptive: a limit that follows the
    /// latency), or off; beyond it, 503 `overloaded` at once.
    #[arg(long, default_value = "off")]
    pub max_in_flight: lameduck::limit::MaxInFlight,
    /// Longest time a handler may take, or off; then 503 `handler_timeout`.
    #[arg(long, default_value = "off")]
    pub request_timeout: cli::RequestTimeout,
    /// Longest wait between two pieces of a request body (then 408).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// Longest time for a whole request body, from its head (then 408).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// The orchestrator's stop timeout: start-up fails, naming each part, when the drain
    /// delay, shutdown timeout and hook timeouts do not fit in it.
    #[arg(long, env = "LAMEDUCK_GRACE_BUDGET", value_parser = humantime::parse_duration)]
    pub grace_budget: Option<Duration>,
    /// Every connection starts with a PROXY protocol header (v2 or v1) naming the client, as
    /// HAProxy sends with send-proxy-v2; connections without one are closed.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// HTTPS on the main listener.
    #[cfg(feature = "tls")]
    #[command(flatten)]
    pub tls: cli::TlsArgs,
    /// Read the admin bearer token (for POST /drain and /undrain) from this file; else
    /// LAMEDUCK_ADMIN_TOKEN; without either, those routes answer 404.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Write the pid here once serving (rewritten by the new process of an upgrade).
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<std::path::PathBuf>,
    /// Record here that this process serves and, at exit, how it ended; the next process
    /// exports that as lameduck_previous_shutdown{outcome} on /metrics.
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<std::path::PathBuf>,
    /// The upgrade flags every lameduck binary shares.
    #[command(flatten)]
    pub upgrade: cli::UpgradeArgs,
    /// Connections the kernel queues for accepting (capped by net.core.somaxconn).
    #[arg(long, default_value_t = server::DEFAULT_LISTEN_BACKLOG, value_parser = clap::value_parser!(u32).range(1..))]
    pub listen_backlog: u32,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
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
        format: args.log_format,
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
    if let Some(budget) = args.grace_budget {
        builder = builder.grace_budget(budget);
    }
    if let Some(path) = &args.pid_file {
        builder = builder.pid_file(path);
    }
    if let Some(path) = &args.state_file {
        builder = builder.state_file(path);
    }
    if let Some(token) =
        cli::admin_token(args.admin_token_file.as_deref()).map_err(anyhow::Error::msg)?
    {
        builder = builder.admin_token(token);
    }
    if let Some(kind) = args.background_task {
        builder = builder.task(kind.task());
    }
    builder = builder.max_in_flight(args.max_in_flight.clone());
    #[cfg(feature = "tls")]
    if let Some(tls) = args.tls.config() {
        builder = builder.tls(tls);
    }
    let server = builder
        .access_log(access_log)
        .request_spans(request_spans)
        .response_ids(!args.no_response_ids)
        .proxy_protocol(args.proxy_protocol)
        .drain_delay(args.drain_delay)
        .shutdown_timeout(args.shutdown_timeout)
        .idle_grace(args.idle_grace)
        .header_read_timeout(args.header_read_timeout)
        .body_limit(args.body_limit)
        .request_timeout(args.request_timeout.limit())
        .body_read_timeout(args.body_read_timeout)
        .body_timeout(args.body_timeout)
        .listen_backlog(args.listen_backlog)
        .admin(args.admin_listen)
        .bind(args.listen, lifecycle)
        .await?;
    cli::announce(&server, args.listen, args.admin_listen)?;
    let report = server.serve(app()).await;
    Ok(report.exit_code())
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
        assert_eq!(a.shutdown_timeout, Duration::from_millis(500));
        assert!(Args::try_parse_from(["d", "--drain-delay", "soon"]).is_err());
    }
}
