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

use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::Error;

/// The first inherited file descriptor.
pub const LISTEN_FDS_START: RawFd = 3;
/// The most sockets lameduck takes over.
pub const MAX_LISTEN_FDS: usize = 16;
/// The name of the HTTP listener's socket.
pub const HTTP_NAME: &str = "http";
/// The name of the admin listener's socket.
pub const ADMIN_NAME: &str = "admin";

/// Listening sockets inherited from the parent.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The socket named `http` (or the first unnamed one).
    pub http: Option<TcpListener>,
    /// The socket named `admin` (or the second unnamed one).
    pub admin: Option<TcpListener>,
}

/// The sockets passed to this process by the `LISTEN_FDS` protocol, or `None` when the
/// variables are absent or meant for another process (`LISTEN_PID` differs).
///
/// # Errors
/// [`Error::Activation`] when the variables are malformed, a descriptor is not a listening
/// TCP socket, or a name is neither `http` nor `admin`.
pub fn from_env() -> Result<Option<Inherited>, Error> {
    let var = |k: &str| std::env::var(k).ok();
    let Some(pid) = var("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
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
    let mut inherited = Inherited::default();
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
/// and close-on-exec (a later exec passes it on explicitly, never by accident).
#[allow(unsafe_code)]
fn take_listener(fd: RawFd) -> Result<TcpListener, Error> {
    // SAFETY: by the LISTEN_FDS protocol, checked above with LISTEN_PID, descriptors 3 to
    // 3+LISTEN_FDS-1 are open and belong to this process alone; each is taken exactly once,
    // here, before anything else in the process can have used it.
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
