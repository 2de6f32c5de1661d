//! The process half of a zero-downtime upgrade (feature `fd-handoff`): execute the path this
//! process was started with (or `Builder::upgrade_exec`'s) again with the same arguments,
//! hand it the listening sockets, and wait until it reports ready. Only then does this process drain;
//! the sockets stay open in the new one, so nothing waiting in their accept queues is reset.
//! If the new process exits or is not ready in time, it is killed and this one keeps serving
//! (rollback).
//!
//! The new process finds the sockets by the `LISTEN_FDS` protocol
//! ([`activation`](super::activation)), with `LAMEDUCK_LISTEN_PPID` (its parent's pid) in
//! place of `LISTEN_PID` (which a parent cannot know before the fork), and reports ready by
//! writing `READY=1` to the descriptor named in `LAMEDUCK_READY_FD`. An operator drain
//! passes to it in `LAMEDUCK_OPERATOR_DRAIN`.

use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

use super::activation::{
    ADMIN_NAME, HTTP_NAME, LISTEN_FDS_START, OPERATOR_DRAIN_ENV, PARENT_ENV, READY_FD_ENV,
};

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// This process is PID 1 (a container): its exit would end the container.
    #[error("this process is PID 1 (a container): its exit would end the container; use the orchestrator's rolling update, which the readiness flip and drain already serve")]
    Pid1,
    /// There is no executable to start: the path is missing, not a regular file or not
    /// executable, or the start-up path is not known. Nothing was started.
    #[error("no executable to start: {0}")]
    Executable(String),
    /// The new process could not be started.
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        /// The path executed.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The new process exited before it was ready.
    #[error("the new process (pid {pid}) exited before it was ready: {status}")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The new process was not ready in time and was killed.
    #[error("the new process (pid {pid}) was not ready within {timeout:?} and was killed")]
    NotReady {
        /// Its pid.
        pid: u32,
        /// The time it had.
        timeout: Duration,
    },
}

/// The listening sockets kept for a handover (duplicates of the serving ones).
#[derive(Debug)]
pub(crate) struct Handoff {
    pub(crate) http: OwnedFd,
    pub(crate) admin: Option<OwnedFd>,
}

impl Handoff {
    pub(crate) fn of(
        http: &tokio::net::TcpListener,
        admin: Option<&tokio::net::TcpListener>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            http: http.as_fd().try_clone_to_owned()?,
            admin: admin.map(|a| a.as_fd().try_clone_to_owned()).transpose()?,
        })
    }
}

impl UpgradeError {
    /// `true` when the upgrade was refused before anything was started (as opposed to a
    /// new process that failed: a rollback).
    pub fn is_refusal(&self) -> bool {
        matches!(self, UpgradeError::Pid1 | UpgradeError::Executable(_))
    }
}

/// What the new process of an upgrade is started from.
#[derive(Debug, Clone)]
pub(crate) struct Successor<'a> {
    /// The path to execute, or why there is none.
    pub(crate) exec: Result<&'a Path, &'a str>,
    /// The operator drain passes to it.
    pub(crate) operator_drained: bool,
}

/// Start the new process and wait for its readiness; returns its pid.
pub(crate) async fn start_successor(
    handoff: &Handoff,
    successor: Successor<'_>,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    if std::process::id() == 1 {
        return Err(UpgradeError::Pid1);
    }
    let exec = successor
        .exec
        .map_err(|why| UpgradeError::Executable(why.to_string()))?;
    crate::exe::check_executable(exec).map_err(UpgradeError::Executable)?;
    let (child, ready) =
        spawn(handoff, exec, successor.operator_drained).map_err(|source| UpgradeError::Spawn {
            path: exec.to_path_buf(),
            source,
        })?;
    // Killed if this future is dropped (a stop signal during the upgrade) or fails.
    let mut child = KillOnDrop(Some(child));
    let pid = child.id();
    tracing::info!(
        new_pid = pid,
        exe = %exec.display(),
        operator_drained = successor.operator_drained,
        "upgrade: new process started, waiting for it to be ready"
    );
    // The read ends when the child writes READY=1 and closes its end, or exits.
    let read = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let mut ready = ready;
        let _ = ready.read_to_string(&mut text);
        text
    });
    let outcome = tokio::select! {
        text = read => text.map(|t| t.contains("READY=1")).unwrap_or(false),
        _ = tokio::time::sleep(timeout) => return Err(UpgradeError::NotReady { pid, timeout }),
    };
    let Some(mut child) = child.0.take() else {
        return Err(UpgradeError::Spawn {
            path: exec.to_path_buf(),
            source: std::io::Error::other("child handle lost"),
        });
    };
    if !outcome {
        let status = wait_briefly(&mut child).await;
        return Err(UpgradeError::Exited { pid, status });
    }
    // Reap the new process if it ever exits while this one still runs.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// A child process killed (and reaped) when dropped, unless taken out.
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Start `exec` (its `argv[0]` the path itself, so that the new process records it as its
/// own start-up path) with this process's arguments and the sockets.
fn spawn(
    handoff: &Handoff,
    exec: &Path,
    operator_drained: bool,
) -> std::io::Result<(Child, std::io::PipeReader)> {
    let (reader, writer) = std::io::pipe()?;
    let mut names = vec![HTTP_NAME];
    let mut mappings = vec![FdMapping {
        parent_fd: handoff.http.try_clone()?,
        child_fd: LISTEN_FDS_START,
    }];
    if let Some(admin) = &handoff.admin {
        names.push(ADMIN_NAME);
        mappings.push(FdMapping {
            parent_fd: admin.try_clone()?,
            child_fd: LISTEN_FDS_START + 1,
        });
    }
    let ready_fd = LISTEN_FDS_START + names.len() as i32;
    mappings.push(FdMapping {
        parent_fd: OwnedFd::from(writer),
        child_fd: ready_fd,
    });
    let mut cmd = Command::new(exec);
    cmd.args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(PARENT_ENV, std::process::id().to_string())
        .env(READY_FD_ENV, ready_fd.to_string())
        .env_remove("LISTEN_PID");
    // Set or removed, never inherited: this process may itself have started drained.
    if operator_drained {
        cmd.env(OPERATOR_DRAIN_ENV, "1");
    } else {
        cmd.env_remove(OPERATOR_DRAIN_ENV);
    }
    cmd.fd_mappings(mappings)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let child = cmd.spawn()?;
    // `cmd` holds this process's copies of the mapped descriptors, the pipe's write end
    // among them: drop it so the read sees end-of-file when the child closes its copy.
    drop(cmd);
    Ok((child, reader))
}

/// How long a new process that closed its readiness pipe without `READY=1` may take to
/// exit before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(1);
/// How often its exit status is looked at meanwhile.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// The exit status of a child that closed its readiness pipe without `READY=1`: it is
/// exiting; give it [`EXIT_WAIT`], polled without blocking the runtime, then kill it.
async fn wait_briefly(child: &mut Child) -> ExitStatus {
    let deadline = tokio::time::Instant::now() + EXIT_WAIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
    let _ = child.kill();
    // Killed: the wait returns at once.
    child
        .wait()
        .unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(0))
}
