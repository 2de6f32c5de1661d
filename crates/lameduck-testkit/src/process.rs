//! Spawn a server binary on port 0, learn its addresses, signal it, wait for its exit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a binary may take to print its `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a binary could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// The binary could not be executed.
    Io(std::io::Error),
    /// It exited, or printed no `listening` line in time; its output so far.
    NotReady(String),
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Io(e) => write!(f, "spawn failed: {e}"),
            SpawnError::NotReady(out) => write!(f, "no `listening` line; output:\n{out}"),
        }
    }
}

impl std::error::Error for SpawnError {}

/// How a process ended, as [`Spawned::wait_exit`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it (SIGKILL is 9).
    Signalled(i32),
    /// It was still running when the wait gave up.
    TimedOut,
}

impl Exit {
    /// Killed by SIGKILL.
    pub const KILLED: Exit = Exit::Signalled(Signal::SIGKILL as i32);

    fn from_status(st: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt as _;
        match (st.code(), st.signal()) {
            (Some(code), _) => Exit::Exited(code),
            (None, Some(sig)) => Exit::Signalled(sig),
            // Neither a code nor a signal: stopped or continued, which `try_wait` does not
            // report; kept apart from a timeout all the same.
            (None, None) => Exit::Signalled(0),
        }
    }
}

/// A running server process, killed on drop.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    /// The HTTP listener's address.
    pub http: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    stdout: Arc<Mutex<Vec<String>>>,
    status: Option<ExitStatus>,
}

impl Spawned {
    /// Start `bin` with `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0` and `args`, and
    /// wait for its `listening http=ADDR admin=ADDR` line.
    pub fn start(bin: &str, args: &[&str]) -> Result<Self, SpawnError> {
        Self::start_env(bin, args, &[])
    }

    /// [`Spawned::start`] with extra environment variables.
    pub fn start_env(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self, SpawnError> {
        let mut all = vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_cmd(bin, &all, env)
    }

    /// Run `program` with exactly `args` (a wrapper such as `unshare` or
    /// `systemd-socket-activate` in front of the binary) and wait for the `listening` line.
    pub fn start_cmd(
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self, SpawnError> {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(SpawnError::Io)?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let pipe = child
            .stdout
            .take()
            .ok_or_else(|| SpawnError::NotReady("no stdout".into()))?;
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut s = Self {
            child,
            http: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            stdout,
            status: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some((http, admin)) = s.logs().iter().find_map(|l| parse_listening(l)) {
                s.http = http;
                s.admin = admin;
                return Ok(s);
            }
            if Instant::now() >= deadline || s.try_exit().is_some() {
                return Err(SpawnError::NotReady(s.logs().join("\n")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (SIGTERM, SIGINT, SIGQUIT...).
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Every stdout line so far.
    pub fn logs(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Wait up to `timeout` for the process to exit: how it ended, or [`Exit::TimedOut`].
    pub async fn wait_exit(&mut self, timeout: Duration) -> Exit {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Exit::from_status(st);
            }
            if Instant::now() >= deadline {
                return Exit::TimedOut;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// `true` once the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.try_exit().is_some()
    }

    /// Wait up to `timeout` for a stdout line containing every one of `needles`.
    pub async fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        crate::poll_until(timeout, || async {
            self.logs()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
        })
        .await
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("listening ")?;
    let mut http = None;
    let mut admin = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("http=") {
            http = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("admin=") {
            admin = v.parse().ok();
        }
    }
    // A binary without an admin listener (lameduck-fakes) prints the HTTP address only.
    Some((http?, admin.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_listening_line_is_parsed() {
        let (h, a) = super::parse_listening("listening http=127.0.0.1:1 admin=[::1]:2").unwrap();
        assert_eq!((h.port(), a.port()), (1, 2));
        assert!(super::parse_listening("ready").is_none());
        let (h, a) = super::parse_listening("listening http=127.0.0.1:3").unwrap();
        assert_eq!((h.port(), a.port()), (3, 0));
    }
}
