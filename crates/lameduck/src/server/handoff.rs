//! The process half of a zero-downtime upgrade (feature `fd-handoff`): start this
//! executable again with the same arguments, hand it the listening sockets, and wait until
//! it reports ready. Only then does this process drain;
//! the sockets stay open in the new one, so nothing waiting in their accept queues is reset.
//! If the new process exits or is not ready in time, it is killed and this one keeps serving
//! (rollback).
//!
//! The new process finds the sockets by the `LISTEN_FDS` protocol
//! ([`activation`](super::activation)), with `LAMEDUCK_LISTEN_PPID` (its parent's pid) in
//! place of `LISTEN_PID` (which a parent cannot know before the fork), and reports ready by
//! writing `READY=1` to the descriptor named in `LAMEDUCK_READY_FD`.

use std::io::Read as _;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

use super::activation::{ADMIN_NAME, HTTP_NAME, LISTEN_FDS_START, PARENT_ENV, READY_FD_ENV};

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// This process is PID 1 (a container): its exit would end the container.
    #[error("this process is PID 1 (a container): its exit would end the container; use the orchestrator's rolling update, which the readiness flip and drain already serve")]
    Pid1,
    /// The new process could not be started.
    #[error("cannot start the new process: {0}")]
    Spawn(#[source] std::io::Error),
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

/// Start the new process and wait for its readiness; returns its pid.
pub(crate) async fn start_successor(
    handoff: &Handoff,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    if std::process::id() == 1 {
        return Err(UpgradeError::Pid1);
    }
    let (child, ready) = spawn(handoff).map_err(UpgradeError::Spawn)?;
    // Killed if this future is dropped (a stop signal during the upgrade) or fails.
    let mut child = KillOnDrop(Some(child));
    let pid = child.id();
    tracing::info!(
        new_pid = pid,
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
        return Err(UpgradeError::Spawn(std::io::Error::other(
            "child handle lost",
        )));
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

fn spawn(handoff: &Handoff) -> std::io::Result<(Child, std::io::PipeReader)> {
    let exe = std::env::current_exe()?;
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
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(PARENT_ENV, std::process::id().to_string())
        .env(READY_FD_ENV, ready_fd.to_string())
        .env_remove("LISTEN_PID");
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
