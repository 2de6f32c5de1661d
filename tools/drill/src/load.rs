//! The closed loop (no `--rate`): workers, each with its own connection, one request at a
//! time, as fast as the answers come; and what both loops share: connecting, sending on
//! HTTP/1.1 (hyper), and the strict classes.
//!
//! No request is retried. A request that could not be *sent* because the connection was
//! already closed (hyper hands the request back), or that HTTP/2 refused with
//! `REFUSED_STREAM` (which guarantees it was not processed), goes out on a new connection:
//! it was never served, so this is not a retry.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::outcome::Outcome;
use crate::plan::{Mode, Plan, Template};
use crate::record::Recorder;

/// A worker whose connect was refused waits this long before the next request (nothing
/// listens: do not spin).
const REFUSED_PAUSE: Duration = Duration::from_millis(10);

pub(crate) enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A connection (hyper's client) and whether it has served a request yet.
pub(crate) struct Conn {
    pub(crate) sender: Sender,
    pub(crate) reused: bool,
}

/// A connected byte stream: TCP, or TLS over it.
pub(crate) trait Io:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
}

impl<T> Io for T where T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

/// Connect to `t` (and for `https://` complete the TLS handshake) within `timeout`.
pub(crate) async fn dial(t: &Template, timeout: Duration) -> Result<Box<dyn Io>, Outcome> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(t.addr)).await {
        Err(_) => return Err(Outcome::Timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(Outcome::Refused)
        }
        Ok(Err(_)) => return Err(Outcome::ResetFresh),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let Some(tls) = &t.tls else {
        return Ok(Box::new(stream));
    };
    match tokio::time::timeout(timeout, tls.connector.connect(tls.name.clone(), stream)).await {
        Err(_) => Err(Outcome::Timeout),
        Ok(Err(_)) => Err(Outcome::TlsHandshake),
        Ok(Ok(s)) => Ok(Box::new(s)),
    }
}

/// A new hyper connection to `t` in `mode`.
pub(crate) async fn connect(t: &Template, mode: Mode, timeout: Duration) -> Result<Conn, Outcome> {
    handshake(dial(t, timeout).await?, mode).await
}

/// HTTP on a connected stream.
async fn handshake(stream: Box<dyn Io>, mode: Mode) -> Result<Conn, Outcome> {
    let io = TokioIo::new(stream);
    let sender = match mode {
        Mode::H2 => {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|_| Outcome::ResetFresh)?;
            tokio::spawn(conn);
            Sender::H2(send)
        }
        _ => {
            let (send, conn) = http1::handshake(io)
                .await
                .map_err(|_| Outcome::ResetFresh)?;
            tokio::spawn(conn);
            Sender::H1(send)
        }
    };
    Ok(Conn {
        sender,
        reused: false,
    })
}

/// Send one request on `conn` (opening one if needed); returns the outcome. One function,
/// better whole: its two attempts share the deadline, the connection and the request.
pub(crate) async fn one(
    conn: &mut Option<Conn>,
    t: &Template,
    mode: Mode,
    worker: usize,
    seq: u64,
    timeout: Duration,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut req = t.request(mode, worker, seq);
    // At most two attempts to *send*: the second only when the first connection handed the
    // request back unsent, or HTTP/2 refused the stream unprocessed.
    for _ in 0..2 {
        if conn.is_none() || mode == Mode::ConnPerRequest {
            match connect(t, mode, timeout).await {
                Ok(c) => *conn = Some(c),
                Err(o) => return o,
            }
        }
        let Some(c) = conn.as_mut() else {
            return Outcome::ResetFresh;
        };
        let reused = c.reused;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, send(&mut c.sender, req)).await {
            Err(_) => {
                *conn = None;
                return Outcome::Timeout;
            }
            Ok(Sent::Response(status, close)) => {
                c.reused = true;
                if close {
                    *conn = None;
                }
                return if (200..300).contains(&status) {
                    Outcome::Ok
                } else {
                    Outcome::Status(status)
                };
            }
            Ok(Sent::Unsent(back)) => {
                *conn = None;
                req = *back;
            }
            Ok(Sent::Refused) => {
                // Rebuild the same request (same seq) for a new connection.
                *conn = None;
                req = t.request(mode, worker, seq);
            }
            Ok(Sent::Failed) => {
                *conn = None;
                return if reused {
                    Outcome::ResetReused
                } else {
                    Outcome::ResetFresh
                };
            }
        }
    }
    Outcome::ResetFresh
}

pub(crate) enum Sent {
    /// Status, and whether the connection must not be reused.
    Response(u16, bool),
    /// The connection was closed before the request left: here it is again.
    Unsent(Box<Request<Full<Bytes>>>),
    /// HTTP/2 reported the stream unprocessed; the request is gone but was never served.
    Refused,
    /// The request was sent (or may have been) and no response came.
    Failed,
}

/// `true` when HTTP/2 says the stream was not processed: `REFUSED_STREAM`, or the peer's
/// GOAWAY (h2 fails only the streams above the GOAWAY's last stream id).
fn unprocessed(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2_unprocessed(h2);
        }
        source = err.source();
    }
    false
}

/// `REFUSED_STREAM`, or a GOAWAY from the peer: the stream was not processed (RFC 9113,
/// 6.8 and 8.7), so sending it again on a new connection is not a retry.
pub(crate) fn h2_unprocessed(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM) || (e.is_go_away() && e.is_remote())
}

/// Send `req` on `sender` and read the whole response.
pub(crate) async fn send(sender: &mut Sender, req: Request<Full<Bytes>>) -> Sent {
    let res = match sender {
        Sender::H1(s) => {
            if s.ready().await.is_err() {
                return Sent::Unsent(Box::new(req));
            }
            s.try_send_request(req).await
        }
        Sender::H2(s) => {
            if s.ready().await.is_err() {
                return Sent::Unsent(Box::new(req));
            }
            s.try_send_request(req).await
        }
    };
    match res {
        Ok(res) => {
            let status = res.status().as_u16();
            let close = res
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            match res.into_body().collect().await {
                Ok(_) => Sent::Response(status, close),
                Err(_) => Sent::Failed,
            }
        }
        Err(mut e) => match e.take_message() {
            Some(back) => Sent::Unsent(Box::new(back)),
            // REFUSED_STREAM, or a GOAWAY whose last stream id is below this stream,
            // guarantees the server did not process it (RFC 9113, 6.8 and 8.7): it was never
            // served, so the request goes out again on a new connection.
            None if unprocessed(e.error()) => Sent::Refused,
            None => Sent::Failed,
        },
    }
}

/// Run `plan`'s workers in a closed loop until the end, the request cap or
/// `recorder.stop`.
pub(crate) async fn closed_loop(plan: &Plan, recorder: &Arc<Recorder>, end: Instant) {
    let workers: Vec<_> = (0..plan.concurrency)
        .map(|i| {
            let worker = Worker {
                id: i,
                target: plan.targets[i % plan.targets.len()].clone(),
                mode: plan.mode,
                timeout: plan.timeout,
                requests: plan.requests,
            };
            tokio::spawn(worker.run(recorder.clone(), end))
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}

/// One worker: its connection to its target, one request at a time.
struct Worker {
    id: usize,
    target: Arc<Template>,
    mode: Mode,
    timeout: Duration,
    requests: u64,
}

impl Worker {
    async fn run(self, recorder: Arc<Recorder>, end: Instant) {
        let mut conn = None;
        loop {
            if recorder.stop.is_cancelled() || Instant::now() >= end {
                return;
            }
            let seq = recorder.issued.fetch_add(1, Ordering::Relaxed);
            if seq >= self.requests {
                return;
            }
            let started = Instant::now();
            let outcome = one(
                &mut conn,
                &self.target,
                self.mode,
                self.id,
                seq,
                self.timeout,
            )
            .await;
            recorder.record(outcome, started, None, Instant::now());
            if outcome == Outcome::Refused {
                tokio::time::sleep(REFUSED_PAUSE).await;
            }
        }
    }
}
