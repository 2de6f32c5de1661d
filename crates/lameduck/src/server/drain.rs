//! The drain, as a sequence of named steps (see the [module docs](super#the-drain)):
//! announce it, start the before-drain hooks, keep accepting for `drain_delay`, close (or
//! leave to the new process) the listener, wait for the connections up to the deadline or a
//! second signal, abandon what is left, then the after-drain and final hooks and the
//! report.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::upgrade::{Handoff, Stop};
use super::{activation, Builder, Listeners, Shared};
use crate::hooks::{HookOutcome, HookPhase, Hooks};
use crate::in_flight::InFlight;
use crate::lifecycle::{Lifecycle, Phase, ShutdownReport, Signal};
use crate::metrics::Metrics;
use crate::tasks::TaskSet;

/// While draining, a progress line (in flight, connections, time left) is logged this often.
pub const DRAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Drain after `stop` and run the hooks; returns the report (also logged).
pub(super) async fn shut_down(
    lifecycle: &mut Lifecycle,
    stop: Stop,
    config: Builder,
    shared: &Shared,
    listeners: Listeners,
    tasks: TaskSet,
) -> ShutdownReport {
    let Listeners {
        stop_accepting,
        handed_over,
        accept_task,
        admin_task,
        handoff,
        upgrade_status: _,
    } = listeners;
    let mut report = announce(stop, handoff);
    let t0 = Instant::now();
    lifecycle.begin_drain(config.drain_delay + config.shutdown_timeout);
    let mut hooks = config.hooks;
    let before = start_before_drain_hooks(&mut hooks);
    let mut forced = stop == Stop::Forced;
    if let Stop::Handover(_) = stop {
        // The new process accepts from the same sockets already: no delay, no closing
        // dance, and its admin listener answers the probes from now on.
        handed_over.store(true, Ordering::Relaxed);
        if let Some(t) = &admin_task {
            t.abort();
        }
    } else if !forced {
        forced = !keep_accepting_for(lifecycle, config.drain_delay).await;
    }
    close_listener(stop_accepting, accept_task, shared).await;
    let after_handover = matches!(stop, Stop::Handover(_));
    if !forced {
        if let Some(why) = wait_for_connections(lifecycle, shared, after_handover).await {
            forced = true;
            report.reason.push_str(why);
        }
    }
    if !forced {
        if let Some(why) = wait_for_tasks(lifecycle, &tasks, after_handover).await {
            forced = true;
            report.reason.push_str(why);
        }
    }
    if forced {
        abandon(lifecycle, shared, &mut report).await;
    }
    report.tasks = tasks.finish().await;
    if let Some(t) = report.failed_task() {
        report.reason = format!("task {} failed", t.name);
    }
    report.drain = t0.elapsed();
    let metrics = &shared.stack.metrics;
    metrics.set_drain_duration(report.drain);
    report.hooks = before.await.unwrap_or_default();
    metrics.hooks_finished(&report.hooks);
    let report = finish(lifecycle, hooks, report, metrics).await;
    if let Some(t) = admin_task {
        t.abort();
    }
    report
}

/// The stop is final: close the sockets kept for an upgrade, tell systemd, start the
/// report.
fn announce(stop: Stop, handoff: Option<Handoff>) -> ShutdownReport {
    // Only a handover keeps the sockets open beyond this process: close the duplicates
    // now, or they would keep a closed listener's socket alive (connects would hang).
    #[allow(clippy::drop_non_drop)] // without `fd-handoff` the stand-in owns nothing
    drop(handoff);
    if !matches!(stop, Stop::Handover(_)) {
        // After a handover systemd follows the new process; only a real stop is announced.
        activation::notify_stopping();
    }
    ShutdownReport {
        reason: stop.reason(),
        ..ShutdownReport::default()
    }
}

/// Start the before-drain hooks (deregistration and the like) in a task of their own: they
/// run alongside the drain, which does not wait for them until its end.
fn start_before_drain_hooks(hooks: &mut Hooks) -> JoinHandle<Vec<HookOutcome>> {
    let mut before = hooks.split_phase(HookPhase::BeforeDrain);
    tokio::spawn(async move { before.run_phase(HookPhase::BeforeDrain).await })
}

/// Keep the listener accepting for `delay` while load balancers notice the failing
/// readiness; `false` when a second signal cut it short (the drain is then forced).
async fn keep_accepting_for(lifecycle: &mut Lifecycle, delay: Duration) -> bool {
    // A zero delay must not wait for the timer wheel's next tick (about 1 ms).
    if delay.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = next_stop_signal(lifecycle, false) => false,
    }
}

/// Stop the accept loop (which takes what is queued, then closes or leaves the listener to
/// the new process) and let the connection tracker finish when its tasks do.
async fn close_listener(
    stop_accepting: tokio_util::sync::CancellationToken,
    accept_task: JoinHandle<()>,
    shared: &Shared,
) {
    stop_accepting.cancel();
    let _ = accept_task.await;
    shared.tracker.close();
}

/// Wait for every connection to finish; `Some(why)` when the deadline passed or a stop
/// signal came first. After a handover the drain was not started by a signal, so the first
/// SIGTERM or SIGINT only says so (`systemctl stop` during an upgrade signals the whole
/// cgroup); a second one, or SIGQUIT, forces.
async fn wait_for_connections(
    lifecycle: &mut Lifecycle,
    shared: &Shared,
    after_handover: bool,
) -> Option<&'static str> {
    let deadline = tokio::time::Instant::from_std(
        lifecycle.shutdown().deadline().unwrap_or_else(Instant::now),
    );
    let stack = &shared.stack;
    tokio::select! {
        _ = shared.tracker.wait() => None,
        _ = tokio::time::sleep_until(deadline) => Some(", deadline passed"),
        _ = next_stop_signal(lifecycle, after_handover) => Some(", second signal"),
        never = log_drain_progress(&stack.in_flight, &stack.metrics, deadline) => match never {},
    }
}

/// Tell the tasks that stop after the requests to stop, and wait for every task; `Some(why)`
/// when the deadline passed or a stop signal came first.
async fn wait_for_tasks(
    lifecycle: &mut Lifecycle,
    tasks: &TaskSet,
    after_handover: bool,
) -> Option<&'static str> {
    tasks.stop_after_requests();
    let running = tasks.running();
    if running == 0 {
        return None;
    }
    tracing::info!(running, "connections done; waiting for background tasks");
    let deadline = tokio::time::Instant::from_std(
        lifecycle.shutdown().deadline().unwrap_or_else(Instant::now),
    );
    tokio::select! {
        _ = tasks.wait() => None,
        _ = tokio::time::sleep_until(deadline) => Some(", deadline passed"),
        _ = next_stop_signal(lifecycle, after_handover) => Some(", second signal"),
    }
}

/// Give up on what is left: note every request still in flight in the report, then close
/// every connection and wait for their tasks to end.
async fn abandon(lifecycle: &Lifecycle, shared: &Shared, report: &mut ShutdownReport) {
    let stack = &shared.stack;
    report.forced = true;
    report.abandoned = stack.in_flight.snapshot();
    stack.metrics.requests_abandoned(report.abandoned.len());
    report.connections_closed = stack.metrics.connections_open().max(0) as usize;
    lifecycle.force();
    shared.tracker.wait().await;
}

/// The next signal that ends a drain early; upgrades are ignored while draining, and so is
/// the first graceful signal when `already_draining` (the drain was not a signal's doing).
async fn next_stop_signal(lifecycle: &mut Lifecycle, mut already_draining: bool) {
    loop {
        match lifecycle.next_signal().await {
            Signal::Upgrade => tracing::warn!("upgrade refused: this process is draining"),
            Signal::Graceful if already_draining => {
                already_draining = false;
                tracing::info!(
                    "already draining after a handover; a second signal (or SIGQUIT) forces the exit"
                );
            }
            _ => return,
        }
    }
}

/// While the drain waits: a log line every [`DRAIN_PROGRESS_INTERVAL`] with the requests
/// still in flight, the open connections and the time left before the deadline.
async fn log_drain_progress(
    in_flight: &InFlight,
    metrics: &Metrics,
    deadline: tokio::time::Instant,
) -> Infallible {
    let start = tokio::time::Instant::now() + DRAIN_PROGRESS_INTERVAL;
    let mut tick = tokio::time::interval_at(start, DRAIN_PROGRESS_INTERVAL);
    loop {
        tick.tick().await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tracing::info!(
            in_flight = in_flight.len(),
            connections = metrics.connections_open(),
            left_ms = left.as_millis() as u64,
            "drain progress"
        );
    }
}

/// After the drain: after-drain hooks (skipped when forced), final hooks, the report.
async fn finish(
    lifecycle: &Lifecycle,
    mut hooks: Hooks,
    mut report: ShutdownReport,
    metrics: &Metrics,
) -> ShutdownReport {
    lifecycle.set_phase(Phase::Stopping);
    let after = if report.forced {
        hooks.skip_phase(HookPhase::AfterDrain)
    } else {
        hooks.run_phase(HookPhase::AfterDrain).await
    };
    metrics.hooks_finished(&after);
    report.hooks.extend(after);
    let last = hooks.run_phase(HookPhase::Final).await;
    metrics.hooks_finished(&last);
    report.hooks.extend(last);
    lifecycle.set_phase(Phase::Exited);
    report.phases = lifecycle.timings();
    report.log();
    report
}
