//! Listening and connections: the admin listener and the accept loop started (with the
//! sockets kept for an upgrade), each accepted connection spawned, its PROXY header read,
//! and served by hyper until it ends or the drain closes it.

use super::*;

/// Start the admin listener and the accept loop, keeping duplicates of the sockets for an
/// upgrade.
pub(super) fn start_listening<S, B>(
    config: &Builder,
    shared: &Shared,
    (http, admin): (TcpListener, Option<TcpListener>),
    app: S,
    operator: crate::admin::OperatorDrain,
    upgrade_status: UpgradeStatus,
) -> Listeners
where
    S: App<B>,
    B: AppBody,
{
    let handoff = upgrade::keep_sockets(&http, admin.as_ref());
    if let Err(e) = accept::check_gentle_close(&http) {
        tracing::warn!(
            error = %e,
            "the listener's close cannot turn new connections away first (a socket filter needs CAP_NET_ADMIN on this kernel): a connection completing as the listener closes may be reset; grant CAP_NET_ADMIN (systemd: AmbientCapabilities=CAP_NET_ADMIN) to close without that race"
        );
    }
    let stack = &shared.stack;
    let admin_task = admin.map(|l| {
        let mut a = Admin::new(
            stack.shutdown.clone(),
            stack.metrics.clone(),
            config.checks.clone(),
        )
        .with_upgrade_status(upgrade_status.clone());
        if let Some(token) = &config.admin_token {
            a = a.with_operator_drain(operator, token.clone());
        }
        #[cfg(feature = "tls")]
        if let Some(t) = shared.tls.clone() {
            a = a.with_tls_reload(Arc::new(move || {
                let done = match t.reload() {
                    Ok(tls::Reloaded::Swapped) => {
                        "reloaded: new connections get the new certificate"
                    }
                    Ok(tls::Reloaded::Unchanged) => "unchanged: the files hold the pair in use",
                    Err(e) => return Err(format!("refused, the certificate in use stays: {e}")),
                };
                Ok(match t.expiry_warning() {
                    Some(w) => format!("{done}\nwarning: {w}"),
                    None => done.to_string(),
                })
            }));
        }
        let routes = admin_listener::Routes {
            admin: a,
            #[cfg(feature = "axum")]
            app: config.admin_routes.clone(),
        };
        tokio::spawn(admin_listener::serve(
            l,
            routes,
            shared.limits,
            config.admin_max_connections,
        ))
    });
    let stop_accepting = CancellationToken::new();
    let handed_over = Arc::new(AtomicBool::new(false));
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let accept_shared = shared.clone();
    let accept_task = tokio::spawn(accept::accept_loop(
        http,
        limit,
        stop_accepting.clone(),
        handed_over.clone(),
        move |stream, peer, permit| {
            spawn_connection(&accept_shared, stream, peer, permit, app.clone());
        },
    ));
    Listeners {
        stop_accepting,
        handed_over,
        accept_task,
        admin_task,
        handoff,
        upgrade_status,
    }
}

/// Serve one accepted connection in a task the drain tracks.
fn spawn_connection<S, B>(
    shared: &Shared,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    svc: S,
) where
    S: App<B>,
    B: AppBody,
{
    let _ = stream.set_nodelay(true);
    let shared = shared.clone();
    shared.stack.metrics.connection_opened();
    // TLS connections get a task of their own: the handshake (bounded, cut by the drain)
    // comes first, then the same HTTP serving as in cleartext.
    #[cfg(feature = "tls")]
    if let Some(t) = shared.tls.clone() {
        shared.tracker.clone().spawn(async move {
            let (mut stream, mut peer) = (stream, peer);
            if proxy_header(&shared, &mut stream, &mut peer).await {
                let sd = shared.stack.shutdown.clone();
                if let Some(tls) = t.accept(stream, &sd, shared.limits.idle_grace).await {
                    serve_io(&shared, tls, peer, svc).await;
                }
            }
            shared.stack.metrics.connection_closed();
            drop(permit);
        });
        return;
    }
    shared.tracker.clone().spawn(async move {
        let (mut stream, mut peer) = (stream, peer);
        if proxy_header(&shared, &mut stream, &mut peer).await {
            serve_io(&shared, stream, peer, svc).await;
        }
        shared.stack.metrics.connection_closed();
        drop(permit);
    });
}

/// With the PROXY protocol on, read the header and take the client's address from it;
/// `false` when the connection must be closed (no valid header: reset when the header is
/// malformed). A connection still without its header when the drain starts is closed
/// after the idle grace (and at least [`conn::SILENT_GRACE`] from its accept), as a
/// silent cleartext connection is: it never holds the drain to the header timeout.
async fn proxy_header(shared: &Shared, stream: &mut TcpStream, peer: &mut SocketAddr) -> bool {
    if !shared.proxy_protocol {
        return true;
    }
    let accepted = tokio::time::Instant::now();
    let shutdown = &shared.stack.shutdown;
    let drain_cut = async {
        shutdown.stop_soon().await;
        tokio::time::sleep(shared.limits.idle_grace).await;
        tokio::time::sleep_until(accepted + conn::SILENT_GRACE).await;
    };
    let read = proxy_protocol::read_header(stream, shared.limits.header_read_timeout);
    let outcome = tokio::select! {
        r = read => r,
        _ = drain_cut => {
            tracing::debug!(%peer, "connection closed: no PROXY protocol header before the drain's idle grace ended");
            return false;
        }
    };
    match outcome {
        Ok(Some(client)) => *peer = client,
        Ok(None) => {}
        Err(e) => {
            if matches!(e, proxy_protocol::ProxyHeaderError::Invalid(_)) {
                // Not a balancer speaking: reset, as for any other garbage.
                let _ =
                    socket2::SockRef::from(&*stream).set_linger(Some(std::time::Duration::ZERO));
            }
            tracing::debug!(%peer, error = %e, "connection closed: PROXY protocol header required");
            return false;
        }
    }
    true
}

/// Serve HTTP on one connection's byte stream (TCP, or TLS over it) until it ends.
async fn serve_io<S, B, I>(shared: &Shared, stream: I, peer: SocketAddr, svc: S)
where
    S: App<B>,
    B: AppBody,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(TrackedIo::new(
        stream,
        state.clone(),
        shared.limits.max_header_bytes,
    ));
    let service = ConnService {
        inner: svc,
        peer,
        state: state.clone(),
        stack: shared.stack.clone(),
        last_host: Default::default(),
    };
    let sd = &shared.stack.shutdown;
    // Pinned where it is made: one copy of the connection in this task (see `drive`).
    let conn = std::pin::pin!(shared.builder.serve_connection_with_upgrades(io, service));
    let ended = conn::drive(conn, |c| c.graceful_shutdown(), &state, sd, shared.limits).await;
    if ended != Ended::Finished {
        tracing::debug!(%peer, ?ended, "connection closed by the server");
    }
}
