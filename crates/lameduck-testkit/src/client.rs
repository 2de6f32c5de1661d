//! A strict HTTP client on hyper's connection API: one connection per handle, no pool, no
//! retries, so that every reset or refusal is seen as it happened.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Method;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// How a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The TCP connect failed (refused, ...).
    Connect(std::io::Error),
    /// The connection was already closed: the request was not sent (safe to send again
    /// on a new connection).
    NotSent(hyper::Error),
    /// The connection failed before or during the response (reset, closed, protocol).
    Http(hyper::Error),
}

impl ClientError {
    /// `true` when the connect was refused.
    pub fn is_refused(&self) -> bool {
        matches!(self, ClientError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect: {e}"),
            ClientError::NotSent(e) => write!(f, "not sent: {e}"),
            ClientError::Http(e) => write!(f, "http: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// An HTTP/1.1 keep-alive connection.
#[derive(Debug)]
pub struct H1 {
    send: http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

/// Open an HTTP/1.1 connection to `addr`.
pub async fn connect_h1(addr: SocketAddr) -> Result<H1, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ClientError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (send, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ClientError::Http)?;
    tokio::spawn(conn);
    Ok(H1 { send, addr })
}

impl H1 {
    /// `GET path` on this connection, with extra headers; the whole response.
    pub async fn get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response<Bytes>, ClientError> {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    /// Any request on this connection; the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response<Bytes>, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("valid request");
        self.send.ready().await.map_err(ClientError::NotSent)?;
        let res = self
            .send
            .send_request(req)
            .await
            .map_err(ClientError::Http)?;
        collect(res).await
    }

    /// `GET path` on this connection.
    pub async fn get(&mut self, path: &str) -> Result<Response<Bytes>, ClientError> {
        self.get_with(path, &[]).await
    }

    /// `true` once the server has closed the connection.
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

/// An HTTP/2 prior-knowledge connection; cheap to clone, clones share the connection.
#[derive(Debug, Clone)]
pub struct H2 {
    send: http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

/// Open an HTTP/2 (prior knowledge, cleartext) connection to `addr`.
pub async fn connect_h2(addr: SocketAddr) -> Result<H2, ClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ClientError::Connect)?;
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(ClientError::Http)?;
    tokio::spawn(conn);
    Ok(H2 { send, addr })
}

impl H2 {
    /// `GET path` as a new stream on this connection.
    pub async fn get(&mut self, path: &str) -> Result<Response<Bytes>, ClientError> {
        let uri = format!("http://{}{}", self.addr, path);
        let req = Request::get(uri)
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        self.send.ready().await.map_err(ClientError::NotSent)?;
        let res = self
            .send
            .send_request(req)
            .await
            .map_err(ClientError::Http)?;
        collect(res).await
    }
}

async fn collect(res: Response<hyper::body::Incoming>) -> Result<Response<Bytes>, ClientError> {
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.map_err(ClientError::Http)?.to_bytes();
    Ok(Response::from_parts(parts, bytes))
}

/// `POST path` with a JSON body and extra headers on a fresh HTTP/1.1 connection.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    json: &str,
) -> Result<Response<Bytes>, ClientError> {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    connect_h1(addr)
        .await?
        .send(Method::POST, path, &all, json.to_string())
        .await
}

/// `POST path` with no body and, when given, `Authorization: Bearer token` on a fresh
/// HTTP/1.1 connection (an operator request on an admin listener); the status code, or 0
/// when no response came.
pub async fn post_operator(addr: SocketAddr, path: &str, token: Option<&str>) -> u16 {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("authorization", a))
        .into_iter()
        .collect();
    let res = match connect_h1(addr).await {
        Ok(mut c) => c.send(Method::POST, path, &headers, String::new()).await,
        Err(e) => Err(e),
    };
    res.map_or(0, |r| r.status().as_u16())
}

/// `GET path` on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response<Bytes>, ClientError> {
    connect_h1(addr).await?.get(path).await
}
