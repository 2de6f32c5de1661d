//! Socket activation: serve on listening sockets handed over by systemd (or
//! `systemd-socket-activate`, or a restarting lameduck process) instead of binding.
//!
//! The protocol (`sd_listen_fds(3)`): `LISTEN_PID` is this process's pid, `LISTEN_FDS` the
//! number of sockets, passed as file descriptors 3, 4, ...; `LISTEN_FDNAMES` optionally
//! names them, colon-separated. lameduck maps the name `http` to the HTTP listener and
//! `admin` to the admin listener; unnamed sockets are taken in that order.
//!
//! Handing over the *same* listening socket is what keeps connections that wait in its
//! accept queue from being reset when a process is replaced (closing a listener resets its
//! queue; a second socket on the same port has a queue of its own).
//!
//! [`Builder::bind`](super::Builder::bind) does this itself; to see what a process was
//! given:
//!
//! ```no_run
//! use lameduck::server::activation;
//!
//! # fn main() -> Result<(), lameduck::Error> {
//! match activation::from_env()? {
//!     Some(sockets) => println!("inherited: http {}", sockets.http.is_some()),
//!     None => println!("no sockets passed: bind as configured"),
//! }
//! # Ok(()) }
//! ```

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Error;

/// The first inherited file descriptor.
pub const LISTEN_FDS_START: RawFd = 3;
/// The most sockets lameduck takes over.
pub const MAX_LISTEN_FDS: usize = 16;
/// The name of the HTTP listener's socket.
pub const HTTP_NAME: &str = "http";
/// The name of the admin listener's socket.
pub const ADMIN_NAME: &str = "admin";
/// Set by a lameduck parent during an upgrade: its pid, which the child checks against
/// its parent pid (a parent cannot know the child's pid for `LISTEN_PID` before forking).
pub const PARENT_ENV: &str = "LAMEDUCK_LISTEN_PPID";
/// The descriptor on which a child started by an upgrade reports `READY=1`.
pub const READY_FD_ENV: &str = "LAMEDUCK_READY_FD";
/// Set to `1` by a lameduck parent drained by an operator (`POST /drain`) when it starts
/// the new process of an upgrade: the new process starts drained too.
pub const OPERATOR_DRAIN_ENV: &str = "LAMEDUCK_OPERATOR_DRAIN";

/// Set when [`from_env`] has taken the inherited descriptors: they are taken once per
/// process, whoever calls it.
static SOCKETS_TAKEN: AtomicBool = AtomicBool::new(false);
/// Set when [`notify_ready`] has reported readiness: the readiness descriptor is written
/// and closed once per process.
static READY_SENT: AtomicBool = AtomicBool::new(false);

/// `true` when the `LISTEN_FDS` variables are meant for this process: `LISTEN_PID` is its
/// pid (systemd), or `LAMEDUCK_LISTEN_PPID` is its parent's (a lameduck upgrade).
fn meant_for_us() -> bool {
    env_pid("LISTEN_PID") == Some(std::process::id()) || is_parent_upgrade()
}

/// A pid from the environment variable `key`.
fn env_pid(key: &str) -> Option<u32> {
    std::env::var(key).ok()?.trim().parse().ok()
}

/// Report readiness when serving: to systemd (`READY=1` over `NOTIFY_SOCKET`, with
/// `MAINPID=` when this process replaces its parent in an upgrade, so that systemd follows
/// the new process instead of taking the old one's exit for the service's death), and to
/// the parent that started this process in an upgrade (`READY=1` on the descriptor named in
/// `LAMEDUCK_READY_FD`). Only the first call in a process does anything.
pub fn notify_ready() {
    if READY_SENT.swap(true, Ordering::AcqRel) {
        return;
    }
    let upgraded = is_parent_upgrade();
    let state = if upgraded {
        format!("MAINPID={}\nREADY=1\n", std::process::id())
    } else {
        "READY=1\n".to_string()
    };
    notify_systemd(&state);
    if upgraded {
        notify_parent();
    }
}

/// Tell systemd the service is stopping (`STOPPING=1`), when it asked to be told.
pub fn notify_stopping() {
    notify_systemd("STOPPING=1\n");
}

/// Send `state` to systemd's notification socket, if `NOTIFY_SOCKET` names one
/// (`sd_notify(3)`; a leading `@` is an abstract socket).
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Write `READY=1` to the parent's readiness pipe and close it. Reached only through the
/// first [`notify_ready`] of the process.
#[allow(unsafe_code)]
fn notify_parent() {
    let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
    else {
        return;
    };
    if fd < LISTEN_FDS_START {
        return;
    }
    // SAFETY: the parent mapped the write end of its readiness pipe to this descriptor and
    // named it in LAMEDUCK_READY_FD (the caller checked LAMEDUCK_LISTEN_PPID against the
    // parent pid). It is open from the exec on, nothing else in the process takes it, and it
    // is owned (then closed) at most once per process: this function runs only behind
    // READY_SENT's first swap. Without that flag a second call could own a number that the
    // process had since reused for another file, and close that file.
    let mut pipe = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    use std::io::Write as _;
    if let Err(e) = pipe.write_all(b"READY=1\n") {
        tracing::warn!(error = %e, "could not report readiness to the parent process");
    }
}

fn is_parent_upgrade() -> bool {
    env_pid(PARENT_ENV) == Some(std::os::unix::process::parent_id())
}

/// Listening sockets inherited from the parent.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The socket named `http` (or the first unnamed one).
    pub http: Option<TcpListener>,
    /// The socket named `admin` (or the second unnamed one).
    pub admin: Option<TcpListener>,
    /// The pid of the lameduck process that handed the sockets over in an upgrade (`None`
    /// when they come from systemd).
    pub upgraded_from: Option<u32>,
    /// The process that handed the sockets over in an upgrade was drained by an operator
    /// (`POST /drain`): this one starts drained (`LAMEDUCK_OPERATOR_DRAIN=1`).
    pub operator_drained: bool,
}

/// The sockets passed to this process by the `LISTEN_FDS` protocol, or `None` when the
/// variables are absent or meant for another process (neither `LISTEN_PID` nor
/// `LAMEDUCK_LISTEN_PPID` matches), or were taken by an earlier call: the descriptors are
/// taken once per process, and every later call finds nothing. The environment is left as
/// it is (changing it while other threads may read it is unsound); an upgrade sets or
/// removes the variables for its child explicitly.
///
/// # Errors
/// [`Error::Activation`] when the variables are malformed, a descriptor is not a listening
/// TCP socket, or a name is neither `http` nor `admin`.
pub fn from_env() -> Result<Option<Inherited>, Error> {
    let var = |k: &str| std::env::var(k).ok();
    if !meant_for_us() || SOCKETS_TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    let count = var("LISTEN_FDS").unwrap_or_default();
    let n: usize = count
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_LISTEN_FDS).contains(n))
        .ok_or_else(|| {
            Error::Activation(format!(
                "LISTEN_FDS must be 1 to {MAX_LISTEN_FDS}, got {count:?}"
            ))
        })?;
    let names: Vec<String> = var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let upgraded = is_parent_upgrade();
    let mut inherited = Inherited {
        upgraded_from: upgraded.then(std::os::unix::process::parent_id),
        operator_drained: upgraded && var(OPERATOR_DRAIN_ENV).as_deref() == Some("1"),
        ..Inherited::default()
    };
    for i in 0..n {
        let fd = LISTEN_FDS_START + i as RawFd;
        let listener = take_listener(fd)?;
        let name = match names.get(i).map(String::as_str) {
            Some(name) if !name.is_empty() && name != "unknown" => name,
            _ if i == 0 => HTTP_NAME,
            _ => ADMIN_NAME,
        };
        let slot = match name {
            HTTP_NAME => &mut inherited.http,
            ADMIN_NAME => &mut inherited.admin,
            other => {
                return Err(Error::Activation(format!(
                    "inherited socket {fd} is named {other:?}; expected \"{HTTP_NAME}\" or \"{ADMIN_NAME}\""
                )))
            }
        };
        if slot.replace(listener).is_some() {
            return Err(Error::Activation(format!(
                "two inherited sockets are named {name:?}"
            )));
        }
    }
    Ok(Some(inherited))
}

/// Take ownership of `fd`, check that it is a listening TCP socket, make it non-blocking
/// and close-on-exec (a later exec passes it on explicitly, never by accident). Reached
/// only through the first [`from_env`] of the process.
#[allow(unsafe_code)]
fn take_listener(fd: RawFd) -> Result<TcpListener, Error> {
    // SAFETY: by the LISTEN_FDS protocol (the variables checked against this process's pid,
    // or its parent's in an upgrade), descriptors 3 to 3+LISTEN_FDS-1 are open from the exec
    // on and meant for this process. Each is owned at most once per process: the caller runs
    // behind SOCKETS_TAKEN's first swap, so no later call can own a number that was closed
    // and reused since. Nothing else in lameduck opens them by number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let socket = socket2::Socket::from(owned);
    let bad = |why: String| Error::Activation(format!("inherited descriptor {fd}: {why}"));
    match socket.is_listener() {
        Ok(true) => {}
        Ok(false) => return Err(bad("not a listening socket".into())),
        Err(e) => return Err(bad(format!("not a socket ({e})"))),
    }
    if socket.r#type().map_err(|e| bad(e.to_string()))? != socket2::Type::STREAM {
        return Err(bad("not a stream socket".into()));
    }
    socket.set_cloexec(true).map_err(|e| bad(e.to_string()))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| bad(e.to_string()))?;
    Ok(socket.into())
}
