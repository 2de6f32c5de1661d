//! One request of the open loop on its connection: HTTP/1.1 on a connection of its own,
//! or a stream of a shared HTTP/2 connection (opened here when there is none with room).

use super::*;

/// One HTTP/1.1 request on `conn`, or on a new connection.
pub(super) async fn h1_request(ctx: Arc<Ctx>, p: Pending, conn: Option<Conn>) {
    let started = Instant::now();
    let mut conn = match conn {
        Some(c) => c,
        None => match connect(&ctx.target, ctx.mode, ctx.timeout).await {
            Ok(c) => c,
            Err(o) => {
                ctx.record(o, &p, None);
                ctx.tell(Event::Closed);
                return;
            }
        },
    };
    let left = ctx.timeout.saturating_sub(started.elapsed());
    let req = ctx.target.request(ctx.mode, ctx.worker, p.seq);
    let sent = Instant::now();
    let reused = conn.reused;
    match tokio::time::timeout(left, send(&mut conn.sender, req)).await {
        Err(_) => {
            ctx.record(Outcome::Timeout, &p, Some(sent));
            ctx.tell(Event::Closed);
        }
        Ok(Sent::Response(status, close)) => {
            ctx.record(status_outcome(status), &p, Some(sent));
            if close || ctx.mode == Mode::ConnPerRequest {
                ctx.tell(Event::Closed);
            } else {
                conn.reused = true;
                ctx.tell(Event::Idle(conn));
            }
        }
        Ok(Sent::Unsent(_) | Sent::Refused) => {
            again(&ctx, p);
            ctx.tell(Event::Closed);
        }
        Ok(Sent::Failed) => {
            let o = if reused {
                Outcome::ResetReused
            } else {
                Outcome::ResetFresh
            };
            ctx.record(o, &p, Some(sent));
            ctx.tell(Event::Closed);
        }
    }
}

/// A request handed back unsent: once more on a new connection, or (the second time) a
/// reset on a fresh connection, as the closed loop counts it.
pub(super) fn again(ctx: &Ctx, p: Pending) {
    if p.fresh {
        ctx.record(Outcome::ResetFresh, &p, None);
    } else {
        ctx.tell(Event::Again(Pending {
            fresh: true,
            back_at: Instant::now(),
            ..p
        }));
    }
}

pub(super) fn status_outcome(status: u16) -> Outcome {
    if (200..300).contains(&status) {
        Outcome::Ok
    } else {
        Outcome::Status(status)
    }
}

/// Where an HTTP/2 request goes.
pub(super) enum H2Target {
    /// On this open connection.
    Open { id: u64, conn: H2Conn, reused: bool },
    /// On a new connection, which the request opens (and offers to the dispatcher); its
    /// opening started at `started`.
    New { id: u64, started: Instant },
}

/// Open an HTTP/2 connection: connect, handshake, and one PING round trip, by which the
/// server's SETTINGS (sent before its PONG) are known. The connection ends when the server
/// or the client closes it, or when `closing` is cancelled.
pub(super) async fn h2_connect(
    t: &Template,
    timeout: Duration,
    closing: &CancellationToken,
) -> Result<H2Conn, Outcome> {
    let started = Instant::now();
    let io = dial(t, timeout).await?;
    let left = timeout.saturating_sub(started.elapsed());
    let opened = async {
        let (send, mut connection) = h2::client::handshake(io)
            .await
            .map_err(|_| Outcome::ResetFresh)?;
        let pings = connection.ping_pong();
        let gone = Arc::new(tokio::sync::Notify::new());
        let (told, closing) = (gone.clone(), closing.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                _ = closing.cancelled() => {}
            }
            told.notify_one();
        });
        if let Some(mut pings) = pings {
            pings
                .ping(h2::Ping::opaque())
                .await
                .map_err(|_| Outcome::ResetFresh)?;
        }
        let capacity = send
            .current_max_send_streams()
            .clamp(1, MAX_STREAMS_PER_CONNECTION);
        Ok(H2Conn {
            send,
            capacity,
            gone,
        })
    };
    match tokio::time::timeout(left, opened).await {
        Ok(r) => r,
        Err(_) => Err(Outcome::Timeout),
    }
}

/// How an HTTP/2 stream ended.
pub(super) enum H2Sent {
    Response(u16),
    /// Not processed by the server (refused, above a GOAWAY, or never sent).
    Unprocessed {
        dead: bool,
    },
    /// Sent (or maybe sent) and not answered.
    Failed {
        dead: bool,
    },
}

/// `true` when an h2 error ends the connection, not just the stream.
pub(super) fn ends_connection(e: &h2::Error) -> bool {
    !e.is_reset()
}

/// Send one request on `send` and read the whole response; `sent` is set when the request
/// is handed to the connection.
pub(super) async fn h2_send(
    send: h2::client::SendRequest<Bytes>,
    head: http::Request<()>,
    body: Bytes,
    sent: &mut Option<Instant>,
) -> H2Sent {
    let mut send = match send.ready().await {
        Ok(s) => s,
        Err(e) => {
            return H2Sent::Unprocessed {
                dead: ends_connection(&e),
            }
        }
    };
    let end = body.is_empty();
    let (response, mut stream) = match send.send_request(head, end) {
        Ok(r) => r,
        Err(e) => {
            return H2Sent::Unprocessed {
                dead: ends_connection(&e),
            }
        }
    };
    *sent = Some(Instant::now());
    if !end {
        if let Err(e) = stream.send_data(body, true) {
            return H2Sent::Failed {
                dead: ends_connection(&e),
            };
        }
    }
    let failed = |e: h2::Error| {
        let dead = ends_connection(&e);
        if h2_unprocessed(&e) {
            H2Sent::Unprocessed { dead }
        } else {
            H2Sent::Failed { dead }
        }
    };
    let response = match response.await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(c) => {
                let _ = body.flow_control().release_capacity(c.len());
            }
            Err(e) => return failed(e),
        }
    }
    H2Sent::Response(status)
}

/// One HTTP/2 request.
pub(super) async fn h2_request(ctx: Arc<Ctx>, p: Pending, target: H2Target) {
    let started = Instant::now();
    let (id, conn, reused) = match target {
        H2Target::Open { id, conn, reused } => (id, conn, reused),
        H2Target::New { id, started } => {
            match h2_connect(&ctx.target, ctx.timeout, &ctx.closing).await {
                Ok(conn) => {
                    ctx.tell(Event::H2Open(id, conn.clone(), started));
                    (id, conn, false)
                }
                Err(o) => {
                    ctx.record(o, &p, None);
                    ctx.tell(Event::H2Failed);
                    return;
                }
            }
        }
    };
    let left = ctx.timeout.saturating_sub(started.elapsed());
    let (head, body) = ctx.target.parts(Mode::H2, ctx.worker, p.seq);
    let mut sent = None;
    let outcome = tokio::time::timeout(left, h2_send(conn.send, head, body, &mut sent)).await;
    let (answered, dead) = match outcome {
        Err(_) => {
            ctx.record(Outcome::Timeout, &p, sent);
            (false, false)
        }
        Ok(H2Sent::Response(status)) => {
            ctx.record(status_outcome(status), &p, sent);
            (true, false)
        }
        Ok(H2Sent::Unprocessed { dead }) => {
            again(&ctx, p);
            (false, dead)
        }
        Ok(H2Sent::Failed { dead }) => {
            let o = if reused {
                Outcome::ResetReused
            } else {
                Outcome::ResetFresh
            };
            ctx.record(o, &p, sent);
            (false, dead)
        }
    };
    ctx.tell(Event::H2Done { id, answered, dead });
}
