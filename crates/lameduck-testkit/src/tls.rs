//! TLS for tests (feature `tls`): a CA made at test time with rcgen (never checked in),
//! server certificates it signs written to files, and an HTTPS client that trusts it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// A test CA, and the files of a server certificate and key in a directory of their own.
pub struct TestCa {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: PathBuf,
}

/// A TLS client connection to a test server.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;
/// An HTTP/1.1 connection's sender.
pub type H1Send = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl TestCa {
    /// A new CA; its files go under a fresh temporary directory named after `name`.
    pub fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).expect("CA");
        let dir = std::env::temp_dir().join(format!("lameduck-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        Self { ca, ca_key, dir }
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM), for clients given a CA file.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1 with this serial: (its DER, the
    /// certificate's PEM, the key's PEM).
    pub fn leaf(&self, serial: u64) -> (Vec<u8>, String, String) {
        self.leaf_until(serial, None)
    }

    /// [`leaf`](Self::leaf) valid until `expires_in_secs` from now (negative: expired that
    /// long ago), from a day before that.
    pub fn leaf_expiring(&self, serial: u64, expires_in_secs: i64) -> (Vec<u8>, String, String) {
        self.leaf_until(serial, Some(expires_in_secs))
    }

    fn leaf_until(&self, serial: u64, expires_in_secs: Option<i64>) -> (Vec<u8>, String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.serial_number = Some(serial.into());
        if let Some(secs) = expires_in_secs {
            let now = time::OffsetDateTime::now_utc();
            params.not_after = now + time::Duration::seconds(secs);
            params.not_before = params.not_after - time::Duration::days(30);
        }
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign");
        (cert.der().to_vec(), cert.pem(), key.serialize_pem())
    }

    /// Write a new server certificate (serial `serial`) and key to [`cert`](Self::cert)
    /// and [`key`](Self::key), each replaced by a rename; its DER.
    pub fn install(&self, serial: u64) -> Vec<u8> {
        let (der, cert, key) = self.leaf(serial);
        write_atomically(&self.cert(), &cert);
        write_atomically(&self.key(), &key);
        der
    }

    /// The server certificate file.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    /// The server key file.
    pub fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// `--tls-cert CERT --tls-key KEY`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert().display().to_string(),
            "--tls-key".into(),
            self.key().display().to_string(),
        ]
    }

    /// A client that trusts this CA and offers `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .expect("CA in the store");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }

    /// The bytes of a complete ClientHello for `localhost` (ALPN `http/1.1`), as a real
    /// client sends them first: for tests of clients that start a handshake and stall.
    pub fn client_hello(&self) -> Vec<u8> {
        let name = ServerName::try_from("localhost").expect("name");
        let config = self.connector(&[b"http/1.1"]).config().clone();
        let mut c = rustls::ClientConnection::new(config, name).expect("client");
        let mut hello = Vec::new();
        c.write_tls(&mut hello).expect("ClientHello");
        hello
    }

    /// A TLS connection to `addr` (as `localhost`): the stream, the ALPN protocol chosen,
    /// the server's certificate (DER).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> std::io::Result<(TlsStream, Option<Vec<u8>>, Vec<u8>)> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").expect("name");
        let tls = self.connector(alpn).connect(name, tcp).await?;
        let (_, conn) = tls.get_ref();
        let chosen = conn.alpn_protocol().map(<[u8]>::to_vec);
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        Ok((tls, chosen, leaf))
    }

    /// An HTTP/1.1 connection over TLS (ALPN `http/1.1`) to `addr`; the server's certificate.
    pub async fn https_h1(&self, addr: SocketAddr) -> std::io::Result<(H1Send, Vec<u8>)> {
        let (tls, _, leaf) = self.connect(addr, &[b"http/1.1"]).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok((send, leaf))
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replace `path` with `text` by a rename, as a deploy tool does.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A request on an HTTP/1.1 connection: status, the `Connection` header, the body.
///
/// # Errors
/// The request was not answered (the text says why).
pub async fn send(
    send: &mut H1Send,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, Option<String>, Bytes), String> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    send.ready().await.map_err(|e| e.to_string())?;
    let res = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let close = res
        .headers()
        .get("connection")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, close, body))
}

/// The serial number of a DER certificate (up to 8 bytes), read from its TBSCertificate:
/// `SEQUENCE { SEQUENCE { [0] version, INTEGER serial, ... } }`.
pub fn serial_of(der: &[u8]) -> Option<u64> {
    /// The header of the DER element at `at`: (tag, start of its content, content length).
    fn element(der: &[u8], at: usize) -> Option<(u8, usize, usize)> {
        let tag = *der.get(at)?;
        let first = *der.get(at + 1)? as usize;
        if first < 0x80 {
            return Some((tag, at + 2, first));
        }
        let n = first & 0x7f;
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *der.get(at + 2 + i)? as usize;
        }
        Some((tag, at + 2 + n, len))
    }
    let (_, tbs_at, _) = element(der, 0)?; // Certificate
    let (_, mut at, _) = element(der, tbs_at)?; // TBSCertificate
    let (tag, start, len) = element(der, at)?;
    if tag == 0xa0 {
        at = start + len; // skip the explicit version
    }
    let (tag, start, len) = element(der, at)?;
    if tag != 0x02 || len > 9 {
        return None;
    }
    der.get(start..start + len)?
        .iter()
        .try_fold(0u64, |acc, b| {
            acc.checked_mul(256).map(|v| v | u64::from(*b))
        })
}
