//! Plain axum: `axum::serve(...).with_graceful_shutdown(...)` on SIGTERM/SIGINT, as axum's
//! graceful-shutdown example teaches (with a 30 s timeout around it).
//! Routes as lameduck-demo: `/ping`, `/work?ms=N`. Flag: `--listen ADDR`.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::signal::unix::{signal, SignalKind};

async fn work(Query(q): Query<HashMap<String, String>>) -> (StatusCode, &'static str) {
    match q.get("ms").and_then(|v| v.parse::<u64>().ok()) {
        Some(ms) if ms <= 600_000 => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, "done")
        }
        _ => (StatusCode::BAD_REQUEST, "bad ms"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().skip_while(|a| a != "--listen").nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening http={}", listener.local_addr()?);
    let app = Router::new().route("/ping", get(|| async { "pong" })).route("/work", get(work));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await
    });
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = tx.send(());
    match tokio::time::timeout(Duration::from_secs(30), server).await {
        Ok(r) => r??,
        Err(_) => eprintln!("timed out"),
    }
    Ok(())
}
