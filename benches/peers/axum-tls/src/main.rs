//! Plain axum over TLS, as a user without axum-server writes it: a tokio-rustls acceptor
//! (ring provider, TLS 1.2 and 1.3, ALPN h2 and http/1.1) in front of hyper-util's auto
//! builder serving the Router. No drain. Route: `/ping`. Flags: `--listen ADDR`,
//! `--tls-cert PATH`, `--tls-key PATH`.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = flag("--listen").unwrap_or_else(|| "127.0.0.1:8443".into());
    let cert = flag("--tls-cert").ok_or("--tls-cert PATH is required")?;
    let key = flag("--tls-key").ok_or("--tls-key PATH is required")?;
    let chain = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening http={}", listener.local_addr()?);
    let app = Router::new().route("/ping", get(|| async { "pong" }));
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await;
        });
    }
}
