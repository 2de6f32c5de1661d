//! Signal sources: OS signals, or a channel that tests and admin endpoints drive.

use tokio::sync::mpsc;

/// What a signal asks the lifecycle to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// Drain and stop gracefully (SIGTERM, SIGINT, or a programmatic request).
    /// A second one while draining forces the exit.
    Graceful,
    /// Stop at once, abandoning what is in flight (SIGQUIT).
    Forced,
    /// Start a new process on the same listening sockets, then drain this one (SIGHUP).
    Upgrade,
}

/// The sending half used to feed signals into a [`Lifecycle`](super::Lifecycle).
///
/// Cheap to clone. Used by [`install_os_signals`] and by tests or admin endpoints that
/// trigger a drain without an OS signal.
#[derive(Debug, Clone)]
pub struct Trigger {
    tx: mpsc::UnboundedSender<Signal>,
}

impl Trigger {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Signal>) -> Self {
        Self { tx }
    }

    /// Ask for a graceful drain, as SIGTERM does. Returns `false` once the lifecycle is gone.
    pub fn drain(&self) -> bool {
        self.tx.send(Signal::Graceful).is_ok()
    }

    /// Ask for an immediate forced stop, as SIGQUIT does.
    pub fn force(&self) -> bool {
        self.tx.send(Signal::Forced).is_ok()
    }

    /// Ask for a zero-downtime upgrade, as SIGHUP does.
    pub fn upgrade(&self) -> bool {
        self.tx.send(Signal::Upgrade).is_ok()
    }

    /// Send any signal.
    pub fn send(&self, signal: Signal) -> bool {
        self.tx.send(signal).is_ok()
    }
}

/// Install handlers for SIGTERM, SIGINT (graceful), SIGQUIT (forced) and SIGHUP (upgrade)
/// that feed `trigger`.
///
/// Call this as early as possible (before binding): a signal that arrives before the handler
/// is installed takes the default action and kills the process without running any hook.
/// Must be called inside a tokio runtime.
///
/// # Errors
/// Fails when the OS refuses to register a handler.
pub fn install_os_signals(trigger: &Trigger) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::terminate(), Signal::Graceful, "SIGTERM"),
        (SignalKind::interrupt(), Signal::Graceful, "SIGINT"),
        (SignalKind::quit(), Signal::Forced, "SIGQUIT"),
        (SignalKind::hangup(), Signal::Upgrade, "SIGHUP"),
    ];
    if std::process::id() == 1 {
        spawn_reaper()?;
    }
    for (kind, what, name) in kinds {
        let mut stream = signal(kind)?;
        let trigger = trigger.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                tracing::info!(signal = name, "signal received");
                if !trigger.send(what) {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// As PID 1 (a container's init), reap every orphan the kernel reparents to this process;
/// nobody else will, and zombies would pile up.
fn spawn_reaper() -> std::io::Result<()> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use tokio::signal::unix::{signal, SignalKind};
    let mut children = signal(SignalKind::child())?;
    tokio::spawn(async move {
        while children.recv().await.is_some() {
            // Several exits can share one SIGCHLD: reap until none is left.
            while let Ok(status) =
                waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG))
            {
                if status == WaitStatus::StillAlive {
                    break;
                }
                tracing::debug!(?status, "reaped an orphan (this process is PID 1)");
            }
        }
    });
    tracing::info!("running as PID 1: orphaned processes are reaped");
    Ok(())
}
