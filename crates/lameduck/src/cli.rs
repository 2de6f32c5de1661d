//! What a service binary's `main` needs (feature `cli`): flags parsed with the exit-code
//! table's usage code, a runtime with a bounded shutdown, one-line start-up errors, the
//! `listening` line, and the log format flag. Kept in one place so every lameduck binary
//! behaves the same.
//!
//! ```no_run
//! use std::process::ExitCode;
//! use clap::Parser;
//! use lameduck::cli;
//! use lameduck::logs::LogFormat;
//!
//! #[derive(Parser)]
//! struct Args {
//!     /// Log format.
//!     #[arg(long, value_enum, default_value_t = LogFormat::Json)]
//!     log_format: LogFormat,
//! }
//!
//! fn main() -> ExitCode {
//!     let args: Args = match cli::parse_args() {
//!         Ok(args) => args,
//!         Err(code) => return code,
//!     };
//!     let options = lameduck::logs::LogOptions::new(args.log_format, "info");
//!     let logs = lameduck::logs::init(options).unwrap_or_default();
//!     cli::block_on_main("my-service", async move {
//!         let _builder = logs.configure(lameduck::server::Server::builder());
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

use crate::limit::MaxInFlight;
use crate::server::Server;

mod server_args;
pub use server_args::{ServerArgs, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN};

/// How long the runtime may take to stop its blocking tasks after `main`'s future is done.
pub const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// Parse the command line into `A`. `--help` and `--version` print and give
/// [`OK`](crate::exit::OK); a usage error prints clap's message and gives
/// [`USAGE`](crate::exit::USAGE): return the `Err` from `main`. `--version` prints the
/// command's version followed by the executable's GNU build id (`unknown` without one), as
/// `name 0.1.0 (build id 3f9a...)`. Also records the path the process was started with,
/// for upgrades.
///
/// # Errors
/// The process should exit with the code in the error (help, version or usage error
/// printed already).
pub fn parse_args<A: clap::Parser>() -> Result<A, ExitCode> {
    crate::exe::record();
    let mut cmd = A::command();
    if let Some(v) = cmd.get_version() {
        let v = format!("{v} (build id {})", crate::exe::build_id());
        cmd = cmd.version(v);
    }
    let matches = cmd.try_get_matches().map_err(usage_exit)?;
    A::from_arg_matches(&matches).map_err(|e| usage_exit(e.format(&mut A::command())))
}

/// The upgrade flags every service binary shares: `--upgrade-exec PATH`
/// (`LAMEDUCK_UPGRADE_EXEC`), the executable a SIGHUP upgrade starts. Flatten it into the
/// binary's flags (`#[command(flatten)]`) and give it to the builder with
/// [`UpgradeArgs::apply`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UpgradeArgs {
    /// The executable a SIGHUP upgrade starts [default: the path this process was started
    /// with, symlinks kept, so a binary replaced with mv or a switched symlink runs next].
    #[arg(long, env = "LAMEDUCK_UPGRADE_EXEC", value_name = "PATH")]
    pub upgrade_exec: Option<std::path::PathBuf>,
}

impl UpgradeArgs {
    /// Set these flags on `builder`.
    pub fn apply(&self, builder: crate::server::Builder) -> crate::server::Builder {
        match &self.upgrade_exec {
            Some(path) => builder.upgrade_exec(path),
            None => builder,
        }
    }
}

/// The environment variable that holds the admin bearer token (see [`admin_token`]).
pub const ADMIN_TOKEN_ENV: &str = "LAMEDUCK_ADMIN_TOKEN";

/// The admin bearer token (`Builder::admin_token`): the contents of `file` when given
/// (`--admin-token-file`; surrounding white space dropped, such as a trailing newline),
/// else [`ADMIN_TOKEN_ENV`], else none.
///
/// # Errors
/// The file cannot be read, or the token is empty or holds a line break (CR or LF) inside
/// it, which no `Authorization` header can carry.
pub fn admin_token(file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the admin token file {}: {e}", path.display()))?
            .trim()
            .to_owned(),
        None => match std::env::var(ADMIN_TOKEN_ENV) {
            Ok(t) => t.trim().to_owned(),
            Err(_) => return Ok(None),
        },
    };
    let from = || file.map_or(ADMIN_TOKEN_ENV.to_owned(), |p| p.display().to_string());
    if token.is_empty() {
        return Err(format!("the admin token in {} is empty", from()));
    }
    if token.contains(['\r', '\n']) {
        return Err(format!(
            "the admin token in {} holds a line break inside it; a token is one line",
            from()
        ));
    }
    Ok(Some(token))
}

/// Print a clap error (help and version included) and give its exit code: clap's
/// `--help`/`--version` give [`OK`](crate::exit::OK), usage errors
/// [`USAGE`](crate::exit::USAGE).
pub fn usage_exit(e: clap::Error) -> ExitCode {
    let _ = e.print();
    ExitCode::from(if e.use_stderr() {
        crate::exit::USAGE
    } else {
        crate::exit::OK
    })
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

/// A number, `off` or `adaptive`, as a TOML file gives it.
impl serde::Serialize for MaxInFlight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxInFlight::Fixed(n) => s.serialize_u64(n.get() as u64),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

/// An integer or one of the words, as [`FromStr`](std::str::FromStr) reads them.
impl<'de> serde::Deserialize<'de> for MaxInFlight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            Word(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string(),
            Raw::Word(w) => w,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The value of a `--request-timeout` flag: a duration (`2s`, `500ms`; more than zero) or
/// `off`; the same strings in a TOML file. Give it to
/// [`Builder::request_timeout`](crate::server::Builder::request_timeout) with
/// [`RequestTimeout::limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestTimeout(Option<Duration>);

impl RequestTimeout {
    /// The timeout, `None` for off.
    pub fn limit(self) -> Option<Duration> {
        self.0
    }
}

impl From<Option<Duration>> for RequestTimeout {
    /// A duration (zero counts as off), or off.
    fn from(d: Option<Duration>) -> Self {
        Self(d.filter(|d| !d.is_zero()))
    }
}

impl std::str::FromStr for RequestTimeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(Self(None));
        }
        match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() => Err("must be more than 0 (or off)".into()),
            Ok(d) => Ok(Self(Some(d))),
            Err(e) => Err(format!("{s:?} is not a duration or off: {e}")),
        }
    }
}

impl Display for RequestTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{}", humantime::format_duration(d)),
            None => f.write_str("off"),
        }
    }
}

impl serde::Serialize for RequestTimeout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RequestTimeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `Option<Duration>` as a humantime string (`"1s"`, `"500ms"`) in a configuration file:
/// `#[serde(with = "opt_duration")]` on a field, as [`ServerArgs`] and the orders service do.
pub mod opt_duration {
    use serde::Deserialize as _;
    use std::time::Duration;

    /// Write `d` as `"1s"`, `"500ms"` (nothing for `None`).
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    /// Read a humantime string, or nothing.
    ///
    /// # Errors
    /// A string that is no duration, named.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}
