//! Serving until a stop, with upgrades in between: SIGHUP starts a new process on the
//! same listening sockets (see `handoff.rs`, feature `fd-handoff`); when it is ready this
//! process stops and drains, and when it fails this one keeps serving (rollback). Without
//! the feature, an upgrade is refused with a log line.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::{OperatorDrain, UpgradeStatus};
use crate::lifecycle::{Lifecycle, Signal};

#[cfg(feature = "fd-handoff")]
pub(super) use super::handoff::Handoff;

/// Without the `fd-handoff` feature there is nothing to hand over.
#[cfg(not(feature = "fd-handoff"))]
#[derive(Debug)]
pub(super) struct Handoff;

#[cfg(not(feature = "fd-handoff"))]
impl Handoff {
    pub(super) fn of(_: &TcpListener, _: Option<&TcpListener>) -> std::io::Result<Self> {
        Ok(Handoff)
    }
}

/// Duplicates of the listening sockets for a later handover, or `None` (logged) when they
/// cannot be made: upgrades are then refused, serving goes on.
pub(super) fn keep_sockets(http: &TcpListener, admin: Option<&TcpListener>) -> Option<Handoff> {
    Handoff::of(http, admin)
        .map_err(|e| tracing::warn!(error = %e, "cannot keep the sockets for upgrades"))
        .ok()
}

/// Why serving stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// A graceful signal.
    Graceful(&'static str),
    /// SIGQUIT: forced at once.
    Forced,
    /// A new process took over the listeners.
    #[cfg_attr(not(feature = "fd-handoff"), allow(dead_code))]
    Handover(u32),
}

impl Stop {
    /// The reason the shutdown report gives.
    pub(super) fn reason(self) -> String {
        match self {
            Stop::Forced => "forced".into(),
            Stop::Graceful(why) => why.into(),
            Stop::Handover(pid) => format!("upgrade to pid {pid}"),
        }
    }
}

/// What an upgrade needs, beyond the signals (only the status without `fd-handoff`).
#[derive(Debug)]
#[cfg_attr(not(feature = "fd-handoff"), allow(dead_code))]
pub(super) struct Upgrades<'a> {
    /// Duplicates of the listening sockets, when they could be made.
    pub(super) handoff: Option<&'a Handoff>,
    /// The path an upgrade executes, decided at start-up, or why there is none.
    pub(super) exec: &'a Result<PathBuf, String>,
    /// The operator's drain, which passes to the new process.
    pub(super) operator: &'a OperatorDrain,
    /// How long the new process may take to be ready.
    pub(super) timeout: Duration,
    /// Where the outcome is shown (`GET /upgrade`).
    pub(super) status: &'a UpgradeStatus,
}

/// Serve until a stop signal; SIGHUP starts an upgrade, which either hands over (the new
/// process is ready) or rolls back (logged) and keeps serving.
pub(super) async fn serve_until_stop(lifecycle: &mut Lifecycle, upgrades: &Upgrades<'_>) -> Stop {
    loop {
        match lifecycle.next_signal().await {
            Signal::Forced => return Stop::Forced,
            Signal::Upgrade => {
                if let Some(stop) = try_upgrade(lifecycle, upgrades).await {
                    return stop;
                }
            }
            _ => return Stop::Graceful("signal"),
        }
    }
}

/// Run one upgrade, refusing further SIGHUPs meanwhile. `Some` when serving must stop.
#[cfg(feature = "fd-handoff")]
async fn try_upgrade(lifecycle: &mut Lifecycle, upgrades: &Upgrades<'_>) -> Option<Stop> {
    let status = upgrades.status;
    let Some(handoff) = upgrades.handoff else {
        tracing::warn!("upgrade refused: the listening sockets could not be kept for a handover");
        status.set("refused: the listening sockets could not be kept for a handover".into());
        return None;
    };
    let exec = upgrades.exec.as_deref().map_err(String::as_str);
    let successor = super::handoff::Successor {
        exec,
        operator_drained: upgrades.operator.is_drained(),
    };
    let upgrade = super::handoff::start_successor(handoff, successor, upgrades.timeout);
    tokio::pin!(upgrade);
    loop {
        tokio::select! {
            outcome = &mut upgrade => return match outcome {
                Ok(pid) => {
                    let exe = exec.map(|p| p.display().to_string()).unwrap_or_default();
                    tracing::info!(new_pid = pid, exe, "upgrade: the new process is ready; this one drains");
                    status.set(format!("handed over to pid {pid} (exe={exe}); this process ({}) drains", std::process::id()));
                    Some(Stop::Handover(pid))
                }
                Err(e) if e.is_refusal() => {
                    tracing::error!(error = %e, "upgrade refused; nothing was started, this process keeps serving");
                    status.set(format!("refused: {e}"));
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "upgrade failed; rolled back, this process keeps serving");
                    status.set(format!("rolled back: {e}"));
                    None
                }
            },
            sig = lifecycle.next_signal() => match sig {
                Signal::Upgrade => tracing::warn!("upgrade refused: an upgrade is already in progress"),
                Signal::Forced => return Some(Stop::Forced),
                _ => return Some(Stop::Graceful("signal during upgrade")),
            },
        }
    }
}

/// Without the `fd-handoff` feature: refused, logged, shown on `/upgrade`.
#[cfg(not(feature = "fd-handoff"))]
async fn try_upgrade(_: &mut Lifecycle, upgrades: &Upgrades<'_>) -> Option<Stop> {
    tracing::warn!("upgrade refused: lameduck was built without the fd-handoff feature");
    upgrades
        .status
        .set("refused: built without the fd-handoff feature".into());
    None
}
