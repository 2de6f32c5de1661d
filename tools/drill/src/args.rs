//! The command line, and the plan it is turned into: targets as request templates, the
//! load, the faults and where the report goes. Every flag is checked here, before any load
//! starts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use http::{HeaderName, Method};

use crate::faults::{FaultPlan, PidSource};
use crate::plan::{Mode, Plan, Template};

/// The longest drill allowed, whatever `--duration` says.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// `--max-connections` by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Open files the drill keeps for itself beyond its connections (stdio, the runtime, the
/// report files).
const SPARE_FILES: u64 = 64;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "lameduck-drill",
    version,
    about = "Load and fault drills with strict outcome classes"
)]
pub struct Args {
    /// Target URL(s) (http://host:port/path or https://...); workers are spread over them
    /// in turn.
    #[arg(required = true, num_args = 1..)]
    pub urls: Vec<String>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Extra header `Name: value` (repeatable); `{seq}`, `{worker}`, `{run}` are replaced.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Request body; `{seq}`, `{worker}`, `{run}` are replaced.
    #[arg(long, default_value = "")]
    pub body: String,
    /// How requests travel.
    #[arg(long, value_enum, default_value_t = Mode::KeepAlive)]
    pub mode: Mode,
    /// Closed loop: workers, each with its connection and one request at a time. Open loop
    /// (--rate): connections opened before the schedule starts (more on demand).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Open loop: request k is sent at start + k/RATE, whether or not earlier requests have
    /// answered; latencies count from that scheduled time. 0: a closed loop, each worker
    /// sending its next request when its last one is answered.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Open loop: the most connections open at once (the drill raises its own open-file
    /// limit to fit); a request that finds none free waits, and the run is marked
    /// client_saturated.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// How long to run (at most 1h).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Most requests in all.
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: u64,
    /// Per-request timeout (connect to end of body).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Fault: send this signal (TERM, HUP, KILL, ...) to the target process.
    #[arg(long)]
    pub signal: Option<String>,
    /// Fault target pid.
    #[arg(long)]
    pub pid: Option<i32>,
    /// Fault target pid, read from this file at each fault (follows restarts).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Fault: run this shell command (after the signal, if both are given).
    #[arg(long)]
    pub exec: Option<String>,
    /// First fault this long after the start.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub at: Duration,
    /// Time between faults.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// Number of faults.
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// For https:// targets: trust the CA certificate(s) in this PEM file.
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// For https:// targets: accept any server certificate (for self-signed test servers).
    #[arg(long)]
    pub insecure: bool,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart here (throughput, failures and latency over time, faults marked).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Exit 1 unless every request succeeded.
    #[arg(long)]
    pub expect_zero_errors: bool,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl Plan {
    /// Check `args` and make the plan.
    ///
    /// # Errors
    /// A URL that is not `http://host:port/...`, a bad method or header, no workers, a
    /// signal without a target pid.
    pub fn from_args(args: Args) -> anyhow::Result<Plan> {
        if args.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if args.max_connections == 0 {
            bail!("--max-connections must be at least 1");
        }
        if args.rate > 0 && args.concurrency > args.max_connections {
            bail!(
                "--concurrency ({}) opens more connections than --max-connections ({}) allows",
                args.concurrency,
                args.max_connections
            );
        }
        let targets: Vec<Arc<Template>> = templates(&args)?.into_iter().map(Arc::new).collect();
        if args.rate > 0 && args.max_connections < targets.len() {
            bail!("--max-connections must be at least one per target URL");
        }
        let faults = FaultPlan::from_args(&args)?;
        Ok(Plan {
            targets,
            mode: args.mode,
            concurrency: args.concurrency,
            rate: (args.rate > 0).then_some(args.rate),
            max_connections: args.max_connections,
            duration: args.duration.min(MAX_DURATION),
            requests: args.requests,
            timeout: args.timeout,
            faults,
            json: args.json,
            svg: args.svg,
            expect_zero_errors: args.expect_zero_errors,
            quiet: args.quiet,
            urls: args.urls,
        })
    }
}

impl FaultPlan {
    /// The faults `args` ask for: `None` without `--signal` or `--exec`.
    fn from_args(args: &Args) -> anyhow::Result<Option<FaultPlan>> {
        if args.signal.is_none() && args.exec.is_none() {
            return Ok(None);
        }
        let signal = args.signal.as_deref().map(parse_signal).transpose()?;
        let pid = match (&args.pid_file, args.pid) {
            (Some(file), _) => Some(PidSource::File(file.clone())),
            (None, Some(pid)) => Some(PidSource::Pid(pid)),
            (None, None) if signal.is_some() => bail!("--signal needs --pid or --pid-file"),
            (None, None) => None,
        };
        Ok(Some(FaultPlan {
            signal,
            pid,
            exec: args.exec.clone(),
            at: args.at,
            every: args.every,
            repeat: args.repeat,
        }))
    }
}

/// Raise the soft open-file limit so that `connections` fit, within the hard limit. Returns
/// how many connections fit: `connections`, or fewer when the hard limit is lower (then
/// the caller says so).
///
/// # Errors
/// The limits cannot be read or set.
pub fn fit_open_files(connections: usize) -> anyhow::Result<(usize, Option<u64>)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("cannot read RLIMIT_NOFILE")?;
    let want = connections as u64 + SPARE_FILES;
    if soft >= want {
        return Ok((connections, None));
    }
    let new = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard).context("cannot raise RLIMIT_NOFILE")?;
    let fit = usize::try_from(new.saturating_sub(SPARE_FILES)).unwrap_or(usize::MAX);
    Ok((fit.min(connections), Some(new)))
}

/// `TERM`, `SIGTERM` or `term` as a signal.
fn parse_signal(name: &str) -> anyhow::Result<nix::sys::signal::Signal> {
    let full = format!("SIG{}", name.trim_start_matches("SIG").to_uppercase());
    full.parse()
        .with_context(|| format!("unknown signal {name}"))
}

/// Parse flags into one request template per URL.
///
/// # Errors
/// A URL that is not `http://host:port/...`, a bad method or header.
pub fn templates(args: &Args) -> anyhow::Result<Vec<Template>> {
    let headers = headers(&args.headers)?;
    let method = Method::from_bytes(args.method.as_bytes())
        .with_context(|| format!("invalid method {}", args.method))?;
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    args.urls
        .iter()
        .map(|url| {
            let (addr, authority, path, https) = target(url)?;
            let tls = match https {
                Some(host) => Some(crate::tls::target(
                    &host,
                    args.ca.as_deref(),
                    args.insecure,
                    args.mode == Mode::H2,
                )?),
                None => None,
            };
            Ok(Template {
                addr,
                authority,
                tls,
                method: method.clone(),
                path,
                headers: headers.clone(),
                body: args.body.clone(),
                run: run.clone(),
            })
        })
        .collect()
}

/// A URL's address, authority, path, and for `https://` the host name TLS verifies.
fn target(url: &str) -> anyhow::Result<(std::net::SocketAddr, String, String, Option<String>)> {
    let uri: http::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("only http:// and https:// URLs are supported, got {url}"),
    };
    let authority = uri.authority().context("URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = uri
        .host()
        .context("URL has no host")?
        .trim_matches(['[', ']']);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let path = uri.path_and_query().map_or("/".into(), |p| p.to_string());
    Ok((addr, authority, path, https.then(|| host.to_string())))
}

/// `Name: value` flags as header names and (template) values.
fn headers(flags: &[String]) -> anyhow::Result<Vec<(HeaderName, String)>> {
    flags
        .iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("header must be `Name: value`, got {h:?}"))?;
            let name: HeaderName = name
                .trim()
                .parse()
                .with_context(|| format!("invalid header name in {h:?}"))?;
            Ok((name, value.trim().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(argv: &[&str]) -> anyhow::Result<Plan> {
        let mut all = vec!["lameduck-drill"];
        all.extend_from_slice(argv);
        Plan::from_args(Args::try_parse_from(all)?)
    }

    #[test]
    fn bad_flags_are_refused_before_any_load() {
        for (argv, why) in [
            (&["ftp://127.0.0.1:1/"][..], "only http:// and https://"),
            (&["https://127.0.0.1:1/"][..], "--ca PATH"),
            (&["http://127.0.0.1:1/", "--concurrency", "0"], "at least 1"),
            (
                &["http://127.0.0.1:1/", "--max-connections", "0"],
                "at least 1",
            ),
            (
                &[
                    "http://127.0.0.1:1/",
                    "--rate",
                    "10",
                    "--max-connections",
                    "4",
                ],
                "more connections than --max-connections",
            ),
            (&["http://127.0.0.1:1/", "-H", "no colon"], "Name: value"),
            (&["http://127.0.0.1:1/", "--signal", "TERM"], "--pid"),
            (
                &["http://127.0.0.1:1/", "--signal", "NOPE", "--pid", "1"],
                "unknown signal",
            ),
        ] {
            let e = plan(argv).expect_err(why);
            assert!(format!("{e:#}").contains(why), "{argv:?}: {e:#}");
        }
    }

    #[test]
    fn a_plan_keeps_the_load_and_caps_the_duration() {
        let p = plan(&[
            "http://127.0.0.1:8080/ping",
            "--rate",
            "0",
            "--duration",
            "2h",
        ])
        .expect("plan");
        assert_eq!(p.rate, None);
        assert_eq!(p.duration, MAX_DURATION);
        assert_eq!(p.targets[0].path, "/ping");
        assert!(p.faults.is_none());
        let p = plan(&["http://127.0.0.1:8080/", "--signal", "hup", "--pid", "7"]).expect("plan");
        let faults = p.faults.expect("faults");
        assert_eq!(faults.signal, Some(nix::sys::signal::Signal::SIGHUP));
    }
}
