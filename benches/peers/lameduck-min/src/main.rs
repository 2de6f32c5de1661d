//! lameduck's `Server` (full per-request stack, drain, limits) around a plain tower
//! `service_fn` with the peers' routes: `/ping`, `/work?ms=N`. Flag: `--listen ADDR`.
//! Compared with bare hyper, it shows what the library itself costs per request.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use lameduck::lifecycle::Lifecycle;
use lameduck::server::{RequestBody, Server};

async fn handle(req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body): (StatusCode, &'static str) = match req.uri().path() {
        "/ping" => (StatusCode::OK, "pong"),
        "/work" => {
            let ms = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok());
            match ms {
                Some(ms) if ms <= 600_000 => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    (StatusCode::OK, "done")
                }
                _ => (StatusCode::BAD_REQUEST, "bad ms"),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found"),
    };
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    Ok(res)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let lifecycle = Lifecycle::new().with_os_signals()?;
    let server = Server::builder().bind(addr.parse()?, lifecycle).await?;
    println!("listening http={}", server.local_addr()?);
    let report = server.serve_service(tower::service_fn(handle)).await;
    std::process::exit(report.exit_code().into());
}
