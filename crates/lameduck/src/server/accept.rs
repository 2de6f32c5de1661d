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
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accept connections until `stop` fires, handing each to `serve` with a permit from
/// `limit` (at most that many connections are open; past it, connections wait in the
/// kernel's accept queue). Then accept what is queued already and drop the listener.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr, Option<OwnedSemaphorePermit>),
{
    let mut backoff = MIN_BACKOFF;
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
    let queued = drain_backlog(&listener, &mut serve).await;
    drop(listener);
    tracing::info!(queued, "listener closed; new connections are refused");
}

/// Accept every connection already completed in the kernel queue, so that closing the
/// listener does not reset them; they are served (with `Connection: close`).
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
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
