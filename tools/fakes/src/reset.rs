//! Resetting one of this process's own TCP connections, found by its addresses: a handler
//! does not hold its socket, but while it runs, its connection (and the descriptor) is open.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

/// Set `SO_LINGER` 0 on the connected socket whose local port is `port` and whose peer is
/// `peer`, so that closing it sends an RST instead of a FIN; `false` when no such
/// socket was found (the reply is then dropped with a FIN).
pub(crate) fn arm(port: u16, peer: SocketAddr) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the descriptor is borrowed only for these calls. A descriptor listed
        // above may be closed (and its number reused) by another thread meanwhile; then
        // its addresses do not match, or match the one connection with this peer on this
        // port, which is the caller's own and stays open while the caller runs.
        #[allow(unsafe_code)]
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        let addr = |a: std::io::Result<socket2::SockAddr>| a.ok().and_then(|a| a.as_socket());
        if addr(sock.peer_addr()) == Some(peer)
            && addr(sock.local_addr()).map(|a| a.port()) == Some(port)
        {
            return sock.set_linger(Some(Duration::ZERO)).is_ok();
        }
    }
    false
}
