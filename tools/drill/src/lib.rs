//! `lameduck-drill`: load and fault drills for any HTTP service, with strict outcome classes.
//!
//! ```text
//! lameduck-drill http://127.0.0.1:8080/ping --concurrency 32 --duration 20s \
//!     --signal HUP --pid-file /run/orders.pid --at 2s --every 1s --repeat 10 \
//!     --json report.json --expect-zero-errors
//! ```
//!
//! Every request ends in one class: `ok`, `status_NNN`, `refused` (connect refused: never
//! sent), `reset_fresh` / `reset_reused` (reset or closed before the response on a fresh or
//! a reused connection), `timeout`. Nothing is retried; a request that a closed keep-alive
//! connection handed back unsent goes out on a new connection, as any client does.

mod load;
pub mod outcome;
pub mod svg;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use http::{HeaderName, Method};
use serde::Serialize;

pub use load::{Mode, Template};
use outcome::{Outcome, Tally};

/// Width of a timeline slot.
pub const SLOT: Duration = Duration::from_millis(100);
/// The longest drill allowed, whatever `--duration` says.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "lameduck-drill",
    version,
    about = "Load and fault drills with strict outcome classes"
)]
pub struct Args {
    /// Target URL(s) (http://host:port/path); workers are spread over them in turn.
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
    /// Concurrent workers (connections).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Total requests per second (0: closed loop, as fast as responses come).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
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

/// A fault that was applied.
#[derive(Debug, Clone, Serialize)]
pub struct FaultEvent {
    /// Milliseconds since the start.
    pub t_ms: u64,
    /// What was done.
    pub what: String,
    /// `ok` or the error.
    pub result: String,
}

/// One timeline slot.
#[derive(Debug, Clone, Serialize)]
pub struct Slot {
    /// Start of the slot, milliseconds since the start.
    pub t_ms: u64,
    /// Successes.
    pub ok: u64,
    /// Failures.
    pub errors: u64,
    /// Median latency of successes (ms).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency of successes (ms).
    pub p99_ms: Option<f64>,
}

/// The drill's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target URL(s), comma-separated.
    pub url: String,
    /// Mode.
    pub mode: Mode,
    /// Workers.
    pub concurrency: usize,
    /// How long it ran (ms).
    pub elapsed_ms: u64,
    /// Requests in all.
    pub requests: u64,
    /// Requests per outcome class.
    pub outcomes: BTreeMap<String, u64>,
    /// Failed requests.
    pub errors: u64,
    /// Latency of successes: p50, p90, p99 (ms).
    pub latency_ms: BTreeMap<String, f64>,
    /// Faults applied.
    pub faults: Vec<FaultEvent>,
    /// Per-slot counts and latencies.
    pub timeline: Vec<Slot>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Parse flags into one request template per URL.
///
/// # Errors
/// A URL that is not `http://host:port/...`, a bad method or header.
pub fn templates(args: &Args) -> anyhow::Result<Vec<Template>> {
    args.urls.iter().map(|url| template(args, url)).collect()
}

fn template(args: &Args, url: &str) -> anyhow::Result<Template> {
    let uri: http::Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported, got {url}");
    }
    let authority = uri.authority().context("URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let host = uri
        .host()
        .context("URL has no host")?
        .trim_matches(['[', ']']);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header must be `Name: value`, got {h:?}"))?;
        let name: HeaderName = name
            .trim()
            .parse()
            .with_context(|| format!("invalid header name in {h:?}"))?;
        headers.push((name, value.trim().to_string()));
    }
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    Ok(Template {
        addr,
        authority,
        method: Method::from_bytes(args.method.as_bytes())
            .with_context(|| format!("invalid method {}", args.method))?,
        path: uri.path_and_query().map_or("/".into(), |p| p.to_string()),
        headers,
        body: args.body.clone(),
        run,
    })
}

struct Shared {
    start: Instant,
    slots: Mutex<Vec<Tally>>,
    issued: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn record(&self, outcome: Outcome, at: Instant, latency: Duration) {
        let slot = (at.duration_since(self.start).as_millis() / SLOT.as_millis()) as usize;
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slots.len() <= slot {
            slots.resize_with(slot + 1, Tally::default);
        }
        slots[slot].record(outcome, latency);
        let counter = if outcome.is_error() {
            &self.errors
        } else {
            &self.ok
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn worker(id: usize, t: Arc<Template>, args: Arc<Args>, shared: Arc<Shared>, end: Instant) {
    // `t` is this worker's target: worker i drives URL i mod n.
    let mut conn = None;
    let pace = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate as f64));
    let mut next = Instant::now();
    loop {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= end {
            return;
        }
        let seq = shared.issued.fetch_add(1, Ordering::Relaxed);
        if seq >= args.requests {
            return;
        }
        if let Some(p) = pace {
            tokio::time::sleep_until(next.into()).await;
            next += p;
        }
        let started = Instant::now();
        let outcome = load::one(&mut conn, &t, args.mode, id, seq, args.timeout).await;
        shared.record(outcome, started, started.elapsed());
        if outcome == Outcome::Refused {
            // Nothing listens: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn target_pid(args: &Args) -> anyhow::Result<i32> {
    if let Some(file) = &args.pid_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        return text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a pid", file.display()));
    }
    args.pid.context("--signal needs --pid or --pid-file")
}

async fn apply_fault(args: &Args) -> (String, String) {
    let mut what = Vec::new();
    let mut result = Ok(());
    if let Some(sig) = &args.signal {
        let name = format!("SIG{}", sig.trim_start_matches("SIG").to_uppercase());
        let r = (|| -> anyhow::Result<String> {
            let signal: nix::sys::signal::Signal = name
                .parse()
                .with_context(|| format!("unknown signal {sig}"))?;
            let pid = target_pid(args)?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                .with_context(|| format!("kill {pid}"))?;
            Ok(format!("{name} to {pid}"))
        })();
        match r {
            Ok(w) => what.push(w),
            Err(e) => result = Err(e),
        }
    }
    if let (Some(cmd), Ok(())) = (&args.exec, &result) {
        what.push(format!("exec {cmd:?}"));
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .status();
        result = match tokio::time::timeout(Duration::from_secs(60), run).await {
            Ok(Ok(st)) if st.success() => Ok(()),
            Ok(Ok(st)) => Err(anyhow::anyhow!("command exited with {st}")),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(anyhow::anyhow!("command ran over 60 s")),
        };
    }
    let result = match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    (what.join(", "), result)
}

/// Run the drill.
///
/// # Errors
/// Bad flags (URL, header, method).
pub async fn run(args: Args) -> anyhow::Result<Report> {
    run_until(args, std::future::pending()).await
}

/// Run the drill until its duration or request cap, or until `stop` completes (for callers
/// that drive their own faults, such as tests).
///
/// # Errors
/// Bad flags (URL, header, method).
pub async fn run_until(
    args: Args,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Report> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let targets: Vec<Arc<Template>> = templates(&args)?.into_iter().map(Arc::new).collect();
    let args = Arc::new(args);
    let start = Instant::now();
    let end = start + args.duration.min(MAX_DURATION);
    let shared = Arc::new(Shared {
        start,
        slots: Mutex::new(Vec::new()),
        issued: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let stopper = {
        let shared = shared.clone();
        tokio::spawn(async move {
            stop.await;
            shared.stop.store(true, Ordering::Relaxed);
        })
    };
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            tokio::spawn(worker(
                i,
                targets[i % targets.len()].clone(),
                args.clone(),
                shared.clone(),
                end,
            ))
        })
        .collect();
    let faults = {
        let args = args.clone();
        tokio::spawn(async move {
            let mut events = Vec::new();
            if args.signal.is_none() && args.exec.is_none() {
                return events;
            }
            for k in 0..args.repeat {
                let at = start + args.at + args.every * k;
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                if Instant::now() >= end {
                    // Earlier faults ran long; the load is over.
                    break;
                }
                let t_ms = start.elapsed().as_millis() as u64;
                let (what, result) = apply_fault(&args).await;
                eprintln!("fault at {t_ms} ms: {what}: {result}");
                events.push(FaultEvent { t_ms, what, result });
            }
            events
        })
    };
    let progress = (!args.quiet).then(|| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = shared.start.elapsed().as_secs_f64();
                let ok = shared.ok.load(Ordering::Relaxed);
                let err = shared.errors.load(Ordering::Relaxed);
                eprintln!(
                    "{s:6.1}s  ok {ok:>9}  errors {err:>6}  {:>8.0} req/s",
                    (ok + err) as f64 / s
                );
            }
        })
    });
    for w in workers {
        let _ = w.await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    stopper.abort();
    if let Some(p) = progress {
        p.abort();
    }
    let faults = faults.await.unwrap_or_default();
    Ok(report(&args, &shared, faults, start.elapsed()))
}

fn report(args: &Args, shared: &Shared, faults: Vec<FaultEvent>, elapsed: Duration) -> Report {
    let slots = shared
        .slots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut total = Tally::default();
    let mut timeline = Vec::with_capacity(slots.len());
    for (i, s) in slots.iter().enumerate() {
        total.merge(s);
        timeline.push(Slot {
            t_ms: i as u64 * SLOT.as_millis() as u64,
            ok: s.total() - s.errors(),
            errors: s.errors(),
            p50_ms: s.quantile(0.5).map(ms),
            p99_ms: s.quantile(0.99).map(ms),
        });
    }
    let mut latency_ms = BTreeMap::new();
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        if let Some(d) = total.quantile(q) {
            latency_ms.insert(name.to_string(), ms(d));
        }
    }
    Report {
        url: args.urls.join(", "),
        mode: args.mode,
        concurrency: args.concurrency,
        elapsed_ms: elapsed.as_millis() as u64,
        requests: total.total(),
        outcomes: total.counts.iter().map(|(o, n)| (o.name(), *n)).collect(),
        errors: total.errors(),
        latency_ms,
        faults,
        timeline,
    }
}

/// The terminal summary.
pub fn summary(r: &Report) -> String {
    let mut out = format!(
        "{} {:?} x{}: {} requests in {:.1} s ({:.0} req/s), {} failed\n",
        r.url,
        r.mode,
        r.concurrency,
        r.requests,
        r.elapsed_ms as f64 / 1e3,
        r.requests as f64 / (r.elapsed_ms.max(1) as f64 / 1e3),
        r.errors
    );
    out.push_str("  class            requests\n");
    for (class, n) in &r.outcomes {
        out.push_str(&format!("  {class:<16} {n:>8}\n"));
    }
    let lat: Vec<String> = r
        .latency_ms
        .iter()
        .map(|(k, v)| format!("{k} {v:.2} ms"))
        .collect();
    out.push_str(&format!(
        "  latency (bucket upper bounds): {}\n",
        lat.join(", ")
    ));
    for f in &r.faults {
        out.push_str(&format!(
            "  fault at {} ms: {} ({})\n",
            f.t_ms, f.what, f.result
        ));
    }
    out
}

/// Parse flags, run, print, and map the outcome to an exit code.
pub fn main_impl() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let (json, svg_path, expect) = (args.json.clone(), args.svg.clone(), args.expect_zero_errors);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lameduck-drill: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(args));
    rt.shutdown_timeout(Duration::from_secs(1));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lameduck-drill: {e:#}");
            return ExitCode::from(1);
        }
    };
    print!("{}", summary(&report));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("lameduck-drill: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(path) = svg_path {
        if let Err(e) = std::fs::write(&path, svg::chart(&report)) {
            eprintln!("lameduck-drill: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if expect && report.errors > 0 {
        eprintln!(
            "lameduck-drill: {} of {} requests failed (--expect-zero-errors)",
            report.errors, report.requests
        );
        return ExitCode::from(1);
    }
    ExitCode::from(0)
}

/// The address a URL's host and port resolve to (for tests).
pub fn resolve(url: &str) -> Option<SocketAddr> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_matches(['[', ']']);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, uri.port_u16()?))
        .ok()?
        .next()
}
