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

/// Install a `tracing` subscriber writing to stdout; `RUST_LOG` overrides `default_filter`.
pub fn init_logs(format: LogFormat, default_filter: &str) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(default_filter))
        .with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
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
/// The file cannot be opened.
pub fn init_logs_to_file(
    format: LogFormat,
    default_filter: &str,
    path: &std::path::Path,
) -> std::io::Result<LogFile> {
    let file = LogFile::open(path)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(default_filter))
        .with_ansi(false)
        .with_writer(file.writer());
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(file)
}

fn filter(default_filter: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter))
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
