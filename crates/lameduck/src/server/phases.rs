//! The phases of [`Server::serve_service`] around the serving and the drain: start (the
//! per-request stack, the listeners), ready (tasks, pid and state files, the registration,
//! readiness reported), and clean up (the state file's end, the registration stopped, the
//! pid file removed).

use super::*;

/// Start: the per-request stack (with TLS), the admin listener and the accept loop; also
/// the process's identity, for the upgrade status.
pub(super) fn start<S, B>(
    config: &Builder,
    shutdown: Shutdown,
    listeners: (TcpListener, Option<TcpListener>),
    app: S,
    operator: &crate::admin::OperatorDrain,
    upgraded_from: Option<u32>,
    #[cfg(feature = "tls")] tls: Option<Arc<tls::Tls>>,
) -> (Shared, Listeners, String)
where
    S: App<B>,
    B: AppBody,
{
    #[allow(unused_mut)]
    let mut shared = Shared::new(config, shutdown);
    #[cfg(feature = "tls")]
    if let Some(t) = tls {
        shared.stack.metrics.clone().with_tls(t.stats.clone());
        watch_certificate(&t, &shared.stack.shutdown);
        shared.tls = Some(t);
    }
    let identity = identity(config.version.as_deref());
    // Shown from the first admin request on; a new process of an upgrade may answer on
    // the shared admin socket before it is ready.
    let upgrade_status = UpgradeStatus::default();
    upgrade_status.set(match upgraded_from {
        Some(pid) => format!(
            "taking over from pid {pid}; this process ({}) is starting: {identity}",
            std::process::id()
        ),
        None => format!(
            "no upgrade yet; this process ({}) serves: {identity}",
            std::process::id()
        ),
    });
    let listeners = start_listening(
        config,
        &shared,
        listeners,
        app,
        operator.clone(),
        upgrade_status,
    );
    (shared, listeners, identity)
}

/// Ready: the phase `Serving`, the background tasks, the pid and state files, the first
/// registration (waited for a moment), then readiness reported (to systemd too) and, in an
/// upgrade, the take-over announced. Returns the tasks and the registration's task.
pub(super) async fn ready(
    config: &mut Builder,
    lifecycle: &Lifecycle,
    shared: &Shared,
    listeners: &Listeners,
    operator: &crate::admin::OperatorDrain,
    upgraded_from: Option<u32>,
    identity: &str,
) -> (TaskSet, Option<JoinHandle<()>>) {
    config.log_budget();
    lifecycle.set_phase(Phase::Serving);
    let tasks = TaskSet::start(
        std::mem::take(&mut config.tasks),
        shared.task_states.clone(),
        &lifecycle.shutdown(),
        &lifecycle.trigger(),
    );
    // Before readiness is reported: once the old process of an upgrade hears it, the pid
    // file already names this one.
    if let Some(path) = &config.pid_file {
        if let Err(e) = pid_file::write(path) {
            tracing::error!(path = %path.display(), error = %e, "cannot write the pid file");
        }
    }
    if let Some(path) = &config.state_file {
        if let Err(e) = state_file::record_start(path, upgraded_from.is_some()) {
            tracing::error!(path = %path.display(), error = %e, "cannot write the state file");
        }
    }
    let registration = match config.registry.clone() {
        Some(r) => Some(register(r, shared, operator).await),
        None => None,
    };
    activation::notify_ready();
    if let Some(pid) = upgraded_from {
        announce_takeover(pid, identity, &listeners.upgrade_status);
    }
    (tasks, registration)
}

/// Keep `registry` registered in a task; wait for the first registration for a moment
/// before readiness is reported: an upgrade's old process drains when it hears it, and must
/// find the key under the new process's lease.
async fn register(
    registry: Arc<dyn crate::registry::Registry>,
    shared: &Shared,
    operator: &crate::admin::OperatorDrain,
) -> JoinHandle<()> {
    let (first, registered) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(crate::registry::keep_registered(
        registry,
        shared.stack.shutdown.clone(),
        operator.clone(),
        shared.stack.metrics.clone(),
        first,
    ));
    let wait = crate::registry::FIRST_REGISTRATION_WAIT;
    if tokio::time::timeout(wait, registered).await.is_err() {
        tracing::warn!(
            wait_ms = wait.as_millis() as u64,
            "not registered yet; reporting ready anyway"
        );
    }
    task
}

/// Clean up after the drain: the state file records how the process ended, the
/// registration's task stops, and the pid file goes (after a clean stop only, and only if
/// it still names this process).
pub(super) fn clean_up(
    report: &ShutdownReport,
    state_path: Option<&std::path::Path>,
    pid_path: Option<&std::path::Path>,
    registration: Option<JoinHandle<()>>,
) {
    if let Some(path) = state_path {
        if let Err(e) = state_file::record_end(path, report) {
            tracing::error!(path = %path.display(), error = %e, "cannot write the state file");
        }
    }
    if let Some(task) = registration {
        task.abort();
    }
    if let (Some(path), true) = (pid_path, report.is_clean()) {
        if let Err(e) = pid_file::remove_if_ours(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the pid file");
        }
    }
}
