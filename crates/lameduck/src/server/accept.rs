//! The accept loop: accept until told to stop, then take what is already queued and close
//! the listener so that later connects are refused.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// First back-off after an accept error (EMFILE and friends); doubles up to [`MAX_BACKOFF`].
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(5);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accept connections until `stop` fires, handing each to `serve` with a permit from
/// `limit` (at most that many connections are open; past it, connections wait in the
/// kernel's accept queue). Then accept what is queued already and drop the listener.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
    handed_over: Arc<std::sync::atomic::AtomicBool>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>),
{
    let mut backoff = MIN_BACKOFF;
    let mut last_accept = None::<tokio::time::Instant>;
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.ok(),
            _ = stop.cancelled() => break,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = MIN_BACKOFF;
                last_accept = Some(tokio::time::Instant::now());
                serve(stream, peer, permit);
            }
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "connection failed before accept");
            }
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    if handed_over.load(std::sync::atomic::Ordering::Relaxed) {
        // Another process accepts from the same socket: closing this descriptor resets
        // nothing, and a SYN filter would be attached to the shared socket.
        drop(listener);
        tracing::info!("listener handed over to the new process");
        return;
    }
    let busy = last_accept.is_some_and(|t| t.elapsed() < RECENT);
    let queued = if busy {
        close_gently(&listener, &mut serve).await
    } else {
        drain_backlog(&listener, &mut serve).await
    };
    drop(listener);
    tracing::info!(queued, "listener closed; new connections are refused");
}

/// A listener that accepted a connection this recently may have handshakes under way when
/// it closes; one idle for longer closes at once.
const RECENT: Duration = Duration::from_secs(1);
/// Quiet period the listener waits for handshakes already under way before it closes.
const SETTLE: Duration = Duration::from_millis(20);
/// Longest the listener waits for the accept queue to settle.
const MAX_SETTLE: Duration = Duration::from_millis(250);

/// Close without resetting anyone: closing a listening socket resets every connection in
/// its accept queue, and one can land between the last accept and the close. So first stop
/// new handshakes (a socket filter drops bare SYNs; the client retransmits after about a
/// second and then finds the port closed: connection refused), let handshakes under way
/// complete and accept them, and close once the queue has been quiet for [`SETTLE`].
async fn close_gently<F>(listener: &TcpListener, serve: &mut F) -> usize
where
    F: FnMut(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>),
{
    if let Err(e) = drop_new_syns(listener) {
        tracing::debug!(error = %e, "could not filter SYNs; closing the listener directly");
        return drain_backlog(listener, serve).await;
    }
    let deadline = tokio::time::Instant::now() + MAX_SETTLE;
    let mut n = 0;
    loop {
        let quiet = tokio::time::sleep(SETTLE);
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    n += 1;
                    serve(stream, peer, None);
                }
                Err(e) if is_per_connection(&e) => {}
                Err(_) => return n,
            },
            _ = quiet => return n,
            _ = tokio::time::sleep_until(deadline) => return n + drain_backlog(listener, serve).await,
        }
    }
}

/// Whether the gentle close can filter new connections on `listener`: attach a filter that
/// passes everything, and take it off again. Kernels that refuse socket filters to
/// unprivileged processes (`kernel.unprivileged_bpf_disabled`) want `CAP_NET_ADMIN`.
pub(super) fn check_gentle_close(listener: &TcpListener) -> std::io::Result<()> {
    use socket2::{SockFilter, SockRef};
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let sock = SockRef::from(listener);
    sock.attach_filter(&[SockFilter::new(RET_K, 0, 0, u32::MAX)])?;
    sock.detach_filter()
}

/// Attach a classic BPF filter that drops TCP segments with SYN set and ACK clear (new
/// connection attempts) and passes everything else, so handshakes under way complete.
/// The filter sees the TCP header at offset 0; the flags are byte 13.
fn drop_new_syns(listener: &TcpListener) -> std::io::Result<()> {
    use socket2::{SockFilter, SockRef};
    const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const ALU_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let program = [
        SockFilter::new(LD_B_ABS, 0, 0, 13),
        SockFilter::new(ALU_AND_K, 0, 0, SYN | ACK),
        SockFilter::new(JMP_JEQ_K, 0, 1, SYN),
        SockFilter::new(RET_K, 0, 0, 0),
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ];
    SockRef::from(listener).attach_filter(&program)
}

/// Accept every connection already completed in the kernel queue, without waiting; they
/// are served (with `Connection: close`).
async fn drain_backlog<F>(listener: &TcpListener, serve: &mut F) -> usize
where
    F: FnMut(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>),
{
    let mut n = 0;
    loop {
        let next = poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await;
        match next {
            Poll::Ready(Ok((stream, peer))) => {
                n += 1;
                serve(stream, peer, None);
            }
            Poll::Ready(Err(e)) if is_per_connection(&e) => {}
            Poll::Ready(Err(_)) | Poll::Pending => return n,
        }
    }
}

/// Errors that concern one connection only, not the listener.
pub(super) fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
