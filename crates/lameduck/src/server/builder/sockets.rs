//! The listening sockets: bound with their backlog, or inherited (socket activation, an
//! upgrade's hand-over) and listened on again.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::Error;

/// Serve on an inherited listening socket, listening again with `backlog` when given.
pub(super) fn adopt(
    which: &'static str,
    listener: std::net::TcpListener,
    backlog: Option<u32>,
) -> Result<TcpListener, Error> {
    let bad = |e: std::io::Error| Error::Activation(format!("{which} socket: {e}"));
    let addr = listener.local_addr().map_err(bad)?;
    if let Some(n) = backlog {
        socket2::SockRef::from(&listener)
            .listen(backlog_arg(n))
            .map_err(bad)?;
    }
    let listener = TcpListener::from_std(listener).map_err(bad)?;
    tracing::info!(which, %addr, "serving on an inherited socket");
    Ok(listener)
}

/// A listening socket on `addr` with room for `backlog` connections waiting to be
/// accepted (`SO_REUSEADDR`, non-blocking, close-on-exec). Must run in a runtime.
pub(super) fn bind(
    which: &'static str,
    addr: SocketAddr,
    backlog: u32,
) -> Result<TcpListener, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let fail = |source| Error::Bind {
        which,
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(backlog_arg(backlog)).map_err(fail)?;
    TcpListener::from_std(socket.into()).map_err(fail)
}

/// `listen(2)`'s argument (the kernel caps it at `net.core.somaxconn`).
fn backlog_arg(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
