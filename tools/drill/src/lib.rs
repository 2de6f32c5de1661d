//! `lameduck-drill`: load and fault drills for any HTTP service, with strict outcome classes.
//!
//! ```text
//! lameduck-drill http://127.0.0.1:8080/ping --concurrency 32 --duration 20s \
//!     --signal HUP --pid-file /run/orders.pid --at 2s --every 1s --repeat 10 \
//!     --json report.json --expect-zero-errors
//! ```
//!
//! With `--rate R` the load is an open loop: request k is sent at start + k/R whatever the
//! earlier ones do, on `--concurrency` connections opened first and more on demand up to
//! `--max-connections`, and latencies count from the scheduled time; the report gives the
//! offered, sent and achieved rates, the send lag, and whether the client saturated.
//! Without it, `--concurrency` workers each send their next request when the last one is
//! answered (a closed loop).
//!
//! Every request ends in one class: `ok`, `status_NNN`, `refused` (connect refused: never
//! sent), `reset_fresh` / `reset_reused` (reset or closed before the response on a fresh or
//! a reused connection), `timeout`. Nothing is retried; a request that a closed keep-alive
//! connection handed back unsent goes out on a new connection, as any client does.
//!
//! SIGINT or SIGTERM ends the load early; the report is still printed and written.
//!
//! The flags become a [`Plan`] (`args.rs`, `plan.rs`); the load (`load.rs`) and the faults
//! (`faults.rs`) run from it; the report (`report.rs`, `svg.rs`) is made from what they
//! recorded.

mod args;
mod faults;
mod load;
mod open;
pub mod outcome;
mod plan;
mod record;
mod report;
pub mod svg;
pub mod tls;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lameduck::cli;

pub use args::{fit_open_files, templates, Args, DEFAULT_MAX_CONNECTIONS, MAX_DURATION};
pub use faults::{FaultEvent, FaultPlan, PidSource, EXEC_TIMEOUT};
pub use open::MAX_STREAMS_PER_CONNECTION;
pub use plan::{Mode, Plan, Template};
pub use record::SLOT;
pub use report::{summary, Report, Slot, NO, NOT_ESTABLISHED, YES};

/// How often the live progress line is printed.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Run the drill.
///
/// # Errors
/// Bad flags (URL, header, method, signal).
pub async fn run(args: Args) -> anyhow::Result<Report> {
    run_until(args, std::future::pending()).await
}

/// Run the drill until its duration or request cap, or until `stop` completes (for callers
/// that drive their own faults, such as tests).
///
/// # Errors
/// Bad flags (URL, header, method, signal).
pub async fn run_until(
    args: Args,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Report> {
    let plan = Plan::from_args(args)?;
    Ok(run_plan(&plan, stop).await)
}

/// Run `plan` until its end or until `stop` completes.
async fn run_plan(
    plan: &Plan,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Report {
    let closing = tokio_util::sync::CancellationToken::new();
    // The open loop's first connections are opened before its schedule starts.
    let warm = match plan.rate {
        Some(_) => Some(open::warm_up(plan, &closing).await),
        None => None,
    };
    let start = Instant::now();
    let end = start + plan.duration;
    let recorder = Arc::new(record::Recorder::new(start));
    let stopper = {
        let token = recorder.stop.clone();
        tokio::spawn(async move {
            stop.await;
            token.cancel();
        })
    };
    let faults = plan.faults.clone().map(|f| faults::schedule(f, start, end));
    let progress = (!plan.quiet).then(|| tokio::spawn(progress(recorder.clone())));
    let open = match (plan.rate, warm) {
        (Some(rate), Some(warm)) => {
            Some(open::open_loop(plan, rate, warm, &recorder, end, closing).await)
        }
        _ => {
            load::closed_loop(plan, &recorder, end).await;
            None
        }
    };
    recorder.stop.cancel();
    stopper.abort();
    if let Some(p) = progress {
        p.abort();
    }
    let faults = match faults {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let elapsed = start.elapsed();
    report::build(plan, &recorder.take(), open, faults, elapsed)
}

/// A progress line on stderr every [`PROGRESS_INTERVAL`].
async fn progress(recorder: Arc<record::Recorder>) {
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = recorder.start.elapsed().as_secs_f64();
        let ok = recorder.ok.load(Ordering::Relaxed);
        let err = recorder.errors.load(Ordering::Relaxed);
        eprintln!(
            "{s:6.1}s  ok {ok:>9}  errors {err:>6}  {:>8.0} req/s",
            (ok + err) as f64 / s
        );
    }
}

/// Parse flags, run, print, and map the outcome to the exit-code table: 0 when the drill
/// ran (and, with `--expect-zero-errors`, nothing failed), 1 otherwise, 2 for bad flags.
pub fn main_impl() -> ExitCode {
    let args: Args = match cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let mut plan = match Plan::from_args(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lameduck-drill: {e:#}");
            return ExitCode::from(lameduck::exit::USAGE);
        }
    };
    if plan.rate.is_some() {
        fit_connections(&mut plan);
    }
    cli::block_on_main("lameduck-drill", async move {
        let report = run_plan(&plan, stop_signal()).await;
        write_outputs(&plan, &report)
    })
}

/// Raise the open-file limit for the open loop's `--max-connections`, saying so; when the
/// hard limit is lower, fewer connections are allowed, and that is said too.
fn fit_connections(plan: &mut Plan) {
    match fit_open_files(plan.max_connections) {
        Ok((fit, raised)) => {
            if let Some(n) = raised {
                eprintln!(
                    "lameduck-drill: raised the open-file limit to {n} for --max-connections {}",
                    plan.max_connections
                );
            }
            if fit < plan.max_connections {
                eprintln!(
                    "lameduck-drill: the open-file hard limit allows {fit} connections, not --max-connections {}: using {fit}",
                    plan.max_connections
                );
                plan.max_connections = fit.max(1);
                plan.concurrency = plan.concurrency.min(plan.max_connections);
            }
        }
        Err(e) => eprintln!(
            "lameduck-drill: {e:#}; --max-connections {} may not fit",
            plan.max_connections
        ),
    }
}

/// Completes on SIGINT or SIGTERM: the load stops early and the report is still written
/// (scripts end a drill that way when their faults are done).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("lameduck-drill: stopping on a signal; writing the report");
        }
        // Without handlers the default action applies: nothing to wait for here.
        _ => std::future::pending::<()>().await,
    }
}

/// Print the summary, write the JSON and SVG files, and judge `--expect-zero-errors`.
fn write_outputs(plan: &Plan, report: &Report) -> anyhow::Result<u8> {
    print!("{}", summary(report));
    if let Some(path) = &plan.json {
        let text = serde_json::to_string_pretty(report).context("cannot encode the report")?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &plan.svg {
        std::fs::write(path, svg::chart(report))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if plan.expect_zero_errors && report.verdict != YES {
        anyhow::bail!(
            "every offered request succeeded: {} ({} of {} requests failed, {} unsent{}; --expect-zero-errors)",
            report.verdict,
            report.errors,
            report.requests,
            report.unsent,
            if report.client_saturated { ", client saturated" } else { "" }
        );
    }
    Ok(lameduck::exit::OK)
}

/// The address a URL's host and port resolve to (for tests).
pub fn resolve(url: &str) -> Option<SocketAddr> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_matches(['[', ']']);
    std::net::ToSocketAddrs::to_socket_addrs(&(host, uri.port_u16()?))
        .ok()?
        .next()
}
